"""The rooms keep to their doors (docs/architecture.md): a service imports no other service,
``shared`` imports neither a service nor the CLI, and the CLI imports no service. The Azure ML
stand-in (``aml_standin``) knows nothing of tunebus, and only the submitter may load it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _room(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).parts
    return ".".join(parts[:2]) if parts[0] == "services" else parts[0]


#: Crossings made on purpose, each with its reason (none: `tunebus create` checks built-in
#: algorithms with shared.algorithms, the registry the tuner service builds them from).
ALLOWED: set[tuple[str, str]] = set()


def _forbidden(room: str, module: str) -> bool:
    if (room, module) in ALLOWED:
        return False
    if room == "aml_standin":
        return module.startswith(("services", "shared", "tunebus"))
    if module.startswith("aml_standin"):
        return room != "services.aml_submitter"
    if room.startswith("services."):
        return module.startswith("services.") and not module.startswith(room)
    if room == "shared":
        return module.startswith(("services", "tunebus"))
    return room == "tunebus" and module.startswith("services")


@pytest.mark.parametrize("root", ["shared", "services", "tunebus", "aml_standin"])
def test_no_room_imports_through_a_wall(root: str) -> None:
    crossings = [f"{path.relative_to(REPO_ROOT)} imports {module}"
                 for path in sorted((REPO_ROOT / root).rglob("*.py"))
                 for module in sorted(_imports(path)) if _forbidden(_room(path), module)]
    assert not crossings, "\n".join(crossings)
