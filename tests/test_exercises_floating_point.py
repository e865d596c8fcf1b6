"""Checks of chapter floating_point: reference solutions pass, realistic mistakes fail."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch

from mpcourse import formats
from mpcourse.exercises import ExerciseFailed, check

# ---- decode ----------------------------------------------------------------------------------------


def decode_reference(bits: int, exponent_bits: int, mantissa_bits: int) -> float:
    e, m = exponent_bits, mantissa_bits
    bias = 2 ** (e - 1) - 1
    sign = -1.0 if (bits >> (e + m)) & 1 else 1.0
    field = (bits >> m) & (2**e - 1)
    mantissa = bits & (2**m - 1)
    if field == 2**e - 1:
        return sign * math.inf if mantissa == 0 else math.nan
    if field == 0:
        return sign * 2.0 ** (1 - bias) * (mantissa / 2**m)
    return sign * 2.0 ** (field - bias) * (1 + mantissa / 2**m)


def _wrong_decoder(variant: str):
    def decode(bits: int, e: int, m: int) -> float:
        bias = 2 ** (e - 1) - 1
        sign = -1.0 if (bits >> (e + m)) & 1 else 1.0
        field = (bits >> m) & (2**e - 1)
        mantissa = bits & (2**m - 1)
        frac = mantissa / 2**m
        if field == 2**e - 1:
            if variant == "inf-is-nan":
                return math.nan
            return sign * math.inf if mantissa == 0 else math.nan
        if field == 0:
            if variant == "subnormal-minus-bias":
                return sign * 2.0 ** (-bias) * frac
            if variant == "subnormal-hidden-bit":
                return sign * 2.0 ** (1 - bias) * (1 + frac)
            if variant == "positive-zero":
                return 2.0 ** (1 - bias) * frac if mantissa == 0 else sign * 2.0 ** (1 - bias) * frac
            return sign * 2.0 ** (1 - bias) * frac
        if variant == "no-hidden-bit":
            return sign * 2.0 ** (field - bias) * frac
        if variant == "bias-off-by-one":
            return sign * 2.0 ** (field - bias - 1) * (1 + frac)
        if variant == "no-sign":
            return 2.0 ** (field - bias) * (1 + frac)
        if variant == "returns-string":
            return str(sign * 2.0 ** (field - bias) * (1 + frac))
        return sign * 2.0 ** (field - bias) * (1 + frac)

    return decode


def test_decode_accepts_the_reference() -> None:
    check("floating_point-decode", decode_reference)


@pytest.mark.parametrize(
    "variant, message",
    [
        ("subnormal-minus-bias", "exponent -bias"),
        ("subnormal-hidden-bit", "hidden 1"),
        ("no-hidden-bit", "hidden bit forgotten"),
        ("bias-off-by-one", "bias of 2"),
        ("no-sign", "sign bit ignored"),
        ("inf-is-nan", "is inf"),
        ("positive-zero", "signed zero"),
        ("returns-string", "not a number"),
    ],
)
def test_decode_rejects_realistic_mistakes(variant: str, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("floating_point-decode", _wrong_decoder(variant))


# ---- limits ------------------------------------------------------------------------------------------


def limits_reference(exponent_bits: int, mantissa_bits: int) -> dict[str, float]:
    e, m = exponent_bits, mantissa_bits
    bias = 2 ** (e - 1) - 1
    emax, emin = 2**e - 2 - bias, 1 - bias
    return {
        "max": (2 - 2.0**-m) * 2.0**emax,
        "tiny": 2.0**emin,
        "smallest_subnormal": 2.0 ** (emin - m),
        "eps": 2.0**-m,
    }


def test_limits_accept_the_reference() -> None:
    check("floating_point-limits", limits_reference)


def _limits_with(**changes):
    def wrong(e: int, m: int) -> dict[str, float]:
        out = limits_reference(e, m)
        bias = 2 ** (e - 1) - 1
        for key, rule in changes.items():
            out[key] = rule(e, m, bias)
        return out

    return wrong


@pytest.mark.parametrize(
    "wrong, message",
    [
        (_limits_with(max=lambda e, m, b: (2 - 2.0**-m) * 2.0 ** (2**e - 1 - b)), "all-ones exponent"),
        (_limits_with(max=lambda e, m, b: 2.0 ** (2**e - 1 - b)), "without the mantissa"),
        (_limits_with(tiny=lambda e, m, b: 2.0**-b), "2\\^-bias"),
        (_limits_with(smallest_subnormal=lambda e, m, b: 2.0 ** (-b - m)), "half too small"),
        (_limits_with(smallest_subnormal=lambda e, m, b: 2.0 ** (1 - b)), "not right"),
        (_limits_with(eps=lambda e, m, b: 2.0 ** -(m + 1)), "unit roundoff"),
        (_limits_with(eps=lambda e, m, b: 1 / (2**m + 1)), "not right"),
        (lambda e, m: tuple(limits_reference(e, m).values()), "dict with exactly the keys"),
    ],
)
def test_limits_reject_realistic_mistakes(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("floating_point-limits", wrong)


# ---- fp32 -> bf16 with integer operations -------------------------------------------------------------


def bf16_reference(x: np.ndarray) -> np.ndarray:
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    quiet_nan = (u >> 16) | 0x40
    return np.where(np.isnan(x), quiet_nan, rounded).astype(np.uint16)


def test_bf16_accepts_the_reference() -> None:
    check("floating_point-bf16-rne", bf16_reference)


def bf16_with_torch_integers(x: np.ndarray) -> np.ndarray:
    """The same integer rounding done with torch's integer tensors, and a bf16 *view* of the result at
    the end (a reinterpretation of bits, not a conversion): also the learner's own rounding."""
    u = torch.from_numpy(np.asarray(x, np.float32).view(np.int32).astype(np.int64))
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
    bits = torch.where(torch.from_numpy(np.isnan(x)), ((u >> 16) | 0x40) & 0xFFFF, rounded)
    as_bf16 = bits.to(torch.int32).to(torch.int16).view(torch.bfloat16)  # reinterpretation only
    return as_bf16.view(torch.int16).numpy().view(np.uint16)


def test_bf16_accepts_integer_rounding_in_torch() -> None:
    check("floating_point-bf16-rne", bf16_with_torch_integers)


def bf16_by_ml_dtypes(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # signalling NaNs among the inputs
        return x.astype(ml_dtypes.bfloat16).view(np.uint16)


def bf16_by_ml_dtypes_asarray(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # np.asarray's cast is not seen at run time: caught by name
        return np.asarray(np.asarray(x), dtype=ml_dtypes.bfloat16).view(np.uint16)


@pytest.mark.parametrize(
    "library_cast, message",
    [
        (lambda x: torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16), "torch"),
        (lambda x: torch.from_numpy(np.asarray(x)).bfloat16().view(torch.uint16).numpy(), "torch"),
        (lambda x: torch.tensor(np.asarray(x), dtype=torch.bfloat16).view(torch.uint16).numpy(), "torch"),
        (lambda x: formats.BF16.encode(x), "mpcourse.formats"),
        (
            lambda x: formats.BF16.encode(formats.round_tensor(torch.from_numpy(np.asarray(x)), "bf16")),
            "formats",
        ),
        (bf16_by_ml_dtypes, r"astype\(bfloat16\) \(ml_dtypes\)"),
        (bf16_by_ml_dtypes_asarray, "ml_dtypes"),
    ],
)
def test_bf16_rejects_a_library_cast(library_cast, message: str) -> None:
    """A library's cast gives exactly the right bits; the exercise is to round with integer operations."""
    with pytest.raises(ExerciseFailed, match=f"lets a library round to bf16: .*{message}"):
        check("floating_point-bf16-rne", library_cast)


def _u(x):
    return np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda x: (_u(x) >> 16).astype(np.uint16), "NaN with pattern"),  # truncation also ruins NaNs
        (lambda x: np.where(np.isnan(x), 0x7FC0, _u(x) >> 16).astype(np.uint16), "truncations"),
        (
            lambda x: np.where(np.isnan(x), 0x7FC0, (_u(x) + 0x8000) >> 16).astype(np.uint16),
            "rounded up, away",
        ),
        (lambda x: ((_u(x) + 0x7FFF + ((_u(x) >> 16) & 1)) >> 16).astype(np.uint16), "NaN with pattern"),
        (lambda x: x.astype(np.float32), "dtype float32"),
        (lambda x: (_u(x) + 0x7FFF + ((_u(x) >> 16) & 1)).astype(np.int64), "fit in 16 bits"),
        (
            lambda x: np.where(np.isnan(x), 0x7FC0, (_u(x) + 0x7FFF) >> 16).astype(np.uint16),
            "rounded down, away",
        ),
        (
            lambda x: np.where(np.isnan(x), 0x7FC0, (_u(x) + 0x7FFF + ((_u(x) >> 15) & 1)) >> 16).astype(
                np.uint16
            ),
            "rounded up",
        ),
        (lambda x: np.where(np.isnan(x), 0x7FC0, (_u(x) + 0x7FFF + ((_u(x) >> 16) & 1)) >> 16) ^ 1, "gave"),
    ],
)
def test_bf16_rejects_realistic_mistakes(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("floating_point-bf16-rne", wrong)


# ---- fp16 overflow -------------------------------------------------------------------------------------


def overflow_reference(x: np.ndarray) -> np.ndarray:
    return np.abs(x) >= 65520  # max 65504 plus half the gap (32) at the top; the tie goes to even = up


def test_overflow_accepts_the_reference_and_formats() -> None:
    check("floating_point-overflow", overflow_reference)
    check("floating_point-overflow", lambda x: np.isinf(formats.FP16.round(x)))


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda x: np.abs(x) > 65504, "everything above max"),
        (lambda x: np.abs(x) > 65520, "tie at exactly 65520"),
        (lambda x: np.abs(x) >= 65536, "from 65520 up"),
        (lambda x: x >= 65520, "negative values"),
        (lambda x: (np.abs(x) >= 65520).astype(int), "boolean array"),
        (lambda x: np.abs(x) >= 65519, "not|says"),
    ],
)
def test_overflow_rejects_realistic_mistakes(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("floating_point-overflow", wrong)


# ---- the stalled sum ---------------------------------------------------------------------------------------


def stall_reference(fmt, largest_addend: float) -> float:
    return largest_addend * 2 / fmt.eps


def test_stall_accepts_the_reference() -> None:
    check("floating_point-stall", stall_reference)
    check("floating_point-stall", lambda fmt, a: a * 2.0 ** (fmt.mantissa_bits + 1))


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda fmt, a: a / fmt.eps, "half the value"),
        (lambda fmt, a: 4 * a / fmt.eps, "twice the value"),
        (lambda fmt, a: 2.0 ** (fmt.mantissa_bits + 1), "not right"),  # forgets the addend
        (lambda fmt, a: a / fmt.eps**2, "not right"),
    ],
)
def test_stall_rejects_realistic_mistakes(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("floating_point-stall", wrong)
