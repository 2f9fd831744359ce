"""Carrying out a ClusterPlan: the lifecycle, one host's supervision, the record store."""
