"""Checks for the exercises of chapter ``loss_scaling``.

The references are independent of the learner's code and of the chapter's: ``torch.amp.GradScaler``
itself (run side by side with the learner's scaler on identical models, or on gradients of a
known size for the scaler's log), and the formats of :mod:`mpcourse.formats` for the static-scale
exercise.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import formats
from ..device import cpu_threads
from ..gradstats import Log2Histogram
from . import ExerciseFailed, call, fail, plural, register, shortcuts
from .conformance import compare_with_gradscaler, event_schedule, first_divergence

# ---- loss_scaling-dynamic-scaler ------------------------------------------------------------------

#: The check's sequences: fixed seeds, so that an answer gets the same verdict and message on every
#: run. Three settings (the defaults' factors with a short interval, other factors, and clipping after
#: unscale_), each with clean runs longer than the interval and bursts of inf, -inf and NaN.
_SCENARIOS: tuple[dict[str, Any], ...] = (
    dict(
        seed=20,
        steps=40,
        init_scale=2.0**10,
        growth_factor=2.0,
        backoff_factor=0.5,
        growth_interval=3,
        clip=None,
    ),
    dict(
        seed=12,
        steps=40,
        init_scale=2.0**16,
        growth_factor=4.0,
        backoff_factor=0.25,
        growth_interval=4,
        clip=None,
    ),
    dict(
        seed=13,
        steps=40,
        init_scale=2.0**8,
        growth_factor=2.0,
        backoff_factor=0.5,
        growth_interval=2,
        clip=0.5,
    ),
)
_SETTINGS = ("init_scale", "growth_factor", "backoff_factor", "growth_interval")


def _dynamic_hint(row: Any, before: Any) -> str:
    """The first rung of the ladder, chosen from what diverged first and at which kind of step; ``before``
    holds the steps before it, on which the scaler agreed with GradScaler."""
    event = row["event"]
    if row["skipped"] != row["skipped_ref"]:
        if event == "nan" and not row["skipped"]:
            if (before["skipped"] & (before["event"] != "clean")).any():  # it does skip on inf
                return (
                    "a step whose gradients held a NaN was taken, though steps with inf were skipped: look at "
                    "the test unscale_() uses to call a gradient bad. Does it see NaN as well as inf?"
                )
            return (
                "a step whose gradients held a NaN was taken: look at when step() may call the optimizer, and "
                "at whether the test unscale_() uses sees NaN as well as inf."
            )
        if event != "clean" and not row["skipped"]:
            return "step() took an optimizer step although a gradient was inf: look at when step() may call the optimizer."
        return (
            "your scaler skipped a step whose gradients were all finite: look at what each iteration leaves "
            "behind for the next one."
        )
    if row["scale"] != row["scale_ref"]:
        if event != "clean":
            return (
                "the scale after a skipped step differs: look at the factor update() applies then, and where "
                "it comes from."
            )
        return (
            "the scale changed at a different step from GradScaler's: look at when update() counts a clean "
            "step, when it compares the count with growth_interval, and when the count starts again."
        )
    if not np.isnan(row["tracker"]) and row["tracker"] != row["tracker_ref"]:
        return "your growth tracker differs: look at when it is incremented and when it is reset."
    return (
        "the scale and the skip decisions agree, but the parameters do not: count how many times one "
        "iteration divides the gradients by the scale, with and without an explicit unscale_() call."
    )


def _unscale_twice(scaler_class: Any, label: str) -> bool:
    """Whether a second unscale_() in one iteration raises RuntimeError, as GradScaler's does."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = call(
        label, scaler_class, init_scale=4.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=3
    )
    loss = model(torch.ones(2, 3)).sum()
    call(label, lambda: scaler.scale(loss).backward())
    call(label, scaler.unscale_, opt)

    def again() -> bool:
        try:
            scaler.unscale_(opt)
        except RuntimeError:
            return True
        return False

    return bool(call(label, again))


@contextlib.contextmanager
def _scalers_built() -> Iterator[list[str]]:
    """Record every torch.amp.GradScaler and every scaler of :mod:`mpcourse.loss_scaling` built meanwhile
    (subclasses included, however they were imported), by the name of its class."""
    from torch.amp.grad_scaler import GradScaler

    from ..loss_scaling import _LossScaler

    targets = [
        (GradScaler, "__init__", "a torch.amp.GradScaler"),
        (_LossScaler, "__init__", lambda scaler, *_, **__: f"the course's {type(scaler).__name__}"),
    ]
    with shortcuts.watch(targets) as built:
        yield built


@register(
    "loss_scaling-dynamic-scaler",
    hints=(
        "Read where the check first diverges: the step, that step's event (clean, inf, -inf or nan) and "
        "what differs (the skip decision, the scale or the growth tracker) point at one method.",
        "unscale_() judges the gradients before dividing them and must notice every kind of non-finite "
        "value; step() relies on what unscale_() found; update() leaves both flags ready for the next "
        "iteration.",
        "The growth tracker counts clean steps in a row since the scale last changed. Decide when it is "
        "incremented, when it is compared with growth_interval, and the two events that reset it.",
    ),
)
def check_dynamic_scaler(scaler_class: Any) -> None:
    """``scaler_class(init_scale=, growth_factor=, backoff_factor=, growth_interval=)``: a dynamic scaler
    with ``scale``, ``unscale_``, ``step``, ``update``, ``get_scale``, matching GradScaler step by step."""
    label = "loss_scaling-dynamic-scaler"
    if not callable(scaler_class):
        fail(
            label,
            f"expected a class, got {type(scaler_class).__name__}.",
            "pass the class itself, not an instance of it.",
        )
    from ..loss_scaling import _LossScaler

    probe = call(
        label, scaler_class, init_scale=8.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=3
    )
    if isinstance(probe, (torch.amp.GradScaler, _LossScaler)):
        owner = (
            "torch.amp.GradScaler"
            if isinstance(probe, torch.amp.GradScaler)
            else f"the course's {type(probe).__name__}"
        )
        fail(
            label,
            f"this is {owner} itself (or a subclass of it).",
            "the exercise is to write the algorithm: fill in the skeleton's methods.",
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
    with _scalers_built() as built:
        _compare_scenarios(scaler_class, label)
        refused = _unscale_twice(scaler_class, label)
    borrowed = [name for name in built if "GradScaler" not in name] or built[
        len(_SCENARIOS) :
    ]  # 1 reference each
    if borrowed:
        fail(
            label,
            f"your scaler builds {borrowed[0]} and lets it do the work. That behaves right, but the "
            "exercise is to write the algorithm.",
            "keep the state the skeleton gives you (a float scale, a tracker, two flags) and fill in the methods.",
        )
    if not refused:
        fail(
            label,
            "a second unscale_() in the same iteration went through: it divided the gradients by the scale "
            "once more (GradScaler raises RuntimeError instead).",
            "unscale_() must refuse to run twice in one iteration: use the flag the skeleton gives you.",
        )


def _compare_scenarios(scaler_class: Any, label: str) -> None:
    """Run the learner's scaler against GradScaler on each of the check's sequences; fail at the first divergence."""
    for scenario in _SCENARIOS:
        settings = {k: scenario[k] for k in _SETTINGS}
        events = event_schedule(
            scenario["steps"], seed=scenario["seed"], growth_interval=scenario["growth_interval"], p_bad=0.1
        )
        trace = call(
            label,
            lambda: compare_with_gradscaler(
                scaler_class,
                steps=scenario["steps"],
                seed=scenario["seed"],
                events=events,
                clip=scenario["clip"],
                optimizer="sgd",
                **settings,
            ),
        )
        where = first_divergence(trace)
        if where is not None:
            step = int(where.split()[1])
            how = (
                f"unscale_() and gradient clipping to {scenario['clip']} before step()"
                if scenario["clip"]
                else "step() unscaling"
            )
            fail(
                label,
                f"on the check's sequence {scenario['seed']} ({', '.join(f'{k}={v:g}' for k, v in settings.items())}, "
                f"{how}) the first divergence from torch.amp.GradScaler is at {where}.",
                _dynamic_hint(trace.iloc[step - 1], trace.iloc[: step - 1]),
            )


# ---- loss_scaling-static-scale ------------------------------------------------------------------


def _reference_static_scale(hist: Log2Histogram, fmt: formats.FloatFormat, margin: int) -> int:
    top = int(hist.exponents[hist.counts > 0].max())
    return math.floor(math.log2(fmt.max)) - margin - top - 1


def _histogram(
    label: str, exponents: range | Sequence[int], counts: list[int], **extra: int
) -> Log2Histogram:
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


@register(
    "loss_scaling-static-scale",
    hints=(
        "Only one binade of the histogram matters: the highest one that holds any value. Every value in "
        "binade k is below 2^(k+1). Find k from hist.exponents and hist.counts.",
        "Scaled by 2^s, those values stay below 2^(k+1+s); that bound may not exceed the format's max "
        "divided by 2^margin. Work with exponents, and look up the max of the format you are given.",
        "log2 of fp16's max (65504) is not a whole number: round it the way that keeps the bound below the "
        "max. A histogram that counts values above its last binade says nothing about their size.",
    ),
)
def check_static_scale(choose_static_scale: Any) -> None:
    """``choose_static_scale(hist, fmt, margin)``: log2 of the largest power-of-two scale that keeps every
    value of the histogram below the format's max with ``margin`` binades to spare."""
    label = "loss_scaling-static-scale"
    gen = np.random.default_rng(2018)
    cases = [
        ("fp16", 0, _histogram("a", range(-40, 1), [0] * 5 + list(gen.integers(1, 50, 20)) + [0] * 16)),
        ("fp16", 3, _histogram("c", range(-30, 5), list(gen.integers(1, 5, 35)))),
        (
            "fp16",
            1,
            _histogram(
                "b", range(-64, 21), [3] + [0] * 40 + list(gen.integers(0, 9, 20)), zeros=100, below=7
            ),
        ),
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
        if isinstance(got, bool) or not isinstance(got, (int, np.integer)):
            fail(
                label,
                f"for {case} you returned {got!r}, not a whole number.",
                "return the exponent s of the scale 2^s, an int.",
            )
        got = int(got)
        if got == want:
            continue
        if 2.0**want == got:
            fail(
                label,
                f"for {case} you returned the scale itself ({got}).",
                "return its exponent s, a small whole number.",
            )
        mistakes: dict[int, tuple[str, str]] = {}
        rounded_up = (
            "log2(max) rounded up, or the binade's upper edge forgotten",
            "look at how you turn the format's max into a whole exponent, and at which power of two bounds "
            "the values of binade k.",
        )
        ignored = ("the margin ignored", "look at where the margin enters the bound.")
        if margin == 1:  # both mistakes give the same answer here
            mistakes[want + 1] = (
                f"{ignored[0]}, or {rounded_up[0]}",
                rounded_up[1] + " And at where the margin enters.",
            )
        else:
            mistakes[want + 1] = rounded_up
            if margin:
                mistakes.setdefault(want + margin, ignored)
        everything = _histogram("x", hist.exponents.tolist(), [1] * len(hist.exponents))
        mistakes.setdefault(
            _reference_static_scale(everything, fmt, margin),
            (
                "the last binade of the histogram used, whether or not it holds any value",
                "look at hist.counts: only binades that hold values matter.",
            ),
        )
        low = int(hist.exponents[hist.counts > 0].min())
        mistakes.setdefault(
            math.floor(math.log2(fmt.max)) - margin - low - 1,
            (
                "the lowest non-empty binade used instead of the highest",
                "the largest values are the ones that overflow: look at which binade bounds them.",
            ),
        )
        name, first_hint = mistakes.get(
            got, ("", "compare your bound with the format's max for this histogram's largest values.")
        )
        fail(
            label,
            f"for {case} you returned {got}" + (f": that looks like {name}." if name else "."),
            first_hint,
        )
    # A histogram with values beyond its last binade cannot be trusted: the learner must refuse it.
    try:
        got = call(label, choose_static_scale, _histogram("f", range(-30, 1), [1] * 31, above=3), "fp16", 1)
    except ExerciseFailed as err:
        if isinstance(err.__cause__, ValueError):
            return
        raise
    fail(
        label,
        f"for a histogram with 3 values above its last binade you returned {got!r}; such a histogram says "
        "nothing about how large those values are.",
        "refuse it as the exercise asks (raise ValueError), rather than returning a number.",
    )


# ---- loss_scaling-read-log ------------------------------------------------------------------------

#: The smallest value that rounds to inf in fp16: halfway between its max, 65504, and 2^16, where a
#: tie goes to the even neighbour, 2^16, which fp16 cannot hold.
_FP16_OVERFLOW = formats.FP16.max + float(formats.FP16.spacing(formats.FP16.max)) / 2

#: How close to the exact bounds a reading must be. Loose enough for a threshold found with torch's own
#: rounding, which takes a float64 to fp16 through fp32 (a bisection that way ends about 0.002 below 65520,
#: a relative 3e-8), and far tighter than any misreading: 65504 or 2^16 are 2.4e-4 away, a shifted scale 2x.
_BOUNDS_RTOL = 1e-6

#: The check's runs of torch.amp.GradScaler: the largest gradient magnitude g (the same at every step),
#: the scaler's settings and the number of steps. One settles into a saw-tooth, one never overflows, one
#: halves its way down from far too high with other factors, one has g exactly at an overflow threshold
#: (S * g = 65520 at S = 2^12), one never takes a step.
_LOG_CASES: tuple[dict[str, Any], ...] = (
    dict(g=0.01, steps=12, init_scale=2.0**10, growth_factor=2.0, backoff_factor=0.5, growth_interval=3),
    dict(g=3.0, steps=30, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=4),
    dict(g=900.0, steps=25, init_scale=2.0**24, growth_factor=4.0, backoff_factor=0.25, growth_interval=3),
    dict(
        g=_FP16_OVERFLOW / 2**12,
        steps=16,
        init_scale=2.0**14,
        growth_factor=2.0,
        backoff_factor=0.5,
        growth_interval=2,
    ),
    dict(g=1000.0, steps=5, init_scale=2.0**30, growth_factor=2.0, backoff_factor=0.5, growth_interval=2),
)


def _gradscaler_log(case: dict[str, Any]) -> list[float]:
    """Run torch.amp.GradScaler for ``case["steps"]`` steps on a parameter whose gradient, before scaling,
    has largest magnitude ``g``; the scaled gradient goes through fp16, as under fp16 autocast, so it
    overflows exactly when S * g rounds to inf. Returns ``get_scale()`` after every ``update()``."""
    settings = {k: case[k] for k in _SETTINGS}
    scaler = torch.amp.GradScaler("cpu", **settings)
    param = nn.Parameter(torch.zeros(8))
    opt = torch.optim.SGD([param], lr=1e-3)
    gradient = torch.tensor([1.0, -0.5, 0.25, 1e-3, -1.0, 0.0, 0.75, -0.125]) * case["g"]  # max |.| = g
    log = []
    with cpu_threads(1):
        for _ in range(case["steps"]):
            scaled = scaler.scale(torch.ones(()))  # what backward would start from; initialises the scale
            param.grad = (gradient * scaled).half().float()  # the scaled gradient, as fp16 holds it
            scaler.step(opt)
            scaler.update()
            log.append(float(scaler.get_scale()))
    return log


def _read_log(
    init_scale: float,
    scales: list[float],
    *,
    threshold: float = _FP16_OVERFLOW,
    shift: int = 0,
    loose: bool = False,
) -> tuple[list[int], float, float]:
    """The reference reading (and, with other arguments, the usual misreadings): the scale step t used is
    the one logged after step t - 1 (``shift=1`` pairs each step with its own entry instead)."""
    used = [init_scale, *scales[:-1]] if shift == 0 else list(scales)
    skipped = [t for t, (s, after) in enumerate(zip([init_scale, *scales[:-1]], scales), 1) if after < s]
    lows = [threshold / used[t - 1] for t in skipped]
    highs = [threshold / s for t, s in enumerate(used, 1) if t not in skipped]
    pick_low, pick_high = (min, max) if loose else (max, min)
    return skipped, pick_low(lows, default=0.0), pick_high(highs, default=math.inf)


def _implied_threshold(init_scale: float, scales: list[float], bounds: tuple[float, float]) -> float | None:
    """The overflow threshold that ``bounds`` would be the right reading of, if they are the right steps'
    bounds for one same threshold (None otherwise)."""
    used = [init_scale, *scales[:-1]]
    skipped, low, high = _read_log(init_scale, scales, threshold=1.0)  # bounds per unit threshold
    implied = []
    if skipped:
        implied.append(bounds[0] / low)
    if len(skipped) < len(used):
        implied.append(bounds[1] / high)
    if not implied or not all(math.isfinite(t) and t > 0 for t in implied):
        return None
    return implied[0] if math.isclose(min(implied), max(implied), rel_tol=1e-9) else None


def _as_steps(label: str, got: Any, case: str) -> list[int]:
    try:
        values = list(got)
    except TypeError:
        fail(
            label,
            f"for {case} the skipped steps are {got!r}, not a list.",
            "return the step numbers in a list.",
        )
    if any(isinstance(v, (bool, np.bool_)) for v in values):
        fail(
            label,
            f"for {case} the skipped steps are a list of {len(values)} booleans, one per step.",
            "return the numbers of the skipped steps (counted from 1), not a flag per step.",
        )
    try:
        steps = [int(v) for v in values]
    except (TypeError, ValueError):
        fail(label, f"for {case} the skipped steps {values!r} are not whole numbers.", "return step numbers.")
    if any(s != v for s, v in zip(steps, values)):
        fail(label, f"for {case} the skipped steps {values!r} are not whole numbers.", "return step numbers.")
    return sorted(steps)


@register(
    "loss_scaling-read-log",
    hints=(
        "Line each step up with two scales: the one its backward pass used and the one logged after it. "
        "The first entry of the log is already the scale after step 1.",
        "A skipped step always lowers the scale (backoff_factor is below 1) and a clean step never does. "
        "Each step then gives one inequality on g: its scaled value S * g overflowed fp16, or it did not.",
        "Overflow means that rounding to fp16 gives inf: find the smallest positive value that does (fp16 "
        "rounds to nearest, ties to even, and its top binade has a gap of 32). Keep the strongest lower bound "
        "the skipped steps give and the strongest upper bound the clean steps give.",
    ),
)
def check_read_log(read_scaler_log: Any) -> None:
    """``read_scaler_log(init_scale, scales) -> (skipped, low, high)``: the skipped steps of a GradScaler
    run read from its log of scales, and the bounds ``low <= g < high`` on the largest gradient."""
    label = "loss_scaling-read-log"
    for case in _LOG_CASES:
        log = _gradscaler_log(case)
        skipped, low, high = want = _read_log(case["init_scale"], log)
        assert low <= case["g"] < high, (case, want)  # the reference reads the run it was given right
        got = call(label, read_scaler_log, case["init_scale"], list(log))
        where = (
            f"the log of {plural(case['steps'], 'step')} from init_scale=2^{math.log2(case['init_scale']):.0f}, "
            f"growth_factor={case['growth_factor']:g}, backoff_factor={case['backoff_factor']:g}, "
            f"growth_interval={case['growth_interval']}"
        )
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            fail(
                label,
                f"for {where} you returned {type(got).__name__} {got!r}.",
                "return three things: (skipped, low, high).",
            )
        steps = _as_steps(label, got[0], where)
        if steps != skipped:
            if [s + 1 for s in steps] == skipped:
                what, first = "your step numbers are one lower than the steps", "count the steps from 1."
            elif 1 in skipped and steps == [s for s in skipped if s != 1]:
                what, first = (
                    "step 1 is missing",
                    "the scale step 1 used is not in the log: it is init_scale.",
                )
            elif set(skipped) < set(steps):
                grew = [t for t in steps if t not in skipped]
                what = f"steps {grew[:5]} were clean: the scale did not go down after them"
                first = "a skipped step lowers the scale; look at what you take as a sign of a skip."
            else:
                what = "the list differs from the run's"
                first = "compare each entry of the log with the scale the same step used."
            fail(
                label,
                f"for {where} you found {plural(len(steps), 'skipped step')} ({steps[:8]}"
                f"{'...' if len(steps) > 8 else ''}), the run skipped {len(skipped)}: {what}.",
                first,
            )
        try:
            bounds = (float(got[1]), float(got[2]))
        except (TypeError, ValueError):
            fail(label, f"for {where} the bounds {got[1]!r}, {got[2]!r} are not numbers.", "return floats.")
        if np.allclose(bounds, want[1:], rtol=_BOUNDS_RTOL, atol=0):
            continue
        if bounds[0] > bounds[1]:
            fail(
                label,
                f"for {where} you returned low={bounds[0]!r} above high={bounds[1]!r}.",
                "a skipped step says that g is at least something, a clean step that it is below something.",
            )
        misreadings = {
            "max": (
                dict(threshold=formats.FP16.max),
                "fp16's max used as the overflow threshold; a scaled value a little above 65504 still rounds down "
                "to 65504 and does not overflow",
                "find the smallest value that rounds to inf in fp16.",
            ),
            "2^16": (
                dict(threshold=2.0**16),
                "2^16 used as the overflow threshold; rounding to nearest sends values below 2^16 to inf too",
                "find the smallest value that rounds to inf in fp16.",
            ),
            "shift": (
                dict(shift=1),
                "each step paired with the scale logged after it; that is the scale the next step used",
                "line each step up with the scale its backward pass ran with.",
            ),
            "loose": (
                dict(loose=True),
                "bounds that hold but are not the tightest: you kept the weakest inequality of each kind",
                "every skipped step bounds g from below and every clean one from above: keep the strongest.",
            ),
        }
        for kwargs, name, first in misreadings.values():
            wrong = _read_log(case["init_scale"], log, **kwargs)
            if np.allclose(bounds, wrong[1:], rtol=_BOUNDS_RTOL, atol=0):
                fail(
                    label,
                    f"for {where} you returned low={bounds[0]!r}, high={bounds[1]!r}: that looks like {name}.",
                    first,
                )
        implied = _implied_threshold(case["init_scale"], log, bounds)
        if implied is not None and not math.isclose(implied, _FP16_OVERFLOW, rel_tol=_BOUNDS_RTOL):
            fail(
                label,
                f"for {where} you returned low={bounds[0]!r}, high={bounds[1]!r}: the bounds the right steps "
                f"give for an overflow threshold of {implied!r}, which is not fp16's. Its threshold is an exact "
                "number, the smallest value that fp16 rounds to inf: it lies between fp16's largest value and "
                "the next power of two, where rounding to nearest (ties to even) starts to give inf.",
                "work the threshold out from fp16's format: its largest value, the gap of its top binade, and "
                "which way a tie goes.",
            )
        true_g = case["g"]
        fail(
            label,
            f"for {where} you returned low={bounds[0]!r}, high={bounds[1]!r}; the run's largest gradient was "
            f"{true_g!r}"
            + (
                ", outside them."
                if not bounds[0] <= true_g < bounds[1]
                else ", and the tightest bounds are others."
            ),
            "for each step write the inequality its outcome gives on g, then combine them.",
        )


# ---- loss_scaling-underflow-share ----------------------------------------------------------------

_FP16_TINY = 2.0**-24  # fp16's smallest subnormal
#: Shares are compared to within a fraction of one value in the checked tensors (2010 values): a mean
#: computed in float32 rounds, a miscounted value does not hide.
_SHARE_TOLERANCE = 1e-6


def _underflow_values(seed: int) -> torch.Tensor:
    """Gradient-like float32 values: a wide spread of magnitudes, exact zeros, and the edge cases."""
    gen = torch.Generator().manual_seed(seed)
    spread = torch.randn(2000, generator=gen) * torch.exp2(
        torch.randint(-40, -5, (2000,), generator=gen).float()
    )
    t = _FP16_TINY
    edges = torch.tensor(
        [0.0, 0.0, t / 2, -t / 2, t * 0.75, -t * 0.51, t, t / 4, t / 2 * (1 - 2**-20), -t / 3]
    )
    return torch.cat([spread, edges]).float()


#: (values seed, scale): no scaling, scales that move the edge cases, and a scale below one.
_UNDERFLOW_CASES = ((0, 1.0), (1, 2.0**-2), (2, 2.0**8), (3, 2.0**-10), (4, 1.0))


def _underflow_reference(values: torch.Tensor, scale: float) -> float:
    return float(((values * scale).to(torch.float16) == 0)[values != 0].sum()) / values.numel()


@register(
    "loss_scaling-underflow-share",
    hints=(
        "Reread the chapter's first section: which magnitudes round to zero in fp16, and which round up "
        "to the smallest subnormal? What happens exactly at the boundary?",
        "A value that is zero already is not lost by fp16. Count only the values that fp16 zeroes, out of all "
        "values.",
        "The scale multiplies the value before it is rounded to fp16, not after.",
    ),
)
def check_underflow_share(underflow_share: Any) -> None:
    """``underflow_share(values, scale)``: the share of all values non-zero in fp32 that fp16 rounds to
    zero once multiplied by ``scale``; compared with torch's own rounding on values that include the
    boundary cases (exactly half the smallest subnormal, just above and just below it)."""
    label = "loss_scaling-underflow-share"
    for seed, scale in _UNDERFLOW_CASES:
        values = _underflow_values(seed)
        given = values.clone()
        got = call(label, underflow_share, given, scale)
        want = _underflow_reference(values, scale)
        case = f"with scale 2^{math.log2(scale):g}"
        if not torch.equal(given, values):
            fail(
                label,
                f"{case}, your function changed the values it was given.",
                "compute a new tensor instead.",
            )
        try:
            got = float(got)
        except (TypeError, ValueError):
            fail(
                label, f"{case}, expected a number (a fraction), got {type(got).__name__}.", "return a float."
            )
        if math.isclose(got, want, rel_tol=0, abs_tol=_SHARE_TOLERANCE):
            continue
        n = values.numel()
        zeros = float((values == 0).sum()) / n
        scaled = values * scale
        mag = scaled.abs()
        nonzero = values != 0
        diagnoses = [
            (
                want + zeros,
                "your share counts the exact zeros too: they are zero in fp32 already, so fp16 loses nothing there",
            ),
            (
                float((mag < _FP16_TINY)[nonzero].sum()) / n,
                "your share counts the values between half the smallest "
                "subnormal and the smallest subnormal, 2^-24: they round up to 2^-24, not to zero",
            ),
            (
                float((mag < _FP16_TINY / 2)[nonzero].sum()) / n,
                "your share misses the values exactly at half the smallest "
                "subnormal, 2^-25: a tie, which rounds to the even neighbour, 0",
            ),
            (
                _underflow_reference(values, 1.0),
                "your share ignores the scale: the values are multiplied by it before "
                "they are rounded to fp16",
            ),
            (
                float((values.to(torch.float16) * scale == 0)[nonzero].sum()) / n
                if scale != 1.0
                else math.nan,
                "your share rounds to fp16 before multiplying by the scale",
            ),
            (
                want * n / max(int(nonzero.sum()), 1),
                "your share is a fraction of the non-zero values; the question "
                "asks for a fraction of all values",
            ),
        ]
        for value, why in diagnoses:
            if math.isclose(got, value, rel_tol=0, abs_tol=_SHARE_TOLERANCE):
                fail(label, f"{case}, you return {got:.6g}, expected {want:.6g}: {why}.", "fix that case.")
        fail(
            label,
            f"{case}, you return {got:.6g}, expected {want:.6g} (the share of all {n} values that are non-zero but "
            "become zero in fp16).",
            "test each rule of fp16's rounding near zero on a few values you choose.",
        )
