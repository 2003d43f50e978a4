"""Our export-friendly ESRT against the separate reference (official structure and numerics)."""

from pathlib import Path

import pytest
import torch

from deploytool.build import registry
from deploytool.build.networks import build_def, build_original
from model_defs.esrt import ESRT, fold_3x3, patches_3x3

WEIGHTS = Path(__file__).resolve().parents[3] / "shared" / "weights" / "esrt_x2_partial_epoch20.pth"


def random_state(scale: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(scale)
    state = ESRT(upscale=scale).state_dict()
    generator = torch.Generator().manual_seed(scale)
    return {k: v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in state.items()}


def test_patches_and_fold_equal_unfold_and_fold():
    x = torch.randn(2, 5, 6, 7)
    torch.testing.assert_close(patches_3x3(x), torch.nn.Unfold(3, padding=1)(x).transpose(1, 2), atol=0, rtol=0)
    tokens = torch.randn(2, 42, 45)
    expected = torch.nn.Fold((6, 7), 3, padding=1)(tokens.transpose(1, 2))
    torch.testing.assert_close(fold_3x3(tokens, (6, 7)), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_matches_the_reference(scale):
    entry = registry.get(f"esrt-x{scale}")
    state = random_state(scale)
    ours, original = build_def(entry, state), build_original(entry, entry.arch, state)
    # 16x12: four equal chunks (the batched path); 9x7: N % 4 != 0 (the uneven path)
    for shape in [(2, 3, 16, 12), (1, 3, 9, 7)]:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            torch.testing.assert_close(ours(x), original(x), atol=1e-5, rtol=0)


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="../shared/weights is not present")
def test_real_checkpoint_loads_strictly_and_matches():
    from deploytool.build.checkpoints import load_state_dict_file

    entry = registry.get("esrt-x2")
    state = load_state_dict_file(WEIGHTS).state_dict
    ours, original = build_def(entry, state), build_original(entry, entry.arch, state)
    x = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), original(x), atol=1e-5, rtol=0)


def test_chopped_reference_stitches_quadrants_at_the_model_scale():
    """The official forward_chop protocol, with the model's scale: an identity-like model survives it."""
    from model_defs.reference.esrt import ChoppedReference

    upsample = torch.nn.Upsample(scale_factor=2, mode="nearest")
    chopped = ChoppedReference(upsample, scale=2, min_size=500)
    x = torch.rand(1, 3, 30, 26)
    torch.testing.assert_close(chopped(x), upsample(x), atol=0, rtol=0)
    tiny = ChoppedReference(upsample, scale=2, min_size=10)  # unreachable: must still end
    torch.testing.assert_close(tiny(x), upsample(x), atol=0, rtol=0)
