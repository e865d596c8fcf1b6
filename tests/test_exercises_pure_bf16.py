"""The checks of chapter pure_bf16: reference solutions pass, realistic mistakes fail."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch

from mpcourse import formats
from mpcourse.exercises import ExerciseFailed, check

BF16 = formats.BF16


# ---- stochastic rounding ---------------------------------------------------------------------------


def sr_reference(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    bits = x.view(torch.int32)
    noise = torch.randint(0, 1 << 16, x.shape, generator=generator, dtype=torch.int32)
    return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)


def sr_wrong(variant: str):
    def fn(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        bits = x.view(torch.int32)
        if variant == "truncate":
            return (bits & -65536).view(torch.float32).to(torch.bfloat16)
        if variant == "nearest":
            return x.to(torch.bfloat16)
        if variant == "float32-result":
            noise = torch.randint(0, 1 << 16, x.shape, generator=generator, dtype=torch.int32)
            return ((bits + noise) & -65536).view(torch.float32)
        if variant == "15-bit-noise":
            noise = torch.randint(0, 1 << 15, x.shape, generator=generator, dtype=torch.int32)
            return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)
        if variant == "toward-plus-infinity":  # value-based: floor + Bernoulli(frac), wrong for negatives
            low = (bits & -65536).view(torch.float32)
            gap = torch.from_numpy(BF16.spacing(x.double().numpy())).float()
            frac = (x - low).abs() / gap
            up = torch.rand(x.shape, generator=generator) < frac
            away = torch.where(x < 0, ~up, up)  # the bug: "up" taken as toward +inf for negatives too
            out = torch.where(away, low + torch.sign(x) * gap, low)
            return torch.where((x == low) | torch.isinf(x), x, out).to(torch.bfloat16)
        if variant in ("global-generator", "seeded-inside"):  # right bit trick, wrong source of randomness
            if variant == "seeded-inside":
                generator = torch.Generator().manual_seed(0)
            noise = torch.randint(
                0,
                1 << 16,
                x.shape,
                dtype=torch.int32,
                generator=None if variant == "global-generator" else generator,
            )
            return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)
        if variant == "noise-on-value":  # adds up to a whole gap and then rounds to nearest: biased upward
            gap = torch.from_numpy(BF16.spacing(x.double().numpy())).float()
            return (x + torch.rand(x.shape, generator=generator) * gap * torch.sign(x)).to(torch.bfloat16)
        raise AssertionError(variant)

    return fn


def test_stochastic_round_accepts_the_reference_quietly(capsys: pytest.CaptureFixture[str]) -> None:
    check("pure_bf16-stochastic-round", sr_reference)
    assert capsys.readouterr().err == ""


def sr_by_value(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Another valid method: find both neighbours by value and choose with a Bernoulli draw."""
    low = (x.view(torch.int32) & -65536).view(torch.float32)  # toward zero
    gap = torch.from_numpy(BF16.spacing(x.double().numpy())).float()
    fraction = ((x - low).abs() / gap).nan_to_num(0.0)
    away = torch.rand(x.shape, generator=generator) < fraction
    out = torch.where(away, low + torch.sign(x) * gap, low)
    return torch.where(torch.isinf(x), x, out).to(torch.bfloat16)


def test_stochastic_round_accepts_a_value_based_method() -> None:
    check("pure_bf16-stochastic-round", sr_by_value)


def test_stochastic_round_refuses_a_library_rounding() -> None:
    """The course's own function (shown just above the exercise) and formats' exact stochastic rounding give
    right results; the exercise is to write the rounding."""
    from mpcourse import bf16
    from mpcourse.bf16 import stochastic_round_bf16

    def through_module(x, generator):
        return bf16.stochastic_round_bf16(x, generator=generator)

    def imported(x, generator):
        return stochastic_round_bf16(x, generator=generator)

    def with_formats(x, generator):
        return formats.round_tensor(x, "bf16", rounding="stochastic", generator=generator).to(torch.bfloat16)

    for fn, message in (
        (through_module, "mpcourse.bf16.stochastic_round_bf16"),
        (imported, "mpcourse.bf16.stochastic_round_bf16"),
        (with_formats, "mpcourse.formats"),
    ):
        with pytest.raises(ExerciseFailed, match="lets a library do the rounding: " + message):
            check("pure_bf16-stochastic-round", fn)


@pytest.mark.parametrize(
    "variant, message",
    [
        ("truncate", "(?s)truncation.*never carries into bit 16"),
        ("nearest", "deterministic"),
        ("float32-result", "dtype"),
        ("15-bit-noise", "(?s)should be.*range your random integers"),
        ("toward-plus-infinity", "negative values"),
        ("noise-on-value", "already a bf16 value"),
        ("global-generator", "seeded alike rounded the same inputs differently"),
        ("seeded-inside", "ignores `generator`"),
    ],
)
def test_stochastic_round_rejects_realistic_mistakes(variant: str, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("pure_bf16-stochastic-round", sr_wrong(variant))


# ---- does an update survive? ---------------------------------------------------------------------


def survives_reference(w: np.ndarray, u: np.ndarray) -> np.ndarray:
    w, u = np.asarray(w, dtype=np.float64), np.asarray(u, dtype=np.float64)
    gap_up = BF16.spacing(w)  # the gap above |w|
    at_power = (np.abs(w) == 2.0 ** np.floor(np.log2(np.where(w == 0, 1, np.abs(w))))) & (w != 0)
    toward_zero = np.sign(u) == -np.sign(w)
    gap = np.where(at_power & toward_zero & (np.abs(w) > BF16.tiny), gap_up / 2, gap_up)
    half = gap / 2
    _, _, mantissa = BF16.fields(BF16.encode(w))
    odd = (np.asarray(mantissa) % 2) == 1
    return (np.abs(u) > half) | ((np.abs(u) == half) & odd)


def survives_wrong(variant: str):
    def fn(w: np.ndarray, u: np.ndarray) -> np.ndarray:
        if variant == "relative-threshold":
            return np.abs(u) > 2.0**-8 * np.abs(w)
        if variant == "ties-survive":
            return np.abs(u) >= BF16.spacing(w) / 2
        if variant == "gap-above-only":
            _, _, mantissa = BF16.fields(BF16.encode(w))
            half = BF16.spacing(w) / 2
            return (np.abs(u) > half) | ((np.abs(u) == half) & (np.asarray(mantissa) % 2 == 1))
        if variant == "u-in-float32":  # the gap reasoning, but u rounded to float32 first: double rounding
            return survives_reference(w, np.asarray(u).astype(np.float32).astype(np.float64))
        if variant == "floats":
            return survives_reference(w, u).astype(np.float64)
        raise AssertionError(variant)

    return fn


def survives_by_bits(w: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Another valid method: the neighbour in the direction of u from w's bit pattern (w is a bf16 value, so
    converting it with torch rounds nothing), then half the distance to it; ties by the last bit."""
    bits = (
        torch.from_numpy(np.asarray(w, dtype=np.float64)).to(torch.bfloat16).view(torch.int16).to(torch.int32)
    )
    code, sign_bit = bits & 0x7FFF, bits & 0x8000
    uu = torch.from_numpy(np.asarray(u, dtype=np.float64))
    away = (code == 0) | ((uu > 0) == (sign_bit == 0))
    neighbour = (torch.where(away, code + 1, code - 1) | sign_bit).to(torch.int16).view(torch.bfloat16)
    half = (neighbour.double() - torch.from_numpy(np.asarray(w, dtype=np.float64))).abs() / 2
    odd = (code & 1) == 1
    moves = (uu.abs() > half) | ((uu.abs() == half) & odd)
    return (moves & (uu != 0)).numpy()


def test_update_survives_accepts_the_reference_quietly(capsys: pytest.CaptureFixture[str]) -> None:
    check("pure_bf16-update-survives", survives_reference)
    assert capsys.readouterr().err == ""


def test_update_survives_accepts_reasoning_on_the_bit_pattern() -> None:
    check("pure_bf16-update-survives", survives_by_bits)


@pytest.mark.parametrize(
    "variant, message",
    [
        ("relative-threshold", "threshold|answered"),
        ("ties-survive", "tie"),
        ("gap-above-only", "power of two"),
        ("u-in-float32", "double rounding"),
        ("floats", "boolean numpy array"),
    ],
)
def test_update_survives_rejects_realistic_mistakes(variant: str, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("pure_bf16-update-survives", survives_wrong(variant))


def _formats_round(w, u):
    return BF16.round(w + u) != w


def _formats_encode(w, u):
    return BF16.encode(w + u) != BF16.encode(w)


def _round_tensor(w, u):
    return formats.round_tensor(torch.from_numpy(np.asarray(w + u, dtype=np.float64)), "bf16").numpy() != w


def _torch_cast(w, u):
    return torch.from_numpy(np.asarray(w) + np.asarray(u)).to(torch.bfloat16).double().numpy() != w


def _torch_bf16_add(w, u):  # w and u both made bf16 tensors, added in bf16
    wt = torch.tensor(np.asarray(w), dtype=torch.bfloat16)
    return ((wt + torch.tensor(np.asarray(u), dtype=torch.bfloat16)) != wt).numpy()


def _torch_fp32_add(w, u):  # and wrong too: w + u rounded to float32 first
    wt = torch.from_numpy(np.asarray(w)).to(torch.bfloat16)
    return ((wt.float() + torch.from_numpy(np.asarray(u)).float()).to(torch.bfloat16) != wt).numpy()


def _ml_dtypes(w, u):
    return (np.asarray(w) + np.asarray(u)).astype(ml_dtypes.bfloat16).astype(np.float64) != w


_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def _ml_dtypes_on_input(w, u):  # ml_dtypes's type reached through a global that does not name it
    return (w + u).astype(_BFLOAT16).astype(np.float64) != w


SHORTCUTS = {
    "formats": _formats_round,
    "formats-encode": _formats_encode,
    "round-tensor": _round_tensor,
    "torch-cast": _torch_cast,
    "torch-bf16-add": _torch_bf16_add,
    "torch-fp32-add": _torch_fp32_add,
    "ml_dtypes": _ml_dtypes,
    "ml_dtypes-on-input": _ml_dtypes_on_input,
}


@pytest.mark.parametrize(
    "kind, message",
    [
        ("formats", r"mpcourse.formats \(a bf16 rounding"),
        ("formats-encode", r"mpcourse.formats \(a bf16 rounding"),
        ("round-tensor", r"mpcourse.formats \((a bf16 rounding|round_tensor)"),
        ("torch-cast", None),  # torch converts float64 to bf16 through float32
        ("torch-bf16-add", None),  # u rounded to bf16 first
        ("torch-fp32-add", None),
        ("ml_dtypes", r"ml_dtypes \(named in your function\)"),
        ("ml_dtypes-on-input", r"ml_dtypes \(astype\(bfloat16\)"),
    ],
)
def test_update_survives_refuses_a_library_rounding(kind: str, message: str | None) -> None:
    """Issue 15: the check accepted the rounding-function shortcut its prompt forbids. (A shortcut that is
    also wrong is told what is wrong first: torch's conversions round w + u, or u, to float32 or bf16
    before the final rounding, which is double rounding.)"""
    if kind.startswith("ml_dtypes") and _ml_dtypes_rounds_through_float32():
        message = None  # older ml_dtypes (0.6, CI's pin) convert float64 to bfloat16 through float32
    expected = "double rounding" if message is None else "lets a library round w \\+ u to bf16: " + message
    with pytest.raises(ExerciseFailed, match=expected):
        check("pure_bf16-update-survives", SHORTCUTS[kind])


def _ml_dtypes_rounds_through_float32() -> bool:
    """1 + 2^-8 + 2^-30 rounds to 1 + 2^-7 in one step, but to 1 through float32 (1 + 2^-8, a tie to even)."""
    import ml_dtypes

    x = np.array([1 + 2.0**-8 + 2.0**-30])
    return float(x.astype(ml_dtypes.bfloat16).astype(np.float64)[0]) == 1.0


def test_the_rounding_watch_leaves_no_spies_behind() -> None:
    from mpcourse.exercises.pure_bf16 import watch_bf16_rounding

    before = (formats.FloatFormat._round_numpy, formats._round_with_torch)
    with watch_bf16_rounding() as seen:
        torch.tensor([1.0, 0.5]).to(torch.bfloat16)  # bf16 values: nothing is rounded
        BF16.round(np.array([1.0, 2.0**-133]))
        assert seen == []
        torch.tensor([0.1]).bfloat16()
        BF16.round(np.array([0.1]))
        assert len(seen) == 2
    assert (formats.FloatFormat._round_numpy, formats._round_with_torch) == before


# ---- Kahan-compensated update ----------------------------------------------------------------------


def kahan_reference(param: torch.Tensor, update: torch.Tensor, compensation: torch.Tensor):
    target = param.float() + (update.float() + compensation.float())
    new = target.to(torch.bfloat16)
    return new, (target - new.float()).to(torch.bfloat16)


def kahan_all_bf16(param: torch.Tensor, update: torch.Tensor, compensation: torch.Tensor):
    """Kahan's algorithm with every operation in bf16 (Zamirai et al.'s formulation): also correct."""
    y = update.to(torch.bfloat16) + compensation
    t = param + y
    return t, y - (t - param)


def kahan_wrong(variant: str):
    def fn(param: torch.Tensor, update: torch.Tensor, compensation: torch.Tensor):
        if variant == "naive":
            return (param.float() + update.float()).to(torch.bfloat16), compensation
        target = param.float() + (update.float() + compensation.float())
        new = target.to(torch.bfloat16)
        if variant == "wrong-sign":
            return new, (new.float() - target).to(torch.bfloat16)
        if variant == "compensation-ignored":
            target = param.float() + update.float()
            new = target.to(torch.bfloat16)
            return new, (target - new.float()).to(torch.bfloat16)
        if variant == "fp32-weights":
            return target, (target - new.float()).to(torch.bfloat16)
        if variant == "single-tensor":
            return new
        if variant == "compensation-kept":  # adds what was dropped to the old compensation: counted twice
            return new, (compensation.float() + (target - new.float())).to(torch.bfloat16)
        raise AssertionError(variant)

    return fn


def test_kahan_accepts_the_reference_quietly(capsys: pytest.CaptureFixture[str]) -> None:
    check("pure_bf16-kahan", kahan_reference)
    assert capsys.readouterr().err == ""


def test_kahan_accepts_the_update_added_to_the_weight_first() -> None:
    def fn(param, update, compensation):
        target = (param.float() + update.float()) + compensation.float()
        new = target.bfloat16()
        return new, (target - new.float()).bfloat16()

    check("pure_bf16-kahan", fn)


def test_kahan_accepts_the_all_bf16_formulation() -> None:
    check("pure_bf16-kahan", kahan_all_bf16)


def test_kahan_refuses_the_package_update() -> None:
    from mpcourse import bf16

    def fn(param, update, compensation):
        param, compensation = param.clone(), compensation.clone()
        bf16.kahan_add_(param, update, compensation)
        return param, compensation

    with pytest.raises(
        ExerciseFailed, match="the course's own implementation do the update: mpcourse.bf16.kahan_add_"
    ):
        check("pure_bf16-kahan", fn)


@pytest.mark.parametrize(
    "variant, message",
    [
        ("naive", "not moved"),
        ("wrong-sign", "wrong sign"),
        ("compensation-ignored", "not moved"),
        ("fp32-weights", "dtypes"),
        ("single-tensor", "pair of tensors"),
        ("compensation-kept", "gaps from the exact sum|times as far"),
    ],
)
def test_kahan_rejects_realistic_mistakes(variant: str, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("pure_bf16-kahan", kahan_wrong(variant))


# ---- the learning-rate floor of pure bf16 ------------------------------------------------------------


def lr_floor_thresholds(weight: torch.Tensor, grad: torch.Tensor) -> np.ndarray:
    """Each weight's threshold, sorted: the learning rate its first AdamW step in pure bf16 must exceed."""
    w = weight.double().numpy().ravel()
    g = grad.float().numpy().ravel()
    gap = np.asarray(BF16.spacing(w))  # the gap above |w| (the smallest subnormal at zero)
    magnitude = np.abs(w)
    exponent = np.floor(np.log2(np.where(w == 0, 1.0, magnitude)))
    power_of_two = (w != 0) & (magnitude == np.exp2(exponent)) & (magnitude > BF16.tiny)
    toward_zero = np.sign(g) == np.sign(w)  # the update -lr * sign(g) points at zero
    half = np.where(power_of_two & toward_zero, gap / 2, gap) / 2
    return np.sort(np.where(g == 0, np.inf, half))


def lr_floor_reference(weight: torch.Tensor, grad: torch.Tensor, share: float) -> float:
    thresholds = lr_floor_thresholds(weight, grad)
    return float(thresholds[math.ceil(share * thresholds.size) - 1])


def lr_floor_by_bisection(weight: torch.Tensor, grad: torch.Tensor, share: float) -> float:
    """Another valid method: measure the share that moves with torch's own rounding, and bisect on log2(lr)."""
    w, s = weight.float(), torch.sign(grad.float())

    def moved(lr: float) -> float:
        return ((w - lr * s).bfloat16() != weight).float().mean().item()

    if moved(1e30) < share:
        return math.inf
    lo, hi = -160.0, 100.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if moved(2.0**mid) >= share else (mid, hi)
    return 2.0**hi


def lr_floor_by_bits(weight: torch.Tensor, grad: torch.Tensor, share: float) -> float:
    """Another valid method: the neighbour toward which each weight moves, one code away in its bit pattern."""
    bits = weight.view(torch.int16).to(torch.int32)
    code, sign_bit = bits & 0x7FFF, bits & 0x8000
    step = -torch.sign(grad.float())
    away = (code == 0) | ((step > 0) == (sign_bit == 0))
    neighbour = (torch.where(away, code + 1, code - 1) | sign_bit).to(torch.int16).view(torch.bfloat16)
    t = ((neighbour.double() - weight.double()).abs() / 2).where(
        step != 0, torch.tensor(math.inf, dtype=torch.float64)
    )
    k = math.ceil(share * t.numel())
    return t.flatten().kthvalue(k).values.item()


@pytest.mark.parametrize("fn", [lr_floor_reference, lr_floor_by_bisection, lr_floor_by_bits])
def test_lr_floor_accepts_correct_methods(fn, capsys: pytest.CaptureFixture[str]) -> None:
    check("pure_bf16-lr-floor", fn)
    assert capsys.readouterr().err == ""


def test_lr_floor_cases_are_confirmed_by_rounding_and_by_adamw() -> None:
    """Each reference answer is a boundary of the exact measurement, and a real AdamW step in pure bf16 moves
    the weights the measurement says (the chapter's claim that the first step is lr * sign(g))."""
    from mpcourse.exercises.pure_bf16 import _lr_floor, _lr_floor_cases, _moved

    for case, weight, grad, share in _lr_floor_cases():
        tau = _lr_floor(weight, grad, share)
        if math.isinf(tau):
            assert _moved(weight, grad, 1e30) < share, case
            continue
        assert _moved(weight, grad, tau * 1.001) >= share > _moved(weight, grad, tau * 0.999), case
        for lr in (tau * 1.01, tau * 0.99):
            p = torch.nn.Parameter(weight.clone())
            p.grad = grad.clone()
            torch.optim.AdamW([p], lr=lr, weight_decay=0.0).step()
            assert (p.detach() != weight).double().mean().item() == pytest.approx(_moved(weight, grad, lr)), (
                case,
                lr,
            )


def _lr_floor_wrong(variant: str):
    from mpcourse.exercises.pure_bf16 import _lr_floor

    return lambda weight, grad, share: _lr_floor(weight, grad, share, variant=variant)


@pytest.mark.parametrize(
    "variant, message",
    [
        ("whole-gap", "a whole gap"),
        ("gap-above", "the gap above \\|w\\| everywhere"),
        ("sign-flipped", "moved along the gradient's sign"),
        ("zero-grad-moves", "zero gradient counted as movable"),
        ("relative", "proportional to \\|w\\|"),
        ("relative-eps", "proportional to \\|w\\|"),
        ("index-off-by-one", "one weight too many"),
        ("index-int-off-by-one", "one weight too many"),
        ("index-floor", "share \\* n rounded down"),
        ("index-round", "share \\* n rounded to the nearest whole number"),
        ("quantile", "interpolated quantile"),
    ],
)
def test_lr_floor_rejects_realistic_mistakes(variant: str, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("pure_bf16-lr-floor", _lr_floor_wrong(variant))


def test_lr_floor_names_the_zero_gradient_mistake_however_it_is_made() -> None:
    def nonzero_only(weight, grad, share):  # the share taken among the weights that can move
        return lr_floor_reference(weight[grad != 0], grad[grad != 0], share)

    with pytest.raises(ExerciseFailed, match="left out of the count"):
        check("pure_bf16-lr-floor", nonzero_only)


@pytest.mark.parametrize(
    "answer, message",
    [
        (lambda w, g, s: lr_floor_reference(w, g, s) * 1.5, "not the smallest"),
        (lambda w, g, s: lr_floor_reference(w, g, s) / 1.5, "just above it only"),
        (lambda w, g, s: None, "returned NoneType"),
        (
            lambda w, g, s: 1.0 if math.isinf(lr_floor_reference(w, g, s)) else lr_floor_reference(w, g, s),
            "no learning rate changes 87.5%",
        ),
    ],
)
def test_lr_floor_other_wrong_answers_say_what_a_right_one_satisfies(answer, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("pure_bf16-lr-floor", answer)


def test_lr_floor_cases_include_shares_of_no_whole_number_of_weights() -> None:
    """Where share * n is not whole, rounding it down or to nearest picks a learning rate that moves fewer
    weights than the share: the cases hold such shares, with each rounding wrong somewhere the other is not."""
    from mpcourse.exercises.pure_bf16 import _lr_floor_cases, _moved

    floor_short, round_short = [], []
    for case, weight, grad, share in _lr_floor_cases():
        t = lr_floor_thresholds(weight, grad)
        n = t.size
        if share * n == int(share * n):
            continue
        for index, short in ((int(share * n), floor_short), (round(share * n), round_short)):
            lr = float(t[index - 1])
            if lr != lr_floor_reference(weight, grad, share):
                assert _moved(weight, grad, lr * 1.001) < share, case
                short.append(case)
    assert floor_short and round_short and set(round_short) < set(floor_short)


@pytest.mark.parametrize(
    "rounding, message",
    [
        (int, "share \\* n rounded down"),
        (math.floor, "share \\* n rounded down"),
        (round, "to the nearest whole"),
    ],
)
def test_lr_floor_names_a_share_count_rounded_the_wrong_way(rounding, message: str) -> None:
    def answer(weight, grad, share):  # th[int(share * n) - 1], th[round(share * n) - 1]
        th = lr_floor_thresholds(weight, grad)
        return float(th[rounding(share * th.size) - 1])

    with pytest.raises(ExerciseFailed, match=message) as failed:
        check("pure_bf16-lr-floor", answer)
    assert "share 0.7 you returned" in str(failed.value) or "share 0.8 you returned" in str(failed.value)


def test_lr_floor_messages_state_the_share_of_every_case() -> None:
    from mpcourse.exercises.pure_bf16 import _lr_floor_cases

    for case, _, _, share in _lr_floor_cases():
        assert case.endswith(f"share {share}"), case
    with pytest.raises(
        ExerciseFailed, match="Linear\\(64, 32\\) weight .*, share 0.5 you returned .*: that looks like"
    ):
        check("pure_bf16-lr-floor", _lr_floor_wrong("whole-gap"))
