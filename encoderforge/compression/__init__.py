"""Compression: model -> model transforms (quantization, pruning, distillation) plus their reports."""
