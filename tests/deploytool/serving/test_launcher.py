"""How `deploytool serve` starts the wheel's tritonserver, and how it fails: one line each."""

from __future__ import annotations

import pytest

from deploytool.serving import server
from tests.triton_server import assert_one_line_error, invoke, serve_environment_or_skip


def test_no_server_environment_is_one_line(tmp_path):
    assert_one_line_error(invoke("serve", tmp_path, "--env", tmp_path / "nowhere"), "no server environment at", "scripts/setup.sh")


def test_the_servers_process_environment_finds_libpython_the_packages_and_deploytool():
    env = serve_environment_or_skip()
    variables = server.server_environment(env)
    assert variables["LD_LIBRARY_PATH"].split(":")[:2] == [str(env.libpython_dir), str(env.wheel_libs)]
    assert variables["PYTHONPATH"].split(":")[:2] == [str(server.SOURCE_ROOT), str(env.site_packages)]
    assert (env.libpython_dir / f"libpython{env.python_version}.so").exists() or any(env.libpython_dir.glob(f"libpython{env.python_version}*.so*"))


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
