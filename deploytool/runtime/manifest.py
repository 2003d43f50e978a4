"""The export folder: the contract between `deploytool export` and everything that reads an export.

An export folder holds `model.onnx`, `model_fp16.onnx`, `model_bf16.onnx`, TensorRT engines and `manifest.json`
(written last: a folder without it is an unfinished export). This module owns the folder: the
file names, the typed manifest (dataclasses, from which deploytool/runtime/contract.py generates
`schemas/manifest.schema.json` and the README's field table), reading
with version and schema checks, atomic writing, and checking files against their sha256. Every
runtime (backends, engines, inference, parity, evaluation) reads an export through it; nothing
else reads `manifest.json` by string key.

Versioning (`schema_version`, "MAJOR.MINOR"): a reader of major M refuses any other major in one
line naming both versions. Minor versions only add fields: a reader ignores fields it does not
know (a newer minor's), and reads an older minor with the defaults of the fields that minor lacks
(a field's `since` and default, declared with `spec`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from deploytool.errors import DeployError
from deploytool.runtime.contract import decode, encode, fill_minor_defaults, spec
from deploytool.runtime.fileio import sha256_file, write_text_atomic

SCHEMA_VERSION = "1.4"
MANIFEST_FILE = "manifest.json"
FP32_FILE, FP16_FILE = "model.onnx", "model_fp16.onnx"
BF16_FILE = "model_bf16.onnx"
TIMING_CACHE = "timing.cache"
PARITY_JSON, PARITY_MD, PARITY_HTML = "parity.json", "parity.md", "parity.html"
INPUT_NAME, OUTPUT_NAME = "input", "output"
BLEND_RAMP, BLEND_CENTRE = "ramp", "centre"
PAD_REFLECT = "reflect"
VIEW_COLORS = {1: "gray", 3: "RGB"}

# A model id names folders and files (`build/<id>`, Triton's `<id>` and `<id>-tiles`): one plain
# name, never a path. The schema's `model_id` pattern is this one; cpp/src/export.cpp refuses
# with the same message.
MODEL_ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MODEL_ID_RULE = "1 to 64 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit"

# the names `deploytool build` gives engines (the schema's `engines` property names)
ENGINE_FILE_PATTERN = r"model(_bf16)?\.sm[0-9]+-trt[0-9.]+\.engine"


@dataclass(frozen=True)
class View:
    """One image the model takes; several views are stacked on the channel axis in this order."""

    name: str = spec('`"image"`, or `"left"` / `"right"` for dual-pixel models', minLength=1)
    channels: int = spec("1 (gray) or 3 (RGB)", minimum=1)
    color: str = spec('`"gray"` or `"RGB"`')


@dataclass(frozen=True)
class GraphInput:
    name: str = spec("graph input tensor name (`input`)", minLength=1)
    shape: tuple[int, int, int, int] = spec("static NCHW shape `[batch, C, tile_h, tile_w]`", each={"minimum": 1})
    views: tuple[View, ...] = spec(
        'the images the model takes, stacked on channels in this order: `[{"image", 3, "RGB"}]`, a gray model '
        '`[{"image", 1, "gray"}]`, dual-pixel `[{"left", 3, "RGB"}, {"right", 3, "RGB"}]`. A consumer reads one image per view; '
        "a gray image given to an RGB view is replicated to 3 channels, an RGB image given to a gray view is refused",
        minItems=1,
    )
    dtype: str = spec("element type", const="float32", default="float32")
    layout: str = spec("memory layout", const="NCHW", default="NCHW")
    value_range: tuple[float, float] = spec(
        "nominal value range, `[0, 1]`: 8-bit samples are divided by 255, 16-bit by 65535", json_name="range", default=(0.0, 1.0)
    )


@dataclass(frozen=True)
class GraphOutput:
    name: str = spec("graph output tensor name (`output`)", minLength=1)
    shape: tuple[int, int, int, int] = spec("static NCHW shape `[batch, C_out, tile_h·scale, tile_w·scale]`", each={"minimum": 1})
    color: str = spec("`RGB` or `gray`")
    dtype: str = spec("element type", const="float32", default="float32")
    layout: str = spec("memory layout", const="NCHW", default="NCHW")
    clamped: bool = spec("`false`: the graph does not clip; consumers clip to `output.range` before writing pixels", default=False)
    value_range: tuple[float, float] = spec("nominal value range of the output, `[0, 1]`", json_name="range", default=(0.0, 1.0))


@dataclass(frozen=True)
class Blend:
    """How overlapping tile outputs are combined.

    `ramp`: linear weights rising over the overlap at every inner tile edge (`width` input
    pixels; it equals the overlap in use, so `run --overlap` changes both). `centre`: each tile
    contributes only its centre, `trim` input pixels in from inner edges, and centres are
    averaged (IPT's official chop); a trim is capped at half the overlap.
    """

    mode: str = spec(
        "`ramp`: linear weights rising over `width` input pixels at every inner tile edge (weights `(i + 0.5) / width`); "
        "`centre`: each tile contributes only its centre, `trim` input pixels in from inner edges, and centres are averaged "
        "(IPT's official chop)",
        enum=[BLEND_RAMP, BLEND_CENTRE],
    )
    width: int = spec("`ramp`'s width in input pixels: the overlap in use", minimum=0, default=0)
    trim: int = spec("`centre`'s trim in input pixels (capped at half the overlap)", minimum=0, default=0)


@dataclass(frozen=True)
class Tiling:
    """Everything a consumer needs to run the static graph over images of any size."""

    tile: tuple[int, int] = spec("`[h, w]`: the static input tile", each={"minimum": 1})
    tile_multiple: int = spec(
        "images are padded bottom/right to a multiple of this (the model's window) before tiling; the overlap is rounded up "
        "to it, so every tile starts on the whole image's window grid",
        minimum=1,
    )
    fixed_tile: bool = spec("`true`: the model takes exactly this tile (IPT); no other tile can be exported")
    batch: int = spec("tiles per graph call; a short last batch is filled with copies of a real tile", minimum=1)
    overlap: int = spec("default overlap between neighbouring tiles, input pixels (`run --overlap` overrides)", minimum=0)
    padding: str = spec(
        "`reflect`: the padding to the multiple (and of an image smaller than a tile) mirrors without repeating the edge "
        "pixel; where the image is too small to mirror (pad ≥ size), the edge pixel is repeated",
        enum=[PAD_REFLECT],
    )
    blend: Blend = spec("how overlapping tile outputs are combined")


@dataclass(frozen=True)
class ModelInfo:
    """What rebuilds the PyTorch model of an export without the config that made it."""

    family: str = spec("family module in `model_defs/`", minLength=1)
    task: str = spec("`sr`, `denoise`, `jpeg`, `derain`, `deblur`, `defocus`, `dual-defocus`, `real-sr` or `real-denoise`", minLength=1)
    description: str = spec("one line for people")
    arch: dict[str, Any] = spec(
        "the hyperparameters the model was built with (after reconciling with the checkpoint); with the checkpoint they "
        "rebuild the PyTorch model without the config that made the export"
    )
    reference: str = spec("the name of the original implementation parity is measured against, e.g. `spandrel HAT`")
    reference_chop: int = spec("> 0: the original runs whole images chopped into quadrants below this many pixels (ESRT's `forward_chop`)", minimum=0)
    task_index: int = spec("this id's task in a multi-task checkpoint (IPT's pre-training file)", minimum=0)


SHA256_PATTERN = "^[0-9a-f]{64}$"


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's weights came from: an official-format checkpoint, or a seeded random init."""

    kind: str = spec("`checkpoint` or `random-init`", enum=["checkpoint", "random-init"])
    path: str | None = spec("the checkpoint's path", omit_none=True, default=None)
    sha256: str | None = spec("the checkpoint's sha256", omit_none=True, default=None, pattern=SHA256_PATTERN)
    wrapper_key: str | None = spec("the checkpoint's wrapper whose weights were used, e.g. `params_ema`", omit_none=True, default=None)
    seed: int | None = spec("the random init's seed", omit_none=True, default=None)

    def describe(self) -> str:
        if self.kind == "random-init":
            return f"random init (seed {self.seed}; UNTRAINED, for smoke tests only)"
        wrapper = f", '{self.wrapper_key}' weights" if self.wrapper_key else ""
        return f"{self.path} (sha256 {self.sha256[:12]}…{wrapper})"


@dataclass(frozen=True)
class FileRecord:
    sha256: str = spec("the file's sha256; consumers refuse a file whose sha256 differs", pattern=SHA256_PATTERN)
    bytes: int = spec("the file's size", minimum=0)


@dataclass(frozen=True)
class EngineRecord:
    """A TensorRT engine built by `deploytool build` for one GPU architecture and TensorRT version."""

    sha256: str = spec("the engine file's sha256", pattern=SHA256_PATTERN)
    bytes: int = spec("the engine file's size", minimum=0)
    gpu: str = spec("the GPU it was built on")
    compute_capability: tuple[int, int] = spec("`[major, minor]` of that GPU", each={"minimum": 0})
    tensorrt: str = spec("the TensorRT version that built it")
    plan: dict[str, Any] = spec("the builder's precision plan")
    workspace_bytes: int = spec("the builder's workspace limit", minimum=0)
    opt_level: int = spec("the builder optimization level", minimum=0, maximum=5)
    timing_cache: str = spec("the timing cache used")
    build_seconds: float = spec("wall time of the build", minimum=0)


@dataclass(frozen=True)
class GraphStats:
    traced_nodes: int = spec("nodes of the traced graph", minimum=0)
    merged_initializers: int = spec("initializers merged as duplicates", minimum=0)
    nodes: int = spec("nodes of the FP32 graph", minimum=0)
    initializers: int = spec("initializers of the FP32 graph", minimum=0)
    parameter_bytes: int = spec("bytes of the FP32 graph's initializers", minimum=0)


@dataclass(frozen=True)
class Fp16Measurement:
    """The graph and inputs the FP16 plan's figures were measured on: the calibration graph
    (`calibration_tile`, batch 1), not necessarily the shipped one (`verify` reports that one's)."""

    shape: tuple[int, int, int, int] = spec("the input shape of the graph the plan's figures were measured on", each={"minimum": 1})
    inputs: str = spec("which inputs")


@dataclass(frozen=True)
class Fp16Summary:
    """How model_fp16.onnx was planned, and how far its plan is from model.onnx's on the inputs
    it was validated on (`measured_at`)."""

    margin: float = spec("the range margin", exclusiveMinimum=0)
    fp32_nodes: int = spec("nodes kept FP32", minimum=0)
    total_nodes: int = spec("nodes of the graph", minimum=0)
    fp32_by_op: dict[str, int] = spec("nodes kept FP32 by op type", key_name="op")
    fp32_by_reason: dict[str, int] = spec("nodes kept FP32 by the reason", key_name="reason")
    fp16_flop_share: float = spec("the share of FLOPs run in FP16", minimum=0, maximum=1)
    max_abs_vs_fp32: float = spec(
        "max |diff| of the plan against FP32 on the calibration graph — not the shipped graph, whose own figures `verify` reports",
        minimum=0,
    )
    psnr_vs_fp32: float | None = spec("PSNR of the plan against FP32 there (null: identical outputs)")
    calibration: str = spec("the calibration inputs")
    largest_ranges: tuple[tuple[str, float], ...] = spec("the tensors with the largest ranges, `[name, max abs]`")
    calibration_tile: tuple[int, int] | None = spec("where ranges were measured (null: the export's tile)", since="1.2", default=None, each={"minimum": 1})
    grown_tensors: int = spec("how many tensors' ranges were raised from there to the export's tile", since="1.2", default=0, minimum=0)
    sensitivity_blocks: tuple[str, ...] = spec("the blocks the sensitivity search kept FP32", since="1.2", default=())
    measured_at: Fp16Measurement | None = spec("the graph and inputs `max_abs_vs_fp32` and `psnr_vs_fp32` were measured on", since="1.3", default=None)
    verify_inputs_max_abs: float | None = spec(
        "the plan's max |diff| on `verify`'s standard inputs there (null: not measured)", since="1.3", default=None, minimum=0
    )
    verify_inputs_limit: float | None = spec("the `fp16_max_abs / 2` it had to meet (null: not measured)", since="1.3", default=None, exclusiveMinimum=0)


@dataclass(frozen=True)
class Bf16Summary:
    """How model_bf16.onnx was planned: `Fp16Summary`'s fields, with the BF16 share of FLOPs.
    BF16 has FP32's range, so its FP32 islands are by op, by accumulation and by sensitivity."""

    margin: float = spec("the range margin (BF16 tries one: its range is FP32's)", exclusiveMinimum=0)
    fp32_nodes: int = spec("nodes kept FP32", minimum=0)
    total_nodes: int = spec("nodes of the graph", minimum=0)
    fp32_by_op: dict[str, int] = spec("nodes kept FP32 by op type", key_name="op")
    fp32_by_reason: dict[str, int] = spec("nodes kept FP32 by the reason (`op`, `accumulation`, `sensitivity`)", key_name="reason")
    bf16_flop_share: float = spec("the share of FLOPs run in BF16", minimum=0, maximum=1)
    max_abs_vs_fp32: float = spec("max |diff| of the plan (emulated BF16) against FP32 on the calibration graph", minimum=0)
    psnr_vs_fp32: float | None = spec("PSNR of the plan against FP32 there (null: identical outputs)")
    calibration: str = spec("the calibration inputs")
    largest_ranges: tuple[tuple[str, float], ...] = spec("the tensors with the largest ranges, `[name, max abs]`")
    calibration_tile: tuple[int, int] | None = spec("where the plan was measured (null: the export's tile)", each={"minimum": 1})
    grown_tensors: int = spec(
        "how many tensors' ranges were raised from there to the export's tile (recorded; BF16's islands do not depend on range)", minimum=0
    )
    sensitivity_blocks: tuple[str, ...] = spec("the blocks the sensitivity search kept FP32")
    measured_at: Fp16Measurement | None = spec("the graph and inputs `max_abs_vs_fp32` and `psnr_vs_fp32` were measured on", default=None)
    verify_inputs_max_abs: float | None = spec("the plan's max |diff| on `verify`'s standard inputs there (null: not measured)", default=None, minimum=0)
    verify_inputs_limit: float | None = spec("the `bf16_max_abs / 2` it had to meet (null: not measured)", default=None, exclusiveMinimum=0)


@dataclass(frozen=True)
class StageCost:
    """One export stage: its wall time, and the largest peak resident memory so far of the
    exporting process and its collected trace processes at the stage's end (a peak that rises
    during a stage was set by it). The two traces run in child processes at once, from `trace`
    on: scripts/export_cost.py sums the processes' memory."""

    seconds: float = spec(
        "the stage's wall time (`trace`: its child process's trace; `calibration_trace`: the rest of the calibration tile's trace, which ran beside `trace`, `simplify` and `check`, then finishing its graph)",
        minimum=0,
    )
    peak_rss_mb: float = spec("the largest peak memory so far of the exporting process and its collected trace processes, at the stage's end", minimum=0)


@dataclass(frozen=True)
class Manifest:
    schema_version: str = spec('`"MAJOR.MINOR"`', pattern="^1\\.[0-9]+$")
    model_id: str = spec(
        "e.g. `hat-x4`; names folders and files (Triton models, default output folders): " + MODEL_ID_RULE + " (a manifest with another is refused)",
        pattern=MODEL_ID_PATTERN,
    )
    model: ModelInfo = spec("the model the graph computes")
    scale: int = spec("output size / input size (1 for restoration)", minimum=1)
    input: GraphInput = spec("the graph's input")
    output: GraphOutput = spec("the graph's output")
    tiling: Tiling = spec("how to run the static graph over images of any size")
    opset: int = spec("ONNX opset", minimum=1)
    exporter: str = spec("how the graph was made")
    versions: dict[str, str] = spec("package versions", key_name="package")
    source: WeightsSource = spec("where the weights came from")
    graph: GraphStats = spec("size of the FP32 graph")
    fp16: Fp16Summary | None = spec("how `model_fp16.onnx` was planned; null without an FP16 graph")
    files: dict[str, FileRecord] = spec("every graph file", required=[FP32_FILE])
    tolerances: dict[str, float] = spec(
        "the limits parity is judged with (`def_max_abs`, `onnx_max_abs`, `fp16_max_abs`, `fp16_psnr_min`, `tiled_psnr_min`, `fp16_calibration_max_abs`, and with a BF16 graph `bf16_max_abs`, `bf16_psnr_min`, `bf16_calibration_max_abs`)"
    )
    export_seconds: float = spec("wall time of the export (to 0.1 ms)", minimum=0)
    unused_weights: dict[str, str] = spec("checkpoint entries left out on purpose (other tasks of a multi-task file)", key_name="key", default_factory=dict)
    engines: dict[str, EngineRecord] = spec(
        "TensorRT engines built by `deploytool build`, named `model.sm<major><minor>-trt<version>.engine` (`model_bf16.…` from the BF16 graph); a consumer picks "
        "the one for its GPU and TensorRT or refuses",
        key_name="file",
        default_factory=dict,
        propertyNames={"pattern": f"^{ENGINE_FILE_PATTERN}$"},
    )
    export_stages: dict[str, StageCost] = spec(
        "each export stage (`load`, `trace`, `simplify`, `check`, `calibration_trace`, `fp16`, `bf16`, `save`) in order",
        key_name="stage",
        since="1.1",
        optional=True,
        default_factory=dict,
    )
    bf16: Bf16Summary | None = spec("how `model_bf16.onnx` was planned; null without a BF16 graph", since="1.4", default=None)

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
        """The overlap to tile with: the one asked for (refused in one line unless a whole number
        of pixels, at least 0; the tiler keeps it below the tile), else the export's default."""
        if requested is None:
            return self.tiling.overlap
        if int(requested) != requested or requested < 0:
            raise DeployError(f"--overlap must be a whole number of pixels, at least 0, not {requested}")
        return int(requested)

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
        return encode(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        """A manifest from its JSON form, which must already have passed `validate`."""
        return decode(cls, data)

    def write(self, export_dir: str | Path) -> Path:
        path = Path(export_dir) / MANIFEST_FILE
        data = self.to_json()
        validate(data, where=str(path))
        write_text_atomic(path, json.dumps(data, indent=2) + "\n")
        return path


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
    fill_minor_defaults(Manifest, data, (major, minor))


@functools.lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of manifest.json, shipped in the package."""
    return json.loads(resources.files("deploytool").joinpath("schemas/manifest.schema.json").read_text(encoding="utf-8"))


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
        data = json.loads(path.read_text(encoding="utf-8"))
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
    manifest = Manifest.from_json(data)
    check_shapes(manifest, where=where)
    return manifest


def check_shapes(manifest: Manifest, *, where: str) -> None:
    """Refuse, in one line, a manifest whose graph shapes disagree with its tiling, scale and
    views (what the C++ reader refuses too: cpp/src/export.cpp's check_shapes)."""
    tiling, shape, out = manifest.tiling, manifest.input.shape, manifest.output.shape
    problems = []
    view_channels = sum(view.channels for view in manifest.input.views)
    if view_channels != shape[1]:
        problems.append(f"input/views hold {view_channels} channels, input/shape {shape[1]}")
    if shape[0] != tiling.batch or out[0] != tiling.batch:
        problems.append("tiling/batch differs from the graph shapes' batch")
    if tuple(shape[2:]) != tuple(tiling.tile):
        problems.append("input/shape differs from tiling/tile")
    if tuple(out[2:]) != (tiling.tile[0] * manifest.scale, tiling.tile[1] * manifest.scale):
        problems.append("output/shape is not the tile times the scale")
    if problems:
        raise DeployError(f"{where}: {'; '.join(problems)}")


def tiled_graph(*, tiling: Tiling, scale: int, channels: int, out_channels: int, views: tuple[str, ...]) -> dict[str, Any]:
    """A manifest's `input`, `output` and `tiling` for a model of these properties, exported with
    `tiling` (its tile and batch are the graph's)."""
    batch, tile = tiling.batch, tuple(tiling.tile)
    return {
        "input": GraphInput(name=INPUT_NAME, shape=(batch, channels, *tile), views=views_for(views, channels)),
        "output": GraphOutput(
            name=OUTPUT_NAME,
            shape=(batch, out_channels, tile[0] * scale, tile[1] * scale),
            color=VIEW_COLORS.get(out_channels, f"{out_channels}-channel"),
        ),
        "tiling": dataclasses.replace(tiling, tile=tile),
    }


def blend_for(overlap: int, trim: int) -> Blend:
    """Centres averaged `trim` pixels in from inner edges when `trim` > 0, else ramps over the overlap."""
    return Blend(BLEND_CENTRE, trim=trim) if trim else Blend(BLEND_RAMP, width=overlap)


def views_for(names: tuple[str, ...], channels: int) -> tuple[View, ...]:
    """The views of a graph input of `channels` channels, split evenly in `names` order."""
    if channels % len(names):
        raise DeployError(f"{channels} input channels cannot be split into the views {', '.join(names)}")
    per_view = channels // len(names)
    return tuple(View(name, per_view, VIEW_COLORS.get(per_view, f"{per_view}-channel")) for name in names)


def check_model_id(model_id: Any, *, where: str) -> None:
    """Refuse, in one line, a model id that is not a plain name (a path, `..`, NUL, too long)."""
    import re

    if not isinstance(model_id, str) or re.fullmatch(MODEL_ID_PATTERN[1:-1], model_id):
        return  # a non-string is the schema's to refuse
    # shown only when printable ASCII of a readable length, JSON-escaped as the C++ reader shows it
    printable = len(model_id) <= 64 and all(" " <= c <= "~" for c in model_id)
    shown = f" {json.dumps(model_id)}" if printable else ""
    raise DeployError(f"{where}: model_id{shown} is not a model id ({MODEL_ID_RULE})")


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
