"""SageMaker (2017-07-24) as `fleet serve` answers it: the processing-job operations."""
