"""The ``mpcourse`` command: student notebooks, the environment report, verification, benchmarks, recording."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

#: Benchmarks runnable as ``mpcourse bench TOPIC``: topic -> "module:function". Each function takes
#: ``(save: Path | None, quick: bool)``, prints a table anyone can reproduce, writes its results as
#: data to ``save`` when given, and returns an exit status.
BENCHES: dict[str, str] = {
    "formats": "mpcourse.bench.formats:benchmark",
    "fp8": "mpcourse.bench.fp8:benchmark",
    "matmul": "mpcourse.bench.commands:matmul",
    "train": "mpcourse.bench.commands:train",
}


def _student(args: argparse.Namespace) -> int:
    from .student import write_student_notebooks

    for path in write_student_notebooks(Path(args.source), Path(args.outdir), nbgrader=args.nbgrader):
        print(f"wrote {path}")
    return 0


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
    from .verify import verify

    notebooks = [Path(p) for p in args.notebooks] or sorted(Path("notebooks").glob("*.ipynb"))
    records = verify(
        notebooks,
        args.profile,
        out=Path(args.out) if args.out else None,
        executed_dir=Path(args.executed) if args.executed else None,
        jobs=args.jobs,
    )
    return 0 if all(r["status"] == "passed" for r in records) else 1


def bench_function(topic: str) -> Callable[..., int]:
    """The function behind ``mpcourse bench TOPIC`` (see :data:`BENCHES`), imported on demand."""
    module, _, function = BENCHES[topic].partition(":")
    return getattr(importlib.import_module(module), function)


def _bench(args: argparse.Namespace) -> int:
    return bench_function(args.topic)(save=Path(args.save) if args.save else None, quick=args.quick)


def _record(args: argparse.Namespace) -> int:
    from .record import STEPS, record

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mpcourse", description="Mixed-precision course helper.")
    sub = parser.add_subparsers(dest="command", required=True)
    student = sub.add_parser("student", help="write student notebooks (reference solutions removed)")
    student.add_argument("outdir", help="folder to write the student notebooks into")
    student.add_argument("--source", default="notebooks", help="folder of instructor notebooks (default: notebooks)")
    student.add_argument(
        "--nbgrader",
        action="store_true",
        help="write nbgrader source notebooks instead (markers kept, nbgrader cell metadata added)",
    )
    student.set_defaults(run=_student)
    doctor = sub.add_parser("doctor", help="print the device, precision support and package versions")
    doctor.set_defaults(run=_doctor)
    verify = sub.add_parser("verify", help="run every chapter and record where and how it ran")
    verify.add_argument("notebooks", nargs="*", help="chapter notebooks (default: notebooks/*.ipynb)")
    verify.add_argument("--profile", default="full", choices=["ci", "small", "full"], help="problem sizes")
    verify.add_argument("--out", metavar="FILE", help="write the records to this JSON file")
    verify.add_argument("--executed", metavar="DIR", help="also save the executed notebooks here")
    verify.add_argument("--jobs", type=int, default=1, help="chapters to run at once (default 1)")
    verify.set_defaults(run=_verify)
    bench = sub.add_parser("bench", help="run a benchmark and print its table")
    bench.add_argument("topic", choices=sorted(BENCHES), help="what to measure")
    bench.add_argument("--save", metavar="PATH", help="also store the results, with device, versions and date")
    bench.add_argument("--quick", action="store_true", help="fewer sizes and repeats (a smoke run)")
    bench.set_defaults(run=_bench)
    rec = sub.add_parser(
        "record",
        help="run the benchmarks and verify every chapter; store the results under this machine's name",
    )
    rec.add_argument("--steps", nargs="+", choices=["matmul", "train", "fp8", "verify"],
                     help="what to run (default: all, in that order)")
    rec.add_argument("--profile", choices=["ci", "small", "full"], help="problem sizes (default: the active profile)")
    rec.add_argument("--out", metavar="DIR", help="write into DIR, laid out as the package (default: the package's own folders)")
    rec.add_argument("--notebooks", nargs="+", default=[], metavar="NB", help="chapters to verify (default: notebooks/*.ipynb)")
    rec.add_argument("--quick", action="store_true", help="the benchmarks' smoke sizes (to try the command)")
    rec.add_argument("--jobs", type=int, default=1, help="chapters to verify at once (default 1)")
    rec.add_argument("--force", action="store_true", help="replace results that are already stored")
    rec.set_defaults(run=_record)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
