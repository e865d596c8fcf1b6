"""The checks of chapter fp8: reference solutions pass, realistic mistakes fail."""

from __future__ import annotations

import math

import pytest
import torch

from mpcourse import formats, fp8
from mpcourse.exercises import ExerciseFailed, check

FP8 = torch.float8_e4m3fn


# ---- fp8-tensorwise ------------------------------------------------------------------------------------


def tensorwise_reference(x):
    x = x.float()
    amax = x.abs().max()
    scale = amax / 448.0 if amax > 0 else torch.tensor(1.0)
    return (x / scale).clamp(-448, 448).to(FP8), scale


def tensorwise_reciprocal(x):  # multiplying by 448 / amax is as right as dividing by amax / 448
    x = x.float()
    amax = x.abs().max()
    if amax == 0:
        return x.to(FP8), torch.tensor(1.0)
    return (x * (448.0 / amax)).clamp(-448, 448).to(FP8), amax / 448.0


def test_tensorwise_accepts_the_reference_and_the_reciprocal_form(capsys) -> None:
    check("fp8-tensorwise", tensorwise_reference)
    check("fp8-tensorwise", tensorwise_reciprocal)
    assert "correct" in capsys.readouterr().out


def _tensorwise_wrong(variant):
    def fn(x):
        x = x.float()
        amax = x.abs().max()
        if variant == "max-not-abs":
            amax = x.max()
        if variant == "e5m2-max":
            scale = amax / 57344.0
        elif variant == "inverted":
            scale = 448.0 / amax if amax > 0 else torch.tensor(1.0)
            return (x * scale).clamp(-448, 448).to(FP8), scale
        elif variant == "unscaled":
            return x.clamp(-448, 448).to(FP8), torch.tensor(1.0)
        else:
            scale = amax / 448.0
        if variant != "zero-division" and amax == 0:
            scale = torch.tensor(1.0)
        data = x / scale
        if variant != "no-clamp":
            data = data.clamp(-448, 448)
        if variant == "float32-data":
            return data, scale
        if variant == "per-row":
            s = x.abs().amax(1, keepdim=True).clamp_min(1e-30) / 448
            return (x / s).to(FP8), s
        return data.to(FP8), scale

    return fn


@pytest.mark.parametrize(
    "variant, message",
    [
        ("max-not-abs", "x.max"),
        ("e5m2-max", "57344"),
        ("inverted", "reciprocal"),
        ("unscaled", "unscaled"),
        ("zero-division", "zeros"),
        ("float32-data", "float8_e4m3fn"),
        ("per-row", "entries"),
    ],
)
def test_tensorwise_rejects_mistakes(variant, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("fp8-tensorwise", _tensorwise_wrong(variant))


# ---- fp8-delayed ---------------------------------------------------------------------------------------


def delayed_reference(amaxes, history_len, margin=0):
    used, scale = [], 1.0
    for t in range(len(amaxes)):
        window = amaxes[max(0, t - history_len) : t]
        amax = max(window) if window else 0.0
        if 0 < amax < math.inf:
            scale = amax * 2.0**margin / 448.0
        used.append(scale)
    return used


def test_delayed_accepts_the_reference() -> None:
    check("fp8-delayed", delayed_reference)


def _delayed_wrong(variant):
    def fn(amaxes, history_len, margin=0):
        used, scale = [], 1.0
        for t in range(len(amaxes)):
            lo, hi = max(0, t - history_len), t
            if variant == "current":
                lo, hi = max(0, t - history_len + 1), t + 1
            elif variant == "too-long":
                lo = max(0, t - history_len - 1)
            elif variant == "most-recent":
                lo = max(0, t - 1)
            window = amaxes[lo:hi]
            amax = max(window) if window else 0.0
            if 0 < amax < math.inf:
                sign = -1 if variant == "margin-divides" else 1
                scale = amax * 2.0 ** (sign * margin) / 448.0
                if variant == "encode-scale":
                    scale = 448.0 / (amax * 2.0**margin)
            elif variant == "reset":
                scale = 1.0
            used.append(scale)
        return used

    return fn


@pytest.mark.parametrize(
    "variant, message",
    [
        ("current", "current scaling"),
        ("too-long", "too long"),
        ("most-recent", "most_recent"),
        ("margin-divides", "margin"),
        ("reset", "resets"),
        ("encode-scale", "not right"),
    ],
)
def test_delayed_rejects_mistakes(variant, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("fp8-delayed", _delayed_wrong(variant))


# ---- fp8-mx --------------------------------------------------------------------------------------------


def mx_reference(x):
    rows, cols = x.shape
    blocks = x.float().reshape(rows, cols // 32, 32)
    amax = blocks.abs().amax(dim=-1)
    _, e = torch.frexp(amax)  # amax = m * 2^e with m in [0.5, 1): floor(log2 amax) = e - 1
    exponent = torch.where(amax > 0, e - 1 - 8, torch.full_like(e, -127)).clamp(-127, 127)
    scales = 2.0 ** exponent.double()
    elements = (blocks / scales[..., None]).clamp(-448, 448).to(FP8).reshape(rows, cols)
    return scales.float(), elements


def mx_with_log2(x):  # the obvious solution, in float64 so floor(log2) is exact enough
    rows, cols = x.shape
    blocks = x.double().reshape(rows, cols // 32, 32)
    amax = blocks.abs().amax(dim=-1)
    exponent = torch.where(amax > 0, torch.floor(torch.log2(amax)) - 8, torch.full_like(amax, -127)).clamp(
        -127, 127
    )
    scales = torch.exp2(exponent)
    elements = (blocks / scales[..., None]).clamp(-448, 448).float().to(FP8).reshape(rows, cols)
    return scales, elements


def test_mx_accepts_the_reference_and_a_log2_solution() -> None:
    check("fp8-mx", mx_reference)
    check("fp8-mx", mx_with_log2)


def _mx_wrong(variant):
    def fn(x):
        rows, cols = x.shape
        block = 16 if variant == "block16" else 32
        blocks = x.double().reshape(rows, cols // block, block)
        if variant == "columns":
            blocks = x.double().t().reshape(cols, rows // 32 if rows % 32 == 0 else 1, -1)
        amax = blocks.abs().amax(dim=-1)
        log2 = torch.log2(amax)
        if variant == "not-pow2":
            scales = torch.where(amax > 0, amax / 448, torch.full_like(amax, 2.0**-127))
        else:
            if variant == "ceil":
                e = torch.ceil(torch.log2(amax / 448))
            elif variant == "no-emax":
                e = torch.floor(log2)
            else:
                e = torch.floor(log2) - 8
            e = torch.where(amax > 0, e, torch.full_like(amax, -127))
            if variant != "no-clamp-exponent":
                e = e.clamp(-127, 127)
            scales = torch.exp2(e)
        data = blocks / scales[..., None]
        if variant != "no-saturation":
            data = data.clamp(-448, 448)
        elements = (
            data.float().to(FP8).reshape(rows, cols)
            if variant != "columns"
            else data.float().to(FP8).reshape(cols, rows).t()
        )
        return scales, elements

    return fn


@pytest.mark.parametrize(
    "variant, message",
    [
        ("not-pow2", "powers of two"),
        ("ceil", "RCEIL"),
        ("no-emax", "without subtracting"),
        ("block16", "shape"),
        ("columns", "shape"),
        ("no-clamp-exponent", "scales differ"),
    ],
)
def test_mx_rejects_mistakes(variant, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("fp8-mx", _mx_wrong(variant))


def test_mx_rejects_unsaturated_elements() -> None:
    """Without saturation, values in (448, 512) become NaN (older torch) or must be clamped: either way it fails
    unless the cast itself saturates, as torch >= 2.12's eager cast does (PR 178817; then the answer is right)."""
    wrong = _mx_wrong("no-saturation")
    if formats.torch_e4m3fn_saturates():  # this torch saturates by itself: the answer is then correct
        check("fp8-mx", wrong)
    else:
        with pytest.raises(ExerciseFailed, match="NaN|differ"):
            check("fp8-mx", wrong)


# ---- fp8-choose-recipe ---------------------------------------------------------------------------------


def choose_reference(x, candidates, max_bits):
    best, best_snr = None, -math.inf
    for name in candidates:
        q = fp8.quantize(x, name)
        if q.bits_per_element > max_bits:
            continue
        snr = fp8.error_stats(x, q)["snr_db"]
        if snr > best_snr:
            best, best_snr = name, snr
    if best is None:
        raise ValueError(f"no candidate fits in {max_bits} bits per element")
    return best


def test_choose_recipe_accepts_the_reference() -> None:
    check("fp8-choose-recipe", choose_reference)


def _choose_wrong(variant):
    def fn(x, candidates, max_bits):
        scored = []
        for name in candidates:
            q = fp8.quantize(x, name)
            bits = q.fmt.bits if variant == "ignore-scales" else q.bits_per_element
            if variant != "ignore-budget" and (bits >= max_bits if variant == "strict" else bits > max_bits):
                continue
            scored.append((fp8.error_stats(x, q)["snr_db"], name))
        if not scored:
            if variant == "no-error":
                return candidates[0]
            raise ValueError("none fits")
        return (min if variant == "lowest" else max)(scored)[1]

    return fn


@pytest.mark.parametrize(
    "variant, message",
    [
        ("ignore-budget", "over the budget"),
        ("ignore-scales", "over the budget"),
        ("lowest", "lowest"),
        ("strict", "does better"),
        ("no-error", "raise ValueError"),
    ],
)
def test_choose_recipe_rejects_mistakes(variant, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("fp8-choose-recipe", _choose_wrong(variant))
