"""From a model id and a weights source to a ready PyTorch model (ours or the original)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

import model_defs
from deploytool.build import checkpoints
from deploytool.build.registry import ModelEntry, WeightsInfo
from deploytool.errors import BackendUnavailable, CheckpointError, DeployError
from deploytool.runtime.manifest import Manifest, WeightsSource
from model_defs.family import OriginalUnavailable


def resolve_source(
    entry: ModelEntry,
    *,
    weights: str | Path | None = None,
    random_init: bool = False,
    seed: int = 0,
    download: bool = True,
    progress: bool = True,
) -> WeightsSource:
    """Pick the weights: a given file, a seeded random init, or the official download (cached)."""
    if weights is not None and random_init:
        raise DeployError("pass either --weights or --random-init, not both")
    if random_init:
        return WeightsSource(kind="random-init", seed=seed)
    if weights is None:
        if not download:
            raise DeployError(f"{entry.id}: no weights given; pass --weights PATH or --random-init")
        if not entry.weights.url:
            raise DeployError(f"{entry.id} has no official download; pass --weights PATH")
        weights = checkpoints.fetch(entry.weights.url, filename=entry.weights.filename, sha256=entry.weights.sha256, progress=progress)
    loaded = checkpoints.load_state_dict_file(weights)
    return WeightsSource(kind="checkpoint", path=str(Path(weights).resolve()), sha256=loaded.sha256, wrapper_key=loaded.wrapper_key)


def load_state_dict(entry: ModelEntry, source: WeightsSource, *, unused: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """The weights as a flat state dict in the official key layout, cut to this id's task.

    A checkpoint holding several tasks (IPT's pre-training file) gives only this id's head, tail
    and query; what was left out, and why, goes into `unused` when one is passed.
    """
    if source.kind == "random-init":
        torch.manual_seed(source.seed or 0)
        return model_defs.build_model(entry.family, entry.arch).state_dict()
    loaded = checkpoints.load_state_dict_file(source.path)
    if source.sha256 and loaded.sha256 != source.sha256:
        raise CheckpointError(
            f"{source.path} changed since export (sha256 {loaded.sha256[:12]}… instead of {source.sha256[:12]}…); "
            "re-export, or pass the original file with --weights"
        )
    try:
        state_dict, left_out = model_defs.select_task_weights(entry.family, loaded.state_dict, entry.task_index)
    except ValueError as exc:
        raise CheckpointError(f"{source.path}: {exc}") from None
    if unused is not None:
        unused.update(left_out)
    return state_dict


def instantiate_original(entry: ModelEntry, arch: dict[str, Any]) -> torch.nn.Module:
    """The original implementation of the entry's family (the parity reference), with its own init."""
    try:
        return model_defs.family(entry.family).original.build(**arch)
    except OriginalUnavailable as exc:
        raise BackendUnavailable(f"{entry.id}: {exc}") from None


def build_original(entry: ModelEntry, arch: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The original with these weights, loaded strictly, called as its own code calls it."""
    model = instantiate_original(entry, arch)
    model.load_state_dict(state_dict, strict=True)
    return model_defs.family(entry.family).original.call_as_original(model, entry).eval()


def original_name(entry: ModelEntry) -> str:
    return model_defs.family(entry.family).original.name


def arch_for(entry: ModelEntry, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    try:
        return model_defs.reconcile_arch(entry.family, entry.arch, state_dict)
    except ValueError as exc:
        raise CheckpointError(f"{entry.id}: {exc}") from None


def _computed_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Persistent buffers the definition computes from its hyperparameters (position indices,
    training-size masks): a checkpoint must hold the same. BatchNorm running statistics are
    learned, not computed, so they are left out."""
    learned = {
        f"{module_name}.{buffer_name}" if module_name else buffer_name
        for module_name, module in model.named_modules()
        if isinstance(module, torch.nn.modules.batchnorm._NormBase)
        for buffer_name, _ in module.named_buffers(recurse=False)
    }
    persistent = model.state_dict()
    return {name: buffer.clone() for name, buffer in model.named_buffers() if name in persistent and name not in learned}


def build_def(entry: ModelEntry, state_dict: dict[str, torch.Tensor], *, source: str = "checkpoint") -> torch.nn.Module:
    """Our export-friendly definition, strictly loaded, with carried buffers checked."""
    model = model_defs.build_model(entry.family, arch_for(entry, state_dict))
    computed = _computed_buffers(model)
    checkpoints.load_strict(model, state_dict, model_id=entry.id, source=source)
    for name, expected in computed.items():
        if not torch.equal(model.get_buffer(name).to(expected.dtype), expected):
            raise CheckpointError(
                f"{source}: buffer {name} differs from the one {entry.id} computes for its hyperparameters "
                "(window size or training patch size do not match this model id)"
            )
    return model.eval()


def entry_for_export(manifest: Manifest) -> ModelEntry:
    """The model entry an export was made from, rebuilt from its manifest alone: an export made
    with a config that is no longer in the registry (DEPLOYTOOL_CONFIG_PATH unset) still runs."""
    model = manifest.model
    return ModelEntry(
        id=manifest.model_id,
        family=model.family,
        task=model.task,
        scale=manifest.scale,
        channels=manifest.channels,
        out_channels=manifest.out_channels,
        tiling=manifest.tiling,
        arch=dict(model.arch),
        weights=WeightsInfo(),
        tolerances=dict(manifest.tolerances),
        description=model.description,
        reference_chop=model.reference_chop,
        task_index=model.task_index,
        views=tuple(view.name for view in manifest.views),
    )


def export_weights(manifest: Manifest, weights: str | Path | None = None) -> tuple[ModelEntry, WeightsSource, dict[str, torch.Tensor]]:
    """Entry, source and state dict an export was made from; `weights` relocates a moved checkpoint."""
    entry = entry_for_export(manifest)
    source = manifest.source
    if weights is not None:
        if source.kind != "checkpoint":
            raise DeployError(f"this export was made from a {source.describe()}; --weights does not apply")
        source = dataclasses.replace(source, path=str(Path(weights).resolve()))
    elif source.kind == "checkpoint" and not Path(source.path).is_file():
        raise CheckpointError(f"the checkpoint this export was made from is gone ({source.path}); pass it with --weights")
    return entry, source, load_state_dict(entry, source)
