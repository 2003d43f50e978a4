"""What makes an export: model entries, checkpoints, our definitions, tracing to ONNX, the FP16 plan.

Needs the export extra (torch, onnx, onnxsim, ...); imports deploytool.runtime, never verify,
serving or cli.
"""
