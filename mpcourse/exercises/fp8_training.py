"""Checks for the exercises of chapter ``fp8_training``.

References are independent of the learner's code: :class:`mpcourse.fp8.DelayedScaler`
(Transformer Engine's update rule, tested in ``tests/test_fp8_recipes.py``), :func:`mpcourse.fp8.fake_quantize`,
:func:`mpcourse.fp8.quantize` and :func:`mpcourse.fp8.fp8_mm` (tested against ``torch._scaled_mm`` and
the recipes' rules in ``tests/test_fp8_*.py``), and, for the choice of layers, the rule the chapter
states (every linear layer but the first and the last, with both dimensions divisible by 16), applied
here directly to the model's modules. Each check also computes the usual misreadings of its task and
names the one it sees.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .. import fp8
from ..fp8 import linear as fp8_linear
from . import call, fail, plural, register, shortcuts
from .fp8 import E4M3_MAX, _call_by_hand

# ---- fp8_training-delayed ---------------------------------------------------------------------------

DELAYED_HINTS = (
    "Compare your list, step by step, with the 'decode scale used' column of the trace above (history 4, "
    "margin 0): at which steps does the spike of step 3 change the scale, and from which step on has it "
    "left it?",
    "Transformer Engine's scale is the *encode* factor (E4M3's largest value over the amax, reduced by "
    "the margin); the exercise asks for the decode scale, its reciprocal. The margin counts powers of two "
    "of headroom.",
    "Keep a running scale that starts at 1. Before step t is cast, look at the amaxes of the history_len "
    "steps before it (fewer at the start of a run); change the scale only when their maximum is positive "
    "and finite.",
)


def _delayed_reference(amaxes: list[float], history_len: int, margin: int) -> list[float]:
    """Decode scales used at each step, from mpcourse.fp8.DelayedScaler (Transformer Engine's kernel)."""
    scaler = fp8.DelayedScaler("e4m3", amax_history_len=history_len, margin=margin)
    used = []
    for amax in amaxes:
        used.append(float(scaler.scale_inv))
        scaler.record(amax)
        scaler.update()
    return used


def _simulate(
    amaxes: list[float],
    window_of: Callable[[int], list[float]],
    decode_of: Callable[[float], float],
    update_if: Callable[[float, list[float]], bool] = lambda amax, window: 0 < amax < math.inf,
    *,
    otherwise: float | None = None,
) -> list[float]:
    """Decode scales used at each step when step t's scale comes from the amaxes ``window_of(t)``:
    ``decode_of(max)`` when ``update_if(max, window)``, else the previous scale (or ``otherwise``)."""
    used, scale = [], 1.0
    for t in range(len(amaxes)):
        window = window_of(t)
        amax = max(window) if window else 0.0
        if update_if(amax, window):
            with contextlib.suppress(ZeroDivisionError, OverflowError):
                scale = decode_of(amax)
        elif otherwise is not None:
            scale = otherwise
        used.append(scale)
    return used


def _delayed_variants(amaxes: list[float], history_len: int, margin: int) -> dict[str, list[float]]:
    """Scales from the usual misreadings of delayed scaling, to name the one we see."""
    n = history_len

    def previous(t: int) -> list[float]:
        return amaxes[max(0, t - n) : t]

    def decode(amax: float) -> float:
        return amax * 2.0**margin / E4M3_MAX

    def finite_only(t: int) -> list[float]:
        return [a for a in previous(t) if math.isfinite(a)]

    return {
        "the current step's amax is included (that is current scaling, not delayed)": _simulate(
            amaxes, lambda t: amaxes[max(0, t - n + 1) : t + 1], decode
        ),
        "step 0 is cast with a scale from its own amax; the first step has no history yet": _simulate(
            amaxes, lambda t: previous(t) if t else amaxes[:1], decode
        ),
        "the window is one step too long": _simulate(amaxes, lambda t: amaxes[max(0, t - n - 1) : t], decode),
        "the window is one step too short": _simulate(
            amaxes, lambda t: amaxes[max(0, t - n + 1) : t], decode
        ),
        "the newest amax only ('most_recent') instead of the max over the window": _simulate(
            amaxes, lambda t: amaxes[max(0, t - 1) : t], decode
        ),
        "these are encode scales (Transformer Engine's 'scale', multiplied in before the cast); the "
        "exercise asks for the decode scale, their reciprocal": _simulate(
            amaxes, previous, lambda a: E4M3_MAX / (a * 2.0**margin)
        ),
        "the margin divides the decode scale instead of multiplying it (a margin is headroom: the "
        "scaled amax must land *below* 448)": _simulate(
            amaxes, previous, lambda a: a * 2.0**-margin / E4M3_MAX
        ),
        "the margin multiplies the scale by margin, not by 2**margin (it counts powers of two)": _simulate(
            amaxes, previous, lambda a: a * margin / E4M3_MAX
        ),
        "the scale maps the amax to E5M2's largest value (57344), not E4M3's (448)": _simulate(
            amaxes, previous, lambda a: a * 2.0**margin / 57344.0
        ),
        "the scale resets to 1 when the window has no usable amax, instead of keeping the last one": _simulate(
            amaxes, previous, decode, otherwise=1.0
        ),
        "the scale is changed when the window's maximum is 0 or infinite (it becomes 0 or inf); Transformer "
        "Engine keeps the previous scale then": _simulate(amaxes, previous, decode, lambda a, w: bool(w)),
        "an infinite amax is left out of the window; Transformer Engine takes the max of the whole window, "
        "which is then infinite, and keeps the previous scale": _simulate(amaxes, finite_only, decode),
    }


def _delayed_cases() -> list[tuple[str, list[float], int, int]]:
    return [
        ("a growing amax, history 4", [1.0, 2.0, 4.0, 8.0, 16.0, 32.0], 4, 0),
        ("a spike that must stay in the window, history 3", [1.0, 50.0, 1.0, 1.0, 1.0, 1.0, 1.0], 3, 0),
        ("margin 2, history 2", [3.0, 1.0, 0.5, 0.25, 6.0, 6.0], 2, 2),
        ("margin 1, a falling amax, history 3", [8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.125], 3, 1),
        ("zeros at the start (no usable amax yet), history 2", [0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 2.0], 2, 0),
        ("an infinite amax (an overflow) and history 1", [2.0, math.inf, 3.0, 3.0], 1, 0),
        ("an infinite amax inside a window of 3", [2.0, 4.0, math.inf, 1.0, 1.0, 1.0, 1.0, 0.5], 3, 0),
        ("TE's default history (1024) over a short run", [0.5, 0.7, 0.2, 0.9, 0.1], 1024, 0),
    ]


def _same(got: list[float], want: list[float]) -> bool:
    return len(got) == len(want) and all(
        (g == w) if not (math.isfinite(g) and math.isfinite(w)) else math.isclose(g, w, rel_tol=1e-5)
        for g, w in zip(got, want)
    )


@register("fp8_training-delayed", hints=DELAYED_HINTS)
def check_delayed(delayed_scales: Any) -> None:
    """``delayed_scales(amaxes, history_len, margin)``: the decode scale each step uses."""
    label = "fp8_training-delayed"
    hint = DELAYED_HINTS[0]
    results = []
    for case, amaxes, history_len, margin in _delayed_cases():
        got = _call_by_hand(label, delayed_scales, "delayed scaling", list(amaxes), history_len, margin)
        try:
            got_list = [float(v) for v in got]
        except (TypeError, ValueError):
            fail(label, f"for {case} you returned {got!r}; expected a list of numbers, one per step.", hint)
        if len(got_list) != len(amaxes):
            fail(
                label,
                f"for {case} you returned {plural(len(got_list), 'scale')} for {plural(len(amaxes), 'step')}: "
                "one scale per step, the first step included.",
                hint,
            )
        results.append((case, amaxes, history_len, margin, got_list))
    wrong = [r for r in results if not _same(r[4], _delayed_reference(*r[1:4]))]
    if not wrong:
        return
    # A misreading is named only if it explains every case, so that a coincidence in one case is not taken for it.
    variants = [_delayed_variants(*r[1:4]) for r in results]
    for name in variants[0]:
        if all(_same(r[4], v[name]) for r, v in zip(results, variants)):
            fail(label, f"for {wrong[0][0]} your scales match a common mistake: {name}.", hint)
    case, amaxes, history_len, margin, got_list = wrong[0]
    want = _delayed_reference(amaxes, history_len, margin)
    step = next(t for t, (g, w) in enumerate(zip(got_list, want)) if not _same([g], [w]))
    fail(
        label,
        f"for {case} (amaxes {amaxes}) the scale you give step {step} is {got_list[step]:.6g}, which is "
        "not the one delayed scaling uses there.",
        hint,
    )


# ---- fp8_training-ste ----------------------------------------------------------------------------------

STE_HINTS = (
    "Two things are checked: the values your function returns (those of fp8.fake_quantize with the "
    "tensorwise recipe and E4M3) and the gradient that reaches x when the output is back-propagated. "
    "Read how FP8LinearFunction's backward treats its quantisation.",
    "Rounding has a derivative of zero almost everywhere, and fp8.fake_quantize returns a tensor that "
    "autograd does not track at all: neither gives the gradient the straight-through estimator wants.",
    "The gradient of the output with respect to x must be the identity, for every entry, the largest "
    "included: autograd may see the quantisation error only as a constant. Either write an "
    "autograd.Function, or add to x something autograd does not differentiate.",
)


def _ste_inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    normal = torch.randn(32, 48, generator=gen) * 3
    negative = torch.randn(16, 64, generator=gen)
    negative[2, 7] = -50.0  # the amax is a negative entry
    return {
        "a normal tensor (std 3)": normal,
        "a tensor whose largest-magnitude entry is negative (-50)": negative,
        "small values (about 1e-3)": torch.randn(8, 32, generator=gen) * 1e-3,
    }


@register("fp8_training-ste", hints=STE_HINTS)
def check_ste(fake_quant_ste: Any) -> None:
    """``fake_quant_ste(x)``: tensorwise E4M3 fake quantisation whose gradient is the identity."""
    label = "fp8_training-ste"
    hint = STE_HINTS[0]
    for case, x0 in _ste_inputs().items():
        x = x0.clone().requires_grad_(True)
        out = call(label, fake_quant_ste, x)
        if not isinstance(out, torch.Tensor) or out.shape != x0.shape:
            fail(
                label,
                f"for {case} you returned {type(out).__name__} {tuple(getattr(out, 'shape', ()))}; expected a "
                f"tensor shaped like x, {tuple(x0.shape)}.",
                hint,
            )
        want = fp8.fake_quantize(x0, "tensorwise", "e4m3").float()
        got = out.detach().float()
        if not torch.allclose(got, want, rtol=1e-6, atol=0.0):
            if torch.equal(got, x0):
                fail(
                    label,
                    f"for {case} your function returns x unchanged: the forward pass must quantise.",
                    "the forward pass returns the values an fp8 GEMM would see; only the backward pass "
                    "pretends the quantisation is not there.",
                )
            wrong = int((~torch.isclose(got, want, rtol=1e-6, atol=0.0)).sum())
            fail(
                label,
                f"for {case}, {plural(wrong, 'value')} of your output differ from x quantised to E4M3 with one "
                "tensorwise scale and decoded.",
                hint,
            )
        if not out.requires_grad:
            fail(
                label,
                f"for {case} your output is not connected to x in autograd: no gradient can reach x (this is "
                "what fp8.fake_quantize returns, or a detached tensor).",
                STE_HINTS[1],
            )
        g = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
        try:
            out.backward(g)
        except RuntimeError as exc:
            fail(label, f"for {case} back-propagating through your output failed: {exc}", STE_HINTS[1])
        grad = x.grad
        if grad is None:
            fail(label, f"for {case} no gradient reached x.", STE_HINTS[1])
        if torch.allclose(grad, g, rtol=1e-6, atol=0.0):
            continue
        if not grad.any():
            fail(
                label,
                f"for {case} the gradient that reaches x is zero everywhere: autograd differentiated the "
                "rounding, whose derivative is zero.",
                STE_HINTS[1],
            )
        bad = ~torch.isclose(grad, g, rtol=1e-6, atol=0.0)
        amax_entries = x0.abs() == x0.abs().max()
        if bool(bad.any()) and not bool((bad & ~amax_entries).any()):
            fail(
                label,
                f"for {case} the gradient is right everywhere except at the tensor's largest-magnitude entry: "
                "gradient leaks through the scale, which your code computes from x (amax / 448) inside "
                "autograd. A straight-through estimator treats the scale as a constant.",
                "what does autograd do with the amax, the one entry the scale depends on?",
            )
        s32 = x0.abs().max() / 448.0
        cast_back = (g * s32).to(torch.float8_e4m3fn).float() / s32  # the gradient through x.to(float8)
        near = ((grad - g).abs() <= g.abs() / 4) | (grad == 0)
        rest = ~amax_entries  # the clamp may also stop the gradient at the amax itself
        if bool(near.all()) or torch.allclose(grad[rest], cast_back[rest], rtol=1e-5, atol=0.0):
            fail(
                label,
                f"for {case} the gradient that reaches x is the upstream gradient rounded to a few bits "
                f"({plural(int(bad.sum()), 'entry', 'entries')} differ): it travelled back through your cast to "
                "float8, whose backward casts the gradient to float8 too. The straight-through gradient is "
                "not quantised.",
                STE_HINTS[2],
            )
        ratio = grad[g != 0] / g[g != 0]
        if torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-5):
            fail(
                label,
                f"for {case} your gradient is the upstream gradient times {ratio[0].item():.6g}: the "
                "straight-through gradient is the upstream gradient itself, not rescaled.",
                "the backward pass of a quantise-then-decode step that is taken as the identity returns "
                "the incoming gradient as it is.",
            )
        fail(
            label,
            f"for {case}, {plural(int(bad.sum()), 'entry', 'entries')} of the gradient that reaches x differ from "
            "the upstream gradient.",
            STE_HINTS[2],
        )


# ---- fp8_training-backward --------------------------------------------------------------------------

BACKWARD_HINTS = (
    "Write down the two backward GEMMs of y = x w^T, dx = dy w and dw = dy^T x, and for each operand "
    "find the dimension the product sums over. The table in the docstring of mpcourse.fp8.linear lists "
    "them.",
    "A row scale factors out of a dot product only if it is constant along the dimension the product "
    "sums over. fp8.quantize scales along the last axis; fp8.fp8_mm(a, b) computes a @ b.T with both "
    "operands quantised along that inner dimension.",
    "The forward pass quantised w and x along in_features. Neither GEMM of the backward pass sums over "
    "in_features, so those casts cannot serve it: quantise the operand that has the right inner "
    "dimension as its last axis.",
)


def _backward_inputs() -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(21)
    tokens, d_in, d_out = 64, 96, 48
    x = torch.randn(tokens, d_in, generator=gen)
    x[:, :3] *= 60.0  # outlier channels: rows of x mix scales; its columns do not
    w = torch.randn(d_out, d_in, generator=gen) * 0.05
    w[:, 5] *= 40.0
    dy = torch.randn(tokens, d_out, generator=gen) * torch.logspace(-4, 0, tokens)[:, None]
    dy[:, 2] *= 30.0
    x2, w2, dy2 = (torch.randn(s, generator=gen) for s in ((32, 64), (80, 64), (32, 80)))
    return {
        "a layer with outlier channels and gradients of very different sizes per token": (x, w, dy),
        "a plain Gaussian layer": (x2, w2 * 0.1, dy2 * 1e-3),
    }


def _q(t: torch.Tensor, fmt: str = "e4m3") -> Any:
    return fp8.quantize(t.contiguous(), "rowwise", fmt)


def _backward_variants(x: torch.Tensor, w: torch.Tensor, dy: torch.Tensor) -> dict[str, Any]:
    """(dx, dw) from the right axes and from the usual mistakes, to name the one we see."""
    dx = fp8.fp8_mm(_q(dy), _q(w.t()))
    dw = fp8.fp8_mm(_q(dy.t()), _q(x.t()))
    w_fwd = _q(w).dequantize()  # the forward's cast of w, along in_features
    x_fwd = _q(x).dequantize()  # the forward's cast of x, along in_features
    dy_rows = _q(dy).dequantize()  # dy along out_features, as the input-gradient GEMM needs it
    return {
        "right": (dx, dw),
        "dx_forward_w": dy_rows @ w_fwd,
        "dw_forward_x": dy_rows.t() @ x_fwd,
        "dw_dy_by_rows": dy_rows.t() @ _q(x.t()).dequantize().t(),
        "dw_x_by_rows": _q(dy.t()).dequantize() @ x_fwd,
        "dx_e5m2": fp8.fp8_mm(_q(dy, "e5m2"), _q(w.t())),
        "dw_e5m2": fp8.fp8_mm(_q(dy.t(), "e5m2"), _q(x.t())),
        "dx_exact": dy @ w,
        "dw_exact": dy.t() @ x,
    }


def _close(a: Any, b: torch.Tensor) -> bool:
    a = torch.as_tensor(a).double()
    return a.shape == b.shape and float((a - b.double()).norm()) <= 1e-5 * float(b.double().norm())


@register("fp8_training-backward", hints=BACKWARD_HINTS)
def check_backward(rowwise_backward: Any) -> None:
    """``rowwise_backward(x, w, dy) -> (dx, dw)``: both backward GEMMs with rowwise E4M3 operands."""
    label = "fp8_training-backward"
    hint = BACKWARD_HINTS[0]
    for case, (x, w, dy) in _backward_inputs().items():
        out = call(label, rowwise_backward, x.clone(), w.clone(), dy.clone())
        if not (isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
            fail(
                label,
                f"for {case} you returned {type(out).__name__}; expected a pair of tensors (dx, dw).",
                hint,
            )
        got_dx, got_dw = (t.detach() for t in out)
        v = _backward_variants(x, w, dy)
        want_dx, want_dw = v["right"]
        for name, got, want in (("dx", got_dx, want_dx), ("dw", got_dw, want_dw)):
            if got.shape != want.shape:
                like = "x" if name == "dx" else "w"
                extra = " (the transpose of what it should be)" if got.shape == want.t().shape else ""
                fail(
                    label,
                    f"for {case} {name} has shape {tuple(got.shape)}{extra}; it must be shaped like {like}, "
                    f"{tuple(want.shape)}.",
                    hint,
                )
        dx_ok, dw_ok = _close(got_dx, want_dx), _close(got_dw, want_dw)
        if dx_ok and dw_ok:
            continue
        if not dx_ok:
            if _close(got_dx, v["dx_exact"]):
                fail(label, f"for {case} your dx is the exact product dy @ w: nothing was quantised.", hint)
            if _close(got_dx, v["dx_forward_w"]):
                fail(
                    label,
                    f"for {case} your dx uses w quantised along in_features, the forward pass's cast. The "
                    "input-gradient GEMM dx = dy w sums over out_features, and row scales of w along "
                    "in_features vary along that sum: they do not factor out of its dot products, so an fp8 "
                    "GEMM could not apply them. Transformer Engine and torchao quantise w again for it.",
                    BACKWARD_HINTS[2],
                )
            if _close(got_dx, v["dx_e5m2"]):
                fail(
                    label,
                    f"for {case} your dy is quantised to E5M2 (the 'hybrid' format); this exercise asks for "
                    "E4M3 for every operand, as torchao's rowwise recipe does.",
                    "which element format does the exercise name for the gradient?",
                )
            fail(label, f"for {case} your dx differs from dy @ w computed from rowwise E4M3 operands.", hint)
        if _close(got_dw, v["dw_exact"]):
            fail(label, f"for {case} your dw is the exact product dy^T x: nothing was quantised.", hint)
        for key, which in (
            (
                "dw_forward_x",
                "x and dy along their features (the casts of the forward and input-gradient GEMMs)",
            ),
            ("dw_dy_by_rows", "dy along out_features (the input-gradient GEMM's cast)"),
            ("dw_x_by_rows", "x along in_features (the forward pass's cast)"),
        ):
            if _close(got_dw, v[key]):
                fail(
                    label,
                    f"for {case} your dw uses {which}. The weight-gradient GEMM dw = dy^T x sums over the "
                    "tokens of the batch: both operands need scales that are constant along the tokens, one "
                    "per feature, which is the other axis.",
                    BACKWARD_HINTS[2],
                )
        if _close(got_dw, v["dw_e5m2"]):
            fail(
                label,
                f"for {case} your dy is quantised to E5M2 in dw; this exercise asks for E4M3 for every operand.",
                "which element format does the exercise name for the gradient?",
            )
        fail(label, f"for {case} your dw differs from dy^T x computed from rowwise E4M3 operands.", hint)


# ---- fp8_training-convert ---------------------------------------------------------------------------

CONVERT_HINTS = (
    "Compare your list with the table fp8.plan prints for the chapter's model: which linear layers does a "
    "recipe leave in higher precision, and for which two reasons?",
    "Only nn.Linear modules count, at any depth of the model (model.named_modules() visits every one, "
    "with its full name); the first and the last are those of that sequence of linear layers, not of all "
    "modules.",
    "A GEMM of an fp8 layer needs its dimensions divisible by 16, and a linear layer's three GEMMs use both "
    "in_features and out_features as an inner or an outer dimension: check both.",
)


class _Block(nn.Module):
    """A transformer-like block: attention projections and an MLP, nested one level down."""

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))


class _Tower(nn.Module):
    def __init__(self, d: int = 64, hidden: int = 256, blocks: int = 2, odd: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv1d(3, 8, 3)  # not a linear layer: not the "first" one
        self.embed = nn.Linear(40, d)
        self.blocks = nn.ModuleList(_Block(d, hidden) for _ in range(blocks))
        if odd:
            self.adapter = nn.Linear(d, 24)  # 24 = 8 x 3: divisible by 8, not by 16
            self.adapter_back = nn.Linear(24, d)
        self.head = nn.Linear(d, 10)


def _convert_models() -> dict[str, nn.Module]:
    from .. import models

    return {
        "the chapter's MLP (width 128, depth 3)": models.MLP(784, 10, width=128, depth=3),
        "a two-block transformer-like model (linear layers nested in blocks)": _Tower(),
        "a transformer-like model with a 24-wide adapter": _Tower(odd=True, blocks=1),
        "an MLP with a 100-wide hidden layer": nn.Sequential(
            nn.Linear(20, 64),
            nn.ReLU(),
            nn.Linear(64, 100),
            nn.ReLU(),
            nn.Linear(100, 64),
            nn.ReLU(),
            nn.Linear(64, 64),
            nn.ReLU(),
            nn.Linear(64, 5),
        ),
        "a model with only two linear layers": nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)),
    }


def _linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def convertible(model: nn.Module) -> list[str]:
    """The rule of the chapter, stated directly: every linear layer but the first and last, 16 | both dims."""
    linears = _linears(model)
    return [
        n
        for i, (n, m) in enumerate(linears)
        if 0 < i < len(linears) - 1 and m.in_features % 16 == 0 and m.out_features % 16 == 0
    ]


@register("fp8_training-convert", hints=CONVERT_HINTS)
def check_convert(layers_to_convert: Any) -> None:
    """``layers_to_convert(model) -> list[str]``: the names of the linear layers an fp8 recipe converts."""
    label = "fp8_training-convert"
    hint = CONVERT_HINTS[0]
    for case, model in _convert_models().items():
        with shortcuts.watch(
            [
                (fp8_linear, "plan", "fp8.plan"),
                (fp8, "plan", "fp8.plan"),
                (fp8, "convert_to_fp8", "fp8.convert_to_fp8"),
            ],
            fn=layers_to_convert,
        ) as seen:
            got = call(label, layers_to_convert, model)
        if seen:
            fail(
                label,
                f"your function calls {seen[0]}, which applies the very rule the exercise asks for.",
                "write the rule yourself from the model's modules; fp8.plan is for checking your answer by hand.",
            )
        if (
            isinstance(got, str)
            or not isinstance(got, (list, tuple))
            or not all(isinstance(n, str) for n in got)
        ):
            fail(label, f"for {case} you returned {got!r}; expected a list of module names (strings).", hint)
        want = convertible(model)
        if sorted(got) == sorted(want) and len(set(got)) == len(got):
            continue
        linears = dict(_linears(model))
        names = list(linears)
        unknown = [n for n in got if n not in linears]
        if unknown:
            other = dict(model.named_modules())
            what = (
                "not linear layers"
                if all(n in other for n in unknown)
                else "not names of the model's modules"
            )
            fail(
                label,
                f"for {case} you returned {unknown[:3]}, {what}: only nn.Linear layers are converted, named "
                "as model.named_modules() names them.",
                CONVERT_HINTS[1],
            )
        if len(set(got)) != len(got):
            fail(label, f"for {case} your list names a layer twice.", hint)
        extra, missing = set(got) - set(want), set(want) - set(got)
        if names and names[0] in extra:
            fail(
                label,
                f"for {case} you convert {names[0]!r}, the first linear layer: it sees the raw inputs and is "
                "kept in higher precision.",
                hint,
            )
        if names and names[-1] in extra:
            fail(
                label,
                f"for {case} you convert {names[-1]!r}, the last linear layer (the output head), which produces "
                "the logits and is kept in higher precision.",
                hint,
            )
        odd = sorted(n for n in extra if linears[n].in_features % 16 or linears[n].out_features % 16)
        if odd:
            m = linears[odd[0]]
            fail(
                label,
                f"for {case} you convert {odd[0]!r}, whose features ({m.in_features}, {m.out_features}) are not "
                "both divisible by 16.",
                CONVERT_HINTS[2],
            )
        if missing and len(names) > 2 and names[1] in missing:
            fail(
                label,
                f"for {case} you leave out {names[1]!r}, the second linear layer: did you count the first and "
                "last of all modules, or of the top-level children only, rather than of the linear layers?",
                CONVERT_HINTS[1],
            )
        nested = sorted(n for n in missing if "." in n)
        if nested:
            fail(
                label,
                f"for {case} you miss {plural(len(nested), 'layer')} nested inside other modules (e.g. "
                f"{nested[0]!r}).",
                CONVERT_HINTS[1],
            )
        fail(
            label,
            f"for {case} you convert {sorted(got)}; the recipe converts {sorted(want)}.",
            hint,
        )


# ---- fp8_training-nvfp4_scales ------------------------------------------------------------------------

NVFP4_SCALES_HINTS = (
    "Read the steps table of the section 'NVFP4 training, step by step': which two numbers are stored "
    "besides the 4-bit elements, and which step makes every block scale fit in E4M3?",
    "The global decode scale has to leave room for two factors at once: the largest block scale E4M3 holds "
    "and the largest element E2M1 holds. Each block scale is expressed in units of that global scale, and "
    "the number stored is an E4M3 number: which step should come last?",
    "Compute in float32: the amax over the whole tensor, then the amax of each row's groups of 16 "
    "(reshape the last axis into (K/16, 16)). A block of zeros has amax 0: its scale must come out 0, "
    "not NaN, whatever the order of your operations.",
)

_FP32_TINY_REL = 1e-6


def _nvfp4_scales_inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(31)
    zero_block = torch.randn(4, 64, generator=gen)
    zero_block[1, 16:32] = 0.0
    spread = torch.randn(6, 64, generator=gen) * torch.logspace(-6, 0, 6)[:, None]
    return {
        "a Gaussian tensor (std 1)": torch.randn(8, 64, generator=gen),
        "large values (std 3000)": torch.randn(4, 48, generator=gen) * 3000.0,
        "small values (std 1e-3)": torch.randn(4, 32, generator=gen) * 1e-3,
        "a tensor with an all-zero block (row 1, elements 16-31)": zero_block,
        "rows from 1e-6 to 1 in size": spread,
    }


def _as_float_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().float()
    try:
        return torch.as_tensor(value, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        return None


def _is_e4m3(t: torch.Tensor) -> torch.Tensor:
    """Where ``t`` holds a value E4M3 represents (NaN excluded)."""
    finite = torch.isfinite(t)
    safe = torch.where(finite, t, torch.zeros_like(t)).clamp(-E4M3_MAX, E4M3_MAX)
    return finite & (safe.to(torch.float8_e4m3fn).float() == t)


def _near_tie(unrounded: torch.Tensor, got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """Where ``got`` and ``want`` are the two E4M3 neighbours of a value that sits on their midpoint, up
    to float32 rounding: an answer that orders its fp32 operations differently may round the other way."""
    mid = (got + want) / 2
    return (got != want) & ((unrounded - mid).abs() <= 4 * _FP32_TINY_REL * mid.abs())


@register("fp8_training-nvfp4_scales", hints=NVFP4_SCALES_HINTS)
def check_nvfp4_scales(nvfp4_scales: Any) -> None:
    """``nvfp4_scales(x) -> (global_decode, block_scales)``: NVFP4's two-level scale of a 2-D tensor."""
    from ..fp8 import nvfp4

    label = "fp8_training-nvfp4_scales"
    hint = NVFP4_SCALES_HINTS[0]
    for case, x in _nvfp4_scales_inputs().items():
        with shortcuts.watch(
            [
                (nvfp4, "quantize_steps", "nvfp4.quantize_steps"),
                (nvfp4, "quantize", "nvfp4.quantize"),
                (nvfp4, "global_encode_scale", "nvfp4.global_encode_scale"),
                (fp8, "quantize", "fp8.quantize"),
            ],
            fn=nvfp4_scales,
        ) as seen:
            out = call(label, nvfp4_scales, x.clone())
        if seen:
            fail(
                label,
                f"your function calls {seen[0]}, which computes the very scales the exercise asks for.",
                "compute the two scales yourself with torch operations; the course's quantiser is there to "
                "check your result by hand afterwards.",
            )
        if not (isinstance(out, tuple) and len(out) == 2):
            fail(
                label,
                f"for {case} you returned {type(out).__name__}; expected a pair (global_decode, block_scales).",
                hint,
            )
        s_got, scales = _as_float_tensor(out[0]), _as_float_tensor(out[1])
        if s_got is None or s_got.numel() != 1 or scales is None:
            fail(label, f"for {case} the pair must hold one number and a tensor of block scales.", hint)
        steps = nvfp4.quantize_steps(x)
        s_dec = float(steps.global_decode)
        want = steps.block_scale.float()
        s = float(s_got.reshape(()))
        amax = float(x.abs().max())
        if not math.isclose(s, s_dec, rel_tol=1e-5):
            for wrong, what in (
                (
                    amax / E4M3_MAX,
                    "amax / 448: that maps the amax to E4M3's largest value, but each block scale "
                    "is later multiplied by an E2M1 element up to 6, so the global scale must leave room for both",
                ),
                (amax / 6.0, "amax / 6, which leaves no room for the block scales' range"),
                (
                    1.0 / s_dec,
                    "the encode scale (6 * 448 / amax), the reciprocal of the decode scale asked for",
                ),
                (amax, "the amax itself"),
            ):
                if math.isclose(s, wrong, rel_tol=1e-5):
                    fail(label, f"for {case} your global decode scale is {what}.", NVFP4_SCALES_HINTS[1])
            fail(
                label,
                f"for {case} your global decode scale is {s:.6g}; it should map the tensor's amax "
                f"({amax:.6g}) to 6 x 448.",
                NVFP4_SCALES_HINTS[1],
            )
        if scales.shape != want.shape:
            fail(
                label,
                f"for {case} block_scales has shape {tuple(scales.shape)}; NVFP4 gives every 16 consecutive "
                f"elements of a row one scale, shape {tuple(want.shape)} here.",
                hint,
            )
        zero = steps.block_amax == 0
        if bool(zero.any()) and not bool((scales[zero] == 0).all()):
            shown = scales[zero][scales[zero] != 0][0].item()
            fail(
                label,
                f"for {case} the all-zero block gets scale {shown}"
                f"{' (from dividing by its amax of 0)' if not math.isfinite(shown) else ''}; it must be 0, so "
                "that the block decodes to zeros and no NaN reaches the GEMM.",
                NVFP4_SCALES_HINTS[2],
            )
        if torch.equal(scales, want):
            continue
        unrounded = steps.block_decode_unrounded
        bad = scales != want
        if not bool((bad & ~_near_tie(unrounded, scales, want)).any()):
            continue
        block_amax = steps.block_amax
        no_global = (block_amax / 6.0).clamp(max=E4M3_MAX).to(torch.float8_e4m3fn).float()
        if bool(torch.isnan(scales).any()) or torch.equal(scales, no_global):
            fail(
                label,
                f"for {case} your block scales are the blocks' amax / 6 rounded to E4M3 without the global "
                "scale: for large tensors they pass 448 and saturate (or become NaN), for small ones they lose "
                "precision or underflow.",
                NVFP4_SCALES_HINTS[1],
            )
        round_first = no_global / s_dec
        if torch.allclose(scales, round_first, rtol=1e-5, atol=0.0):
            fail(
                label,
                f"for {case} you rounded amax / 6 to E4M3 first and divided by the global decode scale afterwards: "
                "the stored block scale is the E4M3 value, so the rounding comes last.",
                NVFP4_SCALES_HINTS[1],
            )
        nonzero = scales[scales != 0]
        if nonzero.numel() and bool((torch.frexp(nonzero.abs()).mantissa == 0.5).all()):
            fail(
                label,
                f"for {case} every block scale is a power of two, as an E8M0 scale of the MX formats would be; "
                "NVFP4's block scales are E4M3 numbers, with 3 bits of mantissa.",
                NVFP4_SCALES_HINTS[1],
            )
        if not bool(_is_e4m3(scales).all()):
            fail(
                label,
                f"for {case} some block scales are not E4M3 values: round them to torch.float8_e4m3fn, the "
                "format they are stored in.",
                NVFP4_SCALES_HINTS[1],
            )
        if torch.allclose(scales, unrounded.float(), rtol=1e-5, atol=0.0):
            fail(label, f"for {case} your block scales are not rounded to E4M3.", NVFP4_SCALES_HINTS[1])
        fail(
            label,
            f"for {case}, {plural(int(bad.sum()), 'block scale')} differ from NVFP4's.",
            hint,
        )


# ---- fp8_training-hadamard ----------------------------------------------------------------------------

HADAMARD_HINTS = (
    "A Hadamard matrix of order 16 has entries +1 and -1 and mutually orthogonal rows; the RHT of the "
    "section above divides it by the square root of its order and multiplies it by a diagonal of signs.",
    "Sylvester's construction doubles a Hadamard matrix H into [[H, H], [H, -H]], starting from [[1]]: four "
    "doublings give order 16. Check your matrix R with R @ R.T, which must be the identity.",
    "The random signs enter once, as torch.diag(signs) on one side of the normalised Hadamard matrix; the "
    "Hadamard part must not depend on the signs.",
)


def _hadamard_signs() -> list[torch.Tensor]:
    from ..fp8 import nvfp4

    gen = torch.Generator().manual_seed(41)
    return [
        torch.ones(16),
        torch.tensor(nvfp4.TE_WGRAD_SIGNS, dtype=torch.float32),
        nvfp4.random_signs(16, gen),
        nvfp4.random_signs(16, gen),
    ]


@register("fp8_training-hadamard", hints=HADAMARD_HINTS)
def check_hadamard(random_hadamard: Any) -> None:
    """``random_hadamard(signs) -> R``: a normalised 16x16 Hadamard matrix with a diagonal of signs."""
    from ..fp8 import nvfp4

    label = "fp8_training-hadamard"
    hint = HADAMARD_HINTS[0]
    matrices = []
    for signs in _hadamard_signs():
        with shortcuts.watch(
            [(nvfp4, "rht_matrix", "nvfp4.rht_matrix"), (nvfp4, "hadamard_matrix", "nvfp4.hadamard_matrix")],
            fn=random_hadamard,
        ) as seen:
            out = call(label, random_hadamard, signs.clone())
        if seen:
            fail(
                label,
                f"your function calls {seen[0]}, which builds the matrix the exercise asks for.",
                "build the Hadamard matrix yourself (hint() gives a construction); nvfp4's is for checking yours.",
            )
        r = _as_float_tensor(out)
        if r is None or r.shape != (16, 16):
            fail(
                label,
                f"you returned {type(out).__name__} {tuple(getattr(out, 'shape', ()))}; expected a 16x16 tensor.",
                hint,
            )
        r = r.double()
        if not bool(torch.isfinite(r).all()):
            fail(label, "your matrix holds NaN or inf.", hint)
        size = r.abs()
        if bool((size == 1).all()):
            fail(
                label,
                "your matrix has entries ±1: it is a Hadamard matrix, but not normalised. R @ R.T is then 16 I, "
                "so the transform would multiply every block's norm by 4 and its transpose would not undo it.",
                HADAMARD_HINTS[1],
            )
        if not bool(torch.allclose(size, torch.full_like(size, 0.25), rtol=1e-6, atol=0.0)):
            got = "1/16" if bool(torch.allclose(size, torch.full_like(size, 1 / 16))) else "other sizes"
            fail(
                label,
                f"your matrix has entries of {got}; a normalised Hadamard matrix of order 16 has entries ±1/4 "
                "(±1 divided by the square root of 16).",
                HADAMARD_HINTS[1],
            )
        if not bool(torch.allclose(r @ r.t(), torch.eye(16, dtype=r.dtype), atol=1e-6)):
            fail(
                label,
                "your matrix has entries ±1/4 but is not orthogonal (R @ R.T is not the identity): some rows "
                "are not perpendicular, so its transpose does not undo it and the GEMM's product would change.",
                HADAMARD_HINTS[1],
            )
        matrices.append(r)
    signs = [s.double() for s in _hadamard_signs()]
    if all(torch.equal(m, matrices[0]) for m in matrices):
        fail(
            label, "your matrix is the same for every sign vector: the signs are left out.", HADAMARD_HINTS[2]
        )
    left = [torch.diag(s) @ m for s, m in zip(signs, matrices, strict=True)]
    right = [m @ torch.diag(s) for s, m in zip(signs, matrices, strict=True)]
    both = [torch.diag(s) @ m @ torch.diag(s) for s, m in zip(signs, matrices, strict=True)]
    same = lambda ms: all(torch.allclose(m, ms[0], atol=1e-9) for m in ms)
    if not (same(left) or same(right)):
        if same(both):
            fail(
                label,
                "your signs are applied twice, on both sides: diag(s) H diag(s). It is orthogonal, but it is "
                "not the RHT, which flips each row (or each column) of H once.",
                HADAMARD_HINTS[2],
            )
        fail(
            label,
            "for different sign vectors your matrices are not one Hadamard matrix with a diagonal of signs on "
            "one side: the Hadamard part changes with the signs.",
            HADAMARD_HINTS[2],
        )
    r = matrices[1].float()
    outlier = torch.zeros(3, 16)
    outlier[torch.arange(3), torch.tensor([0, 7, 15])] = torch.tensor([8.0, -5.0, 100.0])
    spread = nvfp4.apply_rht(outlier, r)
    if not torch.allclose(spread.abs(), outlier.abs().amax(-1, keepdim=True).expand(3, 16) / 4, rtol=1e-5):
        fail(label, "your matrix does not spread a single outlier evenly over the 16 values.", hint)
    if not torch.allclose(nvfp4.apply_rht(spread, r.t()), outlier, atol=1e-4):
        fail(label, "the transpose of your matrix does not undo it.", HADAMARD_HINTS[1])


# ---- fp8_training-stochastic ---------------------------------------------------------------------------

STOCHASTIC_HINTS = (
    "For each value find the two E2M1 values around it, the one below and the one above; the sign and the "
    "values beyond ±6 need their own treatment.",
    "E2M1's magnitudes are 0, 0.5, 1, 1.5, 2, 3, 4, 6: the gap between neighbours is not the same everywhere. "
    "Work on |x| clamped to 6 and put the sign back at the end; torch.searchsorted finds the neighbours.",
    "Round up with probability (|x| - below) / (above - below), comparing that with torch.rand(..., "
    "generator=generator): the expected result is then |x| exactly. Use the generator you are given.",
)

E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
#: Values whose rounding is tested in distribution, each repeated STOCHASTIC_DRAWS times: their
#: probability of rounding up is 0.2, 0.3, 0.6, 0.7, 0.8 or 0.9, never 0.5 (which a coin flip would match).
STOCHASTIC_VALUES = (0.1, 0.35, 0.8, 1.3, 1.85, 2.2, 2.7, 3.3, 4.4, 5.6, -0.15, -1.15, -2.6, -4.6)
STOCHASTIC_DRAWS = 4000
#: Accept a mean within this many standard deviations of the value: for the 14 values, the chance that a
#: correct answer fails is below 14 * 6e-7 (two-sided normal tail at 5 sigma), and the draws are fixed.
STOCHASTIC_SIGMAS = 5.0


def _neighbours(v: float) -> tuple[float, float]:
    a = min(abs(v), 6.0)
    below = max(m for m in E2M1_MAGNITUDES if m <= a)
    above = min(m for m in E2M1_MAGNITUDES if m >= a)
    sign = -1.0 if v < 0 else 1.0
    return sign * below, sign * above


@register("fp8_training-stochastic", hints=STOCHASTIC_HINTS)
def check_stochastic(stochastic_round_e2m1: Any) -> None:
    """``stochastic_round_e2m1(x, generator)``: each value to one of its two E2M1 neighbours, unbiased."""
    from .. import formats

    label = "fp8_training-stochastic"
    hint = STOCHASTIC_HINTS[0]
    exact = [s * m for m in E2M1_MAGNITUDES for s in (1.0, -1.0)]
    beyond = [6.5, -7.0, 100.0, -1e4]
    x = torch.tensor(exact + beyond + [v for v in STOCHASTIC_VALUES for _ in range(STOCHASTIC_DRAWS)])
    with shortcuts.watch(
        [
            (formats, "round_tensor", "formats.round_tensor"),
            (formats.FloatFormat, "round", "FloatFormat.round"),
        ],
        fn=stochastic_round_e2m1,
    ) as seen:
        out = call(label, stochastic_round_e2m1, x.clone(), torch.Generator().manual_seed(0))
        again = call(label, stochastic_round_e2m1, x.clone(), torch.Generator().manual_seed(0))
    if seen:
        fail(
            label,
            f"your function calls {seen[0]}, the course's own rounding, which is what the exercise asks for.",
            "round with torch operations yourself; the course's function is there to compare with afterwards.",
        )
    got = _as_float_tensor(out)
    if got is None or got.shape != x.shape:
        fail(
            label,
            f"you returned {type(out).__name__} {tuple(getattr(out, 'shape', ()))}; expected a tensor shaped like x.",
            hint,
        )
    negative = x <= -0.5  # whose two neighbours are both negative
    if bool((got[negative] >= 0).all()) or bool((got[x >= 0.5] <= 0).all()):
        fail(
            label,
            f"the inputs {sorted(set(x[negative].tolist()))[:3]}... came out non-negative (or the positive ones "
            "non-positive): the sign is lost. Round the magnitude and give the result the sign of x.",
            STOCHASTIC_HINTS[1],
        )
    n_exact, n_beyond = len(exact), len(beyond)
    clamped = torch.tensor([math.copysign(6.0, v) for v in beyond])
    if not torch.equal(got[n_exact : n_exact + n_beyond], clamped):
        fail(
            label,
            f"values beyond ±6 ({beyond}) became {got[n_exact : n_exact + n_beyond].tolist()}; they must saturate "
            "to ±6, E2M1's largest magnitude, as NVFP4 clamps the scaled elements before rounding.",
            STOCHASTIC_HINTS[1],
        )
    grid = torch.tensor(E2M1_MAGNITUDES)
    off_grid = ~torch.isin(got.abs(), grid) | torch.isnan(got)
    if bool(off_grid.any()):
        i = int(off_grid.nonzero()[0])
        fail(
            label,
            f"{x[i].item():g} became {got[i].item():g}, which is not an E2M1 value (±0, 0.5, 1, 1.5, 2, 3, 4, 6): "
            "are your neighbours spaced evenly? E2M1's gaps are 0.5 below 2, 1 from 2 to 4 and 2 above.",
            STOCHASTIC_HINTS[1],
        )
    if not torch.equal(got[:n_exact].abs(), x[:n_exact].abs()):
        fail(label, "an E2M1 value itself must round to itself, and some do not.", hint)
    rest = x[n_exact + n_beyond :]
    drawn = got[n_exact + n_beyond :]
    pairs = torch.tensor([_neighbours(v) for v in STOCHASTIC_VALUES]).repeat_interleave(STOCHASTIC_DRAWS, 0)
    low, high = pairs[:, 0], pairs[:, 1]
    neither = (drawn != low) & (drawn != high)
    if bool(neither.any()):
        i = int(neither.nonzero()[0])
        v = rest[i].item()
        fail(
            label,
            f"{v:g} became {drawn[i].item():g}, which is not one of its two E2M1 neighbours "
            f"({low[i].item():g} and {high[i].item():g}).",
            STOCHASTIC_HINTS[1],
        )
    again = _as_float_tensor(again)
    if again is None or not torch.equal(again, got):
        fail(
            label,
            "two calls with generators seeded alike gave different results: draw your random numbers from the "
            "generator passed in (torch.rand(..., generator=generator)), so that a run can be reproduced.",
            STOCHASTIC_HINTS[2],
        )
    for j, v in enumerate(STOCHASTIC_VALUES):
        part = drawn[j * STOCHASTIC_DRAWS : (j + 1) * STOCHASTIC_DRAWS].double()
        lo, hi = _neighbours(v)
        p = (abs(v) - abs(lo)) / (abs(hi) - abs(lo))
        sd = abs(hi - lo) * math.sqrt(p * (1 - p) / STOCHASTIC_DRAWS)
        mean = part.mean().item()
        if abs(mean - v) <= STOCHASTIC_SIGMAS * sd:
            continue
        if bool((part == part[0]).all()):
            fail(
                label,
                f"{v:g} became {part[0].item():g} every time: that is deterministic rounding, whose error has "
                f"the same sign at every step. Stochastic rounding picks {lo:g} or {hi:g} at random.",
                STOCHASTIC_HINTS[2],
            )
        coin = (lo + hi) / 2
        flipped = lo + (1 - p) * (hi - lo) if v > 0 else lo - (1 - p) * (hi - lo)
        seen_as = f"over {STOCHASTIC_DRAWS} draws {v:g} averaged {mean:.4f} (allowed: {v:g} ± {STOCHASTIC_SIGMAS * sd:.4f})"
        if abs(mean - coin) <= STOCHASTIC_SIGMAS * abs(hi - lo) * 0.5 / math.sqrt(STOCHASTIC_DRAWS):
            fail(
                label,
                f"{seen_as}, close to the midpoint of {lo:g} and {hi:g}: you round up with probability 1/2, which is "
                "unbiased only for values halfway between neighbours.",
                STOCHASTIC_HINTS[2],
            )
        if abs(mean - flipped) <= STOCHASTIC_SIGMAS * sd:
            fail(
                label,
                f"{seen_as}: your probabilities are swapped, so the farther neighbour is chosen more often.",
                STOCHASTIC_HINTS[2],
            )
        fail(label, f"{seen_as}: the rounding is biased.", STOCHASTIC_HINTS[2])
