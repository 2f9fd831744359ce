"""`fleet serve`: the SageMaker API (and the CloudWatch Logs calls the SDK makes) on your own machines."""
