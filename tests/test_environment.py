"""environment.yml (conda) lists the same packages, with the same bounds, as pyproject.toml."""

from __future__ import annotations

import re

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import yaml

from conftest import ROOT

# Packages that conda-forge names differently from PyPI.
CONDA_NAMES = {"torch": "pytorch"}


def _split(requirement: str) -> tuple[str, str]:
    match = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", requirement.strip())
    assert match, requirement
    return match.group(1).lower().replace("_", "-"), match.group(2).replace(" ", "")


def test_conda_environment_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["book"], *project["optional-dependencies"]["test"]]
    expected = {}
    for req in wanted:
        name, bound = _split(req.split(";")[0])  # conda installs marker-only packages everywhere
        expected[CONDA_NAMES.get(name, name)] = bound
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    listed = {}
    for dep in env["dependencies"]:
        if isinstance(dep, str) and not dep.startswith(("python", "pip")):
            name, bound = _split(dep)
            listed[name] = bound
    assert listed == expected
