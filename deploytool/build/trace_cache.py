"""The trace cache: a model's traced graph at one input shape kept without its weights, so the next
export of the same definition at the same shape attaches its own weights instead of tracing.

A trace runs on fake tensors (`tracing.trace`): its graph depends on the definition's code, its
hyperparameters, the input shape and the exporter's versions, never on the values of the weights,
which the exporter writes as initializers named after the state dict's entries. An entry holds the
exporter's graph as `tracing.exported_graph` returns it (before any pass folds a weight into
another constant), its weights' data left out and their state-dict names recorded; a hit fills
them from the model being exported and runs the same passes a fresh trace runs, so the export is
byte for byte the one a fresh trace makes (tested for every family). The key (`trace_key`) covers
every module's class and plain attributes, every parameter's and buffer's name, shape and dtype,
the source of the definitions' package and of the tracing module, and the versions of torch,
onnxscript, onnx_ir, onnx and Python.

Entries live in $DEPLOYTOOL_TRACE_CACHE, else the XDG cache's deploytool/traces, else
~/.cache/deploytool/traces; the least recently used go beyond MAX_BYTES. `deploytool export`
uses it unless `--no-trace-cache`; an entry that cannot be read or does not fit the model is
traced again, and one that cannot be written leaves the export as it is: the export's progress
says which (`take_note`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
import torch

from deploytool.runtime.fileio import make_folder, user_cache_folder, write_bytes_atomic

if TYPE_CHECKING:
    import onnx_ir

FORMAT = 1
# entries are 3-30 MB (the graph's nodes and the constants that are not weights): about a
# hundred of them
MAX_BYTES = 1 << 30
# the entry's record of which initializers are weights: {initializer name: state-dict name}
WEIGHTS_KEY = "deploytool.trace_cache.weights"
# what a trace did with the cache, on its graph until the export reports it (`take_note`)
NOTE_KEY = "deploytool.trace_cache.note"
SUFFIX = ".onnx"


class StaleEntry(Exception):
    """A cache entry that cannot be read, or whose weights do not fit the model."""


def default_folder() -> Path:
    """$DEPLOYTOOL_TRACE_CACHE, else the XDG cache's deploytool/traces, else ~/.cache/deploytool/traces."""
    return user_cache_folder("DEPLOYTOOL_TRACE_CACHE", "traces")


def state_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by each of its state-dict names (non-persistent buffers and a
    tied weight's every name too): what the exporter writes as named initializers."""
    return dict(chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False)))


def trace_key(model: torch.nn.Module, shape: tuple[int, ...]) -> str | None:
    """The digest of everything a trace of `model` at `shape` depends on (the module's docstring);
    None where a module's class has no source file to read (defined in an interactive session)."""
    import onnx_ir
    import onnxscript

    code = _code_digest(model)
    if code is None:
        return None
    described = {
        "format": FORMAT,
        "shape": list(shape),
        "versions": [torch.__version__, onnxscript.__version__, onnx_ir.__version__, onnx.__version__, list(sys.version_info[:2])],
        "code": code,
        "modules": [[name, _qualified(type(module)), _plain_attributes(module)] for name, module in model.named_modules()],
        "tensors": [[name, list(tensor.shape), str(tensor.dtype)] for name, tensor in state_tensors(model).items()],
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:32]


def _qualified(thing) -> str:
    return f"{getattr(thing, '__module__', '?')}.{getattr(thing, '__qualname__', type(thing).__qualname__)}"


def _plain_attributes(module: torch.nn.Module) -> dict[str, object]:
    """A module's own attributes that can change its trace: numbers, strings, their tuples and
    lists, tensors that are not state (by content), callables (by name)."""
    return {name: _described(value) for name, value in sorted(vars(module).items()) if not name.startswith("_")}


def _described(value) -> object:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [_described(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _described(item) for key, item in value.items()}
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        return ["tensor", list(value.shape), str(value.dtype), hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()]
    if callable(value):
        return _qualified(value)
    return type(value).__qualname__


def _code_digest(model: torch.nn.Module) -> str | None:
    """The digest of the source of every top-level package (or module) that defines one of the
    model's modules, torch's aside (its version is in the key), and of the tracing module: a
    definition calls helpers of its package's other modules (model_defs/windows.py). None where a
    class has no source file."""
    sources = set()
    for module in model.modules():
        package = sys.modules.get(type(module).__module__.split(".")[0])
        if package is torch:
            continue
        file = getattr(package, "__file__", None)
        if file is None:
            return None
        sources.add(Path(file).parent if Path(file).name == "__init__.py" else Path(file))
    return _source_digest((*sorted(sources), Path(__file__).with_name("tracing.py")))


@functools.cache
def _source_digest(sources: tuple[Path, ...]) -> str:
    digest = hashlib.sha256()
    for source in sources:
        for path in sorted(source.rglob("*.py")) if source.is_dir() else [source]:
            digest.update(str(path.relative_to(source.parent)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


class TraceCache:
    """The cache's folder and its entries."""

    def __init__(self, folder: str | os.PathLike, max_bytes: int = MAX_BYTES):
        self.folder, self.max_bytes = Path(folder), max_bytes

    def path(self, key: str) -> Path:
        return self.folder / f"{key}{SUFFIX}"

    def holds(self, key: str | None) -> bool:
        return key is not None and self.path(key).is_file()

    def load(self, key: str, model: torch.nn.Module) -> onnx_ir.Model | None:
        """The entry of `key` as the exporter's graph with `model`'s weights; None where there is
        none. Raises StaleEntry where it cannot be read or does not fit the model."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):  # no entry, or no folder to hold one
            return None
        except OSError as exc:
            raise StaleEntry(f"cannot read {path}: {exc.strerror or exc}") from None
        graph = with_weights(data, state_tensors(model))
        with contextlib.suppress(OSError):  # a cache this user may read but not write is still used
            os.utime(path)  # recently used: pruned last
        return graph

    def store(self, key: str, graph: onnx.ModelProto, weight_names: dict[str, str]) -> None:
        """Keep `graph` under `key` without the data of `weight_names`' initializers (cleared in
        `graph` itself: `without_weights`), then prune. Raises DeployError or OSError where the
        folder cannot be written."""
        make_folder(self.folder, "trace cache folder")
        write_bytes_atomic(self.path(key), without_weights(graph, weight_names))
        self.prune()

    def entries(self) -> Iterator[Path]:
        return (path for path in self.folder.glob(f"*{SUFFIX}") if not path.name.startswith("."))

    def prune(self) -> None:
        """Remove the least recently used entries while all of them hold more than max_bytes."""
        stats = []
        for path in self.entries():
            try:
                stats.append((path.stat(), path))
            except FileNotFoundError:  # another export pruned it
                continue
        total = sum(stat.st_size for stat, _ in stats)
        for stat, path in sorted(stats, key=lambda item: item[0].st_mtime):
            if total <= self.max_bytes:
                break
            with contextlib.suppress(OSError):  # another user's entry in a shared folder
                path.unlink(missing_ok=True)
            total -= stat.st_size


def without_weights(graph: onnx.ModelProto, weight_names: dict[str, str]) -> bytes:
    """`graph` serialized with the data of the initializers `weight_names` maps to state-dict
    names left out, and that map recorded. Clears that data in `graph` itself (a throwaway
    copy: a second copy of the weights would cost their size again)."""
    for initializer in graph.graph.initializer:
        if initializer.name in weight_names:
            for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
                initializer.ClearField(field)
    graph.metadata_props.add(key=WEIGHTS_KEY, value=json.dumps(weight_names, sort_keys=True))
    return graph.SerializeToString()


def with_weights(data: bytes, state: dict[str, torch.Tensor]) -> onnx_ir.Model:
    """An entry's graph as an onnx-ir model, its weights `state`'s tensors themselves (numpy views,
    no copy: a trace in a forked child shares them with its parent, as a fresh trace does);
    StaleEntry where it does not parse or a weight is missing or has another shape or type."""
    import onnx_ir

    try:
        graph = onnx.ModelProto.FromString(data)
        weight_names = json.loads(_pop_props(graph, WEIGHTS_KEY)[0])
        exported = onnx_ir.serde.deserialize_model(graph)
    except Exception as exc:  # a truncated or foreign file: any parse error means the same
        raise StaleEntry(f"unreadable entry ({type(exc).__name__})") from None
    for name, source in weight_names.items():
        if source not in state:
            raise StaleEntry(f"the model has no {source}")
        array = state[source].detach().cpu().contiguous().numpy()
        value = exported.graph.initializers.get(name)
        if value is None:
            raise StaleEntry(f"its graph has no initializer {name}")
        if tuple(value.shape) != array.shape or value.dtype != onnx_ir.DataType.from_numpy(array.dtype):
            raise StaleEntry(f"{source} is {array.dtype}{list(array.shape)} in the model, not {value.dtype}{list(value.shape)}")
        value.const_value = onnx_ir.Tensor(array, name=name)
    return exported


def take_note(graph: onnx.ModelProto) -> str | None:
    """Remove and return what `tracing.trace` noted of the cache on its graph (None: no cache)."""
    notes = _pop_props(graph, NOTE_KEY)
    return notes[0] if notes else None


def _pop_props(graph: onnx.ModelProto, key: str) -> list[str]:
    """Remove the graph's metadata entries of `key`; their values."""
    values = [prop.value for prop in graph.metadata_props if prop.key == key]
    kept = [prop for prop in graph.metadata_props if prop.key != key]
    del graph.metadata_props[:]
    graph.metadata_props.extend(kept)
    return values
