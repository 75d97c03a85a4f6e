"""tests/README.md names only tests that exist: a renamed or deleted test fails here, not silently
in the table of README claims."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
README = TESTS / "README.md"
# `unit/test_cli.py::test_helpers` or `unit/test_tuners.py::TestTunerContract::test_x`
TEST_ID = re.compile(r"`((?:unit|integration|e2e|compose)/test_\w+\.py)((?:::\w+)+)`")


def _named_ids() -> list[tuple[str, tuple[str, ...]]]:
    return [(path, tuple(names.split("::")[1:])) for path, names in TEST_ID.findall(README.read_text())]


def _defines(tree: ast.Module, names: tuple[str, ...]) -> bool:
    """Whether the module defines ``names`` (a test function, or a class then its method)."""
    scope: list[ast.stmt] = tree.body
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    for name in names:
        found = [node for node in scope if isinstance(node, kinds) and node.name == name]
        if not found:
            return False
        scope = found[0].body if isinstance(found[0], ast.ClassDef) else []
    return names[-1].startswith("test_")


def test_the_readme_names_many_tests() -> None:
    assert len(_named_ids()) > 150  # the table is there and the pattern still reads it


@pytest.mark.parametrize("path", sorted({path for path, _ in _named_ids()}))
def test_every_named_test_exists(path: str) -> None:
    tree = ast.parse((TESTS / path).read_text())
    missing = ["::".join(names) for named, names in _named_ids()
               if named == path and not _defines(tree, names)]
    assert not missing, f"tests/README.md names tests that {path} does not define: {missing}"
