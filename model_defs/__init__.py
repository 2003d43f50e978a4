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
# `reconcile_arch(arch, state_dict) -> arch` for hyperparameters that only shape buffers, and
# `select_task_weights(state_dict, task_index) -> (state_dict, {unused key: why})` for
# checkpoints that hold several tasks.
FAMILIES: dict[str, tuple[str, str]] = {
    "swinir": ("model_defs.swinir", "SwinIR"),
    "hat": ("model_defs.hat", "HAT"),
    "esrt": ("model_defs.esrt", "ESRT"),
    "restormer": ("model_defs.restormer", "Restormer"),
    "ipt": ("model_defs.ipt", "IPT"),
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


def select_task_weights(family: str, state_dict: dict[str, torch.Tensor], task_index: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The part of a checkpoint one model id uses, and {left-out key: why it is expected}."""
    hook = getattr(family_module(family), "select_task_weights", None)
    return hook(state_dict, task_index) if hook else (state_dict, {})
