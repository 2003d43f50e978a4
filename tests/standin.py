"""A deterministic stand-in model and stand-in exports, shared by the C++ runtime's tests and
scripts/cpp_bench.py.

The model is implemented once here and once in `cpp/tests/standin.cpp`, with the same float32
operations in the same order, so both tilers can be compared byte for byte without ONNX or a GPU.
A stand-in export is a folder with a placeholder `model.onnx` and a schema-valid manifest.json
whose graph shapes and tiling are a real model id's (or any tiling a test asks for).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from deploytool.build import registry
from deploytool.runtime.fileio import sha256_file
from deploytool.runtime.manifest import (
    FP32_FILE,
    PAD_REFLECT,
    SCHEMA_VERSION,
    FileRecord,
    GraphStats,
    Manifest,
    ModelInfo,
    Tiling,
    WeightsSource,
    blend_for,
    tiled_graph,
)

# 3x3 weights of the stand-in's neighbourhood sum, asymmetric so that a mirrored or shifted tile
# shows; they add up to 1 so the output stays in the image's range.
NEIGHBOURHOOD = np.array([[0.05, 0.10, 0.02], [0.12, 0.40, 0.08], [0.03, 0.15, 0.05]], dtype=np.float32)


class StandinModel:
    """NCHW float32 batch -> the mean of input channels c, c + C_out, ..., summed over its 3x3
    neighbourhood in the tile with NEIGHBOURHOOD's weights (zero outside the tile), so what the
    tiler pads reaches the output; then nearest-neighbour x `scale`, times 1.1 minus 0.05
    (clipping shows), plus an offset from the tile's index in the run (a misplaced tile shows)
    and a pattern from the pixel's place in the output tile (a wrong weight or an off-by-one crop
    shows)."""

    name = "stand-in"
    device = "cpu"

    def __init__(self, input_shape: tuple[int, int, int, int], output_shape: tuple[int, int, int, int]):
        self.input_shape = tuple(input_shape)
        self.output_shape = tuple(output_shape)
        self.scale = output_shape[2] // input_shape[2]
        self.calls = 0
        _, channels, height, width = output_shape
        y, x, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(channels), indexing="ij")
        pattern = 0.001 * ((y * 31 + x * 17 + c * 7) % 23).astype(np.float64)
        self.pattern = pattern.astype(np.float32).transpose(2, 0, 1)  # (C_out, H, W)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape != self.input_shape or batch.dtype != np.float32:
            raise ValueError(f"stand-in takes {self.input_shape} float32, got {batch.shape} {batch.dtype}")
        size, out_channels = batch.shape[0], self.output_shape[1]
        groups = batch.shape[1] // out_channels
        total = batch[:, :out_channels]
        for group in range(1, groups):
            total = total + batch[:, group * out_channels : (group + 1) * out_channels]
        base = total / np.float32(groups)
        height, width = base.shape[2:]
        padded = np.pad(base, ((0, 0), (0, 0), (1, 1), (1, 1)))
        # term by term in row-major kernel order, as cpp/tests/standin.cpp adds them
        neighbourhood = padded[:, :, 0:height, 0:width] * NEIGHBOURHOOD[0, 0]
        for dy in range(3):
            for dx in range(3):
                if dy or dx:
                    neighbourhood = neighbourhood + padded[:, :, dy : dy + height, dx : dx + width] * NEIGHBOURHOOD[dy, dx]
        up = neighbourhood.repeat(self.scale, axis=2).repeat(self.scale, axis=3)
        offsets = np.array([np.float32(0.003 * float((self.calls * size + b) % 17)) for b in range(size)], dtype=np.float32)
        self.calls += 1
        return ((up * np.float32(1.1) - np.float32(0.05)) + offsets[:, None, None, None]) + self.pattern[None]

    def close(self) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class TilingConfig:
    """What the tiler depends on in a manifest."""

    scale: int
    tile: tuple[int, int]
    tile_multiple: int
    batch: int
    overlap: int
    blend_trim: int
    views: tuple[str, ...]
    channels: int
    out_channels: int
    model_id: str  # one registry id with this configuration

    @property
    def label(self) -> str:
        blend = f"centre{self.blend_trim}" if self.blend_trim else "ramp"
        views = "+".join(self.views)
        return f"x{self.scale}-t{self.tile[0]}x{self.tile[1]}-m{self.tile_multiple}-b{self.batch}-o{self.overlap}-{blend}-{views}-{self.channels}to{self.out_channels}"


def registry_tiling_configs() -> list[TilingConfig]:
    """The distinct tiling configurations of every registered model id, as their exports record them."""
    configs: dict[tuple, TilingConfig] = {}
    for model_id, entry in sorted(registry.all_entries().items()):
        config = TilingConfig(
            entry.scale,
            tuple(entry.tiling.tile),
            entry.tiling.tile_multiple,
            entry.tiling.batch,
            entry.tiling.overlap,
            entry.tiling.blend.trim,
            tuple(entry.views),
            entry.channels,
            entry.out_channels,
            model_id,
        )
        configs.setdefault(dataclasses.replace(config, model_id=""), config)
    return list(configs.values())


def standin_manifest(config: TilingConfig, files: dict[str, FileRecord]) -> Manifest:
    entry = registry.get(config.model_id)
    tile, batch = config.tile, config.batch
    return Manifest(
        schema_version=SCHEMA_VERSION,
        model_id=config.model_id,
        model=ModelInfo(entry.family, entry.task, entry.description, {}, "stand-in", 0, 0),
        scale=config.scale,
        **tiled_graph(
            tiling=Tiling(tuple(tile), config.tile_multiple, False, batch, config.overlap, PAD_REFLECT, blend_for(config.overlap, config.blend_trim)),
            scale=config.scale,
            channels=config.channels,
            out_channels=config.out_channels,
            views=config.views,
        ),
        opset=17,
        exporter="stand-in (tests/standin.py)",
        versions={},
        source=WeightsSource(kind="random-init", seed=0),
        graph=GraphStats(0, 0, 0, 0, 0),
        fp16=None,
        files=files,
        tolerances={},
        export_seconds=0.0,
    )


def write_standin_export(config: TilingConfig, out_dir: Path) -> Manifest:
    """A stand-in export folder: a placeholder model.onnx (hashed like a real graph) and manifest.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    graph = out_dir / FP32_FILE
    graph.write_bytes(f"stand-in graph for {config.label}\n".encode())
    manifest = standin_manifest(config, {FP32_FILE: FileRecord(sha256=sha256_file(graph), bytes=graph.stat().st_size)})
    manifest.write(out_dir)
    return manifest


def standin_runner(manifest: Manifest) -> StandinModel:
    return StandinModel(manifest.input.shape, manifest.output.shape)
