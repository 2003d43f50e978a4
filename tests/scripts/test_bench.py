"""scripts/bench.py: the exporter comparison alone, and a naive export torch cannot make."""

import json

import pytest

from deploytool.build import registry
from deploytool.build.networks import arch_for, build_original, load_state_dict, resolve_source
from tests.helpers import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench")


def test_exporters_only_times_both_graphs_in_one_run(bench, capsys):
    assert bench.main(["esrt-x2", "--tile", "32", "--runs", "1", "--exporters-only", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    latency = result["latency_s"]
    assert result["input_shape"] == [1, 3, 32, 32] and latency["torch.export"] > 0 and latency["torchscript"] > 0
    assert result["torch_export_vs_torchscript"] == pytest.approx(latency["torch.export"] / latency["torchscript"], rel=0.01)


def test_a_naive_export_torch_cannot_make_is_reported_not_raised(bench, monkeypatch, tmp_path):
    def fails(model, shape):
        raise TypeError("'NoneType' object is not subscriptable\nand the rest of the trace")

    monkeypatch.setattr(bench, "naive_export", fails)
    entry = registry.get("esrt-x2")
    state_dict = load_state_dict(entry, resolve_source(entry, weights=None, random_init=True))
    arch = arch_for(entry, state_dict)
    naive = bench._naive_export(entry, arch, state_dict, (1, 3, 32, 32), tmp_path / "naive.onnx", build_original(entry, arch, state_dict))
    assert naive.error == "TypeError: 'NoneType' object is not subscriptable" and not (tmp_path / "naive.onnx").exists()
