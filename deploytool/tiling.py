"""Running fixed-shape models on images of any size, tile by tile, with blended overlaps.

ONNX/TensorRT graphs are exported for one input shape [batch, C, tile_h, tile_w]. `run_tiled`
cuts the image into such tiles, runs them in batches, and blends the overlapping outputs with
linear ramps so no seams show. Memory for accumulators and in-flight tiles is bounded by the
tile size times the image width, never by the image area.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Infer = Callable[[np.ndarray], np.ndarray]


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= `value`."""
    return -(-value // multiple) * multiple


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length `tile` covering [0, size), the last ending at `size`.

    Neighbouring tiles overlap by at least `overlap`; `[0]` when the size fits in one tile.
    """
    if tile <= 0:
        raise ValueError(f"tile size must be positive, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile) = [0, {tile}), got {overlap}")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, tile - overlap))
    starts.append(size - tile)
    return starts


def count_tiles(height: int, width: int, tile_hw: tuple[int, int], overlap: int) -> int:
    """Number of tiles `run_tiled` runs for an image of `height` x `width`."""
    tile_h, tile_w = tile_hw
    return len(tile_starts(height, tile_h, overlap)) * len(tile_starts(width, tile_w, overlap))


def _ramp_window(length: int, ramp: int, before: bool, after: bool) -> np.ndarray:
    """1-D weights: 1 inside, linear ramps of `ramp` pixels at edges that have a neighbour."""
    window = np.ones(length, dtype=np.float32)
    if ramp > 0:
        # Half-pixel offsets keep every weight strictly positive, so sum(w) never vanishes.
        rising = ((np.arange(ramp, dtype=np.float32) + 0.5) / ramp).astype(np.float32)
        if before:
            window[:ramp] = np.minimum(window[:ramp], rising)
        if after:
            window[-ramp:] = np.minimum(window[-ramp:], rising[::-1])
    return window


def _centre_window(length: int, trim: int, before: bool, after: bool) -> np.ndarray:
    """1-D weights: 1 on the tile's centre, 0 on the `trim` pixels at edges that have a neighbour."""
    window = np.ones(length, dtype=np.float32)
    if before:
        window[:trim] = 0.0
    if after:
        window[length - trim :] = 0.0
    return window


def _pad_mode(size: int, tile: int) -> str:
    # Reflection needs at least `pad + 1` pixels to mirror; tiny images fall back to edge.
    return "reflect" if tile - size <= size - 1 else "edge"


def _validate(image: np.ndarray, tile: tuple[int, int], scale: int, batch: int, overlap: int) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.float32:
        kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image must be a float32 numpy array, got {kind}")
    if image.ndim != 3 or image.shape[2] < 1 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must be HWC with H, W, C >= 1, got shape {image.shape}")
    if not isinstance(tile, (tuple, list)) or len(tile) != 2 or any(int(t) != t or t <= 0 for t in tile):
        raise ValueError(f"tile must be two positive integers (height, width), got {tile}")
    if int(batch) != batch or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch}")
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale}")
    if int(overlap) != overlap or not 0 <= overlap < min(tile):
        raise ValueError(f"overlap must be an integer in [0, {min(tile)}) for tile {tuple(tile)}, got {overlap}")


def run_tiled(
    image: np.ndarray,
    infer: Infer,
    *,
    tile: tuple[int, int],
    scale: int,
    batch: int,
    overlap: int,
    on_tiles: Callable[[int], None] | None = None,
    trim: int = 0,
) -> np.ndarray:
    """Run `infer` over `image` (float32 HWC) in fixed-size tiles; return float32 HWC output.

    `infer` takes float32 (batch, C, tile_h, tile_w) and returns (batch, C_out, tile_h*scale,
    tile_w*scale). The result has shape (H*scale, W*scale, C_out). `on_tiles(n)` is called
    after each batch with the number of real tiles it held. Overlaps are blended with linear
    ramps; with `trim` > 0 instead, each tile contributes only its centre, `trim` input pixels
    in from every edge that has a neighbour, and the centres are averaged (IPT's official chop).
    """
    _validate(image, tile, scale, batch, overlap)
    tile_h, tile_w = int(tile[0]), int(tile[1])
    scale, batch, overlap = int(scale), int(batch), int(overlap)
    height, width, channels = image.shape
    # Images smaller than the tile are padded (per tile, below) up to it; output is cropped back.
    pad_h, pad_w = max(height, tile_h), max(width, tile_w)
    ys = tile_starts(pad_h, tile_h, overlap)
    xs = tile_starts(pad_w, tile_w, overlap)
    positions = [(row, col) for row in range(len(ys)) for col in range(len(xs))]

    out_th, out_tw, ramp = tile_h * scale, tile_w * scale, overlap * scale
    # neighbours' centres cover a trimmed edge only while the overlap is at least two trims
    trim = min(int(trim), overlap // 2) * scale

    def window(length: int, before: bool, after: bool) -> np.ndarray:
        return _centre_window(length, trim, before, after) if trim else _ramp_window(length, ramp, before, after)

    row_windows = {(top, bottom): window(out_th, top, bottom) for top in (False, True) for bottom in (False, True)}
    col_windows = {(left, right): window(out_tw, left, right) for left in (False, True) for right in (False, True)}

    result: np.ndarray | None = None
    band_values: np.ndarray | None = None  # (C_out, out_th, pad_w*scale): sum of weight*value
    band_weights = np.zeros((out_th, pad_w * scale), dtype=np.float32)
    band_y = 0  # output row of the band's first row
    current_row = 0

    def flush(stop: int) -> None:
        """Normalise band rows above output row `stop` into `result` and shift the band up."""
        nonlocal band_y
        done = stop - band_y
        if done <= 0:
            return
        keep_to = min(stop, height * scale)
        if keep_to > band_y:
            rows = keep_to - band_y
            final = band_values[:, :rows, : width * scale] / band_weights[None, :rows, : width * scale]
            result[band_y:keep_to] = final.transpose(1, 2, 0)
        band_values[:, : out_th - done] = band_values[:, done:]
        band_values[:, out_th - done :] = 0.0
        band_weights[: out_th - done] = band_weights[done:]
        band_weights[out_th - done :] = 0.0
        band_y = stop

    inputs = np.empty((batch, channels, tile_h, tile_w), dtype=np.float32)
    for first in range(0, len(positions), batch):
        chunk = positions[first : first + batch]
        for slot, (row, col) in enumerate(chunk):
            y, x = ys[row], xs[col]
            piece = image[y : y + tile_h, x : x + tile_w]
            if piece.shape[0] < tile_h:
                piece = np.pad(piece, ((0, tile_h - height), (0, 0), (0, 0)), mode=_pad_mode(height, tile_h))
            if piece.shape[1] < tile_w:
                piece = np.pad(piece, ((0, 0), (0, tile_w - width), (0, 0)), mode=_pad_mode(width, tile_w))
            inputs[slot] = piece.transpose(2, 0, 1)
        # Fill the tail of the last batch with a real tile: zeros could upset normalisation layers.
        inputs[len(chunk) :] = inputs[len(chunk) - 1]

        outputs = np.asarray(infer(inputs), dtype=np.float32)
        if outputs.ndim != 4 or outputs.shape[0] != batch or outputs.shape[2:] != (out_th, out_tw):
            raise ValueError(f"infer returned shape {outputs.shape}, expected ({batch}, C_out, {out_th}, {out_tw}) for tile {tile_h}x{tile_w} at scale {scale}")
        if result is None:
            out_channels = outputs.shape[1]
            result = np.empty((height * scale, width * scale, out_channels), dtype=np.float32)
            band_values = np.zeros((out_channels, out_th, pad_w * scale), dtype=np.float32)
        elif outputs.shape[1] != result.shape[2]:
            raise ValueError(f"infer changed its output channels from {result.shape[2]} to {outputs.shape[1]}")

        for slot, (row, col) in enumerate(chunk):
            if row != current_row:
                flush(ys[row] * scale)
                current_row = row
            weight = np.outer(row_windows[(row > 0, row < len(ys) - 1)], col_windows[(col > 0, col < len(xs) - 1)])
            top = ys[row] * scale - band_y
            left = xs[col] * scale
            band_values[:, top : top + out_th, left : left + out_tw] += outputs[slot] * weight
            band_weights[top : top + out_th, left : left + out_tw] += weight
        if on_tiles is not None:
            on_tiles(len(chunk))

    flush(band_y + out_th)
    assert result is not None
    return result
