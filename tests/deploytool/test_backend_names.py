"""Nothing outside deploytool/runtime/backends decides by backend name: no comparison (`==`,
`!=`, `in`, `not in`) has a backend's or a Triton runtime's name as a string literal, or one of
the registry's name constants (ORT, TRITON_TRT, ...), among its operands; callers ask the registry
and the descriptors instead."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import deploytool
from deploytool.runtime import backends

PACKAGE = Path(deploytool.__file__).parent
REGISTRY_DIR = PACKAGE / "runtime" / "backends"
NAMES = {*backends.names(), *(runtime.name for runtime in backends.triton_runtimes())}
# the registry's module-level constants whose value is such a name
CONSTANTS = {attr for attr in dir(backends) if attr.isupper() and isinstance(getattr(backends, attr), str) and getattr(backends, attr) in NAMES}


def _leaves(node: ast.expr) -> list[ast.expr]:
    return list(node.elts) if isinstance(node, ast.Tuple | ast.List | ast.Set) else [node]


def _names_a_backend(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in NAMES
    if isinstance(node, ast.Name):
        return node.id in CONSTANTS
    return isinstance(node, ast.Attribute) and node.attr in CONSTANTS


def name_comparisons(source: str) -> list[int]:
    """Lines of comparisons that have a backend name among their operands."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [leaf for operand in (node.left, *node.comparators) for leaf in _leaves(operand)]
            if any(_names_a_backend(leaf) for leaf in operands):
                found.append(node.lineno)
    return found


@pytest.mark.parametrize(
    "source",
    [
        'if backend == "ort-fp16": pass',
        'if name in ("torch", "original"): pass',
        "if candidate not in [ORT, OPENVINO]: pass",
        "if options.runtime == backends.TRITON_TRT: pass",
        'if runtime != "python-ort": pass',
    ],
)
def test_the_scan_finds_a_comparison_with_a_backend_name(source):
    assert name_comparisons(source) == [1]


@pytest.mark.parametrize(
    "source",
    [
        'facts = {"torch": "2.5"}',  # a package name used as a key, not compared
        'for name in ("torch", "onnx"): pass',
        "if registry.get(name).takes_device: pass",
        'if method == "bicubic": pass',
    ],
)
def test_the_scan_leaves_other_code_alone(source):
    assert name_comparisons(source) == []


def test_no_module_outside_the_registry_compares_backend_names():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if REGISTRY_DIR in path.parents:
            continue
        found += [f"{path.relative_to(PACKAGE.parent)}:{line}" for line in name_comparisons(path.read_text())]
    assert not found, f"ask the backend registry (deploytool.runtime.backends) instead of comparing names: {', '.join(found)}"
