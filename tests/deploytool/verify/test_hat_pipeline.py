"""HAT through the pipeline: no unfold, graph size at any tile, real images."""

from pathlib import Path

import numpy as np
import onnx
import pytest

from deploytool.runtime.manifest import FP32_FILE
from deploytool.verify import parity
from tests.helpers import export_tiny, tiny_entry, tiny_state_dict

SET5_X4 = Path(__file__).resolve().parents[4] / "shared" / "testsets" / "Set5" / "LR_bicubic" / "X4"


def test_overlapping_windows_are_slices_not_unfold(tiny_exports):
    manifest = tiny_exports.manifest("hat-x4")
    assert manifest.fp16.fp16_flop_share > 0.9
    assert not {n.op_type for n in onnx.load(str(tiny_exports.folder("hat-x4") / FP32_FILE)).graph.node} & {"Im2Col", "Col2Im"}


def bias_gathers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Gathers from a constant table (GatherND: the exporter writes the bias lookup as advanced
    indexing); every other Gather picks by a constant index (q, k or v out of one projection, the
    pooled value of each channel)."""
    initializers = {init.name: init for init in model.graph.initializer}
    gathers = [node for node in model.graph.node if node.op_type in ("Gather", "GatherND")]
    tables = [node for node in gathers if node.input[0] in initializers]
    picks = [node for node in gathers if node.op_type == "Gather" and node.input[1] in initializers]
    assert len(picks) + len(tables) == len(gathers)
    return tables


@pytest.mark.parametrize("model_id", ["hat-s-x4", "hat-x2"])
def test_graph_holds_weights_not_per_block_biases_or_masks(tmp_path, model_id):
    """Position biases are gathered at run time from each block's table through one shared index,
    and the shifted-window mask is two small per-axis masks: the file is the weights, at any tile."""
    # the tiny model's 2 heads make each gathered bias 512 KB, below the ids' 1 MB limit
    small = export_tiny(model_id, tmp_path / "small", fp16=False, tile=(32, 32), fold_limit_mb=0.25)
    large = export_tiny(model_id, tmp_path / "large", fp16=False, tile=(64, 96), fold_limit_mb=0.25)
    model = onnx.load(str(tmp_path / "large" / FP32_FILE))
    initializers = {init.name: init for init in model.graph.initializer}
    gathers = bias_gathers(model)
    blocks = 2 * (2 + 1)  # tiny: 2 groups of 2 window-attention blocks and one OCAB
    assert len(gathers) == blocks
    assert all(node.input[0] in initializers and len(initializers[node.input[0]].dims) == 2 for node in gathers)
    assert len({node.input[1] for node in gathers}) == 2  # one index for window attention, one for OCAB
    assert large.graph.nodes == small.graph.nodes
    growth = large.files[FP32_FILE].bytes - small.files[FP32_FILE].bytes
    # 4 x 6 windows: row and column masks of 4 and 6 windows of 256 x 256 (each 256 KB)
    assert growth <= (4 + 6 - 2 - 2) * 256 * 256 * 4 + 4096, growth
    float_constants = sum(int(np.prod(i.dims)) * 4 for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT)
    parameters = sum(v.numel() * 4 for k, v in tiny_state_dict(tiny_entry(model_id)).items() if v.is_floating_point())
    masks = (4 + 6) * 256 * 256 * 4
    assert float_constants <= parameters + masks + 4096, (float_constants, parameters)


@pytest.mark.skipif(not SET5_X4.is_dir(), reason="../shared/testsets/Set5 is not present")
def test_verify_with_real_images(tmp_path, tiny_exports):
    out = tiny_exports.copy("hat-x4", tmp_path / "hat")
    report = parity.verify(out, backends=["ort", "ort-fp16"], images_dir=SET5_X4, max_images=2, synthetic_batches=1)
    assert report["passed"], parity.markdown(report)
    assert sum(c["inputs"].startswith("image") for c in report["comparisons"]) == 4
