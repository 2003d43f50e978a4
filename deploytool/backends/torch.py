"""PyTorch backend: our export-friendly definition (or any module) run eagerly."""

from __future__ import annotations

import numpy as np
import torch

from deploytool.backends import TORCH, ClosingRunner
from deploytool.errors import DeployError


class TorchRunner(ClosingRunner):
    """Runs a PyTorch module on NCHW float32 numpy batches of any shape."""

    def __init__(self, model: torch.nn.Module, *, name: str = TORCH, device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.name = name
        self.device = str(torch.device(device))
        self.dtype = dtype
        self.model: torch.nn.Module | None = model.to(self.device, dtype).eval()
        self.input_shape: tuple[int, ...] | None = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise DeployError(f"{self.name}: the runner was closed")
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, self.dtype)
            return self.model(x).float().cpu().numpy()

    def close(self) -> None:
        self.model = None
