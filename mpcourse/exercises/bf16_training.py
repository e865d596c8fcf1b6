"""Checks for the training exercises of chapter ``bf16``: Kahan-compensated updates, and the learning rate
below which pure bf16's first AdamW step leaves a tensor's weights where they are.

Registered when :mod:`mpcourse.exercises.bf16` loads. The references are float64 sums of the updates for
Kahan, and for the learning-rate floor the bf16 neighbours of each weight read from its bit pattern, with
the share of weights that move measured by rounding ``w - lr * sign(g)`` exactly (:mod:`mpcourse.formats`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .. import formats
from . import call, fail, is_tensor_pair, register

BF16 = formats.BF16


# ---- bf16-kahan -----------------------------------------------------------------------------------


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
    "bf16-kahan",
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
    label = "bf16-kahan"
    from .bf16 import watched_calls  # bf16 imports this module at its end; by now it is complete

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


# ---- bf16-lr-floor --------------------------------------------------------------------------------


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
    "bf16-lr-floor",
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
    label = "bf16-lr-floor"
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
