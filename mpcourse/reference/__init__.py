"""Every result the course stores, in one tree, read through one loader.

The chapters show measurements from real machines next to what the reader's machine measures.
Those measurements are data, never numbers typed into the text, and they live here::

    reference/
      matmul/    ``mpcourse bench matmul --save`` records, one file per machine (cpu-amx-2core.json, h200.json)
      train/     ``mpcourse bench train --save`` records
      fp8/       ``mpcourse bench fp8 --save`` records (GPUs with fp8 tensor cores only)
      fp8_recipes/ ``mpcourse bench fp8_recipes --save`` records: losses of the fp8 training recipes
      verified/  ``mpcourse verify`` records: which chapters passed where, how long each took

``mpcourse record`` writes all five for the machine it runs on. :func:`records` reads a topic
back, checking each benchmark record's format (:func:`mpcourse.bench.results.load`) so that a
damaged file fails loudly instead of drawing a wrong figure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: The folder that holds every stored result.
ROOT = Path(__file__).resolve().parent

#: Topics stored as benchmark records (:mod:`mpcourse.bench.results`), and all topics.
BENCH_TOPICS: tuple[str, ...] = ("matmul", "train", "fp8", "fp8_recipes")
TOPICS: tuple[str, ...] = (*BENCH_TOPICS, "verified")


def folder(topic: str) -> Path:
    """The folder of ``topic`` (one of :data:`TOPICS`)."""
    if topic not in TOPICS:
        raise ValueError(f"unknown reference topic {topic!r}; accepted: {', '.join(TOPICS)}")
    return ROOT / topic


def records(topic: str, where: str | Path | None = None) -> list[dict[str, Any]]:
    """Every stored record of ``topic``, read from ``where`` (default: :func:`folder`).

    Benchmark topics give one record per file, checked and filtered by topic, oldest first.
    ``verified`` gives one row per chapter run, every file's rows in file-name order.
    """
    path = Path(where) if where is not None else folder(topic)
    files = sorted(path.glob("*.json"))
    if topic == "verified":
        rows: list[dict[str, Any]] = []
        for file in files:
            rows.extend(json.loads(file.read_text(encoding="utf-8")))
        return rows
    from ..bench.results import load

    folder(topic)  # validates the topic name
    loaded = [load(p) for p in files]
    return sorted((r for r in loaded if r["topic"] == topic), key=lambda r: r["date"])
