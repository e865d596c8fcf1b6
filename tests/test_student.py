"""Student notebooks: no reference solution leaks, and "Run all" reaches the end with every exercise unanswered."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time

import nbformat
import pytest
from conftest import ROOT
from nbclient import NotebookClient

from mpcourse.bench.results import OverwriteError
from mpcourse.course.student import (
    STUB,
    SolutionMarkupError,
    solution_lines,
    strip_solutions,
    student_notebook,
    write_student_notebooks,
)

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
    assert not [line for line in prose if line in student_lines], (
        f"solution prose in the student version of {path.name}"
    )


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


@pytest.mark.notebooks
@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_a_student_notebook_runs_to_the_end_with_every_exercise_unanswered(path, tmp_path) -> None:
    """What a learner's "Run all" does before any exercise is done: no cell raises, each check says "not done"."""
    student = student_notebook(nbformat.read(path, as_version=4), path.name)
    env = {k: v for k, v in os.environ.items() if k != "MPCOURSE_GRADING"}
    env.setdefault("MPCOURSE_PROFILE", "ci")
    client = NotebookClient(
        student, timeout=600, allow_errors=True, resources={"metadata": {"path": str(tmp_path)}}
    )
    with _environment(env):
        client.execute()
    errors = [
        f"cell {i}: {o.ename}: {o.evalue}"
        for i, c in enumerate(student.cells)
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    ]
    assert not errors, f"Run all on the student version of {path.name} stops: {errors}"
    check_cells = [c for c in student.cells if c.cell_type == "code" and c.source.startswith("check(")]
    assert len(check_cells) >= (2 if path.stem == "getting_started" else 4), f"{path.name} has too few checks"
    for cell in check_cells:
        stderr = "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stderr")
        assert "not done yet" in stderr, (cell.source, cell.outputs)


@contextlib.contextmanager
def _environment(env: dict[str, str]):
    """Run with exactly ``env`` (the kernel inherits it), then restore this process's environment."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


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


# --- writing them: a learner's answers are never lost --------------------------------------------------

ANSWERED = "return 42  # a learner's answer"


def _fill_in(path) -> str:
    """Answer the first exercise of a student notebook, as a learner would in Jupyter; return the answer cell."""
    nb = nbformat.read(path, as_version=4)
    stub = STUB.splitlines()[-1]
    cell = next(c for c in nb.cells if c.cell_type == "code" and stub in c.source)
    cell.source = cell.source.replace(stub, ANSWERED, 1)
    nbformat.write(nb, path)
    return cell.source


def _has(path, answer: str) -> bool:
    return any(c.source == answer for c in nbformat.read(path, as_version=4).cells)


def test_writing_again_keeps_a_filled_in_notebook_unless_forced(tmp_path) -> None:
    out = tmp_path / "student"
    first = write_student_notebooks(ROOT / "notebooks", out)
    snapshot = {p: p.read_bytes() for p in first}
    assert (
        write_student_notebooks(ROOT / "notebooks", out) == first
    )  # unchanged notebooks: rewritten as they were
    assert {p: p.read_bytes() for p in first} == snapshot
    answered, other = first[0], first[1]
    answer = _fill_in(answered)
    other.unlink()
    with pytest.raises(
        OverwriteError, match=rf"{answered}.* differs from the student version.*--force"
    ) as refused:
        write_student_notebooks(ROOT / "notebooks", out)
    assert str(other) not in str(refused.value)
    assert _has(answered, answer) and not other.exists()  # nothing at all was written
    write_student_notebooks(ROOT / "notebooks", out, force=True)
    assert answered.read_bytes() == snapshot[answered] and other.read_bytes() == snapshot[other]


def test_student_output_folder_must_be_a_folder(tmp_path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file"):
        write_student_notebooks(ROOT / "notebooks", tmp_path / "file")


def test_make_student_twice_keeps_the_answers(tmp_path) -> None:
    """`make student`, as the Makefile runs it, in a sandbox laid out as the repository (not the real student/)."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("needs GNU make")
    (tmp_path / "notebooks").symlink_to(ROOT / "notebooks")
    (tmp_path / "pyproject.toml").write_text("")
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "mpcourse").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m mpcourse.course.cli "$@"\n')
    (venv_bin / "mpcourse").chmod(0o755)
    stamp = tmp_path / ".venv" / ".installed"
    stamp.write_text("")
    os.utime(stamp, (time.time() + 60, time.time() + 60))  # newer than pyproject.toml: make installs nothing

    def make_student() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [make, "-s", "-f", str(ROOT / "Makefile"), "-C", str(tmp_path), "student"],
            capture_output=True,
            text=True,
            timeout=300,
        )

    assert make_student().returncode == 0
    notebook = tmp_path / "student" / "getting_started.ipynb"
    answer = _fill_in(notebook)
    again = make_student()
    assert again.returncode != 0, again.stdout
    assert (
        "mpcourse: error: student/getting_started.ipynb differs" in again.stderr and "--force" in again.stderr
    )
    assert _has(notebook, answer)
