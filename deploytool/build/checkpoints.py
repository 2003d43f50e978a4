"""Checkpoints: safe loading, canonicalisation to a flat state dict, strict fitting, downloads.

Only plain tensor checkpoints are loaded: `torch.load` always runs with `weights_only=True` and
never falls back, so a checkpoint that needs code to unpickle is refused rather than executed.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import pickletools
import re
import sys
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deploytool import __version__
from deploytool.errors import CheckpointError
from deploytool.runtime.fileio import atomic_path, sha256_file, user_cache_folder

# Official repositories wrap their weights under one of these keys; BasicSR (HAT, Restormer,
# SwinIR's training code) saves both `params` and `params_ema`, and the EMA weights are the
# ones the papers report.
WRAPPER_KEYS: tuple[str, ...] = ("params_ema", "params", "state_dict", "model")

_PREVIEW = 5
_CHUNK = 1 << 20
_USER_AGENT = f"deploytool/{__version__} Python-urllib/{sys.version_info[0]}.{sys.version_info[1]}"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_DOTTED_NAME_RE = re.compile(r"^[A-Za-z_][\w.]*$")
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
# torch's weights-only unpickler names the global it rejected in one of these phrasings.
_TORCH_GLOBAL_RES = (
    re.compile(r"Unsupported global: GLOBAL (\S+) was not an allowed global"),
    re.compile(r"unsupported GLOBAL (\S+) whose module"),
    re.compile(r"reduce for unrecognized function (.+?)(?: which belongs to|$)", re.MULTILINE),
    re.compile(r"classes allowlisted via `add_safe_globals` but got (.+?)$", re.MULTILINE),
    re.compile(r"types allowlisted via `add_safe_globals`, but got (.+?)$", re.MULTILINE),
)


@dataclass(frozen=True, eq=False)
class LoadedCheckpoint:
    """A checkpoint reduced to its flat state dict, with where it came from."""

    state_dict: dict[str, torch.Tensor]
    wrapper_key: str | None
    path: Path
    sha256: str


# --------------------------------------------------------------------------- reading


def read_checkpoint(path: str | os.PathLike) -> Any:
    """Load a `.safetensors` file or a `torch.save` file (weights only) onto the CPU."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"cannot read {path}: it is a directory, not a checkpoint file")
    try:
        if path.stat().st_size == 0:
            raise CheckpointError(f"cannot read {path}: the file is empty")
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {_one_line(exc.strerror or exc)}") from None

    if path.suffix.lower() == ".safetensors":
        return _read_safetensors(path)
    return _read_torch(path)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {_one_line(exc.strerror or exc)}") from None
    except Exception as exc:  # SafetensorError is not exported under a stable name
        raise CheckpointError(f"cannot read {path}: not a valid safetensors file ({_one_line(exc)})") from None


def _read_torch(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            # Noise from torch about inputs we reject or explain ourselves.
            warnings.filterwarnings("ignore", message=r"Detected pickle protocol", category=UserWarning)
            warnings.filterwarnings("ignore", message=r".*looks like a TorchScript archive", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:  # the file itself could not be read, not a format problem
        raise CheckpointError(f"cannot read {path}: {_one_line(exc.strerror or exc)}") from None
    except Exception as exc:
        message = _ANSI_RE.sub("", str(exc))
        offending = _global_from_torch_message(message) if isinstance(exc, pickle.UnpicklingError) else None
        if offending is None and isinstance(exc, pickle.UnpicklingError):
            # torch's unpickler stops at opcodes it does not know (e.g. protocol 4's FRAME)
            # before it reaches a global; a static scan still names what the pickle imports.
            offending = _unsafe_globals_by_scan(path)
        if offending:
            raise CheckpointError(
                f"refusing to load {path}: it is a pickle that needs code to unpickle ({offending}); "
                "only plain tensor checkpoints are loaded (weights_only=True)"
            ) from None
        raise CheckpointError(f"cannot read {path}: not a PyTorch or safetensors checkpoint ({_torch_failure_reason(path, exc, message)})") from None


def _global_from_torch_message(message: str) -> str | None:
    for pattern in _TORCH_GLOBAL_RES:
        if match := pattern.search(message):
            return match.group(1).strip()
    return None


def _torch_failure_reason(path: Path, exc: BaseException, message: str) -> str:
    """A short, one-line explanation of why torch could not read `path`."""
    if "TorchScript archive" in message:
        return "it is a TorchScript archive, not a state dict"
    header = _read_head(path, 8)
    if not header.startswith(b"PK") and not header.startswith(b"\x80"):
        # Neither a zip (torch >= 1.6) nor a protocol-2+ pickle (legacy torch.save).
        return "unrecognised file header"
    if match := re.search(r"Unsupported operand (\d+)", message):
        code = int(match.group(1))
        opcode = pickletools.code2op.get(chr(code)) if code < 256 else None
        return f"unsupported pickle opcode {code}" + (f" ({opcode.name})" if opcode else "")
    if isinstance(exc, EOFError):
        return "the file ends early; is it truncated?"
    message = re.sub(r"^\s*\[enforce fail at [^\]]*\][\s.]*", "", message)  # c10's internal location
    first = re.split(r"(?<=[^.])\.(?:\s|$)|\n", message.strip(), maxsplit=1)[0]
    return _one_line(first or type(exc).__name__)


def _unsafe_globals_by_scan(path: Path) -> str | None:
    """Globals that the pickle in `path` would import and torch does not allowlist, or None."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
                if not names:
                    return None
                data = archive.read(names[0])
        else:
            data = path.read_bytes()
    except (OSError, zipfile.BadZipFile, RuntimeError):
        return None
    found = _pickle_globals(data)
    unsafe = [name for name in found if name not in _torch_allowed_globals()]
    return _preview(dict.fromkeys(unsafe), 3) if unsafe else None


def _pickle_globals(data: bytes) -> list[str]:
    """Names imported by the pickle streams at the start of `data`, found without running them.

    Legacy `torch.save` files are several pickles back to back followed by raw storage bytes, so
    scanning stops at the first stream that does not parse. Only well-formed dotted names count,
    which keeps random bytes from being mistaken for a malicious pickle.
    """
    names: list[str] = []
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        scan = _GlobalScan()
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                scan.feed(opcode.name, arg)
        except Exception:
            break
        names.extend(n for n in scan.names if _DOTTED_NAME_RE.match(n))
    return names


class _GlobalScan:
    """The globals one pickle stream imports, from its opcodes: GLOBAL/INST name them, and
    STACK_GLOBAL takes the last two strings pushed, which may come from the memo."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.strings: list[str] = []
        self.memo: dict[int, Any] = {}
        self.last: Any = None

    def feed(self, opcode: str, arg: Any) -> None:
        if opcode in ("GLOBAL", "INST"):
            self.names.append(str(arg).replace(" ", "."))
        elif opcode == "STACK_GLOBAL" and len(self.strings) >= 2:
            self.names.append(f"{self.strings[-2]}.{self.strings[-1]}")
        elif opcode in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
            self.memo[len(self.memo) if opcode == "MEMOIZE" else int(arg)] = self.last
        elif opcode in ("GET", "BINGET", "LONG_BINGET"):
            self.last = self.memo.get(int(arg))
            if isinstance(self.last, str):
                self.strings.append(self.last)
        elif isinstance(arg, str) and ("UNICODE" in opcode or "STRING" in opcode):
            self.last = arg
            self.strings.append(arg)
        else:
            self.last = None


def _torch_allowed_globals() -> set[str]:
    allowed: set[str] = set()
    try:
        from torch import _weights_only_unpickler

        allowed.update(_weights_only_unpickler._get_allowed_globals())
        allowed.update(_weights_only_unpickler._get_user_allowed_globals())
    except Exception:  # private API; without it every global counts as unsafe, which only errs on refusing
        pass
    return allowed


def _read_head(path: Path, size: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError:
        return b""


# --------------------------------------------------------------------------- canonicalising


def unwrap_state_dict(obj: Any, *, path: str | os.PathLike | None = None) -> tuple[dict[str, torch.Tensor], str | None]:
    """Reduce an official checkpoint object to a flat `name -> tensor` dict.

    Returns the state dict and the wrapper key it was found under (None for a plain state dict).
    """
    label = str(path) if path is not None else "checkpoint"
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{label} holds no model weights: expected a mapping of parameter names to tensors, got {type(obj).__name__}")

    wrapper_key: str | None = None
    state = obj
    for key in WRAPPER_KEYS:
        value = obj.get(key)
        if isinstance(value, Mapping) and len(value) > 0:
            wrapper_key, state = key, value
            break

    where = f"{label} [{wrapper_key!r}]" if wrapper_key else label
    if not state:
        raise CheckpointError(f"{where} is empty: it holds no model weights")
    bad = [key for key, value in state.items() if not isinstance(key, str) or not isinstance(value, torch.Tensor)]
    if bad:
        if wrapper_key is None:
            raise CheckpointError(
                f"{label} holds no model weights: expected a mapping of parameter names to tensors "
                f"(or one under {', '.join(WRAPPER_KEYS)}), found top-level keys: "
                f"{_preview([_show_key(k) for k in obj])}"
            )
        raise CheckpointError(
            f"{where} is not a flat mapping of parameter names to tensors: {_preview([f'{_show_key(k)} holds {type(state[k]).__name__}' for k in bad])}"
        )

    result: dict[str, torch.Tensor] = dict(state)
    # DataParallel / DistributedDataParallel save every key under `module.`.
    if all(key.startswith("module.") for key in result):
        result = {key[len("module.") :]: value for key, value in result.items()}
    return result, wrapper_key


def load_state_dict_file(path: str | os.PathLike) -> LoadedCheckpoint:
    """Read, unwrap and fingerprint the checkpoint at `path`."""
    path = Path(path)
    state_dict, wrapper_key = unwrap_state_dict(read_checkpoint(path), path=path)
    return LoadedCheckpoint(state_dict=state_dict, wrapper_key=wrapper_key, path=path, sha256=sha256_file(path))


# --------------------------------------------------------------------------- fitting


def load_strict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *, model_id: str, source: str) -> None:
    """Load `state_dict` into `model` strictly, explaining every mismatch in one line first.

    Floating-point dtypes may differ (an FP16 checkpoint loads into an FP32 model; values are
    copied and cast); non-floating checkpoint tensors for floating model tensors are mismatches.
    """
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    shapes: list[str] = []
    dtypes: list[str] = []
    for key, value in state_dict.items():
        target = expected.get(key)
        if target is None:
            continue
        if value.shape != target.shape:
            shapes.append(f"{key}: checkpoint {list(value.shape)} vs model {list(target.shape)}")
        elif target.is_floating_point() and not value.is_floating_point():
            # copy_ would silently turn e.g. int8-quantised weights into wrong float values.
            dtypes.append(f"{key}: checkpoint {value.dtype} vs model {target.dtype}")

    problems = [
        _count_and_list(missing, "missing key", "missing keys"),
        _count_and_list(unexpected, "unexpected key", "unexpected keys"),
        _count_and_list(shapes, "shape mismatch", "shape mismatches"),
        _count_and_list(dtypes, "dtype mismatch", "dtype mismatches"),
    ]
    problems = [p for p in problems if p]
    if problems:
        raise CheckpointError(f"{source} does not fit {model_id}: {', '.join(problems)}")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        # Custom load hooks can still object to what the key and shape checks allowed.
        raise CheckpointError(f"{source} does not fit {model_id}: {_one_line(exc)}") from None


def _count_and_list(items: list[str], singular: str, plural: str) -> str:
    if not items:
        return ""
    return f"{len(items)} {singular if len(items) == 1 else plural} ({_preview(items)})"


# --------------------------------------------------------------------------- downloading


def default_cache_dir() -> Path:
    """Where downloaded weights live: $DEPLOYTOOL_CACHE, else the XDG cache, else ~/.cache."""
    return user_cache_folder("DEPLOYTOOL_CACHE", "weights")


def fetch(
    url: str,
    *,
    filename: str,
    sha256: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    timeout: float = 30,
) -> Path:
    """Return the cached copy of `url` as `cache_dir/filename`, downloading it first if needed."""
    expected_sha = _checked_fetch_arguments(filename, sha256)
    target = (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / filename
    if target.is_file():
        _check_cached(target, expected_sha)
        return target
    _make_cache_dir(target.parent)
    with atomic_path(target) as part:
        received, digest, total = _download_or_fail(url, part, filename=filename, progress=progress, timeout=timeout)
        if total is not None and received != total:
            raise _download_failure(filename, url, f"got {received} of {total} bytes")
        if expected_sha is not None and digest != expected_sha:
            raise CheckpointError(
                f"downloaded {filename} from {url} does not match its expected sha256 "
                f"(got {digest[:12]}…, expected {expected_sha[:12]}…); the file was discarded"
            )
    return target


def _checked_fetch_arguments(filename: str, sha256: str | None) -> str | None:
    """The expected sha256 in lower case (None without one); ValueError for a file name that is
    not a plain name or a digest that is not 64 hex digits."""
    if not filename or Path(filename).name != filename or filename in (".", ".."):
        raise ValueError(f"filename must be a plain file name, got {filename!r}")
    expected_sha = sha256.strip().lower() if sha256 else None
    if expected_sha is not None and not _SHA256_RE.match(expected_sha):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    return expected_sha


def _check_cached(target: Path, expected_sha: str | None) -> None:
    if expected_sha is None:
        return
    actual = sha256_file(target)
    if actual != expected_sha:
        raise CheckpointError(
            f"cached {target} does not match its expected sha256 (got {actual[:12]}…, "
            f"expected {expected_sha[:12]}…); delete it and run again to download it anew"
        )


def _make_cache_dir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(
            f"cannot create the weights cache {folder} ({_one_line(exc.strerror or exc)}); set DEPLOYTOOL_CACHE to a writable directory"
        ) from None


def _download_failure(filename: str, url: str, reason: str) -> CheckpointError:
    return CheckpointError(f"cannot download {filename} from {url} ({reason}); download it yourself and pass --weights PATH")


def _download_or_fail(url: str, dest: Path, *, filename: str, progress: bool, timeout: float) -> tuple[int, str, int | None]:
    """`_download`, with every way it can fail turned into one CheckpointError."""
    try:
        return _download(url, dest, filename=filename, progress=progress, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise _download_failure(filename, url, f"HTTP {exc.code} {_one_line(exc.reason)}") from None
    except urllib.error.URLError as exc:
        raise _download_failure(filename, url, _one_line(getattr(exc.reason, "strerror", None) or exc.reason)) from None
    except TimeoutError:
        raise _download_failure(filename, url, f"no answer within {timeout:g} s") from None
    except Exception as exc:  # http.client and socket errors mid-stream, bad URLs
        raise _download_failure(filename, url, _one_line(exc) or type(exc).__name__) from None


def _download(url: str, dest: Path, *, filename: str, progress: bool, timeout: float) -> tuple[int, str, int | None]:
    """Stream `url` into `dest`; return bytes received, their sha256, and the announced size."""
    from tqdm import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    # A fresh opener reads the proxy environment at call time, not at first use in the process.
    opener = urllib.request.build_opener()
    digest = hashlib.sha256()
    received = 0
    with opener.open(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        with (
            open(dest, "wb") as out,
            tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=filename,
                file=sys.stderr,
                disable=not progress,
                dynamic_ncols=True,
            ) as bar,
        ):
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    return received, digest.hexdigest(), total


# --------------------------------------------------------------------------- helpers


def _preview(items: Iterable[str], limit: int = _PREVIEW) -> str:
    """`a, b, c` — at most `limit` names, then `, … +N more`."""
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f", … +{len(items) - limit} more" if len(items) > limit else "")


def _show_key(key: Any) -> str:
    return key if isinstance(key, str) else repr(key)


def _one_line(value: Any, limit: int = 200) -> str:
    text = " ".join(_ANSI_RE.sub("", str(value)).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
