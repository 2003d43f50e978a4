"""Checkpoint loading, canonicalisation, strict fitting and downloads; all data made in tmp_path."""

from __future__ import annotations

import hashlib
import http.server
import pickle
import random
import socket
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from deploytool.build.checkpoints import (
    LoadedCheckpoint,
    default_cache_dir,
    fetch,
    load_state_dict_file,
    load_strict,
    read_checkpoint,
    unwrap_state_dict,
)
from deploytool.errors import CheckpointError, DeployError


class TinyNet(torch.nn.Module):
    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, channels, 3, padding=1)
        self.head = torch.nn.Linear(channels, 2)
        self.register_buffer("scale", torch.tensor([1.0, 2.0, 3.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x * self.scale.view(1, 3, 1, 1)).mean((2, 3)))


class ForeignNet(torch.nn.Module):
    """A different architecture: none of its keys are TinyNet's."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(4)])


class Harmless:
    """A class whose pickle needs this module's code to rebuild."""

    def __init__(self) -> None:
        self.value = 1


class ReducesToPrint:
    """Its pickle asks the unpickler to call `print` (harmless stand-in for os.system)."""

    def __reduce__(self):
        return (print, ("this must never be printed",))


def tiny_state_dict(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return TinyNet().state_dict()


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)  # safetensors stores keys sorted
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def error_for(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return message


# --------------------------------------------------------------------------- formats


def test_plain_state_dict_pth(tmp_path: Path) -> None:
    sd = tiny_state_dict()
    path = tmp_path / "plain.pth"
    torch.save(sd, path)
    loaded = load_state_dict_file(path)
    assert isinstance(loaded, LoadedCheckpoint)
    assert loaded.wrapper_key is None
    assert loaded.path == path
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert_same(loaded.state_dict, sd)
    model = TinyNet()
    load_strict(model, loaded.state_dict, model_id="tiny", source=str(path))
    assert_same(model.state_dict(), sd)


@pytest.mark.parametrize("wrapper", ["params", "state_dict", "model"])
def test_single_wrapper(tmp_path: Path, wrapper: str) -> None:
    sd = tiny_state_dict()
    path = tmp_path / f"{wrapper}.pth"
    torch.save({wrapper: sd, "epoch": 3}, path)
    loaded = load_state_dict_file(path)
    assert loaded.wrapper_key == wrapper
    assert_same(loaded.state_dict, sd)


def test_params_ema_wins_over_params(tmp_path: Path) -> None:
    ema, raw = tiny_state_dict(1), tiny_state_dict(2)
    path = tmp_path / "basicsr.pth"
    torch.save({"params": raw, "params_ema": ema}, path)
    loaded = load_state_dict_file(path)
    assert loaded.wrapper_key == "params_ema"
    assert_same(loaded.state_dict, ema)


def test_module_prefix_stripped(tmp_path: Path) -> None:
    sd = tiny_state_dict()
    path = tmp_path / "dp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    loaded = load_state_dict_file(path)
    assert loaded.wrapper_key == "state_dict"
    assert_same(loaded.state_dict, sd)


def test_module_prefix_kept_unless_on_every_key() -> None:
    sd = {"module.a": torch.zeros(1), "b": torch.zeros(1)}
    state, _ = unwrap_state_dict(sd)
    assert list(state) == ["module.a", "b"]


def test_safetensors_round_trip(tmp_path: Path) -> None:
    sd = tiny_state_dict()
    path = tmp_path / "weights.safetensors"
    save_file(dict(sd), path)
    loaded = load_state_dict_file(path)
    assert loaded.wrapper_key is None
    assert_same(loaded.state_dict, sd)
    load_strict(TinyNet(), loaded.state_dict, model_id="tiny", source=str(path))


def test_half_precision_checkpoint_loads_into_float32_model(tmp_path: Path) -> None:
    sd = tiny_state_dict()
    path = tmp_path / "half.pth"
    torch.save({k: v.half() for k, v in sd.items()}, path)
    model = TinyNet()
    load_strict(model, load_state_dict_file(path).state_dict, model_id="tiny", source=str(path))
    for key, value in model.state_dict().items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, sd[key].half().float(), rtol=0, atol=0)


# --------------------------------------------------------------------------- unreadable files


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pth"
    assert error_for(path) == f"checkpoint not found: {path}"


def test_directory(tmp_path: Path) -> None:
    assert "directory" in error_for(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pth"
    path.touch()
    assert "empty" in error_for(path)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.pth"
    path.write_bytes(random.Random(0).randbytes(4096))
    assert error_for(path).startswith(f"cannot read {path}: not a PyTorch or safetensors checkpoint (")


def test_truncated_pth(tmp_path: Path) -> None:
    full = tmp_path / "full.pth"
    torch.save(tiny_state_dict(), full)
    data = full.read_bytes()
    path = tmp_path / "half.pth"
    path.write_bytes(data[: len(data) // 2])
    assert error_for(path).startswith(f"cannot read {path}: not a PyTorch or safetensors checkpoint (")


def test_truncated_legacy_pth(tmp_path: Path) -> None:
    full = tmp_path / "full.pth"
    torch.save(tiny_state_dict(), full, _use_new_zipfile_serialization=False)
    assert_same(read_checkpoint(full), tiny_state_dict())
    data = full.read_bytes()
    path = tmp_path / "half.pth"
    path.write_bytes(data[: len(data) // 2])
    assert error_for(path).startswith(f"cannot read {path}: not a PyTorch or safetensors checkpoint (")


@pytest.mark.parametrize("content", [b"", b"not a safetensors file", b"\x08" + b"\x00" * 7 + b"{bad json"])
def test_corrupt_safetensors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    assert error_for(path).startswith(f"cannot read {path}:")


def test_truncated_safetensors(tmp_path: Path) -> None:
    full = tmp_path / "full.safetensors"
    save_file(dict(tiny_state_dict()), full)
    data = full.read_bytes()
    path = tmp_path / "half.safetensors"
    path.write_bytes(data[: len(data) // 2])
    assert "not a valid safetensors file" in error_for(path)


# --------------------------------------------------------------------------- pickles that need code


def assert_refused(path: Path, global_name: str) -> None:
    message = error_for(path)
    assert message.startswith(f"refusing to load {path}: it is a pickle that needs code to unpickle (")
    assert "weights_only=True" in message
    assert global_name in message


def test_custom_class_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "custom.pth"
    torch.save({"weight": torch.ones(2), "extra": Harmless()}, path)
    assert_refused(path, f"{__name__}.Harmless")


def test_reduce_to_callable_is_refused_without_running_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "reduce.pth"
    torch.save({"weight": torch.ones(2), "payload": ReducesToPrint()}, path)
    assert_refused(path, "print")
    assert "never be printed" not in capsys.readouterr().out


@pytest.mark.parametrize("protocol", [0, 2, pickle.DEFAULT_PROTOCOL])
def test_raw_pickle_is_refused_without_running_it(tmp_path: Path, capsys: pytest.CaptureFixture, protocol: int) -> None:
    path = tmp_path / "raw.pkl"
    path.write_bytes(pickle.dumps(ReducesToPrint(), protocol=protocol))
    assert_refused(path, "print")
    assert "never be printed" not in capsys.readouterr().out


def test_blocked_module_is_refused(tmp_path: Path) -> None:
    # What `pickle.dumps` of an os.system reduce looks like (protocol 0); it must never run.
    path = tmp_path / "os_system.pkl"
    path.write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    assert_refused(path, "os.system")


# --------------------------------------------------------------------------- not a state dict


def test_optimizer_only_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "optim.pth"
    torch.save({"optimizer": {"state": {}, "param_groups": []}, "epoch": 7}, path)
    with pytest.raises(CheckpointError) as info:
        load_state_dict_file(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "holds no model weights" in message
    assert "optimizer, epoch" in message


def test_many_top_level_keys_are_truncated() -> None:
    obj = {f"entry{i}": i for i in range(8)}
    with pytest.raises(CheckpointError, match=r"entry0, entry1, entry2, entry3, entry4, … \+3 more$"):
        unwrap_state_dict(obj, path="x.pth")


def test_wrapped_non_tensor_values() -> None:
    obj = {"params": {"conv.weight": torch.zeros(1), "meta": {"lr": 1}}}
    with pytest.raises(CheckpointError, match=r"^x\.pth \['params'\] is not a flat mapping .*meta holds dict"):
        unwrap_state_dict(obj, path="x.pth")


def test_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match=r"holds no model weights.*got list$"):
        load_state_dict_file(path)


def test_empty_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "nothing.pth"
    torch.save({}, path)
    with pytest.raises(CheckpointError, match="is empty"):
        load_state_dict_file(path)


# --------------------------------------------------------------------------- fitting


def test_foreign_checkpoint_key_diff() -> None:
    foreign = ForeignNet().state_dict()  # 8 keys, none of them TinyNet's 5
    with pytest.raises(CheckpointError) as info:
        load_strict(TinyNet(), foreign, model_id="tiny-x2", source="foreign.pth")
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        "foreign.pth does not fit tiny-x2: "
        "5 missing keys (scale, conv.weight, conv.bias, head.weight, head.bias), "
        "8 unexpected keys (blocks.0.weight, blocks.0.bias, blocks.1.weight, blocks.1.bias, "
        "blocks.2.weight, … +3 more)"
    )


def test_shape_mismatch_message() -> None:
    sd = TinyNet(channels=6).state_dict()
    with pytest.raises(CheckpointError) as info:
        load_strict(TinyNet(channels=4), sd, model_id="tiny", source="wide.pth")
    assert str(info.value) == (
        "wide.pth does not fit tiny: 3 shape mismatches ("
        "conv.weight: checkpoint [6, 3, 3, 3] vs model [4, 3, 3, 3], "
        "conv.bias: checkpoint [6] vs model [4], "
        "head.weight: checkpoint [2, 6] vs model [2, 4])"
    )


def test_mixed_mismatch_counts_are_singular() -> None:
    sd = dict(tiny_state_dict())
    del sd["scale"]
    sd["extra"] = torch.zeros(1)
    sd["head.bias"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as info:
        load_strict(TinyNet(), sd, model_id="tiny", source="mixed.pth")
    assert str(info.value) == (
        "mixed.pth does not fit tiny: 1 missing key (scale), 1 unexpected key (extra), 1 shape mismatch (head.bias: checkpoint [3] vs model [2])"
    )


def test_integer_weights_for_float_model_are_a_mismatch() -> None:
    sd = dict(tiny_state_dict())
    sd["conv.weight"] = sd["conv.weight"].to(torch.int8)
    with pytest.raises(CheckpointError, match=r"1 dtype mismatch \(conv\.weight: checkpoint torch\.int8 vs model"):
        load_strict(TinyNet(), sd, model_id="tiny", source="quant.pth")


def test_model_unchanged_when_fit_fails() -> None:
    model = TinyNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sd = dict(tiny_state_dict(5))
    sd["extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError):
        load_strict(model, sd, model_id="tiny", source="x")
    assert_same(model.state_dict(), before)


def test_errors_are_deploy_errors() -> None:
    assert issubclass(CheckpointError, DeployError)


# --------------------------------------------------------------------------- cache dir


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DEPLOYTOOL_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("DEPLOYTOOL_CACHE")
    assert default_cache_dir() == tmp_path / "xdg" / "deploytool" / "weights"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "deploytool" / "weights"


# --------------------------------------------------------------------------- downloads

PAYLOAD = random.Random(1).randbytes(300_000)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
TIMEOUT = 5.0


class LocalServer:
    """A loopback HTTP server in a thread; `/liar` announces more bytes than it sends."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = TIMEOUT

            def do_GET(self) -> None:
                outer.requests.append((self.path, self.headers.get("User-Agent", "")))
                if self.path == "/weights.pth":
                    body, length = PAYLOAD, len(PAYLOAD)
                elif self.path == "/liar":
                    body, length = PAYLOAD[:1000], 5000
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(TIMEOUT)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalServer]:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    local = LocalServer()
    try:
        yield local
    finally:
        local.stop()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_download_lands_in_cache_then_cache_is_used(server: LocalServer, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    url = f"{server.url}/weights.pth"
    path = fetch(url, filename="w.pth", sha256=PAYLOAD_SHA, cache_dir=cache, progress=True, timeout=TIMEOUT)
    assert path == cache / "w.pth"
    assert path.read_bytes() == PAYLOAD
    assert leftovers(cache) == ["w.pth"]
    assert len(server.requests) == 1 and server.requests[0][1].startswith("deploytool/")

    server.stop()
    again = fetch(url, filename="w.pth", sha256=PAYLOAD_SHA.upper(), cache_dir=cache, progress=False, timeout=TIMEOUT)
    assert again == path
    assert len(server.requests) == 1


def test_download_without_known_hash(server: LocalServer, tmp_path: Path) -> None:
    path = fetch(f"{server.url}/weights.pth", filename="w.pth", cache_dir=tmp_path, progress=False, timeout=TIMEOUT)
    assert path.read_bytes() == PAYLOAD


def test_download_uses_default_cache_dir(server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPLOYTOOL_CACHE", str(tmp_path / "env-cache"))
    path = fetch(f"{server.url}/weights.pth", filename="w.pth", progress=False, timeout=TIMEOUT)
    assert path == tmp_path / "env-cache" / "w.pth"


def test_sha256_mismatch_leaves_no_file(server: LocalServer, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        fetch(f"{server.url}/weights.pth", filename="w.pth", sha256="0" * 64, cache_dir=tmp_path, progress=False, timeout=TIMEOUT)
    message = str(info.value)
    assert "\n" not in message and "sha256" in message and "w.pth" in message
    assert leftovers(tmp_path) == []


def test_cached_file_with_wrong_hash(tmp_path: Path) -> None:
    (tmp_path / "w.pth").write_bytes(b"stale")
    with pytest.raises(CheckpointError) as info:
        fetch("http://127.0.0.1:9/never", filename="w.pth", sha256=PAYLOAD_SHA, cache_dir=tmp_path, progress=False)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "w.pth") in message and "delete it" in message


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connection_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("no_proxy", "*")
    url = f"http://127.0.0.1:{closed_port()}/weights.pth"
    with pytest.raises(CheckpointError) as info:
        fetch(url, filename="w.pth", cache_dir=tmp_path, progress=False, timeout=TIMEOUT)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"cannot download w.pth from {url} (")
    assert message.endswith("); download it yourself and pass --weights PATH")
    assert leftovers(tmp_path) == []


def test_http_error(server: LocalServer, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"^cannot download w\.pth from .*\(HTTP 404 .*pass --weights PATH$"):
        fetch(f"{server.url}/missing", filename="w.pth", cache_dir=tmp_path, progress=False, timeout=TIMEOUT)
    assert leftovers(tmp_path) == []


def test_content_length_mismatch(server: LocalServer, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        fetch(f"{server.url}/liar", filename="w.pth", cache_dir=tmp_path, progress=False, timeout=TIMEOUT)
    message = str(info.value)
    assert "\n" not in message and message.startswith("cannot download w.pth from")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("filename", ["", "../w.pth", "sub/w.pth", ".."])
def test_filename_must_be_plain(tmp_path: Path, filename: str) -> None:
    with pytest.raises(ValueError):
        fetch("http://127.0.0.1:9/x", filename=filename, cache_dir=tmp_path)
