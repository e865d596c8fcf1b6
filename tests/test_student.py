"""Student notebooks: no reference solution leaks, and their checks say "not done yet"."""

from __future__ import annotations

import os

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT
from mpcourse.course.student import SolutionMarkupError, solution_lines, strip_solutions, student_notebook

CHAPTERS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_stub_keeps_the_indentation() -> None:
    source = "def f(x):\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION\n"
    assert strip_solutions(source) == "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()"


@pytest.mark.parametrize(
    "source, problem",
    [
        ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION", "body of a function"),
        ("def f():\n    ### BEGIN SOLUTION\n    ### BEGIN SOLUTION\n", "inside another"),
        ("def f():\n    ### BEGIN SOLUTION\n    return 1\n", "without ### END"),
        ("def f():\n    return 1\n    ### END SOLUTION\n", "without ### BEGIN"),
    ],
)
def test_malformed_markers_are_rejected(source: str, problem: str) -> None:
    with pytest.raises(SolutionMarkupError, match=problem):
        strip_solutions(source)


def test_solution_directives_must_be_alone_in_their_cell() -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell("Some prose.\n:::{solution-start} x-y\n:::"))
    with pytest.raises(SolutionMarkupError, match="alone"):
        student_notebook(nb)


def test_unbalanced_gates_are_rejected() -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell(":::{solution-start} x-y\n:class: dropdown\n:::"))
    with pytest.raises(SolutionMarkupError, match="without solution-end"):
        student_notebook(nb)


def _outside_markers(nb: nbformat.NotebookNode) -> set[str]:
    """Stripped lines that appear in the instructor notebook outside any solution block."""
    lines = set()
    for cell in nb.cells:
        marked = set(solution_lines(cell.source))
        lines.update(line.strip() for line in cell.source.splitlines() if line not in marked)
    return lines


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_no_line_of_a_solution_reaches_students(path) -> None:
    nb = nbformat.read(path, as_version=4)
    student = student_notebook(nb, path.name)
    student_text = "\n".join(cell.source for cell in student.cells)
    student_lines = {line.strip() for line in student_text.splitlines()}
    marked = [line.strip() for cell in nb.cells for line in solution_lines(cell.source) if line.strip()]
    assert marked, f"{path.name} has no marked solutions"
    leaked = [line for line in marked if line in student_lines and line not in _outside_markers(nb)]
    assert not leaked, f"solution lines in the student version of {path.name}: {leaked}"
    assert "{solution" not in student_text
    assert "### BEGIN SOLUTION" not in student_text
    prose = [line.strip() for line in _gated_prose(nb) if len(line.strip()) > 20]
    assert prose, f"{path.name} explains none of its solutions"
    assert not [line for line in prose if line in student_lines], f"solution prose in the student version of {path.name}"


def _gated_prose(nb: nbformat.NotebookNode) -> list[str]:
    """The markdown lines between solution-start and solution-end directives (the solutions' explanations)."""
    lines, inside = [], False
    for cell in nb.cells:
        if cell.cell_type == "markdown" and "{solution-start}" in cell.source:
            inside = True
        elif cell.cell_type == "markdown" and "{solution-end}" in cell.source:
            inside = False
        elif inside and cell.cell_type == "markdown":
            lines.extend(cell.source.splitlines())
    return lines


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_check_of_a_student_notebook_says_not_done_yet(path, tmp_path) -> None:
    student = student_notebook(nbformat.read(path, as_version=4), path.name)
    os.environ.setdefault("MPCOURSE_PROFILE", "ci")
    NotebookClient(student, timeout=600, allow_errors=True, resources={"metadata": {"path": str(tmp_path)}}).execute()
    check_cells = [c for c in student.cells if c.cell_type == "code" and c.source.lstrip().startswith("check(")]
    assert check_cells, f"{path.name} has no check cells"
    for cell in check_cells:
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert [e.ename for e in errors] == ["NotDoneYet"], (cell.source, errors)
        assert "not done yet" in errors[0].evalue
    # Everything that is not an exercise check still runs in the student version.
    others = [
        o.ename
        for c in student.cells
        if c.cell_type == "code" and c not in check_cells
        for o in c.outputs
        if o.output_type == "error"
    ]
    assert not others, others


def test_nbgrader_source_notebooks_carry_metadata_and_keep_markers() -> None:
    path = ROOT / "notebooks" / "getting_started.ipynb"
    nb = student_notebook(nbformat.read(path, as_version=4), path.name, nbgrader=True)
    graded = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    answers = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]
    assert {c.metadata.nbgrader.grade_id for c in graded} == {
        "getting_started-tflops-check",
        "getting_started-relative-error-check",
    }
    assert all(c.metadata.nbgrader.points == 1 and c.metadata.nbgrader.schema_version == 3 for c in graded)
    assert len(answers) == 2 and all("### BEGIN SOLUTION" in c.source for c in answers)
    assert all(c.metadata.nbgrader.grade_id.startswith("getting_started-") for c in answers)
    assert not any("{solution" in c.source for c in nb.cells if c.cell_type == "markdown")
