"""Whole images through a runner: channels fitted, tiled, blended, written at the input's depth."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from deploytool.errors import DeployError, ImageError
from deploytool.runtime import images, tiling
from deploytool.runtime.backends import Runner
from deploytool.runtime.fileio import inside
from deploytool.runtime.manifest import BLEND_CENTRE, Manifest
from deploytool.runtime.tiling import round_up

OnTiles = Callable[[int], None]
# One image file, or one file per view for models that take several (dual-pixel: left, right)
Source = str | Path | tuple[Path, ...]


def aligned_overlap(overlap: int, multiple: int, tile: tuple[int, int]) -> int:
    """The overlap rounded up to a window multiple, and kept below the tile."""
    return min(round_up(overlap, multiple), (min(tile) - 1) // multiple * multiple)


def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    return round_up(height, multiple), round_up(width, multiple)


def window_aligned(pixels: np.ndarray, multiple: int) -> np.ndarray:
    """Reflect-pad bottom/right to a window multiple.

    With the overlap a window multiple too, every tile starts on the window grid of the whole
    image, as the original pads a whole image before cutting windows: tiles see the same
    windows, only less context.
    """
    height, width = pixels.shape[:2]
    padded_h, padded_w = padded_size(height, width, multiple)
    pad_h, pad_w = padded_h - height, padded_w - width
    if pad_h or pad_w:
        mode = "reflect" if pad_h < height and pad_w < width else "edge"
        pixels = np.pad(pixels, ((0, pad_h), (0, pad_w), (0, 0)), mode=mode)
    return pixels


def restore_array(runner: Runner, manifest: Manifest, pixels: np.ndarray, *, overlap: int, on_tiles: OnTiles | None = None) -> np.ndarray:
    """HWC float32 in the model's channel count -> restored HWC float32 (unclamped)."""
    grid = manifest.tiling
    height, width = pixels.shape[:2]
    padded = window_aligned(pixels, grid.tile_multiple)
    overlap = aligned_overlap(overlap, grid.tile_multiple, grid.tile)
    restored = tiling.run_tiled(
        padded, runner, tile=grid.tile, scale=manifest.scale, batch=grid.batch, overlap=overlap, on_tiles=on_tiles, trim=_trim(manifest)
    )
    return restored[: height * manifest.scale, : width * manifest.scale]


def _trim(manifest: Manifest) -> int:
    grid = manifest.tiling
    return grid.blend.trim if grid.blend.mode == BLEND_CENTRE else 0


def tiled_array(manifest: Manifest, pixels: np.ndarray, *, overlap: int) -> tiling.TiledImage:
    """HWC float32 in the model's channel count cut into tiles exactly as `restore_array` cuts
    it, for `tiling.run_tiled_stream`; `restored_array` gives its output back."""
    grid = manifest.tiling
    padded = window_aligned(pixels, grid.tile_multiple)
    overlap = aligned_overlap(overlap, grid.tile_multiple, grid.tile)
    return tiling.TiledImage(padded, tile=grid.tile, scale=manifest.scale, overlap=overlap, trim=_trim(manifest))


def restored_array(manifest: Manifest, tiled: tiling.TiledImage, height: int, width: int) -> np.ndarray:
    """The output of a `tiled_array` of an image of `height` x `width`, as `restore_array` returns it."""
    return tiled.result()[: height * manifest.scale, : width * manifest.scale]


def tiles_for(manifest: Manifest, height: int, width: int, overlap: int) -> int:
    grid = manifest.tiling
    return tiling.count_tiles(*padded_size(height, width, grid.tile_multiple), grid.tile, aligned_overlap(overlap, grid.tile_multiple, grid.tile))


def group_sources(manifest: Manifest, paths: list[Path]) -> list[Source]:
    """Image files as the model takes them: one each, or in groups of one file per view. Every file
    is checked first (`images.check_readable`), so a missing or unknown one is refused before any
    output is written (the Triton client instead lets such a file fail alone, as its server does)."""
    for path in paths:
        images.check_readable(path)
    return group_files(manifest.model_id, [v.name for v in manifest.views], paths)


def group_files(model_id: str, views: list[str], paths: list[Path]) -> list[Source]:
    """Image files for a model of `views` (names, in order): one each, or one file per view."""
    if len(views) == 1:
        return list(paths)
    if len(paths) % len(views):
        raise ImageError(f"{model_id} takes images in groups of {len(views)} ({', '.join(views)}); {len(paths)} given")
    return [tuple(paths[i : i + len(views)]) for i in range(0, len(paths), len(views))]


def model_input(manifest: Manifest, source: Source) -> tuple[np.ndarray, images.LoadedImage]:
    """HWC float32 with the graph's channels, and the image whose format the output keeps.

    A model of several views takes one file per view, stacked on channels in the manifest's order.
    """
    views, model_id = manifest.views, manifest.model_id
    if len(views) == 1:
        if isinstance(source, tuple):
            raise ImageError(f"{model_id} takes one image, not {len(source)}")
        image = images.read_image(source)
        return images.fit_channels(image.pixels, views[0].channels, model_id=model_id, path=source), image
    names = ", ".join(v.name for v in views)
    if not isinstance(source, tuple) or len(source) != len(views):
        raise ImageError(f"{model_id} takes {len(views)} views of one scene ({names}); {source} is not such a group")
    loaded = [images.read_image(path) for path in source]
    if any(image.pixels.shape[:2] != loaded[0].pixels.shape[:2] for image in loaded):
        raise ImageError(f"{' and '.join(map(str, source))} differ in size: the views must match")
    stacked = [images.fit_channels(image.pixels, view.channels, model_id=model_id, path=path) for image, view, path in zip(loaded, views, source)]
    return np.concatenate(stacked, axis=2), loaded[0]


def restore_image(
    runner: Runner, manifest: Manifest, pixels: np.ndarray, image: images.LoadedImage, *, overlap: int, on_tiles: OnTiles | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The model's input pixels (from `model_input`) restored in the channels of `image`, and its
    alpha scaled alongside (bicubic), or None: float32, not yet clipped or quantized."""
    restored = restore_array(runner, manifest, pixels, overlap=overlap, on_tiles=on_tiles)
    scale = manifest.scale
    alpha = None if image.alpha is None else (image.alpha if scale == 1 else images.resize_alpha(image.alpha, scale))
    return images.restore_channels(restored, image), alpha


def destinations(sources: list[Source], output: Path) -> list[Path]:
    """Where each source's result goes: `output` itself for one source and a file name with a
    suffix, else `output/<name of the source's first file>`."""
    if len(sources) > 1 and output.suffix:
        raise DeployError(f"{len(sources)} inputs need an output folder, not the file {output}")
    firsts = [source[0] if isinstance(source, tuple) else Path(source) for source in sources]
    if len(sources) == 1 and output.suffix:
        return [output]
    names = [first.name for first in firsts]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DeployError(f"several inputs are named {', '.join(repeated)}: their outputs in {output} would overwrite each other")
    return [inside(output, name, "output name") for name in names]


def restore_file(
    runner: Runner,
    manifest: Manifest,
    source: Source,
    destination: str | Path,
    *,
    overlap: int,
    on_tiles: OnTiles | None = None,
    on_start: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Read, restore and atomically write one image; returns what was done, for reports. An
    allocation that fails names the image (the command then says "out of memory" in one line)."""
    with _naming_memory_errors(source):
        pixels, image = model_input(manifest, source)
        height, width = pixels.shape[:2]
        tiles = tiles_for(manifest, height, width, overlap)
        if on_start:
            on_start(tiles)
        restored, alpha = restore_image(runner, manifest, pixels, image, overlap=overlap, on_tiles=on_tiles)
        images.write_image(destination, restored, alpha=alpha, bit_depth=image.bit_depth)
    scale = manifest.scale
    return {
        "input": _source_name(source),
        "output": str(destination),
        "mode": image.mode,
        "bit_depth": image.bit_depth,
        "size": [width, height],
        "output_size": [width * scale, height * scale],
        "tiles": tiles,
    }


def _source_name(source: Source) -> str:
    return " + ".join(map(str, source)) if isinstance(source, tuple) else str(source)


@contextlib.contextmanager
def _naming_memory_errors(source: Source) -> Iterator[None]:
    try:
        yield
    except MemoryError as exc:
        raise MemoryError(f"{_source_name(source)}: {str(exc).strip() or 'an allocation failed'}") from None
