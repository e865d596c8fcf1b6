"""The checks of chapter fp8_training: correct answers (the reference and other ways of writing it)
pass, realistic mistakes fail, each with the diagnosis of that mistake."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest
import torch
from torch import nn

from mpcourse import fp8
from mpcourse.exercises import ExerciseFailed, check

FP8 = torch.float8_e4m3fn

# ---- fp8_training-delayed------------------------------------------------------------------------------------


def delayed_reference(amaxes, history_len, margin=0):
    used, scale = [], 1.0
    for t in range(len(amaxes)):
        window = amaxes[max(0, t - history_len) : t]
        amax = max(window) if window else 0.0
        if 0 < amax < math.inf:
            scale = amax * 2.0**margin / 448.0
        used.append(scale)
    return used


def delayed_with_a_history(amaxes, history_len, margin=0):
    """Another correct solution: Transformer Engine's shape, an encode scale and a bounded history."""
    history, encode, used = deque(maxlen=history_len), 1.0, []
    for amax in amaxes:
        used.append(1.0 / encode)
        history.append(amax)
        top = max(history)
        if math.isfinite(top) and top > 0:
            encode = 448.0 / top / 2**margin
    return used


def delayed_numpy(amaxes, history_len, margin=0):
    """Another correct solution: numpy, returning an array."""
    a = np.asarray(amaxes, dtype=np.float64)
    out = np.ones(len(a))
    for t in range(1, len(a)):
        top = a[max(0, t - history_len) : t].max()
        out[t] = top * 2.0**margin / 448.0 if np.isfinite(top) and top > 0 else out[t - 1]
    return out


@pytest.mark.parametrize("answer", [delayed_reference, delayed_with_a_history, delayed_numpy])
@pytest.mark.filterwarnings("error")  # a correct answer writes nothing to stderr, warnings included
def test_delayed_accepts_correct_answers(answer, capsys) -> None:
    check("fp8_training-delayed", answer)
    assert capsys.readouterr().err == ""


def _delayed_wrong(variant):
    def fn(amaxes, history_len, margin=0):
        if variant == "course-scaler":
            scaler, used = fp8.DelayedScaler("e4m3", amax_history_len=history_len, margin=margin), []
            for amax in amaxes:
                used.append(float(scaler.scale_inv))
                scaler.record(amax)
                scaler.update()
            return used
        used, scale = [], 1.0
        for t in range(len(amaxes)):
            lo, hi = max(0, t - history_len), t
            if variant == "current":
                lo, hi = max(0, t - history_len + 1), t + 1
            elif variant == "too-long":
                lo = max(0, t - history_len - 1)
            elif variant == "too-short":
                lo = max(0, t - history_len + 1)
            elif variant == "most-recent":
                lo = max(0, t - 1)
            elif variant == "step0-own" and t == 0:
                hi = 1
            window = amaxes[lo:hi]
            if variant == "drop-inf":
                window = [a for a in window if math.isfinite(a)]
            amax = max(window) if window else 0.0
            usable = 0 < amax < math.inf
            if usable or (variant == "update-always" and window):
                factor = {"margin-divides": 2.0**-margin, "margin-factor": margin}.get(variant, 2.0**margin)
                scale = amax * factor / (57344.0 if variant == "e5m2" else 448.0)
                if variant == "encode-scale":
                    scale = 448.0 / (amax * 2.0**margin)
            elif variant == "reset":
                scale = 1.0
            used.append(scale)
        return used[1:] if variant == "no-step-0" else used

    return fn


@pytest.mark.parametrize(
    "variant, message",
    [
        ("current", "current scaling"),
        ("step0-own", "step 0 is cast with a scale from its own amax"),
        ("too-long", "one step too long"),
        ("too-short", "one step too short"),
        ("most-recent", "most_recent"),
        ("encode-scale", "encode scales"),
        ("margin-divides", "margin divides"),
        ("margin-factor", "not by 2\\*\\*margin"),
        ("e5m2", "E5M2's largest value"),
        ("reset", "resets to 1"),
        ("update-always", "changed when the window's maximum is 0 or infinite"),
        ("drop-inf", "infinite amax is left out"),
        ("no-step-0", "one scale per step"),
        ("course-scaler", "course's own delayed scaling \\(fp8.DelayedScaler\\)"),
    ],
)
def test_delayed_rejects_mistakes(variant, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("fp8_training-delayed", _delayed_wrong(variant))


def test_delayed_names_the_step_of_an_unrecognised_mistake() -> None:
    def off_at_step_two(amaxes, history_len, margin=0):
        used = delayed_reference(amaxes, history_len, margin)
        used[2] *= 1.5
        return used

    with pytest.raises(ExerciseFailed, match="the scale you give step 2 is"):
        check("fp8_training-delayed", off_at_step_two)


# ---- fp8_training-ste ---------------------------------------------------------------------------------


def ste_detach_trick(x):
    return x + (fp8.fake_quantize(x.detach(), "tensorwise", "e4m3") - x).detach()


class _STE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return fp8.fake_quantize(x, "tensorwise", "e4m3")

    @staticmethod
    def backward(ctx, g):
        return g


def ste_function(x):
    return _STE.apply(x)


def ste_by_hand(x):  # the quantisation written out on a detached copy, added as a constant
    with torch.no_grad():
        amax = x.abs().max()
        scale = amax / 448.0 if amax > 0 else torch.tensor(1.0)
        error = (x / scale).clamp(-448, 448).to(FP8).float() * scale - x
    return x + error


@pytest.mark.parametrize("answer", [ste_detach_trick, ste_function, ste_by_hand])
@pytest.mark.filterwarnings("error")
def test_ste_accepts_correct_answers(answer, capsys) -> None:
    check("fp8_training-ste", answer)
    assert capsys.readouterr().err == ""


def _ste_wrong(variant):
    def fn(x):
        if variant == "library":
            return fp8.fake_quantize(x, "tensorwise", "e4m3")
        if variant == "identity":
            return x * 1.0
        if variant == "scale-leaks":  # straight through the cast, but the scale is computed in the graph
            scale = x.abs().max() / 448.0
            u = x / scale
            return (u + ((u.clamp(-448, 448).to(FP8).float()) - u).detach()) * scale
        if variant == "zero-grad":
            scale = x.abs().max().detach() / 448.0
            q = fp8.fake_quantize(x.detach(), "tensorwise", "e4m3")
            return q + 0.0 * x
        if variant == "grad-times-scale":
            scale = (x.abs().max() / 448.0).detach()
            q = fp8.fake_quantize(x.detach(), "tensorwise", "e4m3")
            return q + (x - x.detach()) * scale
        if variant == "cast-in-graph":  # the scale is a constant, but the gradient goes through the cast
            with torch.no_grad():
                scale = x.abs().max() / 448.0
            return (x / scale).clamp(-448, 448).to(FP8).float() * scale
        if variant == "e5m2":
            return x + (fp8.fake_quantize(x.detach(), "tensorwise", "e5m2") - x).detach()
        raise AssertionError(variant)

    return fn


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("library", "not connected to x in autograd"),
        ("identity", "returns x unchanged"),
        ("scale-leaks", "leaks through the scale"),
        ("zero-grad", "zero everywhere"),
        ("grad-times-scale", "times"),
        ("e5m2", "differ from x quantised to E4M3"),
        ("cast-in-graph", "through your cast"),
    ],
)
def test_ste_rejects_mistakes(variant, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("fp8_training-ste", _ste_wrong(variant))


# ---- fp8_training-backward ------------------------------------------------------------------------------


def q(t, fmt="e4m3"):
    return fp8.quantize(t.contiguous(), "rowwise", fmt)


def backward_reference(x, w, dy):
    return fp8.fp8_mm(q(dy), q(w.t())), fp8.fp8_mm(q(dy.t()), q(x.t()))


def backward_axis0_float64(x, w, dy):  # quantise along axis 0, dequantise, multiply in float64
    def deq(t, axis):
        return fp8.quantize(t, "rowwise", "e4m3", axis=axis).dequantize().double()

    dx = deq(dy, -1) @ deq(w, 0)
    dw = deq(dy, 0).t() @ deq(x, 0)
    return dx.float(), dw.float()


def backward_by_hand(x, w, dy):  # the row scales written out: amax / 448 per row of each operand
    def rows(t):
        t = t.float()
        s = t.abs().amax(-1, keepdim=True) / 448.0
        s = torch.where(s > 0, s, torch.ones_like(s))
        return (t / s).clamp(-448, 448).to(FP8).float(), s

    a, sa = rows(dy)
    b, sb = rows(w.t())
    dx = (a @ b.t()) * sa * sb.t()
    a, sa = rows(dy.t())
    b, sb = rows(x.t())
    return dx, (a @ b.t()) * sa * sb.t()


@pytest.mark.parametrize("answer", [backward_reference, backward_axis0_float64, backward_by_hand])
@pytest.mark.filterwarnings("error")
def test_backward_accepts_correct_answers(answer, capsys) -> None:
    check("fp8_training-backward", answer)
    assert capsys.readouterr().err == ""


def _backward_wrong(variant):
    def fn(x, w, dy):
        dx, dw = backward_reference(x, w, dy)
        if variant == "forward-w":
            dx = q(dy).dequantize() @ q(w).dequantize()
        elif variant == "forward-x":
            dw = q(dy).dequantize().t() @ q(x).dequantize()
        elif variant == "exact":
            dx, dw = dy @ w, dy.t() @ x
        elif variant == "transposed-dw":
            dw = dw.t()
        elif variant == "e5m2":
            dx = fp8.fp8_mm(q(dy, "e5m2"), q(w.t()))
        elif variant == "one-tensor":
            return dx
        return dx, dw

    return fn


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("forward-w", "the forward pass's cast"),
        ("forward-x", "sums over the tokens"),
        ("exact", "nothing was quantised"),
        ("transposed-dw", "the transpose"),
        ("e5m2", "E5M2"),
        ("one-tensor", "expected a pair"),
    ],
)
def test_backward_rejects_mistakes(variant, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("fp8_training-backward", _backward_wrong(variant))


def test_backward_mistakes_differ_beyond_the_tolerance() -> None:
    from mpcourse.exercises import fp8_training as ex

    for x, w, dy in ex._backward_inputs().values():
        v = ex._backward_variants(x, w, dy)
        dx, dw = v["right"]
        assert not ex._close(v["dx_forward_w"], dx)
        assert not ex._close(v["dw_forward_x"], dw)


# ---- fp8_training-convert -------------------------------------------------------------------------------


def convert_reference(model):
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    inner = linears[1:-1]
    return [n for n, m in inner if m.in_features % 16 == 0 and m.out_features % 16 == 0]


def convert_set(model):  # a set-like answer in another order, with a modulo written differently
    names = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    keep = {n for n in names[1:-1] if not (dict(model.named_modules())[n].weight.shape[0] % 16)}
    return sorted(n for n in keep if dict(model.named_modules())[n].weight.shape[1] % 16 == 0)[::-1]


@pytest.mark.parametrize("answer", [convert_reference, convert_set])
@pytest.mark.filterwarnings("error")
def test_convert_accepts_correct_answers(answer, capsys) -> None:
    check("fp8_training-convert", answer)
    assert capsys.readouterr().err == ""


def _convert_wrong(variant):
    def fn(model):
        linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        div = [n for n, m in linears if m.in_features % 16 == 0 and m.out_features % 16 == 0]
        if variant == "all":
            return div
        if variant == "keep-first":  # torchao's example filters only the output head
            return [n for n in div if n != linears[-1][0]]
        if variant == "no-divisibility":
            return [n for n, _ in linears[1:-1]]
        if variant == "in-only":
            return [n for n, m in linears[1:-1] if m.in_features % 16 == 0]
        if variant == "by-8":
            return [n for n, m in linears[1:-1] if m.in_features % 8 == 0 and m.out_features % 8 == 0]
        if variant == "children":
            kids = [(n, m) for n, m in model.named_children() if isinstance(m, nn.Linear)]
            return [n for n, m in kids[1:-1] if m.in_features % 16 == 0 and m.out_features % 16 == 0]
        if variant == "plan":
            table = fp8.plan(model)
            return [n for n in table.loc[table["fp8"], "layer"]]
        raise AssertionError(variant)

    return fn


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("all", "the first linear layer"),
        ("keep-first", "the first linear layer"),
        ("no-divisibility", "not\\s+both divisible by 16"),
        ("in-only", "not\\s+both divisible by 16"),
        ("by-8", "not\\s+both divisible by 16"),
        ("children", "nested|second linear layer"),
        ("plan", "fp8.plan"),
    ],
)
def test_convert_rejects_mistakes(variant, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("fp8_training-convert", _convert_wrong(variant))


def test_convert_reference_agrees_with_plan_where_plan_applies() -> None:
    from mpcourse.exercises import fp8_training as ex

    model = ex._convert_models()["the chapter's MLP (width 128, depth 3)"]
    table = fp8.plan(model, "fp8_tensorwise")
    assert list(table.loc[table["fp8"], "layer"]) == ex.convertible(model)


def test_delayed_hints_do_not_give_the_formula() -> None:
    from mpcourse.exercises import hints

    assert all("2**margin / 448" not in step for step in hints("fp8_training-delayed"))
