"""`deploytool doctor`: what each command can do, for machines with and without GPU/TensorRT."""

from deploytool.runtime import doctor

NO_GPU = {
    "python": "3.11.7",
    "platform": "Linux",
    "torch": "2.15.0",
    "onnx": "1.23",
    "onnxsim": "0.8",
    "onnxruntime": "1.31",
    "tensorrt": None,
    "spandrel": "0.4.2",
    "cuda": "13.2",
    "gpus": [],
    "ort_providers": ["CPUExecutionProvider"],
}
H100 = {"name": "NVIDIA H100", "compute_capability": [9, 0], "memory_gb": 79.1}


def test_cpu_machine_can_export_verify_and_run_but_not_build():
    caps = doctor.capabilities(NO_GPU)
    assert caps["export"].startswith("yes") and "ONNX Runtime on CPU" in caps["run"]
    assert caps["build"] == "no: TensorRT is not installed: pip install deploytool[trt] on a machine with an NVIDIA GPU"
    assert "trt" not in caps["run"] and "CPU timings only" in caps["bench"]


def test_gpu_with_current_tensorrt_builds_strongly_typed_engines():
    facts = {**NO_GPU, "tensorrt": "10.13.0.35", "gpus": [H100], "ort_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
    caps = doctor.capabilities(facts)
    assert caps["build"] == "yes: strongly typed engines from model_fp16.onnx for NVIDIA H100 (sm90)"
    assert "trt" in caps["run"] and "ONNX Runtime on CUDA" in caps["run"]


def test_jetpack_6_tensorrt_builds_strongly_typed_engines_too():
    caps = doctor.capabilities({**NO_GPU, "tensorrt": "10.3.0", "gpus": [H100]})
    assert caps["build"] == "yes: strongly typed engines from model_fp16.onnx for NVIDIA H100 (sm90)"


def test_tensorrt_without_a_gpu_and_missing_packages_are_named():
    assert doctor.capabilities({**NO_GPU, "tensorrt": "10.13.0"})["build"] == "no: TensorRT is installed but torch sees no CUDA GPU"
    assert doctor.capabilities({**NO_GPU, "onnxsim": None})["export"] == "no: missing onnxsim"


def test_probe_describes_this_machine():
    facts = doctor.probe()
    lines = doctor.report_lines(facts, doctor.capabilities(facts))
    assert facts["torch"] and facts["onnxruntime"] and any(line.startswith("build") for line in lines)


def test_openvino_is_a_run_backend_when_installed_and_named_when_not():
    caps = doctor.capabilities({**NO_GPU, "openvino": "2026.4.1", "openvino_devices": ["CPU", "GPU"]})
    assert "openvino" in caps["run"].split(";")[0] and "OpenVINO on CPU, GPU" in caps["run"] and "openvino" in caps["bench"]
    assert "pip install deploytool[openvino]" in doctor.capabilities(NO_GPU)["run"]
