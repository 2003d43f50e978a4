"""Atomic file writes: a crash or a bad input never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from deploytool.errors import DeployError

# A longer name is refused by common file systems (ext4, XFS, APFS, NTFS) anyway.
MAX_NAME_BYTES = 255


def inside(parent: str | os.PathLike, name: str, what: str = "name") -> Path:
    """`parent / name`, refused in one line unless `name` is one plain entry of `parent` (not
    empty, `.`, `..`, absolute, with a separator or NUL, or too long for a file system)."""
    parent = Path(parent)
    shown = name if len(name) <= 80 else f"{name[:40]}…({len(name)} characters)"
    if not name or "\0" in name or name in (".", ".."):
        raise DeployError(f"{what} {shown!r} cannot name a file in {parent}")
    if len(os.fsencode(name)) > MAX_NAME_BYTES:
        raise DeployError(f"{what} {shown!r} is longer than the {MAX_NAME_BYTES} bytes a file name may have")
    path = parent / name
    # abspath, not resolve: a symlink at `path` is replaced, never followed
    if os.path.dirname(os.path.abspath(path)) != os.path.abspath(parent):
        raise DeployError(f"{what} {shown!r} would leave {parent}: it must be one name, without '/'")
    return path


def make_folder(folder: str | os.PathLike, what: str = "folder") -> Path:
    """`folder` made with its parents where missing; refused in one line where it cannot be (a
    file in its way, no permission, a read-only file system)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeployError(f"cannot create the {what} {folder}: {exc.strerror or exc}") from None
    return folder


def _create_beside(path: Path) -> Path:
    """A new empty file beside `path` with the mode any new file gets: the kernel applies the
    umask in force to 0o666, so the umask is never changed (other threads may be writing)."""
    while True:
        candidate = path.parent / f".{path.name}.{secrets.token_hex(6)}.part{path.suffix}"
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise DeployError(f"cannot write {path}: {exc.strerror or exc}") from None
        os.close(fd)
        return candidate


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename. A
    folder that cannot be made or written, or a `path` that cannot be replaced (a folder), is
    refused in one line, before the work where possible (the temporary file is made first)."""
    path = Path(path)
    make_folder(path.parent, "output folder")
    tmp_path = _create_beside(path)
    try:
        yield tmp_path
        try:
            os.replace(tmp_path, path)
        except OSError as exc:
            raise DeployError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def user_cache_folder(variable: str, name: str) -> Path:
    """A cache's folder: the environment `variable`, else the XDG cache's deploytool/`name`,
    else ~/.cache/deploytool/`name`."""
    if explicit := os.environ.get(variable):
        return Path(explicit).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "deploytool" / name
    return Path.home() / ".cache" / "deploytool" / name


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
