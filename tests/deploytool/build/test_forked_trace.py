"""Traces in forked children: a child's graph is the in-process trace's, its failure is one
line, and an abandoned child is stopped."""

import multiprocessing
import os
import threading

import pytest
import torch

from deploytool.build import export, forked_trace
from deploytool.build.networks import build_def
from deploytool.errors import ExportError
from tests.helpers import tiny_entry, tiny_state_dict

pytestmark = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="fork is not a start method on this platform: traces run in-process there"
)


@pytest.fixture(autouse=True)
def forking(monkeypatch):
    """The fork path, forced: under a test runner's worker, whose own threads make `forks()` say
    no, these tests still fork."""
    monkeypatch.setattr(forked_trace, "forks", lambda: True)


class FailsToTrace(torch.nn.Module):
    def forward(self, x):
        raise ValueError("no\ngraph here")


def tiny_model() -> torch.nn.Module:
    entry = tiny_entry("swinir-s-x2")
    return build_def(entry, tiny_state_dict(entry))


def test_the_childs_graph_is_the_trace_in_this_process():
    model, shape = tiny_model(), (1, 3, 24, 32)
    with forked_trace.ForkedTrace(export.traced_graph, model, shape) as aside:
        assert aside.in_child and aside.peak_rss_mb == 0
        beside = aside.graph()
    assert aside.peak_rss_mb > 100  # the child's own, reported with its graph
    assert beside.SerializeToString() == export.traced_graph(model, shape).SerializeToString()


def test_a_failed_trace_in_the_child_is_one_line_naming_the_shape():
    with forked_trace.ForkedTrace(export.traced_graph, FailsToTrace(), (1, 3, 8, 8)) as aside:
        with pytest.raises(ExportError, match=r"^the trace at 1x3x8x8 failed: .*ValueError: no graph here$"):
            aside.graph()


def test_a_child_killed_midway_is_an_error_not_a_graph():
    model = tiny_model()
    with forked_trace.ForkedTrace(export.traced_graph, model, (1, 3, 24, 32)) as aside:
        os.kill(aside.process.pid, 9)
        with pytest.raises(ExportError, match=r"^the trace at 1x3x24x32 ended with exit code -9"):
            aside.graph()


def test_leaving_before_the_graph_is_collected_stops_the_child_and_removes_its_folder():
    with forked_trace.ForkedTrace(export.traced_graph, tiny_model(), (1, 3, 24, 32)) as aside:
        process, folder = aside.process, aside.folder
        assert process.is_alive() and folder.is_dir()
    assert not process.is_alive() and process.exitcode is not None and not folder.exists()


def test_without_fork_the_trace_runs_when_its_graph_is_asked_for(monkeypatch):
    traced = []
    monkeypatch.setattr(forked_trace, "forks", lambda: False)
    with forked_trace.ForkedTrace(lambda model, shape: traced.append(shape) or "graph", torch.nn.Identity(), (1, 3, 8, 8)) as aside:
        assert not aside.in_child and traced == []
        assert aside.graph() == "graph" and traced == [(1, 3, 8, 8)]


def test_no_fork_while_another_python_thread_runs(monkeypatch):
    monkeypatch.undo()
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert not forked_trace.forks()
    finally:
        stop.set()
        other.join()
    assert forked_trace.forks() == (threading.active_count() == 1)
