"""Our Restormer against the original (spandrel_extra_arches' port), for every model id's structure."""

import dataclasses

import pytest
import torch

from deploytool.build import registry
from deploytool.build.networks import build_def, build_original, instantiate_original
from model_defs.restormer import BiasFreeNorm, WithBiasNorm
from tests.helpers import family_ids, full_size_state_dicts


def restormer_ids() -> list[str]:
    return family_ids("restormer")


def tiny_entry(model_id: str):
    entry = registry.get(model_id)
    arch = {**entry.arch, "dim": 8, "num_blocks": [1, 1, 1, 2], "num_refinement_blocks": 1, "heads": [1, 2, 2, 4]}
    return dataclasses.replace(entry, arch=arch, tiling=dataclasses.replace(entry.tiling, tile=(32, 32)))


def tiny_state(entry, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = instantiate_original(entry, entry.arch).state_dict()
    generator = torch.Generator().manual_seed(seed)
    return {k: v + 0.1 * torch.randn(v.shape, generator=generator) for k, v in state.items()}


@pytest.mark.parametrize("model_id", restormer_ids())
def test_matches_original(model_id):
    entry = tiny_entry(model_id)
    state = tiny_state(entry)
    ours, original = build_def(entry, state), build_original(entry, entry.arch, state)
    x = torch.rand(2, entry.channels, 32, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = original(x), ours(x)
    assert actual.shape == (2, entry.out_channels, 32, 24)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("model_id", restormer_ids())
def test_full_size_keys_and_shapes_match_the_original(model_id):
    entry = registry.get(model_id)
    ours, _ = full_size_state_dicts(model_id)
    with_bias = "encoder_level1.0.norm1.body.bias" in ours
    assert with_bias == (entry.arch["LayerNorm_type"] == "WithBias")


def test_norms_are_exact():
    x = torch.randn(2, 6, 5, 7) * 3 + 1
    with_bias, bias_free = WithBiasNorm(6), BiasFreeNorm(6)
    for norm in (with_bias, bias_free):
        norm.weight.data = torch.rand(6) + 0.5
    with_bias.bias.data = torch.randn(6)
    tokens = x.flatten(2).transpose(1, 2)
    sigma = tokens.var(-1, keepdim=True, unbiased=False)
    expected_bias = (tokens - tokens.mean(-1, keepdim=True)) / torch.sqrt(sigma + 1e-5) * with_bias.weight + with_bias.bias
    expected_free = tokens / torch.sqrt(sigma + 1e-5) * bias_free.weight
    for norm, expected in ((with_bias, expected_bias), (bias_free, expected_free)):
        torch.testing.assert_close(norm(x).flatten(2).transpose(1, 2), expected, atol=1e-5, rtol=0)
