"""Sending images to a whole-image model on a Triton server (HTTP), writing what `run` writes.

Images go as their integer samples (RGB[A], HWC, uint8 or uint16); the server tiles them and
returns samples of the same type and channels, which are written atomically with deploytool's
image writer under the names `deploytool run` gives. Requests run `concurrency` at a time, each
worker with its own HTTP client. Connection errors are retried a bounded number of times; a
server that stays unreachable ends the run (no partial file: writes are atomic); an image the
server refuses fails alone, with the server's reason, and the others go on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from deploytool.errors import DeployError, ImageError
from deploytool.runtime import images, inference
from deploytool.runtime.manifest import check_model_id
from deploytool.serving import protocol

RETRY_DELAYS = (0.5, 1.0, 2.0)  # seconds before each retry of a request whose connection failed


class ServerLost(DeployError):
    """The server stopped answering (connection refused or reset, after the retries)."""


@dataclass
class ClientReport:
    url: str
    model: str
    images: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "model": self.model, "images": self.images, "failures": self.failures}


def _host_port(url: str) -> tuple[str, bool]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DeployError(f"{url!r} is not a Triton HTTP address such as http://127.0.0.1:8000")
    port = parts.port or (443 if parts.scheme == "https" else 8000)
    return f"{parts.hostname}:{port}", parts.scheme == "https"


def _connection_errors() -> tuple[type[BaseException], ...]:
    """What a lost connection raises in tritonclient's HTTP client (geventhttpclient underneath)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError, OSError]
    try:
        from geventhttpclient.response import HTTPConnectionClosed

        errors.append(HTTPConnectionClosed)
    except ImportError:
        pass
    try:
        from gevent import Timeout

        errors.append(Timeout)
    except ImportError:
        pass
    return tuple(errors)


def _reason(exc: BaseException) -> str:
    text = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    return " ".join((text or type(exc).__name__).split())


class TritonImageClient:
    """One model on one server; thread-safe (an HTTP client per thread)."""

    def __init__(self, url: str, model: str, *, timeout: float = 600.0):
        try:
            import tritonclient.http  # noqa: F401
        except ImportError:
            raise DeployError("tritonclient is not installed: pip install 'tritonclient[http]' (deploytool[client])") from None
        self.url, self.model, self.timeout = url, model, timeout
        self.address, self.ssl = _host_port(url)
        self.local = threading.local()
        self.clients: list = []
        self.lock = threading.Lock()
        self.lost = _connection_errors()

    def http(self):
        client = getattr(self.local, "client", None)
        if client is None:
            import tritonclient.http as httpclient

            client = httpclient.InferenceServerClient(self.address, ssl=self.ssl, connection_timeout=10.0, network_timeout=self.timeout)
            self.local.client = client
            with self.lock:
                self.clients.append(client)
        return client

    def close(self) -> None:
        with self.lock:
            for client in self.clients:
                try:
                    client.close()
                except Exception:  # noqa: BLE001 - closing a dead connection has nothing to report
                    pass
            self.clients.clear()

    def check(self) -> list[str]:
        """The model's view names; one line when the server is unreachable or the model not ready."""
        from tritonclient.utils import InferenceServerException

        client = self.http()
        try:
            live = client.is_server_live()
        except (InferenceServerException, *self.lost) as exc:
            raise DeployError(f"cannot reach a Triton server at {self.url}: {_reason(exc)}") from None
        if not live:
            raise DeployError(f"the Triton server at {self.url} is not live")
        try:
            if not client.is_model_ready(self.model):
                index = client.get_model_repository_index()
                ready = sorted(m["name"] for m in index if m.get("state") == "READY" and not m["name"].endswith(protocol.TILE_SUFFIX))
                raise DeployError(f"model {self.model} is not ready on {self.url} (ready there: {', '.join(ready) or 'none'})")
            config = client.get_model_config(self.model)
        except (InferenceServerException, *self.lost) as exc:
            raise DeployError(f"cannot ask {self.url} about {self.model}: {_reason(exc)}") from None
        views = config.get("parameters", {}).get(protocol.PARAM_VIEWS, {}).get("string_value")
        if not views:
            raise DeployError(f"{self.model} on {self.url} is not a whole-image model written by `deploytool triton` (no '{protocol.PARAM_VIEWS}' parameter)")
        return views.split(",")

    def infer(self, tensors: dict[str, np.ndarray], output: str) -> np.ndarray:
        """One request; connection errors retried after RETRY_DELAYS, then ServerLost."""
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        inputs = []
        for name, array in tensors.items():
            tensor = httpclient.InferInput(name, list(array.shape), protocol.WIRE_TYPES[protocol.sample_type_of(array.dtype)])
            tensor.set_data_from_numpy(array, binary_data=True)
            inputs.append(tensor)
        outputs = [httpclient.InferRequestedOutput(output, binary_data=True)]
        for attempt in range(len(RETRY_DELAYS) + 1):
            try:
                result = self.http().infer(self.model, inputs, outputs=outputs)
                array = result.as_numpy(output)
                if array is None:
                    raise ImageError(f"the server returned no {output}")
                return array
            except InferenceServerException as exc:
                # a status from the server: its reason, never retried (the same request fails the same way)
                if exc.status() is None and isinstance(exc.__cause__, self.lost):
                    error: BaseException = exc
                else:
                    raise ImageError(f"refused by the server: {_reason(exc)}") from None
            except self.lost as exc:
                error = exc
            self.local.client = None  # a fresh connection for the retry
            if attempt < len(RETRY_DELAYS):
                time.sleep(RETRY_DELAYS[attempt])
        raise ServerLost(f"lost the Triton server at {self.url}: {_reason(error)} (after {len(RETRY_DELAYS)} retries)")


def _request(views: list[str], source: inference.Source) -> tuple[dict[str, np.ndarray], str]:
    files = source if isinstance(source, tuple) else (source,)
    samples = [images.read_samples(path) for path in files]
    for array, path in zip(samples, files):
        if protocol.sample_type_of(array.dtype) not in ("uint8", "uint16"):
            raise ImageError(f"{path}: unsupported sample type {array.dtype}; only 8-bit and 16-bit integer images are supported")
    sample_type = protocol.sample_type_of(samples[0].dtype)
    if any(array.dtype != samples[0].dtype for array in samples):
        raise ImageError(f"{' and '.join(map(str, files))} differ in bit depth: the views must match")
    return {protocol.input_name(view, sample_type): array for view, array in zip(views, samples)}, protocol.output_name(sample_type)


def _write(destination: Path, restored: np.ndarray) -> None:
    channels = restored.shape[2]
    alpha = restored[:, :, -1] if channels in (2, 4) else None
    colour = restored[:, :, :-1] if alpha is not None else restored
    images.write_samples(destination, np.ascontiguousarray(colour), alpha=None if alpha is None else np.ascontiguousarray(alpha))


def _restore_one(
    client: TritonImageClient,
    views: list[str],
    report: ClientReport,
    source: inference.Source,
    destination: Path,
    *,
    on_done: Callable[[dict[str, Any]], None],
    on_failure: Callable[[dict[str, str]], None],
) -> None:
    """One image (or group of views) through the server into `destination`, recorded in `report`;
    a failure of this image alone is recorded, a lost server raised."""
    label = " + ".join(map(str, source)) if isinstance(source, tuple) else str(source)
    started = time.perf_counter()
    try:
        tensors, output_name = _request(views, source)
        first = next(iter(tensors.values()))
        restored = client.infer(tensors, output_name)
        _write(destination, restored)
    except ServerLost:
        raise
    except DeployError as exc:
        failure = {"input": label, "error": str(exc)}
        report.failures.append(failure)
        on_failure(failure)
        return
    record = {
        "input": label,
        "output": str(destination),
        "size": [int(first.shape[1]), int(first.shape[0])],
        "output_size": [int(restored.shape[1]), int(restored.shape[0])],
        "seconds": round(time.perf_counter() - started, 4),
    }
    report.images.append(record)
    on_done(record)


def restore_remote(
    url: str,
    model: str,
    inputs: list[Path],
    output: Path,
    *,
    concurrency: int = 4,
    on_start: Callable[[int], None] = lambda total: None,
    on_done: Callable[[dict[str, Any]], None] = lambda record: None,
    on_failure: Callable[[dict[str, str]], None] = lambda failure: None,
) -> ClientReport:
    """Restore `inputs` (files and folders of images) on `model` at `url` into `output`."""
    from deploytool.runtime import input_batches

    if concurrency < 1:
        raise DeployError(f"--concurrency must be at least 1, not {concurrency}")
    check_model_id(model, where="deploytool client")  # it becomes part of the request URLs
    client = TritonImageClient(url, model)
    report = ClientReport(url, model)
    try:
        views = client.check()
        paths = [p for item in inputs for p in (input_batches.list_images(item) if Path(item).is_dir() else [Path(item)])]
        sources = inference.group_files(model, views, paths)
        targets = inference.destinations(sources, Path(output))
        on_start(len(sources))
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="triton-client") as pool:
            futures = [
                pool.submit(_restore_one, client, views, report, source, destination, on_done=on_done, on_failure=on_failure)
                for source, destination in zip(sources, targets)
            ]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for future in pending:
                future.cancel()
            lost = next((f.exception() for f in futures if f.done() and not f.cancelled() and f.exception() is not None), None)
        if isinstance(lost, ServerLost):
            raise DeployError(f"{lost}; {len(report.images)} of {len(sources)} images were written") from None
        if lost is not None:
            raise lost
    finally:
        client.close()
    return report


class RemoteRestorer:
    """Video frames restored by a whole-image model on a Triton server (`video.FrameRestorer`).

    Each frame goes as 8- or 16-bit RGB samples (a lossless RGB source's own samples; other
    frames rounded at the video's working depth) and comes back as `run` would write it;
    `concurrency` frames are in flight at once, and they come back in order.
    """

    PROBE_SIZE = 16  # pixels a side of the request that asks the model its scale

    def __init__(self, client: TritonImageClient, *, concurrency: int):
        views = client.check()
        if len(views) != 1:
            raise DeployError(f"{client.model} takes {len(views)} views of one scene ({', '.join(views)}); a video has one")
        self.client, self.view, self.concurrency = client, views[0], concurrency
        self.name = f"triton:{client.model}"
        self.busy_seconds = 0.0
        self.lock = threading.Lock()
        probe = np.zeros((self.PROBE_SIZE, self.PROBE_SIZE, 3), np.uint8)
        self.scale = int(self._infer(probe).shape[0]) // self.PROBE_SIZE

    def _infer(self, samples: np.ndarray) -> np.ndarray:
        sample_type = protocol.sample_type_of(samples.dtype)
        started = time.perf_counter()
        restored = self.client.infer({protocol.input_name(self.view, sample_type): samples}, protocol.output_name(sample_type))
        with self.lock:
            self.busy_seconds += time.perf_counter() - started
        return restored

    def restore(self, frames, depth: int):
        from collections import deque

        from deploytool.runtime.video import frames as framing

        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="triton-video") as pool:
            in_flight: deque = deque()
            for frame in frames:
                in_flight.append((frame, pool.submit(self._infer, framing.samples_for_model(frame, depth))))
                if len(in_flight) >= self.concurrency:
                    yield self._done(*in_flight.popleft())
            while in_flight:
                yield self._done(*in_flight.popleft())

    def _done(self, frame, future):
        restored = future.result()
        if restored.ndim != 3 or restored.shape[2] != 3:
            raise ImageError(f"the server returned frame {frame.index} with shape {restored.shape}, not RGB")
        return frame, restored


def restore_remote_videos(
    url: str,
    model: str,
    sources: list[Path],
    destinations: list[Path],
    options,
    *,
    concurrency: int = 4,
    on_start: Callable[[Path, int], None] = lambda source, total: None,
    on_frame: Callable[[], None] = lambda: None,
) -> list[dict[str, Any]]:
    """Restore each video of `sources` into its destination with `model` at `url`."""
    from deploytool.runtime import video

    if concurrency < 1:
        raise DeployError(f"--concurrency must be at least 1, not {concurrency}")
    client = TritonImageClient(url, model)
    try:
        restorer = RemoteRestorer(client, concurrency=concurrency)
        return [
            video.restore_video(source, destination, restorer, options, on_start=lambda total, s=source: on_start(s, total), on_frame=on_frame)
            for source, destination in zip(sources, destinations)
        ]
    finally:
        client.close()
