"""Our DAT against the original (spandrel's port), for every model id's structure."""

import dataclasses
import math

import pytest
import torch

from deploytool.build import registry
from deploytool.build.networks import build_def
from deploytool.errors import CheckpointError
from model_defs.dat import DAT, reconcile_arch, shifts_windows
from model_defs.windows import ShiftMasks, last_window_masks
from tests.helpers import (
    assert_matches_original,
    family_ids,
    full_size_state_dicts,
    tiny_entry,
    tiny_state_dict,
)

# official test options (zhengchen1999/DAT options/Test/test_DAT*_x*.yml)
OFFICIAL = {
    "dat-s": {"split_size": [8, 16], "expansion_factor": 2.0, "resi_connection": "1conv", "embed_dim": 180, "depth": [6] * 6, "upsampler": "pixelshuffle"},
    "dat": {"split_size": [8, 32], "expansion_factor": 4.0, "resi_connection": "1conv", "embed_dim": 180, "depth": [6] * 6, "upsampler": "pixelshuffle"},
    "dat-l": {"split_size": [8, 32], "expansion_factor": 4.0, "resi_connection": "1conv", "embed_dim": 180, "depth": [6] * 6, "upsampler": "pixelshuffle"},
    "dat-2": {"split_size": [8, 32], "expansion_factor": 2.0, "resi_connection": "1conv", "embed_dim": 180, "depth": [6] * 6, "upsampler": "pixelshuffle"},
    "dat-light": {
        "split_size": [8, 32],
        "expansion_factor": 2.0,
        "resi_connection": "3conv",
        "embed_dim": 60,
        "depth": [18],
        "upsampler": "pixelshuffledirect",
    },
}
FILES = {"dat-s": "DAT_S", "dat": "DAT", "dat-l": "DAT_L", "dat-2": "DAT_2", "dat-light": "DAT_light"}
# parameters (millions, x4): the official README's model table; DAT-light's 573K from the paper
PARAMS_M = {"dat-s-x4": 11.21, "dat-x4": 14.80, "dat-2-x4": 11.21, "dat-light-x4": 0.573}


def variant(model_id: str) -> str:
    return model_id.rsplit("-x", 1)[0]


def test_every_dat_id_is_registered_with_the_official_hyperparameters():
    assert family_ids("dat") == sorted(f"{v}-x{s}" for v in OFFICIAL for s in (2, 3, 4))
    for model_id in family_ids("dat"):
        entry = registry.get(model_id)
        for key, value in OFFICIAL[variant(model_id)].items():
            assert entry.arch[key] == value, (model_id, key)
        assert entry.arch["upscale"] == entry.scale and entry.arch["img_size"] == 64
        assert entry.weights.filename == f"{FILES[variant(model_id)]}_x{entry.scale}.pth"
        assert entry.weights.url is None and "--weights" in entry.weights.note  # Google Drive only
        # tiles need no padding and start on the window grid: a multiple of the larger window side
        assert entry.tiling.tile_multiple == max(entry.arch["split_size"])
        assert entry.tiling.tile[0] % entry.tiling.tile_multiple == 0 and entry.tiling.overlap % entry.tiling.tile_multiple == 0


@pytest.mark.parametrize("model_id", family_ids("dat"))
def test_matches_original_eagerly(model_id):
    grid = max(tiny_entry(model_id).arch["split_size"])
    # a window multiple (rectangular) with batch 2, and an unaligned size the original pads inside attention
    assert_matches_original(model_id, [(2, 3, grid, 2 * grid), (1, 3, grid + 5, 2 * grid - 3)])


@pytest.mark.parametrize("model_id", ["dat-s-x2", "dat-x3", "dat-2-x4", "dat-light-x4"])
def test_full_size_keys_and_shapes_match_the_original(model_id):
    ours, original = full_size_state_dicts(model_id)
    # an official file's shapes give back the official hyperparameters
    arch = registry.get(model_id).arch
    assert reconcile_arch(dict(arch), original) == {**arch, "qkv_bias": True}
    # shifted blocks keep the training-size masks: block 2 of group 0, block 0 of group 1
    assert {"layers.0.blocks.2.attn.attn_mask_0", "layers.0.blocks.2.attn.attn_mask_1"} <= set(ours)
    assert "layers.0.blocks.0.attn.attn_mask_0" not in ours


@pytest.mark.parametrize("model_id", sorted(PARAMS_M))
def test_parameter_counts_are_the_published_ones(model_id):
    parameters = sum(p.numel() for p in DAT(**registry.get(model_id).arch).parameters())
    assert math.isclose(parameters / 1e6, PARAMS_M[model_id], abs_tol=0.005)


def test_shift_schedule_is_the_originals():
    shifted = [(g, b) for g in range(4) for b in range(0, 12, 2) if shifts_windows(g, b)]
    assert shifted == [(0, 2), (0, 6), (0, 10), (1, 0), (1, 4), (1, 8), (2, 2), (2, 6), (2, 10), (3, 0), (3, 4), (3, 8)]


@pytest.mark.parametrize("split_size", [(8, 32), (8, 16), (4, 8)])
@pytest.mark.parametrize("size", [(32, 64), (64, 32), (96, 160)])
def test_shift_masks_select_what_the_original_masks(split_size, size):
    """Two (tokens, tokens) masks, repeated over the window grid with the bias, mask exactly the
    pairs the original's (windows, tokens, tokens) mask does, for both window orientations."""
    from spandrel.architectures.DAT.__arch.DAT import Adaptive_Spatial_Attention

    s0, s1 = split_size
    h, w = size
    original = Adaptive_Spatial_Attention(64, 4, reso=h, split_size=list(split_size), shift_size=[s0 // 2, s1 // 2])
    for branch, (window, expected) in enumerate(zip(((s0, s1), (s1, s0)), original.calculate_mask(h, w))):
        tokens = window[0] * window[1]
        grid = (h // window[0], w // window[1])
        masked = ShiftMasks(*last_window_masks(*window)).window_mask(1, *grid).reshape(grid[0] * grid[1], tokens, tokens)
        assert torch.equal(masked < -50, expected != 0), branch
        assert set(masked.unique().tolist()) <= {0.0, -100.0, -200.0}


def test_training_size_masks_are_the_originals():
    entry = tiny_entry("dat-x2")
    ours, original = build_def(entry, tiny_state_dict(entry)).state_dict(), tiny_state_dict(entry)
    masks = [k for k in original if "attn_mask" in k]
    assert masks and all(torch.equal(ours[k], original[k]) for k in masks)


def test_trained_batchnorm_statistics_load_and_are_used():
    """BatchNorm running statistics are learned buffers: loaded, not checked against a recomputation."""
    entry = tiny_entry("dat-s-x2")
    state = tiny_state_dict(entry)
    key = "layers.0.blocks.0.attn.dwconv.1.running_mean"
    model = build_def(entry, state)
    assert torch.equal(model.state_dict()[key], state[key]) and state[key].abs().sum() > 0


def test_tampered_position_buffers_are_refused():
    entry = tiny_entry("dat-x2")
    state = tiny_state_dict(entry)
    state["layers.0.blocks.0.attn.attns.1.relative_position_index"] = state["layers.0.blocks.0.attn.attns.1.relative_position_index"].flip(0)
    with pytest.raises(CheckpointError, match="relative_position_index differs"):
        build_def(entry, state)


def test_reconcile_arch_reads_a_checkpoint_with_other_hyperparameters():
    """A DAT-S-shaped x2 checkpoint (8x16 windows, 2x FFN, 3 heads) exports under the dat-x2 id."""
    dat = tiny_entry("dat-x2")
    other = tiny_entry("dat-s-x2")
    other = dataclasses.replace(other, arch={**other.arch, "num_heads": [6, 6], "embed_dim": 48, "img_size": 48})
    state = tiny_state_dict(other)
    arch = reconcile_arch(dict(dat.arch), state)
    assert arch["split_size"] == [8, 16] and arch["expansion_factor"] == 2.0
    assert arch["num_heads"] == [6, 6] and arch["embed_dim"] == 48 and arch["img_size"] == 48
    build_def(dat, state)  # loads strictly, buffers checked
    assert reconcile_arch(dict(dat.arch), tiny_state_dict(dat)) == {**dat.arch, "qkv_bias": True}


def test_reconcile_arch_refuses_what_it_cannot_read():
    dat = tiny_entry("dat-x2")
    with pytest.raises(CheckpointError, match="upscales x4, this id x2"):
        build_def(dat, tiny_state_dict(tiny_entry("dat-x4")))
    wide = dataclasses.replace(dat, arch={**dat.arch, "split_size": [16, 64], "img_size": 64})
    with pytest.raises(CheckpointError, match="16x64 windows do not divide this id's window grid of 32"):
        build_def(dat, tiny_state_dict(wide))
    state = tiny_state_dict(dat)
    del state["layers.1.blocks.2.ffn.sg.conv.weight"]
    with pytest.raises(ValueError, match="1 missing .*layers.1.blocks.2.ffn.sg.conv.weight"):
        reconcile_arch(dict(dat.arch), state)


def test_other_checkpoints_are_refused_with_the_key_difference():
    with pytest.raises(CheckpointError, match="missing.*unexpected"):
        build_def(tiny_entry("dat-x2"), tiny_state_dict(tiny_entry("hat-x2")))


def test_split_sizes_the_original_cannot_pad_are_refused():
    with pytest.raises(ValueError, match="one dividing the other"):
        DAT(split_size=[12, 16], embed_dim=32, depth=[1], num_heads=[2])
