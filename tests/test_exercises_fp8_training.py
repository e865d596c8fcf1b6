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


# ---- fp8_training-nvfp4_scales ---------------------------------------------------------------------------


def scales_reference(x):
    x = x.float()
    global_decode = x.abs().max() / (6 * 448)
    block_amax = x.abs().reshape(*x.shape[:-1], -1, 16).amax(-1)
    return global_decode, ((block_amax / 6) / global_decode).clamp(max=448).to(torch.float8_e4m3fn)


def scales_encode_first(x):  # TE's order: the encode scale first, multiplied in; float32 values returned
    x = x.float()
    amax = x.abs().max()
    s_enc = torch.div(torch.tensor(2688.0), amax)
    block_amax = x.abs().reshape(x.shape[0], x.shape[1] // 16, 16).amax(-1)
    scales = (block_amax / 6 * s_enc).clamp(-448, 448).to(torch.float8_e4m3fn).float()
    return float(1 / s_enc), scales


def scales_float64(x):  # numpy in float64, rounded to E4M3 by ml_dtypes, a Python float for the global scale
    import ml_dtypes

    a = np.abs(x.double().numpy())
    s_dec = a.max() / 2688.0
    blocks = a.reshape(a.shape[0], -1, 16).max(-1)
    scales = np.minimum(blocks / 6.0 / s_dec, 448.0).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
    return float(s_dec), torch.from_numpy(scales)


@pytest.mark.parametrize("answer", [scales_reference, scales_encode_first, scales_float64])
@pytest.mark.filterwarnings("error")
def test_nvfp4_scales_accepts_correct_answers(answer, capsys) -> None:
    check("fp8_training-nvfp4_scales", answer)
    assert capsys.readouterr().err == ""


def _scales_wrong(variant):
    def fn(x):
        x = x.float()
        amax = x.abs().max()
        s_dec = amax / (6 * 448)
        block_amax = x.abs().reshape(x.shape[0], -1, 16).amax(-1)
        unrounded = (block_amax / 6) / s_dec
        if variant == "no-global":
            return s_dec, (block_amax / 6).to(torch.float8_e4m3fn)
        if variant == "by-448":
            s_dec = amax / 448
            return s_dec, ((block_amax / 6) / s_dec).to(torch.float8_e4m3fn)
        if variant == "encode":
            return 1 / s_dec, unrounded.clamp(max=448).to(torch.float8_e4m3fn)
        if variant == "round-first":
            return s_dec, (block_amax / 6).clamp(max=448).to(torch.float8_e4m3fn).float() / s_dec
        if variant == "e8m0":
            return s_dec, torch.exp2(torch.ceil(torch.log2(unrounded)))
        if variant == "zero-as-one":  # the tensorwise fp8 recipe's guard, misapplied
            return s_dec, torch.where(block_amax == 0, 1.0, unrounded).clamp(max=448).to(torch.float8_e4m3fn)
        if variant == "zero-nan":
            return s_dec, (block_amax / (6 * s_dec * block_amax) * block_amax).clamp(max=448).to(
                torch.float8_e4m3fn
            )
        if variant == "unrounded":
            return s_dec, unrounded
        if variant == "per-row":
            return s_dec, unrounded.amax(-1, keepdim=True).to(torch.float8_e4m3fn)
        if variant == "shortcut":
            from mpcourse.fp8 import nvfp4

            steps = nvfp4.quantize_steps(x)
            return steps.global_decode, steps.block_scale
        raise AssertionError(variant)

    return fn


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("no-global", "without the global\\s+scale"),
        ("by-448", "amax / 448"),
        ("encode", "encode scale"),
        ("round-first", "rounded amax / 6 to E4M3 first"),
        ("e8m0", "power of two"),
        ("zero-as-one", "all-zero block gets scale 1"),
        ("zero-nan", "all-zero block gets scale nan"),
        ("unrounded", "not E4M3 values"),
        ("per-row", "has shape"),
        ("shortcut", "nvfp4.quantize_steps"),
    ],
)
def test_nvfp4_scales_rejects_mistakes(variant, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("fp8_training-nvfp4_scales", _scales_wrong(variant))


def test_nvfp4_scales_inputs_make_the_mistakes_visible() -> None:
    """The large input saturates without the global scale; the zero block and tiny rows are present."""
    from mpcourse.exercises import fp8_training as ex

    inputs = ex._nvfp4_scales_inputs()
    assert max(float(x.abs().max()) for x in inputs.values()) / 6 > 448
    assert any(bool((x.reshape(x.shape[0], -1, 16).abs().amax(-1) == 0).any()) for x in inputs.values())


# ---- fp8_training-hadamard -------------------------------------------------------------------------------


def _sylvester(n=16):
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h


def hadamard_left(signs):
    return torch.diag(signs.float()) @ _sylvester() / 4


def hadamard_right(signs):  # signs on the columns instead: H diag(s), also orthogonal
    return (_sylvester() / 4) @ torch.diag(signs.float())


H4 = torch.tensor([[1.0, 1, 1, -1], [1, 1, -1, 1], [1, -1, 1, 1], [-1, 1, 1, 1]])


def hadamard_kron(signs):  # another Hadamard matrix of order 16 (not Sylvester's), float64
    h = torch.kron(H4, H4).double()[torch.randperm(16, generator=torch.Generator().manual_seed(0))]
    return signs.double()[:, None] * h / 4


@pytest.mark.parametrize("answer", [hadamard_left, hadamard_right, hadamard_kron])
@pytest.mark.filterwarnings("error")
def test_hadamard_accepts_correct_answers(answer, capsys) -> None:
    check("fp8_training-hadamard", answer)
    assert capsys.readouterr().err == ""


def test_the_alternative_hadamard_is_not_sylvester() -> None:
    h = hadamard_kron(torch.ones(16)) * 4
    assert torch.equal(h @ h.t(), 16 * torch.eye(16, dtype=h.dtype))
    assert not torch.equal(h.float(), _sylvester())


def _hadamard_wrong(variant):
    def fn(signs):
        s = torch.diag(signs.float())
        h = _sylvester()
        if variant == "unnormalised":
            return s @ h
        if variant == "by-16":
            return s @ h / 16
        if variant == "twice":
            return s @ h @ s / 4
        if variant == "not-orthogonal":
            bad = h.clone()
            bad[1] = bad[0]
            return s @ bad / 4
        if variant == "no-signs":
            return h / 4
        if variant == "signs-change-h":  # a different Hadamard matrix for each sign vector
            perm = torch.argsort(signs + torch.arange(16) / 100)
            return s @ h[perm] / 4
        if variant == "shortcut":
            from mpcourse.fp8 import nvfp4

            return nvfp4.rht_matrix(signs)
        if variant == "wrong-shape":
            return s[:8, :8]
        raise AssertionError(variant)

    return fn


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("unnormalised", "not normalised"),
        ("by-16", "entries of 1/16"),
        ("twice", "applied twice"),
        ("not-orthogonal", "not orthogonal"),
        ("no-signs", "signs are left out"),
        ("signs-change-h", "Hadamard part changes"),
        ("shortcut", "nvfp4.rht_matrix"),
        ("wrong-shape", "expected a 16x16"),
    ],
)
def test_hadamard_rejects_mistakes(variant, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("fp8_training-hadamard", _hadamard_wrong(variant))


# ---- fp8_training-stochastic -----------------------------------------------------------------------------

GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def sr_searchsorted(x, generator):
    a = x.abs().clamp(max=6.0)
    i = torch.searchsorted(GRID, a, right=True) - 1
    below, above = GRID[i], GRID[(i + 1).clamp(max=7)]
    gap = torch.where(above > below, above - below, torch.ones_like(a))
    up = torch.rand(a.shape, generator=generator) < (a - below) / gap
    return torch.sign(x) * torch.where(up, above, below)


def sr_binades(x, generator):  # the gap from the binade, a Bernoulli draw, copysign
    a = x.double().abs().clamp(max=6.0)
    gap = torch.where(a < 1, torch.full_like(a, 0.5), torch.exp2(torch.floor(torch.log2(a.clamp(min=1))) - 1))
    below = torch.floor(a / gap) * gap
    p = (a - below) / gap
    rounded = below + gap * torch.bernoulli(p, generator=generator)
    return torch.copysign(rounded.clamp(max=6.0), x.double()).float()


def sr_loop(x, generator):  # one value at a time, as a first attempt might do it
    u = torch.rand(x.shape, generator=generator).tolist()
    out = []
    for v, r in zip(x.tolist(), u, strict=True):
        a = min(abs(v), 6.0)
        below = max(g for g in GRID.tolist() if g <= a)
        above = min(g for g in GRID.tolist() if g >= a)
        q = above if above > below and r < (a - below) / (above - below) else below
        out.append(math.copysign(q, v))
    return torch.tensor(out)


@pytest.mark.parametrize("answer", [sr_searchsorted, sr_binades, sr_loop])
@pytest.mark.filterwarnings("error")
def test_stochastic_accepts_correct_answers(answer, capsys) -> None:
    check("fp8_training-stochastic", answer)
    assert capsys.readouterr().err == ""


def test_stochastic_tolerance_is_met_by_the_course_rounding() -> None:
    """The bound the check derives holds for mpcourse.formats' stochastic rounding over many seeds."""
    from mpcourse import formats
    from mpcourse.exercises import fp8_training as ex

    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        for v in ex.STOCHASTIC_VALUES:
            x = torch.full((ex.STOCHASTIC_DRAWS,), v)
            r = formats.round_tensor(x, "e2m1", rounding="stochastic", generator=gen).double()
            lo, hi = ex._neighbours(v)
            p = (abs(v) - abs(lo)) / (abs(hi) - abs(lo))
            sd = abs(hi - lo) * math.sqrt(p * (1 - p) / ex.STOCHASTIC_DRAWS)
            assert abs(r.mean().item() - v) <= ex.STOCHASTIC_SIGMAS * sd


def _sr_wrong(variant):
    def fn(x, generator):
        a = x.abs().clamp(max=6.0)
        i = torch.searchsorted(GRID, a, right=True) - 1
        below, above = GRID[i], GRID[(i + 1).clamp(max=7)]
        gap = torch.where(above > below, above - below, torch.ones_like(a))
        p = (a - below) / gap
        u = torch.rand(a.shape, generator=generator)
        if variant == "nearest":
            up = p > 0.5
        elif variant == "coin":
            up = (u < 0.5) & (p > 0)
        elif variant == "swapped":
            up = (u < 1 - p) & (p > 0)
        elif variant == "global-rng":
            up = torch.rand(a.shape) < p
        else:
            up = u < p
        q = torch.where(up, above, below)
        if variant == "even-grid":  # neighbours 0.5 apart everywhere
            below = torch.floor(a * 2) / 2
            q = below + 0.5 * (u < (a - below) * 2)
        if variant == "no-sign":
            b = x.clamp(0, 6)
            j = torch.searchsorted(GRID, b, right=True) - 1
            lo, hi = GRID[j], GRID[(j + 1).clamp(max=7)]
            g = torch.where(hi > lo, hi - lo, torch.ones_like(b))
            return torch.where(u < (b - lo) / g, hi, lo)
        if variant == "no-saturation":
            return torch.where(x.abs() > 6, x, torch.sign(x) * q)
        if variant == "shortcut":
            from mpcourse import formats

            return formats.round_tensor(x, "e2m1", saturate=True, rounding="stochastic", generator=generator)
        return torch.sign(x) * q

    return fn


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("nearest", "deterministic rounding"),
        ("coin", "probability 1/2"),
        ("swapped", "swapped"),
        ("global-rng", "seeded alike"),
        ("even-grid", "not an E2M1 value"),
        ("no-sign", "sign is lost"),
        ("no-saturation", "beyond ±6"),
        ("shortcut", "formats.round_tensor"),
    ],
)
def test_stochastic_rejects_mistakes(variant, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("fp8_training-stochastic", _sr_wrong(variant))
