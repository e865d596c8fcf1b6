"""Student notebooks: the chapters with every reference solution removed.

The chapters follow nbgrader's convention. A reference solution is the body of a function,
between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` lines; the student version replaces it with
a stub, at the same indentation, that raises ``NotImplementedError``, so the function still
defines and its check cell reports "not done yet". Solution prose sits in sphinx-exercise
directives, each in a markdown cell of its own: ``{solution}`` (a whole solution) or the gated
``{solution-start}`` ... ``{solution-end}`` pair around code cells. Those markdown cells, and any
markdown between a start and its end, are dropped; code cells are kept with their stubs.

A learner fills in the student notebooks where they were written, so writing them again must not
cost those answers: :func:`write_student_notebooks` rewrites a notebook only when it is unchanged
(every cell keeps its chapter cell's id, so the same chapter gives the same file), and refuses,
naming the files, when one differs, unless forced.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..bench.results import OverwriteError

if TYPE_CHECKING:  # imported where used: nbformat is the course extra, and `mpcourse doctor` runs without it
    import nbformat

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
STUB = "# YOUR CODE HERE\nraise NotImplementedError()"

_DIRECTIVE = re.compile(r"^\s*(?::{3,}|`{3,})\{(solution|solution-start|solution-end)\}", re.MULTILINE)


class SolutionMarkupError(ValueError):
    """The solution markers of a notebook are malformed (unbalanced, nested, or not in a function)."""


def strip_solutions(source: str, where: str = "cell") -> str:
    """Replace every marked solution block in ``source`` with an indented stub."""
    out: list[str] = []
    indent: str | None = None
    for number, line in enumerate(source.splitlines(), start=1):
        stripped = line.strip()
        if stripped == BEGIN:
            if indent is not None:
                raise SolutionMarkupError(f"{where}, line {number}: {BEGIN} inside another solution block")
            indent = line[: len(line) - len(line.lstrip())]
            if not indent:
                raise SolutionMarkupError(
                    f"{where}, line {number}: a solution must be the body of a function (indented), "
                    "so the student's stub raises only when the function is called"
                )
            out.extend(indent + stub_line for stub_line in STUB.splitlines())
        elif stripped == END:
            if indent is None:
                raise SolutionMarkupError(f"{where}, line {number}: {END} without {BEGIN}")
            indent = None
        elif indent is None:
            out.append(line)
    if indent is not None:
        raise SolutionMarkupError(f"{where}: {BEGIN} without {END}")
    return "\n".join(out)


def solution_lines(source: str) -> list[str]:
    """The lines between solution markers (what must not reach a student)."""
    lines, inside = [], False
    for line in source.splitlines():
        if line.strip() == BEGIN:
            inside = True
        elif line.strip() == END:
            inside = False
        elif inside:
            lines.append(line)
    return lines


# A graded check is a top-level call, the cell's own statement; an indented one (the demo of a
# rejected answer inside try/except in getting_started) only shows how checks behave.
_CHECK_CALL = re.compile(r"^check\(\s*[\"']([\w-]+)[\"']", re.MULTILINE)
_LABEL = re.compile(r"^:label:[ \t]*(\S+)|\{(?:solution-start|solution)\}[ \t]+(\S+)", re.MULTILINE)


def student_notebook(
    nb: nbformat.NotebookNode, name: str = "notebook", *, nbgrader: bool = False
) -> nbformat.NotebookNode:
    """A copy of instructor notebook ``nb`` with solutions removed (see the module docstring).

    With ``nbgrader=True`` the result is instead an nbgrader *source* notebook: solution prose is
    dropped, the solution markers stay for ``nbgrader generate_assignment`` to strip, and cells
    carry nbgrader's metadata (schema 3): solution cells are autograded answers, check cells are
    autograder tests worth one point each.

    Grade ids come from the exercise labels (``<label>-answer``, ``<label>-check``), never from cell
    positions, so editing a chapter keeps every id and an assignment can be regraded. Two cells with
    one id, or a solution before any exercise label, raise :class:`SolutionMarkupError`.
    """
    import nbformat

    out = nbformat.v4.new_notebook(metadata=dict(nb.metadata))
    if not nbgrader:
        out.metadata["mpcourse"] = {"student": True}
        out.cells.append(
            nbformat.v4.new_markdown_cell(
                "*Student version: the reference solutions are removed. Complete each function marked "
                "`# YOUR CODE HERE`, then run the check cell below it. Until you do, its check only notes "
                '"not done yet", so Run all still goes through the whole chapter; `hint("label")` gives '
                "the exercise's hints one at a time.*",
                id="mpcourse-student-note",
            )
        )
    in_gate = False
    label = None
    grade_ids: dict[str, str] = {}

    def grade_id(base: str, where: str, *, numbered: bool) -> str:
        found, n = base, 1
        while found in grade_ids:
            if not numbered:
                raise SolutionMarkupError(
                    f"{where}: a second graded check of the same exercise (grade id {base!r}, first in "
                    f"{grade_ids[base]}); make one of them a demonstration inside a function or a try block"
                )
            n += 1
            found = f"{base}-{n}"
        grade_ids[found] = where
        return found

    for index, cell in enumerate(nb.cells):
        where = f"{name}, cell {index}"
        cell_id = (
            cell.get("id") or f"cell-{index}"
        )  # the chapter's id: the same chapter writes the same notebook
        if cell.cell_type == "markdown":
            found = _LABEL.search(cell.source)
            if found:
                label = found.group(1) or found.group(2)
            kinds = _DIRECTIVE.findall(cell.source)
            if kinds:
                if len(kinds) > 1 or not _is_single_directive(cell.source):
                    raise SolutionMarkupError(
                        f"{where}: a solution directive must be alone in its markdown cell"
                    )
                kind = kinds[0]
                if kind == "solution-start":
                    if in_gate:
                        raise SolutionMarkupError(f"{where}: solution-start inside another solution")
                    in_gate = True
                elif kind == "solution-end":
                    if not in_gate:
                        raise SolutionMarkupError(f"{where}: solution-end without solution-start")
                    in_gate = False
                continue
            if in_gate:
                continue
            out.cells.append(
                nbformat.v4.new_markdown_cell(cell.source, metadata=dict(cell.metadata), id=cell_id)
            )
        elif cell.cell_type == "code":
            metadata = dict(cell.metadata)
            has_solution = bool(solution_lines(cell.source))
            if nbgrader:
                strip_solutions(cell.source, where)  # validates the markers
                source = cell.source
                checked = _CHECK_CALL.search(cell.source)
                if has_solution:
                    if label is None:
                        raise SolutionMarkupError(f"{where}: a solution before any exercise's :label:")
                    metadata["nbgrader"] = _nbgrader_meta(
                        grade_id(f"{label}-answer", where, numbered=True), solution=True
                    )
                elif checked:
                    if len(_CHECK_CALL.findall(cell.source)) > 1:
                        raise SolutionMarkupError(
                            f"{where}: one graded check per cell, so each has its points"
                        )
                    metadata["nbgrader"] = _nbgrader_meta(
                        grade_id(f"{checked.group(1)}-check", where, numbered=False), grade=True
                    )
            else:
                source = strip_solutions(cell.source, where)
            out.cells.append(nbformat.v4.new_code_cell(source, metadata=metadata, id=cell_id))
        else:
            out.cells.append(nbformat.v4.new_raw_cell(cell.source, metadata=dict(cell.metadata), id=cell_id))
    if in_gate:
        raise SolutionMarkupError(f"{name}: solution-start without solution-end")
    return out


def _nbgrader_meta(grade_id: str, *, solution: bool = False, grade: bool = False) -> dict[str, object]:
    meta: dict[str, object] = {
        "grade": grade,
        "grade_id": grade_id,
        "locked": grade,
        "schema_version": 3,
        "solution": solution,
        "task": False,
    }
    if grade:
        meta["points"] = 1
    return meta


def _is_single_directive(source: str) -> bool:
    """True when the cell holds one fenced directive and nothing outside the fence."""
    text = source.strip()
    match = re.match(r"^(:{3,}|`{3,})", text)
    return bool(match) and text.rstrip().endswith(match.group(1)) and text.count(match.group(1)) == 2


def check_folders(source_dir: Path, out_dir: Path, only: list[str] | None = None) -> list[Path]:
    """The chapter notebooks in ``source_dir`` (those named in ``only``), if student versions can go into ``out_dir``.

    Raises:
        FileNotFoundError: ``source_dir`` holds no notebooks, or none named ``only``.
        NotADirectoryError: ``out_dir`` is a file.
        ValueError: ``out_dir`` is ``source_dir`` (the chapters would be replaced).
    """
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    notebooks = sorted(source_dir.glob("*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(
            f"no chapter notebooks (*.ipynb) in {source_dir}; run this from the course repository's root "
            "or pass --source with the folder that holds them"
        )
    if only:
        unknown = sorted(set(only) - {path.stem for path in notebooks})
        if unknown:
            raise FileNotFoundError(
                f"no chapter {', '.join(unknown)} in {source_dir}; the chapters are "
                + ", ".join(path.stem for path in notebooks)
            )
        notebooks = [path for path in notebooks if path.stem in only]
    if out_dir.resolve() == source_dir.resolve():
        raise ValueError(
            "the output folder must differ from the source folder (the chapters would be overwritten)"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} is a file; give a folder to write the student notebooks into")
    return notebooks


def write_student_notebooks(
    source_dir: Path,
    out_dir: Path,
    *,
    nbgrader: bool = False,
    force: bool = False,
    only: list[str] | None = None,
) -> list[Path]:
    """Write the student (or, with ``nbgrader``, nbgrader source) version of every chapter into ``out_dir``.

    A notebook already in ``out_dir`` is rewritten only if it holds exactly what would be written
    (or with ``force``). If any differs (a learner's answers, or a chapter that changed since),
    nothing is written and :class:`OverwriteError` names every such file.

    Raises:
        FileNotFoundError, NotADirectoryError, ValueError: see :func:`check_folders`.
        OverwriteError: a notebook in ``out_dir`` differs from its student version and ``force`` is False.
        SolutionMarkupError: a chapter's solution markers are malformed.
    """
    import nbformat

    source_dir, out_dir = Path(source_dir), Path(out_dir)
    notebooks = check_folders(source_dir, out_dir, only)
    planned = {
        out_dir / path.name: nbformat.writes(
            student_notebook(nbformat.read(path, as_version=4), path.name, nbgrader=nbgrader)
        )
        for path in notebooks
    }
    _refuse_changed(planned, force, "the student version (answers filled in, or an older chapter)")
    out_dir.mkdir(parents=True, exist_ok=True)
    for target, text in planned.items():
        target.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    return list(planned)


def _same_notebook(path: Path, text: str) -> bool:
    """Whether the notebook file ``path`` holds the notebook ``text`` (as JSON: layout aside)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")) == json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


NBGRADER_CONFIG = """\
# nbgrader's configuration for the mpcourse chapters (written by `mpcourse nbgrader-course`).
# Run every nbgrader command from this folder, in the environment that has torch and mpcourse
# installed: the autograder executes each notebook with that environment's "python3" kernel.
import os

c = get_config()  # noqa: F821 (nbgrader defines it when it reads this file)
c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.course_id = "mpcourse"
# A chapter's longest cell, on a slow machine, in the smallest problem size.
c.Execute.timeout = 900
os.environ.setdefault("MPCOURSE_PROFILE", "ci")
# Unanswered exercises already score zero (their check writes "not done yet" to stderr); this makes
# them raise NotDoneYet as well, so the feedback shows them as failures.
os.environ.setdefault("MPCOURSE_GRADING", "1")
# Uncomment for graded work without hints: failures then say only what was wrong.
# os.environ["MPCOURSE_HINTS"] = "off"
"""


def write_nbgrader_course(
    course_dir: Path, source_dir: Path, *, only: list[str] | None = None, force: bool = False
) -> list[Path]:
    """Lay out an nbgrader course: one assignment per chapter, ``source/<slug>/<slug>.ipynb``.

    Writes ``nbgrader_config.py`` too, unless one exists (an instructor's own settings are kept).
    The source notebooks follow :func:`write_student_notebooks`'s rule: if one differs from what
    would be written (edited by the instructor, or from an older chapter), nothing is written
    unless ``force``. Returns the files written.
    """
    import nbformat

    course_dir, source_dir = Path(course_dir), Path(source_dir)
    if course_dir.exists() and not course_dir.is_dir():
        raise NotADirectoryError(f"{course_dir} is a file; give a folder for the nbgrader course")
    notebooks = check_folders(source_dir, course_dir / "source", only)
    planned = {
        course_dir / "source" / path.stem / path.name: nbformat.writes(
            student_notebook(nbformat.read(path, as_version=4), path.name, nbgrader=True)
        )
        for path in notebooks
    }
    _refuse_changed(planned, force, "the chapter's nbgrader version (edited by hand, or an older chapter)")
    for target, text in planned.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    written = list(planned)
    config = course_dir / "nbgrader_config.py"
    if not config.exists():
        config.write_text(NBGRADER_CONFIG, encoding="utf-8")
        written.append(config)
    return written


def _refuse_changed(planned: dict[Path, str], force: bool, version: str) -> None:
    """Raise :class:`OverwriteError` naming every planned file that exists with other content, unless ``force``."""
    changed = [
        str(target)
        for target, text in planned.items()
        if target.exists() and not _same_notebook(target, text)
    ]
    if changed and not force:
        one = len(changed) == 1
        raise OverwriteError(
            f"{', '.join(changed)} {'differs' if one else 'differ'} from {version}, so no notebook was "
            f"written; pass --force to replace {'it (its' if one else 'them (their'} changes are lost), "
            "or write into another folder"
        )
