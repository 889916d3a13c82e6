"""Entry points as functions over typed configs: what the CLI, the pipeline and torchrun call."""
