"""A runner for any backend of an export, our PyTorch definition (the torch backend) included."""

from __future__ import annotations

from pathlib import Path

from deploytool.errors import DeployError
from deploytool.runtime import backends
from deploytool.runtime.backends import OPENVINO, TORCH, Runner
from deploytool.runtime.manifest import Manifest


def open_runner(
    export_dir: str | Path, manifest: Manifest, backend: str, *, weights: str | Path | None = None, cuda_graph: bool = False, device: str | None = None
) -> Runner:
    """A runner for `backend` on the export in `export_dir` (files checked against the manifest).

    torch builds our definition from the export's checkpoint (`weights` if it moved); the other
    backends run the export's files (deploytool.runtime.backends.open_runner). `cuda_graph`
    applies to TensorRT: replay one captured launch per batch of tiles; `device` to OpenVINO.
    """
    if backend == TORCH:
        if device is not None:
            raise DeployError(f"--device applies to the {OPENVINO} backend, not {backend}")
        from deploytool.build.networks import build_def, export_weights
        from deploytool.runtime.backends.torch import TorchRunner

        entry, source, state_dict = export_weights(manifest, weights)
        return TorchRunner(build_def(entry, state_dict, source=source.path or "random init"), name=TORCH)
    return backends.open_runner(export_dir, manifest, backend, cuda_graph=cuda_graph, device=device)
