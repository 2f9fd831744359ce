"""The data plane: S3 (and file://) inputs onto the hosts, outputs from the hosts to S3.

Everything moves through the controller: the hosts need no S3 access and never see
credentials. Bytes stream from the S3 GET straight into an SSH channel (and back), never
staged on the controller's disk.
"""
