"""fleet: run Amazon SageMaker Processing jobs on your own machines over SSH and Docker."""

__version__ = "0.1.0"
