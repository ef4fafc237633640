"""The dependency files tell the truth: every package our code imports is pinned in
requirements.txt (test tools in requirements-dev.txt), and constraints.txt pins every package
those pull in, at the versions installed here, in agreement with the direct pins."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
OUR_PACKAGES = {"sessions_app", "spaces", "stello_project", "console", "tests", "manage", "bench"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """`name==version` lines of a requirements file, following `-r` includes."""
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r"):
            found.update(pins(path.parent / line.split()[1]))
            continue
        name, sep, version = line.partition("==")
        assert sep, f"{path.name}: {line!r} is not pinned exactly"
        found[canonical(name)] = version
    return found


def imported_modules(*folders: str) -> set[str]:
    """Top-level names of every absolute import in the folders' Python files."""
    names: set[str] = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - OUR_PACKAGES


@pytest.mark.parametrize(("folders", "requirements"), [
    (("sessions_app", "spaces", "stello_project", "console"), "requirements.txt"),
    (("tests",), "requirements-dev.txt"),
])
def test_every_imported_package_is_pinned_directly(folders: tuple[str, ...],
                                                   requirements: str) -> None:
    pinned = pins(ROOT / requirements)
    providers = metadata.packages_distributions()
    missing = {module: providers.get(module, ["<not installed>"])
               for module in sorted(imported_modules(*folders))
               if not any(canonical(d) in pinned for d in providers.get(module, []))}
    assert missing == {}


def test_constraints_pin_everything_installed_for_the_requirements() -> None:
    constraints = pins(ROOT / "constraints.txt")
    direct = pins(ROOT / "requirements-dev.txt")
    assert {n: v for n, v in direct.items() if constraints.get(n) != v} == {}

    # Walk the installed dependency tree from the direct requirements (with their extras).
    installed: dict[str, str] = {}
    todo: list[tuple[str, frozenset[str]]] = [(name, frozenset()) for name in direct]
    visited: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in visited:
            continue
        visited.add((name, extras))
        dist = metadata.distribution(name)
        installed[name] = dist.version
        for text in dist.requires or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in {"", *extras}):
                todo.append((canonical(requirement.name), frozenset(requirement.extras)))
    unpinned = {n: v for n, v in installed.items() if constraints.get(n) != v}
    assert unpinned == {}, "run `make constraints` (or install with -c constraints.txt)"
