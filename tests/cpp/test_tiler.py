"""The tiler's pieces, C++ (cpp/src/tiler.cpp) against Python (deploytool/runtime/tiling.py), one
piece at a time over many tiling configurations: the tile grid (coordinates, neighbours and the
input tiles it cuts), the blend weights bit for bit, and the band accumulator's output for the
same output tiles. The PNG comparison of tests/cpp/test_runtime.py sees only their sum."""

from __future__ import annotations

import itertools
import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytest

from deploytool.runtime import tiling
from tests.standin import registry_tiling_configs

# under --dist loadgroup one pytest-xdist worker runs every test of the C++ build (no other waits
# on its lock in build_cpp); pytest 9.2 drops the groups (pytest-xdist issue 1386)
pytestmark = pytest.mark.xdist_group("cpp-build")

EDGES = list(itertools.product((False, True), repeat=4))  # (top, bottom, left, right), top bit first


@dataclass(frozen=True)
class Case:
    height: int
    width: int
    channels: int
    tile: tuple[int, int]
    overlap: int
    scale: int
    trim: int
    out_channels: int
    crop: tuple[int, int]

    @property
    def count(self) -> int:
        return tiling.count_tiles(max(self.height, self.tile[0]), max(self.width, self.tile[1]), self.tile, self.overlap)

    @property
    def blend(self) -> tuple[int, int]:
        """BlendWeights' (ramp, trim) in output pixels, as TiledImage derives them."""
        return self.overlap * self.scale, min(self.trim, self.overlap // 2) * self.scale

    @property
    def out_tile(self) -> tuple[int, int]:
        return self.tile[0] * self.scale, self.tile[1] * self.scale


def _random_case(rng: np.random.Generator) -> Case:
    tile = (int(rng.integers(1, 41)), int(rng.integers(1, 41)))
    scale = int(rng.integers(1, 5))
    overlap = int(rng.integers(0, min(tile)))
    height, width = (int(rng.integers(1, 3 * t + 2)) for t in tile)  # smaller than a tile, one tile, several
    trim = int(rng.integers(1, 13)) if rng.random() < 0.3 else 0
    crop = (int(rng.integers(1, height * scale + 1)), int(rng.integers(1, width * scale + 1)))
    if rng.random() < 0.5:
        crop = (height * scale, width * scale)
    channels, out_channels = int(rng.choice([1, 2, 3, 4, 6])), int(rng.integers(1, 5))
    return Case(height, width, channels, tile, overlap, scale, trim, out_channels, crop)


def _cases() -> list[Case]:
    """Random configurations (kept small) and every registry tiling on images around its tile."""
    rng = np.random.default_rng(20)
    cases: list[Case] = []
    while len(cases) < 150:
        case = _random_case(rng)
        if case.count * case.out_channels * case.out_tile[0] * case.out_tile[1] <= 400_000:
            cases.append(case)
    for config in registry_tiling_configs():
        tile_h, tile_w = config.tile
        for height, width in ((tile_h // 3 + 1, tile_w + 5), (tile_h + tile_h // 2, tile_w // 2 + 3)):
            full = (height * config.scale, width * config.scale)
            cases.append(Case(height, width, config.channels, config.tile, config.overlap, config.scale, config.blend_trim, config.out_channels, full))
    return cases


CASES = _cases()
COUNTS = [case.count for case in CASES]  # as the unchanged grid counts them (a test below changes Python's)


def _write(path: Path, values: np.ndarray) -> str:
    np.ascontiguousarray(values, dtype=np.float32).tofile(path)
    return str(path)


def _inputs(case: Case, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Case `index`'s image and one output tile per tile, random float32."""
    rng = np.random.default_rng(index)
    image = rng.random((case.height, case.width, case.channels), dtype=np.float32)
    outputs = (rng.random((COUNTS[index], case.out_channels, *case.out_tile), dtype=np.float32) * 2 - 0.5).astype(np.float32)
    return image, outputs


def run_cpp_pieces(standin: Path, cases: list[Case], folder: Path) -> list[dict]:
    """deploytool-standin --tiler-pieces on `cases`: per case its grid, tiles, weights and result."""
    specs = []
    for index, case in enumerate(cases):
        image, outputs = _inputs(case, index)
        ramp, blend_trim = case.blend
        spec = {**asdict(case), "ramp": ramp, "blend_trim": blend_trim}
        specs.append({**spec, "image": _write(folder / f"{index}.image", image), "outputs": _write(folder / f"{index}.outputs", outputs)})
    (folder / "cases.json").write_text(json.dumps(specs))
    done = subprocess.run([str(standin), "--tiler-pieces", str(folder / "cases.json"), str(folder)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    grids = json.loads(done.stdout)
    assert len(grids) == len(cases)
    pieces = []
    for index, (case, grid) in enumerate(zip(cases, grids)):
        channels, (out_th, out_tw) = case.channels, case.out_tile
        pieces.append(
            {
                **grid,
                "tiles": np.fromfile(folder / f"{index}.tiles", dtype=np.float32).reshape(-1, channels, *case.tile),
                "weights": np.fromfile(folder / f"{index}.weights", dtype=np.float32).reshape(len(EDGES), out_th, out_tw),
                "result": np.fromfile(folder / f"{index}.result", dtype=np.float32).reshape(*case.crop, case.out_channels),
            }
        )
    return pieces


def python_pieces(case: Case, index: int) -> dict:
    """The same pieces from deploytool/runtime/tiling.py."""
    image, outputs = _inputs(case, index)
    tiled = tiling.TiledImage(image, tile=case.tile, scale=case.scale, overlap=case.overlap, trim=case.trim)
    grid = tiled.grid
    weights = tiling.BlendWeights(*case.out_tile, *case.blend)
    for tile_index in range(tiled.count):
        tiled.add(tile_index, outputs[tile_index])
    return {
        "ys": grid.ys,
        "xs": grid.xs,
        "count": grid.count,
        "edges": [list(grid.edges(i)) for i in range(grid.count)],
        "tiles": np.stack([grid.cut(image, i) for i in range(grid.count)]),
        "weights": np.stack([weights.tile(edges) for edges in EDGES]),
        "result": tiled.result()[: case.crop[0], : case.crop[1]],
    }


def differing_pieces(cpp: dict, python: dict) -> list[str]:
    """The pieces in which the two languages differ (arrays compared bit for bit)."""
    differ = []
    for name in ("ys", "xs", "count", "edges"):
        if cpp[name] != python[name]:
            differ.append(name)
    for name in ("tiles", "weights", "result"):
        ours, theirs = cpp[name], python[name]
        if ours.shape != theirs.shape or not np.array_equal(ours.view(np.uint32), np.ascontiguousarray(theirs).view(np.uint32)):
            differ.append(name)
    return differ


def _compare(cpp_build: Path, cases: list[Case], folder: Path) -> dict[int, list[str]]:
    cpp = run_cpp_pieces(cpp_build / "deploytool-standin", cases, folder)
    return {index: differ for index, case in enumerate(cases) if (differ := differing_pieces(cpp[index], python_pieces(case, index)))}


def test_every_piece_of_the_tiler_is_the_same_in_both_languages(cpp_build: Path, tmp_path: Path) -> None:
    differ = _compare(cpp_build, CASES, tmp_path)
    assert not differ, {str(CASES[i]): pieces for i, pieces in list(differ.items())[:10]}
    assert {c.channels for c in CASES} >= {1, 2, 3, 4, 6} and {c.scale for c in CASES} >= {1, 2, 3, 4, 8}
    assert any(c.trim and c.overlap >= 2 for c in CASES) and any(c.height < c.tile[0] for c in CASES) and any(c.width < c.tile[1] for c in CASES)
    assert any(c.crop != (c.height * c.scale, c.width * c.scale) for c in CASES)


def _ramp_without_half_pixel(length: int, ramp: int, before: bool, after: bool) -> np.ndarray:
    window = np.ones(length, dtype=np.float32)
    rising = (np.arange(1, ramp + 1, dtype=np.float32) / (ramp + 1)).astype(np.float32)
    if ramp and before:
        window[:ramp] = np.minimum(window[:ramp], rising)
    if ramp and after:
        window[-ramp:] = np.minimum(window[-ramp:], rising[::-1])
    return window


def _divide_by_reciprocal(self: tiling.BandAccumulator, stop: int) -> None:
    with np.errstate(divide="ignore"):  # rows no tile reached yet weigh 0
        self.weights[...] = np.float32(1) / (np.float32(1) / self.weights)  # not always the same float
    FLUSH(self, stop)


FLUSH = tiling.BandAccumulator.flush


@pytest.mark.parametrize(
    "mutation, piece",
    [
        (lambda m: m.setattr(tiling, "_pad_mode", lambda size, tile: "edge"), "tiles"),
        (lambda m: m.setattr(tiling, "tile_starts", lambda size, tile, overlap: list(range(0, max(size - tile, 0) + 1, max(tile - overlap, 1)))), "xs"),
        (lambda m: m.setattr(tiling, "_ramp_window", _ramp_without_half_pixel), "weights"),
        (lambda m: m.setattr(tiling.BandAccumulator, "flush", _divide_by_reciprocal), "result"),
    ],
    ids=["padding", "grid", "weights", "accumulator"],
)
@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")  # a changed grid leaves pixels no tile covers
def test_the_comparison_sees_a_change_in_each_piece(mutation, piece: str, cpp_build: Path, tmp_path: Path, monkeypatch) -> None:
    """Each piece's comparison can fail: one Python piece changed (the C++ one not), its comparison fails."""
    mutation(monkeypatch)
    differ = _compare(cpp_build, CASES[:60], tmp_path)
    assert any(piece in pieces for pieces in differ.values()), differ
