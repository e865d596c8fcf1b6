"""Checks for the exercises of chapter ``mixed_precision_recipe``.

Four exercises, one per rule of the recipe: predict how many weights one update moves when they
are stored in low precision (why master weights); choose how often a low-precision accumulator
must hand its partial sum to fp32 (why fp32 accumulation); find the largest model that fits a
memory budget under each recipe (what the recipe costs); and write the course's one AMP training
step, choosing its format from a description of the hardware.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import device, memory
from ..train.step import train_step
from . import ExerciseFailed, call, fail, register, shortcuts

SLUG = "mixed_precision_recipe"

_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def _number(label: str, got: Any, case: str, hint: str) -> float:
    """The learner's answer as a float, or a failure that says what came back instead."""
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, np.ndarray) and got.size == 1:
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, numbers.Real):
        fail(label, f"for {case}, you returned {type(got).__name__} {got!r}; expected one number.", hint)
    return float(got)


# --- moved-fraction: how many weights one update moves ------------------------------------------

MOVED = f"{SLUG}-moved-fraction"


def _nonnegative_values(dtype: torch.dtype) -> torch.Tensor:
    """Every finite value >= 0 of a 16-bit format, ascending (bit patterns 0, 1, 2, ... in order)."""
    patterns = torch.arange(0, 2**15, dtype=torch.int32).to(torch.int16)
    values = patterns.view(dtype).double()
    return values[torch.isfinite(values)]


@functools.cache
def _moved_fraction(bound: float, lr: float, dtype: torch.dtype) -> float:
    """The exact fraction of weights drawn uniformly from [-bound, bound], stored in ``dtype``, that
    an update of +lr or -lr (equally likely, itself stored in ``dtype``) changes.

    Every value of the format is weighed by the length of the interval of weights that round to it;
    an update moves a value when it exceeds half the gap to the neighbour on its side (ties go to
    the neighbour whose last mantissa bit is even).
    """
    u = float(torch.tensor(lr, dtype=dtype))
    if dtype == torch.float32:  # too many values to list: used only where every one of them moves
        top_gap = 2.0 ** (math.floor(math.log2(bound)) - 23)
        if not u > top_gap / 2:
            raise ValueError("an fp32 case of moved-fraction must move every weight")
        return 1.0
    v = _nonnegative_values(dtype)
    gap_up = torch.diff(v, append=v[-1:] * 2)
    gap_down = torch.diff(v, prepend=v[:1])
    gap_down[0] = gap_up[0]  # from zero, both directions lead to the smallest subnormal
    odd = (torch.arange(v.numel()) % 2 == 1).double()
    up = (u > gap_up / 2).double() + (u == gap_up / 2).double() * odd
    down = (u > gap_down / 2).double() + (u == gap_down / 2).double() * odd
    lower = torch.clamp(v - gap_down / 2, min=0.0)
    upper = v + gap_up / 2
    mass = torch.clamp(torch.minimum(upper, torch.tensor(bound)) - lower, min=0.0) / bound
    return float((mass * (up + down) / 2).sum())


def _simulated_moved_fraction(bound: float, lr: float, dtype: torch.dtype) -> float:
    """The same fraction measured on 2^20 weights (seeded): what the failure message reports, where the
    measurement comes within the check's tolerance of the exact fraction."""
    gen = torch.Generator().manual_seed(0)
    w = ((torch.rand(2**20, generator=gen, dtype=torch.float64) * 2 - 1) * bound).to(dtype)
    sign = torch.where(torch.rand(2**20, generator=gen) < 0.5, -1.0, 1.0).to(dtype)
    u = torch.tensor(lr, dtype=dtype)
    return float(((w + sign * u) != w).double().mean())


MOVED_RTOL = 1e-2  # how close a prediction must come to the exact fraction, relatively

MOVED_CASES: tuple[tuple[str, float, float, torch.dtype], ...] = (
    ("the fresh model's first layer (bound 1/8), Adam at lr = 1e-4, pure bf16", 0.125, 1e-4, torch.bfloat16),
    ("its second layer (bound 1/sqrt(128)), lr = 1e-3, pure bf16", 1 / math.sqrt(128), 1e-3, torch.bfloat16),
    ("weights of size up to 1, a decayed lr = 3e-7, pure bf16", 1.0, 3e-7, torch.bfloat16),
    ("the first layer (bound 1/8), lr = 1e-5, pure fp16", 0.125, 1e-5, torch.float16),
    ("the first layer (bound 1/8), lr = 2e-8, pure fp16", 0.125, 2e-8, torch.float16),
    ("the first layer (bound 1/8), lr = 1e-6, fp32 master weights", 0.125, 1e-6, torch.float32),
)


@contextlib.contextmanager
def _watch_global_rng() -> Iterator[list[str]]:
    """Records whether the code inside drew from torch's or NumPy's global random generator."""
    drew: list[str] = []
    torch_state, numpy_state = torch.random.get_rng_state(), np.random.get_state()
    try:
        yield drew
    finally:
        if not torch.equal(torch.random.get_rng_state(), torch_state):
            drew.append("torch")
        after = np.random.get_state()
        if after[1].tobytes() != numpy_state[1].tobytes() or after[2] != numpy_state[2]:
            drew.append("NumPy")
        torch.random.set_rng_state(torch_state)
        np.random.set_state(numpy_state)


@register(
    MOVED,
    hints=(
        "Start from one weight: the update moves it only if it is more than half the gap between the "
        "weight and its neighbour. How does that gap change as |w| grows?",
        "Inside one binade [2^e, 2^(e+1)) the gap is the same for every value, and it doubles from one "
        "binade to the next: find the binades where half the gap is smaller than the update.",
        "The update is stored in the same format as the weights: round lr to that format first. Then "
        "|w| is uniform on [0, bound]: the fraction is a length divided by the bound.",
    ),
)
def check_moved_fraction(moved_fraction: Any) -> None:
    """``moved_fraction(bound, lr, dtype)``: the fraction of weights uniform in [-bound, bound],
    stored in ``dtype``, that an update of +-lr (stored in ``dtype``) changes, predicted without sampling."""
    label = MOVED
    for case, bound, lr, dtype in MOVED_CASES:
        with _watch_global_rng() as drew:
            got = call(label, moved_fraction, bound, lr, dtype)
        if drew:
            fail(
                label,
                f"for {case}, your function drew random numbers (it used {' and '.join(drew)}'s global "
                "generator): it measured the fraction instead of predicting it.",
                "predict from the format alone: which weights have a gap small enough for the update? "
                "Measure separately, in the cell after the check.",
            )
        got_value = _number(label, got, case, "return the fraction as a float between 0 and 1.")
        want = _moved_fraction(bound, lr, dtype)
        if math.isclose(got_value, want, rel_tol=MOVED_RTOL, abs_tol=1e-9):
            continue
        _diagnose_moved(label, case, bound, lr, dtype, got_value, want)


def _diagnose_moved(
    label: str, case: str, bound: float, lr: float, dtype: torch.dtype, got: float, want: float
) -> None:
    measured = _simulated_moved_fraction(bound, lr, dtype)
    if math.isclose(measured, want, rel_tol=MOVED_RTOL, abs_tol=1e-9):
        said = f"for {case}, you predict {got:.4g}; a simulation of 2^20 such weights measures {measured:.4g}"
    else:  # too few of the simulated weights move: their count is noisier than the check's tolerance
        said = (
            f"for {case}, you predict {got:.4g} (a simulation of 2^20 such weights is too small a sample "
            f"to measure this case's fraction within the check's {MOVED_RTOL:.0%} tolerance)"
        )

    def near(value: float) -> bool:
        return math.isclose(got, value, rel_tol=MOVED_RTOL, abs_tol=1e-9)

    eps = torch.finfo(dtype).eps
    stored_lr = float(torch.tensor(lr, dtype=dtype))
    if stored_lr == 0 and got > 0:
        fail(
            label,
            f"{said}. The update never reaches the weights.",
            f"store lr = {lr:g} in {_NAMES[dtype]} first and look at what it becomes.",
        )
    if want < 1 and near(1 - want):
        fail(
            label,
            f"{said}: you gave the fraction the update leaves unchanged.",
            "the question asks how many move.",
        )
    if near(100 * want):
        fail(label, f"{said}: your answer looks like a percentage.", "return a fraction between 0 and 1.")
    if got > 1:
        fail(
            label,
            f"{said}: your prediction is more than 1, which no fraction can be.",
            "when the update moves every weight up to the bound, the fraction is at most 1.",
        )
    if near(min(1.0, 2 * lr / (eps * bound))) or near(min(1.0, 2 * stored_lr / (eps * bound))):
        fail(
            label,
            f"{said}: as if the gap between neighbours grew smoothly with |w|, as eps * |w|.",
            "the gap is a power of two that stays constant across a whole binade: "
            "a weight just above a power of two has the same gap as one just below the next.",
        )
    if near(2 * want) or near(want / 2):
        fail(
            label,
            f"{said}: your prediction is {'twice' if near(2 * want) else 'half'} the right fraction.",
            "check the threshold by one number: does an update of exactly the gap survive? "
            "And of a quarter of it? Check also how many mantissa bits the format stores.",
        )
    fail(
        label,
        f"{said}.",
        "find, for this format, the largest |w| whose half-gap is still below the stored update.",
    )


# --- promote-interval: how long a low-precision accumulator may run -----------------------------

PROMOTE = f"{SLUG}-promote-interval"


def _chunked_sums(products: torch.Tensor, acc_dtype: torch.dtype, chunk: int) -> torch.Tensor:
    """Each row's sum, accumulated ``chunk`` products at a time in ``acc_dtype`` (every addition rounded
    to it), the partial sums added into an fp32 total."""
    rows, n = products.shape
    terms = products.double().reshape(rows, n // chunk, chunk)
    acc = torch.zeros(rows, n // chunk, dtype=torch.float64)
    for i in range(chunk):
        acc = (acc + terms[..., i]).to(acc_dtype).double()
    return acc.float().sum(dim=1).double()


def _worst_errors(
    products: torch.Tensor, acc_dtype: torch.dtype, sums: Callable[..., torch.Tensor] = _chunked_sums
) -> dict[int, float]:
    """The largest relative error over the rows, for every power-of-two chunk size."""
    exact = products.double().sum(dim=1)
    n = products.shape[1]
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an fp16 accumulator may overflow to inf
        for k in range(int(math.log2(n)) + 1):
            out[2**k] = float(((sums(products, acc_dtype, 2**k) - exact).abs() / exact).max())
    return out


def _largest_within(errors: dict[int, float], budget: float) -> int:
    fits = [c for c, e in errors.items() if e <= budget]
    return max(fits) if fits else 0


def _promote_products(seed: int, scale: float = 1.0, rows: int = 16, n: int = 1024) -> torch.Tensor:
    """Positive exact products of bf16 vectors, as a tensor core forms them: a sum of squares, a variance."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(rows, n, generator=gen).bfloat16()
    b = ((torch.rand(rows, n, generator=gen) + 0.5) * scale).bfloat16()
    return a.float() * b.float()


@functools.lru_cache(maxsize=1)
def promote_cases() -> tuple[tuple[str, torch.Tensor, torch.dtype, float], ...]:
    """(case, products, accumulator dtype, budget). Each budget lies far from the errors at the answer and
    at twice the answer, so that every faithful emulation of the accumulator finds the same chunk."""
    return (
        (
            "16 dot products of length 1024, a bf16 accumulator, a 5% budget",
            _promote_products(1),
            torch.bfloat16,
            5e-2,
        ),
        (
            "16 dot products of length 1024, a bf16 accumulator, a 0.3% budget",
            _promote_products(2),
            torch.bfloat16,
            3e-3,
        ),
        (
            "16 dot products of length 1024, an fp16 accumulator, a 0.5% budget",
            _promote_products(1),
            torch.float16,
            5e-3,
        ),
        (
            "16 dot products of length 1024 with products up to 288, an fp16 accumulator, a 1% budget",
            _promote_products(1, scale=192.0),
            torch.float16,
            1e-2,
        ),
        (
            "16 dot products of length 1024, an fp32 accumulator, a 0.01% budget",
            _promote_products(3),
            torch.float32,
            1e-4,
        ),
    )


@functools.cache
def _case_errors(index: int) -> dict[int, float]:
    """The reference's worst error for every chunk size, for case ``index`` of :func:`promote_cases`."""
    _, products, acc_dtype, _ = promote_cases()[index]
    return _worst_errors(products, acc_dtype)


def _rounded_once(products: torch.Tensor, acc_dtype: torch.dtype, chunk: int) -> torch.Tensor:
    """Chunks summed exactly and rounded once to acc_dtype: what torch.sum of a low-precision tensor does."""
    rows, n = products.shape
    partial = products.double().reshape(rows, n // chunk, chunk).sum(-1).to(acc_dtype).double()
    return partial.float().sum(dim=1).double()


def _outer_low(products: torch.Tensor, acc_dtype: torch.dtype, chunk: int) -> torch.Tensor:
    """The partial sums added in acc_dtype as well: no fp32 anywhere."""
    rows, n = products.shape
    terms = products.double().reshape(rows, n // chunk, chunk)
    acc = torch.zeros(rows, n // chunk, dtype=torch.float64)
    for i in range(chunk):
        acc = (acc + terms[..., i]).to(acc_dtype).double()
    total = torch.zeros(rows, dtype=torch.float64)
    for j in range(n // chunk):
        total = (total + acc[:, j]).to(acc_dtype).double()
    return total


@register(
    PROMOTE,
    hints=(
        "Look back at the chapter's table of error against length: the error of a low-precision "
        "accumulator depends on how many products it has added since it last started from zero.",
        "Emulate the hardware: within a chunk, every addition rounds the running sum to the accumulator's "
        "format; torch's own sum of a bf16 tensor does not do that (it adds in fp32 and rounds once).",
        "For every power-of-two chunk size, compute each row's result, its relative error against the "
        "exact (float64) sum, and keep the worst row; then pick the largest chunk within the budget.",
    ),
)
def check_promote_interval(promote_interval: Any) -> None:
    """``promote_interval(products, acc_dtype, budget)``: the largest power-of-two chunk such that
    accumulating each chunk in ``acc_dtype`` and the chunks' sums in fp32 keeps every row within budget."""
    label = PROMOTE
    first = "for every power-of-two chunk size, emulate the accumulator and measure the worst row's error."
    for index, (case, products, acc_dtype, budget) in enumerate(promote_cases()):
        got = call(label, promote_interval, products.clone(), acc_dtype, budget)
        value = _number(label, got, case, "return the chunk size, one integer.")
        errors = _case_errors(index)
        want = _largest_within(errors, budget)
        if value == want:
            continue
        n = products.shape[1]
        chunk = int(value) if math.isfinite(value) and value == int(value) else None
        variants = {
            "each chunk was summed exactly and rounded once, as torch.sum of a low-precision tensor does: that "
            "is not an accumulator that rounds at every addition": lambda: _largest_within(
                _worst_errors(products, acc_dtype, _rounded_once), budget
            ),
            "the chunks' sums were added in the low-precision format too, not in fp32": lambda: (
                _largest_within(_worst_errors(products, acc_dtype, _outer_low), budget)
            ),
        }
        for why, answer in variants.items():
            if chunk is not None and chunk == answer() != want:
                fail(label, f"for {case}, your chunk of {chunk} is what you get when {why}.", first)
        if chunk == 0:
            fail(
                label,
                f"for {case}, you found no chunk within the budget, but chunks of 1 give a worst relative "
                f"error of {errors[1]:.2e}, within {budget:g}.",
                "the budget bounds the relative error: the error of a row divided by its exact sum.",
            )
        if chunk not in errors:
            fail(
                label,
                f"for {case}, you returned {got!r}, which is not a power of two between 1 and {n}.",
                "return the chunk size itself: a power of two that divides the length.",
            )
        if want and chunk == n // want != want:
            fail(
                label,
                f"for {case}, you returned {chunk}: the number of chunks, not their length.",
                "return how many products each chunk accumulates.",
            )
        if errors[chunk] > budget:
            fail(
                label,
                f"for {case}, chunks of {chunk} give a worst relative error of {errors[chunk]:.2e}, over the "
                f"budget of {budget:g}.",
                "the chunk you return must itself meet the budget, on every row (not only the first, nor on "
                "average), against the exact sum.",
            )
        fail(
            label,
            f"for {case}, chunks of {chunk} meet the budget (worst relative error {errors[chunk]:.2e}), but "
            f"it is not the largest chunk that does.",
            "try every power of two up to the full length, and compare relative, not absolute, errors.",
        )


# --- largest-model: the memory bill of each recipe -------------------------------------------------

LARGEST = f"{SLUG}-largest-model"
RECIPES = ("fp32", "amp", "pure_bf16")
CALCULATOR = ("estimate", "step_peak", "bytes_per_parameter", "table")

LARGEST_CASES: tuple[tuple[str, float, str, int], ...] = (
    ("an 80 GB GPU, AdamW, activations negligible", 80.0, "adamw", 0),
    ("a 24 GB GPU, plain SGD, 4e9 activation elements", 24.0, "sgd", 4_000_000_000),
    ("a 16 GB GPU, AdamW, 5e9 activation elements", 16.0, "adamw", 5_000_000_000),
    ("a 40 GB GPU, SGD with momentum, 1e9 activation elements", 40.0, "sgd_momentum", 1_000_000_000),
)


def _calculator_moments(recipe: str, n: int, optimizer: str, activations: int) -> tuple[int, int, int]:
    """The chapter's calculator for a step of ``n`` parameters (all in linear layers): what it holds all
    along (weights and optimizer state), and what it adds at its two fullest moments."""
    est = memory.estimate(recipe, n, activation_elements=activations, optimizer=optimizer)
    peak = memory.step_peak(est, optimizer)
    return int(est["weights"] + est["optimizer state"]), peak["optimizer step"], peak["end of forward"]


def _calculator_peak(recipe: str, n: int, optimizer: str, activations: int) -> int:
    base, at_step, at_forward = _calculator_moments(recipe, n, optimizer, activations)
    return base + max(at_step, at_forward)


@functools.cache
def _largest_by_calculator(budget: int, recipe: str, optimizer: str, activations: int) -> int:
    """The largest parameter count whose step fits in ``budget`` bytes, by the calculator.

    Each moment's bytes grow linearly with the parameter count: two evaluations give each line, and
    the answer is where the first of them crosses the budget (confirmed by evaluating it there).
    """
    zero = _calculator_moments(recipe, 0, optimizer, activations)
    one = _calculator_moments(recipe, 1, optimizer, activations)
    limits = []
    for moment in (1, 2):
        per = (one[0] - zero[0]) + (one[moment] - zero[moment])
        limits.append((budget - zero[0] - zero[moment]) // per)
    if min(limits) < 0:
        return 0  # the activations alone do not fit: no model does
    n = min(limits)
    if _calculator_peak(recipe, n, optimizer, activations) > budget or (
        _calculator_peak(recipe, n + 1, optimizer, activations) <= budget
    ):
        raise AssertionError(f"the calculator is not linear in the parameter count for {recipe!r}")
    return n


def _largest_closed_form(
    budget: float,
    recipe: str,
    optimizer: str,
    activations: int,
    *,
    everything_at_once: bool = False,
    no_temporaries: bool = False,
    no_copies: bool = False,
    fp32_activations: bool = False,
    amp_like_pure: bool = False,
    only_optimizer_step: bool = False,
    only_forward: bool = False,
) -> int:
    """The same largest count from bytes per parameter, with one realistic mistake switched on."""
    param = 2 if recipe == "pure_bf16" or (recipe == "amp" and amp_like_pure) else 4
    states = memory.OPTIMIZER_STATES[optimizer]
    base = param + states * param  # weights and optimizer state: there for the whole step
    temporaries = param if optimizer.startswith("adam") and not no_temporaries else 0
    at_step = param + temporaries  # gradients and the optimizer's temporaries
    copies = 2 if recipe == "amp" and not no_copies else 0
    act = activations * (4 if recipe == "fp32" or fp32_activations else 2)
    if everything_at_once:
        return max(0, math.floor((budget - act) / (base + param + copies)))
    step_limit = math.floor(budget / (base + at_step))
    forward_limit = math.floor((budget - act) / (base + copies))
    if only_optimizer_step:
        return max(0, step_limit)
    if only_forward:
        return max(0, forward_limit)
    return max(0, min(step_limit, forward_limit))


_LARGEST_MISTAKES: dict[str, tuple[dict[str, bool], str]] = {
    "counting the gradients and the activations as if both were held at once": (
        {"everything_at_once": True},
        "backward frees the saved activations as it creates the gradients: when does a step hold the most?",
    ),
    "leaving out AdamW's temporaries in the optimizer step": (
        {"no_temporaries": True},
        "read again what AdamW's foreach implementation allocates while it updates.",
    ),
    "leaving out the 16-bit copies autocast makes of the matmul weights": (
        {"no_copies": True},
        "autocast casts every matmul weight for the forward pass and keeps the cast until the step ends.",
    ),
    "counting the saved activations at 4 bytes each, as in fp32": (
        {"fp32_activations": True},
        "the ops that run in 16 bits save 16-bit activations: the matmuls' outputs, most of what backward needs.",
    ),
    "giving AMP 16-bit weights, gradients and optimizer state, as in pure bf16": (
        {"amp_like_pure": True},
        "under AMP the parameters stay fp32, and the gradients and optimizer state follow the parameters.",
    ),
    "looking only at the optimizer step, not at the end of the forward pass": (
        {"only_optimizer_step": True},
        "the activations are all saved at the end of the forward pass: that moment can be the peak.",
    ),
    "looking only at the end of the forward pass, not at the optimizer step": (
        {"only_forward": True},
        "during the optimizer step every gradient exists, plus the optimizer's temporaries.",
    ),
}


@contextlib.contextmanager
def _calculator_off() -> Iterator[list[str]]:
    """Makes the chapter's calculator raise while the learner's function runs, and records the calls."""
    with shortcuts.watch(
        [(memory, name, f"mpcourse.memory.{name}") for name in CALCULATOR], refuse=True
    ) as used:
        yield used


@register(
    LARGEST,
    hints=(
        "List what one training step keeps for each parameter under each recipe, in bytes, and what it "
        "keeps per saved activation element. The chapter's tables of the memory section have the figures.",
        "Not everything exists at once: the weights and the optimizer state are there all along; the "
        "step peaks either at the end of the forward pass or during the optimizer step.",
        "Write the peak of each moment as (bytes per parameter) x n + (activation bytes), and find the "
        "largest whole n for which both moments fit in the budget (1 GB is 10^9 bytes).",
    ),
)
def check_largest_model(largest_model: Any) -> None:
    """``largest_model(budget_gb, optimizer, activation_elements)`` -> ``{"fp32": n, "amp": n, "pure_bf16": n}``."""
    label = LARGEST
    first = "count, for each recipe, what a step holds at each of its two fullest moments."
    answers: dict[tuple[int, str], float] = {}
    for index, (case, budget_gb, optimizer, activations) in enumerate(LARGEST_CASES):
        with _calculator_off() as used:
            try:
                got = call(label, largest_model, budget_gb, optimizer, activations)
            except ExerciseFailed:
                if not used:
                    raise
                got = None
        if used:
            fail(
                label,
                f"for {case}, your function called {used[0]}: the exercise asks you to count "
                "the bytes yourself, and the check compares your count with that calculator.",
                "write the bytes of each component of a step for each recipe, without the calculator.",
            )
        if not isinstance(got, dict) or set(got) != set(RECIPES):
            keys = sorted(got) if isinstance(got, dict) else None
            fail(
                label,
                f"for {case}, you returned {type(got).__name__}"
                f"{f' with keys {keys}' if keys is not None else ''}; expected a dict with the keys "
                f"{', '.join(repr(r) for r in RECIPES)}.",
                "return one parameter count per recipe.",
            )
        for recipe in RECIPES:
            answers[index, recipe] = _number(
                label, got[recipe], f"{case}, recipe {recipe!r}", "give each recipe a parameter count."
            )

    def explains(flags: dict[str, bool]) -> bool:
        """Whether a mistake gives every answer that is wrong (on every case, for every recipe)."""
        for (k, recipe), value in answers.items():
            _, gb, optimizer, activations = LARGEST_CASES[k]
            want = _largest_by_calculator(int(gb * 1e9), recipe, optimizer, activations)
            if value != want and value != _largest_closed_form(
                gb * 1e9, recipe, optimizer, activations, **flags
            ):
                return False
        return True

    for (index, recipe), value in answers.items():
        case, budget_gb, optimizer, activations = LARGEST_CASES[index]
        where = f"{case}, recipe {recipe!r}"
        budget = int(budget_gb * 1e9)
        want = _largest_by_calculator(budget, recipe, optimizer, activations)
        if value == want:
            continue
        if not math.isfinite(value) or value != int(value):
            fail(label, f"for {where}, you returned {value!r}, not a whole number of parameters.", first)
        n = int(value)
        if n < 0:
            fail(
                label,
                f"for {where}, you returned a negative count, {n:,}.",
                "when not even the activations fit, no model fits: the count is zero.",
            )
        matching = [
            (why, flags, why_hint)
            for why, (flags, why_hint) in _LARGEST_MISTAKES.items()
            if n == _largest_closed_form(budget, recipe, optimizer, activations, **flags)
        ]
        # On one case several mistakes can give the same count; name the one the other cases confirm.
        matching.sort(key=lambda m: not explains(m[1]))
        for why, _, why_hint in matching[:1]:
            fail(label, f"for {where}, your count {n:,} is what you get by {why}.", why_hint)
        if n == _largest_closed_form(budget_gb * 2**30, recipe, optimizer, activations):
            fail(
                label,
                f"for {where}, your count {n:,} reads the budget in GiB (2^30 bytes).",
                "GPU makers' gigabytes are 10^9 bytes.",
            )
        peak = _calculator_peak(recipe, n, optimizer, activations)
        if peak > budget:
            fail(
                label,
                f"for {where}, a step of {n:,} parameters holds {peak:,} bytes at its peak: more than the "
                f"budget of {budget:,}.",
                first if n > want + 1 else "round down: a fraction of a parameter does not fit.",
            )
        fail(
            label,
            f"for {where}, {n:,} parameters fit ({peak:,} bytes at the peak), but more would still fit "
            f"in {budget:,} bytes.",
            first,
        )


# --- train-step: the course's one AMP training step ----------------------------------------------

STEP = f"{SLUG}-train-step"

#: The hardware the check describes (from the course's device presets); every step runs on this CPU.
STEP_DEVICES: tuple[tuple[str, str, torch.dtype | None], ...] = (
    ("an A100 (fp16 and bf16 native)", "a100", torch.bfloat16),
    ("a T4 (fp16 native, bf16 emulated)", "t4", torch.float16),
    ("a CPU without 16-bit arithmetic (fp16 and bf16 emulated)", "cpu", None),
)
STEP_INIT_SCALE = 2.0**19  # large enough that fp16 overflows on the first step and again later
STEP_GROWTH_INTERVAL = 2
STEP_COUNT = 6


class _SpyScaler:
    """Wraps a GradScaler and records the order of the calls made on it."""

    def __init__(self) -> None:
        self.inner = torch.amp.GradScaler(
            "cpu", init_scale=STEP_INIT_SCALE, growth_interval=STEP_GROWTH_INTERVAL
        )
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if not callable(method):
            return method

        def spy(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return method(*args, **kwargs)

        return spy


def _step_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def _step_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(8, 16, generator=gen), torch.randint(0, 4, (8,), generator=gen))
        for _ in range(STEP_COUNT)
    ]


class _Probe:
    """Hooks on the learner's first layer: the dtype of its output, and, when backward reaches it,
    whether autocast was on and whether the layer's gradient still held the previous step's."""

    def __init__(self, model: nn.Sequential) -> None:
        self.out_dtypes: list[torch.dtype] = []
        self.backward_under_autocast = False
        self.stale_gradient = False
        layer = model[0]

        def on_grad(grad: torch.Tensor) -> torch.Tensor:
            if torch.is_autocast_enabled("cpu"):
                self.backward_under_autocast = True
            old = layer.weight.grad
            if old is not None and bool((old != 0).any()):
                self.stale_gradient = True
            return grad

        def on_forward(module: nn.Module, args: Any, out: torch.Tensor) -> None:
            self.out_dtypes.append(out.dtype)
            if out.requires_grad:
                out.register_hook(on_grad)

        layer.register_forward_hook(on_forward)


_SCALER_ORDERS = (["scale", "step", "update"], ["scale", "unscale_", "step", "update"])


def _scaled_loss(got: Any, want: float) -> float | None:
    """The value the learner returned, if it is the loss ``want`` times a power of two (a scaled loss)."""
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        value = float(got.detach())
    elif isinstance(got, numbers.Real) and not isinstance(got, bool):
        value = float(got)
    else:
        return None
    if want > 0 and any(math.isclose(value, want * 2.0**k, rel_tol=1e-3) for k in range(8, 40)):
        return value
    return None


def _loss_value(label: str, got: Any, case: str) -> float:
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        if got.dtype != torch.float32:
            fail(
                label,
                f"for {case}, the loss you returned is {got.dtype}: the cross-entropy ran in low precision.",
                "the loss needs fp32's precision: where does autocast run cross-entropy, and where did yours run?",
            )
        return float(got.detach())
    if isinstance(got, numbers.Real) and not isinstance(got, bool):
        return float(got)
    fail(
        label,
        f"for {case}, you returned {type(got).__name__}; return the loss of the step.",
        "return the loss.",
    )
    raise AssertionError  # unreachable: fail raises


_CPU_AUTOCAST_FP32 = "In CPU autocast, but the target dtype is not supported"


_ENGINE_STEP = ("train_step", str(Path(__file__).resolve().parent.parent / "train" / "step.py"))


@contextlib.contextmanager
def _watch_engine_step() -> Iterator[list[str]]:
    """Records whether the course engine's ``train_step`` runs inside the block (however it was imported).

    Watches Python calls with a profile hook, unless another profiler is active (then it records nothing).
    """
    seen: list[str] = []
    if sys.getprofile() is not None:
        yield seen
        return

    def profiler(frame: Any, event: str, arg: Any) -> None:
        code = frame.f_code
        if event == "call" and code.co_name == _ENGINE_STEP[0] and code.co_filename == _ENGINE_STEP[1]:
            seen.append("mpcourse.train.train_step")

    sys.setprofile(profiler)
    try:
        yield seen
    finally:
        sys.setprofile(None)


@register(
    STEP,
    hints=(
        "First choose: which 16-bit format does the chapter recommend on each kind of hardware, and which of "
        "them needs a loss scaler? Then write the step the recipe section shows, for that choice.",
        "torch.autocast picks a default dtype when you give none, and that default depends on the device "
        "type, not on the hardware description: pass the dtype you chose.",
        "Only the forward pass and the loss belong under autocast. With a scaler, backward starts from the "
        "scaled loss, and the optimizer steps through the scaler, which then updates its scale.",
    ),
)
def check_train_step(amp_train_step: Any) -> None:
    """``amp_train_step(model, optimizer, scaler, x, y, device_type, support)``: one training step with a
    cross-entropy loss, in the format the hardware ``support`` calls for; returns the loss."""
    label = STEP
    first = (
        "compare your step with the recipe section's five lines, for the format you chose: what runs under "
        "autocast, what backward starts from, and what steps the optimizer."
    )
    for where, preset, dtype in STEP_DEVICES:
        support = device.precision_support(device.capabilities(preset))
        model, ref_model = _step_model(), _step_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.1)
        spy = _SpyScaler()
        ref_scaler = torch.amp.GradScaler(
            "cpu", init_scale=STEP_INIT_SCALE, growth_interval=STEP_GROWTH_INTERVAL
        )
        probe = _Probe(model)
        for step, (x, y) in enumerate(_step_batches()):
            case = f"{where}, step {step + 1}"
            spy.calls.clear()
            before = [p.detach().clone() for p in model.parameters()]
            try:
                with warnings.catch_warnings(), _watch_engine_step() as engine_used:
                    warnings.filterwarnings("ignore", message=_CPU_AUTOCAST_FP32)  # autocast(dtype=fp32): off
                    got = call(label, amp_train_step, model, opt, spy, x.clone(), y.clone(), "cpu", support)
            except ExerciseFailed as exc:
                if "No inf checks were recorded" in str(exc):
                    fail(
                        label,
                        f"for {case}, the scaler's update complained that no inf checks were recorded: the "
                        "optimizer was stepped without the scaler.",
                        "only the scaler's own step checks the gradients for inf/NaN and skips the update "
                        "when they overflowed.",
                    )
                raise
            if engine_used:
                fail(
                    label,
                    f"for {case}, your function called the course engine's train_step: this exercise asks "
                    "you to write the step yourself.",
                    "write the step from the recipe section's lines; the engine's code is what you compare with.",
                )
            ref_before = [q.detach().clone() for q in ref_model.parameters()]
            scale_before = ref_scaler.get_scale()
            # The reference is the course's own step (mpcourse.train.step), with a scaler for fp16 only.
            want = train_step(
                ref_model,
                x,
                y,
                F.cross_entropy,
                ref_opt,
                autocast_dtype=dtype,
                scaler=ref_scaler if dtype == torch.float16 else None,
            ).loss.item()
            ran = probe.out_dtypes[-1] if probe.out_dtypes else None
            if ran != (dtype or torch.float32):
                _wrong_format(label, case, ran, dtype, support)
            for p in model.parameters():
                if p.dtype != torch.float32:
                    fail(
                        label,
                        f"for {case}, the parameters are now {p.dtype}: you converted the model.",
                        "the recipe keeps fp32 master weights; only autocast's copies are 16-bit.",
                    )
            if probe.backward_under_autocast:
                fail(
                    label,
                    f"for {case}, backward ran inside the autocast block; the exercise asks for it after the "
                    "block, as PyTorch's AMP documentation recommends: autocast already chose each backward "
                    "op's dtype when the op ran forward, so backward has nothing to gain inside the block, "
                    "and outside it autocast's casting cannot touch the backward graph.",
                    "close the autocast block once the loss is computed; what follows runs after it.",
                )
            if probe.stale_gradient:
                fail(
                    label,
                    f"for {case}, the first layer's gradient still held the previous step's values when "
                    "backward reached it: the gradients accumulated across steps.",
                    "clear the previous step's gradients before this step's backward.",
                )
            order = [c for c in spy.calls if c in ("scale", "unscale_", "step", "update")]
            scaled = _scaled_loss(got, want)
            if dtype == torch.float16 and "scale" not in order:
                fail(
                    label,
                    f"for {case}, where the step runs in fp16, the scaler you were given never scaled the loss.",
                    "without loss scaling, small fp16 gradients become zero; and the scaler must be the one "
                    "passed in, which keeps its scale from one step to the next.",
                )
            if order and order not in _SCALER_ORDERS:
                if scaled is not None and order[-1] == "scale" and order[:-1] in _SCALER_ORDERS:
                    fail(
                        label,
                        f"for {case}, you returned the scaled loss ({scaled:.6g}, a power of two times the "
                        "loss): the scaler's last call, after its update, scaled the loss you returned.",
                        "return the loss itself, unscaled.",
                    )
                fail(
                    label,
                    f"for {case}, the scaler was called in the order {order}.",
                    "the scaler scales the loss before backward, steps the optimizer after it, and updates "
                    "its scale last; unscaling, if you need it, comes just before its step.",
                )
            value = _loss_value(label, got, case)
            _compare_weights(label, case, model, ref_model, before, ref_before, dtype, first)
            if dtype == torch.float16 and spy.inner.get_scale() != ref_scaler.get_scale():
                if ref_scaler.get_scale() < scale_before and spy.inner.get_scale() >= scale_before:
                    fail(
                        label,
                        f"for {case}, a correct step's scaled gradients overflow at a scale of {scale_before:g}, "
                        "and the step is skipped; yours did not overflow.",
                        "the scaler can only see an overflow if backward starts from the scaled loss.",
                    )
                fail(
                    label,
                    f"for {case}, the loss scale is {spy.inner.get_scale():g}, expected {ref_scaler.get_scale():g}.",
                    "use the scaler you are given, every step: a new one each step forgets the scale it learnt.",
                )
            if math.isfinite(want) and not math.isclose(value, want, rel_tol=1e-5):
                if scaled is not None:
                    fail(
                        label,
                        f"for {case}, you returned the scaled loss ({value:.6g}, a power of two times the loss).",
                        "return the loss itself, unscaled.",
                    )
                fail(label, f"for {case}, the returned loss is {value:.6g}, expected {want:.6g}.", first)


def _wrong_format(
    label: str, case: str, ran: torch.dtype | None, dtype: torch.dtype | None, support: dict[str, Any]
) -> None:
    wanted = "fp32 (no autocast)" if dtype is None else str(dtype)
    case = f"{case} (support: fp16 {support['fp16'].status}, bf16 {support['bf16'].status})"
    if ran is None:
        fail(label, f"for {case}, the model's forward pass never ran.", "call the model on x.")
    if dtype is None:
        fail(
            label,
            f"for {case}, the first layer ran in {ran}, expected {wanted}.",
            "where neither format is native, look at what the chapter measured for bf16 autocast on such a "
            "CPU. And autocast given dtype=None is still on, in its default dtype.",
        )
    if ran == torch.float32:
        fail(
            label,
            f"for {case}, the first layer ran in fp32: the forward pass did not run under autocast.",
            "run the forward pass and the loss under autocast, with the format you chose.",
        )
    if dtype == torch.float16 and ran == torch.bfloat16:
        fail(
            label,
            f"for {case}, the first layer ran in torch.bfloat16, which this hardware only emulates; expected {wanted}.",
            "read the description again: which formats does this hardware compute natively? If you gave "
            "autocast no dtype: its default depends on the device type, not on the hardware.",
        )
    fail(
        label,
        f"for {case}, the first layer ran in {ran}, expected {wanted}.",
        "where both are native, compare the two formats' peaks (the cell before the exercise) and what "
        "each needs besides: its range, a loss scaler.",
    )


def _compare_weights(
    label: str,
    case: str,
    model: nn.Module,
    ref_model: nn.Module,
    before: list[torch.Tensor],
    ref_before: list[torch.Tensor],
    dtype: torch.dtype | None,
    first: str,
) -> None:
    params = [p.detach() for p in model.parameters()]
    ref_params = [q.detach() for q in ref_model.parameters()]
    if not all(torch.isfinite(p).all() for p in params):
        fail(
            label,
            f"for {case}, the weights became inf or NaN: the optimizer stepped on gradients that overflowed.",
            "with a scaler, the optimizer steps only through the scaler, which skips steps whose gradients "
            "hold inf or NaN.",
        )
    if all(torch.allclose(p, q, rtol=1e-5, atol=1e-6) for p, q in zip(params, ref_params)):
        return
    moved = math.sqrt(sum(float(((p - b) ** 2).sum()) for p, b in zip(params, before)))
    should = math.sqrt(sum(float(((q - b) ** 2).sum()) for q, b in zip(ref_params, ref_before)))
    if should == 0 and moved > 0:
        fail(
            label,
            f"for {case}, the gradients overflowed in fp16, so this step had to be skipped, but the weights moved.",
            "only the scaler's step knows whether the gradients overflowed.",
        )
    if should > 0 and moved < 1e-3 * should:
        fail(
            label,
            f"for {case}, the weights moved {moved / should:.1e} times as far as a correct step moves them.",
            "if backward starts from the unscaled loss, the scaler's step still divides the gradients by "
            "the scale. Check also that nothing clears the gradients between backward and the step.",
        )
    if should > 0 and moved > 1e3 * should:
        fail(
            label,
            f"for {case}, the weights moved {moved / should:.1e} times as far as a correct step moves them.",
            "gradients of a scaled loss must be divided by the scale before the update: the scaler's "
            "step does that.",
        )
    if should > 0 and math.isclose(moved, 2 * should, rel_tol=1e-3):
        fail(
            label,
            f"for {case}, the weights moved twice as far as a correct step moves them: the optimizer stepped twice.",
            "the scaler's step already calls the optimizer's step.",
        )
    ratio = max(float((p - q).abs().max() / (q.abs().max() + 1e-12)) for p, q in zip(params, ref_params))
    fail(
        label,
        f"for {case}, the weights differ from a correct step (largest relative difference {ratio:.2g}).",
        first,
    )
