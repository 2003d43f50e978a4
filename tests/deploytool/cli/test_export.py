"""`deploytool export --precision`: which deploy graphs an export writes beside model.onnx."""

import pytest

from deploytool.build import export as exporter
from deploytool.build import registry
from deploytool.cli import cli
from deploytool.runtime.manifest import BF16_FILE, FP16_FILE, FP32_FILE, read_manifest
from tests.helpers import cli_runner, save_official, tiny_entry, tiny_state_dict


@pytest.fixture
def tiny_swinir(tmp_path, monkeypatch):
    entry = tiny_entry("swinir-s-x2")
    monkeypatch.setattr(registry, "get", lambda model_id: entry)
    return save_official(tiny_state_dict(entry), tmp_path / "tiny.pth")


@pytest.mark.parametrize(
    "options, files",
    [
        ((), {FP32_FILE, FP16_FILE}),  # the default: as before --precision
        (("--precision", "fp16,bf16"), {FP32_FILE, FP16_FILE, BF16_FILE}),
        (("--precision", "bf16"), {FP32_FILE, BF16_FILE}),
        (("--precision", "bf16", "--no-fp16"), {FP32_FILE, BF16_FILE}),
        (("--no-fp16",), {FP32_FILE}),
        (("--precision", "fp32"), {FP32_FILE}),
    ],
)
def test_precision_chooses_the_deploy_graphs(tmp_path, tiny_swinir, options, files):
    out = tmp_path / "e"
    result = cli_runner().invoke(cli, ["export", "swinir-s-x2", "--weights", str(tiny_swinir), "--out", str(out), "--batch", "1", *options])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    assert set(manifest.files) == files and {path.name for path in out.glob("*.onnx")} == files
    assert (manifest.fp16 is not None) == (FP16_FILE in files) and (manifest.bf16 is not None) == (BF16_FILE in files)
    assert ("building the BF16 deploy graph" in result.stderr) == (BF16_FILE in files)


def test_an_unknown_precision_is_refused_in_one_line(tmp_path, tiny_swinir):
    result = cli_runner().invoke(cli, ["export", "swinir-s-x2", "--weights", str(tiny_swinir), "--out", str(tmp_path / "e"), "--precision", "fp16,int8"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    message = "error: Invalid value for '--precision': int8: not one of fp16, bf16, fp32 (see '"
    assert result.stderr.startswith(message) and result.stderr.strip().endswith(" export --help')"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "e").exists()


def test_no_fp16_beside_a_precision_naming_fp16_is_refused_in_one_line(tmp_path, tiny_swinir):
    out = tmp_path / "e"
    result = cli_runner().invoke(cli, ["export", "swinir-s-x2", "--weights", str(tiny_swinir), "--out", str(out), "--precision", "fp16,bf16", "--no-fp16"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert result.stderr.startswith("error: --no-fp16 contradicts --precision naming fp16"), result.stderr
    assert not out.exists()


def test_a_second_export_reuses_the_traces_and_writes_the_same_graphs(tmp_path, tiny_swinir, monkeypatch):
    """...without importing the exporter's modules for traces that do not run."""
    monkeypatch.setenv("DEPLOYTOOL_TRACE_CACHE", str(tmp_path / "traces"))
    imports = []
    monkeypatch.setattr(exporter, "load_exporter", lambda: imports.append(True))

    def export(out: str, *options: str) -> str:
        result = cli_runner().invoke(cli, ["export", "swinir-s-x2", "--weights", str(tiny_swinir), "--out", str(tmp_path / out), *options])
        assert result.exit_code == 0, result.output
        return result.stderr

    kept = export("first").count(f"kept in the trace cache ({tmp_path / 'traces'}")
    assert kept >= 1 and len(list((tmp_path / "traces").glob("*.onnx"))) == kept and len(imports) == 1
    assert export("second").count("reused from the trace cache") == kept and len(imports) == 1
    assert "trace cache" not in export("third", "--no-trace-cache") and len(imports) == 2
    for name in (FP32_FILE, FP16_FILE):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes() == (tmp_path / "third" / name).read_bytes()
