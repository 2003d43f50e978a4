"""Serving exports with NVIDIA Triton Inference Server.

`repository` writes a Triton model repository from exports, `triton_models` is the model code
Triton runs (whole-image tiling over BLS; tiles on ONNX Runtime's CPU provider or on a registered
backend such as OpenVINO's BF16 plan), `server` starts the `tritonserver` binary of the
nvidia-pytriton wheel, and `client` sends images to a server.
"""
