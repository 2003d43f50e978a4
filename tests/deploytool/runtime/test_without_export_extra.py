"""The runtime without the export extra: in a process where importing torch, onnx, onnxsim or
spandrel fails (tests/import_blocker), deploytool.runtime and deploytool.serving import and
`deploytool run --backend ort` restores an image made by an export from this (full) process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deploytool.runtime import images
from tests.helpers import export_tiny

TESTS = Path(__file__).resolve().parents[2]
BLOCKER = TESTS / "import_blocker"
REPO = TESTS.parent
EXTRA_LINE = "error: deploytool {} needs the export extra: pip install 'deploytool[export]'"


def run_blocked(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BLOCKER), str(REPO)])}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "tiny"
    export_tiny("swinir-s-x2", out, fp16=False)
    return out


def test_the_blocker_blocks_the_export_extra():
    for module in ("torch", "onnx", "onnxsim", "spandrel"):
        done = run_blocked("-c", f"import {module}")
        assert done.returncode != 0 and "blocked by tests/import_blocker" in done.stderr, (module, done.stderr)


def test_runtime_and_serving_import_every_module_without_the_export_extra():
    code = (
        "import importlib, pkgutil, sys\n"
        "import deploytool.runtime, deploytool.serving\n"
        "for package in (deploytool.runtime, deploytool.serving):\n"
        "    for info in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "print(len([m for m in sys.modules if m.startswith('deploytool.')]))\n"
    )
    done = run_blocked("-c", code)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 20  # every module of both packages was imported


def test_run_with_onnx_runtime_works_without_the_export_extra(exported, tmp_path):
    source = tmp_path / "in.png"
    images.write_image(source, np.random.default_rng(0).random((21, 37, 3), dtype=np.float32), bit_depth=8)
    done = run_blocked("-m", "deploytool", "run", str(exported), str(source), "-o", str(tmp_path / "blocked.png"), "--backend", "ort")
    assert done.returncode == 0, done.stderr
    full = subprocess.run(
        [sys.executable, "-m", "deploytool", "run", str(exported), str(source), "-o", str(tmp_path / "full.png"), "--backend", "ort"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert full.returncode == 0, full.stderr
    assert (tmp_path / "blocked.png").read_bytes() == (tmp_path / "full.png").read_bytes()


def test_a_command_that_needs_the_export_extra_says_so_in_one_line(exported, tmp_path):
    done = run_blocked("-m", "deploytool", "export", "swinir-s-x2", "--random-init", "--out", str(tmp_path / "never"))
    assert (done.returncode, done.stderr.strip()) == (2, EXTRA_LINE.format("export"))
    assert not (tmp_path / "never").exists()
    source = tmp_path / "in.png"
    images.write_image(source, np.zeros((8, 8, 3), np.float32), bit_depth=8)
    done = run_blocked("-m", "deploytool", "run", str(exported), str(source), "-o", str(tmp_path / "out.png"), "--backend", "torch")
    assert (done.returncode, done.stderr.strip()) == (2, EXTRA_LINE.format("run"))
    done = run_blocked("-m", "deploytool", "verify", str(exported))
    assert (done.returncode, done.stderr.strip()) == (2, EXTRA_LINE.format("verify"))
