#!/usr/bin/env bash
# Create .venv-serve (once) with the packages of deploytool's `serve` extra: the environment the
# Triton server's Python models run in (`deploytool serve` finds it beside the source). It is
# separate from .venv because the nvidia-pytriton wheel's Python backend is built against numpy
# 1.x, and deploytool's own environment may hold numpy 2. Safe to run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# the base interpreter of .venv (the stub embeds its libpython), else python3
base_python=python3
if [ -x .venv/bin/python ]; then
    base_python="$(.venv/bin/python -c 'import sys; print(sys._base_executable)')"
fi
if [ ! -x .venv-serve/bin/python ]; then
    "$base_python" -m venv .venv-serve
fi
requirements="$(mktemp)"
trap 'rm -f "$requirements"' EXIT
"$base_python" - >"$requirements" <<'PY'
import tomllib
with open("pyproject.toml", "rb") as handle:
    print("\n".join(tomllib.load(handle)["project"]["optional-dependencies"]["serve"]))
PY
.venv-serve/bin/python -m pip install --quiet --upgrade pip
.venv-serve/bin/python -m pip install --quiet -r "$requirements"
