"""The SageMaker side of fleet, pure: request models, config files, docker argv, records."""
