"""A stand-in for the `tensorrt` module, for testing `deploytool build` up to TensorRT's Python API
on machines without TensorRT or a GPU: it has the names the build uses, records the calls that
decide the engine's precision, and "builds" fixed bytes."""

from __future__ import annotations

import enum
import types


def fake_tensorrt(version: str, flags: dict[str, int]) -> types.ModuleType:
    """A `tensorrt` of `version` whose NetworkDefinitionCreationFlag has exactly `flags` (name: value)."""
    calls: dict[str, list] = {"create_network": [], "parse_from_file": [], "set_flag": []}
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = calls
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", flags)
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", {"FP16": 0, "OBEY_PRECISION_CONSTRAINTS": 9})
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    trt.Logger = Logger
    # classes of this module only: each fake records into its own `calls`
    trt.Builder = type("Builder", (Builder,), {"calls": calls})
    trt.OnnxParser = type("OnnxParser", (OnnxParser,), {"calls": calls})
    return trt


class Logger:
    WARNING = "warning"

    def __init__(self, severity):
        self.severity = severity


class TimingCache:
    def serialize(self) -> bytes:
        return b"timing cache"


class BuilderConfig:
    builder_optimization_level = 3

    def __init__(self, calls: dict[str, list]):
        self.calls = calls

    def set_memory_pool_limit(self, pool, size):
        pass

    def set_flag(self, flag):
        self.calls["set_flag"].append(flag)

    def create_timing_cache(self, data: bytes) -> TimingCache:
        return TimingCache()

    def set_timing_cache(self, cache, ignore_mismatch):
        pass

    def get_timing_cache(self) -> TimingCache:
        return TimingCache()


class Builder:
    calls: dict[str, list]

    def __init__(self, logger):
        pass

    def create_network(self, flags: int):
        self.calls["create_network"].append(flags)
        return types.SimpleNamespace(flags=flags)

    def create_builder_config(self) -> BuilderConfig:
        return BuilderConfig(self.calls)

    def build_serialized_network(self, network, config) -> bytes:
        return b"serialized engine"


class OnnxParser:
    calls: dict[str, list]
    num_errors = 0

    def __init__(self, network, logger):
        pass

    def parse_from_file(self, path: str) -> bool:
        self.calls["parse_from_file"].append(path)
        return True


def pretend_gpu(monkeypatch, trt: types.ModuleType) -> None:
    """`deploytool.runtime.backends.tensorrt.build` sees `trt` as TensorRT and torch sees an H100."""
    import torch

    from deploytool.runtime.backends.tensorrt import build as engines

    monkeypatch.setattr(engines, "require_tensorrt", lambda: trt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *device: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *device: "NVIDIA H100 (fake)")
