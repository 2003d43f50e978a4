"""Restormer through the pipeline: every id, the FP16 accumulator stress, Rain100L smoke, full size."""

from pathlib import Path

import numpy as np
import onnx
import pytest

from deploytool.build import export, precision
from deploytool.build.checkpoints import load_state_dict_file
from deploytool.build.networks import WeightsSource
from deploytool.runtime import images, inference
from deploytool.runtime.backends import open_runner
from deploytool.runtime.input_batches import synthetic_batch
from deploytool.runtime.manifest import FP16_FILE, FP32_FILE
from deploytool.verify import parity
from tests.helpers import assert_bf16_plan_needs_no_range, full_size_id, run_trace_cache, save_official, true_fp16_outputs
from tests.model_defs.test_restormer import tiny_entry, tiny_state

RAIN100L = Path(__file__).resolve().parents[4] / "shared" / "testsets" / "Rain100L"


def export_entry(entry, state, out: Path, tile=(32, 32), bf16: bool = False):
    path = save_official(state, out.parent / f"{out.name}.pth")
    loaded = load_state_dict_file(path)
    source = WeightsSource(kind="checkpoint", path=str(path), sha256=loaded.sha256, wrapper_key=loaded.wrapper_key)
    return export.export(export.ExportRequest(entry, source, out, tile, 1, calibration_count=2, bf16=bf16, trace_cache=run_trace_cache()))


@pytest.mark.parametrize("model_id", ["restormer-derain", "restormer-dn-gray-15", "restormer-dual-defocus"])
def test_norms_and_views_export_static_and_verify(tmp_path, model_id):
    entry = tiny_entry(model_id)
    out = tmp_path / model_id
    manifest = export_entry(entry, tiny_state(entry), out)
    assert manifest.channels == entry.channels and manifest.out_channels == entry.out_channels
    for name in (FP32_FILE, FP16_FILE):
        model = onnx.load(str(out / name))
        assert export.static_graph_violations(model) == []
    ops = {n.op_type for n in onnx.load(str(out / FP32_FILE)).graph.node}
    assert ("LayerNormalization" in ops) == (entry.arch["LayerNorm_type"] == "WithBias")
    report = parity.verify(out, backends=["torch", "ort", "ort-fp16"], synthetic_batches=1)
    assert report["passed"], parity.markdown(report)


def test_both_plans_keep_the_tile_wide_sum_of_squares_in_fp32(tmp_path):
    """q/k normalisation sums squares over all H*W pixels: beyond 65504 the naive FP16 graph is
    wrong. BF16 does not overflow there, and keeps those sums FP32 for their length alone."""
    entry = tiny_entry("restormer-derain")
    state = tiny_state(entry)
    for key in state:
        if key.endswith("attn.qkv.weight"):
            # q and k only: normalisation cancels their scale, so the FP32 model is unchanged
            # while the sum of their squares over the tile grows 900 times
            q_and_k = 2 * state[key].shape[0] // 3
            state[key] = state[key].clone()
            state[key][:q_and_k] *= 30
    out = tmp_path / "stress"
    manifest = export_entry(entry, state, out, bf16=True)
    fp32 = onnx.load(str(out / FP32_FILE))
    batch = synthetic_batch((1, 3, 32, 32), seed=3)
    ranges = precision.measure_ranges(fp32, [batch])
    sizes = precision.tensor_sizes(fp32)
    norms = [n for n in fp32.graph.node if n.op_type == "ReduceL2"]
    assert norms and max(precision.reduction_accumulator(n, ranges, sizes) for n in norms) > precision.FP16_MAX
    assert manifest.fp16.fp32_by_reason.get("accumulator", 0) > 0

    expected = precision.run_graph(fp32, [batch])[0]
    limit = manifest.tolerances["fp16_max_abs"]
    naive = true_fp16_outputs(precision.convert(fp32, None), batch)[0]
    assert not (np.isfinite(naive).all() and np.abs(naive - expected).max() < limit), "naive FP16 should break"
    planned = true_fp16_outputs(onnx.load(str(out / FP16_FILE)), batch)[0]
    assert np.isfinite(planned).all() and np.abs(planned - expected).max() < limit
    # the levels at full resolution sum over more values than a BF16 accumulator keeps (at 32 px: 1024)
    long_sums = [n.name for n in norms if precision.summed_elements(n, sizes) > precision.BF16.summed_limit]
    assert long_sums and len(long_sums) < len(norms)
    assert_bf16_plan_needs_no_range(out, manifest, long_sums)


@pytest.mark.skipif(not (RAIN100L / "input").is_dir(), reason="../shared/testsets/Rain100L is not present")
def test_rain100l_smoke(tmp_path, capsys):
    """Random weights: the PSNR printed is a smoke number, not quality."""
    entry = tiny_entry("restormer-derain")
    out = tmp_path / "derain"
    manifest = export_entry(entry, tiny_state(entry), out)
    runner = open_runner(out, manifest, "ort-fp16")
    for path in sorted((RAIN100L / "input").glob("*.png")):
        target = images.read_image(RAIN100L / "target" / path.name).pixels
        restored = inference.restore_array(runner, manifest, images.read_image(path).pixels, overlap=8)
        assert restored.shape == target.shape and np.isfinite(restored).all()
        _, _, psnr = parity.metrics(target, restored)
        print(f"Rain100L {path.name}: {psnr:.2f} dB vs target (tiny random-weight model, smoke only)")


@pytest.mark.slow
@pytest.mark.parametrize("model_id", [full_size_id("restormer-derain")])
def test_full_size_derain_exports_and_verifies(tmp_path, full_size_exports, model_id):
    out = full_size_exports.copy(model_id, tmp_path / "full")  # verify writes its reports into the export
    report = parity.verify(out, backends=["torch", "ort", "ort-fp16"], synthetic_batches=1)
    assert report["passed"], parity.markdown(report)


def test_dual_view_run_takes_pairs(tmp_path):
    from click.testing import CliRunner

    from deploytool.cli import cli

    entry = tiny_entry("restormer-dual-defocus")
    out = tmp_path / "dual"
    export_entry(entry, tiny_state(entry), out)
    left, right = tmp_path / "left.png", tmp_path / "right.png"
    for path, seed in ((left, 1), (right, 2)):
        images.write_image(path, synthetic_batch((1, 3, 40, 52), seed)[0].transpose(1, 2, 0))
    result = CliRunner().invoke(cli, ["run", str(out), str(left), str(right), "-o", str(tmp_path / "sharp.png"), "--backend", "ort"])
    assert result.exit_code == 0, result.output
    assert images.read_image(tmp_path / "sharp.png").pixels.shape == (40, 52, 3)
    single = CliRunner().invoke(cli, ["run", str(out), str(left), "-o", str(tmp_path / "x.png"), "--backend", "ort"])
    assert single.exit_code == 2 and "groups of 2 (left, right); 1 given" in single.stderr
