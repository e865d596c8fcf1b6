"""Run every chapter top to bottom and record where and how it ran, as data.

"Runs everywhere" is a claim to check, not to assert: ``mpcourse verify`` executes each chapter
notebook in a fresh kernel with a chosen profile and writes one record per chapter (status,
seconds, the first error if any, the device, library versions, date, profile, commit) to a JSON
file. Records of runs on real machines are committed under ``mpcourse/reference/verified/``
(``mpcourse/reference/verified/``, read by :func:`mpcourse.reference.records`) and tabulated on the website's "Where the course was run" page; they are
never typed in by hand.

Neither the records file nor the executed notebooks replace an existing file unless ``force`` is
given (``--force``), and an executed notebook never replaces the chapter it ran; both are checked
before the first chapter starts, since a full run takes an hour.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from .. import claims, sizes
from ..bench.results import ensure_writable
from ..provenance import environment

if TYPE_CHECKING:
    import pandas as pd


def run_chapter(
    path: Path,
    profile_name: str,
    timeout: int = 1800,
    executed_dir: Path | None = None,
    *,
    force: bool = False,
) -> dict[str, object]:
    """Execute one chapter notebook in a fresh kernel; return its record (and save the executed
    notebook into ``executed_dir``, if given: see :func:`verify`)."""
    _check_profile(profile_name)
    if executed_dir is not None:
        _executed_path(path, executed_dir, force)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, resources={"metadata": {"path": str(path.parent)}})
    record: dict[str, object] = {
        "chapter": path.stem,
        "profile": profile_name,
        "status": "passed",
        "error": None,
    }
    start = time.perf_counter()
    try:
        # Strict claims: a chapter "passed" only if every sentence it checks held on this machine.
        client.execute(env={**os.environ, sizes.ENV_VAR: profile_name, claims.ENV_VAR: "strict"})
    except CellExecutionError as exc:
        record["status"] = "failed"
        record["error"] = f"{exc.ename}: {exc.evalue}"[:2000]
    record["seconds"] = round(time.perf_counter() - start, 1)
    record["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    if executed_dir is not None:
        target = _executed_path(path, executed_dir, force)
        target.parent.mkdir(parents=True, exist_ok=True)
        nb.metadata.pop("widgets", None)
        nbformat.write(nb, target)
    return record


def _check_profile(profile_name: str) -> None:
    if profile_name not in sizes.PROFILES:
        raise ValueError(f"unknown profile {profile_name!r}; accepted: {', '.join(sizes.PROFILES)}")


def _executed_path(chapter: Path, executed_dir: Path, force: bool) -> Path:
    """Where the executed copy of ``chapter`` goes, if that destroys nothing (see :func:`verify`)."""
    target = Path(executed_dir) / Path(chapter).name
    if target.resolve() == Path(chapter).resolve():
        raise ValueError(
            f"the executed notebook would replace the chapter {chapter}; give --executed another folder"
        )
    return ensure_writable(target, overwrite=force, what="executed notebook")


def check_notebooks(notebooks: list[Path]) -> None:
    """Raise FileNotFoundError for notebooks that do not exist, ValueError for files that are not notebooks."""
    missing = [str(p) for p in notebooks if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"no such notebook: {', '.join(missing)}")
    other = [str(p) for p in notebooks if Path(p).suffix != ".ipynb"]
    if other:
        raise ValueError(
            f"verify runs notebooks (.ipynb), not {', '.join(other)}; each chapter's .md has an .ipynb pair"
        )


def check_arguments(
    notebooks: list[Path],
    profile_name: str,
    *,
    out: Path | None = None,
    executed_dir: Path | None = None,
    jobs: int = 1,
    force: bool = False,
) -> None:
    """Check the arguments of :func:`verify` (which calls this first), raising what it documents."""
    if not notebooks:
        raise FileNotFoundError(
            "no chapter notebooks given (run from the repository root, or pass their paths)"
        )
    _check_profile(profile_name)
    if jobs < 1:
        raise ValueError(f"jobs must be a positive number of chapters to run at once, got {jobs}")
    check_notebooks(notebooks)
    if out is not None:
        ensure_writable(out, overwrite=force, what="records file")
    if executed_dir is not None:
        names = [Path(p).name for p in notebooks]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(
                f"two notebooks named {', '.join(twice)} would be saved as one file in {executed_dir}"
            )
        if Path(executed_dir).exists() and not Path(executed_dir).is_dir():
            raise NotADirectoryError(f"{executed_dir} is a file; --executed takes a folder")
        for path in notebooks:
            _executed_path(Path(path), Path(executed_dir), force)


def verify(
    notebooks: list[Path],
    profile_name: str,
    out: Path | None = None,
    executed_dir: Path | None = None,
    jobs: int = 1,
    *,
    force: bool = False,
) -> list[dict[str, object]]:
    """Run each notebook; print one line per chapter; write the records (with the environment) to ``out``.

    ``jobs`` > 1 runs that many chapters at once, each in its own kernel: faster on a machine with
    many cores, at the price of chapters' own timings, which then share the device (the records
    say how many ran together). ``executed_dir`` also keeps each executed notebook there.

    Raises, before any chapter runs:
        FileNotFoundError: no notebooks, or one that does not exist.
        ValueError: a file that is not a notebook, an unknown profile, ``jobs`` < 1, or an
            ``executed_dir`` that holds the chapters themselves.
        OverwriteError: ``out`` or an executed notebook exists and ``force`` is False.
    """
    check_arguments(notebooks, profile_name, out=out, executed_dir=executed_dir, jobs=jobs, force=force)
    env = {**environment(), "concurrent_chapters": jobs}
    print(
        f"verifying {len(notebooks)} chapters, profile '{profile_name}', {jobs} at a time, on {env['device']}"
    )

    def run(path: Path) -> dict[str, object]:
        record = {**run_chapter(Path(path), profile_name, executed_dir=executed_dir, force=force), **env}
        print(
            f"  {record['chapter']:<24} {record['status']:<7} {record['seconds']:>7.1f} s  {record['error'] or ''}"
        )
        return record

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        records = list(pool.map(run, notebooks))
    if out is not None:
        out = ensure_writable(
            out, overwrite=force, what="records file"
        )  # again: it may have appeared meanwhile
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(records, indent=1) + "\n")
    return records


def summary(records: list[dict[str, object]]) -> pd.DataFrame:
    """One row per chapter, one column per run (machine, profile, commit): "passed, 12.3 s" or the failure."""
    import pandas as pd

    if not records:
        return pd.DataFrame()
    frame = pd.DataFrame(records)
    frame["commit"] = frame["commit"].fillna("-")
    frame["result"] = [
        f"{r.status}, {r.seconds:.1f} s" if r.status == "passed" else f"{r.status}: {r.error}"
        for r in frame.itertuples()
    ]
    table = frame.pivot_table(
        index="chapter", columns=["device", "profile", "commit"], values="result", aggfunc="last"
    )
    # Within a machine, the profiles from smallest to largest (pivot_table sorts them alphabetically).
    rank = {name: i for i, name in enumerate(sizes.PROFILES)}
    columns = sorted(table.columns, key=lambda c: (c[0], rank.get(c[1], len(rank)), c[2]))
    return table[columns].fillna("not in this run")
