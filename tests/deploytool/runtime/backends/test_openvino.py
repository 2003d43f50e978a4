"""The OpenVINO backend: FP32 inference precision, FP32 tolerances, a compiled-model cache keyed by
graph and OpenVINO build, devices refused in one line, and the missing package named."""

import collections
import functools
import json
import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from deploytool.cli import cli
from deploytool.errors import BackendUnavailable, DeployError
from deploytool.runtime.backends import OPENVINO, ORT, TORCH, open_runner
from deploytool.runtime.backends import openvino as backend
from deploytool.runtime.input_batches import synthetic_batch
from deploytool.runtime.manifest import FP32_FILE, read_manifest
from deploytool.verify import parity
from tests.helpers import assert_one_line_error, export_tiny, needs_openvino, one_id_per_family, write_test_png


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("openvino") / "swinir-s-x2"
    export_tiny("swinir-s-x2", out, fp16=False)
    return out


def _cache_files(export_dir):
    root = export_dir / backend.CACHE_FOLDER
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} if root.is_dir() else {}


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@needs_openvino
def test_runs_the_fp32_graph_in_f32_within_fp32_tolerances(exported):
    manifest = read_manifest(exported)
    batch = synthetic_batch(manifest.input.shape, seed=5)
    with open_runner(exported, manifest, OPENVINO) as runner, open_runner(exported, manifest, ORT) as reference:
        assert runner.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
        assert runner.device == "openvino CPU" and runner.input_shape == tuple(manifest.input.shape)
        out, expected = runner(batch), reference(batch)
    assert out.shape == expected.shape == tuple(manifest.output.shape) and out.dtype == np.float32
    assert np.abs(out - expected).max() <= manifest.tolerances["onnx_max_abs"]
    assert parity.pair_limits(OPENVINO, manifest.tolerances, tiled=False) == parity.pair_limits(ORT, manifest.tolerances, tiled=False)


@needs_openvino
def test_verify_judges_openvino_against_the_original(exported):
    report = parity.verify(exported, backends=["original", OPENVINO], synthetic_batches=1)
    rows = [c for c in report["comparisons"] if c["candidate"] == OPENVINO]
    assert report["passed"] and rows and all(r["passed"] and r["limits"].startswith("max|d|<=") for r in rows)


@needs_openvino
def test_a_second_run_imports_the_cached_blob_instead_of_compiling(exported, tmp_path):
    exported = shutil.copytree(exported, tmp_path / "export", ignore=shutil.ignore_patterns(backend.CACHE_FOLDER))
    manifest = read_manifest(exported)
    image = write_test_png(tmp_path / "in.png", 3)
    assert _cache_files(exported) == {}
    first = invoke("run", exported, image, "-o", tmp_path / "first.png", "--backend", OPENVINO)
    assert first.exit_code == 0, first.output
    cached = _cache_files(exported)
    folder = exported / backend.CACHE_FOLDER / backend.cache_key(manifest.files[FP32_FILE].sha256, backend.openvino_build(), "CPU")
    blobs = [p for p in cached if p.suffix == ".blob"]
    assert blobs and all(p.parent == folder for p in blobs), sorted(cached)
    assert (folder / backend.IR_FILE).is_file() and (folder / backend.IR_FILE).with_suffix(".bin").is_file()
    second = invoke("run", exported, image, "-o", tmp_path / "second.png", "--backend", OPENVINO)
    assert second.exit_code == 0, second.output
    assert _cache_files(exported) == cached  # nothing new written, nothing rewritten
    assert (tmp_path / "first.png").read_bytes() == (tmp_path / "second.png").read_bytes()


def _channel_split_graph(path):
    """x -> 1x1 Conv -> bias -> depthwise 3x3 Conv -> channel Split in 2 + 1 + 3 (read a*b and c),
    and a second 1x1 Conv whose output a Split and a ReduceMean both read (its chunks cannot move)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def weight(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["made"], name="/made/Conv"),
        helper.make_node("Conv", ["made", "w2", "b2"], ["mixed"], name="/mixed/Conv", group=6, pads=[1, 1, 1, 1]),
        helper.make_node("Split", ["mixed", "sizes"], ["a", "b", "c"], name="/Split", axis=1),
        helper.make_node("Mul", ["a", "b"], ["ab"]),
        helper.make_node("Concat", ["ab", "c"], ["chunked"], axis=1),
        helper.make_node("Conv", ["x", "w3"], ["shared"], name="/shared/Conv"),
        helper.make_node("Split", ["shared", "halves"], ["d", "e"], name="/shared/Split", axis=1),
        helper.make_node("Add", ["d", "e"], ["de"]),
        helper.make_node("ReduceMean", ["shared", "channels"], ["mean"], keepdims=1),
        helper.make_node("Add", ["de", "mean"], ["kept"]),
        helper.make_node("Concat", ["chunked", "kept"], ["y"], axis=1),
    ]
    initializers = [
        weight("w1", 6, 4, 1, 1), weight("b1", 6), weight("w2", 6, 1, 3, 3), weight("b2", 6), weight("w3", 4, 4, 1, 1),
        numpy_helper.from_array(np.array([2, 1, 3], np.int64), "sizes"), numpy_helper.from_array(np.array([2, 2], np.int64), "halves"), numpy_helper.from_array(np.array([1], np.int64), "channels"),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 7, 6, 6])],
        initializers,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


@needs_openvino
def test_a_channel_split_is_computed_where_a_convolution_makes_its_chunks(tmp_path):
    """The Split whose chunks a Convolution (through its bias and a depthwise Convolution) makes
    goes, each chunk computed on its slice of the weights, the values within float32 rounding; the Split of a
    Convolution's output that something else reads too stays."""
    import openvino

    core = openvino.Core()
    path = _channel_split_graph(tmp_path / "g.onnx")
    model = core.read_model(str(path))
    assert backend.split_channel_convolutions(model) == 1
    kinds = [op.get_type_name() for op in model.get_ordered_ops()]
    assert kinds.count("Split") + kinds.count("VariadicSplit") == 1 and kinds.count("Convolution") == 4 and kinds.count("GroupConvolution") == 3
    x = synthetic_batch((1, 4, 6, 6), seed=1)
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    rewritten = core.compile_model(model, "CPU", config)({0: x})[0]
    original = core.compile_model(str(path), "CPU", config)({0: x})[0]
    # the same sums of the same products; a smaller convolution's kernel may add them in another order
    assert np.abs(rewritten - original).max() <= 1e-6 * np.abs(original).max()


def _runtime_layer_types(compiled) -> collections.Counter:
    return collections.Counter(op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ordered_ops())


@functools.cache
def _fuses_attention() -> bool:
    """Whether OpenVINO's CPU plugin, on this CPU, runs a plain 4-D attention as one kernel."""
    import openvino
    from openvino import opset13 as ops

    q, k, v = (ops.parameter([2, 3, 64, 16], np.float32) for _ in range(3))
    weights = ops.softmax(ops.multiply(ops.matmul(q, k, False, True), np.float32(0.25)), -1)
    model = openvino.Model([ops.matmul(weights, v, False, False)], [q, k, v])
    compiled = openvino.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return _runtime_layer_types(compiled)["Softmax"] == 0


@needs_openvino
@pytest.mark.parametrize("model_id", one_id_per_family())
def test_every_familys_attention_compiles_into_one_kernel(tiny_exports, model_id):
    """No Softmax of an export is left as a kernel of its own (its scores written out and read back
    three times): the model definitions keep every attention 4-D (tests/model_defs/test_family.py)."""
    if not _fuses_attention():
        pytest.skip("OpenVINO's CPU plugin does not fuse even a plain 4-D attention on this CPU (no Snippets MHA kernel for it)")
    runner = backend.OpenVinoRunner(tiny_exports.folder(model_id) / FP32_FILE)
    layers = _runtime_layer_types(runner.compiled)
    assert layers["Softmax"] == 0 and layers["MatMul"] == 0, layers


def test_the_cache_key_changes_with_graph_build_device_and_precision():
    key = backend.cache_key("a" * 64, "2026.4.1-1", "CPU")
    others = [
        backend.cache_key("b" * 64, "2026.4.1-1", "CPU"),
        backend.cache_key("a" * 64, "2026.5.0-1", "CPU"),
        backend.cache_key("a" * 64, "2026.4.1-1", "GPU"),
        backend.cache_key("a" * 64, "2026.4.1-1", "CPU", "bf16"),
    ]
    assert len({key, *others}) == 5 and key == backend.cache_key("a" * 64, "2026.4.1-1", "CPU")


def test_devices_openvino_does_not_see_are_refused_listing_those_it_does():
    backend.check_device("CPU", ["CPU"])
    backend.check_device("GPU", ["CPU", "GPU.0", "GPU.1"])
    backend.check_device("GPU.1", ["CPU", "GPU.0", "GPU.1"])
    for device, seen in (("GPU", ["CPU"]), ("NPU", ["CPU", "GPU"]), ("GPU.2", ["CPU", "GPU.0", "GPU.1"])):
        with pytest.raises(DeployError) as error:
            backend.check_device(device, seen)
        assert not isinstance(error.value, BackendUnavailable)  # verify fails on it rather than skipping the backend
        assert str(error.value) == f"OpenVINO sees no {device} device on this machine; it sees: {', '.join(seen)}"


@needs_openvino
def test_run_on_a_device_that_is_not_there_fails_in_one_line(exported, tmp_path):
    image = write_test_png(tmp_path / "in.png", 3)
    missing = next(d for d in ("NPU", "GPU", "HETERO.XYZ") if d not in backend.available_devices())
    result = invoke("run", exported, image, "-o", tmp_path / "out.png", "--backend", OPENVINO, "--device", missing)
    assert_one_line_error(result, f"OpenVINO sees no {missing} device", "it sees: CPU")
    assert not (tmp_path / "out.png").exists()
    for other in (ORT, TORCH):  # torch opens through deploytool.build.runners, the others through the runtime
        assert_one_line_error(
            invoke("run", exported, image, "-o", tmp_path / "out.png", "--backend", other, "--device", "CPU"),
            f"--device applies to the openvino and openvino-bf16 backends, not {other}",
        )
        assert not (tmp_path / "out.png").exists()


def test_without_openvino_the_command_names_the_extra(exported, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    image = write_test_png(tmp_path / "in.png", 3)
    assert_one_line_error(invoke("run", exported, image, "-o", tmp_path / "out.png", "--backend", OPENVINO), "pip install deploytool[openvino]")
    assert not (tmp_path / "out.png").exists()
    with pytest.raises(DeployError, match=r"^OpenVINO is not installed: pip install deploytool\[openvino\]$"):
        backend.require_openvino()


@needs_openvino
def test_every_command_gives_the_device_to_openvino_and_refuses_it_where_no_backend_takes_one(exported, tmp_path):
    """verify, bench and eval as run: --device reaches OpenVINO (a device it does not see is
    refused by OpenVINO), and where no backend asked for takes one the command refuses it."""
    missing = next(d for d in ("NPU", "GPU", "HETERO.XYZ") if d not in backend.available_devices())
    dataset = tmp_path / "set"
    write_test_png(dataset / "HR" / "a.png", 3, size=(40, 48))
    write_test_png(dataset / "LR_bicubic" / "X2" / "a.png", 3, size=(20, 24))
    commands = {
        "verify": lambda backends: ("verify", exported, "--backends", f"original,{backends}", "--save-outputs", tmp_path / "r.npz"),
        "bench": lambda backends: ("bench", exported, "--backend", backends, "--runs", "1", "--warmup", "0"),
        "eval": lambda backends: ("eval", exported, "--dataset", dataset, "--scale", 2, "--methods", backends),
    }
    for name, command in commands.items():
        assert_one_line_error(invoke(*command(f"{ORT},{OPENVINO}"), "--device", missing), f"OpenVINO sees no {missing} device")
        refused = invoke(*command(ORT), "--device", "CPU")
        assert_one_line_error(refused, "--device applies to the openvino and openvino-bf16 backends, not ")
        assert not (tmp_path / "r.npz").exists(), name
    verified = parity.verify(exported, backends=["original", OPENVINO], synthetic_batches=1, device="CPU")
    assert verified["passed"] and any(c["candidate"] == OPENVINO for c in verified["comparisons"])


@needs_openvino
def test_cuda_graphs_are_refused_for_openvino_as_in_the_cpp_runtime(exported, tmp_path):
    image = write_test_png(tmp_path / "in.png", 3)
    result = invoke("run", exported, image, "-o", tmp_path / "out.png", "--backend", OPENVINO, "--cuda-graph")
    assert_one_line_error(result, "--cuda-graph applies to the trt backend, not openvino")
    assert not (tmp_path / "out.png").exists()
    assert_one_line_error(
        invoke("bench", exported, "--backend", f"{ORT},{OPENVINO}", "--cuda-graph"), "--cuda-graph applies to the trt backend, not ort, openvino"
    )


@needs_openvino
def test_bench_and_doctor_know_the_backend(exported):
    result = invoke("bench", exported, "--backend", f"{ORT},{OPENVINO}", "--runs", "1", "--warmup", "0", "--json")
    assert result.exit_code == 0, result.output
    assert [r["backend"] for r in json.loads(result.stdout)["results"]] == [ORT, OPENVINO]
    doctor = json.loads(invoke("doctor", "--json").stdout)
    assert doctor["facts"]["openvino"] and "CPU" in doctor["facts"]["openvino_devices"]
    assert OPENVINO in doctor["capabilities"]["run"] and "OpenVINO on CPU" in doctor["capabilities"]["run"]


@needs_openvino
def test_a_graph_openvino_cannot_read_is_refused_with_what_is_wrong(tmp_path):
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(DeployError, match=r"^OpenVINO could not compile .*broken\.onnx for CPU: Unable to read the model") as error:
        backend.OpenVinoRunner(tmp_path / "broken.onnx")
    assert "Exception from" not in str(error.value) and "\n" not in str(error.value)
