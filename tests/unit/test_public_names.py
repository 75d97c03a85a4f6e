"""Every ``__all__`` in the project is true: it names what its module defines in public, and
nothing it does not (so ``from x import *`` and the reader of ``__all__`` see the whole API)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

# NNI's own API shapes these (the shims mirror NNI's modules), not our __all__ habits.
MIRRORS_NNI = ("tunebus/trial_runtime/", "tunebus/algorithm_runtime/")


def _modules() -> list[Path]:
    found = []
    for root in ("shared", "services", "tunebus"):
        for path in sorted((REPO_ROOT / root).rglob("*.py")):
            if not any(part in path.as_posix() for part in MIRRORS_NNI) and "__all__" in path.read_text():
                found.append(path)
    return found


def _all_and_defined(path: Path) -> tuple[set[str] | None, set[str]]:
    tree = ast.parse(path.read_text())
    listed: set[str] | None = None
    defined: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__"
                                                for t in node.targets):
            listed = set(ast.literal_eval(node.value))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            defined.add(node.target.id)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            defined.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return listed, defined


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_all_names_every_public_definition_and_only_real_names(path: Path) -> None:
    listed, defined = _all_and_defined(path)
    assert listed is not None, "__all__ is not a plain list of names"
    tree = ast.parse(path.read_text())
    kinds = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
    definitions = (n for n in tree.body if isinstance(n, kinds))
    public = {n.name for n in definitions if not n.name.startswith("_")}
    assert not public - listed, f"public but not in __all__: {sorted(public - listed)}"
    assert not listed - defined, f"in __all__ but not defined or imported: {sorted(listed - defined)}"
