"""Chapter pairs, the shared setup cell, and what every chapter must contain."""

from __future__ import annotations

import re
import shutil
import sys
import types

import jupytext
import nbformat
import pytest
import yaml
from conftest import ROOT
from IPython.core.interactiveshell import InteractiveShell

from mpcourse.course import authoring
from mpcourse.exercises import labels

SOURCES = authoring.chapters(ROOT)
TOC = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())


def toc_files() -> list[str]:
    return [entry["file"] for part in TOC["parts"] for entry in part["chapters"]]


def test_pairs_are_in_sync_output_free_and_stamped() -> None:
    assert SOURCES, "no chapters found"
    assert authoring.problems(ROOT) == []


def _planted(tmp_path, plant) -> list[str]:
    """The problems reported for a copy of getting_started's pair after `plant(md, ipynb)` changed it."""
    (tmp_path / "notebooks").mkdir()
    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    md, ipynb = (tmp_path / "notebooks" / f"getting_started{ext}" for ext in (".md", ".ipynb"))
    shutil.copy(ROOT / "notebooks" / md.name, md)
    shutil.copy(ROOT / "notebooks" / ipynb.name, ipynb)
    assert authoring.problems(tmp_path) == []
    plant(md, ipynb)
    return authoring.problems(tmp_path)


def _edit_notebook(ipynb, change) -> None:
    nb = nbformat.read(ipynb, as_version=4)
    change(nb)
    nbformat.write(nb, ipynb)


def _first_code(nb):
    return next(c for c in nb.cells if c.cell_type == "code" and not c.metadata.get("tags"))


def _as_raw(nb) -> None:
    cell = _first_code(nb)
    nb.cells[nb.cells.index(cell)] = nbformat.v4.new_raw_cell(cell.source)


@pytest.mark.parametrize(
    "plant, reported",
    [
        (
            lambda md, nb: _edit_notebook(
                nb, lambda n: _first_code(n).outputs.append(nbformat.v4.new_output("stream", text="hi"))
            ),
            "carries outputs",
        ),
        (
            lambda md, nb: _edit_notebook(nb, lambda n: n.metadata.update(widgets={"state": {}})),
            "metadata.widgets",
        ),
        (lambda md, nb: _edit_notebook(nb, lambda n: _first_code(n).update(source="x = 1")), "differ"),
        (lambda md, nb: _edit_notebook(nb, _as_raw), "differ"),
        (
            lambda md, nb: _edit_notebook(
                nb, lambda n: next(c for c in n.cells if c.metadata.get("tags")).metadata.update(tags=[])
            ),
            "differ",
        ),
        (
            lambda md, nb: md.write_text(
                md.read_text().replace("mpcourse.setup()", "mpcourse.setup()  # edited")
            ),
            "setup cell",
        ),
        (lambda md, nb: nb.unlink(), "no paired"),
        (lambda md, nb: md.unlink(), "no paired .md"),
        (
            lambda md, nb: (md.parent.parent / "_config.yml").write_text(
                (md.parent.parent / "_config.yml").read_text().replace("branch: v", "branch: main # v")
            ),
            "another",
        ),
    ],
    ids=[
        "outputs",
        "widgets",
        "source",
        "cell-type",
        "tags",
        "setup-cell",
        "no-ipynb",
        "no-md",
        "release-ref",
    ],
)
def test_pair_problems_are_reported(tmp_path, plant, reported: str) -> None:
    assert any(reported in line for line in _planted(tmp_path, plant))


def test_every_chapter_is_in_the_table_of_contents() -> None:
    listed = set(toc_files())
    for md in SOURCES:
        assert f"notebooks/{md.stem}" in listed, f"{md.name} is not in book/_toc.yml"


def test_repository_address_is_written_once() -> None:
    url = authoring.course_config(ROOT)["repository"]
    holders = [
        p.relative_to(ROOT).as_posix()
        for p in [*ROOT.glob("*.*"), *ROOT.glob("book/**/*"), *ROOT.glob("mpcourse/**/*.py")]
        if p.is_file() and p.suffix not in {".ipynb"} and url in p.read_text(errors="ignore")
    ]
    assert holders == ["_config.yml"], holders


@pytest.mark.parametrize("md", SOURCES, ids=lambda p: p.stem)
def test_chapter_structure(md) -> None:
    """Objectives first, then the badge and setup cell, exercises with checks, and a summary."""
    nb = jupytext.read(md)
    text = md.read_text()
    assert nb.cells[0].source.startswith("# "), "a chapter starts with its title"
    assert "**In this chapter you will**" in text, "learning objectives at the top"
    assert "## Summary" in text
    exercises = re.findall(r":::\{exercise\}\n:label: (\S+)", text)
    checked = re.findall(r'check\("([\w-]+)"', text)
    assert exercises, "every chapter has exercises"
    assert sorted(exercises) == sorted(set(exercises)), "exercise labels are unique"
    assert set(exercises) <= set(checked), f"exercises without a check cell: {set(exercises) - set(checked)}"
    assert set(exercises) == set(labels(md.stem)), "every exercise has a registered check, and vice versa"


def run_setup_cell(colab: bool, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Run the setup cell in a fresh IPython shell, recording what %pip was asked to do."""
    if colab:
        monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    calls: list[str] = []
    shell = InteractiveShell()
    shell.register_magic_function(lambda line: calls.append(line), "line", "pip")
    result = shell.run_cell(authoring.setup_source(ROOT))
    assert result.success, result.error_in_exec
    return calls


def test_setup_cell_on_colab_installs_the_pinned_package_without_dependencies(monkeypatch) -> None:
    calls = run_setup_cell(colab=True, monkeypatch=monkeypatch)
    assert len(calls) == 1
    cfg = authoring.course_config(ROOT)
    assert "--no-deps" in calls[0].split()
    assert f"mpcourse @ git+{cfg['repository']}@{cfg['ref']}" in calls[0]
    assert re.fullmatch(r"v\d+\.\d+\.\d+", cfg["ref"]), "the ref is a pinned release tag"


def test_setup_cell_outside_colab_installs_nothing(monkeypatch, capsys) -> None:
    assert run_setup_cell(colab=False, monkeypatch=monkeypatch) == []
    report = capsys.readouterr().out
    assert "mpcourse" in report and "fp8" in report and "profile" in report


def test_execution_cache_is_dropped_when_the_package_or_profile_changes(tmp_path) -> None:
    package = tmp_path / "mpcourse"
    package.mkdir()
    (package / "core.py").write_text("x = 1\n")
    cache = tmp_path / "_build" / ".jupyter_cache"

    doctrees = tmp_path / "_build" / ".doctrees"

    def build() -> None:  # what a website build leaves behind: executed outputs and Sphinx's environment
        for folder in (cache, doctrees):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "entry").write_text("saved")

    assert not authoring.refresh_execution_cache(tmp_path, "ci")  # first build: nothing to drop
    build()
    assert not authoring.refresh_execution_cache(tmp_path, "ci") and cache.exists()  # nothing changed
    (package / "core.py").write_text("x = 2\n")
    assert authoring.refresh_execution_cache(tmp_path, "ci") and not cache.exists() and not doctrees.exists()
    build()
    assert (
        authoring.refresh_execution_cache(tmp_path, "small") and not cache.exists() and not doctrees.exists()
    )
