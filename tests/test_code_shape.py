"""The package stays readable: no function longer than 80 lines or with more than 10 parameters, and no function
rebinds state outside itself (`nonlocal`, `global`). The limits of the redesign that made the run a few objects."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "captioning"


def functions() -> list[tuple[str, ast.FunctionDef]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}", node))
    return found


def parameters(node: ast.FunctionDef) -> int:
    a = node.args
    n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
    return n - bool(a.args and a.args[0].arg in ("self", "cls"))


def test_no_function_is_long_or_takes_many_parameters():
    assert len(functions()) > 500  # the whole package was read
    long = [f"{where}: {node.end_lineno - node.lineno + 1} lines" for where, node in functions()
            if node.end_lineno - node.lineno + 1 > 80]
    wide = [f"{where}: {parameters(node)} parameters" for where, node in functions() if parameters(node) > 10]
    assert not long and not wide, long + wide


def test_nothing_rebinds_outer_state():
    rebinding = [f"{where}: {type(statement).__name__.lower()}" for where, node in functions()
                 for statement in ast.walk(node) if isinstance(statement, (ast.Nonlocal, ast.Global))]
    assert not rebinding, rebinding
