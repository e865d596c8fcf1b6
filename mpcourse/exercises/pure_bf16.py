"""Checks for the exercises of chapter ``pure_bf16``: does an update survive, stochastic rounding,
Kahan-compensated updates, and the learning rate below which pure bf16's first AdamW step leaves a
tensor's weights where they are.

References are independent of the learner's code: :mod:`mpcourse.formats` (exact float64 rounding,
for neighbours and for "does this update survive?"), float64 sums of the updates, and bf16 bit
patterns for the learning-rate floor. :func:`watch_bf16_rounding` sees a library round values that
bf16 cannot hold, for exercises whose point is to reason without one.
"""

from __future__ import annotations

import contextlib
import math
import types
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .. import formats
from . import call, fail, is_tensor_pair, register, shortcuts

BF16 = formats.BF16

__all__ = ["WatchedArray", "package_use", "watch_bf16_rounding", "watched_calls"]


# ---- seeing a library round to bf16 ---------------------------------------------------------------


def _inexact_in_bf16(values: Any) -> bool:
    """Whether any finite value is not a bf16 value (so converting it to bf16 rounds). Bit test only:
    a float32 whose low 16 bits are zero is a bf16 value; no rounding function is called."""
    try:
        x = np.asarray(
            values.detach().cpu().double() if isinstance(values, torch.Tensor) else values, np.float64
        )
    except (TypeError, ValueError):
        return False
    x = x[np.isfinite(x)]
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)
    exact = (x32.astype(np.float64) == x) & ((x32.view(np.uint32) & 0xFFFF) == 0)
    return not bool(exact.all())


def _floats(value: Any) -> list[Any]:
    """The floating-point inputs among a torch call's arguments, lists and tuples opened."""
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _floats(item)]
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() and value.dtype != torch.bfloat16 else []
    if isinstance(value, np.ndarray):
        return [value] if value.dtype.kind == "f" else []
    if isinstance(value, float):
        return [value]
    return []


class WatchedArray(np.ndarray):
    """A float array that notes any array derived from it being converted to ml_dtypes's bfloat16 from
    values bf16 cannot hold (numpy calls ``__array_finalize__`` for ``astype`` results, whose ``obj`` is
    the array converted)."""

    roundings: list[str]

    def __array_finalize__(self, obj: Any) -> None:
        if not isinstance(obj, np.ndarray):
            return
        self.roundings = getattr(obj, "roundings", [])
        if self.dtype.name == "bfloat16" and obj.dtype.kind == "f" and self.base is not obj:
            if _inexact_in_bf16(np.asarray(obj)):
                self.roundings.append("ml_dtypes (astype(bfloat16) of values bf16 cannot hold)")


def _uses_ml_dtypes(fn: Any) -> bool:
    """Whether ``fn`` refers to ml_dtypes (the module, one of its types, or a format's ``ml_dtype``)."""
    scope = shortcuts.scope_of(fn)
    for name in shortcuts.names_in(fn):
        if name in ("ml_dtypes", "ml_dtype"):
            return True
        obj = scope.get(name)
        module = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None)
        if isinstance(module, str) and module.split(".")[0] == "ml_dtypes":
            return True
    return False


@contextlib.contextmanager
def watch_bf16_rounding(fn: Any = None) -> Iterator[list[str]]:
    """Record every rounding to bf16 of values bf16 cannot hold that a library does meanwhile.

    Seen: torch calls whose result is bf16 and whose floating-point inputs are not all bf16 values
    (``.to(torch.bfloat16)``, ``.bfloat16()``, ``torch.tensor(..., dtype=torch.bfloat16)``, ``copy_``
    into a bf16 tensor, a bf16 tensor plus a Python float, ...); :mod:`mpcourse.formats`'s bf16
    rounding (``BF16.round``, ``encode``, ``round_tensor``); and, given ``fn``, a function that names
    ml_dtypes. Converting values bf16 already holds (to read their bit patterns, say) rounds nothing
    and is not recorded. Arrays passed as :class:`WatchedArray` also report ml_dtypes conversions.
    """
    found: list[str] = []

    def torch_rounding(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> str | None:
        if isinstance(result, torch.Tensor) and result.dtype == torch.bfloat16:
            if any(_inexact_in_bf16(v) for v in _floats([*args, *kwargs.values()])):
                return (
                    f"torch's {getattr(func, '__name__', str(func))}() gave bf16 from values bf16 cannot hold"
                )
        return None

    def round_numpy(fmt: formats.FloatFormat, values: Any, *args: Any, **kwargs: Any) -> str | None:
        if fmt.name == BF16.name and _inexact_in_bf16(values):
            return "mpcourse.formats (a bf16 rounding: round, encode, neighbours)"
        return None

    def round_with_torch(t: Any, fmt: formats.FloatFormat, **kwargs: Any) -> str | None:
        return (
            "mpcourse.formats (round_tensor to bf16)"
            if fmt.name == BF16.name and _inexact_in_bf16(t)
            else None
        )

    if fn is not None and _uses_ml_dtypes(fn):
        found.append("ml_dtypes (named in your function)")
    targets = [
        (formats.FloatFormat, "_round_numpy", round_numpy),
        (formats, "_round_with_torch", round_with_torch),
    ]
    with shortcuts.watch(targets, found=found), shortcuts.torch_calls(torch_rounding, found=found):
        yield found


@contextlib.contextmanager
def package_use(fn: Any, names: tuple[str, ...]) -> Iterator[list[str]]:
    """Record uses of the course's own :mod:`mpcourse.bf16` functions ``names`` meanwhile (the chapter
    demonstrates them just before the exercises that ask for them): calls through the module, and, given
    ``fn``, any of them that ``fn`` refers to directly (``from mpcourse.bf16 import ...``)."""
    from .. import bf16 as package

    with shortcuts.watch([(package, name, f"mpcourse.bf16.{name}") for name in names], fn=fn) as found:
        yield found


def watched_calls(fn: Any, names: tuple[str, ...], *, rounding: bool) -> tuple[Any, list[str]]:
    """``fn`` wrapped so that each call runs under :func:`package_use` (and, with ``rounding``, under
    :func:`watch_bf16_rounding`), and the list that collects what they saw. Only the learner's calls are
    watched: the check's own references, computed between them, may round as they please."""
    used: list[str] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with contextlib.ExitStack() as stack:
            used_here = stack.enter_context(package_use(fn, names))
            rounded = stack.enter_context(watch_bf16_rounding()) if rounding else []
            try:
                return fn(*args, **kwargs)
            finally:
                used.extend(used_here + rounded)

    return wrapper, used


# ---- pure_bf16-stochastic-round ------------------------------------------------------------------


def _sr_cases() -> tuple[torch.Tensor, torch.Tensor]:
    """float32 inputs for the neighbour test, and for the statistics: (values, fraction of the gap)."""
    bf16_values = torch.tensor(
        [1.0, -1.0, 0.0, -0.0, 3.140625, 2.0**-126, 2.0**-133, 6.5e4, -(2.0**100), 2.0**127]
    )
    specials = torch.tensor([math.inf, -math.inf])
    gen = torch.Generator().manual_seed(5)
    random = torch.randn(4000, generator=gen) * torch.exp(torch.randn(4000, generator=gen) * 8)
    subnormal = torch.tensor([1e-40, -3e-39, 7e-45])  # fp32 subnormals: bf16 subnormals too, same bit trick
    values = torch.cat([bf16_values, specials, random, subnormal]).float()
    fractions = torch.tensor([1 / 16, 1 / 4, 1 / 2, 3 / 4, 15 / 16])
    return values, fractions


def _statistics_inputs(fractions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Values a given fraction of the way from a bf16 value to the next one (away from zero), both signs."""
    bases = torch.tensor([1.0, 1.5078125, 300.0, 2.0**-100, -1.0, -0.0078125, -6016.0])  # all bf16 values
    gaps = torch.from_numpy(BF16.spacing(bases.numpy().astype(np.float64))).float()
    x = bases[:, None] + torch.sign(bases)[:, None] * fractions[None, :] * gaps[:, None]
    return x.float(), bases, gaps


@register(
    "pure_bf16-stochastic-round",
    hints=(
        "bf16 is the top 16 bits of a float32: the low 16 bits of x's pattern say how far x lies from the "
        "bf16 value below it in magnitude, as a fraction of the gap between the two neighbours.",
        "Adding an integer to the whole pattern carries into bit 16 with a probability that depends on the "
        "low bits: make that probability equal to the fraction they hold, then drop the low bits.",
        "Draw the random integers uniformly over every possible value of the low 16 bits, from the generator "
        "you are given, and convert to bf16 only at the end: with the low bits cleared, that is exact.",
    ),
)
def check_stochastic_round(stochastic_round_bf16: Any) -> None:
    """``stochastic_round_bf16(x, generator)``: fp32 -> bf16, rounding away from zero with probability f."""
    label = "pure_bf16-stochastic-round"
    watched, used = watched_calls(
        stochastic_round_bf16, ("stochastic_round_bf16", "stochastic_add_"), rounding=True
    )
    _check_stochastic_round(watched, label)
    if used:
        fail(
            label,
            f"your function lets a library do the rounding: {used[0]}. Its results are "
            "right, but the exercise is to round with integer operations on the bit pattern yourself.",
            "work on x's int32 view; the only conversion to bf16 is the last one, of values whose low 16 bits "
            "are already zero.",
        )


def _check_stochastic_round(stochastic_round_bf16: Any, label: str) -> None:
    values, fractions = _sr_cases()
    gen = torch.Generator().manual_seed(0)
    got = call(label, stochastic_round_bf16, values.clone(), gen)
    if not isinstance(got, torch.Tensor):
        fail(label, f"you returned {type(got).__name__}, not a tensor.", "return a torch.bfloat16 tensor.")
    if got.shape != values.shape:
        fail(
            label,
            f"the result has shape {tuple(got.shape)}, the input {tuple(values.shape)}.",
            "round element-wise.",
        )
    if got.dtype != torch.bfloat16:
        fail(
            label,
            f"the result has dtype {got.dtype}.",
            "the result must be a bf16 tensor: convert at the end, once the low bits are cleared.",
        )
    low = formats.round_tensor(values, BF16, rounding="toward_zero")
    high = torch.where(
        values == low,
        low,
        low + torch.sign(values) * torch.from_numpy(BF16.spacing(values.double().numpy())).float(),
    )
    high = torch.where(torch.isinf(values), values, high)
    g = got.float()
    ok = (g == low) | (g == high)
    if not ok.all():
        i = int(torch.nonzero(~ok)[0])
        x = values[i].item()
        if low[i] == high[i]:
            fail(
                label,
                f"{x!r} is already a bf16 value, but you returned {g[i].item()!r}.",
                "a value the format holds has its low 16 bits zero: nothing you add to them may carry it to "
                "another value.",
            )
        fail(
            label,
            f"{x!r} became {g[i].item()!r}, which is not one of its two bf16 neighbours "
            f"{low[i].item()!r} and {high[i].item()!r}.",
            "each result must be one of the two bf16 values around x: only a carry out of the low 16 bits "
            "may change what you keep.",
        )

    x, bases, gaps = _statistics_inputs(fractions)
    draws = 4000
    wide = x.repeat(draws, 1, 1)
    out = call(label, stochastic_round_bf16, wide.clone(), torch.Generator().manual_seed(1))
    if not isinstance(out, torch.Tensor) or out.shape != wide.shape:
        fail(
            label,
            "a second call, on a 3-d tensor, did not return a tensor of the same shape.",
            "round element-wise, for any shape.",
        )
    up = (out.float() != bases[None, :, None]).float().mean(dim=0)  # fraction rounded away from zero
    expected = fractions[None, :].expand_as(up)
    se = torch.sqrt(expected * (1 - expected) / draws)
    if (up == 0).all():
        fail(
            label,
            "no value was ever rounded away from zero: that is truncation (round toward zero), which is "
            "biased: every result is too small in magnitude.",
            "the random number you add never carries into bit 16: look at its range and where you add it.",
        )
    deterministic = ((up == 0) | (up == 1)).all()
    if deterministic:
        fail(
            label,
            "every value is rounded the same way on every draw: that is a deterministic rounding (to "
            "nearest, or toward zero), not a stochastic one.",
            "the random numbers never reach the result: look at where they enter.",
        )
    bad = (up - expected).abs() > 5 * se + 1e-3
    if bad.any():
        negative = bases < 0
        flipped = (up - (1 - expected)).abs() <= 5 * se + 1e-3
        if bad[negative].any() and flipped[negative].all() and not bad[~negative].any():
            fail(
                label,
                "negative values are rounded away from zero with probability 1 - f instead of f: you "
                "rounded toward +infinity rather than in magnitude.",
                "a float's sign is a separate bit: adding to the magnitude bits works for both signs.",
            )
        r, c = (int(v) for v in torch.nonzero(bad)[0])
        fail(
            label,
            f"a value {fractions[c].item():g} of the way to its upper neighbour (from {bases[r].item()!r}) "
            f"was rounded away from zero in {up[r, c].item():.1%} of {draws} draws; it should be "
            f"{fractions[c].item():.1%} (give or take {5 * se[r, c].item():.1%}).",
            "the probability of rounding away from zero must equal the fraction of the gap covered: look at "
            "the range your random integers are drawn from.",
        )
    mean_error = ((out.float().double().mean(dim=0) - x.double()) / gaps[:, None].double()).abs().max().item()
    if mean_error > 0.05:
        fail(
            label,
            f"the average of many roundings misses the input by {mean_error:.2f} of a gap.",
            "stochastic rounding is unbiased: look at the range your random integers are drawn from.",
        )
    # The randomness must come from `generator`: reproducible with it, different across seeds. (A
    # global generator, or one seeded inside the function, passes every statistical test above.)
    inexact = values[low != high].clone()
    first, again, other = (
        call(label, stochastic_round_bf16, inexact.clone(), torch.Generator().manual_seed(seed))
        for seed in (11, 11, 12)
    )
    generator_hint = (
        "draw every random number from the generator you are given, and seed nothing inside the function."
    )
    if not torch.equal(first, again):
        fail(
            label,
            "two calls with generators seeded alike rounded the same inputs differently: the "
            "random bits do not come (only) from `generator`.",
            generator_hint,
        )
    if torch.equal(first, other):
        fail(
            label,
            f"generators with different seeds gave exactly the same roundings of {inexact.numel()} "
            "inexact values: your function ignores `generator` (a fixed seed inside it?).",
            generator_hint,
        )


# ---- pure_bf16-update-survives -------------------------------------------------------------------


def _survival_cases() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(w, u, groups): bf16 weights and updates around every threshold, with named subsets."""
    w_list, u_list, group = [], [], []

    def add(name: str, w: np.ndarray, u: np.ndarray) -> None:
        w_list.append(np.asarray(w, dtype=np.float64))
        u_list.append(np.asarray(u, dtype=np.float64))
        group.extend([name] * np.size(w))

    rng = np.random.default_rng(3)
    w = BF16.round(rng.standard_normal(600) * np.exp(rng.uniform(-8, 8, 600)))
    w = w[w != 0]
    gap = BF16.spacing(w)
    ratios = np.exp(rng.uniform(np.log(2.0**-12), np.log(2.0**-5), w.size))
    add("random", w, np.sign(rng.standard_normal(w.size)) * ratios * np.abs(w))
    # Exactly half a gap away from zero: a tie, decided by the last mantissa bit of w (ties to even).
    w_tie = BF16.round(1.0 + np.arange(16) * 2.0**-7) * np.array([1, -1] * 8)
    add("tie", w_tie, np.sign(w_tie) * BF16.spacing(w_tie) / 2)
    # Just above / below half a gap.
    add("above-half", w, np.sign(w) * gap / 2 * (1 + 2.0**-20))
    add("below-half", w, np.sign(w) * gap / 2 * (1 - 2.0**-20))
    # Just above a tie by far less than fp32 can hold next to w: rounding w + u to fp32 first makes it a tie.
    w_near = BF16.round(1.0 + 2 * np.arange(8) * 2.0**-7)  # even mantissas: a tie would go back to w
    add("double-rounding", w_near, BF16.spacing(w_near) / 2 + 2.0**-40)
    # Towards zero from a power of two: the gap below is half the gap above.
    powers = 2.0 ** np.arange(-6, 7)
    add("power-of-two-down", powers, -0.3 * BF16.spacing(powers))  # 0.3 gap above = 0.6 gap below: survives
    add("power-of-two-down-small", powers, -0.2 * BF16.spacing(powers))  # 0.4 gap below: lost
    add("zero-update", w[:20], np.zeros(20))
    add("zero-weight", np.zeros(3), np.array([1e-30, 2.0**-135, -1e-20]))
    groups_arr = np.array(group)
    w_all, u_all = np.concatenate(w_list), np.concatenate(u_list)
    return w_all, u_all, {name: groups_arr == name for name in dict.fromkeys(group)}


def _survives_reference(w: np.ndarray, u: np.ndarray) -> np.ndarray:
    return BF16.round(w + u) != w  # w + u is exact in float64 for these cases; one rounding to bf16


@register(
    "pure_bf16-update-survives",
    hints=(
        "Round to nearest moves w exactly when w + u lies closer to a neighbour of w than to w itself: "
        "compare |u| with half the distance from w to its neighbour in the direction of u.",
        "That distance is the gap of w's binade, except toward zero from an exact power of two, where the "
        "binade below has half the gap, and at zero, where it is the smallest subnormal.",
        "At exactly half a gap the sum is a tie, which goes to the neighbour whose last mantissa bit is 0: "
        "read w's last mantissa bit from its bit pattern. Decide from the exact values: rounding w + u to "
        "float32 first can turn a sum just past half a gap into a tie.",
    ),
)
def check_update_survives(update_survives: Any) -> None:
    """``update_survives(w, u)``: does the bf16 weight ``w`` change when ``u`` is added and rounded once?

    The answer must come from reasoning about the gap: a library that rounds ``w + u`` to bf16 gives the
    right booleans but skips the exercise, so :func:`watch_bf16_rounding` looks and such an answer is
    refused. Reading ``w``'s own bit pattern (a bf16 value, so nothing is rounded) is allowed.
    """
    label = "pure_bf16-update-survives"
    w, u, groups = _survival_cases()
    w_in, u_in = w.copy().view(WatchedArray), u.copy().view(WatchedArray)
    w_in.roundings = u_in.roundings = []
    with watch_bf16_rounding(update_survives) as roundings:
        got = call(label, update_survives, w_in, u_in)
    roundings += w_in.roundings
    _judge_survival(label, got, w, u, groups)
    if roundings:
        fail(
            label,
            f"your function lets a library round w + u to bf16: {roundings[0]}. That gives the right answers, "
            "but the exercise is to predict them from the gap, without a rounding function.",
            "decide from |u| and the distance from w to its neighbour. Reading w's bit pattern is fine (w is a "
            "bf16 value, so converting it rounds nothing), and so is BF16.spacing.",
        )


def _judge_survival(
    label: str, got: Any, w: np.ndarray, u: np.ndarray, groups: dict[str, np.ndarray]
) -> None:
    hint = "compare |u| with half the distance from w to its neighbour in the direction of u."
    got_arr = np.asarray(got)
    if got_arr.shape != w.shape or got_arr.dtype != np.bool_:
        fail(
            label,
            f"you returned an array of dtype {got_arr.dtype} and shape {got_arr.shape}.",
            f"return a boolean numpy array of shape {w.shape}, one answer per (w, u) pair.",
        )
    want = _survives_reference(w, u)
    wrong = got_arr != want
    if not wrong.any():
        return
    explanations = {
        "tie": (
            "an update of exactly half a gap is a tie: ties go to the even neighbour, so it survives only "
            "when w's last mantissa bit is 1.",
            "look at the pairs where |u| is exactly half a gap.",
        ),
        "double-rounding": (
            "an update just above half a gap was judged lost. Rounding w + u (or u) to float32 first makes it "
            "an exact tie, which then goes back to w: that is double rounding.",
            "decide from the exact values (float64 holds them exactly here).",
        ),
        "power-of-two-down": (
            "updates toward zero from a power of two were judged lost, but the gap below a "
            "power of two is half the gap above it.",
            "look at the weights that are exact powers of two, and at the direction of their update.",
        ),
        "power-of-two-down-small": (
            "updates toward zero from a power of two, below half of the (smaller) gap "
            "under it, were judged to survive.",
            "look at the weights that are exact powers of two, and at the direction of their update.",
        ),
        "zero-update": ("a zero update cannot change a weight.", "look at the pairs where u is 0."),
        "zero-weight": (
            "near zero the gap is the smallest subnormal, 2^-133: an update survives unless it is "
            "below half of that.",
            "look at the weights that are 0.",
        ),
    }
    if not (wrong & groups["random"]).any():  # the rule is right in general: name the special case it misses
        for name, (what, group_hint) in explanations.items():
            if (wrong & groups[name]).any():
                fail(label, what, group_hint)
    i = int(np.flatnonzero(wrong)[0])
    relative = abs(u[i]) / abs(w[i]) if w[i] else math.inf
    if (wrong & (groups["above-half"] | groups["below-half"])).any():
        fail(
            label,
            f"for w = {w[i]!r}, u = {u[i]!r} (|u|/|w| = {relative:.3g}) you answered {bool(got_arr[i])}. "
            "Your threshold is off: updates just above half a gap survive, just below it they do not.",
            hint,
        )
    fail(
        label,
        f"for w = {w[i]!r}, u = {u[i]!r} (|u|/|w| = {relative:.3g}) you answered {bool(got_arr[i])}.",
        hint,
    )


# ---- pure_bf16-kahan -----------------------------------------------------------------------------


def _run_kahan(kahan_update: Any, label: str, w0: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
    param = w0.to(torch.bfloat16)
    comp = torch.zeros_like(param)
    for k in range(updates.shape[0]):
        result = call(label, kahan_update, param.clone(), updates[k].clone(), comp.clone())
        if not is_tensor_pair(result):
            fail(
                label,
                f"you returned {type(result).__name__}, not a pair of tensors.",
                "return (new_param, new_compensation), both bf16 tensors shaped like the parameter.",
            )
        param, comp = result
        if param.dtype != torch.bfloat16 or comp.dtype != torch.bfloat16:
            fail(
                label,
                f"you returned tensors of dtypes {param.dtype} and {comp.dtype}.",
                "the weight and its compensation both stay bf16: that is the whole point (4 bytes per weight).",
            )
        if param.shape != w0.shape or comp.shape != w0.shape:
            fail(
                label,
                f"you returned shapes {tuple(param.shape)} and {tuple(comp.shape)}; the parameter has "
                f"shape {tuple(w0.shape)}.",
                "update element-wise.",
            )
    return param


@register(
    "pure_bf16-kahan",
    hints=(
        "Compare the weight after many small updates with their exact sum: rounded to nearest alone, every "
        "update below half a gap is lost. The compensation is where what was lost waits for its turn.",
        "Work in fp32: bring together this update and what the last rounding dropped, add them to the "
        "weight, and round once to bf16 for the new weight.",
        "The new compensation is what this rounding dropped: the difference between the fp32 result and the "
        "bf16 weight you keep, in that order. Both outputs stay bf16.",
    ),
)
def check_kahan(kahan_update: Any) -> None:
    """``kahan_update(param, update, compensation) -> (param, compensation)`` for bf16 weights."""
    label = "pure_bf16-kahan"

    kahan_update, used = watched_calls(kahan_update, ("kahan_add_", "BF16AdamW"), rounding=False)
    # 1. A large update with no history is an ordinary rounding to nearest.
    w0 = torch.tensor([1.0, -3.5, 1000.0, 2.0**-20])
    big = torch.tensor([[0.25, -0.75, 37.0, 2.0**-22]])
    got = _run_kahan(kahan_update, label, w0, big)
    want = (w0.double() + big[0].double()).float().to(torch.bfloat16)
    if not torch.equal(got, want):
        fail(
            label,
            f"one large update from a zero compensation gave {got.tolist()}, expected {want.tolist()} "
            "(the sum rounded to nearest bf16).",
            "with a zero compensation, one update is an ordinary rounding of the weight plus the update.",
        )
    # 2. Many small updates, each far below half a gap: the compensation must carry them.
    gen = torch.Generator().manual_seed(2)
    w0 = torch.tensor([1.0, -2.0, 0.3, 40.0, -0.01])
    steps = 1000
    small = (w0.abs() * 2.0**-11).expand(steps, -1).clone()  # each update is 1/16 to 1/8 of a gap
    exact = w0.to(torch.bfloat16).double() + small.double().sum(dim=0)
    got = _run_kahan(kahan_update, label, w0, small).double()
    gap = torch.from_numpy(BF16.spacing(exact.numpy()))
    naive = w0.to(torch.bfloat16).double()
    error = ((got - exact).abs() / gap).max().item()
    if torch.equal(got, naive):
        fail(
            label,
            f"after {steps} updates of an eighth of a gap or less the weights have not moved at all: the "
            "compensation is not fed back into the next update, or it has the wrong sign (it must be what the "
            "rounding dropped).",
            "look at what you store in the compensation, and whether the next update gets it back.",
        )
    if error > 2:
        overshoot = ((got - naive) / (exact - naive)).mean().item()
        if overshoot > 1.5:
            fail(
                label,
                f"after {steps} small updates the weights moved {overshoot:.1f} times as far as they "
                "should: the compensation has the wrong sign.",
                "the compensation is what the rounding dropped: check the order of your subtraction.",
            )
        fail(
            label,
            f"after {steps} small updates the weights are {error:.1f} gaps from the exact sum "
            "(at most 2 is expected).",
            "look at the order in which you add the three numbers, and at which of them stay in fp32.",
        )
    # 3. Random updates of both signs and many sizes.
    w0 = torch.randn(64, generator=gen)
    updates = (
        torch.randn(300, 64, generator=gen)
        * w0.abs()
        * 2.0 ** torch.randint(-14, -6, (300, 64), generator=gen)
    )
    exact = w0.to(torch.bfloat16).double() + updates.double().sum(dim=0)
    got = _run_kahan(kahan_update, label, w0, updates).double()
    gap = torch.from_numpy(BF16.spacing(exact.numpy()))
    error = ((got - exact).abs() / gap).max().item()
    if error > 2:
        fail(
            label,
            f"after 300 random updates of both signs, a weight is {error:.1f} gaps away from the exact "
            "sum (at most 2 is expected).",
            "updates of both signs and many sizes: look at the order of the additions and at the sign of "
            "the compensation.",
        )
    if used:
        fail(
            label,
            f"your function lets the course's own implementation do the update: {used[0]}. Its results are "
            "right, but the exercise is to write the compensated update yourself.",
            "compute with fp32 tensors and one rounding to bf16; no function of mpcourse.bf16.",
        )


# ---- pure_bf16-lr-floor --------------------------------------------------------------------------


def _half_gaps(weight: torch.Tensor, grad: torch.Tensor) -> np.ndarray:
    """For each bf16 weight, half the distance to its bf16 neighbour in the direction of ``-sign(grad)``
    (inf where the gradient is zero): the update AdamW's first step must exceed to move it.

    The neighbour comes from the bit pattern: one code up in magnitude away from zero (or from zero),
    one code down toward zero. No rounding function is involved.
    """
    bits = weight.detach().contiguous().view(torch.int16).to(torch.int32).flatten()
    code, sign_bit = bits & 0x7FFF, bits & 0x8000
    w_sign = torch.where(sign_bit != 0, -1, 1) * (code != 0)
    direction = -torch.sign(grad.detach().float().flatten()).to(torch.int32)
    away = (code == 0) | (direction == w_sign)
    neighbour = (torch.where(away, code + 1, code - 1) | sign_bit).to(torch.int16).view(torch.bfloat16)
    half = (neighbour.double() - weight.detach().double().flatten()).abs().numpy() / 2
    return np.where(direction.numpy() == 0, np.inf, half)


def _lr_floor(weight: torch.Tensor, grad: torch.Tensor, share: float, *, variant: str = "right") -> float:
    """The reference (``variant="right"``) and the usual mistakes, for the check's diagnoses."""
    w = weight.detach().double().numpy().ravel()
    zero_grad = grad.detach().float().numpy().ravel() == 0
    if variant == "sign-flipped":
        t = _half_gaps(weight, -grad)
    elif variant == "zero-grad-moves":  # a zero gradient taken as an update away from zero
        away = -torch.sign(weight.float()) - (weight == 0).float()
        t = _half_gaps(weight, torch.where(grad == 0, away, grad.float()))
    elif variant in ("whole-gap", "gap-above", "relative", "relative-eps"):
        t = {
            "whole-gap": lambda: 2 * _half_gaps(weight, grad),
            "gap-above": lambda: np.asarray(BF16.spacing(w), dtype=np.float64) / 2,
            "relative": lambda: np.abs(w) * 2.0**-8,
            "relative-eps": lambda: np.abs(w) * BF16.eps,
        }[variant]()
        t = np.where(zero_grad, np.inf, t)
    else:
        t = _half_gaps(weight, grad)
    t = np.sort(t)
    if t.size == 0:
        return math.inf
    k = math.ceil(share * t.size)
    if variant == "index-off-by-one":
        return float(t[min(k, t.size - 1)])
    if variant == "index-int-off-by-one":  # t[int(share * n)]: one too many when share * n is whole
        return float(t[min(int(share * t.size), t.size - 1)])
    if variant in ("index-floor", "index-round"):  # share * n rounded down, or to nearest, not up
        k = int(share * t.size) if variant == "index-floor" else round(share * t.size)
        return float(t[max(k, 1) - 1])
    if variant == "quantile":
        finite = t[np.isfinite(t)]
        return float(np.quantile(finite, share)) if finite.size else math.inf
    return float(t[k - 1])


def _moved(weight: torch.Tensor, grad: torch.Tensor, lr: float) -> float:
    """The share of the weights that change when ``w - lr * sign(g)`` is rounded to bf16 once, exactly."""
    w = weight.detach().double().numpy().ravel()
    s = np.sign(grad.detach().double().numpy().ravel())
    return float(np.mean(BF16.round(w - lr * s) != w))


def _lr_floor_cases() -> list[tuple[str, torch.Tensor, torch.Tensor, float]]:
    """Realistic bf16 tensors with bf16 gradients: (description, weight, grad, share)."""
    gen = torch.Generator().manual_seed(16)
    cases = []
    linear = (
        (torch.rand(32, 64, generator=gen) * 2 - 1) / 8
    ).bfloat16()  # nn.Linear(64, 32)'s initialisation
    cases.append(
        (
            "a Linear(64, 32) weight as initialised (uniform in +-1/8), share 0.5",
            linear,
            torch.randn(32, 64, generator=gen).bfloat16(),
            0.5,
        )
    )
    gains = torch.ones(64, dtype=torch.bfloat16)  # a LayerNorm's gains as initialised: all exactly 1
    signs = torch.tensor([1.0] * 40 + [-1.0] * 24)[torch.randperm(64, generator=gen)]
    gains_grad = (signs * torch.rand(64, generator=gen) * 1e-2).bfloat16()  # 40 of 64 move toward zero
    for share in (0.25, 0.5, 0.625, 0.75):
        cases.append(
            (
                f"a LayerNorm's gains (all 1.0; 40 of 64 gradients positive), share {share}",
                gains,
                gains_grad,
                share,
            )
        )
    powers = 2.0 ** torch.randint(-6, 3, (96,), generator=gen) * torch.sign(torch.randn(96, generator=gen))
    cases.append(
        (
            "weights of both signs, all powers of two, share 0.5",
            powers.bfloat16(),
            torch.randn(96, generator=gen).bfloat16(),
            0.5,
        )
    )
    bias = torch.zeros(48)
    bias[:16] = torch.randn(16, generator=gen) * 1e-3
    bias_grad = torch.randn(48, generator=gen).bfloat16()
    # 0.7 and 0.8 of 48 weights are 33.6 and 38.4: not whole numbers, so 34 and 39 weights must move.
    for share in (0.75, 0.7, 0.8):
        cases.append(
            (
                f"a bias initialised to zero, 16 of its 48 entries since trained, share {share}",
                bias.bfloat16(),
                bias_grad,
                share,
            )
        )
    dead = (torch.randn(40, 32, generator=gen) * 0.05).bfloat16()
    dead_grad = torch.randn(40, 32, generator=gen)
    dead_grad[:10] = 0.0  # 10 of 40 output units are dead ReLUs: their rows get no gradient
    for share in (0.5, 0.875):
        cases.append(
            (
                f"a weight whose rows for 10 dead units of 40 get zero gradients, share {share}",
                dead,
                dead_grad.bfloat16(),
                share,
            )
        )
    embedding = torch.randn(100, 16, generator=gen).bfloat16()
    cases.append(
        (
            "an embedding table (standard normal), share 0.25",
            embedding,
            torch.randn(100, 16, generator=gen).bfloat16(),
            0.25,
        )
    )
    return cases


_LR_MISTAKES = {
    "whole-gap": (
        "a whole gap: round to nearest already moves a weight once the update passes half of it",
        "compare the update with half the distance to the neighbour it moves toward.",
    ),
    "gap-above": (
        "the gap above |w| everywhere: a weight at a power of two moving toward zero has a gap half as large",
        "look at the weights that sit exactly at a power of two, and at which way their update goes.",
    ),
    "sign-flipped": (
        "the weights moved along the gradient's sign; the optimizer moves them against it",
        "look at the direction of each weight's update.",
    ),
    "zero-grad-moves": (
        "weights with a zero gradient counted as movable, or left out of the count; AdamW's update does not "
        "move them, and the share is of all the weights",
        "look at the weights whose gradient is exactly zero.",
    ),
    "relative": (
        "a threshold proportional to |w|; within a binade the gap is the same for every weight",
        "the gap between neighbouring bf16 values is a power of two fixed by w's binade.",
    ),
    "relative-eps": (
        "a threshold proportional to |w|; within a binade the gap is the same for every weight",
        "the gap between neighbouring bf16 values is a power of two fixed by w's binade.",
    ),
    "index-off-by-one": (
        "one weight too many: the learning rate that moves one more weight than needed",
        "count how many weights must move for the share, and take the threshold of the last one needed.",
    ),
    "index-int-off-by-one": (
        "one weight too many: the learning rate that moves one more weight than needed",
        "count how many weights must move for the share, and take the threshold of the last one needed.",
    ),
    "index-floor": (
        "share * n rounded down to count the weights that must move: when it is not a whole number, that "
        "learning rate changes fewer than share of the weights",
        "share * n need not be a whole number: count how many whole weights it takes to change at least "
        "that share.",
    ),
    "index-round": (
        "share * n rounded to the nearest whole number to count the weights that must move: when it rounds "
        "down, that learning rate changes fewer than share of the weights",
        "share * n need not be a whole number: count how many whole weights it takes to change at least "
        "that share.",
    ),
    "quantile": (
        "an interpolated quantile of the thresholds, which need not be any weight's threshold",
        "the answer is the threshold of one particular weight: sort, count, pick.",
    ),
}


@register(
    "pure_bf16-lr-floor",
    hints=(
        "One weight first: its update is lr against the sign of its gradient, and rounding to nearest moves "
        "it only if the update is more than half the distance to the bf16 neighbour in that direction.",
        "That distance is a power of two set by the weight's binade, except for a weight exactly at a power "
        "of two moving toward zero (the gap below is half the gap above) and for zero. A zero gradient "
        "never moves its weight.",
        "Compute each weight's threshold, sort them, and find how many weights must move for the share: "
        "the answer is the threshold of the last one of those (inf if that weight cannot move at all).",
    ),
)
def check_lr_floor(lr_floor: Any) -> None:
    """``lr_floor(weight, grad, share) -> float``: the learning rate above which pure bf16's first AdamW
    step (an update of ``-lr * sign(g)``, rounded once) changes at least ``share`` of the weights."""
    label = "pure_bf16-lr-floor"
    cases = _lr_floor_cases()
    answers = []
    for case, weight, grad, share in cases:
        got = call(label, lr_floor, weight.clone(), grad.clone(), share)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, (int, float, np.floating, np.integer)):
            fail(
                label,
                f"for {case} you returned {type(got).__name__} {got!r}.",
                "return a learning rate, a float.",
            )
        answers.append(float(got))

    def same(a: float, b: float) -> bool:
        return a == b or (math.isfinite(a) and math.isfinite(b) and math.isclose(a, b, rel_tol=1e-3))

    wants = [_lr_floor(weight, grad, share) for _, weight, grad, share in cases]
    wrong = [i for i, (got, want) in enumerate(zip(answers, wants)) if not same(got, want)]
    if not wrong:
        return
    # A known mistake is named when it reproduces every answer (cases where it is right included).
    for variant, (name, first) in _LR_MISTAKES.items():
        if all(same(got, _lr_floor(w, g, sh, variant=variant)) for got, (_, w, g, sh) in zip(answers, cases)):
            case = cases[wrong[0]][0]
            fail(label, f"for {case} you returned {answers[wrong[0]]:.6g}: that looks like {name}.", first)
    i = wrong[0]
    case, weight, grad, share = cases[i]
    got, want = answers[i], wants[i]
    if math.isinf(want):
        fail(
            label,
            f"for {case} you returned {got!r}, but no learning rate changes {share:.1%} of these weights: at "
            f"most {_moved(weight, grad, 1e30):.1%} of them can move.",
            "look at the weights whose gradient is exactly zero.",
        )
    if not math.isfinite(got):
        fail(
            label,
            f"for {case} you returned {got!r}; a finite learning rate changes {share:.1%} of these weights.",
            "return inf only when not enough weights can move at all.",
        )
    if got > want:
        fail(
            label,
            f"for {case} you returned {got:.6g}: at that learning rate {_moved(weight, grad, got):.1%} of the "
            f"weights change, but a smaller one already changes {share:.1%}: yours is not the smallest.",
            "compare the update with half the distance to the neighbour each weight moves toward.",
        )
    fail(
        label,
        f"for {case} you returned {got:.6g}: just above it only {_moved(weight, grad, got * (1 + 1e-6)):.1%} "
        f"of the weights change, and the share asked is {share:.1%}.",
        "compare the update with half the distance to the neighbour each weight moves toward.",
    )
