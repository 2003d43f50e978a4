"""scripts/openvino_bench.py: its rows measured on a tiny export, and the FP32-only report on a CPU without BF16."""

import json

import numpy as np
import pytest

from deploytool.runtime.manifest import BF16_FILE, read_manifest
from tests.helpers import load_script, needs_openvino


@pytest.fixture(scope="module")
def bench():
    return load_script("openvino_bench")


@needs_openvino
def test_every_row_is_timed_against_ort_fp32_and_compared_with_its_output(bench, tiny_exports, tmp_path, monkeypatch):
    tiny_exports.copy("esrt-x2", tmp_path / "e")  # OpenVINO caches its compiled models in the folder
    with_bf16 = "CPU" in bench.bf16_devices()
    rows = list(bench.row_openers(tmp_path / "e", threads=1, bf16=with_bf16))
    expected = [bench.ORT_FP32, bench.OPENVINO_FP32] + ([bench.OPENVINO_BF16, bench.WHOLE_BF16] if with_bf16 else [])
    assert rows == expected
    children = []
    run = bench.subprocess.run

    def recorded(command, **options):
        children.append(command[command.index("--time-row") + 1])
        return run(command, **options)

    monkeypatch.setattr(bench.subprocess, "run", recorded)
    seconds, outputs = bench.time_rows(tmp_path / "e", rows, threads=1, runs=3)
    assert children == expected + expected[::-1]  # each row in a process of its own, forward then backward
    assert set(seconds) == set(outputs) == set(expected) and all(s > 0 for s in seconds.values())
    shape = read_manifest(tmp_path / "e").input.shape
    assert all(output.shape[:2] == tuple(shape[:2]) for output in outputs.values())
    # what each child does: a warm-up call whose output it saves, then the timed calls
    one = bench.time_row(bench.OPENVINO_FP32, tmp_path / "e", threads=1, calls=2, output=tmp_path / "row.npy")
    assert len(one["seconds"]) == 2
    np.testing.assert_allclose(np.load(tmp_path / "row.npy"), outputs[bench.OPENVINO_FP32], atol=1e-6)


def test_a_cpu_without_bf16_is_said_and_only_fp32_rows_are_shown(bench):
    row = {"s": 1.0, "tiles_per_s": 1.0, "speed_vs_ort_fp32": 1.0, "max_abs_vs_fp32": 0.0, "psnr_vs_fp32": float("inf")}
    report = {"openvino": "2026.4.1", "threads": 2, "runs": 1, "cpu": "x86_64", "load_average": 1.0, "bf16_devices": [], "set5": None}
    report["results"] = [
        {"model_id": "esrt-x2", "input_shape": [1, 3, 64, 64], "bf16_flop_share": None, "rows": {bench.ORT_FP32: row, bench.OPENVINO_FP32: row}}
    ]
    text = bench.markdown(report)
    assert "This CPU has no BF16 (OpenVINO's OPTIMIZATION_CAPABILITIES lacks BF16): FP32 rows only." in text
    assert "| esrt-x2 | 1x3x64x64 |  | ort-fp32 |" in text and bench.OPENVINO_BF16 not in text.split("\n", 3)[3]


def test_kept_exports_are_timed_again_and_another_export_is_refused(bench, tiny_exports, tmp_path):
    assert not bench.exported_before(tmp_path / "esrt-x2", "esrt-x2", None, bf16=False)
    out = tiny_exports.folder("esrt-x2")
    weights = out.parent / "esrt-x2.pth"  # the tiny export's checkpoint
    side = read_manifest(out).input.shape[2]
    assert bench.exported_before(out, "esrt-x2", side, bf16=True, weights=weights)
    with pytest.raises(bench.DeployError, match="holds another export of esrt-x2"):
        bench.exported_before(out, "esrt-x2", side * 2, bf16=True, weights=weights)
    with pytest.raises(bench.DeployError, match="esrt-x2.pth"):  # made from other weights than asked (random init)
        bench.exported_before(out, "esrt-x2", side, bf16=True)
    without_bf16 = tiny_exports.copy("esrt-x2", tmp_path / "without-bf16")
    manifest = json.loads((without_bf16 / "manifest.json").read_text())
    manifest["bf16"] = None
    del manifest["files"][BF16_FILE]
    (without_bf16 / BF16_FILE).unlink()
    (without_bf16 / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(bench.DeployError, match="BF16 plan: False"):
        bench.exported_before(without_bf16, "esrt-x2", side, bf16=True, weights=weights)


def _copying_exporter(tiny_exports, asked):
    """export_with_plan as the script calls it, copying the tiny esrt-x2 export (both plans) instead of exporting."""

    def exporter(model_id, out, tile, bf16, weights=None):
        asked.append((model_id, bf16))
        tiny_exports.copy("esrt-x2", out)

    return exporter


@needs_openvino
def test_without_bf16_rows_the_plan_is_made_and_its_flop_share_reported(bench, tiny_exports, tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(bench, "export_with_plan", _copying_exporter(tiny_exports, asked))
    result = bench.bench_id("esrt-x2", None, runs=1, threads=1, bf16=False, scratch=tmp_path)
    assert asked == [("esrt-x2", True)] and list(result["rows"]) == [bench.ORT_FP32, bench.OPENVINO_FP32]
    assert result["bf16_flop_share"] == read_manifest(tmp_path / "esrt-x2").bf16.bf16_flop_share > 0


@needs_openvino
def test_the_set5_rows_score_every_row_against_hr_and_against_ort_fp32(bench, tiny_exports, tmp_path, monkeypatch):
    from tests.helpers import write_test_png

    asked = []
    monkeypatch.setattr(bench, "export_with_plan", _copying_exporter(tiny_exports, asked))
    dataset = tmp_path / "set"
    for name in ("a", "b"):
        write_test_png(dataset / "HR" / f"{name}.png", 3, size=(40, 48))
        write_test_png(dataset / "LR_bicubic" / "X2" / f"{name}.png", 3, size=(20, 24))
    rows = bench.set5_report(tmp_path / "weights.pth", dataset, threads=1, bf16=False, scratch=tmp_path)
    assert asked == [(bench.ESRT_X2, True)] and list(rows) == [bench.ORT_FP32, bench.OPENVINO_FP32]
    assert rows[bench.ORT_FP32]["min_psnr_vs_fp32"] == float("inf") and rows[bench.OPENVINO_FP32]["min_psnr_vs_fp32"] > 40
    assert all(0 < row["psnr_vs_hr"] < 100 for row in rows.values())
