"""Running fixed-shape models on images of any size, tile by tile, with blended overlaps.

ONNX/TensorRT graphs are exported for one input shape [batch, C, tile_h, tile_w]. `run_tiled`
cuts the image into such tiles, runs them in batches, and blends the overlapping outputs with
linear ramps so no seams show. Memory for accumulators and in-flight tiles is bounded by the
tile size times the image width, never by the image area.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

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


class TiledImage:
    """One image cut into fixed-size tiles, and the blend of their outputs back into one image.

    `tile(i)` gives the i-th input tile (C, tile_h, tile_w); `add(i, output)` blends its output
    (C_out, tile_h*scale, tile_w*scale) in, for i = 0, 1, ... in order; `result()` is the whole
    output once every tile was added. `run_tiled` drives one image; `run_tiled_stream` drives
    several, filling each batch with tiles of consecutive images.
    """

    def __init__(self, image: np.ndarray, *, tile: tuple[int, int], scale: int, overlap: int, trim: int = 0):
        _validate(image, tile, scale, 1, overlap)
        self.image = image
        self.tile_h, self.tile_w = int(tile[0]), int(tile[1])
        self.scale, overlap = int(scale), int(overlap)
        height, width, _ = image.shape
        self.height, self.width = height, width
        # Images smaller than the tile are padded (per tile, below) up to it; output is cropped back.
        self.pad_w = max(width, self.tile_w)
        self.ys = tile_starts(max(height, self.tile_h), self.tile_h, overlap)
        self.xs = tile_starts(self.pad_w, self.tile_w, overlap)
        self.positions = [(row, col) for row in range(len(self.ys)) for col in range(len(self.xs))]
        self.out_th, self.out_tw, ramp = self.tile_h * self.scale, self.tile_w * self.scale, overlap * self.scale
        # neighbours' centres cover a trimmed edge only while the overlap is at least two trims
        trim = min(int(trim), overlap // 2) * self.scale

        def window(length: int, before: bool, after: bool) -> np.ndarray:
            return _centre_window(length, trim, before, after) if trim else _ramp_window(length, ramp, before, after)

        self.row_windows = {(top, bottom): window(self.out_th, top, bottom) for top in (False, True) for bottom in (False, True)}
        self.col_windows = {(left, right): window(self.out_tw, left, right) for left in (False, True) for right in (False, True)}
        self.output: np.ndarray | None = None
        self.band_values: np.ndarray | None = None  # (C_out, out_th, pad_w*scale): sum of weight*value
        self.band_weights = np.zeros((self.out_th, self.pad_w * self.scale), dtype=np.float32)
        self.band_y = 0  # output row of the band's first row
        self.current_row = 0
        self.added = 0

    @property
    def count(self) -> int:
        return len(self.positions)

    def tile(self, index: int) -> np.ndarray:
        row, col = self.positions[index]
        y, x = self.ys[row], self.xs[col]
        height, width = self.height, self.width
        piece = self.image[y : y + self.tile_h, x : x + self.tile_w]
        if piece.shape[0] < self.tile_h:
            piece = np.pad(piece, ((0, self.tile_h - height), (0, 0), (0, 0)), mode=_pad_mode(height, self.tile_h))
        if piece.shape[1] < self.tile_w:
            piece = np.pad(piece, ((0, 0), (0, self.tile_w - width), (0, 0)), mode=_pad_mode(width, self.tile_w))
        return piece.transpose(2, 0, 1)

    def _flush(self, stop: int) -> None:
        """Normalise band rows above output row `stop` into the output and shift the band up."""
        done = stop - self.band_y
        if done <= 0:
            return
        scale, out_th, band_values, band_weights = self.scale, self.out_th, self.band_values, self.band_weights
        keep_to = min(stop, self.height * scale)
        if keep_to > self.band_y:
            rows = keep_to - self.band_y
            final = band_values[:, :rows, : self.width * scale] / band_weights[None, :rows, : self.width * scale]
            self.output[self.band_y : keep_to] = final.transpose(1, 2, 0)
        band_values[:, : out_th - done] = band_values[:, done:]
        band_values[:, out_th - done :] = 0.0
        band_weights[: out_th - done] = band_weights[done:]
        band_weights[out_th - done :] = 0.0
        self.band_y = stop

    def add(self, index: int, output: np.ndarray) -> None:
        if index != self.added:
            raise ValueError(f"tile outputs must be added in order: expected tile {self.added}, got {index}")
        if self.output is None:
            out_channels = output.shape[0]
            self.output = np.empty((self.height * self.scale, self.width * self.scale, out_channels), dtype=np.float32)
            self.band_values = np.zeros((out_channels, self.out_th, self.pad_w * self.scale), dtype=np.float32)
        elif output.shape[0] != self.output.shape[2]:
            raise ValueError(f"infer changed its output channels from {self.output.shape[2]} to {output.shape[0]}")
        row, col = self.positions[index]
        ys, xs, scale = self.ys, self.xs, self.scale
        if row != self.current_row:
            self._flush(ys[row] * scale)
            self.current_row = row
        weight = np.outer(self.row_windows[(row > 0, row < len(ys) - 1)], self.col_windows[(col > 0, col < len(xs) - 1)])
        top = ys[row] * scale - self.band_y
        left = xs[col] * scale
        self.band_values[:, top : top + self.out_th, left : left + self.out_tw] += output * weight
        self.band_weights[top : top + self.out_th, left : left + self.out_tw] += weight
        self.added += 1

    def result(self) -> np.ndarray:
        if self.added != self.count:
            raise ValueError(f"{self.added} of {self.count} tile outputs were added")
        self._flush(self.band_y + self.out_th)
        assert self.output is not None
        return self.output


def _run_batch(infer: Infer, inputs: np.ndarray, filled: int, tiled: TiledImage) -> np.ndarray:
    # Fill the tail of a short batch with a real tile: zeros could upset normalisation layers.
    inputs[filled:] = inputs[filled - 1]
    outputs = np.asarray(infer(inputs), dtype=np.float32)
    batch = inputs.shape[0]
    if outputs.ndim != 4 or outputs.shape[0] != batch or outputs.shape[2:] != (tiled.out_th, tiled.out_tw):
        raise ValueError(
            f"infer returned shape {outputs.shape}, expected ({batch}, C_out, {tiled.out_th}, {tiled.out_tw}) for tile {tiled.tile_h}x{tiled.tile_w} at scale {tiled.scale}"
        )
    return outputs


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
    tiled = TiledImage(image, tile=tile, scale=scale, overlap=overlap, trim=trim)
    batch = int(batch)
    inputs = np.empty((batch, image.shape[2], tiled.tile_h, tiled.tile_w), dtype=np.float32)
    for first in range(0, tiled.count, batch):
        chunk = range(first, min(first + batch, tiled.count))
        for slot, index in enumerate(chunk):
            inputs[slot] = tiled.tile(index)
        outputs = _run_batch(infer, inputs, len(chunk), tiled)
        for slot, index in enumerate(chunk):
            tiled.add(index, outputs[slot])
        if on_tiles is not None:
            on_tiles(len(chunk))
    return tiled.result()


def run_tiled_stream(
    images: Iterable[TiledImage],
    infer: Infer,
    *,
    batch: int,
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[TiledImage]:
    """Run `infer` over the tiles of consecutive images, each batch filled with the next tiles
    whatever image they belong to; yield each image, its tiles all added, as soon as it is done.

    Every tile is cut, run and blended exactly as `run_tiled` does it, so an image's result
    differs from `run_tiled`'s only if the runner's output for a tile depends on the other
    tiles in its batch. `on_batch(n)` is called after each batch with its number of real tiles.
    """
    if int(batch) != batch or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch}")
    batch = int(batch)
    inputs: np.ndarray | None = None
    pending: list[tuple[TiledImage, int]] = []  # (image, tile index) of each filled slot
    waiting: list[TiledImage] = []  # images with tiles in flight, in order

    def run_pending() -> Iterator[TiledImage]:
        outputs = _run_batch(infer, inputs, len(pending), pending[0][0])
        for slot, (tiled, index) in enumerate(pending):
            tiled.add(index, outputs[slot])
        if on_batch is not None:
            on_batch(len(pending))
        pending.clear()
        while waiting and waiting[0].added == waiting[0].count:
            yield waiting.pop(0)

    for tiled in images:
        shape = (batch, tiled.image.shape[2], tiled.tile_h, tiled.tile_w)
        if inputs is None:
            inputs = np.empty(shape, dtype=np.float32)
        elif inputs.shape != shape:
            raise ValueError(f"every image of a stream needs tiles of one shape: {inputs.shape[1:]} then {shape[1:]}")
        waiting.append(tiled)
        for index in range(tiled.count):
            inputs[len(pending)] = tiled.tile(index)
            pending.append((tiled, index))
            if len(pending) == batch:
                yield from run_pending()
    if pending:
        yield from run_pending()
