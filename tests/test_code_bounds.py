"""Every function short and simple: at most 60 lines, in Python and C++, and in C++ a lizard
cyclomatic complexity of at most 10 (ruff's C901 holds Python's complexity at 10).

Model constructors (`__init__` of the classes in model_defs/) are exempt: they declare the
architecture, layer by layer. The allowlists are for a function being split on a branch while
the bound lands; on main they stay empty.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lizard

REPO = Path(__file__).resolve().parents[1]
PYTHON_ROOTS = ("deploytool", "model_defs", "export_configs", "scripts", "tests")
CPP_ROOTS = ("cpp/src", "cpp/include")
MAX_LINES = 60
MAX_CPP_COMPLEXITY = 10

LONG_PYTHON_ALLOWED: set[tuple[str, str]] = set()
CPP_ALLOWED: set[tuple[str, str]] = set()


def python_functions(path: Path) -> list[tuple[str, int, bool]]:
    """(qualified name, lines from `def` to its last line, whether it is a class's `__init__`)."""
    found = []

    def visit(node: ast.AST, prefix: str, in_class: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                found.append((prefix + child.name, child.end_lineno - child.lineno + 1, in_class and child.name == "__init__"))
                visit(child, f"{prefix}{child.name}.", False)
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.", True)
            else:
                visit(child, prefix, in_class)

    visit(ast.parse(path.read_text(), str(path)), "", False)
    return found


def long_python_functions() -> list[str]:
    too_long = []
    for root in PYTHON_ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            relative = path.relative_to(REPO).as_posix()
            for name, lines, is_constructor in python_functions(path):
                exempt = (is_constructor and root == "model_defs") or (relative, name) in LONG_PYTHON_ALLOWED
                if lines > MAX_LINES and not exempt:
                    too_long.append(f"{relative}: {name} has {lines} lines")
    return too_long


def cpp_functions_over_bounds() -> list[str]:
    over = []
    for root in CPP_ROOTS:
        for path in sorted(p for p in (REPO / root).rglob("*") if p.suffix in (".cpp", ".hpp")):
            relative = path.relative_to(REPO).as_posix()
            for function in lizard.analyze_file(str(path)).function_list:
                if (relative, function.name) in CPP_ALLOWED:
                    continue
                if function.length > MAX_LINES or function.cyclomatic_complexity > MAX_CPP_COMPLEXITY:
                    over.append(f"{relative}:{function.start_line}: {function.name} has {function.length} lines, complexity {function.cyclomatic_complexity}")
    return over


def test_no_python_function_is_longer_than_60_lines():
    assert long_python_functions() == []


def test_the_line_count_sees_nested_and_method_functions(tmp_path):
    source = tmp_path / "sample.py"
    body = "\n".join(f"            x{i} = {i}" for i in range(61))
    source.write_text(f"class A:\n    def __init__(self):\n        pass\n\n    def method(self):\n        def inner():\n{body}\n")
    assert [(name, lines) for name, lines, _ in python_functions(source)] == [("A.__init__", 2), ("A.method", 63), ("A.method.inner", 62)]
    assert [constructor for _, _, constructor in python_functions(source)] == [True, False, False]


def test_no_cpp_function_is_longer_than_60_lines_or_more_complex_than_10():
    assert cpp_functions_over_bounds() == []


def test_the_allowlists_name_functions_that_exist():
    """An allowlist entry whose function was split or renamed is removed, not left behind."""
    python = {(path, name) for path, name in LONG_PYTHON_ALLOWED if name in {n for n, _, _ in python_functions(REPO / path)}}
    cpp = {(path, name) for path, name in CPP_ALLOWED if name in {f.name for f in lizard.analyze_file(str(REPO / path)).function_list}}
    assert python == LONG_PYTHON_ALLOWED and cpp == CPP_ALLOWED
