"""Running fixed-shape models on images of any size, tile by tile, with blended overlaps.

ONNX/TensorRT graphs are exported for one input shape [batch, C, tile_h, tile_w]. `run_tiled`
cuts the image into such tiles, runs them in batches, and blends the overlapping outputs with
linear ramps so no seams show. Memory for accumulators and in-flight tiles is bounded by the
tile size times the image width, never by the image area.
"""

from __future__ import annotations

from collections import deque
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


class TileGrid:
    """Where the tiles of one image lie: tile rows start at `ys`, columns at `xs`, and tiles are
    numbered row by row. Along an axis where the image is smaller than the tile, `cut` pads each
    tile up to it (reflect, or edge when the image is too small to mirror)."""

    def __init__(self, height: int, width: int, tile: tuple[int, int], overlap: int):
        self.height, self.width = height, width
        self.tile_h, self.tile_w = int(tile[0]), int(tile[1])
        self.ys = tile_starts(max(height, self.tile_h), self.tile_h, overlap)
        self.xs = tile_starts(max(width, self.tile_w), self.tile_w, overlap)

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)

    def place(self, index: int) -> tuple[int, int]:
        """(row, column) of tile `index` in the grid."""
        return divmod(index, len(self.xs))

    def edges(self, index: int) -> tuple[bool, bool, bool, bool]:
        """Whether tile `index` has a neighbour (top, bottom, left, right)."""
        row, col = self.place(index)
        return row > 0, row < len(self.ys) - 1, col > 0, col < len(self.xs) - 1

    def cut(self, image: np.ndarray, index: int) -> np.ndarray:
        """Tile `index` of `image` (HWC, the grid's size), CHW."""
        row, col = self.place(index)
        y, x = self.ys[row], self.xs[col]
        piece = image[y : y + self.tile_h, x : x + self.tile_w]
        if piece.shape[0] < self.tile_h:
            piece = np.pad(piece, ((0, self.tile_h - self.height), (0, 0), (0, 0)), mode=_pad_mode(self.height, self.tile_h))
        if piece.shape[1] < self.tile_w:
            piece = np.pad(piece, ((0, 0), (0, self.tile_w - self.width), (0, 0)), mode=_pad_mode(self.width, self.tile_w))
        return piece.transpose(2, 0, 1)


class BlendWeights:
    """The weight of each pixel of an output tile, by which of its edges have a neighbour: linear
    ramps over the `ramp` output pixels of overlap, or with `trim` > 0, 1 on the tile's centre and
    0 on the `trim` pixels at edges that have a neighbour. A tile's weight is the outer product
    of a row window and a column window."""

    def __init__(self, out_th: int, out_tw: int, ramp: int, trim: int):
        def window(length: int, before: bool, after: bool) -> np.ndarray:
            return _centre_window(length, trim, before, after) if trim else _ramp_window(length, ramp, before, after)

        sides = [(before, after) for before in (False, True) for after in (False, True)]
        self.row_windows = {side: window(out_th, *side) for side in sides}
        self.col_windows = {side: window(out_tw, *side) for side in sides}

    def windows(self, edges: tuple[bool, bool, bool, bool]) -> tuple[np.ndarray, np.ndarray]:
        """(row window, column window) of a tile with neighbours (top, bottom, left, right)."""
        top, bottom, left, right = edges
        return self.row_windows[(top, bottom)], self.col_windows[(left, right)]

    def tile(self, edges: tuple[bool, bool, bool, bool]) -> np.ndarray:
        """The (out_th, out_tw) weights of a tile with neighbours (top, bottom, left, right)."""
        return np.outer(*self.windows(edges))


class BandAccumulator:
    """Blends output tiles into an (out_h, out_w, channels) output through a band of `band_h` rows
    as wide as `band_w`: sums of weight * value and of weights. Tiles are added row of tiles by row
    of tiles; `flush(stop)` divides the rows above output row `stop` out into the output (what lies
    beyond out_h x out_w is dropped) and shifts the band down the image to start at `stop`."""

    def __init__(self, out_h: int, out_w: int, band_h: int, band_w: int, channels: int):
        self.output = np.empty((out_h, out_w, channels), dtype=np.float32)
        self.values = np.zeros((channels, band_h, band_w), dtype=np.float32)  # sums of weight * value
        self.weights = np.zeros((band_h, band_w), dtype=np.float32)  # sums of weights
        self.band_y = 0  # output row of the band's first row

    def add(self, top: int, left: int, values: np.ndarray, row_window: np.ndarray, col_window: np.ndarray) -> None:
        """Add a CHW output tile at output row `top` (in the band) and column `left`, weighted by
        row_window[i] * col_window[j]."""
        weight = np.outer(row_window, col_window)
        height, width = weight.shape
        top -= self.band_y
        self.values[:, top : top + height, left : left + width] += values * weight
        self.weights[top : top + height, left : left + width] += weight

    def flush(self, stop: int) -> None:
        done = stop - self.band_y
        if done <= 0:
            return
        band_h, out_h, out_w = self.weights.shape[0], self.output.shape[0], self.output.shape[1]
        keep_to = min(stop, out_h)
        if keep_to > self.band_y:
            rows = keep_to - self.band_y
            final = self.values[:, :rows, :out_w] / self.weights[None, :rows, :out_w]
            self.output[self.band_y : keep_to] = final.transpose(1, 2, 0)
        self.values[:, : band_h - done] = self.values[:, done:]
        self.values[:, band_h - done :] = 0.0
        self.weights[: band_h - done] = self.weights[done:]
        self.weights[band_h - done :] = 0.0
        self.band_y = stop


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
        self.height, self.width, _ = image.shape
        self.grid = TileGrid(self.height, self.width, tile, int(overlap))
        self.tile_h, self.tile_w = self.grid.tile_h, self.grid.tile_w
        self.scale, overlap = int(scale), int(overlap)
        self.out_th, self.out_tw = self.tile_h * self.scale, self.tile_w * self.scale
        # neighbours' centres cover a trimmed edge only while the overlap is at least two trims
        trim = min(int(trim), overlap // 2) * self.scale
        self.blend = BlendWeights(self.out_th, self.out_tw, overlap * self.scale, trim)
        self.band: BandAccumulator | None = None
        self.current_row = 0
        self.added = 0

    @property
    def count(self) -> int:
        return self.grid.count

    def tile(self, index: int) -> np.ndarray:
        return self.grid.cut(self.image, index)

    def _band_for(self, output: np.ndarray) -> BandAccumulator:
        out_channels = output.shape[0]
        if self.band is None:
            # Images smaller than the tile are padded (per tile) up to it; the band spans the padding.
            band_w = max(self.width, self.tile_w) * self.scale
            self.band = BandAccumulator(self.height * self.scale, self.width * self.scale, self.out_th, band_w, out_channels)
        elif out_channels != self.band.output.shape[2]:
            raise ValueError(f"infer changed its output channels from {self.band.output.shape[2]} to {out_channels}")
        return self.band

    def add(self, index: int, output: np.ndarray) -> None:
        if index != self.added:
            raise ValueError(f"tile outputs must be added in order: expected tile {self.added}, got {index}")
        band = self._band_for(output)
        row, col = self.grid.place(index)
        if row != self.current_row:
            band.flush(self.grid.ys[row] * self.scale)
            self.current_row = row
        band.add(self.grid.ys[row] * self.scale, self.grid.xs[col] * self.scale, output, *self.blend.windows(self.grid.edges(index)))
        self.added += 1

    def result(self) -> np.ndarray:
        if self.added != self.count:
            raise ValueError(f"{self.added} of {self.count} tile outputs were added")
        assert self.band is not None
        self.band.flush(self.band.band_y + self.out_th)
        return self.band.output


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
    for _ in run_tiled_stream([tiled], infer, batch=batch, on_batch=on_tiles):
        pass
    return tiled.result()


class _Batches:
    """Tiles of consecutive images gathered into batches for `infer`, each output blended back
    into its image; images come out, in order, once all their tiles are added."""

    def __init__(self, infer: Infer, size: int, on_batch: Callable[[int], None] | None):
        self.infer, self.size, self.on_batch = infer, size, on_batch
        self.inputs: np.ndarray | None = None
        self.slots: list[tuple[TiledImage, int]] = []  # (image, tile index) of each filled slot
        self.waiting: deque[TiledImage] = deque()  # images with tiles in flight, in order

    def put(self, tiled: TiledImage) -> Iterator[TiledImage]:
        shape = (self.size, tiled.image.shape[2], tiled.tile_h, tiled.tile_w)
        if self.inputs is None:
            self.inputs = np.empty(shape, dtype=np.float32)
        elif self.inputs.shape != shape:
            raise ValueError(f"every image of a stream needs tiles of one shape: {self.inputs.shape[1:]} then {shape[1:]}")
        self.waiting.append(tiled)
        for index in range(tiled.count):
            self.inputs[len(self.slots)] = tiled.tile(index)
            self.slots.append((tiled, index))
            if len(self.slots) == self.size:
                yield from self.run()

    def run(self) -> Iterator[TiledImage]:
        """Run the filled slots; yield the images this finished."""
        if not self.slots:
            return
        outputs = _run_batch(self.infer, self.inputs, len(self.slots), self.slots[0][0])
        for slot, (tiled, index) in enumerate(self.slots):
            tiled.add(index, outputs[slot])
        if self.on_batch is not None:
            self.on_batch(len(self.slots))
        self.slots.clear()
        while self.waiting and self.waiting[0].added == self.waiting[0].count:
            yield self.waiting.popleft()


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
    batches = _Batches(infer, int(batch), on_batch)
    for tiled in images:
        yield from batches.put(tiled)
    yield from batches.run()
