"""A second trace run beside the first: the calibration tile's graph traced in a forked child
process while the parent traces, simplifies and checks the export tile's.

A trace is single-threaded Python (torch.export's capture and decomposition, then the ONNX
translation) with a fixed cost per call, and the export makes two; on a machine with two cores
or more the second costs almost no wall time this way. The child is a fork, so it has the model
as the parent built it (no second load of the weights) and shares its memory until it writes.
Where `fork` is not a start method (Windows), the second trace runs in this process when its
result is asked for.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx
import torch

from deploytool.errors import ExportError

GRAPH_FILE = "graph.onnx"
ERROR_FILE = "error.txt"


def forks() -> bool:
    """Whether this platform can run the second trace in a forked child."""
    return "fork" in multiprocessing.get_all_start_methods()


Trace = Callable[[torch.nn.Module, tuple[int, ...]], onnx.ModelProto]


class TraceAside:
    """`trace(model, shape)`, started now and collected with `graph()`. Use it as a context
    manager: leaving it stops a child whose graph was not collected."""

    def __init__(self, trace: Trace, model: torch.nn.Module, shape: tuple[int, ...]):
        self.trace, self.model, self.shape = trace, model, tuple(shape)
        self.folder = Path(tempfile.mkdtemp(prefix="deploytool-trace-"))
        self.process: multiprocessing.process.BaseProcess | None = None
        if forks():
            self.process = multiprocessing.get_context("fork").Process(target=_trace_into, args=(trace, model, self.shape, self.folder), daemon=True)
            self.process.start()

    @property
    def in_child(self) -> bool:
        return self.process is not None

    def graph(self) -> onnx.ModelProto:
        """The traced graph, waiting for the child; its failure as an ExportError in one line."""
        if self.process is None:
            return self.trace(self.model, self.shape)
        self.process.join()
        code, self.process = self.process.exitcode, None
        error = self.folder / ERROR_FILE
        if error.exists():
            raise ExportError(f"the calibration trace at {_shape_text(self.shape)} failed: {error.read_text()}")
        if code != 0:
            raise ExportError(f"the calibration trace at {_shape_text(self.shape)} ended with exit code {code} (out of memory?)")
        return onnx.load(str(self.folder / GRAPH_FILE))

    def __enter__(self) -> TraceAside:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.join()
            self.process = None
        for path in self.folder.iterdir():
            path.unlink()
        self.folder.rmdir()


def _trace_into(trace: Trace, model: torch.nn.Module, shape: tuple[int, ...], folder: Path) -> None:
    """The child: trace, then write the graph (or the error) into `folder`. One intra-op thread:
    the trace runs on fake tensors, and an OpenMP pool the parent started does not survive a fork."""
    torch.set_num_threads(1)
    try:
        graph = trace(model, shape)
        written = folder / f".{GRAPH_FILE}"
        onnx.save(graph, str(written))
        os.replace(written, folder / GRAPH_FILE)
    except BaseException as exc:  # everything the parent must hear of, in its one line
        (folder / ERROR_FILE).write_text(" ".join(f"{type(exc).__name__}: {exc}".split()))
        os._exit(1)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))
