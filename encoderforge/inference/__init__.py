"""Inference: the padding-free engine and ONNX export."""
