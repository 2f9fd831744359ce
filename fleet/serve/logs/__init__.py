"""CloudWatch Logs (2014-03-28) as `fleet serve` answers it: the reads of the processing
jobs' log group that the SageMaker SDK's `logs=True` and `aws logs tail` make."""
