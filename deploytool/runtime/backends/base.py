"""What a backend is: a descriptor (`Backend`), the runners it opens, and the registry holding them.

Every backend module declares one `Backend` per name and `register`s it; everything outside
`deploytool.runtime.backends` asks the registry (`get`, `names`, `available`) and the
descriptor's fields instead of comparing backend names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from deploytool.errors import DeployError
from deploytool.runtime.manifest import Manifest

# The precision classes: which tolerances of the manifest judge a backend's outputs.
FP32, FP16, BF16 = "fp32", "fp16", "bf16"
PRECISIONS = (FP32, FP16, BF16)


class Runner(Protocol):
    name: str
    input_shape: tuple[int, ...] | None
    device: str

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...

    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...

    def __enter__(self) -> Runner: ...

    def __exit__(self, *exc_info) -> None: ...


class ClosingRunner:
    """What every runner shares: `run(batch)` (the same as calling it), and context-manager
    behaviour: `with open_runner(...) as runner:` closes it."""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self(batch)

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


@dataclass(frozen=True)
class OpenRequest:
    """What a backend's opener gets: the export, and the options that apply to some backends."""

    export_dir: Path
    manifest: Manifest
    device: str | None = None  # backends with `takes_device`
    cuda_graph: bool = False  # TensorRT
    model: Any = None  # a torch.nn.Module, for backends that `needs_checkpoint` (built by deploytool.build.runners)


def missing_modules(facts: dict[str, Any], modules: tuple[str, ...]) -> list[str]:
    return [module for module in modules if not facts.get(module)]


@dataclass(frozen=True)
class TritonRuntime:
    """How a Triton tile model runs a backend (`deploytool triton --runtime NAME`).

    `model` is config.pbtxt's platform or backend, `served_as` the file's name in the model's
    version folder, `source` the export file it serves (given the export, its manifest and
    whether --fp32 was asked). A `python_model` runtime is a Python-backend model of
    deploytool.serving.triton_models (that class) rather than one of Triton's own backends; one
    that `opens` a backend runs that registered backend on the model's version folder, which then
    holds the served file and the export's manifest. `check` refuses, in one line, a repository
    written on a machine that could not run it (the servers it is written for are machines like it).
    """

    name: str
    description: str  # for --runtime's help, e.g. "a TensorRT engine"
    model: dict[str, str]
    served_as: str
    source: Callable[[Path, Manifest, bool], Path]
    on_cpu: bool = False  # instances are KIND_CPU, and --gpus is refused
    parameters: Callable[[int], dict[str, str]] = field(default=lambda instances: {})  # from the instance count
    python_model: str | None = None
    fp32_refusal: str | None = None  # why --fp32 does not apply, where it does not
    note: str | None = None  # said when a repository is written with it
    opens: str | None = None  # the backend a `python_model` opens through the registry
    check: Callable[[], None] = field(default=lambda: None)


@dataclass(frozen=True)
class Backend:
    """One way of running an export.

    `file` is the export file it runs (None where it is not one fixed file: the checkpoint, or the
    engine built for this GPU). `requires` are the Python packages it imports, `install` how to
    get them (the pip extra). `check` says, from doctor's facts, why this machine cannot run it
    beyond a missing package (None when it can). `opener` makes its runner from an `OpenRequest`.
    """

    name: str
    precision: str
    description: str
    opener: Callable[[OpenRequest], Runner]
    file: str | None = None
    requires: tuple[str, ...] = ()
    install: str = ""
    check: Callable[[dict[str, Any]], str | None] = field(default=lambda facts: None)
    # runs our PyTorch definition or the original code built from the export's checkpoint
    needs_checkpoint: bool = False
    # the original implementation: what every other backend is judged against; it runs whole
    # images (no tiler) and only in parity
    is_original: bool = False
    takes_device: bool = False  # --device picks where it runs (e.g. OpenVINO's CPU, GPU, NPU)
    device_help: str = ""  # what --device means for it, in --device's help
    takes_cuda_graph: bool = False  # --cuda-graph replays one captured launch per batch (TensorRT)
    # runs a file built for one machine: where none fits this one, parity skips it with the reason
    machine_specific: bool = False
    verify_by_default: bool = True  # `verify` runs it unless --backends says otherwise
    # its outputs are the FP32 graph's, against which reduced-precision backends are measured
    fp32_graph_reference: bool = False
    # a phrase for doctor's `run` line, from its facts: where the backend runs or why it cannot
    doctor_note: Callable[[dict[str, Any]], str | None] = field(default=lambda facts: None)
    triton: tuple[TritonRuntime, ...] = ()  # the Triton tile-model runtimes that serve it
    # doctor's facts only this backend's runtime can tell, from the facts so far (its package's
    # version among them), and the lines of doctor's report that show them
    probe: Callable[[dict[str, Any]], dict[str, Any]] = field(default=lambda facts: {})
    report: Callable[[dict[str, Any]], list[str]] = field(default=lambda facts: [])

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"backend {self.name}: precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")

    def unavailable_reason(self, facts: dict[str, Any]) -> str | None:
        """Why a machine with these facts (deploytool.runtime.doctor.probe) cannot run it; None when it can."""
        missing = missing_modules(facts, self.requires)
        if missing:
            return f"{', '.join(missing)} not installed: {self.install}" if self.install else f"{', '.join(missing)} not installed"
        return self.check(facts)

    def check_options(self, device: str | None, cuda_graph: bool = False) -> None:
        """Refuse, in one line, --device or --cuda-graph for a backend that does not take it."""
        check_options_apply([self.name], device, cuda_graph)

    def own_options(self, device: str | None, cuda_graph: bool = False) -> dict[str, Any]:
        """Of a command's --device and --cuda-graph, those this backend takes (`open_runner`'s
        keywords): a command running several backends gives each its own."""
        return {"device": device if self.takes_device else None, "cuda_graph": cuda_graph and self.takes_cuda_graph}

    def open(self, request: OpenRequest) -> Runner:
        self.check_options(request.device, request.cuda_graph)
        if self.needs_checkpoint and request.model is None:
            raise DeployError(
                f"the {self.name} backend runs a PyTorch model built from the checkpoint, not a file of the export: open it with deploytool.build.runners"
            )
        return self.opener(request)


_REGISTRY: dict[str, Backend] = {}
DEFAULT_TRITON_RUNTIME = "trt"  # what `deploytool triton` writes unless --runtime says otherwise


def register(backend: Backend) -> Backend:
    if backend.name in _REGISTRY:
        raise ValueError(f"backend {backend.name!r} is registered twice")
    _REGISTRY[backend.name] = backend
    return backend


def get(name: str) -> Backend:
    """The backend called `name`, or a one-line error listing the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DeployError(f"unknown backend {name!r}; choose from {', '.join(runtime_names())}") from None


def names() -> tuple[str, ...]:
    """Every registered backend, the original included, in registration order."""
    return tuple(_REGISTRY)


def runtime_names() -> tuple[str, ...]:
    """What `run`, `bench` and `eval` can tile with: every backend but the original."""
    return tuple(name for name, backend in _REGISTRY.items() if not backend.is_original)


def verify_default_names() -> tuple[str, ...]:
    return tuple(name for name, backend in _REGISTRY.items() if backend.verify_by_default)


def original() -> Backend:
    """The original implementation: the backend every other one is judged against."""
    return next(backend for backend in _REGISTRY.values() if backend.is_original)


def device_backends() -> tuple[str, ...]:
    return tuple(name for name, backend in _REGISTRY.items() if backend.takes_device)


def cuda_graph_backends() -> tuple[str, ...]:
    return tuple(name for name, backend in _REGISTRY.items() if backend.takes_cuda_graph)


def _backends_phrase(names: tuple[str, ...]) -> str:
    return f"the {' and '.join(names)} backend{'s' if len(names) > 1 else ''}"


def check_options_apply(chosen: list[str], device: str | None, cuda_graph: bool = False) -> None:
    """Refuse, in one line, --device or --cuda-graph where none of the `chosen` backends takes it
    (a command running several gives each backend the options it takes: `Backend.own_options`).
    A name that is no backend (eval's bicubic) takes neither."""
    backends = [_REGISTRY[name] for name in chosen if name in _REGISTRY]
    if device is not None and not any(backend.takes_device for backend in backends):
        raise DeployError(f"--device applies to {_backends_phrase(device_backends())}, not {', '.join(chosen)}")
    if cuda_graph and not any(backend.takes_cuda_graph for backend in backends):
        raise DeployError(f"--cuda-graph applies to {_backends_phrase(cuda_graph_backends())}, not {', '.join(chosen)}")


def triton_runtimes() -> tuple[TritonRuntime, ...]:
    """Every Triton runtime of every backend, the default (`DEFAULT_TRITON_RUNTIME`) first."""
    found = [runtime for backend in _REGISTRY.values() for runtime in backend.triton]
    return tuple(sorted(found, key=lambda runtime: runtime.name != DEFAULT_TRITON_RUNTIME))


def triton_runtime(name: str) -> TritonRuntime:
    """The Triton runtime called `name`, or a one-line error listing the known ones."""
    found = {runtime.name: runtime for runtime in triton_runtimes()}
    if name not in found:
        raise DeployError(f"unknown Triton runtime {name!r}; choose from {', '.join(found)}")
    return found[name]


def available(facts: dict[str, Any] | None = None) -> tuple[str, ...]:
    """The backends that can run on a machine with these facts (default: this machine's)."""
    if facts is None:
        from deploytool.runtime.doctor import probe

        facts = probe()
    return tuple(name for name, backend in _REGISTRY.items() if backend.unavailable_reason(facts) is None)
