"""Benchmark results as data: what was measured, where, with which software, when, and by which command.

A result file is JSON with a fixed set of keys (:data:`KEYS`): ``schema``, ``topic`` (``matmul``,
``train``, ...), ``date`` (UTC, ISO 8601), ``command`` (what produced it, to reproduce it),
``profile``, ``environment`` (device, compute capability, torch / CUDA / Python / mpcourse versions,
commit; from :func:`mpcourse.provenance.environment`), ``conditions`` (the load average when it was
saved, and the CPU threads PyTorch used) and ``tables`` (name -> list of row records).
Missing measurements are ``null``. Reference results measured on real machines ship with the
package in ``mpcourse/reference/`` and chapters plot them next to the reader's own; no
result number is ever typed in by hand.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from .. import provenance, reference, sizes

__all__ = [
    "KEYS",
    "SCHEMA",
    "OverwriteError",
    "bf16_vs_fp32",
    "by_label",
    "devices",
    "ensure_writable",
    "gpu_records",
    "label",
    "load",
    "make_record",
    "missing_gpu_note",
    "save",
    "table",
]

SCHEMA = 1
KEYS = ("schema", "topic", "date", "command", "profile", "environment", "tables")


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def make_record(
    topic: str,
    tables: dict[str, pd.DataFrame | list[dict[str, Any]]],
    *,
    command: str,
    environment: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A result record for ``tables`` measured on this machine now, by ``command``.

    ``environment`` adds entries to the detected device and versions (e.g. the version of an
    optional library the measurement used), so that every topic shares one format and one loader.
    """
    if not tables:
        raise ValueError("a result record needs at least one table")
    rows = {
        name: t.to_dict("records") if isinstance(t, pd.DataFrame) else list(t) for name, t in tables.items()
    }
    record = {
        "schema": SCHEMA,
        "topic": topic,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "profile": sizes.current(),
        "environment": provenance.environment() | (environment or {}),
        "conditions": _conditions(),
        "tables": rows,
    }
    return _clean(record)


def _conditions() -> dict[str, Any]:
    """How busy the machine was when the record was made (a shared machine measures slower and
    noisier), and how many CPU threads PyTorch used (``OMP_NUM_THREADS`` sets it at start-up)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        load = None
    import torch

    return {"load_average_1min": load, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}


class OverwriteError(FileExistsError):
    """A file the command did not create would be replaced; the message names it and the flag that allows it.

    Every command that writes files (``mpcourse bench --save``, ``verify``, ``record``, ``student``)
    refuses this way: a stored measurement from a GPU rented for an hour, or a learner's filled-in
    notebook, is worth more than the convenience of writing over it.
    """


def ensure_writable(path: str | Path, *, overwrite: bool = False, what: str = "file") -> Path:
    """``path`` as a :class:`~pathlib.Path`, if writing ``what`` there destroys nothing (or ``overwrite``).

    Call it before a long measurement as well as when saving, so that a run is not wasted on a
    file name it may not use.

    Raises:
        IsADirectoryError: ``path`` is a folder (a file name is needed).
        OverwriteError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give the name of the {what} to write")
    if path.exists() and not overwrite:
        raise OverwriteError(
            f"{path} already exists and was not replaced; pass --force (overwrite=True in Python) to replace it, "
            "or choose another name"
        )
    return path


def save(record: dict[str, Any], path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``record`` as JSON to ``path`` (folders created); returns the path.

    Raises:
        OverwriteError: ``path`` exists and ``overwrite`` is False (see :func:`ensure_writable`).
        ValueError: ``record`` is not a result record.
    """
    _validate(record, str(path))
    path = ensure_writable(path, overwrite=overwrite, what="result file")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(record), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return path


def load(path: str | Path) -> dict[str, Any]:
    """Read a result file, checking that it has every key of the format."""
    path = Path(path)
    record = json.loads(path.read_text(encoding="utf-8"))
    _validate(record, str(path))
    return record


def _validate(record: Any, where: str) -> None:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: a result record is a JSON object, got {type(record).__name__}")  # noqa: TRY004
    missing = [k for k in KEYS if k not in record]
    if missing:
        raise ValueError(
            f"{where}: not a benchmark result, missing keys {missing}; a result has {list(KEYS)}"
        )
    if record["schema"] != SCHEMA:
        raise ValueError(f"{where}: result schema {record['schema']!r} is not the supported {SCHEMA}")
    if not isinstance(record["tables"], dict):
        raise ValueError(f"{where}: 'tables' must map table names to lists of rows")  # noqa: TRY004


def label(record: dict[str, Any]) -> str:
    """A short name for a record in legends: device, torch version and date.

    A CPU is named with the instruction-set flags that decide its low-precision speed (AVX2 only,
    or AVX512-BF16/AMX), since two CPUs of one vendor can differ in exactly that, and with the
    number of threads the measurement used.
    """
    env = record["environment"]
    threads = record.get("conditions", {}).get("torch_threads")
    if env.get("kind") == "cpu":
        described = str(env.get("device") or env.get("device_name", "?"))
        where = described.removeprefix("cpu: ") + (
            f", {threads} thread{'s' * (threads > 1)}" if threads else ""
        )
    else:
        where = str(env.get("device_name", "?"))
    return f"{where} (torch {env.get('torch', '?')}, {record['date'][:10]})"


def by_label(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The records keyed by :func:`label`, made unique (``#2``, ``#3``...) where two would share one,
    so that no stored run disappears from a table or a figure keyed by its label."""
    out: dict[str, dict[str, Any]] = {}
    for record in records:
        name, n = label(record), 1
        while name in out:
            n += 1
            name = f"{label(record)} #{n}"
        out[name] = record
    return out


def devices(records: list[dict[str, Any]]) -> list[str]:
    """The distinct devices of ``records`` (as :func:`mpcourse.provenance.environment` describes them), in order."""
    return list(
        dict.fromkeys(
            str(r["environment"].get("device") or r["environment"].get("device_name", "?")) for r in records
        )
    )


def gpu_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records measured on a CUDA GPU."""
    return [r for r in records if r["environment"].get("kind") == "cuda"]


def missing_gpu_note(topic: str, device: str = "a GPU") -> str:
    """What to say, and how to fix it, when no stored record of ``topic`` comes from a GPU.

    Every chapter says it in these words; ``device`` (which GPUs can run the benchmark) adapts it
    to a topic. The file named is where ``mpcourse record`` would put it.
    """
    return (
        f"No GPU reference results are stored yet for `mpcourse bench {topic}`; run "
        f"`mpcourse bench {topic} --save mpcourse/reference/{topic}/<gpu>.json` on {device} to add yours "
        "(or `mpcourse record`, which names the file after the GPU)."
    )


def table(record: dict[str, Any], name: str, source: str | None = None) -> pd.DataFrame:
    """Table ``name`` of a record as a DataFrame, with ``source`` (default: the record's label) in a
    ``source`` column."""
    if name not in record["tables"]:
        raise KeyError(f"the record has no table {name!r}; it has: {', '.join(record['tables'])}")
    frame = pd.DataFrame(record["tables"][name])
    frame["source"] = source if source is not None else label(record)
    return frame


def bf16_vs_fp32(
    matmul: list[dict[str, Any]] | None = None, train: list[dict[str, Any]] | None = None
) -> pd.DataFrame:
    """bf16 against fp32 in stored records, one row per comparison: the question the bf16 and recipe
    chapters ask of every machine the course was measured on.

    ``matmul`` and ``train`` are records of those topics (default: the stored references). A matmul
    record gives a row for each square size where both precisions ran; a train record gives one for
    the bf16 autocast step and one for the pure-bf16 step. Columns: ``device`` (:func:`label`),
    ``kind`` (cpu, cuda), ``bf16`` (native or emulated there), ``what``, ``fp32 ms``, ``bf16 ms`` and
    ``bf16 / fp32 time`` (above 1: bf16 was slower).
    """
    matmul = reference.records("matmul") if matmul is None else matmul
    train = reference.records("train") if train is None else train
    rows = []

    def add(record: dict[str, Any], status: str, what: str, fp32_ms: float, bf16_ms: float) -> None:
        rows.append(
            {
                "device": label(record),
                "kind": record["environment"].get("kind"),
                "bf16": status,
                "what": what,
                "fp32 ms": fp32_ms,
                "bf16 ms": bf16_ms,
                "bf16 / fp32 time": bf16_ms / fp32_ms,
            }
        )

    for record in matmul:
        square = {
            (r["precision"], r["n"]): r
            for r in record["tables"].get("matmul", [])
            if r.get("seconds") and r["m"] == r["n"] == r["k"]
        }
        for n in sorted(n for p, n in square if p == "bf16" and ("fp32", n) in square):
            bf16, fp32 = square[("bf16", n)], square[("fp32", n)]
            add(record, bf16["status"], f"matmul n = {n}", 1e3 * fp32["seconds"], 1e3 * bf16["seconds"])
    for record in train:
        steps = {r["recipe"]: r for r in record["tables"].get("recipes", []) if r.get("step_ms")}
        for recipe, what in (
            ("bf16", "training step, bf16 autocast"),
            ("pure_bf16", "training step, pure bf16"),
        ):
            if "fp32" in steps and recipe in steps:
                add(record, steps[recipe]["status"], what, steps["fp32"]["step_ms"], steps[recipe]["step_ms"])
    columns = ["device", "kind", "bf16", "what", "fp32 ms", "bf16 ms", "bf16 / fp32 time"]
    return pd.DataFrame(rows, columns=columns)
