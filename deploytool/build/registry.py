"""Model ids, driven by `export_configs/*.toml`: adding a variant is a config file, not code.

One file per model id. A file may name a `base` (a `_*.toml` file in the same folder holding
what a family's variants share); tables merge key by key, the variant winning. Extra config
folders can be added with DEPLOYTOOL_CONFIG_PATH (os.pathsep-separated).
"""

from __future__ import annotations

import copy
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from deploytool.errors import DeployError
from deploytool.runtime.manifest import PAD_REFLECT, Tiling, blend_for, check_model_id
from deploytool.runtime.tiling import round_up

# tile overlap in input pixels for configs that name none; an export records its own in the manifest
DEFAULT_OVERLAP = 16
TASKS = ("sr", "real-sr", "denoise", "jpeg", "derain", "deblur", "defocus", "dual-defocus", "real-denoise")


@dataclass(frozen=True)
class WeightsInfo:
    """Where the official checkpoint of a model id comes from."""

    filename: str | None = None
    url: str | None = None
    sha256: str | None = None
    # other official files that load into the same definition (e.g. the DIV2K-trained ones)
    also: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class ModelEntry:
    id: str
    family: str
    task: str
    scale: int
    channels: int
    out_channels: int
    # the default export tile and batch, the model's window, overlap and blend: what its exports record
    tiling: Tiling
    arch: dict[str, Any]
    weights: WeightsInfo
    tolerances: dict[str, float]
    description: str = ""
    tile_reason: str = ""
    # >0: run the original on whole images the way its official test script does, chopped into
    # overlapping quadrants until each has fewer pixels than this (ESRT's forward_chop)
    reference_chop: int = 0
    # Constants a node computes from smaller ones (a position bias gathered from its table, a
    # broadcast of masks) stay computed in the graph when larger than this: folded, they would be
    # stored once per block (HAT's sizes: the README's "Design choices, measured").
    fold_limit_mb: float = 1.0
    # the position of this id's head/tail in a multi-task checkpoint (IPT's pre-training file)
    task_index: int = 0
    # the images the model takes, stacked on channels in this order (dual-pixel: left, right)
    views: tuple[str, ...] = ("image",)
    source_file: Path | None = field(default=None, compare=False)

    def check_tile(self, tile: tuple[int, int]) -> None:
        """Refuse export tiles the model cannot take as one static window grid."""
        grid = self.tiling
        if grid.fixed_tile and tuple(tile) != tuple(grid.tile):
            raise DeployError(f"{self.id} takes exactly {grid.tile[0]}x{grid.tile[1]} tiles, not {tile[0]}x{tile[1]}: {self.tile_reason}")
        if any(t <= 0 or t % grid.tile_multiple for t in tile):
            raise DeployError(
                f"{self.id}: tile {tile[0]}x{tile[1]} is not a multiple of {grid.tile_multiple} "
                f"(the model's window); try {max(grid.tile_multiple, round_up(tile[0], grid.tile_multiple))}"
            )


def config_dirs() -> list[Path]:
    import export_configs

    dirs = [Path(export_configs.__file__).parent]
    extra = os.environ.get("DEPLOYTOOL_CONFIG_PATH", "")
    dirs += [Path(p) for p in extra.split(os.pathsep) if p]
    return dirs


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DeployError(f"cannot read model config {path}: {exc}") from None
    base_name = data.pop("base", None)
    if base_name:
        data = _merge(_read_toml(path.parent / f"{base_name}.toml"), data)
    return data


def _tile_pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))


def _tiling(data: dict[str, Any]) -> Tiling:
    """A config's tiling keys; `blend_trim` > 0: tiles are blended by averaging their centres,
    this many input pixels in from inner edges (IPT's official chop), else ramps over the overlap."""
    overlap = int(data.get("overlap", DEFAULT_OVERLAP))
    return Tiling(
        tile=_tile_pair(data["tile"]),
        tile_multiple=int(data.get("tile_multiple", 1)),
        fixed_tile=bool(data.get("fixed_tile", False)),  # IPT: embeddings sized for one 48 px patch
        batch=int(data.get("batch", 1)),
        overlap=overlap,
        padding=PAD_REFLECT,
        blend=blend_for(overlap, int(data.get("blend_trim", 0))),
    )


def entry_from_dict(data: dict[str, Any], source_file: Path | None = None) -> ModelEntry:
    where = source_file or "config"
    if "task" in data and data["task"] not in TASKS:
        raise DeployError(f"model config {where}: task {data.get('task')!r} is not one of {', '.join(TASKS)}")
    if "id" in data:
        check_model_id(data["id"], where=f"model config {where}")
    try:
        weights = dict(data.get("weights", {}))
        filename = weights.get("filename")
        url = weights.get("url") or (weights["base_url"] + filename if weights.get("base_url") and filename else None)
        return ModelEntry(
            id=data["id"],
            family=data["family"],
            task=data["task"],
            scale=int(data["scale"]),
            channels=int(data["channels"]),
            out_channels=int(data.get("out_channels", data["channels"])),
            tiling=_tiling(data),
            arch=dict(data["arch"]),
            weights=WeightsInfo(
                filename=filename,
                url=url,
                sha256=weights.get("sha256"),
                also=tuple(weights.get("also", ())),
                note=weights.get("note", ""),
            ),
            tolerances={k: float(v) for k, v in data.get("tolerances", {}).items()},
            description=data.get("description", ""),
            tile_reason=data.get("tile_reason", ""),
            reference_chop=int(data.get("reference_chop", 0)),
            fold_limit_mb=float(data.get("fold_limit_mb", 1.0)),
            task_index=int(data.get("task_index", 0)),
            views=tuple(data.get("views", ("image",))),
            source_file=source_file,
        )
    except KeyError as exc:
        raise DeployError(f"model config {where} lacks the required key {exc.args[0]!r}") from None


@functools.cache
def _load_all(dirs: tuple[Path, ...]) -> dict[str, ModelEntry]:
    entries: dict[str, ModelEntry] = {}
    for directory in dirs:
        for path in sorted(directory.glob("*.toml")):
            if path.name.startswith("_"):
                continue
            entry = entry_from_dict(_read_toml(path), path)
            if entry.id in entries:
                raise DeployError(f"model id {entry.id} is defined twice: {entries[entry.id].source_file} and {path}")
            entries[entry.id] = entry
    return entries


def all_entries() -> dict[str, ModelEntry]:
    return _load_all(tuple(config_dirs()))


def one_id_per_family() -> list[str]:
    """The first single-image id of every family, in id order: what the benchmarks run by default."""
    chosen: dict[str, str] = {}
    for model_id, entry in sorted(all_entries().items()):
        if len(entry.views) == 1:
            chosen.setdefault(entry.family, model_id)
    return sorted(chosen.values())


def get(model_id: str) -> ModelEntry:
    entries = all_entries()
    if model_id not in entries:
        close = [i for i in entries if model_id.split("-")[0] in i][:8]
        hint = f"; did you mean one of: {', '.join(close)}" if close else "; `deploytool list` shows them all"
        raise DeployError(f"unknown model id {model_id!r}{hint}")
    return entries[model_id]
