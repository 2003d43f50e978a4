"""A Triton model repository from exports: per export a tile model and a whole-image model.

`<id>-tiles` runs the export's static graph ([batch, C, tile_h, tile_w] -> [batch, C, tile_h * s,
tile_w * s]) with one of the backends' Triton runtimes: a TensorRT plan, Triton's ONNX Runtime
backend, ONNX Runtime inside a Python-backend model (CPU servers), Triton's OpenVINO backend (CPU
servers), or OpenVINO on the BF16 plan inside a Python-backend model (CPU servers with BF16). `<id>` is a Python-backend model that takes
whole images, tiles them with deploytool's own tiler and sends the tiles to `<id>-tiles` (BLS).
The repository names no path of this machine: it can be copied to any Triton server whose
Python backend can import deploytool (see README, "Serving with Triton").
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploytool.errors import DeployError
from deploytool.runtime import backends
from deploytool.runtime.fileio import inside, make_folder
from deploytool.runtime.manifest import MANIFEST_FILE, Manifest, read_manifest
from deploytool.serving import protocol

TRT_PLAN_FILE = "model.plan"
ONNX_MODEL_FILE = "model.onnx"
_PIXEL_UNITS = {"": 1, "K": 1_000, "M": 1_000_000, "G": 1_000_000_000}


class Enum(str):
    """A protobuf enum value: written bare in text format (`kind: KIND_GPU`), not quoted."""


@dataclass(frozen=True)
class RepositoryOptions:
    runtime: str = backends.DEFAULT_TRITON_RUNTIME
    instances: int = 1  # tile-model instances, on each listed GPU (or on the CPU)
    gpus: tuple[int, ...] = ()  # empty: every GPU the server sees
    max_pixels: int = 16_000_000  # per view; larger images are refused by the whole-image model
    fp32: bool = False  # onnx: model.onnx instead of model_fp16.onnx


@dataclass(frozen=True)
class WrittenModel:
    name: str
    path: Path
    kind: str  # "tiles" | "whole-image"
    runtime: str
    source: str  # the export file it serves


def parse_pixels(text: str) -> int:
    """'16M' -> 16000000, '500K' -> 500000, '4000000' -> 4000000 (decimal units, as megapixels are)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)\s*", str(text).upper())
    if not match or float(match.group(1)) * _PIXEL_UNITS[match.group(2)] < 1:
        raise DeployError(f"--max-pixels {text!r}: use a pixel count such as 16M, 500K or 4000000")
    return int(float(match.group(1)) * _PIXEL_UNITS[match.group(2)])


def parse_gpus(text: str | None) -> tuple[int, ...]:
    """'0,1' -> (0, 1); None or '' -> () (every GPU)."""
    if not text:
        return ()
    try:
        gpus = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise DeployError(f"--gpus {text!r}: use GPU indices separated by commas, e.g. 0,1") from None
    if any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise DeployError(f"--gpus {text!r}: GPU indices must be distinct and >= 0")
    return gpus


# -- config.pbtxt in protobuf text format


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # text format accepts C-style escapes, which JSON's are
    raise TypeError(f"no text-format form for {type(value).__name__}")


def to_pbtxt(message: dict[str, Any], indent: int = 0) -> str:
    """A nested dict as protobuf text: dicts are messages, lists of dicts repeated messages,
    lists of scalars repeated scalars."""
    pad = "  " * indent
    lines = []
    for key, value in message.items():
        if isinstance(value, dict):
            lines += [f"{pad}{key} {{", to_pbtxt(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                lines += [f"{pad}{key} {{", to_pbtxt(item, indent + 1), f"{pad}}}"]
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [{', '.join(_scalar(v) for v in value)}]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "\n".join(line for line in lines if line)


def _parameters(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": key, "value": {"string_value": str(value)}} for key, value in values.items()]


def _tensor(name: str, data_type: str, dims: list[int], **extra: Any) -> dict[str, Any]:
    return {"name": name, "data_type": Enum(data_type), "dims": dims, **extra}


def tile_config(manifest: Manifest, options: RepositoryOptions) -> dict[str, Any]:
    """The `<id>-tiles` model: the export's static shape, no batching by Triton (the graph's batch
    dimension is fixed, so max_batch_size is 0 and the dims include it)."""
    runtime = backends.triton_runtime(options.runtime)
    config: dict[str, Any] = {"name": protocol.tile_model_name(manifest.model_id), **runtime.model}
    config |= {
        "max_batch_size": 0,
        "input": [_tensor(manifest.input.name, "TYPE_FP32", list(manifest.input.shape))],
        "output": [_tensor(manifest.output.name, "TYPE_FP32", list(manifest.output.shape))],
    }
    if runtime.on_cpu:
        config["instance_group"] = [{"count": options.instances, "kind": Enum("KIND_CPU")}]
    else:
        group: dict[str, Any] = {"count": options.instances, "kind": Enum("KIND_GPU")}
        if options.gpus:
            group["gpus"] = list(options.gpus)
        config["instance_group"] = [group]
    if runtime.opens:
        parameters: dict[str, Any] = {protocol.PARAM_BACKEND: runtime.opens}
    elif runtime.python_model:
        parameters = {protocol.PARAM_THREADS: 0}
    else:
        parameters = runtime.parameters(options.instances)
    if parameters:
        config["parameters"] = _parameters(parameters)
    return config


def image_instances(options: RepositoryOptions) -> int:
    """Whole-image instances: two per tile instance, so one image is cut and blended while
    another's tiles run (an instance waits on its BLS calls)."""
    return 2 * options.instances * max(1, len(options.gpus))


def whole_image_config(manifest: Manifest, options: RepositoryOptions) -> dict[str, Any]:
    views = [view.name for view in manifest.views]
    inputs = [
        _tensor(protocol.input_name(view, sample), protocol.TRITON_TYPES[sample], [-1, -1, -1], optional=True)
        for view in views
        for sample in protocol.SAMPLE_TYPES
    ]
    outputs = [_tensor(protocol.output_name(sample), protocol.TRITON_TYPES[sample], [-1, -1, -1]) for sample in protocol.SAMPLE_TYPES]
    return {
        "name": manifest.model_id,
        "backend": "python",
        "max_batch_size": 0,
        "input": inputs,
        "output": outputs,
        "instance_group": [{"count": image_instances(options), "kind": Enum("KIND_CPU")}],
        "parameters": _parameters(
            {
                protocol.PARAM_TILE_MODEL: protocol.tile_model_name(manifest.model_id),
                protocol.PARAM_MAX_PIXELS: options.max_pixels,
                protocol.PARAM_VIEWS: ",".join(views),
                protocol.PARAM_OVERLAP: manifest.overlap(),
            }
        ),
    }


def _model_py(class_name: str, what: str) -> str:
    return (
        f'"""Triton Python-backend model written by `deploytool triton`: {what}.\n\n'
        "The code is deploytool's own (deploytool.serving.triton_models), so the server tiles exactly as\n"
        '`deploytool run` does; the Python backend\'s environment must import deploytool (see its README)."""\n\n'
        f"from deploytool.serving.triton_models import {class_name} as TritonPythonModel  # noqa: F401\n"
    )


def _model_files(export_dir: Path, manifest: Manifest, options: RepositoryOptions) -> dict[str, Path]:
    """{name in the version folder: exported file it is copied from} for the tile model; a model
    that opens one of deploytool's backends also gets the manifest, which that backend checks the
    file against."""
    runtime = backends.triton_runtime(options.runtime)
    files = {runtime.served_as: runtime.source(export_dir, manifest, options.fp32)}
    if runtime.opens:
        files[MANIFEST_FILE] = export_dir / MANIFEST_FILE
    return files


def _write_model(repo: Path, name: str, config: dict[str, Any], files: dict[str, Path], texts: dict[str, str]) -> Path:
    """Write one model folder beside its final place, then swap it in: a failed write leaves the
    repository as it was."""
    final = inside(repo, name, "model name")
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=repo))
    try:
        version = staging / protocol.VERSION
        version.mkdir()
        for target, source in files.items():
            shutil.copyfile(source, version / target)
        for target, text in texts.items():
            (version / target).write_text(text, encoding="utf-8")
        (staging / "config.pbtxt").write_text(to_pbtxt(config) + "\n", encoding="utf-8")
        os.chmod(staging, 0o755)
        if final.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=repo))
            os.replace(final, retired / name)
            os.replace(staging, final)
            shutil.rmtree(retired)
        else:
            os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return final


def validate_options(options: RepositoryOptions) -> None:
    runtime = backends.triton_runtime(options.runtime)
    if options.instances < 1:
        raise DeployError(f"--instances must be at least 1, not {options.instances}")
    if runtime.on_cpu and options.gpus:
        raise DeployError(f"--gpus places GPU instances; the {options.runtime} runtime runs on the CPU (use --runtime onnx or trt)")
    if runtime.fp32_refusal and options.fp32:
        raise DeployError(runtime.fp32_refusal)
    if options.max_pixels < 1:
        raise DeployError(f"--max-pixels must be positive, not {options.max_pixels}")
    runtime.check()


def write_repository(
    export_dirs: list[Path], repo: Path, options: RepositoryOptions, progress: Callable[[str], None] = lambda message: None
) -> list[WrittenModel]:
    """Write `<id>-tiles` and `<id>` for every export into `repo` (other models there are kept)."""
    validate_options(options)
    runtime = backends.triton_runtime(options.runtime)
    exports = [(Path(d), read_manifest(d)) for d in export_dirs]
    ids = [manifest.model_id for _, manifest in exports]
    for model_id in ids:
        # a manifest read from disk has a checked id; one built in code is checked here, before anything is written
        for name in (model_id, protocol.tile_model_name(model_id)):
            inside(repo, name, "model name")
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise DeployError(f"several exports are {', '.join(repeated)}: a repository holds one model per id")
    # every export is checked (files, engines) before anything is written
    plans = [(export_dir, manifest, _model_files(export_dir, manifest, options)) for export_dir, manifest in exports]
    make_folder(repo, "model repository")
    written = []
    for export_dir, manifest, files in plans:
        tiles = protocol.tile_model_name(manifest.model_id)
        texts = {protocol.WHOLE_IMAGE_MODEL_FILE: _model_py(runtime.python_model, f"{tiles}, {runtime.description}")} if runtime.python_model else {}
        path = _write_model(repo, tiles, tile_config(manifest, options), files, texts)
        source = next(iter(files.values())).name
        written.append(WrittenModel(tiles, path, "tiles", options.runtime, source))
        progress(f"{path}: {options.runtime} on {source}, {options.instances} instance(s){'' if runtime.on_cpu else ' per GPU'}")
        if runtime.note:
            progress(f"note: {runtime.note}")
        whole = _write_model(
            repo,
            manifest.model_id,
            whole_image_config(manifest, options),
            {MANIFEST_FILE: export_dir / MANIFEST_FILE},
            {protocol.WHOLE_IMAGE_MODEL_FILE: _model_py("WholeImageModel", f"{manifest.model_id}, whole images tiled onto {tiles}")},
        )
        written.append(WrittenModel(manifest.model_id, whole, "whole-image", "python", MANIFEST_FILE))
        progress(f"{whole}: whole images up to {options.max_pixels} pixels, tiled onto {tiles}")
    return written
