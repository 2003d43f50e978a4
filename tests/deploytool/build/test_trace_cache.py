"""The trace cache: a cached trace with other weights is the fresh trace of them, for every family;
the key follows what a trace depends on; a stale or unwritable cache leaves the graph as a fresh
trace makes it and says so; the least recently used entries go first."""

import os
import sys
import types

import onnx
import pytest
import torch

from deploytool.build import tracing
from deploytool.build.networks import build_def
from deploytool.build.trace_cache import StaleEntry, TraceCache, take_note, trace_key, with_weights, without_weights
from tests.helpers import one_id_per_family, tiny_entry, tiny_state_dict


def tiny_model(model_id: str, seed: int = 0) -> torch.nn.Module:
    entry = tiny_entry(model_id)
    return build_def(entry, tiny_state_dict(entry, seed=seed))


def example(model_id: str) -> torch.Tensor:
    entry = tiny_entry(model_id)
    return torch.zeros(1, entry.channels, *entry.tiling.tile)


def traced(model: torch.nn.Module, x: torch.Tensor, cache: TraceCache | None = None) -> tuple[bytes, str | None]:
    graph = tracing.trace(model, x, cache)
    note = take_note(graph)
    return graph.SerializeToString(), note


@pytest.mark.parametrize("model_id", one_id_per_family())
def test_a_cached_trace_with_other_weights_is_the_fresh_trace_of_them(model_id, tmp_path):
    cache, x = TraceCache(tmp_path), example(model_id)
    first, stored = traced(tiny_model(model_id, seed=0), x, cache)
    assert stored.startswith("kept in the trace cache") and len(list(cache.entries())) == 1
    other = tiny_model(model_id, seed=1)
    reused, note = traced(other, x, cache)
    assert note.startswith("reused from the trace cache")
    fresh, no_note = traced(other, x)
    assert no_note is None
    assert reused == fresh != first  # the weights are the other model's, the rest the same


def test_the_key_follows_the_shape_the_hyperparameters_and_the_tensors_not_the_weights():
    model, shape = tiny_model("swinir-s-x2"), tuple(example("swinir-s-x2").shape)
    key = trace_key(model, shape)
    assert trace_key(tiny_model("swinir-s-x2", seed=1), shape) == key
    assert trace_key(model, (*shape[:2], shape[2] * 2, shape[3])) != key
    block = next(module for module in model.modules() if hasattr(module, "shift_size"))
    block.shift_size += 1
    assert trace_key(model, shape) != key
    block.shift_size -= 1
    model.conv_first.bias = torch.nn.Parameter(torch.zeros(model.conv_first.bias.shape[0] + 1))
    assert trace_key(model, shape) != key


def test_a_stale_entry_is_traced_again_and_replaced(tmp_path):
    model, x = tiny_model("esrt-x2"), example("esrt-x2")
    cache = TraceCache(tmp_path)
    path = cache.path(trace_key(model, tuple(x.shape)))
    path.write_bytes(b"not an onnx graph")
    graph, note = traced(model, x, cache)
    assert note.startswith(f"traced again: the trace cache's entry {path} is stale (unreadable entry")
    assert "; kept in the trace cache" in note
    assert graph == traced(model, x)[0]
    assert traced(model, x, cache)[1].startswith("reused")


def one_initializer_graph() -> onnx.ModelProto:
    return onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [], [onnx.numpy_helper.from_array(torch.zeros(2, 3).numpy(), "w")]))


def test_an_entry_whose_weights_do_not_fit_is_stale():
    entry = without_weights(one_initializer_graph(), {"w": "conv.weight"})
    assert not onnx.ModelProto.FromString(entry).graph.initializer[0].raw_data
    filled = with_weights(entry, {"conv.weight": torch.ones(2, 3)})
    assert filled.graph.initializers["w"].const_value.numpy().tolist() == [[1.0] * 3] * 2 and not filled.metadata_props
    with pytest.raises(StaleEntry, match=r"^the model has no conv.weight$"):
        with_weights(entry, {"other.weight": torch.ones(2, 3)})
    with pytest.raises(StaleEntry, match=r"^conv.weight is float32\[3, 2\] in the model, not FLOAT\[2, 3\]$"):
        with_weights(entry, {"conv.weight": torch.ones(3, 2)})
    naming_another = without_weights(one_initializer_graph(), {"w": "conv.weight", "v": "conv.bias"})
    with pytest.raises(StaleEntry, match=r"^its graph has no initializer v$"):
        with_weights(naming_another, {"conv.weight": torch.ones(2, 3), "conv.bias": torch.ones(2)})


def test_a_cache_that_cannot_be_written_leaves_the_trace_as_it_is(tmp_path):
    model, x = tiny_model("esrt-x2"), example("esrt-x2")
    (tmp_path / "file").write_text("")
    graph, note = traced(model, x, TraceCache(tmp_path / "file" / "cache"))
    assert note.startswith(f"not kept in the trace cache: cannot create the trace cache folder {tmp_path / 'file' / 'cache'}")
    assert graph == traced(model, x)[0]


def test_the_least_recently_used_entries_go_beyond_the_budget(tmp_path):
    cache = TraceCache(tmp_path, max_bytes=250)
    for age, name in enumerate(["newest", "middle", "oldest"]):
        cache.path(name).write_bytes(b"x" * 100)
        os.utime(cache.path(name), (1_000_000 - age, 1_000_000 - age))
    (tmp_path / ".unfinished.onnx").write_bytes(b"x" * 1000)  # another export's file being written
    cache.prune()
    assert sorted(path.stem for path in cache.entries()) == ["middle", "newest"]
    assert (tmp_path / ".unfinished.onnx").exists()


def test_a_model_whose_code_has_no_source_file_is_not_cached(tmp_path, monkeypatch):
    session = types.ModuleType("an_interactive_session")  # no __file__, as a class typed at a prompt
    monkeypatch.setitem(sys.modules, session.__name__, session)
    adhoc = type("AdHoc", (torch.nn.Conv2d,), {"__module__": session.__name__})
    cache = TraceCache(tmp_path)
    graph, note = traced(adhoc(3, 3, 3, padding=1).eval(), torch.zeros(1, 3, 8, 8), cache)
    assert note == "not kept in the trace cache: a class of the model has no source file to key its code by"
    assert trace_key(adhoc(3, 3, 3), (1, 3, 8, 8)) is None and not list(cache.entries())
    assert trace_key(torch.nn.Conv2d(3, 3, 3), (1, 3, 8, 8)) is not None  # torch's own code: its version keys it
