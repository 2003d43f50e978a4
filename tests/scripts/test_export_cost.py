"""scripts/export_cost.py: exports in child processes, their wall time, peak RSS and stages."""

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "export_cost.py"


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def test_reports_each_export_and_its_stages_and_with_warm_again_reusing_its_traces():
    result = run("--ids", "esrt-x2", "--tile", "16", "--warm", "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["model_id"] == "esrt-x2" and row["tile"] == [16, 16] and row["exit_status"] == 0
    assert row["seconds"] > 0 and 0.1 < row["peak_rss_gb"] < 24
    # the time is the unwatched run's, the peak the larger of both runs'
    assert 0.1 < row["tree_peak_gb"] <= row["peak_rss_gb"]
    assert list(row["stages"]) == ["load", "trace", "simplify", "check", "fp16", "save"]
    # the child's own peak is what the manifest saw at the end, not the parent's
    assert abs(row["stages"]["save"]["peak_rss_gb"] - row["peak_rss_gb"]) < 0.2
    # the first export traces (its trace cache starts empty); the second, with other weights, reuses it
    warm = row["warm"]
    assert row["traces_reused"] == 0 and warm["seed"] == 1 and warm["traces_reused"] == 1 and warm["exit_status"] == 0
    assert list(warm["stages"]) == list(row["stages"])


def test_an_unknown_id_is_one_line_before_any_export():
    result = run("--ids", "esrt-x2,nonsense-x9", "--tile", "16")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == ["error: unknown model id 'nonsense-x9'; `deploytool list` shows them all"]


def test_memory_is_summed_over_the_export_and_its_children():
    """The calibration trace runs in a child of the export: the peak counts both at once."""
    export_cost = load_script("export_cost")
    holds = "bytearray(200 << 20); import os, time; pid = os.fork(); block = bytearray(300 << 20); time.sleep(1.0); pid and os.waitpid(pid, 0)"
    child = subprocess.Popen([sys.executable, "-c", f"first = {holds}"])
    sampler = export_cost.TreeRss(child.pid)
    sampler.start()
    child.wait(timeout=60)
    sampler.stop()
    # 200 MB shared copy-on-write (counted once) and 300 MB in each process: one alone holds 500
    assert sampler.peak_bytes > 700 << 20


def test_the_time_comes_from_an_unsampled_run_and_the_memory_from_a_sampled_one_each_with_its_own_cache(tmp_path, monkeypatch):
    export_cost = load_script("export_cost")
    runs = []

    def fake_run(model_id, out, tile, trace_cache, seed=0, sampled=False):
        runs.append((out.name, trace_cache.name, seed, sampled))
        return {"model_id": model_id, "seconds": 30.0 if sampled else 20.0, "peak_rss_gb": 2.0 if sampled else 1.5, "exit_status": 0}

    monkeypatch.setattr(export_cost, "run_export", fake_run)
    row = export_cost.measure_export("hat-x4", tmp_path, None, seed=0, tree_memory=True)
    assert runs == [("hat-x4", "hat-x4-traces", 0, False), ("hat-x4-sampled", "hat-x4-traces-sampled", 0, True)]
    assert (row["seconds"], row["peak_rss_gb"], row["tree_peak_gb"]) == (20.0, 2.0, 2.0)
    runs.clear()
    row = export_cost.measure_export("hat-x4", tmp_path, None, seed=1, tree_memory=False)
    assert runs == [("hat-x4", "hat-x4-traces", 1, False)] and row["peak_rss_gb"] == 1.5 and "tree_peak_gb" not in row
