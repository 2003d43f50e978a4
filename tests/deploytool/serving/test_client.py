"""The client's own checks, without a server: addresses, an unreachable server, output names."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploytool.errors import DeployError
from deploytool.runtime.inference import destinations
from deploytool.serving.client import _host_port
from deploytool.serving.server import free_port
from tests.triton_server import assert_one_line_error, invoke


def test_addresses():
    assert _host_port("http://127.0.0.1:8000") == ("127.0.0.1:8000", False)
    assert _host_port("127.0.0.1:9000") == ("127.0.0.1:9000", False)
    assert _host_port("https://triton.example:8443/") == ("triton.example:8443", True)
    with pytest.raises(DeployError, match="not a Triton HTTP address"):
        _host_port("grpc://127.0.0.1:8001")


def test_an_unreachable_server_is_one_line_and_writes_nothing(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"not read before the server answers")
    url = f"http://127.0.0.1:{free_port()}"
    assert_one_line_error(invoke("client", url, "esrt-x2", image, "-o", tmp_path / "out"), "cannot reach a Triton server at", url)
    assert not (tmp_path / "out").exists()
    assert_one_line_error(invoke("client", url, "esrt-x2", image, "-o", tmp_path / "out", "--concurrency", "0"), "--concurrency must be at least 1")


def test_outputs_are_named_as_run_names_them(tmp_path):
    assert destinations([Path("x/a.png")], tmp_path / "one.png") == [tmp_path / "one.png"]
    assert destinations([Path("x/a.png"), Path("y/b.png")], tmp_path) == [tmp_path / "a.png", tmp_path / "b.png"]
    assert destinations([(Path("l/a.png"), Path("r/a.png"))], tmp_path / "out") == [tmp_path / "out" / "a.png"]
    with pytest.raises(DeployError, match="need an output folder"):
        destinations([Path("a.png"), Path("b.png")], tmp_path / "one.png")
    with pytest.raises(DeployError, match="several inputs are named a.png"):
        destinations([Path("x/a.png"), Path("y/a.png")], tmp_path)


@pytest.mark.parametrize("unsafe", ["../v2/repository/index", "a/b", "x" * 65])
def test_a_model_name_that_is_not_a_model_id_is_refused_before_any_request(tmp_path, unsafe):
    image = tmp_path / "a.png"
    image.write_bytes(b"not read")
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: a request would fail with "cannot reach"
    assert_one_line_error(invoke("client", url, unsafe, image, "-o", tmp_path / "out"), "deploytool client: model_id", "is not a model id")
    assert not (tmp_path / "out").exists()
