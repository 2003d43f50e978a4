"""Inputs for calibration and parity: seeded synthetic textures, or crops of real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deploytool.errors import ImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# `verify`'s standard inputs: this many synthetic batches of the graph's shape, seeded from
# PARITY_SEED on. The export validates its FP16 plan on them too (see verify_tiles).
PARITY_BATCHES, PARITY_SEED = 2, 1000


def synthetic_batch(shape: tuple[int, int, int, int], seed: int) -> np.ndarray:
    """NCHW float32 in [0, 1]: gradients, gratings, hard edges and noise, like photo content."""
    rng = np.random.default_rng(seed)
    n, c, h, w = shape
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    out = np.empty(shape, dtype=np.float32)
    for i in range(n):
        for ch in range(c):
            angle, freq = rng.uniform(0, np.pi), rng.uniform(2, 12)
            grating = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)))
            gradient = rng.uniform(0, 1) * xx + rng.uniform(0, 1) * yy
            edges = (((xx * rng.integers(2, 6)).astype(int) + (yy * rng.integers(2, 6)).astype(int)) % 2).astype(float)
            mix = rng.dirichlet(np.ones(3))
            base = mix[0] * grating + mix[1] * gradient / 2 + mix[2] * edges
            out[i, ch] = np.clip(base + rng.normal(0, 0.03, (h, w)), 0, 1)
    return out


def parity_batch(shape: tuple[int, int, int, int], index: int) -> np.ndarray:
    """`verify`'s synthetic input number `index` for a graph of `shape`."""
    return synthetic_batch(shape, PARITY_SEED + index)


def verify_tiles(shape: tuple[int, int, int, int], tile: tuple[int, int], count: int = PARITY_BATCHES) -> list[np.ndarray]:
    """`verify`'s synthetic batches for a graph of `shape`, drawn at `tile` instead of the
    graph's tile (the same generator and seeds), as single-tile batches (1, C, H, W).

    At the graph's own tile these are exactly the tiles of `verify`'s batches, and a graph's
    tiles do not depend on the others in their batch: a batch-1 graph judges them as verify does.
    """
    batch, channels = shape[0], shape[1]
    return [tiles[None] for index in range(count) for tiles in parity_batch((batch, channels, *tile), index)]


def list_images(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise ImageError(f"image folder not found: {directory}")
    paths = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ImageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {directory}")
    return paths


def image_crops(paths: list[Path], shape: tuple[int, int, int, int], *, model_id: str, limit: int) -> list[np.ndarray]:
    """Centre crops of real images as NCHW batches of the graph's static shape (for calibration)."""
    from deploytool.runtime import images

    n, c, h, w = shape
    crops = []
    for path in paths:
        pixels = images.fit_channels(images.read_image(path).pixels, c, model_id=model_id, path=path)
        if pixels.shape[0] < h or pixels.shape[1] < w:
            continue
        top, left = (pixels.shape[0] - h) // 2, (pixels.shape[1] - w) // 2
        crops.append(pixels[top : top + h, left : left + w].transpose(2, 0, 1))
    batches = [np.stack((crops[i:] + crops[:i])[:n]).astype(np.float32) for i in range(0, len(crops), n)]
    return batches[:limit]
