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
    wanted = [
        *project["dependencies"],
        *project["optional-dependencies"]["book"],
        *project["optional-dependencies"]["test"],
    ]
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


def test_the_torch_floor_is_the_oldest_tested_version_everywhere() -> None:
    """pyproject.toml, environment.yml, the Makefile's versions-check and setup()'s warning name one version."""
    import mpcourse

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floor = next(_split(r)[1] for r in project["dependencies"] if _split(r)[0] == "torch")
    assert floor == f">={mpcourse.OLDEST_TESTED_TORCH}"
    makefile = (ROOT / "Makefile").read_text()
    oldest = re.search(r"^TORCH_OLDEST := (\S+)$", makefile, re.MULTILINE)
    assert oldest and oldest.group(1).startswith(mpcourse.OLDEST_TESTED_TORCH + ".")
    tested = (
        (ROOT / "README.md").read_text().split("## Tested versions", 1)[-1]
    )  # the README says what was tested
    assert re.search(rf"^\| {re.escape(oldest.group(1))} \| the oldest supported", tested, re.MULTILINE)


def test_setup_warns_in_one_line_about_a_torch_older_than_tested(monkeypatch, capsys) -> None:
    import torch

    import mpcourse

    assert (
        mpcourse.torch_version_warning("2.11.0+cu130") is None
        and mpcourse.torch_version_warning("2.14.1") is None
    )
    assert mpcourse.torch_version_warning("2.11.0a0+git5f8e") is None  # a build of a tested release
    assert mpcourse.torch_version_warning("10.0.0") is None
    old = mpcourse.torch_version_warning("2.4.1")
    assert old and "\n" not in old and "2.4.1" in old and "older than 2.11" in old and "torch>=2.11" in old
    monkeypatch.setattr(torch, "__version__", "2.9.1+cpu")
    mpcourse.setup()
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if "older than" in line] == [mpcourse.torch_version_warning("2.9.1+cpu")]
    monkeypatch.undo()
    mpcourse.setup()
    assert "older than" not in capsys.readouterr().out
