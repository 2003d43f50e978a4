"""Copy what deploytool's wheel packages (pyproject.toml, the README and the package roots that
`[tool.setuptools.packages.find]` includes) into a fresh folder, to build the wheel there.

setuptools leaves build/ and *.egg-info beside the sources it builds, and a build/lib left from
an earlier build would keep modules the source has since deleted: building from a copy avoids both.

    python scripts/wheel_source.py INTO
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def package_roots(pyproject: dict) -> list[str]:
    """The top-level folders the wheel's packages live in ("deploytool*" -> "deploytool")."""
    return sorted({pattern.rstrip("*").split(".")[0] for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]})


def copy_wheel_source(into: Path, repo: Path = REPO) -> Path:
    with open(repo / "pyproject.toml", "rb") as handle:
        pyproject = tomllib.load(handle)
    into.mkdir(parents=True)
    for name in ("pyproject.toml", pyproject["project"]["readme"]):
        shutil.copy2(repo / name, into / name)
    for root in package_roots(pyproject):
        shutil.copytree(repo / root, into / root, ignore=shutil.ignore_patterns("__pycache__"))
    return into


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/wheel_source.py INTO")
    copy_wheel_source(Path(sys.argv[1]))
