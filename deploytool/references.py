"""The original implementations that parity is measured against (never our own model_defs).

SwinIR, HAT and IPT come from spandrel's faithful ports. They are imported lazily: only
`deploytool verify` and the tests need them.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import torch

from deploytool.errors import BackendUnavailable
from deploytool.registry import ModelEntry


def _spandrel_class(module: str, name: str) -> Callable[..., torch.nn.Module]:
    def build(**arch: Any) -> torch.nn.Module:
        try:
            return getattr(importlib.import_module(module), name)(**arch)
        except ImportError as exc:
            raise BackendUnavailable(f"the parity reference needs spandrel ({exc}); pip install spandrel") from None

    return build


REFERENCES: dict[str, Callable[..., torch.nn.Module]] = {
    "swinir": _spandrel_class("spandrel.architectures.SwinIR.__arch.SwinIR", "SwinIR"),
}


def reference_name(entry: ModelEntry) -> str:
    return {"swinir": "spandrel SwinIR"}.get(entry.reference, entry.reference)


def instantiate_reference(entry: ModelEntry, arch: dict[str, Any]) -> torch.nn.Module:
    """The original model with its own initialisation."""
    try:
        builder = REFERENCES[entry.reference]
    except KeyError:
        raise BackendUnavailable(f"{entry.id}: no parity reference is known for {entry.reference!r}") from None
    return builder(**arch)


def build_reference(entry: ModelEntry, arch: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The original model with the same weights, loaded strictly."""
    model = instantiate_reference(entry, arch)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()
