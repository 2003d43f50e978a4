"""deploytool: Transformer image-restoration models from PyTorch checkpoints to ONNX and TensorRT."""

__version__ = "0.1.0"
