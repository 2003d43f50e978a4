"""The OpenVINO BF16 backend: the BF16 plan run with its FP32 islands in FP32, BF16 tolerances,
devices without BF16 refused in one line, the compiled-model cache, and every command knowing it."""

import json
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from deploytool.cli import cli
from deploytool.errors import BackendUnavailable
from deploytool.runtime.backends import OPENVINO, ORT, open_runner
from deploytool.runtime.backends import openvino as backend
from deploytool.runtime.input_batches import synthetic_batch
from deploytool.runtime.manifest import BF16_FILE, read_manifest
from tests.helpers import assert_one_line_error, export_tiny, needs_bf16_cpu, needs_openvino, write_test_png

OPENVINO_BF16 = backend.OPENVINO_BF16


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("openvino-bf16") / "swinir-s-x2"
    export_tiny("swinir-s-x2", out, fp16=False, bf16=True)
    return out


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _runtime_precisions(compiled) -> dict[str, set[str]]:
    """{OpenVINO layer type: the precisions its nodes run in} of a compiled model."""
    found: dict[str, set[str]] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        found.setdefault(info["layerType"].astype(str), set()).add(info["runtimePrecision"].astype(str))
    return found


def _attention_products(path) -> set[str]:
    """The graph's nodes that weight the values by a softmax: the last node of each attention."""
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {node.output[0] for node in graph.node if node.op_type == "Softmax"}
    return {node.name for node in graph.node if node.op_type == "MatMul" and weights & set(node.input)}


def _precisions_of(compiled, names: set[str]) -> dict[str, str]:
    """{graph node name: the runtime precision of the kernel that computes it}: a fused kernel
    lists the graph's nodes it computes among its original layers."""
    found = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        for name in set(info["originalLayersNames"].astype(str).split(",")) & names:
            found[name] = info["runtimePrecision"].astype(str)
    return found


@needs_bf16_cpu
def test_the_plan_runs_its_bf16_nodes_in_bf16_and_its_fp32_islands_in_fp32(exported):
    manifest = read_manifest(exported)
    with open_runner(exported, manifest, OPENVINO_BF16) as runner:
        precisions = _runtime_precisions(runner.compiled)
        attentions = _attention_products(exported / BF16_FILE)
        attention_precisions = _precisions_of(runner.compiled, attentions)
        assert runner.name == OPENVINO_BF16 and runner.device == "openvino CPU"
    # the islands by op are the layer norms (MVN at run time) and stay FP32; the matrix products
    # and every window attention (one kernel, its softmax 64 elements a sum: BF16 in the plan) run
    # BF16. The sensitivity search may keep other nodes FP32 too (the tiny model's tail: 7).
    assert manifest.bf16.fp32_by_op["LayerNormalization"] == manifest.bf16.fp32_by_reason["op"]
    assert precisions["MVN"] == {"f32"} and precisions["FullyConnected"] == {"bf16"}, precisions
    assert attentions and attention_precisions == dict.fromkeys(attentions, "bf16"), attention_precisions
    # why the backend compiles with f32 inference precision: bf16 precision lowers the islands too
    openvino = backend.require_openvino()
    lowered = openvino.Core().compile_model(str(exported / BF16_FILE), "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    assert _runtime_precisions(lowered)["MVN"] == {"bf16"}


@needs_bf16_cpu
def test_outputs_are_within_the_plans_bf16_tolerance_of_the_fp32_graph(exported):
    manifest = read_manifest(exported)
    batch = synthetic_batch(manifest.input.shape, seed=5)
    with open_runner(exported, manifest, OPENVINO_BF16) as runner, open_runner(exported, manifest, ORT) as reference:
        out, expected = runner(batch), reference(batch)
    assert out.shape == expected.shape and out.dtype == np.float32
    # BF16 arithmetic: not the FP32 graph's bits, and within the tolerance the plan was made for
    assert 0 < np.abs(out - expected).max() <= manifest.tolerances["bf16_max_abs"]


def _bf16_node_graph(op: str, shape: list[int], **attributes) -> bytes:
    """FP32 in, one `op` node computing in BF16, FP32 out."""
    from onnx import TensorProto, helper

    axes = [helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])] if op == "ReduceMean" else []
    nodes = [
        helper.make_node("Cast", ["x"], ["x_bf16"], to=TensorProto.BFLOAT16),
        helper.make_node(op, ["x_bf16", *(a.name for a in axes)], ["y_bf16"], **attributes),
        helper.make_node("Cast", ["y_bf16"], ["y"], to=TensorProto.FLOAT),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)]
    graph = helper.make_graph(nodes, op, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], axes)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)]).SerializeToString()


@needs_bf16_cpu
@pytest.mark.parametrize(("op", "shape", "attributes"), [("Softmax", [1, 4, 8, 4096], {"axis": -1}), ("ReduceMean", [1, 8, 256, 256], {"keepdims": 1})])
def test_long_bf16_sums_accumulate_in_fp32(op, shape, attributes):
    """What the BF16 plan assumes of a BF16 softmax (and what the emulation computes): its sums
    kept in FP32. Over 4096 (65536) addends near 1, a running sum kept in BF16 stops growing at
    2^8 to 2^9 (its steps fall below half a BF16 step): the softmax would be off by more than 10x,
    the mean by 99%; in FP32 each is off by the output's BF16 rounding alone."""
    import openvino as ov

    from deploytool.build.bf16 import round_to_bf16

    x = round_to_bf16((1.0 + 0.01 * np.random.default_rng(0).standard_normal(shape)).astype(np.float32))
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": True}  # as the backend compiles the plan
    request = core.compile_model(core.read_model(_bf16_node_graph(op, shape, **attributes), b""), "CPU", config).create_infer_request()
    y = request.infer({0: x})[0].astype(np.float64)
    ran = {info.node_type: info.exec_type for info in request.profiling_info if info.status == info.Status.EXECUTED}
    assert "bf16" in ran[op], ran
    exact = x.astype(np.float64)
    if op == "Softmax":
        exact = np.exp(exact - exact.max(-1, keepdims=True))
        exact /= exact.sum(-1, keepdims=True)
    else:
        exact = exact.mean(axis=(2, 3), keepdims=True)
    assert np.abs(y / exact - 1).max() <= 2**-8  # one BF16 rounding of the output: 2^-9, with room for exp's


def test_devices_without_bf16_are_refused_naming_what_they_offer():
    assert backend.bf16_refusal("CPU", ["BF16", "FP32", "INT8"]) is None
    assert backend.bf16_refusal("CPU", ["WINOGRAD", "FP32", "INT8", "BIN"]) == (
        "openvino-bf16 needs BF16 arithmetic (on a CPU: AVX-512 BF16 or AMX); OpenVINO's CPU offers WINOGRAD, FP32, INT8, BIN, without BF16"
    )


@needs_openvino
def test_run_on_a_cpu_without_bf16_fails_in_one_line_and_writes_nothing(exported, tmp_path, monkeypatch):
    monkeypatch.setattr(backend, "device_capabilities", lambda core, device: ["FP32", "INT8"])
    image = write_test_png(tmp_path / "in.png", 3)
    result = invoke("run", exported, image, "-o", tmp_path / "out.png", "--backend", OPENVINO_BF16)
    assert_one_line_error(result, "openvino-bf16 needs BF16 arithmetic (on a CPU: AVX-512 BF16 or AMX); OpenVINO's CPU offers FP32, INT8, without BF16")
    assert not (tmp_path / "out.png").exists()
    with pytest.raises(BackendUnavailable):
        backend.check_bf16_device("CPU")


@needs_bf16_cpu
def test_a_second_run_imports_the_cached_blob_instead_of_compiling(exported, tmp_path):
    exported = shutil.copytree(exported, tmp_path / "export", ignore=shutil.ignore_patterns(backend.CACHE_FOLDER))
    manifest = read_manifest(exported)
    image = write_test_png(tmp_path / "in.png", 3)
    first = invoke("run", exported, image, "-o", tmp_path / "first.png", "--backend", OPENVINO_BF16)
    assert first.exit_code == 0, first.output
    root = exported / backend.CACHE_FOLDER
    cached = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    folder = root / backend.cache_key(manifest.files[BF16_FILE].sha256, backend.openvino_build(), "CPU")
    assert [p for p in cached if p.suffix == ".blob"] and all(p.parent == folder for p in cached), sorted(cached)
    second = invoke("run", exported, image, "-o", tmp_path / "second.png", "--backend", OPENVINO_BF16)
    assert second.exit_code == 0, second.output
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == cached  # nothing new written, nothing rewritten
    assert (tmp_path / "first.png").read_bytes() == (tmp_path / "second.png").read_bytes()


@needs_bf16_cpu
def test_a_device_openvino_does_not_see_is_refused_in_one_line(exported, tmp_path):
    image = write_test_png(tmp_path / "in.png", 3)
    missing = next(d for d in ("NPU", "GPU", "HETERO.XYZ") if d not in backend.available_devices())
    result = invoke("run", exported, image, "-o", tmp_path / "out.png", "--backend", OPENVINO_BF16, "--device", missing)
    assert_one_line_error(result, f"OpenVINO sees no {missing} device", "it sees: CPU")
    assert not (tmp_path / "out.png").exists()


def test_an_export_without_the_bf16_graph_says_so(tmp_path):
    export_tiny("swinir-s-x2", tmp_path / "e", fp16=False)
    image = write_test_png(tmp_path / "in.png", 3)
    result = invoke("run", tmp_path / "e", image, "-o", tmp_path / "out.png", "--backend", OPENVINO_BF16)
    assert_one_line_error(result, f"{BF16_FILE} is missing from the export")


@needs_bf16_cpu
def test_verify_judges_it_with_the_bf16_tolerances(exported):
    from deploytool.verify import parity

    tolerances = read_manifest(exported).tolerances
    assert parity.pair_limits(OPENVINO_BF16, tolerances, tiled=False) == (tolerances["bf16_max_abs"], tolerances["bf16_psnr_min"])
    report = parity.verify(exported, backends=["original", OPENVINO_BF16], synthetic_batches=1)
    rows = [c for c in report["comparisons"] if c["candidate"] == OPENVINO_BF16]
    expected = f"max|d|<={tolerances['bf16_max_abs']:g}, PSNR>={tolerances['bf16_psnr_min']:g}"
    assert report["passed"] and rows and all(r["passed"] and r["limits"] == expected for r in rows), rows


# OpenVINO's two backends on the same commands: FP32 wherever OpenVINO is installed, BF16 where the CPU has it
BOTH_BACKENDS = [pytest.param(OPENVINO, marks=needs_openvino()), pytest.param(OPENVINO_BF16, marks=needs_bf16_cpu())]


@pytest.mark.parametrize("chosen", BOTH_BACKENDS)
def test_compare_judges_saved_outputs_as_verify_did(exported, tmp_path, chosen):
    saved = invoke("verify", exported, "--backends", f"original,{chosen}", "--save-outputs", tmp_path / "r.npz", "--json")
    assert saved.exit_code == 0, saved.output
    compared = invoke("compare", tmp_path / "r.npz", "--json")
    assert compared.exit_code == 0, compared.output
    judged = {(c["inputs"], c["candidate"]): (c["passed"], c["limits"]) for c in json.loads(compared.stdout)["comparisons"]}
    verified = {(c["inputs"], c["candidate"]): (c["passed"], c["limits"]) for c in json.loads(saved.stdout)["comparisons"]}
    assert judged == verified and any(candidate == chosen for _, candidate in judged)


@pytest.mark.parametrize("chosen", BOTH_BACKENDS)
def test_bench_and_eval_run_it_on_the_device_asked_for(exported, tmp_path, chosen):
    result = invoke("bench", exported, "--backend", f"{ORT},{chosen}", "--runs", "1", "--warmup", "0", "--device", "CPU", "--json")
    assert result.exit_code == 0, result.output
    assert [(r["backend"], r["device"]) for r in json.loads(result.stdout)["results"]] == [(ORT, "cpu"), (chosen, "openvino CPU")]
    dataset = tmp_path / "set"
    write_test_png(dataset / "HR" / "a.png", 3, size=(40, 48))
    write_test_png(dataset / "LR_bicubic" / "X2" / "a.png", 3, size=(20, 24))
    scored = invoke("eval", exported, "--dataset", dataset, "--scale", 2, "--methods", f"{ORT},{chosen}", "--device", "CPU", "--json")
    assert scored.exit_code == 0, scored.output
    summary = json.loads(scored.stdout)["summary"]
    assert summary[chosen]["images"] == 1 and abs(summary[chosen]["psnr"] - summary[ORT]["psnr"]) < 1.0


@needs_bf16_cpu
def test_doctor_knows_the_backend():
    doctor = json.loads(invoke("doctor", "--json").stdout)
    assert "openvino-bf16: the BF16 plan on CPU" in doctor["capabilities"]["run"]
    assert "BF16" in doctor["facts"]["openvino_capabilities"]["CPU"]


@pytest.mark.parametrize("chosen", BOTH_BACKENDS)
def test_a_video_runs_frame_for_frame_as_its_frames_run_as_images(exported, tmp_path, chosen):
    from deploytool.runtime import images
    from tests.videos import Clip, make_clip, read_back

    source = tmp_path / "rgb.mkv"
    pictures = make_clip(source, Clip(codec="ffv1", pix_fmt="bgr0", size=(24, 20), pts=list(range(3))))
    video = invoke("run", exported, source, "-o", tmp_path / "rgb_x2.mkv", "--backend", chosen, "--lossless")
    assert video.exit_code == 0, video.output
    folder = tmp_path / "frames"
    for number, picture in enumerate(pictures):
        images.write_samples(folder / f"{number}.png", picture)
    frames = invoke("run", exported, folder, "-o", tmp_path / "frames_x2", "--backend", chosen)
    assert frames.exit_code == 0, frames.output
    after = read_back(tmp_path / "rgb_x2.mkv", as_format="rgb24")
    assert len(after.frames) == len(pictures)
    for number, frame in enumerate(after.frames):
        assert np.array_equal(frame, images.read_samples(tmp_path / "frames_x2" / f"{number}.png")), number
