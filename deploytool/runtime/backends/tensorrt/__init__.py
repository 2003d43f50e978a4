"""TensorRT: running an engine (`run`) and building one from an export's ONNX graph (`build`)."""
