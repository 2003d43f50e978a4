"""Running apart from judging: saved results judged elsewhere give the verdicts of one verify."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from deploytool.build import precision
from deploytool.errors import DeployError
from deploytool.runtime.input_batches import PARITY_BATCHES, parity_batch
from deploytool.runtime.manifest import FileRecord
from deploytool.verify import parity
from deploytool.verify import results as saved_results
from deploytool.verify.results import array_sha256
from tests.helpers import export_tiny


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("parity") / "e"
    export_tiny("swinir-s-x2", out)
    return out


def deploytool(*args):
    """The CLI in a process of its own, as on another machine."""
    return subprocess.run([sys.executable, "-m", "deploytool.cli", *map(str, args)], capture_output=True, text=True, timeout=600)


def verdicts(report):
    return {(c["inputs"], c["candidate"]): (c["passed"], c["max_abs"], c["limits"]) for c in report["comparisons"]}


def test_compare_of_files_from_separate_processes_gives_the_verdicts_of_one_verify(exported, tmp_path):
    cpu, other = tmp_path / "cpu.npz", tmp_path / "other.npz"
    first = deploytool("verify", exported, "--save-outputs", cpu, "--backends", "original,torch,ort")
    assert first.returncode == 0, first.stderr
    second = deploytool("verify", exported, "--save-outputs", other, "--backends", "ort-fp16")
    assert second.returncode == 0 and "judge" in second.stderr, second.stderr
    compared = deploytool("compare", cpu, other, "--json")
    assert compared.returncode == 0, compared.stderr
    together = deploytool("verify", exported, "--json")
    assert together.returncode == 0, together.stderr
    expected, actual = json.loads(together.stdout), json.loads(compared.stdout)
    assert set(verdicts(actual)) == set(verdicts(expected)) and len(verdicts(actual)) == 6  # 2 inputs x 3 backends
    for key, (passed, max_abs, limits) in verdicts(expected).items():
        assert verdicts(actual)[key][0] == passed and verdicts(actual)[key][2] == limits
        assert verdicts(actual)[key][1] == pytest.approx(max_abs, rel=1e-6, abs=1e-12)
    assert [r["backends"] for r in actual["results"]] == [{"original": "cpu", "torch": "cpu", "ort": "cpu"}, {"ort-fp16": "cpu"}]


def test_saved_results_hold_inputs_outputs_and_metadata(exported, tmp_path):
    results = parity.run(exported, ["original", "ort"], synthetic_batches=1)
    results.save(tmp_path / "r.npz")
    loaded = saved_results.load(tmp_path / "r.npz")
    assert list(loaded.inputs) == list(results.inputs) and list(loaded.backends) == ["original", "ort"]
    label = next(iter(results.inputs))
    np.testing.assert_array_equal(loaded.backends["ort"].outputs[label], results.backends["ort"].outputs[label])
    assert loaded.fingerprint == results.fingerprint and loaded.host["onnxruntime"]
    assert not list(tmp_path.glob(".*part*"))
    with pytest.raises(DeployError, match=r"saved as \.npz"):
        results.save(tmp_path / "r.json")


def test_compare_refuses_results_of_another_export(exported, tmp_path):
    assert deploytool("verify", exported, "--save-outputs", tmp_path / "a.npz", "--backends", "original,ort").returncode == 0
    results = parity.run(exported, ["ort"], synthetic_batches=1)
    # another export: the same model id with another graph
    results.manifest = dataclasses.replace(results.manifest, files={**results.manifest.files, "model.onnx": FileRecord("0" * 64, 1)})
    results.save(tmp_path / "b.npz")
    refused = deploytool("compare", tmp_path / "a.npz", tmp_path / "b.npz")
    assert refused.returncode == 2 and refused.stderr.strip().startswith("error: ") and "different exports" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_compare_refuses_results_of_other_inputs(exported, tmp_path):
    a = parity.run(exported, ["original"], synthetic_batches=1)
    b = parity.run(exported, ["ort"], synthetic_batches=1)
    label = next(iter(b.inputs))
    b.inputs[label].array = b.inputs[label].array + 0.01
    b.inputs[label].sha256 = array_sha256(b.inputs[label].array)
    a.save(tmp_path / "a.npz")
    b.save(tmp_path / "b.npz")
    with pytest.raises(DeployError, match=r"differs between .* \(sha256 mismatch\)"):
        parity.compare([tmp_path / "a.npz", tmp_path / "b.npz"])
    with pytest.raises(DeployError, match="no results hold the original"):
        parity.compare([tmp_path / "b.npz"])


def test_a_corrupt_results_file_is_refused(tmp_path):
    for name, data in (("bad.npz", b"not a zip"), ("empty.npz", b"")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DeployError, match=r"is not a deploytool results file \(not an \.npz archive\)$"):
            saved_results.load(tmp_path / name)
    (tmp_path / "truncated.npz").write_bytes(b"PK\x03\x04" + b"\0" * 20)
    with pytest.raises(DeployError, match="not a readable results file"):
        saved_results.load(tmp_path / "truncated.npz")
    with pytest.raises(DeployError, match="no such results file"):
        saved_results.load(tmp_path / "missing.npz")


def test_an_edited_results_file_is_refused_in_one_line(exported, tmp_path):
    """Well-formed archives whose metadata or arrays were changed: never a traceback."""
    parity.run(exported, ["original", "ort"], synthetic_batches=1).save(tmp_path / "r.npz")
    with np.load(tmp_path / "r.npz") as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(str(arrays.pop("meta")))
    output = next(name for name in arrays if name.startswith("output_1_"))
    edits = {
        "is not a deploytool results file$": lambda a: a.update(meta=np.array(json.dumps([meta]))),
        r"not a well-formed results file \(KeyError: 'manifest'\)": lambda a: a.update(
            meta=np.array(json.dumps({k: meta[k] for k in ("format", "format_version")}))
        ),
        "not a well-formed results file .KeyError: 'output_1_0'.": lambda a: a.pop(output),
        "the outputs of .* differ in shape": lambda a: a.update({output: a[output][..., :10]}),
    }
    for message, change in edits.items():
        edited = {**arrays, "meta": np.array(json.dumps(meta))}
        change(edited)
        np.savez(tmp_path / "edited.npz", **edited)
        with pytest.raises(DeployError, match=message):
            saved_results.load(tmp_path / "edited.npz")


def test_a_backend_in_two_files_is_named_with_its_file(exported, tmp_path):
    for name in ("x", "y"):
        parity.run(exported, ["original", "ort"], synthetic_batches=1).save(tmp_path / f"{name}.npz")
    report = parity.compare([tmp_path / "x.npz", tmp_path / "y.npz"], report_dir=tmp_path / "report", html=True)
    assert set(report["backends"]) == {"ort (x.npz)", "ort (y.npz)", "original (y.npz)"}
    assert report["passed"] and {p.name for p in (tmp_path / "report").iterdir()} == {"parity.json", "parity.md", "parity.html"}


def test_verify_reports_the_shipped_fp16_graphs_own_figures(tmp_path, monkeypatch):
    """The manifest's FP16 figures are the calibration graph's (1x3x24x24 here) and say so;
    verify measures the shipped graph at the export's shape (1x3x32x32) and reports both, in
    parity.json, parity.md and on the console."""
    from deploytool.build import export
    from deploytool.runtime.manifest import FP16_FILE, FP32_FILE, PARITY_JSON, PARITY_MD

    monkeypatch.setattr(export, "CALIBRATION_SIDE", 16)  # three 8 px windows: 24 px
    out = tmp_path / "e"
    manifest = export_tiny("swinir-s-x2", out, tile=(32, 32))
    assert manifest.fp16.measured_at.shape == (1, 3, 24, 24)
    assert manifest.fp16.measured_at.inputs == "2 synthetic texture batch(es) + verify's 2 synthetic batches as 2 tiles drawn at 24x24"

    fp32, fp16 = (onnx.load(str(out / name)) for name in (FP32_FILE, FP16_FILE))
    batches = [parity_batch(manifest.input.shape, index) for index in range(PARITY_BATCHES)]
    expected = [float(np.abs(a - b).max()) for a, b in zip(precision.run_graph(fp32, batches), precision.run_graph(fp16, batches))]

    shown = deploytool("verify", out, "--backends", "original,ort,ort-fp16")
    assert shown.returncode == 0, shown.stderr
    report = json.loads((out / PARITY_JSON).read_text())
    figures = report["fp16_vs_fp32"]
    assert [(f["inputs"], f["fp32"], f["fp16"]) for f in figures] == [(f"synthetic#{i} 1x3x32x32", "ort", "ort-fp16") for i in range(2)]
    assert [f["max_abs"] for f in figures] == pytest.approx(expected, rel=1e-6)
    assert report["manifest_fp16"]["measured_at"] == {"shape": [1, 3, 24, 24], "inputs": manifest.fp16.measured_at.inputs}
    assert report["manifest_fp16"]["max_abs_vs_fp32"] == manifest.fp16.max_abs_vs_fp32
    for text in ((out / PARITY_MD).read_text(), shown.stdout):
        assert "The shipped FP16 graph against the FP32 graph, at the export's shape:" in text
        assert f"| synthetic#1 1x3x32x32 | ort | ort-fp16 | {expected[1]:.2e} |" in text
        assert "The manifest's FP16 figures, measured by the export on 1x3x24x24, 2 synthetic texture batch(es)" in text
