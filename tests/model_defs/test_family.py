"""What every family must do, run over every discovered family and model id without naming one:
parity with the original at tiny size, the official key layout at full size, a static export
whose FP16 and BF16 plans hold, and whole images through the tiler against the original."""

import onnx
import pytest

import model_defs
from deploytool.build import export, registry
from deploytool.build.graph_passes import readers
from deploytool.build.networks import arch_for, build_original, export_weights
from deploytool.runtime import inference
from deploytool.runtime.backends import ORIGINAL, ORT, ORT_FP16, TORCH, open_runner
from deploytool.runtime.backends.torch import TorchRunner
from deploytool.runtime.fileio import sha256_file
from deploytool.runtime.input_batches import synthetic_batch
from deploytool.runtime.manifest import FP16_FILE, FP32_FILE
from deploytool.verify import parity
from model_defs.family import Family
from tests.helpers import (
    all_ids,
    assert_bf16_plan_holds,
    assert_matches_original,
    assert_tiny_export_computes_what_torchscript_did,
    export_tiny,
    full_size_state_dicts,
    one_id_per_family,
    tiny_entry,
)


def one_id_per_structure() -> list[str]:
    """Ids whose full-size hyperparameters differ (x2/x3/x4 of one variant share all but the tail)."""
    seen, chosen = set(), []
    for model_id in all_ids():
        entry = registry.get(model_id)
        key = (entry.family, repr(sorted(entry.arch.items())))
        if key not in seen:
            seen.add(key)
            chosen.append(model_id)
    return chosen


def test_families_are_discovered_and_configs_name_only_known_families():
    families = model_defs.families()
    assert families and all(isinstance(f, Family) and f.name == name for name, f in families.items())
    assert {entry.family for entry in registry.all_entries().values()} <= set(families)


@pytest.mark.parametrize("model_id", all_ids())
def test_every_id_matches_its_original_at_tiny_size(model_id):
    entry = tiny_entry(model_id)
    assert_matches_original(model_id, [(2, entry.channels, *entry.tiling.tile)], atol=entry.tolerances["def_max_abs"])


@pytest.mark.parametrize("model_id", one_id_per_structure())
def test_full_size_keys_and_shapes_are_the_originals(model_id):
    full_size_state_dicts(model_id)


def attention_layout_violations(model: onnx.ModelProto) -> list[str]:
    """The Softmax nodes whose scores do not come from a 4-D MatMul through Add, Mul and Div alone
    (the first input of each), or whose weights feed anything but 4-D MatMuls."""
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in (*inferred.graph.value_info, *inferred.graph.output)}
    producer = {out: node for node in model.graph.node for out in node.output}
    value_readers = readers(model.graph)
    violations = []
    for softmax in (n for n in model.graph.node if n.op_type == "Softmax"):
        node = producer.get(softmax.input[0])
        while node is not None and node.op_type in ("Add", "Mul", "Div"):
            node = producer.get(node.input[0])
        if node is None or node.op_type != "MatMul" or ranks.get(node.output[0]) != 4:
            made_by = f"a {ranks.get(node.output[0])}-D {node.op_type} {node.name}" if node else "an input"
            violations.append(f"{softmax.name}: its scores come from {made_by}")
        weights_readers = value_readers.get(softmax.output[0], [])
        if not weights_readers or any(n.op_type != "MatMul" or ranks.get(n.output[0]) != 4 for n in weights_readers):
            violations.append(f"{softmax.name}: its weights feed {[(n.op_type, ranks.get(n.output[0])) for n in weights_readers]}")
    return violations


@pytest.mark.parametrize("model_id", one_id_per_family())
def test_every_attention_is_a_4d_matmul_softmax_matmul(tiny_exports, model_id):
    """OpenVINO's CPU plugin runs an attention as one kernel (its scores never written out) only
    where nothing reshapes them between the MatMuls: a 6-D view for the shifted-window mask or 5-D
    token chunks left three kernels (tests/deploytool/runtime/backends/test_openvino.py compiles
    them)."""
    graph = onnx.load(str(tiny_exports.folder(model_id) / FP32_FILE))
    assert any(n.op_type == "Softmax" for n in graph.graph.node)
    assert attention_layout_violations(graph) == []


@pytest.mark.parametrize("model_id", all_ids())
def test_every_id_exports_a_static_graph_whose_fp16_and_bf16_plans_hold(tmp_path, tiny_exports, model_id):
    manifest = tiny_exports.manifest(model_id)
    out = tiny_exports.copy(model_id, tmp_path / model_id)  # verify writes its reports into the export
    for name in (FP32_FILE, FP16_FILE):
        assert export.static_graph_violations(onnx.load(str(out / name))) == []
        assert manifest.files[name].sha256 == sha256_file(out / name)
    assert manifest.fp16.max_abs_vs_fp32 <= manifest.tolerances["fp16_calibration_max_abs"]
    assert 0 < manifest.fp16.fp16_flop_share <= 1
    report = parity.verify(out, backends=[ORIGINAL, TORCH, ORT, ORT_FP16], synthetic_batches=1)
    assert report["passed"], parity.markdown(report)
    assert {c["candidate"] for c in report["comparisons"]} == {TORCH, ORT, ORT_FP16}
    assert_bf16_plan_holds(out, manifest)
    assert_tiny_export_computes_what_torchscript_did(model_id, out)  # torch.export's graph, issue 22


@pytest.mark.parametrize("model_id", one_id_per_family())
def test_whole_images_through_the_tiler_match_the_original(tmp_path, model_id):
    """One tile: the tiler adds nothing (equal to the original within the ONNX tolerance). Several
    tiles of an odd-sized image: every tile in its place. The tiled PSNR floors of the configs are
    for trained weights and real images; with tiny random weights the families whose attention
    spans the tile (Restormer, ESRT's bands) or whose chop keeps edge strips (IPT) land lower, so
    this checks placement: a shifted or dropped tile falls far below 20 dB on these textures."""
    entry = tiny_entry(model_id)
    out = tmp_path / model_id
    manifest = export_tiny(model_id, out, fp16=False, batch=2)
    _, _, state_dict = export_weights(manifest)
    original = TorchRunner(build_original(entry, arch_for(entry, state_dict), state_dict))
    for (height, width), psnr_floor in [(entry.tiling.tile, None), ((entry.tiling.tile[0] * 2 + 5, entry.tiling.tile[1] * 2 - 7), 20.0)]:
        pixels = synthetic_batch((1, manifest.channels, height, width), seed=height)[0].transpose(1, 2, 0)
        whole = original(pixels.transpose(2, 0, 1)[None])[0].transpose(1, 2, 0)
        with open_runner(out, manifest, ORT) as runner:
            tiled = inference.restore_array(runner, manifest, pixels, overlap=manifest.tiling.overlap)
        assert tiled.shape == whole.shape == (height * entry.scale, width * entry.scale, manifest.out_channels)
        max_abs, _, psnr = parity.metrics(whole, tiled)
        if psnr_floor is None:
            assert max_abs <= entry.tolerances["onnx_max_abs"], f"{model_id}, one tile: max |d| {max_abs:.3g}"
        else:
            assert psnr >= psnr_floor, f"{model_id} {height}x{width}: {psnr:.1f} dB"
