"""The C++ build shared by the tests of cpp/."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cpp.build_tools import REPO, build_cpp, missing_build_tools


@pytest.fixture(scope="session")
def cpp_build() -> Path:
    """cpp/ configured and built once per session (incrementally across sessions) in build/cpp-pytest."""
    missing = missing_build_tools()
    if missing:
        pytest.skip(f"{', '.join(missing)} not on PATH: the C++ runtime cannot be built (scripts/setup.sh installs them as root)")
    build = REPO / "build" / "cpp-pytest"
    build_cpp(build)
    return build
