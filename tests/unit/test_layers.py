"""The top-level packages import one another in one direction only: a declared order of layers, each importing
only the layers below it, so no two packages import each other (however deep in a function the import hides).

Every `.py` file is read with `ast`, not imported: every import counts (module level, function bodies,
`TYPE_CHECKING` blocks, `importlib.import_module("...")` with a literal name), relative imports resolved."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support import REPO

# Lowest first: a package may import the packages before it, never one after it. `saga` is the generic engine,
# `config` the settings, `supportmesh` the composition root (CLI, local runner) and `k8s`/`bench` scripts on top.
LAYERS: list[set[str]] = [{"saga"}, {"config"}, {"observability"}, {"mocks"}, {"actors"}, {"gateway"},
                          {"supportmesh"}, {"k8s", "bench"}]
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}

@dataclass(frozen=True)
class Import:
    """One import of another top-level package: where it is and what it names."""

    file: str  # relative to the repository
    line: int
    package: str  # the importing file's top-level package
    target: str  # the imported module's top-level package

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.package} imports {self.target}"


def module_name(path: Path) -> str:
    """The dotted module name of a file of the repository (`actors/base.py` -> `actors.base`)."""
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in a file, wherever it is in the file."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: `from . import x`, `from ..saga import y`
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                yield node.lineno, ".".join([*base, *([node.module] if node.module else [])])
            else:
                yield node.lineno, node.module or ""
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.lineno, node.args[0].value


def cross_package_imports() -> list[Import]:
    """Every import, in every file of the layered packages, of another layered package."""
    found = []
    for package in RANK:
        for path in sorted((REPO / package).rglob("*.py")):
            for line, module in imported_modules(path):
                target = module.split(".")[0]
                if target in RANK and target != package:
                    found.append(Import(str(path.relative_to(REPO)), line, package, target))
    return found


def test_packages_import_only_the_layers_below_them() -> None:
    upward = [imp for imp in cross_package_imports() if RANK[imp.target] > RANK[imp.package]]
    order = " < ".join("/".join(sorted(layer)) for layer in LAYERS)
    assert not upward, (f"imports against the layer order {order} (move the code down a layer or pass the value "
                        "in from the caller):\n" + "\n".join(map(str, upward)))


def test_the_package_graph_has_no_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for imp in cross_package_imports():
        graph.setdefault(imp.package, set()).add(imp.target)

    def cycle_from(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node):], node]
        for nxt in sorted(graph.get(node, ())):
            if found := cycle_from(nxt, [*path, node]):
                return found
        return None

    cycles = [c for start in sorted(graph) if (c := cycle_from(start, []))]
    assert not cycles, f"import cycle between packages: {' -> '.join(cycles[0])}"


def test_the_reader_sees_imports_hidden_in_functions_relative_and_type_checking(tmp_path, monkeypatch) -> None:
    """The checker itself: an import inside a function, under TYPE_CHECKING, relative, or by name is found."""
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    pkg = tmp_path / "saga" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "saga" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from gateway import app\n"
        "def f():\n    import actors.base\n"
        "from ..log import x\nfrom . import y\n"
        "import importlib\nimportlib.import_module('mocks.data')\n")
    assert sorted(m for _, m in imported_modules(pkg / "mod.py")) == [
        "actors.base", "gateway", "importlib", "mocks.data", "saga.log", "saga.sub", "typing"]
