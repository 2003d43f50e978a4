"""Building cpp/ for the tests: whether the tools are there, and one configure + build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import exclusive

REPO = Path(__file__).resolve().parents[2]


def missing_build_tools() -> list[str]:
    return [tool for tool in ("cmake", "g++") if shutil.which(tool) is None]


def build_cpp(build: Path) -> None:
    """cpp/ configured (Release) and built in `build`, incrementally; fails the test on an error.
    One process at a time: pytest-xdist's workers each build the session's build folder."""
    with exclusive(build.with_name(f"{build.name}.lock")):
        for command in (
            # this interpreter's `openvino` package (when installed) is where CMake finds OpenVINO's C++ SDK
            ["cmake", "-S", str(REPO / "cpp"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", f"-DPython3_EXECUTABLE={sys.executable}"],
            ["cmake", "--build", str(build), "-j", str(min(4, os.cpu_count() or 1))],
        ):
            done = subprocess.run(command, capture_output=True, text=True)
            assert done.returncode == 0, f"{' '.join(command)} failed:\n{(done.stdout + done.stderr)[-4000:]}"
