"""Checks of chapter floating_point: reference solutions and other valid answers pass, realistic
mistakes fail with the diagnosis of that mistake, and library shortcuts are refused."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch

from mpcourse import formats
from mpcourse.exercises import ExerciseFailed, check

LABELS = [
    "floating_point-decode",
    "floating_point-limits",
    "floating_point-bf16-rne",
    "floating_point-overflow",
    "floating_point-stall",
]

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


def decode_from_a_bit_string(bits: int, e: int, m: int) -> float:
    """Another valid answer: the fields sliced from a string of bits, the value built with ldexp."""
    s = format(bits, f"0{1 + e + m}b")
    negative, field, mantissa = s[0] == "1", int(s[1 : 1 + e], 2), int(s[1 + e :], 2)
    if field == 2**e - 1:
        value = math.inf if mantissa == 0 else math.nan
    else:
        significand = mantissa + (2**m if field else 0)  # an integer: the hidden bit joins the mantissa
        value = math.ldexp(significand, max(field, 1) - (2 ** (e - 1) - 1) - m)
    return -value if negative else value


def test_decode_accepts_the_reference_and_another_method(capsys: pytest.CaptureFixture[str]) -> None:
    check("floating_point-decode", decode_reference)
    check("floating_point-decode", decode_from_a_bit_string)
    out = capsys.readouterr()
    assert out.out.count("correct") == 2 and out.err == ""


def _wrong_decoder(variant: str):
    def decode(bits: int, e: int, m: int) -> float:
        bias = 2 ** (e - 1) - 1
        if variant == "bias-2^(e-1)":
            bias += 1
        if variant == "bias-2^(e-1)-2":
            bias -= 1
        sign = -1.0 if (bits >> (e + m)) & 1 else 1.0
        field = (bits >> m) & (2**e - 1)
        mantissa = bits & (2**m - 1)
        frac = mantissa / 2**m
        if variant == "mantissa-width":
            frac = mantissa / 2 ** (m + 1)
        if field == 2**e - 1 and variant != "no-specials":
            if variant == "inf-is-nan":
                return math.nan
            return sign * math.inf if mantissa == 0 else math.nan
        if variant == "zero-field-as-normal":  # no branch for exponent field 0 at all
            return sign * 2.0 ** (field - bias) * (1 + frac)
        if field == 0:
            if variant == "zero-field-as-normal-but-zero":
                return sign * 0.0 if mantissa == 0 else sign * 2.0 ** (field - bias) * (1 + frac)
            if variant == "subnormal-minus-bias":
                return sign * 2.0 ** (-bias) * frac
            if variant == "both-off":
                return sign * 2.0 ** (-bias - 1) * frac
            if variant == "subnormal-hidden-bit":
                return sign * 2.0 ** (1 - bias) * (1 + frac)
            if variant == "positive-zero":
                return 2.0 ** (1 - bias) * frac if mantissa == 0 else sign * 2.0 ** (1 - bias) * frac
            return sign * 2.0 ** (1 - bias) * frac
        if variant == "both-off":  # a bias of 2^(e-1) for normals, and subnormals one binade too low
            return sign * 2.0 ** (field - bias - 1) * (1 + frac)
        if variant == "no-hidden-bit":
            return sign * 2.0 ** (field - bias) * frac
        if variant == "no-sign":
            return 2.0 ** (field - bias) * (1 + frac)
        if variant == "returns-string":
            return str(sign * 2.0 ** (field - bias) * (1 + frac))
        return sign * 2.0 ** (field - bias) * (1 + frac)

    return decode


@pytest.mark.parametrize(
    "variant, message",
    [
        ("subnormal-minus-bias", "subnormal read with exponent -bias"),
        ("subnormal-hidden-bit", "hidden 1, which subnormals do not have"),
        ("no-hidden-bit", "hidden bit forgotten"),
        ("no-sign", "sign bit ignored"),
        ("mantissa-width", r"fraction of 2\^\(m\+1\)"),
        ("bias-2^(e-1)-2", "2\\^1 times the right one, so every exponent is off by 1"),
        ("both-off", r"looks like a bias of 2\^\(e-1\)"),
        ("inf-is-nan", "is inf"),
        ("no-specials", "is inf"),
        ("positive-zero", "signed zero"),
        ("returns-string", "not a number"),
    ],
)
def test_decode_rejects_realistic_mistakes(variant: str, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("floating_point-decode", _wrong_decoder(variant))


def test_decode_names_a_wrong_bias_as_such_not_as_a_subnormal_mistake() -> None:
    """Defect of issue 15: a bias of 2^(e-1) also moves the subnormals, and was diagnosed as the
    subnormal mistake from the first pattern it got wrong (fp16's 0x1)."""
    with pytest.raises(ExerciseFailed, match=r"a bias of 2\^\(e-1\) instead of 2\^\(e-1\) - 1") as failed:
        check("floating_point-decode", _wrong_decoder("bias-2^(e-1)"))
    assert "subnormal" not in str(failed.value).split("\nHint")[0]
    assert "pattern 0x3c00" in str(failed.value)  # the example shown is a normal number


@pytest.mark.parametrize("variant", ["zero-field-as-normal", "zero-field-as-normal-but-zero"])
def test_decode_recognises_the_zero_exponent_field_read_as_a_normal_one(variant: str) -> None:
    """Defect of issue 15: the commonest subnormal mistake, no branch for exponent field 0 (a hidden 1
    and exponent 0 - bias), with or without zero treated apart, was not recognised."""
    with pytest.raises(ExerciseFailed, match="exponent field 0 read like a normal exponent"):
        check("floating_point-decode", _wrong_decoder(variant))


@pytest.mark.parametrize(
    "shortcut",
    [
        lambda bits, e, m: float(formats.custom(e, m).decode(bits)),
        lambda bits, e, m: float(formats.get("fp16").decode(bits)) if (e, m) == (5, 10) else 0.0,
    ],
)
def test_decode_refuses_a_library_decoder(shortcut) -> None:
    with pytest.raises(ExerciseFailed, match="lets a library decode the patterns"):
        check("floating_point-decode", shortcut)


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


def limits_from_integers(e: int, m: int) -> dict[str, float]:
    """Another valid answer: each limit as an integer significand times a power of two (ldexp)."""
    bias = (1 << (e - 1)) - 1
    return {
        "max": math.ldexp((1 << (m + 1)) - 1, (1 << e) - 2 - bias - m),  # 1.11...1 with m ones
        "tiny": math.ldexp(1, 1 - bias),
        "smallest_subnormal": math.ldexp(1, 1 - bias - m),
        "eps": math.ldexp(1, -m),
    }


def test_limits_accept_the_reference_and_another_method(capsys: pytest.CaptureFixture[str]) -> None:
    check("floating_point-limits", limits_reference)
    check("floating_point-limits", limits_from_integers)
    check("floating_point-limits", lambda e, m: {k: np.float64(v) for k, v in limits_reference(e, m).items()})
    assert capsys.readouterr().err == ""


def _limits_with(**changes):
    def wrong(e: int, m: int) -> dict[str, float]:
        out = limits_reference(e, m)
        bias = 2 ** (e - 1) - 1
        for key, rule in changes.items():
            out[key] = rule(e, m, bias)
        return out

    return wrong


def _limits_with_bias_2_to_the_e_minus_1(e: int, m: int) -> dict[str, float]:
    bias = 2 ** (e - 1)
    emax, emin = 2**e - 2 - bias, 1 - bias
    return {
        "max": (2 - 2.0**-m) * 2.0**emax,
        "tiny": 2.0**emin,
        "smallest_subnormal": 2.0 ** (emin - m),
        "eps": 2.0**-m,
    }


@pytest.mark.parametrize(
    "wrong, message",
    [
        (_limits_with(max=lambda e, m, b: (2 - 2.0**-m) * 2.0 ** (2**e - 1 - b)), "all-ones exponent"),
        (_limits_with(max=lambda e, m, b: 2.0 ** (2**e - 1 - b)), r"2\^\(emax\+1\)"),
        (_limits_with(max=lambda e, m, b: 2.0 ** (2**e - 2 - b)), "mantissa bits were all 0"),
        (_limits_with(max=lambda e, m, b: (1 - 2.0**-m) * 2.0 ** (2**e - 2 - b)), "without the hidden bit"),
        (_limits_with(tiny=lambda e, m, b: 2.0**-b), "2\\^-bias"),
        (_limits_with(tiny=lambda e, m, b: 2.0 ** (1 - b - m)), "confused with the smallest subnormal"),
        (_limits_with(smallest_subnormal=lambda e, m, b: 2.0 ** (-b - m)), "half too small"),
        (_limits_with(smallest_subnormal=lambda e, m, b: 2.0 ** (2 - b - m)), "twice too large"),
        (_limits_with(smallest_subnormal=lambda e, m, b: 2.0 ** (1 - b)), "no subnormals"),
        (_limits_with(eps=lambda e, m, b: 2.0 ** -(m + 1)), "unit roundoff"),
        (_limits_with(eps=lambda e, m, b: 2.0 ** -(m - 1)), "one bit too large"),
        (_limits_with(eps=lambda e, m, b: 1 / (2**m + 1)), "not right"),
        (_limits_with_bias_2_to_the_e_minus_1, r"those of a bias of 2\^\(e-1\) = 16"),
        (lambda e, m: tuple(limits_reference(e, m).values()), "dict with exactly the keys"),
        (lambda e, m: {k: "?" for k in limits_reference(e, m)}, "not numbers"),
    ],
)
def test_limits_reject_realistic_mistakes(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("floating_point-limits", wrong)


def _limits_from_formats(e: int, m: int) -> dict[str, float]:
    fmt = formats.custom(e, m)
    return {"max": fmt.max, "tiny": fmt.tiny, "smallest_subnormal": fmt.smallest_subnormal, "eps": fmt.eps}


def _limits_from_finfo(e: int, m: int) -> dict[str, float]:
    if (e, m) == (5, 10):
        info = np.finfo(np.float16)
        return {
            "max": info.max,
            "tiny": info.tiny,
            "smallest_subnormal": info.smallest_subnormal,
            "eps": info.eps,
        }
    return limits_reference(e, m)


@pytest.mark.parametrize("shortcut", [_limits_from_formats, _limits_from_finfo])
def test_limits_refuse_a_table_of_limits(shortcut) -> None:
    with pytest.raises(ExerciseFailed, match="reads the limits from a library"):
        check("floating_point-limits", shortcut)


# ---- fp32 -> bf16 with integer operations -------------------------------------------------------------


def bf16_reference(x: np.ndarray) -> np.ndarray:
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    quiet_nan = (u >> 16) | 0x40
    return np.where(np.isnan(x), quiet_nan, rounded).astype(np.uint16)


def bf16_with_torch_integers(x: np.ndarray) -> np.ndarray:
    """The same integer rounding done with torch's integer tensors, and a bf16 *view* of the result at
    the end (a reinterpretation of bits, not a conversion): also the learner's own rounding."""
    u = torch.from_numpy(np.asarray(x, np.float32).view(np.int32).astype(np.int64))
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
    bits = torch.where(torch.from_numpy(np.isnan(x)), ((u >> 16) | 0x40) & 0xFFFF, rounded)
    as_bf16 = bits.to(torch.int32).to(torch.int16).view(torch.bfloat16)  # reinterpretation only
    return as_bf16.view(torch.int16).numpy().view(np.uint16)


def bf16_one_value_at_a_time(x: np.ndarray) -> np.ndarray:
    """A plain Python loop that compares the dropped half with halfway, and a NaN without a payload."""
    out = []
    for u in x.view(np.uint32).tolist():
        high, low = u >> 16, u & 0xFFFF
        if (u & 0x7F800000) == 0x7F800000 and u & 0x007FFFFF:
            out.append((high & 0x8000) | 0x7FC0)
            continue
        if low > 0x8000 or (low == 0x8000 and high & 1):
            high += 1
        out.append(high)
    return np.array(out, dtype=np.uint16)


def test_bf16_accepts_the_reference_and_other_methods(capsys: pytest.CaptureFixture[str]) -> None:
    check("floating_point-bf16-rne", bf16_reference)
    check("floating_point-bf16-rne", bf16_with_torch_integers)
    check("floating_point-bf16-rne", bf16_one_value_at_a_time)
    assert capsys.readouterr().err == ""


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


def _rne(x):
    return np.where(np.isnan(x), 0x7FC0, (_u(x) + 0x7FFF + ((_u(x) >> 16) & 1)) >> 16)


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
        (lambda x: _rne(x) ^ 1, "gave"),
        (  # clamped to the largest finite value, as a saturating cast would
            lambda x: np.where(
                np.isinf(x) | ((_rne(x) & 0x7FFF) == 0x7F80), (_rne(x) & 0x8000) | 0x7F7F, _rne(x)
            ).astype(np.uint16),
            "you saturated it",
        ),
        (  # subnormals flushed to zero, as TPUs do
            lambda x: np.where((_u(x) & 0x7F800000) == 0, _rne(x) & 0x8000, _rne(x)).astype(np.uint16),
            "flush subnormals to zero",
        ),
    ],
)
def test_bf16_rejects_realistic_mistakes(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("floating_point-bf16-rne", wrong)


# ---- fp16 overflow -------------------------------------------------------------------------------------


def overflow_reference(x: np.ndarray) -> np.ndarray:
    return np.abs(x) >= 65520  # max 65504 plus half the gap (32) at the top; the tie goes to even = up


def overflow_from_finfo(x: np.ndarray) -> np.ndarray:
    """Another valid answer: the boundary from numpy's limits (read, not cast), on each side of zero."""
    largest = np.finfo(np.float16).max
    gap = float(largest) - float(np.nextafter(largest, np.finfo(np.float16).tiny))  # the top binade's
    boundary = float(largest) + gap / 2
    return (x >= boundary) | (x <= -boundary)


def test_overflow_accepts_the_reference_and_another_method(capsys: pytest.CaptureFixture[str]) -> None:
    check("floating_point-overflow", overflow_reference)
    check("floating_point-overflow", overflow_from_finfo)
    assert capsys.readouterr().err == ""


def _cast_with_numpy(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.isinf(x.astype(np.float16))


def _cast_by_asarray(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.isinf(np.asarray(x, dtype=np.float16))


@pytest.mark.parametrize(
    "shortcut, message",
    [
        (_cast_with_numpy, r"astype\(float16\)"),
        (_cast_by_asarray, "float16 \\(named in your function\\)"),
        (lambda x: torch.from_numpy(np.asarray(x)).half().isinf().numpy(), "torch"),
        (lambda x: np.isinf(formats.FP16.round(x)), "mpcourse.formats"),
    ],
)
def test_overflow_refuses_a_cast_to_fp16(shortcut, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=f"converts x to fp16: .*{message}"):
        check("floating_point-overflow", shortcut)


def _through_float32(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # 1e300 does not fit in float32 either
        return np.abs(x.astype(np.float32)) >= 65520


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda x: np.abs(x) > 65504, "everything above max"),
        (lambda x: np.abs(x) > 65520, "tie at exactly 65520"),
        (lambda x: np.abs(x) >= 65536, "from 65520 up to 65536"),
        (lambda x: x >= 65520, "negative values"),
        (_through_float32, "round x to float32 first"),
        (lambda x: (np.abs(x) >= 65520).astype(int), "boolean array"),
        (lambda x: np.abs(x) >= 65519, "for x = 65519.0 you said True"),
    ],
)
def test_overflow_rejects_realistic_mistakes(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("floating_point-overflow", wrong)


# ---- the stalled sum ---------------------------------------------------------------------------------------


def stall_reference(fmt, largest_addend: float) -> float:
    return largest_addend * 2 / fmt.eps


def stall_by_doubling(fmt, largest_addend: float) -> float:
    """Another valid answer: climb the powers of two until half the gap reaches the addend."""
    total = largest_addend
    while fmt.spacing(total) / 2 < largest_addend:
        total *= 2
    return float(total)


def test_stall_accepts_the_reference_and_other_methods(capsys: pytest.CaptureFixture[str]) -> None:
    check("floating_point-stall", stall_reference)
    check("floating_point-stall", lambda fmt, a: math.ldexp(a, fmt.mantissa_bits + 1))
    check("floating_point-stall", stall_by_doubling)
    assert capsys.readouterr().err == ""


def stall_by_simulating(fmt, largest_addend: float) -> float:
    total = 0.0
    while float(fmt.round(total + largest_addend)) != total:
        total = float(fmt.round(total + largest_addend))
    return total


def stall_by_torch(fmt, largest_addend: float) -> float:
    total = torch.zeros((), dtype=fmt.torch_dtype or torch.float32)
    while total + largest_addend != total:
        total = total + largest_addend
    return total.item()


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda fmt, a: a / fmt.eps, "there the sum still grows"),
        (lambda fmt, a: 4 * a / fmt.eps, "stops growing before it gets there"),
        (lambda fmt, a: 2.0 ** (fmt.mantissa_bits + 1), "not right"),  # forgets the addend
        (lambda fmt, a: a / fmt.eps**2, "not right"),
        (stall_by_simulating, "rounds in the format itself, with mpcourse.formats"),
        (stall_by_torch, "rounds in the format itself, with torch"),
    ],
)
def test_stall_rejects_realistic_mistakes(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("floating_point-stall", wrong)


# ---- every check -----------------------------------------------------------------------------------------

WRONG = {
    "floating_point-decode": _wrong_decoder("both-off"),
    "floating_point-limits": _limits_with(eps=lambda e, m, b: 1 / (2**m + 1)),
    "floating_point-bf16-rne": lambda x: _rne(x) ^ 1,
    "floating_point-overflow": lambda x: np.abs(x) >= 65519,
    "floating_point-stall": lambda fmt, a: a / fmt.eps**2,
}


@pytest.mark.parametrize("label", LABELS)
def test_a_wrong_answer_gets_the_same_message_every_time(label: str) -> None:
    messages = set()
    for _ in range(2):
        with pytest.raises(ExerciseFailed) as failed:
            check(label, WRONG[label])
        messages.add(str(failed.value))
    assert len(messages) == 1
