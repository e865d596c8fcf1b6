"""Checks for the exercises of chapter ``loss_scaling``.

The references are independent of the learner's code and of the chapter's: ``torch.amp.GradScaler``
itself (run side by side with the learner's scaler or loop on identical models), and the formats
of :mod:`mpcourse.formats` for the static-scale exercise.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch

from .. import formats
from ..gradstats import Log2Histogram
from . import ExerciseFailed, call, fail, register
from .conformance import compare_with_gradscaler, event_schedule, first_divergence

# ---- loss_scaling-dynamic-scaler ------------------------------------------------------------------


def _scenarios(rng: random.Random) -> list[dict[str, Any]]:
    """Three fresh random sequences: different settings, events, and one with unscale_ + clipping."""
    out = []
    for i, (growth, backoff) in enumerate([(2.0, 0.5), (4.0, 0.25), (2.0, 0.5)]):
        interval = rng.randint(2, 7)
        seed = rng.randrange(10**6)
        out.append(
            dict(
                seed=seed,
                steps=70,
                init_scale=2.0 ** rng.randint(6, 20),
                growth_factor=growth,
                backoff_factor=backoff,
                growth_interval=interval,
                clip=0.5 if i == 2 else None,
                events=event_schedule(70, seed=seed, growth_interval=interval, p_bad=0.08),
            )
        )
    return out


def _dynamic_hint(row: Any, trace: Any) -> str:
    """A hint chosen from what diverged first, and at which kind of step."""
    event = row["event"]
    if row["skipped"] != row["skipped_ref"]:
        if event == "nan" and not row["skipped"]:
            return (
                "a NaN reached the optimizer: step() must not call optimizer.step() when any gradient is inf or "
                "NaN, and torch.isinf() does not see NaNs: test with torch.isfinite(), which is False for inf, "
                "-inf and NaN."
            )
        if event != "clean" and not row["skipped"]:
            return "when any gradient holds an inf or NaN, step() must not call optimizer.step() at all."
        return (
            "your scaler skipped a step whose gradients were all finite. Forget the inf/NaN flag at the end of "
            "update(), so that one bad step does not poison the next ones."
        )
    if row["scale"] != row["scale_ref"]:
        if event != "clean":
            return "after a skipped step, multiply the scale by backoff_factor (and restart the count of clean steps)."
        return (
            "grow the scale when the count of clean steps in a row reaches growth_interval: add this step to the "
            "count first, then compare; reset the count to 0 after growing and after every skipped step."
        )
    return (
        "the scale and the skip decisions agree, but the parameters do not: divide each gradient by the scale "
        "exactly once per iteration. If unscale_() already ran (for clipping), step() must not unscale again."
    )


@register("loss_scaling-dynamic-scaler")
def check_dynamic_scaler(scaler_class: Any) -> None:
    """``scaler_class(init_scale=, growth_factor=, backoff_factor=, growth_interval=)``: a dynamic scaler
    with ``scale``, ``unscale_``, ``step``, ``update``, ``get_scale``, matching GradScaler step by step."""
    label = "loss_scaling-dynamic-scaler"
    if not callable(scaler_class):
        fail(
            label,
            f"expected a class, got {type(scaler_class).__name__}.",
            "pass the class itself: check(label, MyDynamicScaler).",
        )
    probe = call(
        label, scaler_class, init_scale=8.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=3
    )
    if isinstance(probe, torch.amp.GradScaler):
        fail(
            label,
            "this is torch.amp.GradScaler itself.",
            "build your own: the point is to write the algorithm.",
        )
    missing = [
        m
        for m in ("scale", "unscale_", "step", "update", "get_scale")
        if not callable(getattr(probe, m, None))
    ]
    if missing:
        fail(
            label,
            f"your scaler has no {', '.join(missing)} method.",
            "complete every method of the skeleton.",
        )
    rng = random.Random()  # fresh sequences on every run; the seed is reported so a failure can be replayed
    for scenario in _scenarios(rng):
        settings = {
            k: scenario[k] for k in ("init_scale", "growth_factor", "backoff_factor", "growth_interval")
        }
        trace = call(
            label,
            lambda: compare_with_gradscaler(
                scaler_class,
                steps=scenario["steps"],
                seed=scenario["seed"],
                events=scenario["events"],
                clip=scenario["clip"],
                optimizer="sgd",
                **settings,
            ),
        )
        where = first_divergence(trace)
        if where is not None:
            step = int(where.split()[1])
            row = trace.iloc[step - 1]
            how = (
                "with unscale_() and gradient clipping before step()"
                if scenario["clip"]
                else "with step() unscaling"
            )
            fail(
                label,
                f"on a random sequence (seed {scenario['seed']}, {settings}, {how}) the first divergence from "
                f"torch.amp.GradScaler is at {where}.",
                _dynamic_hint(row, trace),
            )


# ---- loss_scaling-static-scale ------------------------------------------------------------------


def _reference_static_scale(hist: Log2Histogram, fmt: formats.FloatFormat, margin: int) -> int:
    top = int(hist.exponents[hist.counts > 0].max())
    return math.floor(math.log2(fmt.max)) - margin - top - 1


def _histogram(label: str, exponents: range, counts: list[int], **extra: int) -> Log2Histogram:
    c = np.zeros(len(exponents), dtype=np.int64)
    c[: len(counts)] = counts
    return Log2Histogram(
        label=label,
        exponents=np.array(exponents),
        counts=c,
        zeros=extra.get("zeros", 0),
        nonfinite=0,
        below=extra.get("below", 0),
        above=extra.get("above", 0),
    )


@register("loss_scaling-static-scale")
def check_static_scale(choose_static_scale: Any) -> None:
    """``choose_static_scale(hist, fmt, margin)``: log2 of the largest power-of-two scale that keeps every
    value of the histogram below the format's max with ``margin`` binades to spare."""
    label = "loss_scaling-static-scale"
    hint = (
        "every value in binade k is below 2^(k+1). Find the highest binade that holds any value, and the "
        "largest whole s with 2^(k+1+s) <= max / 2^margin, i.e. k + 1 + s <= floor(log2(max)) - margin."
    )
    gen = np.random.default_rng(2018)
    cases = [
        ("fp16", 0, _histogram("a", range(-40, 1), [0] * 5 + list(gen.integers(1, 50, 20)) + [0] * 16)),
        (
            "fp16",
            1,
            _histogram(
                "b", range(-64, 21), [3] + [0] * 40 + list(gen.integers(0, 9, 20)), zeros=100, below=7
            ),
        ),
        ("fp16", 3, _histogram("c", range(-30, 5), list(gen.integers(1, 5, 35)))),
        ("bf16", 1, _histogram("d", range(-64, 21), [0] * 10 + list(gen.integers(1, 20, 30)))),
        ("e5m2", 0, _histogram("e", range(-20, 3), [0, 4, 0, 0, 9, 1])),
    ]
    for fmt_name, margin, hist in cases:
        fmt = formats.get(fmt_name)
        want = _reference_static_scale(hist, fmt, margin)
        got = call(label, choose_static_scale, hist, fmt_name, margin)
        top = int(hist.exponents[hist.counts > 0].max())
        case = f"{fmt_name} (max {fmt.max:g}), margin {margin}, a histogram whose highest non-empty binade is {top}"
        if isinstance(got, (float, np.floating)) and float(got).is_integer():
            got = int(got)
        if not isinstance(got, (int, np.integer)):
            fail(
                label,
                f"for {case} you returned {got!r}, not a whole number.",
                "return log2 of the scale, an int.",
            )
        got = int(got)
        if got == want:
            continue
        mistakes = {
            want
            + 1: "log2(max) rounded up (2^16 > 65504 overflows fp16) or the binade's upper edge forgotten",
            want + margin: "the margin ignored",
            _reference_static_scale(
                _histogram("x", hist.exponents.tolist(), [1] * len(hist.exponents)), fmt, margin
            ): "the last binade of the histogram used, whether or not it holds any value",
        }
        if hist.counts.any():
            low = int(hist.exponents[hist.counts > 0].min())
            mistakes[math.floor(math.log2(fmt.max)) - margin - low - 1] = (
                "the lowest non-empty binade used instead of the highest"
            )
        if 2.0**want == got:
            fail(
                label,
                f"for {case} you returned the scale itself ({got}).",
                "return its log2, a small whole number.",
            )
        name = mistakes.get(got)
        fail(label, f"for {case} you returned {got}" + (f": that looks like {name}." if name else "."), hint)
    # A histogram with values beyond its last binade cannot be trusted: the learner must refuse it.
    try:
        got = call(label, choose_static_scale, _histogram("f", range(-30, 1), [1] * 31, above=3), "fp16", 1)
    except ExerciseFailed as err:
        if isinstance(err.__cause__, ValueError):
            return
        raise
    fail(
        label,
        f"for a histogram with 3 values above its last binade you returned {got!r}.",
        "those values could be any size: raise ValueError (ask for a histogram with a larger hi).",
    )


# The checks of the chapter's training-loop exercises live in loss_scaling_loops.py; importing it registers them.
from . import loss_scaling_loops  # noqa: E402, F401
