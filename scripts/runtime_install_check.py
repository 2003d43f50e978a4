"""deploytool's wheel without extras runs an export: CI's runtime-install check.

    .venv/bin/python scripts/runtime_install_check.py [--venv build/runtime-venv] [--export DIR] [--json]

Builds the wheel (`pip wheel --no-deps .`), installs it WITHOUT extras into a fresh environment
(the runtime dependencies only), checks that torch, onnx, onnxsim and spandrel are absent there,
and runs that environment's `deploytool run --backend ort` on an export made beforehand by .venv
(a small random-weights export unless --export names one); its PNG must equal, byte for byte,
what .venv's `deploytool run` writes. Prints the size of the runtime environment's site-packages
against .venv's (with the ONNX Runtime wheel the runtime declares, and with the CPU wheel where
.venv-serve holds one).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from floor_check import REPO, FloorError, fresh_venv, pip

EXPORT_EXTRA = ("torch", "onnx", "onnxsim", "spandrel")
# a small model at a small tile: the check is about the install, not the model
EXPORT_ARGS = ("swinir-s-x2", "--random-init", "--no-fp16", "--tile", "32")


def say(message: str) -> None:
    print(f"runtime install check: {message}", file=sys.stderr, flush=True)


def run(*args: str | Path, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=900, **kwargs)
    if done.returncode != 0:
        last = [line for line in done.stderr.splitlines() if line.strip()][-3:]
        raise FloorError(f"{Path(str(args[0])).name} {' '.join(str(a) for a in args[1:3])} ... failed: {' / '.join(last)}")
    return done


def site_packages(python: Path) -> Path:
    return Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())


def size_bytes(folder: Path) -> int:
    """What `du` counts: the blocks of every file under `folder`."""
    return sum(p.lstat().st_blocks * 512 for p in folder.rglob("*"))


def mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


def build_wheel(into: Path) -> Path:
    # without build isolation: setuptools comes from .venv (the test extra), no download
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", into, REPO)
    (wheel,) = into.glob("deploytool-*.whl")
    return wheel


def check_extra_absent(python: Path) -> None:
    code = "import importlib.util, json; print(json.dumps([m for m in json.loads(input()) if importlib.util.find_spec(m)]))"
    present = json.loads(run(python, "-c", code, input=json.dumps(EXPORT_EXTRA)).stdout)
    if present:
        raise FloorError(f"the runtime install holds {', '.join(present)}: a runtime dependency pulls in the export extra")


def make_export(out: Path, work: Path) -> Path:
    say(f"exporting {EXPORT_ARGS[0]} (random weights) with .venv into {out}")
    run(sys.executable, "-m", "deploytool", "export", *EXPORT_ARGS, "--out", out, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=work)
    return out


def restored_bytes(deploytool_command: list[str | Path], export: Path, image: Path, out: Path, env: dict[str, str], cwd: Path) -> bytes:
    run(*deploytool_command, "run", export, image, "-o", out, "--backend", "ort", env=env, cwd=cwd)
    return out.read_bytes()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=REPO / "build" / "runtime-venv", help="where to (re)create the runtime environment")
    parser.add_argument("--export", type=Path, help="an export made beforehand (default: make a small one)")
    parser.add_argument("--json", action="store_true", help="print the sizes as JSON")
    args = parser.parse_args()
    started = time.perf_counter()
    import cv2
    import numpy as np

    try:
        with tempfile.TemporaryDirectory(prefix="runtime-install-") as scratch:
            work = Path(scratch)
            say("building the wheel")
            wheel = build_wheel(work / "dist")
            say(f"installing {wheel.name} without extras into {args.venv}")
            python = fresh_venv(args.venv)
            pip(python, "install", "--only-binary=:all:", str(wheel))
            check_extra_absent(python)
            export = args.export or make_export(work / "export", work)
            image = work / "input.png"
            cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 256, (45, 67, 3), dtype=np.uint8))
            # outside the repository and without PYTHONPATH: the installed package, not the source tree
            clean_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            slim = restored_bytes([python.parent / "deploytool"], export, image, work / "runtime.png", clean_env, work)
            full = restored_bytes([sys.executable, "-m", "deploytool"], export, image, work / "full.png", {**os.environ, "PYTHONPATH": str(REPO)}, work)
            if slim != full:
                raise FloorError("the runtime install's `deploytool run` wrote other PNG bytes than .venv's")
            sizes = runtime_sizes(python)
    except FloorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    say(f"passed in {time.perf_counter() - started:.0f} s: the wheel without extras ran the export, same PNG bytes as .venv")
    if args.json:
        print(json.dumps(sizes, indent=2))
    else:
        print(f"site-packages, runtime install (onnxruntime-gpu): {mib(sizes['runtime'])}")
        if "runtime_with_cpu_onnxruntime" in sizes:
            print(f"site-packages, runtime install with CPU onnxruntime instead: {mib(sizes['runtime_with_cpu_onnxruntime'])}")
        print(f"site-packages, full .venv: {mib(sizes['full'])} (runtime install: {sizes['runtime'] / sizes['full']:.2f}x)")
    return 0


def runtime_sizes(python: Path) -> dict[str, int]:
    """Bytes of site-packages: the runtime install's, .venv's, and the runtime's with the CPU ONNX
    Runtime wheel instead of the GPU one (its installed size read from .venv-serve, where that holds it)."""
    runtime_packages = site_packages(python)
    sizes = {"runtime": size_bytes(runtime_packages), "full": size_bytes(Path(sysconfig.get_paths()["purelib"]))}
    serve_python = REPO / ".venv-serve" / "bin" / "python"
    if serve_python.is_file():
        serve_packages = site_packages(serve_python)
        cpu_ort = serve_packages / "onnxruntime"
        gpu_ort = runtime_packages / "onnxruntime"
        # both wheels install the `onnxruntime` folder: only the CPU wheel's metadata says which it is
        if any(serve_packages.glob("onnxruntime-*.dist-info")) and gpu_ort.is_dir():
            sizes["runtime_with_cpu_onnxruntime"] = sizes["runtime"] - size_bytes(gpu_ort) + size_bytes(cpu_ort)
    return sizes


if __name__ == "__main__":
    sys.exit(main())
