"""The declared lower bounds of deploytool's light dependencies, tested: CI's floor check.

    .venv/bin/python scripts/floor_check.py [--venv build/floors-venv]

`pyproject.toml` promises that deploytool works with, e.g., `numpy>=1.24`; this makes a separate
environment holding the lowest release of each light dependency that its floor allows, and runs
a smoke subset of the tests there (a tiny export, verify, run on images, image and manifest
reading, the client against a real Triton server). A floor that no longer installs here (no
wheel for this Python) fails the check with the release to raise it to.

The heavy dependencies stay at the versions `.venv` tests (torch, onnx, onnxsim and the test
tools): a .pth file puts `.venv`'s site-packages after the environment's own, so the floors
shadow `.venv`'s newer copies and everything else comes from `.venv`. The FP16 converter and the
parity references (onnxconverter-common, spandrel) are pure Python and installed at their floors
too, without their dependencies (they would pull torch in again). onnxruntime-gpu's floor is
checked with the CPU wheel `onnxruntime` of the same release: the same Python API, 13 MB instead
of 290 MB, and the CPU is all CI has.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
# installed at their floors with their dependencies: {declared name: the package installed}
LIGHT = {
    "numpy": "numpy",
    "opencv-python-headless": "opencv-python-headless",
    "onnxruntime-gpu": "onnxruntime",
    "jsonschema": "jsonschema",
    "click": "click",
    "tqdm": "tqdm",
    "pillow": "pillow",
    "safetensors": "safetensors",
}
# pure Python, installed at their floors without dependencies
PURE = ("onnxconverter-common", "spandrel")
# {installed package: the module whose __version__ says which release Python imports}
MODULES = {
    "numpy": "numpy",
    "opencv-python-headless": "cv2",
    "onnxruntime": "onnxruntime",
    "jsonschema": "jsonschema",
    "click": "click",
    "tqdm": "tqdm",
    "pillow": "PIL",
    "safetensors": "safetensors",
    "onnxconverter-common": "onnxconverter_common",
    "spandrel": "spandrel",
}
SMOKE = [
    "tests/deploytool/cli/test_cli.py::test_verify_and_run",  # export (CLI), verify, run on images
    "tests/deploytool/cli/test_cli.py::test_run_refuses_bad_images",
    "tests/deploytool/runtime/test_images.py",
    "tests/deploytool/runtime/test_manifest.py",
    "tests/deploytool/runtime/test_png.py",
    "tests/deploytool/runtime/test_tiling.py",
    "tests/deploytool/serving/test_client.py",
    # the client against a real server. Not the tests that compare the server's images with a
    # local run byte for byte: the server runs .venv-serve's ONNX Runtime, and another release
    # (the floor's, here) may round a sample one level the other way
    "tests/deploytool/serving/test_server.py::test_a_request_the_model_cannot_take_is_refused_with_the_servers_reason",
    "tests/deploytool/serving/test_server.py::test_unreachable_server_and_unknown_model_are_one_line",
]


class FloorError(Exception):
    """A floor that cannot be checked or does not hold, in one line."""


def declared_floors(pyproject: Path = REPO / "pyproject.toml") -> dict[str, Version]:
    """{declared name: its lower bound} of the checked dependencies: the runtime's and the export extra's."""
    with open(pyproject, "rb") as handle:
        project = tomllib.load(handle)["project"]
    dependencies = [Requirement(text) for text in [*project["dependencies"], *project.get("optional-dependencies", {}).get("export", [])]]
    floors = {}
    for requirement in dependencies:
        if requirement.name in LIGHT or requirement.name in PURE:
            lower = [Version(spec.version) for spec in requirement.specifier if spec.operator in (">=", "==", "~=")]
            if not lower:
                raise FloorError(f"{requirement} declares no lower bound: add one (>=) to pyproject.toml")
            floors[requirement.name] = max(lower)
    missing = sorted((set(LIGHT) | set(PURE)) - set(floors))
    if missing:
        raise FloorError(f"pyproject.toml no longer declares {', '.join(missing)}: update LIGHT/PURE in {Path(__file__).name}")
    return floors


def lowest_release(floor: Version, available: list[str]) -> str | None:
    """The lowest final release at or above `floor` (4.8 -> 4.8.0.76 when that is the first 4.8 on the index)."""
    versions = sorted(Version(v) for v in available if not Version(v).is_prerelease and Version(v) >= floor)
    return str(versions[0]) if versions else None


def available_releases(python: Path, package: str) -> list[str]:
    done = subprocess.run([str(python), "-m", "pip", "index", "versions", package], capture_output=True, text=True, timeout=120)
    match = re.search(r"Available versions:\s*(.+)", done.stdout)
    if done.returncode != 0 or not match:
        raise FloorError(f"cannot list the releases of {package} on the package index: {(done.stderr.strip().splitlines() or ['no answer'])[-1]}")
    return [v.strip() for v in match.group(1).split(",")]


def pip(python: Path, *args: str) -> None:
    done = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "-q", *args], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        last = [line for line in done.stderr.splitlines() if line.strip()][-3:]
        raise FloorError(f"pip {' '.join(args)} failed: {' / '.join(last)}")


def say(message: str) -> None:
    print(f"floor check: {message}", file=sys.stderr, flush=True)


def fresh_venv(venv: Path) -> Path:
    """An empty environment at `venv` (removed first if there), made from the base interpreter; its python."""
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True, timeout=300)
    return venv / "bin" / "python"


def make_environment(venv: Path, pins: dict[str, str]) -> Path:
    """`venv` from scratch: the floors first, then the link to .venv's site-packages."""
    python = fresh_venv(venv)
    light = [f"{name}=={version}" for name, version in pins.items() if name not in PURE]
    try:
        pip(python, "install", "--only-binary=:all:", *light)
    except FloorError as exc:
        raise FloorError(f"{exc} (a floor without a wheel for Python {sys.version_info[0]}.{sys.version_info[1]} must be raised to one that has)") from None
    pip(python, "install", "--no-deps", *[f"{name}=={pins[name]}" for name in PURE])
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True)
    # appended after the environment's own site-packages: what is installed here shadows .venv
    (Path(own.stdout.strip()) / "zz_deploytool_tested_versions.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def imported_versions(python: Path) -> dict[str, str]:
    code = "import importlib, json, sys; print(json.dumps({p: importlib.import_module(m).__version__ for p, m in json.loads(sys.argv[1]).items()}))"
    done = subprocess.run([str(python), "-c", code, json.dumps(MODULES)], capture_output=True, text=True, timeout=300, cwd=REPO)
    if done.returncode != 0:
        raise FloorError(f"the floor environment cannot import its packages: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=REPO / "build" / "floors-venv", help="where to (re)create the environment")
    args = parser.parse_args()
    started = time.perf_counter()
    try:
        floors = declared_floors()
        pins = {}
        for declared, floor in floors.items():
            package = LIGHT.get(declared, declared)
            release = lowest_release(floor, available_releases(Path(sys.executable), package))
            if release is None:
                raise FloorError(f"no release of {package} at or above its floor {floor}")
            pins[package] = release
        say("installing " + ", ".join(f"{name}=={version}" for name, version in pins.items()) + f" into {args.venv}")
        python = make_environment(args.venv, pins)
        versions = imported_versions(python)
        # compared as versions: opencv's cv2 says 4.8.0 for the release 4.8.0.76
        leaked = {p: v for p, v in versions.items() if not pins[p].startswith(v) and Version(v) != Version(pins[p])}
        if leaked:
            raise FloorError(f"the floor environment imports other releases than its floors: {leaked}")
        say(f"environment ready in {time.perf_counter() - started:.0f} s; running the smoke tests")
    except FloorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    env = {"PYTHONPATH": str(REPO), "PATH": f"{python.parent}:/usr/local/bin:/usr/bin:/bin"}
    done = subprocess.run([str(python), "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", *SMOKE], cwd=REPO, env=env)
    say(f"{'passed' if done.returncode == 0 else 'FAILED'} in {time.perf_counter() - started:.0f} s (floors: {', '.join(f'{k} {v}' for k, v in pins.items())})")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
