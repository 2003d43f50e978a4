"""The original implementations that parity is measured against (never our export definitions).

SwinIR, HAT and IPT come from spandrel's faithful ports. ESRT has none: its reference is our
own structure-faithful rewrite of the official code in `model_defs/reference/`, sharing no code
with `model_defs/esrt.py`. All are imported lazily: only `deploytool verify` and tests need them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

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


def _spandrel_extra_class(module: str, name: str) -> Callable[..., torch.nn.Module]:
    """A port from spandrel_extra_arches, registered with spandrel explicitly.

    Its models carry non-commercial licenses: it is a verify/test-time reference only, installed
    with the `reference-nc` extra, never needed to export or run.
    """

    def build(**arch: Any) -> torch.nn.Module:
        try:
            import spandrel_extra_arches
        except ImportError as exc:
            raise BackendUnavailable(
                f"the parity reference needs spandrel_extra_arches ({exc}); pip install 'deploytool[reference-nc]' (non-commercial license)"
            ) from None
        spandrel_extra_arches.install(ignore_duplicates=True)
        return getattr(importlib.import_module(module), name)(**arch)

    return build


def _own_reference(module: str, name: str) -> Callable[..., torch.nn.Module]:
    """A reference we wrote from the official code where no third-party port exists (ESRT)."""

    def build(**arch: Any) -> torch.nn.Module:
        return getattr(importlib.import_module(module), name)(**arch)

    return build


REFERENCES: dict[str, Callable[..., torch.nn.Module]] = {
    "swinir": _spandrel_class("spandrel.architectures.SwinIR.__arch.SwinIR", "SwinIR"),
    "hat": _spandrel_class("spandrel.architectures.HAT.__arch.HAT", "HAT"),
    "esrt": _own_reference("model_defs.reference.esrt", "ESRT"),
    "restormer": _spandrel_extra_class("spandrel_extra_arches.architectures.Restormer.__arch.restormer_arch", "Restormer"),
    "ipt": _spandrel_class("spandrel.architectures.IPT.__arch.ipt", "IPT"),
}
REFERENCE_NAMES = {
    "swinir": "spandrel SwinIR",
    "hat": "spandrel HAT",
    "esrt": "model_defs.reference.esrt (official structure)",
    "restormer": "spandrel_extra_arches Restormer",
    "ipt": "spandrel IPT (whole images through its forward_chop)",
}


def reference_name(reference: str) -> str:
    """How a reference (a model entry's `reference`) is named in reports."""
    return REFERENCE_NAMES.get(reference, reference)


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
    if entry.reference in CALLED_AS_ORIGINAL:
        model = CALLED_AS_ORIGINAL[entry.reference](model)
    elif entry.reference_chop:
        model = ChoppedReference(model, scale=entry.scale, min_size=entry.reference_chop)
    return model.eval()


def forward_chop(model: torch.nn.Module, x: torch.Tensor, *, scale: int, min_size: int, shave: int = 10) -> torch.Tensor:
    """The official ESRT test.py inference: four overlapping quadrants, recursively, stitched.

    As in the original, except that the output scale is the model's (the original hard-codes
    4, which breaks x2/x3) and that `min_size` is a parameter (the original's 60000 pixels need
    ~15 GB for one attention map on CPU).
    """
    _, _, h, w = x.shape
    half_h, half_w = h // 2, w // 2
    size_h, size_w = half_h + shave, half_w + shave
    quadrants = [
        x[:, :, :size_h, :size_w],
        x[:, :, :size_h, w - size_w :],
        x[:, :, h - size_h :, :size_w],
        x[:, :, h - size_h :, w - size_w :],
    ]
    # the second condition stops the original's endless recursion once the shave dominates
    if size_h * size_w < min_size or size_h * size_w * 2 > h * w:
        outputs = [model(q) for q in quadrants]
    else:
        outputs = [forward_chop(model, q, scale=scale, min_size=min_size, shave=shave) for q in quadrants]
    h, w, half_h, half_w, size_h, size_w = (v * scale for v in (h, w, half_h, half_w, size_h, size_w))
    out = x.new_empty(x.shape[0], outputs[0].shape[1], h, w)
    out[:, :, :half_h, :half_w] = outputs[0][:, :, :half_h, :half_w]
    out[:, :, :half_h, half_w:] = outputs[1][:, :, :half_h, size_w - w + half_w :]
    out[:, :, half_h:, :half_w] = outputs[2][:, :, size_h - h + half_h :, :half_w]
    out[:, :, half_h:, half_w:] = outputs[3][:, :, size_h - h + half_h :, size_w - w + half_w :]
    return out


class ChoppedReference(torch.nn.Module):
    """The original run on whole images through its official chopping protocol."""

    def __init__(self, model: torch.nn.Module, *, scale: int, min_size: int):
        super().__init__()
        self.model, self.scale, self.min_size = model, scale, min_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] * x.shape[3] < self.min_size:
            return self.model(x)
        return forward_chop(self.model, x, scale=self.scale, min_size=self.min_size)


class IptReference(torch.nn.Module):
    """spandrel's IPT called as spandrel calls it: on [0, rgb_range] values, whole images through
    the official forward_chop (48 px tiles at a stride of 12, the central parts averaged).

    Unclamped, unlike spandrel's call and the official test, so that every backend is compared
    on the same unclamped output.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb_range, patch = self.model.rgb_range, self.model.patch_size
        if tuple(x.shape[-2:]) == (patch, patch):
            return self.model(x * rgb_range) / rgb_range
        from spandrel.architectures.IPT.__arch.model import Model

        if x.shape[0] != 1 or min(x.shape[-2:]) < patch:
            raise ValueError(f"IPT's forward_chop takes one image of at least {patch}x{patch} px, got {tuple(x.shape)}")
        self.model.set_scale(0)
        return Model(self.model).forward_chop(x * rgb_range) / rgb_range


# references whose original is not called as a plain module: the wrapper calls it as its own code does
CALLED_AS_ORIGINAL: dict[str, Callable[[torch.nn.Module], torch.nn.Module]] = {"ipt": IptReference}
