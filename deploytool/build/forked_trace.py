"""A trace in a forked child process: the export traces its tile and the calibration tile each in
a child of its own, both at once.

A trace is single-threaded Python (torch.export's capture and decomposition, then the ONNX
translation) with a fixed cost per call, and the export makes two: on two cores or more the
second costs almost no wall time beside the first. And what a trace leaves behind in a process
(torch's caches, a fragmented heap) goes with the child, so the FP16/BF16
stage after it starts from the weights' memory. A child is a fork: it has the model as the
parent built it (no second load of the weights) and shares its pages until it writes them.
Where `fork` is not a start method (Windows), or other Python threads run in this process (a
server, a test runner's), the trace runs in this process when its graph is asked for.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import onnx
import torch

from deploytool.errors import ExportError

GRAPH_FILE = "graph.onnx"
ERROR_FILE = "error.txt"
PEAK_FILE = "peak_rss_kb.txt"


def forks() -> bool:
    """Whether a trace can run in a forked child here: where `fork` is a start method, and no other
    Python thread runs (a lock another thread holds at the fork stays held in the child forever:
    under a test runner's worker thread a child hung so)."""
    return "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1


Trace = Callable[[torch.nn.Module, tuple[int, ...]], onnx.ModelProto]


class ForkedTrace:
    """`trace(model, shape)`, started now and collected with `graph()`. Use it as a context
    manager: leaving it stops a child whose graph was not collected."""

    def __init__(self, trace: Trace, model: torch.nn.Module, shape: tuple[int, ...]):
        self.trace, self.shape = trace, tuple(shape)
        self.folder = Path(tempfile.mkdtemp(prefix="deploytool-trace-"))
        self.process: multiprocessing.process.BaseProcess | None = None
        self.peak_rss_mb = 0.0  # the child's peak resident memory, once its graph is collected
        self.in_child = forks()  # whether the trace runs in a child process (else here, at `graph()`)
        # a forked child has its own copy: this process may free the model once both have started
        self.model = None if self.in_child else model
        if self.in_child:
            self.process = multiprocessing.get_context("fork").Process(target=_trace_into, args=(trace, model, self.shape, self.folder), daemon=True)
            self.process.start()

    def graph(self) -> onnx.ModelProto:
        """The traced graph, waiting for the child; its failure as an ExportError in one line."""
        if not self.in_child:
            return self.trace(self.model, self.shape)
        self.process.join()
        code, self.process = self.process.exitcode, None
        error = self.folder / ERROR_FILE
        if error.exists():
            raise ExportError(f"the trace at {_shape_text(self.shape)} failed: {error.read_text()}")
        if code != 0:
            raise ExportError(f"the trace at {_shape_text(self.shape)} ended with exit code {code} (out of memory?)")
        self.peak_rss_mb = int((self.folder / PEAK_FILE).read_text()) / 2**10
        return onnx.load(str(self.folder / GRAPH_FILE))

    def __enter__(self) -> ForkedTrace:
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
        (folder / PEAK_FILE).write_text(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (2**10 if sys.platform == "darwin" else 1)))
    except BaseException as exc:  # everything the parent must hear of, in its one line
        (folder / ERROR_FILE).write_text(" ".join(f"{type(exc).__name__}: {exc}".split()))
        os._exit(1)
    # at once: no finalizers or stream flushes of the parent's copied state (another thread of the
    # parent, e.g. a test runner's, may have held their locks at the fork)
    os._exit(0)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))
