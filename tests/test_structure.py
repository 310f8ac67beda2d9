"""The shape the codebase keeps: small files, small functions, in the product packages.

A file that grows past 400 lines or a function past 60 has taken on a second
idea; split it by idea (docs/architecture.md says where each concept lives).
A builder that is one literal manifest may be longer: it is listed here by name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCT_FOLDERS = ("api", "calibration", "runtime", "operator", "evaluation", "distillation")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
ONE_LITERAL_BUILDERS: frozenset[str] = frozenset()


def _sources() -> list[Path]:
    return sorted(path for folder in PRODUCT_FOLDERS for path in (ROOT / folder).rglob("*.py"))


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES and node.name not in ONE_LITERAL_BUILDERS:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    return found


@pytest.mark.parametrize("path", _sources(), ids=lambda path: str(path.relative_to(ROOT)))
def test_no_product_file_holds_more_than_one_idea(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_FILE_LINES, f"{path.relative_to(ROOT)} has {lines} lines; split it by idea"
    assert _long_functions(path) == []


PACKAGE_OF_FOLDER = {folder: f"kascade.{folder}" for folder in PRODUCT_FOLDERS} | {"kascade": "kascade"}


def _imported_modules(path: Path) -> set[str]:
    """Every `kascade.*` module a file imports, at the top or inside a function (a lazy import is a dependency too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("kascade.")}


def _package_of(module: str) -> str:
    """The product package a module belongs to: `kascade.runtime.escalation.log` -> `kascade.runtime`."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[1] in PRODUCT_FOLDERS else "kascade"


def _package_imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {package: set() for package in PACKAGE_OF_FOLDER.values()}
    folders = {folder: ROOT / folder for folder in PRODUCT_FOLDERS} | {"kascade": ROOT / "kascade"}
    for folder, source_root in folders.items():
        for path in source_root.rglob("*.py"):
            if folder == "kascade" and "testing" in path.relative_to(source_root).parts:
                continue  # the test doubles import everything they stand in for
            package = PACKAGE_OF_FOLDER[folder]
            graph[package] |= {_package_of(module) for module in _imported_modules(path)} - {package}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle between packages, as the path that closes it; [] when there is none."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str]:
        state[node] = "open"
        for other in sorted(graph.get(node, ())):
            if state.get(other) == "open":
                return [*path[path.index(other) :], other] if other in path else [node, other]
            if other not in state and (found := visit(other, [*path, other])):
                return found
        state[node] = "done"
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return []


def test_the_packages_import_each_other_without_a_cycle() -> None:
    assert _cycle(_package_imports()) == []


def test_the_calibration_core_needs_only_the_api() -> None:
    """The bounds, the selection, the online step and agreement: what the router and the operator share."""
    assert _package_imports()["kascade.calibration"] <= {"kascade.api"}
