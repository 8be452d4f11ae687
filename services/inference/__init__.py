"""Inference shared by the worker and `offhours run-batch`: engines, the Pipeline, the model registry."""
