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
