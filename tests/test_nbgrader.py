"""nbgrader end to end: every chapter as an assignment, graded as an instructor would grade it.

One nbgrader cycle runs in a process of its own (its configuration sets environment variables):
``mpcourse nbgrader-course`` lays out the course, ``generate_assignment`` releases every chapter,
and ``autograde`` grades

- *alice*, who hands in every chapter with the reference solutions: full marks, and no cell of any
  chapter raises. This is also the run of every chapter top to bottom that the suite relies on
  (it replaced nbval on the instructor notebooks, which executes the same code cells), and the
  website build reuses its outputs instead of executing the chapters again (``graded_course`` in
  conftest.py);
- *bob*, who hands in getting_started with one wrong answer and one left unanswered: no marks.

Grade ids come from exercise labels; a test below checks that editing a chapter keeps them.
"""

from __future__ import annotations

import subprocess
import sys

import nbformat
import pytest
from conftest import ROOT

from mpcourse.course.authoring import chapters
from mpcourse.course.student import SolutionMarkupError, student_notebook, write_nbgrader_course


@pytest.fixture(scope="module")
def grades(graded_course) -> dict[tuple[str, str], dict]:
    assert graded_course.grades is not None, f"the nbgrader cycle failed:\n{graded_course.log}"
    return graded_course.grades


@pytest.mark.notebooks
@pytest.mark.parametrize("slug", [md.stem for md in chapters()])
def test_reference_solutions_get_full_marks_and_every_cell_runs(grades, slug: str) -> None:
    grade = grades[("alice", slug)]
    assert not grade["errors"], f"cells of {slug} raised under the autograder: {grade['errors']}"
    lost = {name: score for name, score in grade["per_check"].items() if score < 1}
    assert not lost, f"reference solutions of {slug} lost points: {lost}"
    assert (
        grade["score"]
        == grade["max_score"]
        == len(grade["per_check"])
        >= (2 if slug == "getting_started" else 4)
    )


@pytest.mark.notebooks
def test_a_wrong_and_an_unanswered_exercise_score_nothing(grades) -> None:
    grade = grades[("bob", "getting_started")]
    assert grade["per_check"] == {
        "getting_started-tflops-check": 0.0,
        "getting_started-relative-error-check": 0.0,
    }
    assert grade["score"] == 0 < grade["max_score"] == 2
    assert not grade["errors"], "outside the checks, an unanswered chapter must still run"


def test_grade_ids_are_the_labels_and_survive_edits() -> None:
    path = ROOT / "notebooks" / "getting_started.ipynb"
    nb = nbformat.read(path, as_version=4)
    ids = _grade_ids(student_notebook(nb, path.name, nbgrader=True))
    assert ids == [
        "getting_started-tflops-answer",
        "getting_started-tflops-check",
        "getting_started-relative-error-answer",
        "getting_started-relative-error-check",
    ]
    nb.cells.insert(3, nbformat.v4.new_code_cell("x = 1  # a cell added above the exercises"))
    assert _grade_ids(student_notebook(nb, path.name, nbgrader=True)) == ids


def test_a_second_graded_check_of_one_exercise_is_refused() -> None:
    path = ROOT / "notebooks" / "getting_started.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell('check("getting_started-tflops", matmul_tflops)'))
    with pytest.raises(SolutionMarkupError, match="second graded check"):
        student_notebook(nb, path.name, nbgrader=True)


def test_an_indented_check_is_a_demonstration_not_a_graded_cell() -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell('try:\n    check("x-y", f)\nexcept AssertionError:\n    pass'))
    assert _grade_ids(student_notebook(nb, "demo", nbgrader=True)) == []


def test_the_course_folder_keeps_an_instructors_config_and_edits(tmp_path) -> None:
    write_nbgrader_course(tmp_path, ROOT / "notebooks", only=["getting_started"])
    config = tmp_path / "nbgrader_config.py"
    assert "MPCOURSE_GRADING" in config.read_text()
    config.write_text("c = get_config()  # the instructor's own\n")
    source = tmp_path / "source" / "getting_started" / "getting_started.ipynb"
    nb = nbformat.read(source, as_version=4)
    nb.cells[0].source += "\nA note from the instructor."
    nbformat.write(nb, source)
    from mpcourse.bench.results import OverwriteError

    with pytest.raises(OverwriteError, match="getting_started.ipynb differs.*--force"):
        write_nbgrader_course(tmp_path, ROOT / "notebooks", only=["getting_started"])
    assert "A note from the instructor." in source.read_text()
    write_nbgrader_course(tmp_path, ROOT / "notebooks", only=["getting_started"], force=True)
    assert "A note from the instructor." not in source.read_text()
    assert config.read_text() == "c = get_config()  # the instructor's own\n"


def _grade_ids(nb: nbformat.NotebookNode) -> list[str]:
    return [c.metadata["nbgrader"]["grade_id"] for c in nb.cells if "nbgrader" in c.metadata]


def test_nbgrader_check_grades_a_scratch_copy_and_leaves_the_course_alone(tmp_path, monkeypatch) -> None:
    from mpcourse.course import grading

    write_nbgrader_course(tmp_path, ROOT / "notebooks", only=["getting_started", "fp8"])
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    seen = {}

    def fake_round_trip(scratch, submissions):
        seen["scratch"] = scratch
        seen["files"] = sorted(str(p.relative_to(scratch)) for p in scratch.rglob("*"))
        seen["submissions"] = submissions
        return []

    monkeypatch.setattr(grading, "round_trip", fake_round_trip)
    grading.check_course(tmp_path, ["fp8"])
    assert seen["submissions"] == {"reference": {"fp8": None}}
    assert seen["files"] == ["nbgrader_config.py", "source", "source/fp8", "source/fp8/fp8.ipynb"]
    assert not seen["scratch"].exists()
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_nbgrader_check_names_what_is_missing(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mpcourse.course.cli", "nbgrader-check", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "has no nbgrader_config.py" in result.stderr and "mpcourse nbgrader-course" in result.stderr
    write_nbgrader_course(tmp_path, ROOT / "notebooks", only=["getting_started"])
    result = subprocess.run(
        [sys.executable, "-m", "mpcourse.course.cli", "nbgrader-check", str(tmp_path), "--chapter", "bf16"],
        capture_output=True,
        text=True,
    )
    assert (
        result.returncode == 2
        and "no assignment bf16" in result.stderr
        and "it has: getting_started" in result.stderr
    )


def test_nbgrader_check_without_nbgrader_names_the_extra(tmp_path, monkeypatch, capsys) -> None:
    from mpcourse.course import cli, grading

    def missing(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'nbgrader'", name="nbgrader")

    monkeypatch.setattr(grading, "check_course", missing)
    assert cli.main(["nbgrader-check", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs the grade extra" in err and "mpcourse[grade]" in err
