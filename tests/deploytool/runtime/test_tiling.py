"""Tests for deploytool.runtime.tiling: tile layout, blending, batching and bounded memory."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest

from deploytool.runtime.tiling import BandAccumulator, BlendWeights, TiledImage, TileGrid, count_tiles, run_tiled, tile_starts


def _image(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((height, width, channels), dtype=np.float32)


def _identity(batch: np.ndarray) -> np.ndarray:
    return batch.copy()


def _nearest(scale: int) -> Callable[[np.ndarray], np.ndarray]:
    def infer(batch: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(batch, scale, axis=2), scale, axis=3)

    return infer


def _upsample_hwc(image: np.ndarray, scale: int) -> np.ndarray:
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


# --- tile_starts / count_tiles ---------------------------------------------------------------


@pytest.mark.parametrize("tile", [1, 2, 7, 16, 32])
@pytest.mark.parametrize("overlap", [0, 1, 3, 6, 15])
def test_tile_starts_properties(tile: int, overlap: int) -> None:
    if overlap >= tile:
        with pytest.raises(ValueError):
            tile_starts(10, tile, overlap)
        return
    stride = tile - overlap
    for size in range(1, 200):
        starts = tile_starts(size, tile, overlap)
        if size <= tile:
            assert starts == [0]
            continue
        assert starts[0] == 0
        assert starts[-1] + tile == size  # last tile ends exactly at the border
        assert all(0 <= s <= size - tile for s in starts)
        steps = np.diff(starts)
        assert np.all(steps > 0) and np.all(steps <= stride)  # strictly increasing, never a gap
        assert np.all(steps[:-1] == stride)  # only the last step may be shorter
        covered = np.zeros(size, dtype=bool)
        for s in starts:
            covered[s : s + tile] = True
        assert covered.all()
        assert len(starts) == -(-(size - tile) // stride) + 1  # no superfluous tiles


def test_tile_starts_examples() -> None:
    assert tile_starts(64, 32, 8) == [0, 24, 32]
    assert tile_starts(56, 32, 8) == [0, 24]
    assert tile_starts(5, 32, 8) == [0]
    assert tile_starts(96, 32, 0) == [0, 32, 64]


@pytest.mark.parametrize("size, tile, overlap", [(10, 0, 0), (10, 4, 4), (10, 4, -1), (0, 4, 1), (-3, 4, 1)])
def test_tile_starts_invalid(size: int, tile: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        tile_starts(size, tile, overlap)


def test_count_tiles() -> None:
    assert count_tiles(64, 56, (32, 32), 8) == 3 * 2
    assert count_tiles(5, 5, (32, 16), 4) == 1
    assert count_tiles(100, 1, (16, 8), 2) == len(tile_starts(100, 16, 2))


# --- run_tiled: exact reproduction for translation-equivariant models -------------------------

SIZES = [(1, 1), (1, 37), (37, 1), (5, 9), (16, 16), (16, 40), (17, 16), (33, 47), (64, 64), (70, 23)]


@pytest.mark.parametrize("height, width", SIZES)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("overlap", [0, 4])
def test_identity_reproduces_image(height: int, width: int, batch: int, overlap: int) -> None:
    image = _image(height, width)
    out = run_tiled(image, _identity, tile=(16, 16), scale=1, batch=batch, overlap=overlap)
    assert out.dtype == np.float32 and out.shape == image.shape
    np.testing.assert_allclose(out, image, rtol=0, atol=1e-6)


@pytest.mark.parametrize("height, width", SIZES)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("scale", [2, 4])
def test_nearest_upsampling_reproduces_whole_image(height: int, width: int, batch: int, scale: int) -> None:
    image = _image(height, width, channels=1, seed=height * 100 + width)
    out = run_tiled(image, _nearest(scale), tile=(12, 16), scale=scale, batch=batch, overlap=5)
    assert out.shape == (height * scale, width * scale, 1)
    np.testing.assert_allclose(out, _upsample_hwc(image, scale), rtol=0, atol=1e-6)


def test_changes_channel_count() -> None:
    image = _image(30, 21, channels=1)

    def gray_to_rgb(batch: np.ndarray) -> np.ndarray:
        return np.concatenate([batch, 2 * batch, 3 * batch], axis=1)

    out = run_tiled(image, gray_to_rgb, tile=(8, 8), scale=1, batch=2, overlap=2)
    assert out.shape == (30, 21, 3)
    np.testing.assert_allclose(out, np.concatenate([image, 2 * image, 3 * image], axis=2), atol=1e-6)


def test_small_images_are_padded_by_reflection_then_edge() -> None:
    seen: list[np.ndarray] = []

    def record(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.copy())
        return batch.copy()

    image = np.arange(5, dtype=np.float32).reshape(1, 5, 1)  # 1 row: edge; 5 columns: reflect
    run_tiled(image, record, tile=(4, 8), scale=1, batch=1, overlap=0)
    tile = seen[0][0, 0]
    np.testing.assert_array_equal(tile, np.tile([0, 1, 2, 3, 4, 3, 2, 1], (4, 1)))


# --- run_tiled: blending ---------------------------------------------------------------------


def _layout(height: int, width: int, tile: tuple[int, int], overlap: int) -> list[tuple[int, int]]:
    ys = tile_starts(max(height, tile[0]), tile[0], overlap)
    xs = tile_starts(max(width, tile[1]), tile[1], overlap)
    return [(y, x) for y in ys for x in xs]


@pytest.mark.parametrize("height, width, overlap, batch", [(50, 61, 6, 1), (40, 40, 10, 3), (33, 20, 0, 2), (32, 48, 0, 2)])
def test_non_equivariant_model_blends_within_tile_outputs(height: int, width: int, overlap: int, batch: int) -> None:
    """Each tile adds its own mean: overlaps differ, so weights must sum to 1 and stay convex."""
    tile, scale = (16, 16), 2
    image = _image(height, width, channels=2, seed=7)
    tile_outputs: list[np.ndarray] = []

    def add_tile_mean(batch_in: np.ndarray) -> np.ndarray:
        up = _nearest(scale)(batch_in)
        out = up + batch_in.mean(axis=(1, 2, 3), keepdims=True) * 10
        tile_outputs.extend(out)  # padding copies included; the layout below skips them
        return out

    result = run_tiled(image, add_tile_mean, tile=tile, scale=scale, batch=batch, overlap=overlap)
    positions = _layout(height, width, tile, overlap)

    shape = (height * scale, width * scale, 2)
    low, high = np.full(shape, np.inf, np.float32), np.full(shape, -np.inf, np.float32)
    coverage = np.zeros(shape[:2], dtype=int)
    single_value = np.zeros(shape, np.float32)
    for (y, x), out in zip(positions, tile_outputs):
        window = (slice(y * scale, (y + tile[0]) * scale), slice(x * scale, (x + tile[1]) * scale))
        hwc = out.transpose(1, 2, 0)
        low[window] = np.minimum(low[window], hwc)
        high[window] = np.maximum(high[window], hwc)
        coverage[window] += 1
        single_value[window] = hwc

    assert np.all(result >= low - 1e-5) and np.all(result <= high + 1e-5)
    only_one = coverage == 1
    assert only_one.any()
    np.testing.assert_array_equal(result[only_one], single_value[only_one])  # exact, no reweighting
    if overlap == 0 and height % tile[0] == 0 and width % tile[1] == 0:
        assert only_one.all()  # crop-and-paste when tiles merely abut


def test_blend_is_smooth_across_a_constant_jump() -> None:
    """Two tiles with constant outputs 0 and 1: the overlap ramps monotonically between them."""
    image = np.zeros((8, 24, 1), dtype=np.float32)
    image[:, 12:] = 1.0  # right tile sees a larger mean

    def tile_mean(batch_in: np.ndarray) -> np.ndarray:
        return np.broadcast_to(batch_in.mean(axis=(1, 2, 3), keepdims=True), batch_in.shape).copy()

    out = run_tiled(image, tile_mean, tile=(16, 16), scale=1, batch=1, overlap=8)[0, :, 0]
    left, right = 4 / 16, 12 / 16  # means of tiles at x=0 and x=8
    np.testing.assert_allclose(out[:8], left)
    np.testing.assert_allclose(out[16:], right)
    assert np.all(np.diff(out) >= 0) and left < out[8] and out[15] < right


# --- run_tiled: batching, progress, memory ---------------------------------------------------


@pytest.mark.parametrize("batch", [1, 2, 3, 5, 64])
def test_batches_are_full_and_progress_adds_up(batch: int) -> None:
    height, width, tile, overlap = 45, 38, (16, 12), 3
    image = _image(height, width)
    shapes: list[tuple[int, ...]] = []
    progress: list[int] = []
    last_batch: list[np.ndarray] = []

    def infer(batch_in: np.ndarray) -> np.ndarray:
        shapes.append(batch_in.shape)
        last_batch[:] = [batch_in.copy()]
        return batch_in.copy()

    out = run_tiled(image, infer, tile=tile, scale=1, batch=batch, overlap=overlap, on_tiles=progress.append)
    total = count_tiles(height, width, tile, overlap)
    assert sum(progress) == total
    assert all(0 < n <= batch for n in progress)
    assert len(shapes) == -(-total // batch)
    assert set(shapes) == {(batch, 3, 16, 12)}
    real = total - (len(shapes) - 1) * batch
    # Filler slots repeat a real tile rather than zeros.
    for slot in range(real, batch):
        np.testing.assert_array_equal(last_batch[0][slot], last_batch[0][real - 1])
    np.testing.assert_allclose(out, image, atol=1e-6)


def test_memory_is_bounded_by_a_band_not_the_image() -> None:
    height, width, channels = 4000, 64, 3
    image = _image(height, width, channels)
    result_bytes = height * width * channels * 4
    image_sized_accumulators = result_bytes * 2  # value and weight accumulators over the image

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        out = run_tiled(image, _identity, tile=(32, 32), scale=1, batch=4, overlap=8)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    extra = peak - base - result_bytes
    assert extra < image_sized_accumulators / 10, f"{extra} bytes beyond the result"
    np.testing.assert_allclose(out, image, atol=1e-6)


# --- run_tiled: argument validation ----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, image",
    [
        (dict(tile=(0, 16)), None),
        (dict(tile=(16, -1)), None),
        (dict(tile=16), None),
        (dict(batch=0), None),
        (dict(scale=0), None),
        (dict(overlap=16), None),
        (dict(overlap=-1), None),
        (dict(tile=(8, 16), overlap=8), None),
        ({}, np.zeros((8, 8, 3), dtype=np.float64)),
        ({}, np.zeros((8, 8), dtype=np.float32)),
        ({}, np.zeros((8, 8, 0), dtype=np.float32)),
        ({}, np.zeros((0, 8, 3), dtype=np.float32)),
    ],
)
def test_invalid_arguments(kwargs: dict, image: np.ndarray | None) -> None:
    args = dict(tile=(16, 16), scale=1, batch=1, overlap=4) | kwargs
    with pytest.raises(ValueError):
        run_tiled(_image(20, 20) if image is None else image, _identity, **args)


def test_wrong_infer_output_shape_is_reported() -> None:
    with pytest.raises(ValueError, match="infer returned shape"):
        run_tiled(_image(20, 20), _identity, tile=(16, 16), scale=2, batch=1, overlap=4)


def test_centre_blend_averages_the_centres_of_the_tiles_covering_a_pixel():
    """IPT's official chop: 48 px tiles at a stride of 12, 12 px dropped at inner edges, centres
    averaged. Each tile here outputs the mean row/column of its input, which names the tile."""
    rows, cols = np.meshgrid(np.arange(96, dtype=np.float32), np.arange(96, dtype=np.float32), indexing="ij")
    image = np.stack([rows, cols], axis=2)

    def tile_names(batch):
        return np.broadcast_to(batch.mean(axis=(2, 3), keepdims=True), batch.shape).copy()

    out = run_tiled(image, tile_names, tile=(48, 48), scale=1, batch=4, overlap=36, trim=12)
    # starts 0, 12, 24, 36, 48; pixel 60 lies in the centres [48, 72) of the tile at 36 and
    # [60, 96) of the last tile (its outer edge is the image border, kept)
    assert out[60, 60, 0] == pytest.approx(((36 + 23.5) + (48 + 23.5)) / 2)
    # pixel 5 lies only in the first tile's kept border
    assert out[5, 5, 1] == pytest.approx(23.5)
    assert np.isfinite(out).all()


def test_centre_blend_keeps_every_pixel_covered_when_the_overlap_is_small():
    image = np.random.default_rng(0).random((70, 53, 3), dtype=np.float32)
    out = run_tiled(image, lambda batch: batch.copy(), tile=(48, 48), scale=1, batch=2, overlap=8, trim=12)
    np.testing.assert_allclose(out, image, atol=1e-6)  # trim is capped at half the overlap


def test_a_stream_of_images_batched_across_them_equals_each_image_run_alone():
    from deploytool.runtime.tiling import TiledImage, run_tiled_stream

    def upscale(batch):  # a per-tile model: its output for a tile ignores the rest of the batch
        return np.repeat(np.repeat(batch * np.float32(0.9) + np.float32(0.05), 2, axis=2), 2, axis=3)

    rng = np.random.default_rng(4)
    pictures = [rng.random((h, w, 3), dtype=np.float32) for h, w in [(40, 50), (20, 70), (33, 33), (10, 10)]]
    calls = []

    def counted(batch):
        calls.append(batch.shape[0])
        return upscale(batch)

    tiled = [TiledImage(p, tile=(16, 16), scale=2, overlap=4) for p in pictures]
    streamed = list(run_tiled_stream(iter(tiled), counted, batch=5))
    assert streamed == tiled
    total = sum(t.count for t in tiled)
    assert len(calls) == -(-total // 5)  # every batch full but the last, across images
    for picture, done in zip(pictures, streamed):
        alone = run_tiled(picture, upscale, tile=(16, 16), scale=2, batch=5, overlap=4)
        assert np.array_equal(done.result(), alone)


# --- the pieces: grid, weights, band accumulator ------------------------------------------------


def test_grid_places_tiles_row_by_row_and_knows_their_neighbours() -> None:
    grid = TileGrid(40, 20, (16, 12), 4)
    assert (grid.ys, grid.xs, grid.count) == ([0, 12, 24], [0, 8], 6)
    assert [grid.place(i) for i in range(grid.count)] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert grid.edges(0) == (False, True, False, True)
    assert grid.edges(3) == (True, True, True, False)
    assert grid.edges(4) == (True, False, False, True)


def test_grid_cuts_chw_tiles_and_pads_an_image_smaller_than_the_tile() -> None:
    image = _image(5, 30, channels=2)
    grid = TileGrid(5, 30, (8, 16), 2)
    tile = grid.cut(image, 1)
    assert tile.shape == (2, 8, 16)
    np.testing.assert_array_equal(tile[:, :5], image[:, 14:30].transpose(2, 0, 1))
    np.testing.assert_array_equal(tile[:, 5:], image[[3, 2, 1], 14:30].transpose(2, 0, 1))  # reflected below the image
    tiny = TileGrid(2, 2, (4, 4), 1).cut(_image(2, 2, channels=1), 0)
    np.testing.assert_array_equal(tiny[0], np.pad(_image(2, 2, channels=1)[..., 0], ((0, 2), (0, 2)), mode="edge"))  # too small to mirror


def test_blend_weights_of_neighbouring_tiles_share_the_overlap() -> None:
    """Across an overlap of `ramp` pixels, the falling edge of one tile and the rising edge of the next sum to 1."""
    ramp = 8
    weights = BlendWeights(20, 24, ramp, 0)
    left, right = weights.tile((False, False, False, True)), weights.tile((False, False, True, False))
    assert left.dtype == np.float32 and left.shape == (20, 24)
    np.testing.assert_allclose(left[:, -ramp:] + right[:, :ramp], 1.0)
    assert np.all(left[:, : 24 - ramp] == 1) and np.all(right[:, ramp:] == 1)
    np.testing.assert_array_equal(weights.tile((True, True, True, True)), np.outer(*weights.windows((True, True, True, True))))


def test_centre_blend_weights_drop_the_trimmed_edges_that_have_a_neighbour() -> None:
    weights = BlendWeights(10, 12, 8, 3)
    inner = weights.tile((True, False, False, True))
    assert np.all(inner[:3] == 0) and np.all(inner[:, -3:] == 0)
    assert np.all(inner[3:, :-3] == 1)


def test_band_accumulator_writes_rows_once_they_are_flushed_and_moves_down() -> None:
    band = BandAccumulator(out_h=6, out_w=3, band_h=4, band_w=4, channels=1)
    ones = np.ones(4, dtype=np.float32)
    band.add(0, 0, np.full((1, 4, 4), 2.0, np.float32), ones, ones)
    band.add(0, 1, np.full((1, 4, 3), 5.0, np.float32), ones, ones[:3])
    band.flush(2)  # rows 0 and 1 are final: (2 + 5) / 2 where both tiles lie, 2 where only the first
    np.testing.assert_array_equal(band.output[:2, :, 0], [[2.0, 3.5, 3.5]] * 2)
    assert band.band_y == 2
    band.add(2, 0, np.full((1, 4, 4), 8.0, np.float32), np.float32([1, 1, 0.5, 0.5]), ones)
    band.flush(6)
    np.testing.assert_array_equal(band.output[2:4, :, 0], [[5.0, 5.0, 5.0]] * 2)  # (2 + 8) / 2 in column 0, (2 + 5 + 8) / 3 beyond
    np.testing.assert_array_equal(band.output[4:, :, 0], [[8.0, 8.0, 8.0]] * 2)  # 8 * 0.5 / 0.5


def test_tiled_image_takes_outputs_in_order_only() -> None:
    tiled = TiledImage(_image(20, 20), tile=(16, 16), scale=1, overlap=4)
    with pytest.raises(ValueError, match="added in order: expected tile 0, got 1"):
        tiled.add(1, np.zeros((3, 16, 16), np.float32))
    with pytest.raises(ValueError, match="0 of 4 tile outputs were added"):
        tiled.result()
