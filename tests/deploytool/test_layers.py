"""The package's layers, checked from the source: which layer may import which.

runtime imports nothing from build, verify, serving or cli; serving imports runtime only; build
imports runtime; verify imports build and runtime; cli imports them all. Every import counts,
function-body imports included. The runtime also imports no heavy dependency when it is imported
(those go inside the functions that need them).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import deploytool

PACKAGE = Path(deploytool.__file__).parent
LAYERS = ("runtime", "build", "verify", "serving", "cli")
# {layer: the layers it may import}; every layer may import deploytool.errors and the package root
# (neither is a layer)
ALLOWED = {
    "runtime": {"runtime"},
    "serving": {"serving", "runtime"},
    "build": {"build", "runtime"},
    "verify": {"verify", "build", "runtime"},
    "cli": {"cli", "runtime", "build", "verify", "serving"},
}
HEAVY = {"torch", "onnx", "onnxsim", "spandrel", "onnxconverter_common", "safetensors", "PIL"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.AST, module: str, *, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in the tree, relative ones resolved."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from deploytool import build` imports the subpackage deploytool.build
            found += [(node.lineno, f"{base}.{alias.name}" if base == "deploytool" else base) for alias in node.names]
    return found


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "deploytool" and len(parts) > 1 else None


def violations(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """What `module` (in layer deploytool.<layer>) imports that its layer may not."""
    own = layer_of(module)
    if own not in ALLOWED:
        return []
    found = []
    for line, target in imported_modules(ast.parse(source), module, is_package=is_package):
        layer = layer_of(target)
        if layer in LAYERS and layer not in ALLOWED[own]:
            found.append(f"{module}:{line} imports {target}")
    return found


def import_time_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """Imports that run when the module is imported: not inside functions, nor under `if TYPE_CHECKING`."""
    found = []

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                found.extend((node.lineno, alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level:
                found.append((node.lineno, node.module or ""))
            visit(ast.iter_child_nodes(node))

    visit(tree.body)
    return found


def package_modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_every_layer_imports_only_the_layers_below_it():
    found = []
    for path in package_modules():
        found += violations(path.read_text(), module_name(path), is_package=path.name == "__init__.py")
    assert not found, "layer rule broken:\n" + "\n".join(found)


def test_the_runtime_and_serving_import_no_heavy_dependency_at_import_time():
    found = []
    for path in package_modules():
        if layer_of(module_name(path)) not in ("runtime", "serving"):
            continue
        for line, target in import_time_imports(ast.parse(path.read_text())):
            if target.split(".")[0] in HEAVY:
                found.append(f"{module_name(path)}:{line} imports {target} at import time")
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        ("def f():\n    from deploytool.build import networks\n", "deploytool.runtime.backends", ["deploytool.runtime.backends:2 imports deploytool.build"]),
        ("from deploytool import verify\n", "deploytool.build.export", ["deploytool.build.export:1 imports deploytool.verify"]),
        ("import deploytool.cli\n", "deploytool.serving.client", ["deploytool.serving.client:1 imports deploytool.cli"]),
        ("from ..build import networks\n", "deploytool.serving.client", ["deploytool.serving.client:1 imports deploytool.build"]),
        ("from deploytool.runtime import images\nfrom deploytool.errors import DeployError\n", "deploytool.build.export", []),
        ("from deploytool.serving import protocol\n", "deploytool.cli.serve", []),
    ],
)
def test_the_checker_finds_what_breaks_the_rule(source, module, expected):
    assert violations(source, module) == expected


def test_the_import_time_scan_skips_function_bodies_and_type_checking():
    tree = ast.parse("import numpy\nif TYPE_CHECKING:\n    import torch\ndef f():\n    import onnx\ntry:\n    import spandrel\nexcept ImportError:\n    pass\n")
    assert import_time_imports(tree) == [(1, "numpy"), (7, "spandrel")]
