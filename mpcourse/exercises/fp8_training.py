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
