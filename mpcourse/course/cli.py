"""The ``mpcourse`` command: student notebooks, the environment report, verification, benchmarks, recording.

A mistake on the command line or in the working folder (a missing folder, a file that exists and
``--force`` was not given, an unknown profile) is reported as one line, ``mpcourse: error: ...``,
on stderr with exit status 2, as argparse reports its own errors; a traceback means a bug.
A command never replaces a file it did not just create unless given ``--force``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

#: Benchmarks runnable as ``mpcourse bench TOPIC``: topic -> "module:function". Each function takes
#: ``(save: Path | None, quick: bool, force: bool)``, prints a table anyone can reproduce, writes its
#: results as data to ``save`` when given (replacing a file there only with ``force``), and returns
#: an exit status.
BENCHES: dict[str, str] = {
    "formats": "mpcourse.bench.formats:benchmark",
    "fp8": "mpcourse.bench.fp8:benchmark",
    "fp8_recipes": "mpcourse.bench.fp8_recipes:benchmark",
    "matmul": "mpcourse.bench.commands:matmul",
    "train": "mpcourse.bench.commands:train",
}

#: Exit status for a user's error (argparse's convention).
USAGE = 2

#: The packages of the ``course`` extra (pyproject.toml): only the notebook tooling (student, verify,
#: record) imports them, so ``doctor`` and ``bench`` run without them.
COURSE_EXTRA: tuple[str, ...] = ("nbformat", "nbclient")
#: The package of the ``grade`` extra, which only ``nbgrader-check`` imports.
GRADE_EXTRA: tuple[str, ...] = ("nbgrader",)


class UsageError(ValueError):
    """What was asked cannot be done as asked; the message says what was wrong and what is accepted."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that the user's arguments or working folder cause, reported in one line.

    Library functions raise these for bad paths, existing files and malformed solution markers;
    argument errors they raise as ValueError are turned into UsageError by :func:`_arguments` only
    around the checks, so that a bug elsewhere still shows its traceback. (Imported when a command
    fails, not with this module: ``mpcourse --help`` should not wait for torch and pandas.)
    """
    from ..bench.results import OverwriteError
    from .student import SolutionMarkupError

    return (
        UsageError,
        OverwriteError,
        FileNotFoundError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
        SolutionMarkupError,
    )


@contextlib.contextmanager
def _arguments() -> Iterator[None]:
    """Around argument checks only: a ValueError raised there is the user's (bad input), not a bug."""
    try:
        yield
    except ValueError as exc:
        if isinstance(exc, user_errors()):
            raise
        raise UsageError(str(exc)) from exc


def _student(args: argparse.Namespace) -> int:
    from .student import check_folders, write_student_notebooks

    with _arguments():
        check_folders(Path(args.source), Path(args.outdir), args.chapter)
    for path in write_student_notebooks(
        Path(args.source), Path(args.outdir), nbgrader=args.nbgrader, force=args.force, only=args.chapter
    ):
        print(f"wrote {path}")
    return 0


def _nbgrader_course(args: argparse.Namespace) -> int:
    from .student import check_folders, write_nbgrader_course

    with _arguments():
        check_folders(Path(args.source), Path(args.course_dir) / "source", args.chapter)
    for path in write_nbgrader_course(
        Path(args.course_dir), Path(args.source), only=args.chapter, force=args.force
    ):
        print(f"wrote {path}")
    print(
        f"next: cd {args.course_dir} && nbgrader generate_assignment SLUG --create "
        "(book/instructors.md has the whole cycle)"
    )
    return 0


def _nbgrader_check(args: argparse.Namespace) -> int:
    import warnings

    from .grading import check_course

    with warnings.catch_warnings():  # nbgrader's gradebook trips SQLAlchemy 2's session warnings
        warnings.simplefilter("ignore")
        grades = check_course(Path(args.course_dir), args.chapter)
    failed = 0
    for grade in grades:
        full = grade.score == grade.max_score and not grade.errors
        failed += not full
        print(f"{'ok ' if full else 'BAD'} {grade.assignment}: {grade.score:g} of {grade.max_score:g} points")
        for name, score in grade.per_check.items():
            if score < 1:
                print(f"    {name}: no points for the reference solution")
        for error in grade.errors:
            print(f"    {error}")
    return 1 if failed else 0


def _chapter_options(parser: argparse.ArgumentParser, force_help: str) -> None:
    """--source, --chapter and --force: what every command that writes notebooks from the chapters takes."""
    parser.add_argument(
        "--source", default="notebooks", help="folder of instructor notebooks (default: notebooks)"
    )
    parser.add_argument(
        "--chapter",
        action="append",
        metavar="SLUG",
        help="only this chapter (repeat for several; default: every chapter), e.g. --chapter fp8",
    )
    parser.add_argument("--force", action="store_true", help=force_help)


def _doctor(args: argparse.Namespace) -> int:
    import importlib.metadata as md

    from .. import report

    print(report())
    print("packages:")
    for name in ("numpy", "plotly", "ipywidgets", "tqdm", "pandas", "datasets", "ml_dtypes", "jupyter-book"):
        try:
            version = md.version(name)
        except md.PackageNotFoundError:
            version = "not installed"
        print(f"  {name:<12}  {version}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from . import verify

    notebooks = [Path(p) for p in args.notebooks] or sorted(Path("notebooks").glob("*.ipynb"))
    options = {
        "out": Path(args.out) if args.out else None,
        "executed_dir": Path(args.executed) if args.executed else None,
        "jobs": args.jobs,
        "force": args.force,
    }
    with _arguments():
        verify.check_arguments(notebooks, args.profile, **options)
    records = verify.verify(notebooks, args.profile, **options)
    return 0 if all(r["status"] == "passed" for r in records) else 1


def bench_function(topic: str) -> Callable[..., int]:
    """The function behind ``mpcourse bench TOPIC`` (see :data:`BENCHES`), imported on demand."""
    module, _, function = BENCHES[topic].partition(":")
    return getattr(importlib.import_module(module), function)


def _bench(args: argparse.Namespace) -> int:
    from ..bench.results import ensure_writable

    save = (
        ensure_writable(args.save, overwrite=args.force, what="result file") if args.save else None
    )  # before the run
    return bench_function(args.topic)(save=save, quick=args.quick, force=args.force)


def _record(args: argparse.Namespace) -> int:
    from .record import STEPS, record

    with _arguments():  # record() checks its arguments first, then catches what each step raises
        results = record(
            args.steps or STEPS,
            profile_name=args.profile,
            out=Path(args.out) if args.out else None,
            notebooks=[Path(p) for p in args.notebooks],
            quick=args.quick,
            jobs=args.jobs,
            force=args.force,
        )
    return 0 if all(r.status != "failed" for r in results) else 1


def _check_environment() -> None:
    """The environment variables every command reads: a wrong value is named before anything runs."""
    from .. import device, sizes

    with _arguments():
        sizes.current()
        preset = os.environ.get("MPCOURSE_DEVICE_PRESET")
        if preset:
            device.capabilities(preset=preset)


class _Parser(argparse.ArgumentParser):
    """argparse's parser, with its errors in the one-line form of every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"mpcourse: error: {message} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    """The command line of ``mpcourse``: one subcommand per task."""
    top = _Parser(prog="mpcourse", description="Mixed-precision course helper.")
    sub = top.add_subparsers(dest="command", required=True)
    student = sub.add_parser("student", help="write student notebooks (reference solutions removed)")
    student.add_argument("outdir", help="folder to write the student notebooks into")
    _chapter_options(
        student, "replace notebooks in OUTDIR that differ from their student version (answers are lost)"
    )
    student.add_argument(
        "--nbgrader",
        action="store_true",
        help="write nbgrader source notebooks instead (markers kept, nbgrader cell metadata added)",
    )
    student.set_defaults(run=_student)
    course = sub.add_parser(
        "nbgrader-course",
        help="lay out an nbgrader course folder: one assignment per chapter, and nbgrader_config.py",
    )
    course.add_argument("course_dir", help="the course folder (created if missing)")
    _chapter_options(
        course, "replace source notebooks that differ from the chapters' nbgrader version (edits are lost)"
    )
    course.set_defaults(run=_nbgrader_course)
    grading = sub.add_parser(
        "nbgrader-check",
        help="autograde the reference solutions of an nbgrader course folder, in a scratch copy of it",
    )
    grading.add_argument("course_dir", help="a folder written by `mpcourse nbgrader-course`")
    grading.add_argument("--chapter", action="append", metavar="SLUG", help="only this assignment (repeat)")
    grading.set_defaults(run=_nbgrader_check)
    doctor = sub.add_parser("doctor", help="print the device, precision support and package versions")
    doctor.set_defaults(run=_doctor)
    verify = sub.add_parser("verify", help="run every chapter and record where and how it ran")
    verify.add_argument("notebooks", nargs="*", help="chapter notebooks (default: notebooks/*.ipynb)")
    verify.add_argument("--profile", default="full", choices=["ci", "small", "full"], help="problem sizes")
    verify.add_argument("--out", metavar="FILE", help="write the records to this JSON file")
    verify.add_argument("--executed", metavar="DIR", help="also save the executed notebooks here")
    verify.add_argument("--jobs", type=_positive_int, default=1, help="chapters to run at once (default 1)")
    verify.add_argument(
        "--force", action="store_true", help="replace the records file and executed notebooks if they exist"
    )
    verify.set_defaults(run=_verify)
    bench = sub.add_parser("bench", help="run a benchmark and print its table")
    bench.add_argument("topic", choices=sorted(BENCHES), help="what to measure")
    bench.add_argument(
        "--save", metavar="PATH", help="also store the results, with device, versions and date"
    )
    bench.add_argument("--quick", action="store_true", help="fewer sizes and repeats (a smoke run)")
    bench.add_argument("--force", action="store_true", help="replace the --save file if it exists")
    bench.set_defaults(run=_bench)
    rec = sub.add_parser(
        "record",
        help="run the benchmarks and verify every chapter; store the results under this machine's name",
    )
    rec.add_argument(
        "--steps",
        nargs="+",
        choices=["matmul", "train", "fp8", "fp8_recipes", "verify"],
        help="what to run (default: all, in that order)",
    )
    rec.add_argument(
        "--profile", choices=["ci", "small", "full"], help="problem sizes (default: the active profile)"
    )
    rec.add_argument(
        "--out",
        metavar="DIR",
        help="write into DIR, laid out as the package (default: the package's own folders)",
    )
    rec.add_argument(
        "--notebooks",
        nargs="+",
        default=[],
        metavar="NB",
        help="chapters to verify (default: notebooks/*.ipynb)",
    )
    rec.add_argument("--quick", action="store_true", help="the benchmarks' smoke sizes (to try the command)")
    rec.add_argument("--jobs", type=_positive_int, default=1, help="chapters to verify at once (default 1)")
    rec.add_argument("--force", action="store_true", help="replace results that are already stored")
    rec.set_defaults(run=_record)
    return top


def main(argv: list[str] | None = None) -> int:
    """Run ``mpcourse`` with ``argv`` (default: the command line); return the exit status."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad argument (2), already printed
        return exc.code if isinstance(exc.code, int) else USAGE
    try:
        _check_environment()
        return args.run(args)
    except user_errors() as exc:
        print("mpcourse: error: " + " ".join(str(exc).split()), file=sys.stderr)  # one line
        return USAGE
    except ModuleNotFoundError as exc:
        extra = "course" if exc.name in COURSE_EXTRA else "grade" if exc.name in GRADE_EXTRA else None
        if extra is None:
            raise
        print(
            f"mpcourse: error: 'mpcourse {args.command}' needs the {extra} extra ({exc.name} is not installed): "
            f"pip install 'mpcourse[{extra}]'",
            file=sys.stderr,
        )
        return USAGE


if __name__ == "__main__":
    sys.exit(main())
