"""The dependency rules of docs/architecture.md, checked on the import statements themselves:
`spaces` never imports `sessions_app`, and no app imports `stello_project`.
(`engine` importing nothing of Django is proved by tests/engine/test_purity.py.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_packages(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        if "migrations" in path.parts:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize(("package", "forbidden"), [
    ("spaces", {"sessions_app", "stello_project"}),
    ("sessions_app", {"stello_project"}),
])
def test_apps_respect_the_dependency_direction(package: str, forbidden: set[str]) -> None:
    offenders = {path: sorted(names & forbidden)
                 for path, names in imported_packages(package).items() if names & forbidden}
    assert offenders == {}
