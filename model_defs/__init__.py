"""Export-friendly PyTorch definitions of the supported model families.

Each family module keeps the official state-dict keys, so official checkpoints load strictly,
while expressing the computation with static shapes that trace into small, TensorRT-friendly
ONNX graphs, and declares one `FAMILY` (`model_defs.family.Family`) that owns everything else
family-specific. Families are discovered: a new module with a `FAMILY` is a new family.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import Any

import torch

from model_defs.family import Family

# modules of shared building blocks, not families
_SHARED = frozenset({"family", "layers", "windows"})


@functools.cache
def families() -> dict[str, Family]:
    """Every family declared by a module of this package, by name."""
    found: dict[str, Family] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.ispkg or info.name in _SHARED or info.name.startswith("_"):
            continue
        declared = getattr(importlib.import_module(f"{__name__}.{info.name}"), "FAMILY", None)
        if isinstance(declared, Family):
            if declared.name in found:
                raise RuntimeError(f"model family {declared.name!r} is declared twice (model_defs.{info.name})")
            found[declared.name] = declared
    return found


def family(name: str) -> Family:
    try:
        return families()[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(sorted(families()))}") from None


def build_model(name: str, arch: dict[str, Any]) -> torch.nn.Module:
    """Instantiate the export-friendly definition of family `name` with hyperparameters `arch`."""
    return family(name).model(**arch)


def reconcile_arch(name: str, arch: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Adjust hyperparameters that a checkpoint fixes by its buffer shapes (e.g. a training img_size)."""
    return family(name).reconcile_arch(dict(arch), state_dict)


def select_task_weights(name: str, state_dict: dict[str, torch.Tensor], task_index: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The part of a checkpoint one model id uses, and {left-out key: why it is expected}."""
    return family(name).select_task_weights(state_dict, task_index)
