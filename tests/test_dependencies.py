"""Who needs which optional package: the course extra (nbformat, nbclient) and scikit-learn (not at all).

A learner's install (Colab: ``pip install --no-deps``; elsewhere the core dependencies) has neither
the course tooling's packages nor scikit-learn. These tests hold the code to that: only
``mpcourse/course/`` imports nbformat or nbclient, nothing imports scikit-learn, and the ``mpcourse``
command says in one line which extra to install instead of failing with a traceback.
"""

from __future__ import annotations

import ast
import sys

import pytest
from conftest import ROOT

from mpcourse import data

COURSE_EXTRA = {"nbformat", "nbclient"}


def _imported_modules(source: str) -> set[str]:
    """Top-level names of every module a Python source imports (at any depth of the code)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _code_cells(md: str) -> list[str]:
    """The code cells of a MyST chapter (what the notebook executes), IPython's ``!`` and ``%`` lines
    replaced by ``pass`` so that each cell parses as Python."""
    cells, cell, inside = [], [], False
    for line in md.splitlines():
        if line.startswith("```{code-cell}"):
            inside, cell = True, []
        elif inside and line.startswith("```"):
            inside = False
            cells.append("\n".join(cell))
        elif inside and not line.startswith(":"):  # cell options (:tags: ...) are not code
            stripped = line.lstrip()
            cell.append(
                line[: len(line) - len(stripped)] + "pass" if stripped.startswith(("%", "!")) else line
            )
    return cells


def _package_modules() -> dict[str, set[str]]:
    modules = {
        str(p.relative_to(ROOT)): _imported_modules(p.read_text(encoding="utf-8"))
        for p in (ROOT / "mpcourse").rglob("*.py")
    }
    assert len(modules) > 40, "the package's modules were not found"
    return modules


def test_only_the_course_tooling_imports_the_course_extra() -> None:
    users = {path for path, names in _package_modules().items() if names & COURSE_EXTRA}
    assert users, "nothing imports nbformat: the course extra would be unused"
    assert all(path.startswith("mpcourse/course/") for path in users), sorted(users)


def test_no_chapter_imports_the_course_extra_or_scikit_learn() -> None:
    chapters = sorted((ROOT / "notebooks").glob("*.md"))
    assert len(chapters) >= 8
    for md in chapters:
        names = set().union(*map(_imported_modules, _code_cells(md.read_text(encoding="utf-8"))))
        assert "mpcourse" in names, f"{md.name}: no code cells were read"
        assert not names & (COURSE_EXTRA | {"sklearn"}), (
            md.name,
            sorted(names & (COURSE_EXTRA | {"sklearn"})),
        )


def test_no_module_imports_scikit_learn_except_the_one_off_digits_script() -> None:
    users = {path for path, names in _package_modules().items() if "sklearn" in names}
    assert users == {"mpcourse/datasets/make_digits.py"}


def test_the_digits_load_without_scikit_learn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)  # any import of it now fails
    data._digits_arrays.cache_clear()
    try:
        bundle = data.load_images(source="local", verbose=False)
    finally:
        data._digits_arrays.cache_clear()
    assert len(bundle.x_train) + len(bundle.x_eval) == 1797


@pytest.mark.parametrize("command", [["student", "out"], ["verify", "notebooks/getting_started.ipynb"]])
def test_the_command_names_the_missing_extra_in_one_line(monkeypatch, capsys, tmp_path, command) -> None:
    from mpcourse.course import cli

    for name in COURSE_EXTRA:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.chdir(ROOT)
    if command[0] == "student":
        command = ["student", str(tmp_path / "out")]
    assert cli.main(command) == cli.USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'mpcourse[course]'" in err and "nbformat" in err, err
    assert set(cli.COURSE_EXTRA) == COURSE_EXTRA


def test_the_course_extra_is_in_the_book_and_test_extras_and_not_core() -> None:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    course = set(extras["course"])
    assert {req.split(">")[0] for req in course} == COURSE_EXTRA
    assert course <= set(extras["book"]) and course <= set(extras["test"])
    core = {req.split(">")[0].split("=")[0].strip().lower() for req in project["dependencies"]}
    assert not core & (COURSE_EXTRA | {"scikit-learn"})
