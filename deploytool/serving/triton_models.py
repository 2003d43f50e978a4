"""The code Triton's Python backend runs for a repository `deploytool triton` wrote.

`WholeImageModel` (`<id>`) takes whole images, tiles them with deploytool's tiler exactly as
`deploytool run` does (same padding, grid, blend, batch, alpha) and sends each batch of tiles to
`<id>-tiles` over BLS. `OrtTileModel` (`<id>-tiles` with --runtime python-ort) runs the export's
ONNX graph with ONNX Runtime on the CPU; `BackendTileModel` runs one of deploytool's registered
backends (the runtime's `opens`, e.g. OpenVINO on the BF16 plan) on the files of its version folder.

The request handling (`restore_request`) is plain numpy and is tested without Triton; only the
classes touch `triton_python_backend_utils`, which exists inside the Python backend alone. Every
failure answers its request with one line; the server keeps serving the others.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deploytool.errors import DeployError, ImageError
from deploytool.runtime import images, restorer
from deploytool.runtime.manifest import Manifest, read_manifest
from deploytool.serving import protocol

Infer = Callable[[np.ndarray], np.ndarray]


def _parameters(config: dict[str, Any]) -> dict[str, str]:
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


class _TiledInfer:
    """`inference`'s runner interface over a callable that runs one batch of tiles."""

    def __init__(self, infer: Infer, name: str, input_shape: tuple[int, ...]):
        self.infer, self.name, self.input_shape, self.device = infer, name, input_shape, "triton"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.infer(batch)

    def close(self) -> None:
        pass


def _image(samples: np.ndarray, label: str, max_pixels: int) -> images.LoadedImage:
    restorer.check_array(samples, label)
    height, width = samples.shape[:2]
    if height * width > max_pixels:
        raise ImageError(f"{label}: {width}x{height} is {height * width} pixels, over this model's limit of {max_pixels} (deploytool triton --max-pixels)")
    return restorer.image_from_array(samples, label)


def restore_request(manifest: Manifest, infer: Infer, tensors: dict[str, np.ndarray], *, max_pixels: int, overlap: int) -> dict[str, np.ndarray]:
    """One request's input tensors (by name) -> its output tensor, as `deploytool run` computes it.

    Integer samples come back quantized like `run` writes them; FP32 comes back clipped to [0, 1].
    Alpha is the last channel both ways.
    """
    views, model_id = manifest.views, manifest.model_id
    given = {name for name, array in tensors.items() if array is not None}
    types = [sample for sample in protocol.SAMPLE_TYPES if any(protocol.input_name(view.name, sample) in given for view in views)]
    expected = " and ".join(protocol.input_name(view.name, "<uint8|uint16|fp32>") for view in views)
    if len(types) != 1:
        raise ImageError(f"{model_id} takes {expected}, one sample type for all views; got {', '.join(sorted(given)) or 'no input'}")
    sample = types[0]
    names = [protocol.input_name(view.name, sample) for view in views]
    missing = [name for name in names if name not in given]
    if missing:
        raise ImageError(f"{model_id} takes {expected}; {', '.join(missing)} missing")
    loaded = [_image(tensors[name], name, max_pixels) for name in names]
    tiles = _TiledInfer(infer, protocol.tile_model_name(model_id), tuple(manifest.input.shape))
    result = restorer.Restorer(tiles, manifest, overlap=overlap).restore_images(loaded, names)
    return {protocol.output_name(sample): result}


def _error_response(pb_utils, exc: Exception):
    message = str(exc) if isinstance(exc, DeployError) else f"internal error: {type(exc).__name__}: {exc}"
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(" ".join(message.split())))


class WholeImageModel:
    """`<id>`: whole images in, restored images out, tiles through `<id>-tiles`."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = _parameters(config)
        self.manifest = read_manifest(Path(args["model_repository"]) / args["model_version"])
        self.tile_model = parameters[protocol.PARAM_TILE_MODEL]
        self.max_pixels = int(parameters[protocol.PARAM_MAX_PIXELS])
        self.overlap = int(parameters[protocol.PARAM_OVERLAP])
        self.names = [protocol.input_name(view.name, sample) for view in self.manifest.views for sample in protocol.SAMPLE_TYPES]

    def _infer_tiles(self, batch: np.ndarray) -> np.ndarray:
        import triton_python_backend_utils as pb_utils

        request = pb_utils.InferenceRequest(
            model_name=self.tile_model,
            requested_output_names=[self.manifest.output.name],
            inputs=[pb_utils.Tensor(self.manifest.input.name, np.ascontiguousarray(batch, dtype=np.float32))],
        )
        response = request.exec()
        if response.has_error():
            raise DeployError(f"{self.tile_model}: {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, self.manifest.output.name).as_numpy()

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            try:
                tensors = {}
                for name in self.names:
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    if tensor is not None:
                        tensors[name] = tensor.as_numpy()
                outputs = restore_request(self.manifest, self._infer_tiles, tensors, max_pixels=self.max_pixels, overlap=self.overlap)
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, array) for name, array in outputs.items()]))
            except Exception as exc:  # noqa: BLE001 - every failure must answer its own request, in one line
                responses.append(_error_response(pb_utils, exc))
        return responses

    def finalize(self) -> None:
        pass


def ort_threads(config: dict[str, Any], cpus: int | None) -> int:
    """Threads per ONNX Runtime session: the config's, or the server's cores shared among the
    model's instances (each instance is its own process; all of them on all cores would contend)."""
    configured = int(_parameters(config).get(protocol.PARAM_THREADS, "0"))
    if configured > 0:
        return configured
    instances = sum(int(group.get("count", 1)) for group in config.get("instance_group", [])) or 1
    return max(1, (cpus or 1) // instances)


class _TileModel:
    """A tile model's requests: one batch of tiles in, the runner's output out."""

    runner: Any = None  # a backend's runner: called on a batch, closed at unload

    def _tensors(self, config: dict[str, Any]) -> None:
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            try:
                batch = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, self.runner(batch))]))
            except Exception as exc:  # noqa: BLE001 - every failure must answer its own request, in one line
                responses.append(_error_response(pb_utils, exc))
        return responses

    def finalize(self) -> None:
        if self.runner is not None:
            self.runner.close()


class OrtTileModel(_TileModel):
    """`<id>-tiles` for --runtime python-ort: the export's ONNX graph on ONNX Runtime's CPU provider."""

    def initialize(self, args: dict[str, str]) -> None:
        from deploytool.runtime.backends.onnxruntime import OrtRunner
        from deploytool.serving.repository import ONNX_MODEL_FILE

        config = json.loads(args["model_config"])
        self._tensors(config)
        path = Path(args["model_repository"]) / args["model_version"] / ONNX_MODEL_FILE
        self.runner = OrtRunner(path, name=config["name"], providers=["CPUExecutionProvider"], threads=ort_threads(config, os.cpu_count()))


class BackendTileModel(_TileModel):
    """`<id>-tiles` for a runtime that `opens` one of deploytool's backends: the backend named by
    the config's `backend` parameter, opened through the registry on the version folder, which
    holds the served graph and the export's manifest. So the server runs exactly what `deploytool
    run --backend NAME` runs, refusals included (a machine the backend cannot run on fails the
    model's load with the backend's one-line reason), and a backend's compiled-model cache lives
    in the version folder."""

    def initialize(self, args: dict[str, str]) -> None:
        from deploytool.runtime import backends

        config = json.loads(args["model_config"])
        self._tensors(config)
        folder = Path(args["model_repository"]) / args["model_version"]
        self.runner = backends.open_runner(folder, read_manifest(folder), _parameters(config)[protocol.PARAM_BACKEND])
