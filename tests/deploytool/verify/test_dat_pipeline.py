"""DAT through the pipeline: channel attention in the graph, graph size, FP16 where the norms overflow."""

from pathlib import Path

import numpy as np
import onnx
import pytest

from deploytool.build import precision
from deploytool.build.graph_passes import readers
from deploytool.runtime.input_batches import synthetic_batch
from deploytool.runtime.manifest import FP16_FILE, FP32_FILE
from deploytool.verify import parity
from tests.deploytool.build.test_export import assert_static
from tests.helpers import (
    assert_bf16_plan_needs_no_range,
    export_tiny,
    ops_reading_the_input,
    save_official,
    tiny_entry,
    tiny_state_dict,
    true_fp16_outputs,
)

SET5_X4 = Path(__file__).resolve().parents[4] / "shared" / "testsets" / "Set5" / "LR_bicubic" / "X4"


def test_channel_attention_and_gates_are_in_the_graph(tiny_exports):
    manifest = tiny_exports.manifest("dat-x2")
    assert manifest.fp16.fp16_flop_share > 0.9
    ops = {n.op_type for n in onnx.load(str(tiny_exports.folder("dat-x2") / FP32_FILE)).graph.node}
    assert "ReduceL2" in ops and "ReduceMean" in ops  # channel attention, channel gates (their pooling)


def test_channel_attention_moves_the_tokens_once_each_way(tiny_exports):
    """Channel attention runs on the feature map: in each channel block (the odd ones) one
    Transpose into the map and one back to tokens, besides k's for q @ kᵀ (a MatMul operand:
    ONNX Runtime and OpenVINO fold it into the product). The original's layout took four, one a
    5-D permutation of q, k and v that OpenVINO runs on its generic kernel (README: DAT's channel
    attention on feature maps)."""
    model = onnx.load(str(tiny_exports.folder("dat-x2") / FP32_FILE))
    paths, value_readers = precision.node_paths(model), readers(model.graph)
    moved: dict[tuple[str, ...], list[int]] = {}
    for node in model.graph.node:
        path = paths[node.name]  # ("layers.0", "blocks.1", "attn") in a block's attention
        if node.op_type != "Transpose" or len(path) < 3 or not path[1].startswith("blocks.") or path[2] != "attn":
            continue
        perm = next(list(a.ints) for a in node.attribute if a.name == "perm")
        matmul_operand = perm[-2:] == [len(perm) - 1, len(perm) - 2] and {n.op_type for n in value_readers[node.output[0]]} == {"MatMul"}
        if int(path[1].split(".")[1]) % 2 and not matmul_operand:
            moved.setdefault(path[:2], []).append(len(perm))
    assert len(moved) == 2 and all(ranks == [3, 3] for ranks in moved.values()), moved


@pytest.mark.parametrize("model_id", ["dat-x2", "dat-s-x4"])
def test_graph_holds_weights_not_per_block_biases_or_masks(tmp_path, model_id):
    """Position biases are gathered at run time from each block's small table, and the shifted
    windows' masks are two (tokens, tokens) constants per window orientation: a larger tile's
    file is no larger, the weights and those masks, rectangular windows included."""
    small = export_tiny(model_id, tmp_path / "small", fp16=False, tile=(32, 64))
    large = export_tiny(model_id, tmp_path / "large", fp16=False, tile=(96, 160))
    model = onnx.load(str(tmp_path / "large" / FP32_FILE))
    assert ops_reading_the_input(model) == ops_reading_the_input(onnx.load(str(tmp_path / "small" / FP32_FILE)))
    # a smaller tile's mask may be folded in pieces below the fold limit; a larger one's is not
    growth = large.files[FP32_FILE].bytes - small.files[FP32_FILE].bytes
    assert growth <= 4096, growth
    assert_static(model)
    entry = tiny_entry(model_id)
    tokens = entry.arch["split_size"][0] * entry.arch["split_size"][1]
    float_constants = sum(int(np.prod(i.dims)) * 4 for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT)
    # the training-size masks of the checkpoint are not used by the graph
    parameters = sum(v.numel() * 4 for k, v in tiny_state_dict(entry).items() if v.is_floating_point() and "attn_mask" not in k)
    masks = 4 * tokens * tokens * 4  # last row and last column, for both orientations
    assert float_constants <= parameters + masks + 4096, (float_constants, parameters)


def test_channel_attention_norms_stay_fp32_where_fp16_overflows_and_bf16_would_lose_addends(tmp_path):
    """DAT's channel attention L2-normalises q and k over every token of the tile: the sum of
    squares grows with the tile (65536 terms at 256 px) and overflows FP16 long before q does.
    Scaling the channel blocks' q and k leaves the FP32 model unchanged (they are normalised);
    a naive FP16 graph then gets inf norms (q / inf = 0: uniform attention), the planned graph
    keeps those ReduceL2 nodes in FP32 by their measured accumulator. The BF16 plan keeps them
    FP32 by their length (1024 values), with no island for range."""
    entry = tiny_entry("dat-x2")
    state = tiny_state_dict(entry)
    c = entry.arch["embed_dim"]
    for key in [k for k in state if k.endswith(("attn.qkv.weight", "attn.qkv.bias"))]:
        if ".blocks.1." in key:  # the channel-attention blocks
            state[key][: 2 * c] *= 64
    weights = save_official(state, tmp_path / "stressed.pth")
    manifest = export_tiny("dat-x2", tmp_path / "e", weights=weights, tile=(32, 32), bf16=True)
    assert manifest.fp16.fp32_by_op.get("ReduceL2") == 2 * 2  # q and k of both channel blocks
    fp32 = onnx.load(str(tmp_path / "e" / FP32_FILE))
    norms = [n.output[0] for n in fp32.graph.node if n.op_type == "ReduceL2"]
    batch = synthetic_batch(manifest.input.shape, 7)
    ranges = precision.measure_ranges(fp32, [batch])
    assert min(ranges[name] for name in norms) ** 2 > precision.FP16_MAX  # the stress is real
    naive = precision.convert(fp32, None)
    planned = onnx.load(str(tmp_path / "e" / FP16_FILE))
    for graph, finite in ((naive, False), (planned, True)):
        outputs = true_fp16_outputs(graph, batch, ["output", *norms])
        assert all(np.isfinite(o).all() for o in outputs[1:]) == finite
        if finite:
            expected = precision.run_graph(fp32, [batch])[0]
            assert np.abs(outputs[0] - expected).max() < manifest.tolerances["fp16_max_abs"]
    norm_nodes = [n.name for n in fp32.graph.node if n.op_type == "ReduceL2"]
    assert_bf16_plan_needs_no_range(tmp_path / "e", manifest, norm_nodes)


@pytest.mark.skipif(not SET5_X4.is_dir(), reason="../shared/testsets/Set5 is not present")
def test_verify_with_real_images(tmp_path, tiny_exports):
    """The original on whole images vs our graphs through the tiler. Tiles differ from the whole
    image by design (channel attention and gates span the tile) and, on images that are not a
    window multiple (bird: 72 px), at the border: the tiler reflect-pads the image where the
    original zero-pads q, k, v inside attention."""
    out = tiny_exports.copy("dat-x4", tmp_path / "dat")
    report = parity.verify(out, backends=["ort", "ort-fp16"], images_dir=SET5_X4, max_images=2, synthetic_batches=1)
    assert report["passed"], parity.markdown(report)
    assert sum(c["inputs"].startswith("image") for c in report["comparisons"]) == 4
