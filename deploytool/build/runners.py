"""A runner for any backend of an export, those built from the checkpoint (torch, original) included."""

from __future__ import annotations

from pathlib import Path

from deploytool.runtime import backends
from deploytool.runtime.backends import Runner
from deploytool.runtime.manifest import Manifest


def checkpoint_model(manifest: Manifest, backend: backends.Backend, weights: str | Path | None = None, *, loaded: tuple | None = None):
    """The PyTorch module a checkpoint backend runs: the original implementation or our definition,
    with the export's weights (`weights` if the checkpoint moved). `loaded` reuses
    deploytool.build.networks.export_weights' result when several such backends are opened."""
    from deploytool.build.networks import arch_for, build_def, build_original, export_weights

    entry, source, state_dict = loaded or export_weights(manifest, weights)
    if backend.is_original:
        return build_original(entry, arch_for(entry, state_dict), state_dict)
    return build_def(entry, state_dict, source=source.path or "random init")


def open_runner(
    export_dir: str | Path, manifest: Manifest, backend: str, *, weights: str | Path | None = None, cuda_graph: bool = False, device: str | None = None
) -> Runner:
    """A runner for `backend` on the export in `export_dir` (files checked against the manifest).

    Backends that need the checkpoint (torch) build it from the export's checkpoint (`weights` if
    it moved); the other backends run the export's files (deploytool.runtime.backends.open_runner).
    `cuda_graph` applies to TensorRT: replay one captured launch per batch of tiles; `device` to
    the backends that take one (OpenVINO).
    """
    descriptor = backends.get(backend)
    model = None
    if descriptor.needs_checkpoint:
        descriptor.check_options(device, cuda_graph)
        model = checkpoint_model(manifest, descriptor, weights)
    return backends.open_runner(export_dir, manifest, backend, cuda_graph=cuda_graph, device=device, model=model)
