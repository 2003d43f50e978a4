"""deploytool: Transformer image-restoration models from PyTorch checkpoints to ONNX and TensorRT.

As a library: `deploytool.open(export_dir, backend=...)` opens an export as a `Restorer`
(deploytool.runtime.restorer). Importing deploytool imports nothing heavy: the runtime loads on
first use.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deploytool.runtime.restorer import Restorer

__version__ = "0.1.0"
__all__ = ["Restorer", "open"]


def open(
    export_dir: str | os.PathLike,
    backend: str | None = None,
    *,
    overlap: int | None = None,
    weights: str | os.PathLike | None = None,
    cuda_graph: bool = False,
    device: str | None = None,
) -> Restorer:
    """The export in `export_dir` on `backend` (a name in `deploytool.runtime.backends.names()`:
    torch, ort, ort-fp16, openvino, openvino-bf16, trt; default `deploytool run`'s), as `run`
    opens it: a `Restorer` (a context manager that closes the backend).

    `overlap` between tiles in input pixels (default: the export's); `weights` the checkpoint if
    it moved (torch); `cuda_graph` (TensorRT) and `device` (OpenVINO) as `run`'s options.
    """
    from deploytool.build.runners import open_runner
    from deploytool.runtime.backends import ORT_FP16
    from deploytool.runtime.manifest import read_manifest
    from deploytool.runtime.restorer import Restorer

    manifest = read_manifest(export_dir)
    overlap = manifest.overlap(overlap)
    runner = open_runner(export_dir, manifest, backend or ORT_FP16, weights=weights, cuda_graph=cuda_graph, device=device)
    return Restorer(runner, manifest, overlap=overlap)


def __getattr__(name: str) -> Any:
    if name == "Restorer":
        from deploytool.runtime.restorer import Restorer

        return Restorer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
