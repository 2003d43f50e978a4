"""Our SwinIR against the original (spandrel's port), for every model id's structure."""

import dataclasses

import pytest
import torch

from deploytool.build.networks import build_def, build_original
from deploytool.errors import CheckpointError
from tests.helpers import (
    assert_matches_original,
    family_ids,
    full_size_state_dicts,
    save_official,
    tiny_entry,
    tiny_state_dict,
)


@pytest.mark.parametrize("model_id", family_ids("swinir"))
def test_matches_original_eagerly(model_id):
    entry = tiny_entry(model_id)
    window, channels = entry.arch["window_size"], entry.channels
    assert_matches_original(model_id, [(2, channels, 2 * window, 3 * window), (1, channels, 2 * window + 3, 2 * window + 5)])


@pytest.mark.parametrize("model_id", family_ids("swinir"))
def test_full_size_keys_and_shapes_match_the_original(model_id):
    ours, _ = full_size_state_dicts(model_id)
    assert any(k.endswith("attn_mask") for k in ours) and any(k.endswith("relative_position_index") for k in ours)


@pytest.mark.parametrize("wrapper", ["params", "params_ema", None])
def test_official_wrappers_load_strictly(tmp_path, wrapper):
    from deploytool.build.networks import WeightsSource, load_state_dict

    entry = tiny_entry("swinir-real-m-x4")
    state = tiny_state_dict(entry)
    path = save_official(state, tmp_path / "real.pth", wrapper=wrapper)
    source = WeightsSource(kind="checkpoint", path=str(path))
    build_def(entry, load_state_dict(entry, source), source=str(path))


def test_training_patch_size_is_read_from_the_masks():
    """The DIV2K (s48) files load into the DF2K (s64) model id: img_size only shapes buffers."""
    entry = tiny_entry("swinir-m-x2")
    window = entry.arch["window_size"]
    trained_at_3_windows = dataclasses.replace(entry, arch={**entry.arch, "img_size": 3 * window})
    state = tiny_state_dict(trained_at_3_windows)
    assert state["layers.0.residual_group.blocks.1.attn_mask"].shape[0] == 9
    ours = build_def(entry, state)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), build_original(trained_at_3_windows, trained_at_3_windows.arch, state)(x), atol=1e-5, rtol=0)


def test_tampered_buffer_is_refused():
    entry = tiny_entry("swinir-m-x2")
    state = tiny_state_dict(entry)
    state["layers.1.residual_group.blocks.0.attn.relative_position_index"] = state["layers.1.residual_group.blocks.0.attn.relative_position_index"].flip(0)
    with pytest.raises(CheckpointError, match="relative_position_index differs"):
        build_def(entry, state, source="tampered.pth")


def test_wrong_family_checkpoint_names_the_key_difference():
    entry = tiny_entry("swinir-m-x2")
    state = tiny_state_dict(tiny_entry("swinir-s-x2"))
    with pytest.raises(CheckpointError) as error:
        build_def(entry, state, source="lightweight.pth")
    message = str(error.value)
    assert "lightweight.pth does not fit swinir-m-x2" in message and "missing" in message and "\n" not in message
