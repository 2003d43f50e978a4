"""Whole images through a runner: channels fitted, tiled, blended, written at the input's depth."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from deploytool import images, tiling
from deploytool.backends import Runner
from deploytool.errors import ImageError

OnTiles = Callable[[int], None]


def tile_shape(manifest: dict[str, Any]) -> tuple[tuple[int, int], int]:
    return tuple(manifest["tile"]), int(manifest["batch"])


def aligned_overlap(overlap: int, multiple: int, tile: tuple[int, int]) -> int:
    """The overlap rounded up to a window multiple, and kept below the tile."""
    return min(-(-overlap // multiple) * multiple, (min(tile) - 1) // multiple * multiple)


def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


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


def restore_array(runner: Runner, manifest: dict[str, Any], pixels: np.ndarray, *, overlap: int, on_tiles: OnTiles | None = None) -> np.ndarray:
    """HWC float32 in the model's channel count -> restored HWC float32 (unclamped)."""
    tile, batch = tile_shape(manifest)
    scale = int(manifest["scale"])
    height, width = pixels.shape[:2]
    multiple = int(manifest.get("tile_multiple", 1))
    padded = window_aligned(pixels, multiple)
    overlap = aligned_overlap(overlap, multiple, tile)
    trim = int(manifest.get("blend_trim", 0))
    restored = tiling.run_tiled(padded, runner, tile=tile, scale=scale, batch=batch, overlap=overlap, on_tiles=on_tiles, trim=trim)
    return restored[: height * scale, : width * scale]


def tiles_for(manifest: dict[str, Any], height: int, width: int, overlap: int) -> int:
    multiple = int(manifest.get("tile_multiple", 1))
    tile = tuple(manifest["tile"])
    return tiling.count_tiles(*padded_size(height, width, multiple), tile, aligned_overlap(overlap, multiple, tile))


def model_input(manifest: dict[str, Any], source: str | Path | tuple[Path, Path]) -> tuple[np.ndarray, images.LoadedImage]:
    """HWC float32 with the graph's channels, and the image whose format the output keeps.

    Dual-view models (6 channels) take a (left, right) pair, stacked left RGB then right RGB.
    """
    channels, model_id = int(manifest["channels"]), manifest["model_id"]
    if channels != 6:
        image = images.read_image(source)
        return images.fit_channels(image.pixels, channels, model_id=model_id, path=source), image
    if not isinstance(source, tuple):
        raise ImageError(f"{model_id} takes two views of one scene (left, right); {source} is a single image")
    left, right = (images.read_image(path) for path in source)
    if left.pixels.shape[:2] != right.pixels.shape[:2]:
        raise ImageError(f"{source[0]} and {source[1]} differ in size: the two views must match")
    views = [images.fit_channels(view.pixels, 3, model_id=model_id, path=path) for view, path in zip((left, right), source)]
    return np.concatenate(views, axis=2), left


def restore_file(
    runner: Runner,
    manifest: dict[str, Any],
    source: str | Path | tuple[Path, Path],
    destination: str | Path,
    *,
    overlap: int,
    on_tiles: OnTiles | None = None,
    on_start: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Read, restore and atomically write one image; returns what was done, for reports."""
    pixels, image = model_input(manifest, source)
    height, width = pixels.shape[:2]
    tiles = tiles_for(manifest, height, width, overlap)
    if on_start:
        on_start(tiles)
    restored = restore_array(runner, manifest, pixels, overlap=overlap, on_tiles=on_tiles)
    scale = int(manifest["scale"])
    alpha = None if image.alpha is None else (image.alpha if scale == 1 else images.resize_alpha(image.alpha, scale))
    images.write_image(destination, images.restore_channels(restored, image), alpha=alpha, bit_depth=image.bit_depth)
    return {
        "input": " + ".join(map(str, source)) if isinstance(source, tuple) else str(source),
        "output": str(destination),
        "mode": image.mode,
        "bit_depth": image.bit_depth,
        "size": [width, height],
        "output_size": [width * scale, height * scale],
        "tiles": tiles,
    }
