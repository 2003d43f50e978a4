"""How `deploytool serve` starts the wheel's tritonserver, and how it fails: one line each."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from deploytool.serving import server
from tests.triton_server import REPO_ROOT as REPO
from tests.triton_server import assert_one_line_error, invoke, serve_environment_or_skip


def test_no_server_environment_is_one_line(tmp_path):
    assert_one_line_error(invoke("serve", tmp_path, "--env", tmp_path / "nowhere"), "no server environment at", "scripts/setup.sh")


def test_the_servers_process_environment_finds_libpython_first():
    env = serve_environment_or_skip()
    variables = server.server_environment(env, Path("/nowhere"))
    assert variables["LD_LIBRARY_PATH"].split(":")[:2] == [str(env.libpython_dir), str(env.wheel_libs)]
    assert (env.libpython_dir / f"libpython{env.python_version}.so").exists() or any(env.libpython_dir.glob(f"libpython{env.python_version}*.so*"))


def _stub_package(folder: Path, name: str, version: str) -> None:
    (folder / name).mkdir(parents=True)
    (folder / name / "__init__.py").write_text(f"__version__ = {version!r}\n")


# Started by the launcher in place of tritonserver: it imports what a Python model imports first,
# with the PYTHONPATH the launcher set and no site-packages of its own (as the embedded stub).
_FAKE_TRITONSERVER = """#!/bin/sh
exec "$DEPLOYTOOL_TEST_PYTHON" -S -c 'import numpy, deploytool, os; print("numpy", numpy.__version__); print("deploytool", os.path.realpath(deploytool.__file__))'
"""

_LAUNCH = """
import sys
from pathlib import Path
from deploytool.serving import server
root = Path(sys.argv[1])
fake = server.ServerEnvironment(root / "serve", "3.11", root / "serve-site", root / "serve" / "lib")
server.find_environment = lambda env=None: fake
triton = server.TritonServer(root / "models", log=root / "server.log")
triton.start()
triton.process.wait(60)
triton.stop()
print("deploytool from", Path(server.deploytool.__file__).parent)
"""


def test_after_a_wheel_install_the_server_imports_the_serve_environment_s_numpy(tmp_path):
    """deploytool installed from its wheel (not -e) beside numpy 2 in one site-packages: the
    server's PYTHONPATH must bring deploytool and nothing else from there."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for package in ("deploytool", "model_defs", "export_configs"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", source], check=True, timeout=300, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("deploytool-*.whl")
    site = tmp_path / "site-packages"  # the main environment's: deploytool and numpy 2
    subprocess.run([*pip, "install", "--no-deps", "--no-compile", "--target", site, wheel], check=True, timeout=300, capture_output=True)
    assert (site / "deploytool" / "serving" / "server.py").is_file() and not (site / "tests").exists()
    _stub_package(site, "numpy", "2.99.0")
    _stub_package(tmp_path / "serve-site", "numpy", "1.26.99")
    fake_binary = tmp_path / "serve-site" / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    fake_binary.parent.mkdir(parents=True)
    fake_binary.write_text(_FAKE_TRITONSERVER)
    fake_binary.chmod(0o755)
    (tmp_path / "serve-site" / "pytriton" / "tritonserver" / "backends" / "python").mkdir(parents=True)
    stub = tmp_path / "serve-site" / "pytriton" / "tritonserver" / "python_backend_stubs" / "3.11" / "triton_python_backend_stub"
    stub.parent.mkdir(parents=True)
    stub.write_text("")
    (tmp_path / "models").mkdir()

    environment = {"PATH": os.environ["PATH"], "PYTHONPATH": str(site), "DEPLOYTOOL_TEST_PYTHON": sys.executable}
    done = subprocess.run([sys.executable, "-S", "-c", _LAUNCH, tmp_path], env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"deploytool from {site / 'deploytool'}" in done.stdout  # the launcher itself ran from the wheel install
    imported = (tmp_path / "server.log").read_text()
    assert "numpy 1.26.99" in imported, imported
    assert f"deploytool {site / 'deploytool' / '__init__.py'}" in imported, imported


def test_a_failed_start_keeps_its_log_under_a_new_name_and_follows_no_planted_link(tmp_path):
    serve_environment_or_skip()
    model = tmp_path / "models" / "broken" / "1"
    model.mkdir(parents=True)
    (model / "model.py").write_text("raise ImportError('the broken model cannot load')\n")
    (model.parent / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\nmax_batch_size: 0\n')
    port = server.free_port()
    victim = tmp_path / "victim.txt"
    victim.write_text("the victim's file")
    # where the log used to be copied to: a name anyone could compute, and plant a link at
    planted = Path(tempfile.gettempdir()) / f"deploytool-tritonserver-{os.getpid()}-{port}.log"
    planted.unlink(missing_ok=True)
    planted.symlink_to(victim)
    try:
        line = assert_one_line_error(invoke("serve", tmp_path / "models", "--http-port", port, "--timeout", 60), "tritonserver exited")
    finally:
        planted.unlink(missing_ok=True)
    assert victim.read_text() == "the victim's file"
    kept = Path(line.rsplit("(log: ", 1)[1].rstrip(")"))
    try:
        assert kept != planted and not kept.is_symlink() and kept.parent == Path(tempfile.gettempdir())
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and "the broken model cannot load" in kept.read_text()
    finally:
        kept.unlink(missing_ok=True)


def test_a_model_that_fails_to_load_stops_serve_with_triton_s_reason(tmp_path):
    serve_environment_or_skip()
    model = tmp_path / "models" / "broken" / "1"
    model.mkdir(parents=True)
    (model / "model.py").write_text("raise ImportError('the broken model cannot load')\n")
    (model.parent / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\nmax_batch_size: 0\n')
    result = invoke("serve", tmp_path / "models", "--http-port", server.free_port(), "--timeout", 60)
    assert_one_line_error(result, "tritonserver exited", "the broken model cannot load")


def test_a_port_in_use_is_one_line(tmp_path):
    serve_environment_or_skip()
    import socket

    (tmp_path / "models").mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = invoke("serve", tmp_path / "models", "--http-port", port, "--timeout", 60)
    assert_one_line_error(result, "tritonserver exited")


@pytest.mark.parametrize("missing", ["repo"])
def test_a_missing_repository_is_one_line(tmp_path, missing):
    serve_environment_or_skip()
    assert_one_line_error(invoke("serve", tmp_path / missing), "model repository not found")
