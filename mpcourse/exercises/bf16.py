"""Checks for the exercises of chapter ``bf16``.

References are independent of the learner's code: :mod:`mpcourse.formats` (exact float64 rounding,
for neighbours and for "does this update survive?"), float64 sums of the updates, and torch's own
training step under ``torch.autocast`` for the corrected seed loop.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .. import formats
from . import call, fail, register

BF16 = formats.BF16


# ---- bf16-stochastic-round ------------------------------------------------------------------------


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


@register("bf16-stochastic-round")
def check_stochastic_round(stochastic_round_bf16: Any) -> None:
    """``stochastic_round_bf16(x, generator)``: fp32 -> bf16, rounding away from zero with probability f."""
    label = "bf16-stochastic-round"
    hint = (
        "view the float32 tensor as int32, add a random integer drawn uniformly from [0, 2^16) (randint's "
        "upper bound is exclusive), clear the low 16 bits with & -65536 (0xFFFF0000), view the result as "
        "float32 and convert it to bf16 (exact, since the low bits are now zero)."
    )
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
            "convert the rounded float32 values to torch.bfloat16 at the end (their low 16 bits are zero, so "
            "this conversion is exact).",
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
                "a value the format holds must come back unchanged: its low 16 bits are zero, so no carry can "
                "happen. " + hint,
            )
        fail(
            label,
            f"{x!r} became {g[i].item()!r}, which is not one of its two bf16 neighbours "
            f"{low[i].item()!r} and {high[i].item()!r}.",
            hint,
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
            hint,
        )
    deterministic = ((up == 0) | (up == 1)).all()
    if deterministic:
        fail(
            label,
            "every value is rounded the same way on every draw: that is a deterministic rounding (to "
            "nearest, or toward zero), not a stochastic one.",
            hint,
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
            "the probability of rounding up must equal the fraction of the gap covered: the random integer "
            "must be uniform over all 2^16 values of the low 16 bits. " + hint,
        )
    mean_error = ((out.float().double().mean(dim=0) - x.double()) / gaps[:, None].double()).abs().max().item()
    if mean_error > 0.05:
        fail(label, f"the average of many roundings misses the input by {mean_error:.2f} of a gap.", hint)
    # The randomness must come from `generator`: reproducible with it, different across seeds. (A
    # global generator, or one seeded inside the function, passes every statistical test above.)
    inexact = values[low != high].clone()
    first, again, other = (
        call(label, stochastic_round_bf16, inexact.clone(), torch.Generator().manual_seed(seed))
        for seed in (11, 11, 12)
    )
    generator_hint = (
        "draw the random integers from the generator you are given: torch.randint(..., "
        "generator=generator); do not seed or use torch's global generator inside the "
        "function."
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


# ---- bf16-update-survives -------------------------------------------------------------------------


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


@register("bf16-update-survives")
def check_update_survives(update_survives: Any) -> None:
    """``update_survives(w, u)``: does the bf16 weight ``w`` change when ``u`` is added and rounded once?"""
    label = "bf16-update-survives"
    hint = (
        "the update survives when w + u is closer to another bf16 value than to w: compare |u| with half the "
        "gap between w and its neighbour in the direction of u (formats.get('bf16').spacing(w) gives the gap "
        "above |w|; the gap below a power of two is half of it). Exactly half a gap is a tie, which goes to "
        "the neighbour with an even last mantissa bit."
    )
    w, u, groups = _survival_cases()
    got = call(label, update_survives, w.copy(), u.copy())
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
            "look at the last bit of w's mantissa.",
        ),
        "double-rounding": (
            "an update just above half a gap was judged lost. Adding in float32 first rounds "
            "w + u to an exact tie, which then goes back to w: that is double rounding.",
            "decide from the exact sum (float64 is exact here), or compare u with half the gap.",
        ),
        "power-of-two-down": (
            "updates toward zero from a power of two were judged lost, but the gap below a "
            "power of two is half the gap above it.",
            hint,
        ),
        "power-of-two-down-small": (
            "updates toward zero from a power of two, below half of the (smaller) gap "
            "under it, were judged to survive.",
            hint,
        ),
        "zero-update": ("a zero update cannot change a weight.", hint),
        "zero-weight": (
            "near zero the gap is the smallest subnormal, 2^-133: an update survives unless it is "
            "below half of that.",
            hint,
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


# The checks of the chapter's training-loop exercises live in bf16_training.py; importing it registers them.
from . import bf16_training  # noqa: E402, F401
