"""``mpcourse bench matmul`` and ``mpcourse bench train``: print a table anyone can reproduce, optionally store it.

Each command prints the device and software it ran on, then its table, then the headline
figures; ``--save PATH`` also writes the results as data (see :mod:`mpcourse.bench.results`), to a
file that does not exist yet unless ``--force`` (``force=True``) allows replacing it; that is checked
before anything is measured, so a long run is not lost to a name it may not use.
Sizes follow the profile (``MPCOURSE_PROFILE``: full on a GPU, small on a CPU); ``--quick`` uses
the ``ci`` sizes for a smoke run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from .. import device as devices
from .. import report, sizes
from . import datasheets, results, sweeps

__all__ = ["headline", "matmul", "matmul_sizes", "train", "train_config"]

T = TypeVar("T")


def matmul_sizes(kind: str, quick: bool = False) -> list[int]:
    """Square sizes of the matmul sweep (here and in the chapter) for a device kind and the profile."""
    if quick:
        return [64, 128]
    if kind == "cuda":
        return sizes.pick(ci=[64, 128], small=[256, 1024, 4096], full=[256, 512, 1024, 2048, 4096, 8192])
    return sizes.pick(ci=[64, 128], small=[128, 256, 512, 1024], full=[128, 256, 512, 1024, 2048])


def _command() -> str:
    return (
        " ".join(["mpcourse", *sys.argv[1:]])
        if sys.argv and sys.argv[0].endswith(("mpcourse", "cli.py"))
        else "mpcourse bench"
    )


def _print_table(frame: pd.DataFrame) -> None:
    shown = frame.assign(
        ms=frame["seconds"] * 1e3,
        check=frame["check_ratio"],
    )[["precision", "m", "n", "k", "status", "ms", "spread", "check", "tflops", "pct_of_peak", "rel_error"]]
    with pd.option_context("display.width", 160, "display.max_rows", 200):
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-"))


def headline(frame: pd.DataFrame, precision: str = "bf16", size: int = 8192) -> str | None:
    """One line: the rate of the ``size``^3 product in ``precision`` as % of its reference peak."""
    row = frame[
        (frame["precision"] == precision) & (frame["m"] == size) & (frame["n"] == size) & (frame["k"] == size)
    ]
    if row.empty or pd.isna(row["tflops"].iloc[0]):
        return None
    r = row.iloc[0]
    return (
        f"{precision} at {size}^3: {r['tflops']:.1f} TFLOP/s = {r['pct_of_peak']:.1f}% of "
        f"{r['peak_tflops']:.4g} TFLOP/s ({r['peak_source']})"
    )


def _attempt(what: str, fn: Callable[[], T]) -> T | None:
    """Run one part of a benchmark; on failure print why and go on, so one run keeps what worked."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - report and continue: a GPU run is not repeated lightly
        print(f"\n{what} failed: {type(exc).__name__}: {exc}")
        return None


def matmul(save: Path | None, quick: bool, force: bool = False) -> int:
    """The matmul sweep (fp32, TF32, fp16, bf16, fp8), timing pitfalls, bandwidth and an elementwise op."""
    if save is not None:
        results.ensure_writable(save, overwrite=force, what="result file")
    caps = devices.capabilities()
    print(report(caps))
    sheet = datasheets.for_device(caps)
    print(
        f"reference peaks: {'datasheet of the ' + sheet.name if sheet else 'not in the datasheet table: the best rate measured here'}"
    )
    cuda = caps.kind == "cuda"
    min_run_time = 0.02 if quick else 0.2
    tables: dict[str, Any] = {}
    # First, while the process is cold: the same product timed wrongly and rightly.
    pit_precision, pit_n = (
        ("bf16" if caps.bf16_native else "fp32"),
        (128 if quick else (4096 if cuda else 512)),
    )
    pitfalls = _attempt(
        "timing pitfalls",
        lambda: sweeps.timing_pitfalls(pit_n, pit_precision, caps=caps, min_run_time=min_run_time),
    )
    if pitfalls:
        tables["pitfalls"] = [pitfalls]
        print(
            f"\ntiming pitfalls, {pit_precision} {pit_n}^3, ms per call: first call alone {pitfalls['naive'] * 1e3:.3f}, "
            f"no synchronisation {pitfalls['unsynchronised'] * 1e3:.3f}, torch.utils.benchmark "
            f"{pitfalls['benchmark'] * 1e3:.3f}, independent {pitfalls['independent'] * 1e3:.3f}"
        )
    frame = sweeps.matmul_sweep(
        matmul_sizes(caps.kind, quick),
        caps=caps,
        min_run_time=min_run_time,
        max_call_seconds=0.1 if quick else 1.0,
    )
    tables["matmul"] = frame
    print("\nmatmul sweep (ms: median per call; spread: IQR/median; check: this / independent clock)")
    _print_table(frame)
    nbytes = 2**24 if quick else (2**30 if cuda else 2**28)
    gbs = _attempt("bandwidth", lambda: sweeps.bandwidth(caps=caps, nbytes=nbytes, min_run_time=min_run_time))
    if gbs:
        tables["bandwidth"] = [
            {"gb_per_s": gbs, "method": "copy of a large fp32 buffer, 2 bytes moved per byte"}
        ]
        print(
            f"\nmemory bandwidth (copy): {gbs:.1f} GB/s"
            + (f"; datasheet {sheet.bandwidth_gb_s:.0f} GB/s" if sheet else "")
        )
    counts = [2**16] if quick else ([2**20, 2**24, 2**28] if cuda else [2**16, 2**20, 2**24])
    elementwise = _attempt(
        "elementwise", lambda: sweeps.elementwise_sweep(counts, caps=caps, min_run_time=min_run_time)
    )
    if elementwise is not None:
        tables["elementwise"] = elementwise
        print("elementwise z = x + y:")
        print(
            elementwise[["precision", "elements", "seconds", "gb_per_s"]].to_string(
                index=False, float_format=lambda v: f"{v:.4g}"
            )
        )
    line = headline(frame)
    if line:
        print("\n" + line)
    if save is not None:
        path = results.save(results.make_record("matmul", tables, command=_command()), save, overwrite=force)
        print(f"\nsaved {path}")
    return 0 if frame["tflops"].notna().any() else 1


def train_config(caps: devices.Capabilities, quick: bool = False) -> dict[str, int]:
    """Model and run sizes of the training-step benchmark (here and in the chapter) for a device and the profile.

    On a GPU the full size is a 100M-parameter transformer, large enough for the tensor cores to
    matter; a GPU without bf16 units (a T4) gets a smaller one, since two recipes run emulated there.
    """
    tiny = {"block_size": 16, "width": 32, "depth": 1, "steps": 4, "batch_size": 8}
    if quick:
        return tiny
    if caps.kind == "cuda":
        full = {"block_size": 256, "width": 1024, "depth": 8, "steps": 30, "batch_size": 32}
        if not caps.bf16_native:
            full |= {"width": 512, "depth": 4}
    else:
        full = {"block_size": 64, "width": 256, "depth": 2, "steps": 30, "batch_size": 32}
    return sizes.pick(
        ci=tiny, small={"block_size": 64, "width": 128, "depth": 2, "steps": 20, "batch_size": 16}, full=full
    )


def train(save: Path | None, quick: bool, force: bool = False) -> int:
    """Throughput, memory and MFU of one transformer under every precision recipe, and its kernels.

    Every recipe of :func:`mpcourse.bench.trainstep.default_recipes` is measured, the emulated fp8
    ones included; torchao's are listed as skipped, with the reason, where torchao cannot run.
    """
    from .. import data
    from . import trainstep

    if save is not None:
        results.ensure_writable(save, overwrite=force, what="result file")
    caps = devices.capabilities()
    print(report(caps))
    sheet = datasheets.for_device(caps)
    config = train_config(caps, quick)
    text = data.load_text(source="local", block_size=config["block_size"], verbose=False)
    print(
        f"model: character transformer, width {config['width']}, depth {config['depth']}, "
        f"context {config['block_size']}; {config['steps']} steps of {config['batch_size']} sequences per recipe"
    )
    print(
        f"MFU against: {'the dense peaks of the ' + sheet.name + ' datasheet' if sheet else 'no datasheet for this device (MFU not computed)'}"
    )
    frame, kernels = trainstep.recipe_table(
        text,
        width=config["width"],
        depth=config["depth"],
        steps=config["steps"],
        batch_size=config["batch_size"],
        caps=caps,
        progress=False,
    )
    shown = frame.reindex(
        columns=[
            "recipe",
            "status",
            "samples_per_s",
            "tokens_per_s",
            "step_ms",
            "peak_memory_mb",
            "model_tflops",
            "mfu",
            "final_loss",
            "fp8_layers",
        ]
    )
    with pd.option_context("display.width", 180):
        print("\n" + shown.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-"))
    not_run = frame[frame["status"].isin(["skipped", "failed"])]
    if len(not_run):
        print("\nnot measured:")
        for r in not_run.itertuples():
            print(f"  {r.recipe} ({r.status}): {r.note}")
    if "flops_per_step" in frame and frame["flops_per_step"].notna().any():
        f = frame.dropna(subset=["flops_per_step"]).iloc[0]
        print(
            f"\nFLOPs per step: {f['flops_per_step']:.4g} counted by FlopCounterMode, {f['six_nt_per_step']:.4g} by 6NT"
        )
    if not kernels.empty:
        print("\nlongest kernels of one step, per recipe:")
        for name, part in kernels.groupby("recipe", sort=False):
            print(
                f"  {name}: "
                + "; ".join(f"{r.name} [{r.dtypes}] {r.ms:.3g} ms" for r in part.head(3).itertuples())
            )
    if save is not None:
        record = results.make_record(
            "train", {"recipes": frame, "kernels": kernels, "config": [config]}, command=_command()
        )
        print(f"\nsaved {results.save(record, save, overwrite=force)}")
    return 0 if "samples_per_s" in frame and frame["samples_per_s"].notna().any() else 1
