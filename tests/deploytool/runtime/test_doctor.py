"""`deploytool doctor`: what each command can do, for machines with and without GPU/TensorRT."""

from deploytool.runtime import backends, doctor

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
    assert caps["build"] == "yes: strongly typed engines from model_fp16.onnx and model_bf16.onnx (--precision bf16) for NVIDIA H100 (sm90)"
    assert "trt" in caps["run"] and "ONNX Runtime on CUDA" in caps["run"]


def test_jetpack_6_tensorrt_builds_strongly_typed_engines_too():
    caps = doctor.capabilities({**NO_GPU, "tensorrt": "10.3.0", "gpus": [H100]})
    assert caps["build"] == "yes: strongly typed engines from model_fp16.onnx and model_bf16.onnx (--precision bf16) for NVIDIA H100 (sm90)"


def test_a_gpu_before_ampere_builds_fp16_engines_and_doctor_says_why_not_bf16():
    t4 = {"name": "Tesla T4", "compute_capability": [7, 5], "memory_gb": 15.0}
    caps = doctor.capabilities({**NO_GPU, "tensorrt": "10.13.0", "gpus": [t4]})
    assert caps["build"] == (
        "yes: strongly typed engines from model_fp16.onnx (no BF16 engines: BF16 TensorRT engines need a GPU of compute capability 8.0 "
        "(Ampere) or newer; Tesla T4 is sm75) for Tesla T4 (sm75)"
    )


def test_openvino_bf16_runs_where_openvino_sees_bf16_and_doctor_says_why_not_elsewhere():
    with_bf16 = {**NO_GPU, "openvino": "2026.4.1", "openvino_devices": ["CPU"], "openvino_capabilities": {"CPU": ["BF16", "FP32", "INT8"]}}
    without = {**with_bf16, "openvino_capabilities": {"CPU": ["FP32", "INT8"]}}
    assert "openvino-bf16: the BF16 plan on CPU" in doctor.capabilities(with_bf16)["run"]
    assert "openvino-bf16" in backends.available(with_bf16) and "openvino-bf16" not in backends.available(without)
    assert (
        "no openvino-bf16 backend: openvino-bf16 needs BF16 arithmetic (on a CPU: AVX-512 BF16 or AMX); OpenVINO's CPU offers FP32, INT8, without BF16"
        in doctor.capabilities(without)["run"]
    )


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
