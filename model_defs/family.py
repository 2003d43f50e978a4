"""What a model family is: one object, declared as `FAMILY` by its module in `model_defs/`.

A family owns everything family-specific, as timm's model files own their configs and checkpoint
filters and spandrel's architecture folders own their loaders: the export-friendly model, how the
original implementation (the parity reference) is built and called, how a checkpoint's
hyperparameters are reconciled, which part of a multi-task checkpoint an id uses, and a tiny test
configuration. The library and the generic tests only ever go through this object; families
are discovered by scanning `model_defs/`, never listed by hand.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

StateDict = dict[str, torch.Tensor]


class EntryLike(Protocol):
    """The parts of a model entry (deploytool.build.registry.ModelEntry) a family may read."""

    id: str
    scale: int
    arch: dict[str, Any]
    reference_chop: int


class OriginalUnavailable(ImportError):
    """The package that holds an original implementation is not installed (message says which)."""


def keep_arch(arch: dict[str, Any], state_dict: StateDict) -> dict[str, Any]:
    return arch


def every_weight(state_dict: StateDict, task_index: int) -> tuple[StateDict, dict[str, str]]:
    return state_dict, {}


def called_plainly(model: nn.Module, entry: EntryLike) -> nn.Module:
    return model


@dataclass(frozen=True)
class Original:
    """The original implementation a family is measured against (never our definition)."""

    name: str  # for reports, e.g. "spandrel HAT"
    build: Callable[..., nn.Module]  # hyperparameters -> the original model with its own init
    # how the original runs inputs as its own code does (IPT's and ESRT's whole-image chops);
    # called with the loaded original and the model entry
    call_as_original: Callable[[nn.Module, EntryLike], nn.Module] = called_plainly


@dataclass(frozen=True)
class Family:
    name: str  # as model configs name it, e.g. "hat"
    display_name: str  # e.g. "HAT"
    model: Callable[..., nn.Module]  # hyperparameters -> our export-friendly definition
    original: Original
    # hyperparameters a checkpoint fixes (by its buffers' or weights' shapes) -> reconciled arch
    reconcile_arch: Callable[[dict[str, Any], StateDict], dict[str, Any]] = keep_arch
    # a checkpoint holding several tasks -> this id's part and {left-out key: why}
    select_task_weights: Callable[[StateDict, int], tuple[StateDict, dict[str, str]]] = every_weight
    # a model id's hyperparameters -> the same structure at toy size (for tests)
    tiny_arch: Callable[[dict[str, Any]], dict[str, Any]] = dict
    # the export tile of that tiny configuration, from its arch (None: the id's own tile)
    tiny_tile: Callable[[dict[str, Any]], tuple[int, int]] | None = None


def two_windows(arch: dict[str, Any]) -> tuple[int, int]:
    """A square tiny tile of two windows a side (Swin-style families' `tiny_tile`)."""
    return (2 * arch["window_size"],) * 2


def import_original(module: str, name: str, *, install_hint: str) -> Callable[..., nn.Module]:
    """A builder for class `name` of `module`, imported only when a reference is needed."""

    def build(**arch: Any) -> nn.Module:
        try:
            model_class = getattr(importlib.import_module(module), name)
        except ImportError as exc:
            raise OriginalUnavailable(f"the parity reference needs {module.split('.')[0]} ({exc}); {install_hint}") from None
        return model_class(**arch)

    return build


def spandrel_original(architecture: str) -> Callable[..., nn.Module]:
    """A model class from spandrel's public architecture modules (e.g. `spandrel.architectures.HAT.HAT`)."""
    return import_original(f"spandrel.architectures.{architecture}", architecture, install_hint="pip install spandrel")


def spandrel_extra_original(architecture: str) -> Callable[..., nn.Module]:
    """A model class from spandrel_extra_arches, whose models carry non-commercial licenses: a
    verify/test-time reference only, installed with the `reference-nc` extra."""
    inner = import_original(
        f"spandrel_extra_arches.architectures.{architecture}",
        architecture,
        install_hint="pip install 'deploytool[reference-nc]' (non-commercial license)",
    )

    def build(**arch: Any) -> nn.Module:
        try:
            import spandrel_extra_arches
        except ImportError as exc:
            raise OriginalUnavailable(
                f"the parity reference needs spandrel_extra_arches ({exc}); pip install 'deploytool[reference-nc]' (non-commercial license)"
            ) from None
        spandrel_extra_arches.install(ignore_duplicates=True)
        return inner(**arch)

    return build
