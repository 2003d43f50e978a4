"""How `deploytool serve` starts the wheel's tritonserver, and how it fails: one line each."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

from deploytool.serving import server
from tests.triton_server import REPO_ROOT as REPO
from tests.triton_server import assert_one_line_error, invoke, running_server, serve_environment_or_skip


def test_no_server_environment_is_one_line(tmp_path):
    assert_one_line_error(invoke("serve", tmp_path, "--env", tmp_path / "nowhere"), "no server environment at", "scripts/setup.sh")


def test_the_servers_process_environment_finds_libpython_first():
    env = serve_environment_or_skip()
    variables = server.server_environment(env)
    assert variables["LD_LIBRARY_PATH"].split(":")[:2] == [str(env.libpython_dir), str(env.wheel_libs)]
    assert variables["PYTHONPATH"] == str(env.site_packages)  # no source root, whatever this process's PYTHONPATH holds
    assert (env.libpython_dir / f"libpython{env.python_version}.so").exists() or any(env.libpython_dir.glob(f"libpython{env.python_version}*.so*"))


def _stub_package(folder: Path, name: str, version: str) -> None:
    (folder / name).mkdir(parents=True)
    (folder / name / "__init__.py").write_text(f"__version__ = {version!r}\n")


def _fake_pytriton(site: Path, python_version: str, tritonserver: str = "") -> None:
    """The files of nvidia-pytriton `find_environment` checks, with `tritonserver` as the server."""
    triton = site / "pytriton" / "tritonserver"
    (triton / "bin").mkdir(parents=True)
    (triton / "bin" / "tritonserver").write_text(tritonserver)
    (triton / "bin" / "tritonserver").chmod(0o755)
    (triton / "backends" / "python").mkdir(parents=True)
    stub = triton / "python_backend_stubs" / python_version / "triton_python_backend_stub"
    stub.parent.mkdir(parents=True)
    stub.write_text("")


# Started by the launcher in place of tritonserver: it imports what a Python model imports first,
# with the PYTHONPATH the launcher set and no site-packages of its own (as the embedded stub).
_FAKE_TRITONSERVER = """#!/bin/sh
echo "PYTHONPATH $PYTHONPATH"
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


def test_the_server_imports_numpy_and_deploytool_from_the_serve_environment_only(tmp_path):
    """The launcher runs from the source tree, beside a site-packages with numpy 2: the server's
    PYTHONPATH is the serve environment's site-packages alone, so both come from there."""
    main_site = tmp_path / "site-packages"  # the main environment's: numpy 2
    _stub_package(main_site, "numpy", "2.99.0")
    serve_site = tmp_path / "serve-site"
    _stub_package(serve_site, "numpy", "1.26.99")
    _stub_package(serve_site, "deploytool", "0.1.0")
    _fake_pytriton(serve_site, "3.11", _FAKE_TRITONSERVER)
    (tmp_path / "models").mkdir()

    environment = {"PATH": os.environ["PATH"], "PYTHONPATH": f"{REPO}:{main_site}", "DEPLOYTOOL_TEST_PYTHON": sys.executable}
    done = subprocess.run([sys.executable, "-S", "-c", _LAUNCH, tmp_path], env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"deploytool from {REPO / 'deploytool'}" in done.stdout  # the launcher itself ran from the source tree
    imported = (tmp_path / "server.log").read_text()
    assert f"PYTHONPATH {serve_site}\n" in imported, imported
    assert "numpy 1.26.99" in imported, imported
    assert f"deploytool {serve_site / 'deploytool' / '__init__.py'}" in imported, imported


def _fake_serve_environment(root: Path) -> Path:
    """A real virtual environment of this Python (shared libpython, as Triton's stub needs) with
    numpy 1.x, nvidia-pytriton's files and a copy of this deploytool in its site-packages."""
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", root], check=True, timeout=120, capture_output=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(root), "platbase": str(root)}))
    _stub_package(site, "numpy", "1.26.99")
    _fake_pytriton(site, f"{sys.version_info[0]}.{sys.version_info[1]}")
    shutil.copytree(server.PACKAGE_DIR, site / "deploytool", ignore=shutil.ignore_patterns("__pycache__"))
    return site


def test_a_stale_deploytool_in_the_server_environment_is_refused_in_one_line(tmp_path):
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        pytest.skip("this Python has no libpython, which the server environment needs")
    site = _fake_serve_environment(tmp_path / "env")
    assert server.find_environment(tmp_path / "env").site_packages == site
    (site / "deploytool" / "runtime" / "tiling.py").write_text("# an older tiler\n")
    result = invoke("serve", tmp_path, "--env", tmp_path / "env")
    assert_one_line_error(result, "the deploytool installed in", "runtime/tiling.py differs", "scripts/setup_serve.sh")


def test_a_deploytool_only_on_a_pth_path_is_refused_in_one_line(tmp_path):
    """An editable install: Triton's embedded Python reads no .pth file, so it would not find it."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        pytest.skip("this Python has no libpython, which the server environment needs")
    site = _fake_serve_environment(tmp_path / "env")
    shutil.rmtree(site / "deploytool")
    (site / "deploytool_source.pth").write_text(f"{REPO}\n")
    assert_one_line_error(invoke("serve", tmp_path, "--env", tmp_path / "env"), "imports deploytool from", "not from its site-packages", "setup_serve.sh")
    (site / "deploytool_source.pth").unlink()
    assert_one_line_error(invoke("serve", tmp_path, "--env", tmp_path / "env"), "has no deploytool", "setup_serve.sh")


_REPORTING_MODEL = """
import json, os, sys
import deploytool
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        report = json.loads(args["model_config"])["parameters"]["report"]["string_value"]
        with open(report, "w") as out:
            json.dump({"deploytool": os.path.realpath(deploytool.__file__), "sys_path": sys.path}, out)

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())]) for r in requests]
"""

_REPORTING_CONFIG = """name: "where"
backend: "python"
max_batch_size: 0
input [ { name: "IN", data_type: TYPE_UINT8, dims: [ 1 ] } ]
output [ { name: "OUT", data_type: TYPE_UINT8, dims: [ 1 ] } ]
parameters { key: "report", value: { string_value: "%s" } }
"""


def test_the_served_models_import_the_deploytool_installed_in_the_server_environment(tmp_path):
    """A real tritonserver, started from the source tree (PYTHONPATH holds it in the tests): its
    model finds deploytool in the server environment's site-packages, and no source root."""
    env = serve_environment_or_skip()
    model = tmp_path / "models" / "where" / "1"
    model.mkdir(parents=True)
    (model / "model.py").write_text(_REPORTING_MODEL)
    (model.parent / "config.pbtxt").write_text(_REPORTING_CONFIG % (tmp_path / "report.json"))
    with running_server(tmp_path / "models"):
        pass
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["deploytool"] == str((env.site_packages / "deploytool" / "__init__.py").resolve())
    sys_path = [os.path.realpath(entry) for entry in report["sys_path"] if entry]
    assert str(REPO.resolve()) not in sys_path and str(env.site_packages.resolve()) in sys_path, report["sys_path"]
    assert server.first_difference(env.site_packages / "deploytool", REPO / "deploytool") is None


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
