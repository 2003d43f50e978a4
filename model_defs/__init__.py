"""Export-friendly PyTorch definitions of the supported model families.

Each family module keeps the official state-dict keys, so official checkpoints load strictly,
while expressing the computation with static shapes that trace into small, TensorRT-friendly
ONNX graphs. Modules are imported lazily: importing this package does no work.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

# family name -> (module, class); each module may also define
# `reconcile_arch(arch, state_dict) -> arch` for hyperparameters that only shape buffers.
FAMILIES: dict[str, tuple[str, str]] = {
    "swinir": ("model_defs.swinir", "SwinIR"),
    "esrt": ("model_defs.esrt", "ESRT"),
    "restormer": ("model_defs.restormer", "Restormer"),
}


def family_module(family: str):
    try:
        module_name, _ = FAMILIES[family]
    except KeyError:
        raise KeyError(f"unknown model family {family!r}; known: {', '.join(sorted(FAMILIES))}") from None
    return importlib.import_module(module_name)


def build_model(family: str, arch: dict[str, Any]) -> torch.nn.Module:
    """Instantiate the export-friendly definition of `family` with hyperparameters `arch`."""
    module = family_module(family)
    model_class = getattr(module, FAMILIES[family][1])
    return model_class(**arch)


def reconcile_arch(family: str, arch: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Adjust hyperparameters that a checkpoint fixes by its buffer shapes (e.g. a training img_size)."""
    hook = getattr(family_module(family), "reconcile_arch", None)
    return hook(dict(arch), state_dict) if hook else dict(arch)
