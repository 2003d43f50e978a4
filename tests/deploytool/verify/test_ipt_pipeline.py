"""IPT through the pipeline: body folding, multi-task checkpoints, the fixed tile, batches, FP16 stress."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from deploytool.errors import DeployError
from deploytool.runtime.backends.onnxruntime import OrtRunner
from deploytool.runtime.input_batches import synthetic_batch
from deploytool.runtime.manifest import FP32_FILE
from deploytool.verify import parity
from tests.helpers import assert_bf16_plan_needs_no_range, export_tiny, save_official, tiny_entry

SET5_X4 = Path(__file__).resolve().parents[4] / "shared" / "testsets" / "Set5" / "LR_bicubic" / "X4"
PRETRAIN_SCALES = [2, 3, 4, 1, 1, 1]


def original_state(seed: int = 0, **changes) -> dict[str, torch.Tensor]:
    """Weights in the official layout, made by spandrel's IPT and moved away from their init."""
    from spandrel.architectures.IPT.__arch.ipt import IPT

    entry = tiny_entry("ipt-sr-x2")
    torch.manual_seed(seed)
    state = IPT(**{**entry.arch, **changes}).state_dict()
    generator = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v for k, v in state.items()}


def test_body_folding_is_reshapes_and_a_single_task_file_leaves_nothing_out(tmp_path):
    manifest = export_tiny("ipt-sr-x4", tmp_path / "ipt", fp16=False)
    assert not {n.op_type for n in onnx.load(str(tmp_path / "ipt" / FP32_FILE)).graph.node} & {"Col2Im", "Im2Col", "Gather"}
    assert manifest.unused_weights == {}


@pytest.mark.parametrize("model_id", ["ipt-sr-x3", "ipt-dn-50"])
def test_pretraining_file_exports_one_task_and_lists_the_rest(tmp_path, model_id):
    entry = tiny_entry(model_id)
    state = original_state(scale=PRETRAIN_SCALES, num_queries=6)
    weights = save_official(state, tmp_path / "IPT_pretrain.pt", wrapper=None)
    out = tmp_path / model_id
    manifest = export_tiny(model_id, out, weights=weights)
    unused = manifest.unused_weights
    other_tasks = {t for t in range(6) if t != entry.task_index}
    expected = {k for k in state if k.split(".")[0] in ("head", "tail") and int(k.split(".")[1]) in other_tasks}
    expected |= {f"body.query_embed.weight[{t}]" for t in other_tasks}
    assert set(unused) == expected
    assert all(f"this export is task {entry.task_index}" in reason for reason in unused.values())
    # the reference runs the selected task: the export matches the original's task on the full file
    report = parity.verify(out, backends=["ort"], synthetic_batches=1)
    assert report["passed"], parity.markdown(report)

    from spandrel.architectures.IPT.__arch.ipt import IPT

    original = IPT(**{**entry.arch, "scale": PRETRAIN_SCALES, "num_queries": 6}).eval()
    original.load_state_dict(state, strict=True)
    original.set_scale(entry.task_index)
    x = synthetic_batch((1, 3, 48, 48), seed=4)
    with torch.no_grad():
        expected_out = original(torch.from_numpy(x) * 255).numpy() / 255
    np.testing.assert_allclose(OrtRunner(out / FP32_FILE)(x), expected_out, atol=1e-3)


def test_other_tiles_are_refused_with_the_reason(tmp_path):
    with pytest.raises(DeployError, match="takes exactly 48x48 tiles, not 96x96.*48 px patch"):
        export_tiny("ipt-sr-x2", tmp_path / "x", tile=(96, 96))
    assert not (tmp_path / "x").exists()


def test_a_batch_of_tiles_gives_each_tile_its_own_result(tmp_path):
    out = tmp_path / "b"
    export_tiny("ipt-derain", out, batch=4, fp16=False)
    runner = OrtRunner(out / FP32_FILE)
    tiles = np.concatenate([synthetic_batch((1, 3, 48, 48), seed) for seed in range(4)])
    together = runner(tiles)
    single = export_tiny("ipt-derain", tmp_path / "s", batch=1, fp16=False)
    alone = OrtRunner(tmp_path / "s" / FP32_FILE)
    for i in range(4):
        np.testing.assert_allclose(together[i : i + 1], alone(tiles[i : i + 1]), atol=1e-4)
    assert single.input.shape[0] == 1 and together.shape[0] == 4


def test_planned_fp16_survives_a_feature_stream_beyond_fp16_range(tmp_path):
    """The body's last projection scaled 1000 times and the tail's first conv scaled back: the
    body output and the residual sum overflow FP16 while the model stays sane (weights stay
    below the converter's 1e4 clamp). BF16's plan needs no island there."""
    from tests.deploytool.build.test_precision import (
        assert_planned_fp16_holds_where_naive_fp16_overflows,
    )

    state = original_state(scale=[4])
    factor = 1e3
    for key in ("body.mlp_head.3.weight", "body.mlp_head.3.bias"):
        state[key] = state[key] * factor
    state["tail.0.0.0.weight"] = state["tail.0.0.0.weight"] / factor
    out = tmp_path / "stress"
    manifest = export_tiny("ipt-sr-x4", out, weights=save_official(state, tmp_path / "stress.pt", wrapper=None), bf16=True)
    assert_planned_fp16_holds_where_naive_fp16_overflows(out, manifest)
    assert_bf16_plan_needs_no_range(out, manifest)


@pytest.mark.skipif(not SET5_X4.is_dir(), reason="../shared/testsets/Set5 is not present")
def test_whole_images_agree_with_the_official_chop(tmp_path):
    """Our tiler (batches of 48 px tiles at a stride of 12, 12 px dropped at inner edges, centres
    averaged) reproduces the original's forward_chop away from the image's last 48 px, which the
    chop assembles from separate edge strips."""
    from deploytool.build.networks import export_weights
    from deploytool.runtime import images, inference
    from deploytool.verify.parity import original_runner

    out = tmp_path / "ipt"
    manifest = export_tiny("ipt-sr-x4", out, batch=4, fp16=False)
    pixels = images.read_image(SET5_X4 / "birdx4.png").pixels.astype(np.float32)  # 72 x 72
    ours = inference.restore_array(OrtRunner(out / FP32_FILE), manifest, pixels, overlap=manifest.tiling.overlap)
    entry, _, state = export_weights(manifest)
    official = original_runner(entry, state)(pixels.transpose(2, 0, 1)[None].copy())[0].transpose(1, 2, 0)
    assert ours.shape == official.shape == (288, 288, 3)
    interior = slice(0, (72 - 48) * 4)
    np.testing.assert_allclose(ours[interior, interior], official[interior, interior], atol=1e-3)
    report = parity.verify(out, backends=["ort"], images_dir=SET5_X4, max_images=2, synthetic_batches=1)
    tiled = [c for c in report["comparisons"] if c["inputs"].startswith("image")]
    assert len(tiled) == 2 and all(c["psnr"] > 25 for c in tiled)
