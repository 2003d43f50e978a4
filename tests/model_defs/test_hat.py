"""Our HAT against the original (spandrel's port), for every model id's structure."""

import pytest
import torch
from torch import nn

from deploytool.build.networks import build_def
from deploytool.errors import CheckpointError
from model_defs.hat import overlap_relative_position_index
from model_defs.windows import overlapping_windows
from tests.helpers import (
    assert_matches_original,
    family_ids,
    full_size_state_dicts,
    tiny_entry,
    tiny_state_dict,
)


def unfolded_windows(x: torch.Tensor, window: int, overlap_window: int) -> torch.Tensor:
    """HAT's OCAB key/value windows as the original computes them (nn.Unfold + rearrange)."""
    b, h, w, c = x.shape
    margin = (overlap_window - window) // 2
    columns = nn.Unfold(overlap_window, stride=window, padding=margin)(x.permute(0, 3, 1, 2))
    windows = columns.view(b, c, overlap_window * overlap_window, -1).permute(0, 3, 2, 1)
    return windows.reshape(-1, overlap_window * overlap_window, c)


@pytest.mark.parametrize("shape", [(1, 16, 16, 3), (2, 32, 48, 5), (1, 64, 16, 2)])
@pytest.mark.parametrize("window, overlap_window", [(16, 24), (8, 12), (4, 8)])
def test_overlapping_windows_equal_the_unfold(shape, window, overlap_window):
    b, h, w, c = shape
    if h % window or w % window:
        pytest.skip("the tile must be a window multiple")
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(overlapping_windows(x, window, overlap_window), unfolded_windows(x, window, overlap_window))


def test_oca_index_needs_the_wrap_around_the_graph_does_not():
    from spandrel.architectures.HAT.__arch.HAT import HAT

    official = HAT(window_size=16, overlap_ratio=0.5, embed_dim=60, depths=[1], num_heads=[2]).relative_position_index_OCA
    ours = overlap_relative_position_index(16, 24)
    assert torch.equal(ours, official) and official.min() < 0
    entries = (16 + 24 - 1) ** 2
    table = torch.randn(entries, 2)
    assert torch.equal(table[official.reshape(-1)], table[(official % entries).reshape(-1)])


@pytest.mark.parametrize("model_id", family_ids("hat"))
def test_matches_original_eagerly(model_id):
    window = tiny_entry(model_id).arch["window_size"]
    # a window multiple with batch 2, and an unaligned size the model reflect-pads
    assert_matches_original(model_id, [(2, 3, 2 * window, 3 * window), (1, 3, window + 5, 2 * window + 3)])


@pytest.mark.parametrize("model_id", ["hat-s-x2", "hat-x3", "hat-l-x4", "real-hat-gan-x4"])
def test_full_size_keys_and_shapes_match_the_original(model_id):
    ours, _ = full_size_state_dicts(model_id)
    assert {"relative_position_index_SA", "relative_position_index_OCA"} <= set(ours)


def test_params_ema_is_used_and_reported(tmp_path):
    from deploytool.build.networks import WeightsSource, load_state_dict

    entry = tiny_entry("hat-s-x4")
    ema, plain = tiny_state_dict(entry, seed=1), tiny_state_dict(entry, seed=2)
    path = tmp_path / "HAT-S_SRx4.pth"
    torch.save({"params": plain, "params_ema": ema}, path)
    from deploytool.build.checkpoints import load_state_dict_file

    loaded = load_state_dict_file(path)
    source = WeightsSource(kind="checkpoint", path=str(path), sha256=loaded.sha256, wrapper_key=loaded.wrapper_key)
    assert loaded.wrapper_key == "params_ema" and "'params_ema' weights" in source.describe()
    state = load_state_dict(entry, source)
    assert all(torch.equal(state[k], ema[k]) for k in ema)


def test_tampered_position_index_is_refused():
    entry = tiny_entry("hat-x2")
    state = tiny_state_dict(entry)
    state["relative_position_index_OCA"] = state["relative_position_index_OCA"] % 1521
    with pytest.raises(CheckpointError, match="relative_position_index_OCA differs"):
        build_def(entry, state)


def test_swinir_checkpoint_is_refused_with_the_key_difference():
    swinir = tiny_entry("swinir-m-x2")
    with pytest.raises(CheckpointError, match="missing.*unexpected"):
        build_def(tiny_entry("hat-x2"), tiny_state_dict(swinir))
