"""The export folder: the contract between `deploytool export` and everything that reads an export.

An export folder holds `model.onnx`, `model_fp16.onnx`, `model_bf16.onnx`, TensorRT engines and `manifest.json`
(written last: a folder without it is an unfinished export). This module owns the folder: the
file names, the typed manifest (dataclasses mirroring `schemas/manifest.schema.json`), reading
with version and schema checks, atomic writing, and checking files against their sha256. Every
runtime (backends, engines, inference, parity, evaluation) reads an export through it; nothing
else reads `manifest.json` by string key.

Versioning (`schema_version`, "MAJOR.MINOR"): a reader of major M refuses any other major in one
line naming both versions. Minor versions only add fields: a reader ignores fields it does not
know (a newer minor's), and reads an older minor with the documented defaults of the fields that
minor lacks (`MINOR_DEFAULTS`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from deploytool.errors import DeployError
from deploytool.runtime.fileio import sha256_file, write_text_atomic

SCHEMA_VERSION = "1.4"
MANIFEST_FILE = "manifest.json"
FP32_FILE, FP16_FILE = "model.onnx", "model_fp16.onnx"
BF16_FILE = "model_bf16.onnx"
TIMING_CACHE = "timing.cache"
PARITY_JSON, PARITY_MD, PARITY_HTML = "parity.json", "parity.md", "parity.html"
INPUT_NAME, OUTPUT_NAME = "input", "output"
# {minor: {dotted field: default}} for fields added after x.0; read when an older minor lacks them
MINOR_DEFAULTS: dict[int, dict[str, Any]] = {
    1: {"export_stages": {}},  # 1.1: what each export stage cost
    2: {"fp16.calibration_tile": None, "fp16.grown_tensors": 0, "fp16.sensitivity_blocks": []},  # 1.2: how the FP16 plan was found
    # 1.3: where the FP16 figures were measured, and the plan's check on verify's inputs (null: unknown)
    3: {"fp16.measured_at": None, "fp16.verify_inputs_max_abs": None, "fp16.verify_inputs_limit": None},
    4: {"bf16": None},  # 1.4: the BF16 deploy graph's plan (null: no model_bf16.onnx)
}

BLEND_RAMP, BLEND_CENTRE = "ramp", "centre"
PAD_REFLECT = "reflect"
VIEW_COLORS = {1: "gray", 3: "RGB"}


@dataclass(frozen=True)
class View:
    """One image the model takes; several views are stacked on the channel axis in this order."""

    name: str  # "image", or "left" / "right" for dual-pixel models
    channels: int  # 1 (gray) or 3 (RGB)
    color: str  # "gray" | "RGB"


@dataclass(frozen=True)
class GraphInput:
    name: str
    shape: tuple[int, int, int, int]  # [batch, channels, tile_h, tile_w]
    views: tuple[View, ...]
    dtype: str = "float32"
    layout: str = "NCHW"
    value_range: tuple[float, float] = (0.0, 1.0)


@dataclass(frozen=True)
class GraphOutput:
    name: str
    shape: tuple[int, int, int, int]  # [batch, channels, tile_h * scale, tile_w * scale]
    color: str
    dtype: str = "float32"
    layout: str = "NCHW"
    value_range: tuple[float, float] = (0.0, 1.0)
    # False: the graph does not clip; consumers clip to value_range when they write pixels
    clamped: bool = False


@dataclass(frozen=True)
class Blend:
    """How overlapping tile outputs are combined.

    `ramp`: linear weights rising over the overlap at every inner tile edge (`width` input
    pixels; it equals the overlap in use, so `run --overlap` changes both). `centre`: each tile
    contributes only its centre, `trim` input pixels in from inner edges, and centres are
    averaged (IPT's official chop); a trim is capped at half the overlap.
    """

    mode: str  # "ramp" | "centre"
    width: int = 0
    trim: int = 0


@dataclass(frozen=True)
class Tiling:
    """Everything a consumer needs to run the static graph over images of any size."""

    tile: tuple[int, int]  # [height, width] of one input tile
    tile_multiple: int  # images are padded bottom/right to this multiple (the model's window)
    fixed_tile: bool  # True: the model takes exactly this tile (other tiles cannot be exported)
    batch: int  # tiles per graph call; the last call is filled up with copies of a real tile
    overlap: int  # default overlap in input pixels, rounded up to tile_multiple at run time
    padding: str  # "reflect" (mirror without repeating the edge; "edge" where the image is too small)
    blend: Blend


@dataclass(frozen=True)
class ModelInfo:
    """What rebuilds the PyTorch model of an export without the config that made it."""

    family: str
    task: str
    description: str
    arch: dict[str, Any]
    reference: str  # the name of the original implementation parity is measured against
    reference_chop: int  # >0: the original runs whole images chopped below this many pixels
    task_index: int  # this id's task in a multi-task checkpoint


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's weights came from: an official-format checkpoint, or a seeded random init."""

    kind: str  # "checkpoint" | "random-init"
    path: str | None = None
    sha256: str | None = None
    wrapper_key: str | None = None
    seed: int | None = None

    def describe(self) -> str:
        if self.kind == "random-init":
            return f"random init (seed {self.seed}; UNTRAINED, for smoke tests only)"
        wrapper = f", '{self.wrapper_key}' weights" if self.wrapper_key else ""
        return f"{self.path} (sha256 {self.sha256[:12]}…{wrapper})"

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WeightsSource:
        return cls(**data)


@dataclass(frozen=True)
class FileRecord:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class EngineRecord:
    """A TensorRT engine built by `deploytool build` for one GPU architecture and TensorRT version."""

    sha256: str
    bytes: int
    gpu: str
    compute_capability: tuple[int, int]
    tensorrt: str
    plan: dict[str, Any]
    workspace_bytes: int
    opt_level: int
    timing_cache: str
    build_seconds: float


@dataclass(frozen=True)
class GraphStats:
    traced_nodes: int
    merged_initializers: int
    nodes: int
    initializers: int
    parameter_bytes: int


@dataclass(frozen=True)
class Fp16Measurement:
    """The graph and inputs the FP16 plan's figures were measured on: the calibration graph
    (`calibration_tile`, batch 1), not necessarily the shipped one (`verify` reports that one's)."""

    shape: tuple[int, int, int, int]  # the measured graph's input shape
    inputs: str


@dataclass(frozen=True)
class Fp16Summary:
    """How model_fp16.onnx was planned, and how far its plan is from model.onnx's on the inputs
    it was validated on (`measured_at`)."""

    margin: float
    fp32_nodes: int
    total_nodes: int
    fp32_by_op: dict[str, int]
    fp32_by_reason: dict[str, int]
    fp16_flop_share: float
    max_abs_vs_fp32: float
    psnr_vs_fp32: float | None  # None: identical outputs (infinite PSNR)
    calibration: str
    largest_ranges: tuple[tuple[str, float], ...]
    # 1.2: where ranges were measured (None before 1.2: the export's tile), how many tensors'
    # ranges were grown from there to the export's tile, the blocks the sensitivity search kept FP32
    calibration_tile: tuple[int, int] | None
    grown_tensors: int
    sensitivity_blocks: tuple[str, ...]
    # 1.3: the graph and inputs max_abs_vs_fp32 and psnr_vs_fp32 were measured on, and the plan's
    # max |diff| on verify's standard inputs (as measured there) with the limit it had to meet
    # (None: not measured, e.g. a manifest before 1.3)
    measured_at: Fp16Measurement | None = None
    verify_inputs_max_abs: float | None = None
    verify_inputs_limit: float | None = None


@dataclass(frozen=True)
class Bf16Summary:
    """How model_bf16.onnx was planned: `Fp16Summary`'s fields, with the BF16 share of FLOPs.
    BF16 has FP32's range, so its FP32 islands are by op, by accumulation and by sensitivity."""

    margin: float
    fp32_nodes: int
    total_nodes: int
    fp32_by_op: dict[str, int]
    fp32_by_reason: dict[str, int]
    bf16_flop_share: float
    max_abs_vs_fp32: float
    psnr_vs_fp32: float | None  # None: identical outputs (infinite PSNR)
    calibration: str
    largest_ranges: tuple[tuple[str, float], ...]
    calibration_tile: tuple[int, int] | None
    grown_tensors: int
    sensitivity_blocks: tuple[str, ...]
    measured_at: Fp16Measurement | None = None
    verify_inputs_max_abs: float | None = None
    verify_inputs_limit: float | None = None


@dataclass(frozen=True)
class StageCost:
    """One export stage: its wall time, and the exporting process's peak resident memory so far
    at the stage's end (a peak that rises during a stage was set by it)."""

    seconds: float
    peak_rss_mb: float


@dataclass(frozen=True)
class Manifest:
    schema_version: str
    model_id: str
    model: ModelInfo
    scale: int
    input: GraphInput
    output: GraphOutput
    tiling: Tiling
    opset: int
    exporter: str
    versions: dict[str, str]
    source: WeightsSource
    graph: GraphStats
    fp16: Fp16Summary | None
    files: dict[str, FileRecord]
    tolerances: dict[str, float]
    export_seconds: float
    unused_weights: dict[str, str] = field(default_factory=dict)
    engines: dict[str, EngineRecord] = field(default_factory=dict)
    export_stages: dict[str, StageCost] = field(default_factory=dict)  # since 1.1, in stage order
    bf16: Bf16Summary | None = None  # since 1.4

    # -- what consumers ask of an export

    @property
    def channels(self) -> int:
        return self.input.shape[1]

    @property
    def out_channels(self) -> int:
        return self.output.shape[1]

    @property
    def views(self) -> tuple[View, ...]:
        return self.input.views

    @property
    def has_fp16(self) -> bool:
        return FP16_FILE in self.files

    @property
    def has_bf16(self) -> bool:
        return BF16_FILE in self.files

    def overlap(self, requested: int | None = None) -> int:
        """The overlap to tile with: the one asked for, else the export's default."""
        return self.tiling.overlap if requested is None else int(requested)

    def fingerprint(self) -> str:
        """Identifies what an export computes: its graphs and weights (not engines, not timings)."""
        identity = {
            "model_id": self.model_id,
            "files": {name: record.sha256 for name, record in sorted(self.files.items())},
            "source": self.source.sha256 or f"seed {self.source.seed}",
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def check_file(self, export_dir: str | Path, name: str) -> Path:
        """Path of an exported file, refusing one that is missing or changed since export."""
        path = Path(export_dir) / name
        recorded = self.files.get(name) or self.engines.get(name)
        if recorded is None or not path.is_file():
            raise DeployError(f"{path} is missing from the export")
        if sha256_file(path) != recorded.sha256:
            raise DeployError(f"{path} changed since export (sha256 differs from {MANIFEST_FILE}); re-export")
        return path

    def with_engine(self, name: str, record: EngineRecord) -> Manifest:
        """This manifest with engine `name` recorded (other engines kept)."""
        return dataclasses.replace(self, engines={**self.engines, name: record})

    # -- JSON

    def to_json(self) -> dict[str, Any]:
        data = _plain(asdict(self))
        data["input"]["range"] = data["input"].pop("value_range")
        data["output"]["range"] = data["output"].pop("value_range")
        data["source"] = self.source.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        """A manifest from its JSON form, which must already have passed `validate`."""
        data = json.loads(json.dumps(data))
        graph_in, graph_out, tiling = data["input"], data["output"], data["tiling"]
        fp16, bf16 = data.get("fp16"), data.get("bf16")
        return cls(
            schema_version=data["schema_version"],
            model_id=data["model_id"],
            model=_known(ModelInfo, data["model"]),
            scale=data["scale"],
            input=GraphInput(
                name=graph_in["name"],
                shape=tuple(graph_in["shape"]),
                views=tuple(_known(View, v) for v in graph_in["views"]),
                dtype=graph_in["dtype"],
                layout=graph_in["layout"],
                value_range=tuple(graph_in["range"]),
            ),
            output=GraphOutput(
                name=graph_out["name"],
                shape=tuple(graph_out["shape"]),
                color=graph_out["color"],
                dtype=graph_out["dtype"],
                layout=graph_out["layout"],
                value_range=tuple(graph_out["range"]),
                clamped=graph_out["clamped"],
            ),
            tiling=Tiling(
                tile=tuple(tiling["tile"]),
                tile_multiple=tiling["tile_multiple"],
                fixed_tile=tiling["fixed_tile"],
                batch=tiling["batch"],
                overlap=tiling["overlap"],
                padding=tiling["padding"],
                blend=_known(Blend, tiling["blend"]),
            ),
            opset=data["opset"],
            exporter=data["exporter"],
            versions=data["versions"],
            source=_known(WeightsSource, data["source"]),
            graph=_known(GraphStats, data["graph"]),
            fp16=None if fp16 is None else _known(Fp16Summary, {**fp16, **_fp16_tuples(fp16)}),
            files={name: _known(FileRecord, record) for name, record in data["files"].items()},
            tolerances=data["tolerances"],
            export_seconds=data["export_seconds"],
            unused_weights=data.get("unused_weights", {}),
            engines={
                name: _known(EngineRecord, {**record, "compute_capability": tuple(record["compute_capability"])})
                for name, record in data.get("engines", {}).items()
            },
            export_stages={name: _known(StageCost, cost) for name, cost in data.get("export_stages", {}).items()},
            bf16=None if bf16 is None else _known(Bf16Summary, {**bf16, **_fp16_tuples(bf16)}),
        )

    def write(self, export_dir: str | Path) -> Path:
        path = Path(export_dir) / MANIFEST_FILE
        data = self.to_json()
        validate(data, where=str(path))
        write_text_atomic(path, json.dumps(data, indent=2) + "\n")
        return path


def _plain(value: Any) -> Any:
    """asdict's output with tuples as lists and infinities as None (JSON has neither)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    return value


def _fp16_tuples(fp16: dict[str, Any]) -> dict[str, Any]:
    tile, measured_at = fp16["calibration_tile"], fp16.get("measured_at")
    return {
        "largest_ranges": tuple(tuple(r) for r in fp16["largest_ranges"]),
        "calibration_tile": None if tile is None else tuple(tile),
        "sensitivity_blocks": tuple(fp16["sensitivity_blocks"]),
        "measured_at": None if measured_at is None else _known(Fp16Measurement, {**measured_at, "shape": tuple(measured_at["shape"])}),
    }


def _known(cls: type, data: dict[str, Any]):
    """`cls(**data)` with the fields `cls` knows: a newer minor's extra fields are ignored."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def parse_version(text: Any) -> tuple[int, int]:
    parts = str(text).split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise DeployError(f"schema_version {text!r} is not MAJOR.MINOR")
    return int(parts[0]), int(parts[1])


def check_version(data: dict[str, Any], *, where: str) -> None:
    if "schema_version" not in data:
        if "format" in data:
            raise DeployError(f"{where} was written by an older deploytool (manifest format {data['format']}, before schema {SCHEMA_VERSION}); re-export it")
        raise DeployError(f"{where} has no schema_version: not a deploytool manifest")
    major, minor = parse_version(data["schema_version"])
    ours = parse_version(SCHEMA_VERSION)
    if major != ours[0]:
        newer = "a newer" if major > ours[0] else "an older"
        raise DeployError(
            f"{where} has manifest schema {data['schema_version']}, {newer} major version than this deploytool reads ({SCHEMA_VERSION}); "
            + ("upgrade deploytool" if major > ours[0] else "re-export it")
        )
    for added_in, defaults in sorted(MINOR_DEFAULTS.items()):
        if minor < added_in:
            for dotted, default in defaults.items():
                *parents, leaf = dotted.split(".")
                target = data
                for key in parents:
                    target = target.setdefault(key, {})
                if target is not None:  # a null parent (no FP16 graph) has no fields to fill
                    target.setdefault(leaf, default)


@functools.lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of manifest.json, shipped in the package."""
    return json.loads(resources.files("deploytool").joinpath("schemas/manifest.schema.json").read_text())


def validate(data: dict[str, Any], *, where: str = MANIFEST_FILE) -> None:
    """Refuse, in one line, JSON that does not follow the manifest schema."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        location = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise DeployError(f"{where} does not follow the manifest schema {SCHEMA_VERSION}: at {location}: {error.message}")


def read_manifest(export_dir: str | Path) -> Manifest:
    """The manifest of a finished export, version- and schema-checked."""
    path = Path(export_dir) / MANIFEST_FILE
    if not path.is_file():
        raise DeployError(f"{export_dir} is not a finished export (no {MANIFEST_FILE}); run `deploytool export` first")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DeployError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise DeployError(f"{path} is not a JSON object")
    return parse_manifest(data, where=str(path))


def parse_manifest(data: dict[str, Any], *, where: str) -> Manifest:
    """A manifest from its JSON form: version-checked (older minors get their defaults), then
    schema-checked, then typed."""
    check_version(data, where=where)
    check_model_id(data.get("model_id"), where=where)
    validate(data, where=where)
    return Manifest.from_json(data)


def tiled_graph(
    *,
    batch: int,
    tile: tuple[int, int],
    scale: int,
    channels: int,
    out_channels: int,
    views: tuple[str, ...],
    tile_multiple: int,
    fixed_tile: bool,
    overlap: int,
    blend_trim: int,
) -> dict[str, Any]:
    """A manifest's `input`, `output` and `tiling` for a model of these properties, exported at
    `tile` and `batch`."""
    return {
        "input": GraphInput(name=INPUT_NAME, shape=(batch, channels, *tile), views=views_for(views, channels)),
        "output": GraphOutput(
            name=OUTPUT_NAME,
            shape=(batch, out_channels, tile[0] * scale, tile[1] * scale),
            color=VIEW_COLORS.get(out_channels, f"{out_channels}-channel"),
        ),
        "tiling": Tiling(
            tile=tuple(tile),
            tile_multiple=tile_multiple,
            fixed_tile=fixed_tile,
            batch=batch,
            overlap=overlap,
            padding=PAD_REFLECT,
            blend=Blend(BLEND_CENTRE, trim=blend_trim) if blend_trim else Blend(BLEND_RAMP, width=overlap),
        ),
    }


def views_for(names: tuple[str, ...], channels: int) -> tuple[View, ...]:
    """The views of a graph input of `channels` channels, split evenly in `names` order."""
    if channels % len(names):
        raise DeployError(f"{channels} input channels cannot be split into the views {', '.join(names)}")
    per_view = channels // len(names)
    return tuple(View(name, per_view, VIEW_COLORS.get(per_view, f"{per_view}-channel")) for name in names)


# A model id names folders and files (`build/<id>`, Triton's `<id>` and `<id>-tiles`): one plain
# name, never a path. The schema's `model_id` pattern is this one; cpp/src/export.cpp refuses
# with the same message.
MODEL_ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MODEL_ID_RULE = "1 to 64 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit"


def check_model_id(model_id: Any, *, where: str) -> None:
    """Refuse, in one line, a model id that is not a plain name (a path, `..`, NUL, too long)."""
    import re

    if not isinstance(model_id, str) or re.fullmatch(MODEL_ID_PATTERN[1:-1], model_id):
        return  # a non-string is the schema's to refuse
    # shown only when printable ASCII of a readable length, JSON-escaped as the C++ reader shows it
    printable = len(model_id) <= 64 and all(" " <= c <= "~" for c in model_id)
    shown = f" {json.dumps(model_id)}" if printable else ""
    raise DeployError(f"{where}: model_id{shown} is not a model id ({MODEL_ID_RULE})")


# the names `deploytool build` gives engines (the schema's `engines` property names)
ENGINE_FILE_PATTERN = r"model(_bf16)?\.sm[0-9]+-trt[0-9.]+\.engine"


def export_outputs(export_dir: str | Path) -> list[Path]:
    """The files deploytool's commands write into an export folder that are there now: the
    export's graphs and manifest, `verify`'s parity reports, `build`'s engines and timing cache,
    and what an interrupted atomic write of any of them left. Other files are not deploytool's."""
    import re

    folder = Path(export_dir)
    if not folder.is_dir():
        return []
    names = {MANIFEST_FILE, FP32_FILE, FP16_FILE, BF16_FILE, TIMING_CACHE, PARITY_JSON, PARITY_MD, PARITY_HTML}
    ours = []
    for path in sorted(folder.iterdir()):
        # fileio.atomic_path's temporary files are `.<name>.<random>.part<suffix>`
        name = path.name[1:].split(".part", 1)[0].rsplit(".", 1)[0] if path.name.startswith(".") and ".part" in path.name else path.name
        if path.is_file() and (name in names or re.fullmatch(ENGINE_FILE_PATTERN, name)):
            ours.append(path)
    return ours
