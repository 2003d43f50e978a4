"""The wheel holds every module of the packages it ships: a subpackage added later cannot be
left out of it (the Triton server and runtime installs run the wheel, not the source)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.helpers import load_script

wheel_source = load_script("wheel_source")


def shipped_sources(repo: Path) -> set[str]:
    with open(repo / "pyproject.toml", "rb") as handle:
        import tomllib

        roots = wheel_source.package_roots(tomllib.load(handle))
    return {str(path.relative_to(repo)) for root in roots for path in (repo / root).rglob("*.py") if "__pycache__" not in path.parts}


def test_the_wheel_holds_every_python_file_of_its_package_roots(tmp_path):
    source = wheel_source.copy_wheel_source(tmp_path / "source")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("deploytool-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = shipped_sources(wheel_source.REPO)
    assert "deploytool/build/precision/search.py" in expected  # a subpackage, the case that was missed
    assert sorted(expected - names) == []
    assert {"deploytool/schemas/manifest.schema.json", "deploytool/py.typed"} <= names
