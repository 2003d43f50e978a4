"""ONNX Runtime's providers: CUDA only where a GPU is usable, asked of torch or of the CUDA
driver; its sessions' intra-op threads."""

import ctypes

import pytest
import torch
from onnx import TensorProto, helper

from deploytool.errors import DeployError
from deploytool.runtime.backends import onnxruntime as ort_backend


@pytest.mark.parametrize("available", [True, False])
def test_with_torch_installed_torch_says_whether_a_gpu_is_usable(monkeypatch, available):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    assert ort_backend.gpu_usable() is available


def test_without_a_cuda_driver_no_gpu_is_usable(monkeypatch):
    def no_library(name, *args, **kwargs):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_library)
    assert ort_backend.cuda_driver_sees_a_gpu() is False


def test_the_driver_is_asked_for_its_device_count(monkeypatch):
    class Driver:
        def __init__(self, count):
            self.count = count

        def cuInit(self, flags):
            return 0

        def cuDeviceGetCount(self, pointer):
            pointer._obj.value = self.count
            return 0

    monkeypatch.setattr(ctypes, "CDLL", lambda name: Driver(2))
    assert ort_backend.cuda_driver_sees_a_gpu() is True
    monkeypatch.setattr(ctypes, "CDLL", lambda name: Driver(0))
    assert ort_backend.cuda_driver_sees_a_gpu() is False


def _identity_graph() -> bytes:
    values = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 3]) for name in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", values[:1], values[1:])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def _threads(session) -> int:
    return session.get_session_options().intra_op_num_threads


def test_a_session_whose_caller_names_no_thread_count_takes_the_variables(monkeypatch):
    monkeypatch.delenv(ort_backend.THREADS_VARIABLE, raising=False)
    assert _threads(ort_backend.open_session(_identity_graph())) == 0  # ONNX Runtime's default: one per core
    monkeypatch.setenv(ort_backend.THREADS_VARIABLE, "1")
    assert _threads(ort_backend.open_session(_identity_graph())) == 1
    assert _threads(ort_backend.open_session(_identity_graph(), threads=3)) == 3  # the caller's wins
    assert _threads(ort_backend.open_session(_identity_graph(), threads=0)) == 0


def test_the_exports_own_sessions_keep_neither_an_arena_nor_a_memory_pattern_and_a_runtime_session_on_cpu_no_pattern():
    """`low_memory` (the export's runs): ONNX Runtime's memory pattern allocated each run's planned
    peak at once (DAT-x4's calibration: 3.22 GB peak with it, 2.75 GB without); a runtime session
    on CPU keeps the arena but not the pattern, which doubled what a session holds (see CPU_ONLY);
    one with a GPU provider keeps ONNX Runtime's defaults, both on."""
    cpu = ort_backend.CPU_ONLY
    lean, runtime = (ort_backend.open_session(_identity_graph(), low_memory=low, providers=cpu).get_session_options() for low in (True, False))
    assert (lean.enable_cpu_mem_arena, lean.enable_mem_pattern) == (False, False)
    assert (runtime.enable_cpu_mem_arena, runtime.enable_mem_pattern) == (True, False)
    # ONNX Runtime without CUDA opens the session on CPU, with the options asked for
    on_gpu = ort_backend.open_session(_identity_graph(), providers=["CUDAExecutionProvider", *cpu]).get_session_options()
    assert (on_gpu.enable_cpu_mem_arena, on_gpu.enable_mem_pattern) == (True, True)


def test_the_exports_own_sessions_do_not_store_what_the_graph_computes_from_constants(monkeypatch, tmp_path):
    """ONNX Runtime folds a node whose inputs are all constants into a constant of the session:
    the masks and biases the export keeps computed (`fold_limit_mb`) cost DAT-x4's graph at 96 px
    1.6 GB that way. The export's sessions (`low_memory`) compute them on each run instead; a
    runtime session folds them, ONNX Runtime's default. Seen in the graph ONNX Runtime runs."""
    import numpy as np
    import onnx
    import onnxruntime

    rows, columns = np.ones((64, 1), np.float32), np.ones((1, 64), np.float32)
    graph = helper.make_graph(
        [helper.make_node("Add", ["rows", "columns"], ["mask"], name="broadcast"), helper.make_node("Add", ["x", "mask"], ["y"], name="masked")],
        "masked",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 64])],
        [onnx.numpy_helper.from_array(rows, "rows"), onnx.numpy_helper.from_array(columns, "columns")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()

    def ran_nodes(low_memory: bool) -> list[str]:
        optimized = tmp_path / f"optimized-{low_memory}.onnx"

        class WritingOptions(onnxruntime.SessionOptions):
            def __init__(self):
                super().__init__()
                self.optimized_model_filepath = str(optimized)

        with monkeypatch.context() as patch:
            patch.setattr(onnxruntime, "SessionOptions", WritingOptions)
            session = ort_backend.open_session(model, low_memory=low_memory, providers=["CPUExecutionProvider"])
        assert session.run(None, {"x": np.zeros((64, 64), np.float32)})[0].tolist() == (rows + columns).tolist()
        return [node.name for node in onnx.load(str(optimized)).graph.node]

    assert ran_nodes(low_memory=True) == ["broadcast", "masked"]
    assert ran_nodes(low_memory=False) == ["masked"]


@pytest.mark.parametrize("value", ["two", "-1", "1.5"])
def test_a_thread_count_that_is_not_a_whole_number_is_refused_in_one_line(monkeypatch, value):
    monkeypatch.setenv(ort_backend.THREADS_VARIABLE, value)
    with pytest.raises(DeployError, match=rf"^\$DEPLOYTOOL_ORT_THREADS must be a whole number of threads \(0: one per core\), not '{value}'$"):
        ort_backend.open_session(_identity_graph())


def test_a_graph_onnx_runtime_cannot_load_is_refused_in_one_line(tmp_path):
    from deploytool.errors import DeployError
    from deploytool.runtime.backends.onnxruntime import open_session

    (tmp_path / "truncated.onnx").write_bytes(b"\x08\x07\x12\x04" + b"\xff" * 64)
    with pytest.raises(DeployError, match=r"^ONNX Runtime could not load .*truncated\.onnx: .*") as error:
        open_session(tmp_path / "truncated.onnx")
    assert "\n" not in str(error.value)
