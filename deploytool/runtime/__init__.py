"""What runs an export: the manifest, tiling, images and PNG, the backends, video.

Nothing here imports torch or onnx at import time, nor anything from deploytool.build, verify,
serving or cli: `pip install deploytool` (without extras) is enough to run an export.
"""
