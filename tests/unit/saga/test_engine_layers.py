"""`saga/` is a generic engine: it imports none of the application's packages (not even inside functions),
names no support concept in its code, and no module of `saga/`, `actors/` or `gateway/` is over 400 lines.

The words are checked in identifiers and string literals, not in comments and docstrings (which may say
"in the order written"). One literal is allowed: `"escalated"`, a saga outcome and status persisted in the
saga log and `saga_state`, whose name is part of the stored format."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

from tests.support import REPO as ROOT

SAGA = sorted((ROOT / "saga").rglob("*.py"))
APPLICATION = ("actors", "gateway", "observability", "supportmesh", "mocks")
DOMAIN_WORDS = re.compile(r"refund|customer|sentiment|escalat|aggregator|ecommerce|(?<![a-z])orders?(?![a-z])",
                          re.IGNORECASE)
ALLOWED_LITERALS = frozenset({'"escalated"'})
MAX_LINES = 400


def _imported(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):  # every node: imports inside functions count too
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _docstrings(tree: ast.AST) -> set[int]:
    """Line numbers where docstrings start."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
                    first.value.value, str):
                lines.add(first.lineno)
    return lines


@pytest.mark.parametrize("path", SAGA, ids=lambda p: str(p.relative_to(ROOT)))
def test_saga_imports_nothing_of_the_application(path: Path) -> None:
    imported = _imported(ast.parse(path.read_text()))
    assert not {name for name in imported if name.split(".")[0] in APPLICATION}


@pytest.mark.parametrize("path", SAGA, ids=lambda p: str(p.relative_to(ROOT)))
def test_saga_names_no_support_concept(path: Path) -> None:
    source = path.read_text()
    docstrings = _docstrings(ast.parse(source))
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME or (tok.type == tokenize.STRING and tok.start[0] not in docstrings
                                         and tok.string not in ALLOWED_LITERALS):
            if DOMAIN_WORDS.search(tok.string):
                found.append(f"{tok.start[0]}: {tok.string}")
    assert not found


@pytest.mark.parametrize("package", ["saga", "actors", "gateway"])
def test_no_module_is_over_400_lines(package: str) -> None:
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / package).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long
