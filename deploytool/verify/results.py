"""Raw outputs of a parity run, saved to one `.npz` so that running and judging can happen apart.

`deploytool verify --save-outputs FILE` runs backends on one machine and writes here; `deploytool
compare` judges files from several machines without running a model. A file holds the inputs
(synthetic tiles as NCHW batches, whole images as HWC arrays), every backend's raw outputs, and
metadata: the export's manifest and fingerprint, each input's sha256, each backend's device, and
the versions and host that produced it.
"""

from __future__ import annotations

import hashlib
import json
import platform
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploytool.errors import DeployError
from deploytool.runtime.fileio import atomic_path
from deploytool.runtime.manifest import Manifest, parse_manifest

FORMAT = "deploytool-parity-results"
FORMAT_VERSION = 1
SYNTHETIC, IMAGE = "synthetic", "image"
_META = "meta"


def array_sha256(array: np.ndarray) -> str:
    """Identifies an input by dtype, shape and bytes."""
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


@dataclass
class RunInput:
    label: str  # e.g. "synthetic#0 1x3x64x64", "image baby.png tiled"
    kind: str  # SYNTHETIC (the graph's static NCHW shape) | IMAGE (HWC, whole image)
    array: np.ndarray
    sha256: str = ""

    def __post_init__(self) -> None:
        self.sha256 = self.sha256 or array_sha256(self.array)


@dataclass
class BackendRun:
    name: str
    device: str
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # input label -> raw output
    overlap: int | None = None  # tile overlap used on images (None: whole images, the original)


@dataclass
class RunResults:
    """What one machine's run produced; the inputs in the order they were run."""

    manifest: Manifest
    original: str  # name of the original implementation
    weights: str
    inputs: dict[str, RunInput] = field(default_factory=dict)
    backends: dict[str, BackendRun] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)
    source_file: str = ""  # where it was loaded from, for reports

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint()

    def save(self, path: str | Path) -> Path:
        """Write every input and output with the metadata to one `.npz`, atomically."""
        path = Path(path)
        if path.suffix != ".npz":
            raise DeployError(f"{path}: results are saved as .npz; name the file e.g. {path.with_suffix('.npz').name}")
        arrays: dict[str, np.ndarray] = {}
        labels = list(self.inputs)
        for i, label in enumerate(labels):
            arrays[f"input_{i}"] = self.inputs[label].array
        for j, run in enumerate(self.backends.values()):
            for label, output in run.outputs.items():
                arrays[f"output_{j}_{labels.index(label)}"] = output
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_id": self.manifest.model_id,
            "export_fingerprint": self.fingerprint,
            "manifest": self.manifest.to_json(),
            "original": self.original,
            "weights": self.weights,
            "inputs": [{"label": label, "kind": item.kind, "sha256": item.sha256} for label, item in self.inputs.items()],
            "backends": [
                {"name": run.name, "device": run.device, "overlap": run.overlap, "outputs": [labels.index(k) for k in run.outputs]}
                for run in self.backends.values()
            ],
            "skipped": self.skipped,
            "host": self.host,
        }
        arrays[_META] = np.array(json.dumps(meta))
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)
        return path


def host_info() -> dict[str, Any]:
    """The machine and versions a run happened on."""
    import onnxruntime
    import torch

    import deploytool

    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "deploytool": deploytool.__version__,
        "numpy": np.__version__,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "cuda_gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    try:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    except ImportError:
        info["tensorrt"] = None
    return info


def load(path: str | Path) -> RunResults:
    """Results saved by `RunResults.save`, refusing anything else in one line."""
    path = Path(path)
    meta, arrays = _read(path)
    try:
        return _results(path, meta, arrays)
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise DeployError(f"{path} is not a well-formed results file ({type(exc).__name__}: {exc})") from None


def _read(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The metadata and arrays of a results file (an .npz: a zip archive), its format checked."""
    if not path.is_file():
        raise DeployError(f"{path}: no such results file")
    with open(path, "rb") as handle:
        if handle.read(4) != b"PK\x03\x04":
            raise DeployError(f"{path} is not a deploytool results file (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data[_META]))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise DeployError(f"{path} is not a deploytool results file")
            if meta.get("format_version") != FORMAT_VERSION:
                raise DeployError(f"{path} has results format {meta.get('format_version')}; this deploytool reads {FORMAT_VERSION}")
            arrays = {name: data[name] for name in data.files if name != _META}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise DeployError(f"{path} is not a readable results file ({exc})") from None
    return meta, arrays


def _results(path: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> RunResults:
    manifest = parse_manifest(meta["manifest"], where=f"{path} (its manifest)")
    if manifest.fingerprint() != meta["export_fingerprint"]:
        raise DeployError(f"{path}: its manifest does not match its recorded export fingerprint (edited file?)")
    results = RunResults(
        manifest=manifest, original=meta["original"], weights=meta["weights"], skipped=meta["skipped"], host=meta["host"], source_file=str(path)
    )
    labels = [item["label"] for item in meta["inputs"]]
    for i, item in enumerate(meta["inputs"]):
        array = arrays[f"input_{i}"]
        if array_sha256(array) != item["sha256"]:
            raise DeployError(f"{path}: input {item['label']!r} does not match its recorded sha256 (corrupt file?)")
        results.inputs[item["label"]] = RunInput(item["label"], item["kind"], array, item["sha256"])
    for j, run in enumerate(meta["backends"]):
        outputs = {labels[i]: arrays[f"output_{j}_{i}"] for i in run["outputs"]}
        results.backends[run["name"]] = BackendRun(run["name"], run["device"], outputs, run["overlap"])
    if len(arrays) != len(labels) + sum(len(run["outputs"]) for run in meta["backends"]):
        raise DeployError(f"{path}: its arrays are not those its metadata lists (edited file?)")
    for label in labels:
        shapes = {run.outputs[label].shape for run in results.backends.values() if label in run.outputs}
        if len(shapes) > 1:
            raise DeployError(f"{path}: the outputs of {label!r} differ in shape ({', '.join(map(str, sorted(shapes)))}; edited file?)")
    return results


def describe(results: RunResults) -> dict[str, Any]:
    """A short account of one results file, for reports."""
    return {
        "file": results.source_file,
        "host": results.host.get("hostname"),
        "backends": {name: run.device for name, run in results.backends.items()},
        "skipped": results.skipped,
    }
