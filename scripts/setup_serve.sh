#!/usr/bin/env bash
# Create .venv-serve (once) and install `deploytool[serve,openvino]` into it from this source: the
# environment the Triton server's Python models run in (`deploytool serve` finds it beside the
# source). It is separate from .venv because the nvidia-pytriton wheel's Python backend is built
# against numpy 1.x, and deploytool's own environment may hold numpy 2. deploytool is installed
# from a wheel, not editable: Triton's embedded Python ignores .pth files. An installed copy goes
# stale when the source changes (`deploytool serve` then refuses); run this again to reinstall.
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
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The wheel is built from a copy of what it packages (scripts/wheel_source.py says why)
"$base_python" scripts/wheel_source.py "$work/source"
.venv-serve/bin/python -m pip install --quiet --upgrade pip
.venv-serve/bin/python -m pip wheel --quiet --no-deps -w "$work/dist" "$work/source"
wheel="$(echo "$work"/dist/deploytool-*.whl)"
# the CPU onnxruntime wheel installs into the GPU one's `onnxruntime` folder: never both
.venv-serve/bin/python -m pip uninstall --quiet --yes onnxruntime
# openvino: the openvino-bf16 Triton runtime's models run deploytool's OpenVINO backend
.venv-serve/bin/python -m pip install --quiet "$wheel[serve,openvino]"
# the same version number over changed sources: pip would keep the installed copy
.venv-serve/bin/python -m pip install --quiet --no-deps --force-reinstall "$wheel"
