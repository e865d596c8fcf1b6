"""An nbgrader round trip, for instructors and for the course's tests.

``mpcourse nbgrader-course`` lays out a course folder; this module then drives nbgrader through
the cycle an instructor runs: ``generate_assignment`` for each chapter, a submission per student,
``autograde``, and the gradebook's scores. :func:`reference_submission` fills every answer cell of
a released notebook with the reference solution (the source notebook's cell of the same grade id),
so that :func:`round_trip` answers one question: does this grading environment give full marks to
correct answers? ``mpcourse nbgrader-check`` runs it on an instructor's machine.

nbgrader is imported only here, inside the functions: it is an optional dependency (the ``grade``
extra, also part of ``test``).
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import nbformat

#: Edits a released notebook into a student's submission (for tests: wrong or missing answers).
Edit = Callable[["nbformat.NotebookNode"], "nbformat.NotebookNode"]


@dataclass
class Grade:
    """One student's autograded submission of one assignment."""

    student: str
    assignment: str
    score: float
    max_score: float
    per_check: dict[str, float] = field(default_factory=dict)
    #: Cells that raised although they are not graded checks: "cell N: Name: message".
    errors: list[str] = field(default_factory=list)


def reference_submission(
    release: nbformat.NotebookNode, source: nbformat.NotebookNode
) -> nbformat.NotebookNode:
    """``release`` with every answer cell replaced by the source notebook's cell of the same grade id."""
    solutions = {
        cell.metadata["nbgrader"]["grade_id"]: cell.source
        for cell in source.cells
        if cell.metadata.get("nbgrader", {}).get("solution")
    }
    filled = copy.deepcopy(release)
    for cell in filled.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            cell.source = solutions[meta["grade_id"]]
    return filled


def _api(course_dir: Path):  # type: ignore[no-untyped-def]
    """nbgrader's API, configured from the course's nbgrader_config.py (which may set environment variables)."""
    from nbgrader.apps import NbGraderAPI
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(course_dir)).load_config()
    # nbgrader runs alembic, the database migration tool, as a program: it must be on PATH.
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    return NbGraderAPI(config=config)


def round_trip(course_dir: Path, submissions: dict[str, dict[str, Edit | None]]) -> list[Grade]:
    """Generate, submit, autograde; return every grade.

    ``submissions[student][assignment]`` turns the reference submission into that student's (None:
    hand in the reference solutions unchanged). Raises RuntimeError with nbgrader's log when a step
    fails.
    """
    import nbformat

    course_dir = Path(course_dir).resolve()
    previous = Path.cwd()
    os.chdir(course_dir)  # nbgrader resolves some paths from the working directory
    try:
        api = _api(course_dir)
        assignments = sorted({a for work in submissions.values() for a in work})
        for assignment in assignments:
            _ok(
                api.generate_assignment(assignment, force=True, create=True),
                "generate_assignment",
                assignment,
            )
        grades = []
        for student, work in submissions.items():
            for assignment, edit in work.items():
                name = f"{assignment}.ipynb"
                release = nbformat.read(course_dir / "release" / assignment / name, as_version=4)
                source = nbformat.read(course_dir / "source" / assignment / name, as_version=4)
                submission = reference_submission(release, source)
                if edit is not None:
                    submission = edit(submission)
                target = course_dir / "submitted" / student / assignment
                if target.exists():
                    shutil.rmtree(target)
                target.mkdir(parents=True)
                nbformat.write(submission, target / name)
                _ok(api.autograde(assignment, student, force=True, create=True), "autograde", assignment)
                grades.append(_grade(course_dir, api, student, assignment))
        return grades
    finally:
        os.chdir(previous)


def _ok(result: dict, step: str, assignment: str) -> None:
    if not result.get("success"):
        raise RuntimeError(
            f"nbgrader {step} {assignment} failed:\n{result.get('log', '')}{result.get('error', '')}"
        )


def _grade(course_dir: Path, api, student: str, assignment: str) -> Grade:  # type: ignore[no-untyped-def]
    import nbformat
    from nbgrader.api import Gradebook

    with Gradebook(api.coursedir.db_url) as gradebook:
        submission = gradebook.find_submission(assignment, student)
        notebook = gradebook.find_submission_notebook(assignment, assignment, student)
        per_check = {g.name: float(g.score) for g in notebook.grades if g.auto_score is not None}
        grade = Grade(student, assignment, float(submission.score), float(submission.max_score), per_check)
    graded = nbformat.read(
        course_dir / "autograded" / student / assignment / f"{assignment}.ipynb", as_version=4
    )
    for index, cell in enumerate(graded.cells):
        if cell.cell_type != "code" or cell.metadata.get("nbgrader", {}).get("grade"):
            continue
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                grade.errors.append(f"cell {index}: {output.ename}: {output.evalue}")
    return grade


def check_course(course_dir: Path, only: list[str] | None = None) -> list[Grade]:
    """Autograde the reference solutions of ``course_dir``'s assignments in a scratch copy of it.

    The instructor's gradebook, releases and submissions are never touched: the source notebooks
    and ``nbgrader_config.py`` are copied into a temporary folder and graded there, for a student
    named ``reference``. A grade below full marks means this grading environment (its kernel,
    packages or machine) would fail correct work.
    """
    import tempfile

    course_dir = Path(course_dir)
    config = course_dir / "nbgrader_config.py"
    if not config.is_file():
        raise FileNotFoundError(
            f"{course_dir} has no nbgrader_config.py; lay it out with `mpcourse nbgrader-course {course_dir}`"
        )
    found = sorted(p.name for p in (course_dir / "source").glob("*") if (p / f"{p.name}.ipynb").is_file())
    chosen = only or found
    missing = sorted(set(chosen) - set(found))
    if missing or not chosen:
        raise FileNotFoundError(
            f"no assignment {', '.join(missing) or 'at all'} in {course_dir / 'source'}; "
            f"it has: {', '.join(found) or 'none'}"
        )
    with tempfile.TemporaryDirectory(prefix="mpcourse-grading-") as scratch:
        shutil.copy(config, Path(scratch) / "nbgrader_config.py")
        for name in chosen:
            shutil.copytree(course_dir / "source" / name, Path(scratch) / "source" / name)
        return round_trip(Path(scratch), {"reference": dict.fromkeys(chosen)})
