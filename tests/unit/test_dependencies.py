"""What fleet imports is what pyproject.toml declares: a package fleet uses directly but only
receives through another (aiohttp and botocore through aiobotocore, cryptography through
asyncssh) goes away the day that package stops needing it."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_modules() -> dict[str, str]:
    """Each third-party top-level module fleet/ imports, with one file that imports it."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "fleet").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top != "fleet" and top not in sys.stdlib_module_names:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_every_package_fleet_imports_is_a_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {_normalized(Requirement(line).name) for line in project["dependencies"]}
    distributions = importlib.metadata.packages_distributions()
    undeclared = {module: (where, distributions.get(module)) for module, where in _imported_modules().items()
                  if not {_normalized(d) for d in distributions.get(module, [module])} & declared}
    assert undeclared == {}, "imported by fleet/ but not in pyproject.toml's dependencies (module: file, package)"


def test_the_installed_versions_satisfy_the_declared_ranges():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for line in project["dependencies"]:
        requirement = Requirement(line)
        version = importlib.metadata.version(requirement.name)
        assert requirement.specifier.contains(version, prereleases=True), (line, version)
