"""PyTorch backends: our export-friendly definition (`torch`) and the original implementation
(`original`, parity only), both built from the export's checkpoint by deploytool.build.runners
and run eagerly.

torch is imported when a runner is made, so that the runtime imports without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from deploytool.errors import DeployError
from deploytool.runtime.backends.base import FP32, Backend, ClosingRunner, OpenRequest, register

if TYPE_CHECKING:
    import torch

ORIGINAL, TORCH = "original", "torch"
EXPORT_EXTRA = "pip install deploytool[export]"


class TorchRunner(ClosingRunner):
    """Runs a PyTorch module on NCHW float32 numpy batches of any shape."""

    def __init__(self, model: torch.nn.Module, *, name: str = TORCH, device: str = "cpu", dtype: torch.dtype | None = None):
        import torch

        dtype = torch.float32 if dtype is None else dtype
        self.name = name
        self.device = str(torch.device(device))
        self.dtype = dtype
        self.model: torch.nn.Module | None = model.to(self.device, dtype).eval()
        self.input_shape: tuple[int, ...] | None = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise DeployError(f"{self.name}: the runner was closed")
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, self.dtype)
            return self.model(x).float().cpu().numpy()

    def close(self) -> None:
        self.model = None


def _opener(name: str):
    def open_model(request: OpenRequest) -> TorchRunner:
        return TorchRunner(request.model, name=name)

    return open_model


register(
    Backend(
        ORIGINAL,
        FP32,
        "the original implementation (a third-party faithful port) with the checkpoint's weights",
        _opener(ORIGINAL),
        requires=("torch",),
        install=EXPORT_EXTRA,
        needs_checkpoint=True,
        is_original=True,
    )
)
register(
    Backend(
        TORCH,
        FP32,
        "our export-friendly PyTorch definition with the checkpoint's weights",
        _opener(TORCH),
        requires=("torch",),
        install=EXPORT_EXTRA,
        needs_checkpoint=True,
    )
)
