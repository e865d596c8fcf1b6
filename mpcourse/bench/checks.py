"""What every stored benchmark result must show, checked record by record.

The benchmarking chapter explains how a GPU behaves from datasheets and papers; once somebody
stores a GPU run, that run must agree with the explanation. The functions here check one stored
record each (as read by :func:`mpcourse.reference.records`). Each returns the
statements it verified, so a chapter can print what was checked, and an empty list when none
applies (a GPU expectation and a CPU record); a measurement that contradicts a statement raises
``AssertionError`` naming the record. Keeping the checks in the package rather than in notebook
cells lets the tests run them on records that must pass and on records that must fail, long
before a GPU record exists: a check that could never fire would be caught there.

Where each expectation comes from:

- an unsynchronised clock on a GPU times the launch, not the work, since CUDA kernels run
  asynchronously; the first call pays one-off initialisation (PyTorch's CUDA semantics notes);
- nothing runs faster than its datasheet's dense peak;
- an emulated precision is computed in a wider format, so it cannot be faster than fp32;
- on a datasheet GPU whose bf16 peak is at least three times its fp32 peak (every one in
  :data:`mpcourse.bench.datasheets.DATASHEETS` that has bf16 units), a large bf16 product runs at
  least twice as fast as fp32, and a small one reaches a smaller share of the peak than a large
  one (the roofline: a small product's arithmetic intensity is lower);
- an elementwise add is memory-bound on every device, so bf16 gains about the byte ratio, 2x;
- a training step's MFU lies in (0, 1], and on a GPU a bf16 step is faster than an fp32 one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from . import datasheets, results

__all__ = ["LARGE_N", "elementwise", "matmul", "pitfalls", "report", "speedups", "train"]

#: Products at least this large (n x n x n) count as large on a GPU: compute-bound in bf16 on every
#: datasheet GPU (a square bf16 product reaches the balance point at n = 3 x peak / bandwidth, at
#: most about 1200 for the GPUs in the table; a test holds the table to it).
LARGE_N = 4096


def _where(record: dict[str, Any]) -> str:
    return results.label(record)


def _cuda(record: dict[str, Any]) -> bool:
    return record["environment"].get("kind") == "cuda"


def report(check: Callable[[dict[str, Any]], list[str]], records: dict[str, dict[str, Any]]) -> list[str]:
    """Run ``check`` on every record of ``records`` (label -> record, as :func:`results.by_label` gives)
    and return what it verified, one line per statement: ``"checked on LABEL: STATEMENT"``."""
    return [
        f"checked on {name}: {statement}" for name, record in records.items() for statement in check(record)
    ]


def speedups(frame: pd.DataFrame) -> pd.DataFrame:
    """Per precision: time of fp32 over its time, at the largest size where both ran.

    ``frame`` is a matmul sweep (live, or a stored table); the result is indexed by precision with
    columns ``n`` and ``speed-up``.
    """
    done = frame[frame["tflops"].notna()].set_index(["precision", "m"])["seconds"]
    rows = []
    if "fp32" in done.index.get_level_values(0):
        for p in done.index.get_level_values(0).unique():
            both = sorted(set(done[p].index) & set(done["fp32"].index))
            if both:
                n_max = both[-1]
                rows.append(
                    {"precision": p, "n": n_max, "speed-up": done[("fp32", n_max)] / done[(p, n_max)]}
                )
    return pd.DataFrame(rows, columns=["precision", "n", "speed-up"]).set_index("precision")


def pitfalls(record: dict[str, Any], min_n: int = 2048) -> list[str]:
    """On a GPU, for products of at least ``min_n``: the unsynchronised clock reads less than half
    the real time, and the first call takes longer than a warm one."""
    if not _cuda(record):
        return []
    checked = []
    for p in record["tables"].get("pitfalls", []):
        if p.get("n", 0) < min_n or p.get("benchmark") is None:
            continue
        product = f"{p['precision']} {p['n']}^3"
        assert p["unsynchronised"] < 0.5 * p["benchmark"], (
            f"{_where(record)}, {product}: without synchronisation {p['unsynchronised']:.3g} s, but the work takes "
            f"{p['benchmark']:.3g} s; an asynchronous launch should read far less"
        )
        assert p["naive"] > p["benchmark"], (
            f"{_where(record)}, {product}: the cold first call ({p['naive']:.3g} s) was not slower than a warm one "
            f"({p['benchmark']:.3g} s)"
        )
        checked.append(
            f"{product}: no synchronisation times the launch; the first call pays for initialisation"
        )
    return checked


def matmul(record: dict[str, Any]) -> list[str]:
    """The matmul sweep of a stored record against the datasheets and the formats' emulation."""
    frame = results.table(record, "matmul")
    ran = frame[frame["tflops"].notna()]
    where = _where(record)
    checked = []
    sheet_rows = ran[ran["peak_source"].fillna("").str.startswith("datasheet")]
    if len(sheet_rows):
        assert (sheet_rows["pct_of_peak"] <= 105).all(), (
            f"{where}: above the datasheet peak: {sheet_rows.loc[sheet_rows['pct_of_peak'] > 105, ['precision', 'm', 'pct_of_peak']].to_dict('records')}"
        )
        checked.append("no product beats its datasheet's dense peak")
    s = speedups(frame)
    emulated = set(frame.loc[frame["status"] == "emulated", "precision"]) & set(s.index)
    for p in sorted(emulated):
        assert s.loc[p, "speed-up"] < 1.2, (
            f"{where}: emulated {p} ran {s.loc[p, 'speed-up']:.2f}x as fast as fp32"
        )
        checked.append(
            f"emulated {p} is no faster than fp32 ({s.loc[p, 'speed-up']:.2f}x at n={int(s.loc[p, 'n'])})"
        )
    sheet = datasheets.lookup(str(record["environment"].get("device_name", "")))
    bf16 = ran[(ran["precision"] == "bf16") & (ran["status"] == "native")].sort_values("m")
    peaks = sheet.dense_tflops if sheet else {}
    if (
        _cuda(record)
        and "bf16" in peaks
        and peaks["bf16"] >= 3 * peaks["fp32"]
        and len(bf16) > 1
        and bf16["m"].iloc[-1] >= LARGE_N
    ):
        assert "bf16" in s.index and s.loc["bf16", "speed-up"] > 2, (
            f"{where}: bf16 tensor cores (datasheet {peaks['bf16']:g} vs fp32 {peaks['fp32']:g} TFLOP/s) gave only "
            f"{s.loc['bf16', 'speed-up'] if 'bf16' in s.index else float('nan'):.2f}x over fp32"
        )
        assert bf16["pct_of_peak"].iloc[0] < bf16["pct_of_peak"].iloc[-1], (
            f"{where}: the smallest bf16 product reached a larger share of the peak than the largest"
        )
        checked.append(
            f"bf16 tensor cores: {s.loc['bf16', 'speed-up']:.1f}x over fp32 at n={int(s.loc['bf16', 'n'])} "
            f"(datasheet ratio {peaks['bf16'] / peaks['fp32']:.1f}x); {bf16['pct_of_peak'].iloc[0]:.1f}% of peak at "
            f"n={int(bf16['m'].iloc[0])} vs {bf16['pct_of_peak'].iloc[-1]:.1f}% at n={int(bf16['m'].iloc[-1])}"
        )
    return checked


def elementwise(record: dict[str, Any]) -> list[str]:
    """On a GPU, the largest stored add gains about the byte ratio (2x) in bf16, never the peak ratio."""
    if not _cuda(record) or "elementwise" not in record["tables"]:
        return []
    ew = results.table(record, "elementwise")
    big = ew[ew["elements"] == ew["elements"].max()].set_index("precision")["seconds"]
    if not {"fp32", "bf16"} <= set(big.index):
        return []
    ratio = big["fp32"] / big["bf16"]
    assert 1.2 < ratio < 2.6, (
        f"{_where(record)}: a memory-bound add gained {ratio:.2f}x in bf16; the byte ratio is 2"
    )
    return [f"add of {int(ew['elements'].max()):,} elements: bf16 {ratio:.2f}x faster (the byte ratio is 2)"]


def train(record: dict[str, Any]) -> list[str]:
    """MFU of natively run recipes in (0, 1]; on a GPU, a bf16 step faster than an fp32 one."""
    table = results.table(record, "recipes").set_index("recipe")
    where = _where(record)
    native = table[table["status"] == "native"]
    checked = []
    mfu = native["mfu"].dropna() if "mfu" in native else pd.Series(dtype=float)
    if len(mfu):
        assert ((mfu > 0) & (mfu <= 1)).all(), f"{where}: MFU outside (0, 1]: {mfu.to_dict()}"
        checked.append(f"MFU of {len(mfu)} native recipes in (0, 1]")
    if _cuda(record) and {"fp32", "bf16"} <= set(native.index):
        fp32, bf16 = native.loc["fp32", "samples_per_s"], native.loc["bf16", "samples_per_s"]
        assert bf16 > fp32, (
            f"{where}: a bf16 training step ({bf16:.4g} samples/s) was not faster than fp32 ({fp32:.4g})"
        )
        checked.append(f"bf16 steps {bf16 / fp32:.2f}x as fast as fp32")
    return checked
