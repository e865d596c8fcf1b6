"""Checks for the exercises of chapter ``floating_point``.

References are independent of the learner's code and of the chapter's: numpy's float16, torch's
casts and fp8 dtypes, and :mod:`mpcourse.formats` (itself tested against ml_dtypes and torch).
"""

from __future__ import annotations

import contextlib
import io
import math
import tokenize
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from .. import formats
from . import call, expect_close, fail, register

# ---- floating_point-decode ------------------------------------------------------------------------


def _ieee_decode_variants(bits: int, e: int, m: int) -> dict[str, float]:
    """Values of one pattern under the usual wrong readings, to name the mistake we see."""
    bias = (1 << (e - 1)) - 1
    sign = -1.0 if (bits >> (e + m)) & 1 else 1.0
    field = (bits >> m) & ((1 << e) - 1)
    mantissa = bits & ((1 << m) - 1)
    frac = mantissa / (1 << m)
    if field == 0:
        return {
            "a subnormal read with exponent -bias instead of 1 - bias": sign * 2.0 ** (-bias) * frac,
            "a subnormal read with a hidden 1 (subnormals have none)": sign * 2.0 ** (1 - bias) * (1 + frac),
            "the sign bit ignored": 2.0 ** (1 - bias) * frac,
        }
    if field == (1 << e) - 1:
        return {}
    return {
        "the hidden bit forgotten (a normal significand is 1 + mantissa / 2^m)": sign
        * 2.0 ** (field - bias)
        * frac,
        "a bias of 2^(e-1) instead of 2^(e-1) - 1": sign * 2.0 ** (field - bias - 1) * (1 + frac),
        "the sign bit ignored": 2.0 ** (field - bias) * (1 + frac),
        "the mantissa read as a fraction of 2^(m+1)": sign
        * 2.0 ** (field - bias)
        * (1 + mantissa / (1 << (m + 1))),
    }


def _reference_patterns() -> list[tuple[str, int, int, np.ndarray, np.ndarray]]:
    """(name, e, m, patterns, reference values) from numpy's float16, torch's E5M2, and E3M4."""
    rng = np.random.default_rng(7)
    fp16_patterns = np.unique(
        np.concatenate(
            [
                np.arange(0, 64),
                np.arange(0x7BF0, 0x7C10),
                np.arange(0xFBF0, 0x10000),
                rng.integers(0, 1 << 16, 3000),
            ]
        )
    ).astype(np.uint16)
    e5m2_patterns = np.arange(256, dtype=np.uint8)
    return [
        ("float16", 5, 10, fp16_patterns, fp16_patterns.view(np.float16).astype(np.float64)),
        (
            "E5M2",
            5,
            2,
            e5m2_patterns,
            torch.from_numpy(e5m2_patterns).view(torch.float8_e5m2).double().numpy(),
        ),
        ("E3M4 (an IEEE-like 8-bit format)", 3, 4, e5m2_patterns, formats.custom(3, 4).decode(e5m2_patterns)),
    ]


@register("floating_point-decode")
def check_decode(decode: Any) -> None:
    """``decode(bits, exponent_bits, mantissa_bits)``: the value of one pattern of an IEEE-like format."""
    label = "floating_point-decode"
    hint = (
        "split the pattern into sign, exponent field and mantissa field; then handle the three kinds "
        "of exponent field: all zeros (zero and subnormals), all ones (infinity and NaN), anything "
        "else (normal numbers, with the hidden bit)."
    )
    for name, e, m, patterns, want in _reference_patterns():
        for bits, value in zip(patterns.tolist(), want.tolist()):
            got = call(label, decode, int(bits), e, m)
            case = f"{name} pattern {bits:#x} ({formats.custom(e, m).bit_string(bits)})"
            if not isinstance(got, (int, float, np.floating, np.integer)):
                fail(
                    label,
                    f"for {case} you returned {type(got).__name__}, not a number.",
                    "return a Python float.",
                )
            got = float(got)
            if math.isnan(value):
                if not math.isnan(got):
                    fail(
                        label,
                        f"{case} is a NaN; you returned {got!r}.",
                        "exponent all ones with a non-zero mantissa is NaN.",
                    )
                continue
            if got == value and math.copysign(1, got) == math.copysign(1, value):
                continue
            if math.isinf(value):
                fail(
                    label,
                    f"{case} is {value}; you returned {got!r}.",
                    "exponent all ones with a zero mantissa is infinity.",
                )
            if value == 0 and got == 0:
                fail(
                    label,
                    f"{case} is {value!r} (a signed zero); you returned {got!r}.",
                    "zero keeps its sign: -0.0.",
                )
            for mistake, wrong in _ieee_decode_variants(bits, e, m).items():
                if got == wrong:
                    fail(label, f"for {case} you returned {got!r}: that is {mistake}.", hint)
            fail(label, f"for {case} you returned {got!r}; the value is not that.", hint)


# ---- floating_point-limits ---------------------------------------------------------------------------

_LIMIT_KEYS = ("max", "tiny", "smallest_subnormal", "eps")


def _limit_variants(e: int, m: int) -> dict[str, dict[str, float]]:
    """For each limit, the values the usual wrong derivations give, by mistake."""
    bias = (1 << (e - 1)) - 1
    emax, emin = (1 << e) - 2 - bias, 1 - bias
    all_ones = (1 << e) - 1 - bias  # the exponent of the reserved top binade
    return {
        "max": {
            "the all-ones exponent used for max (IEEE formats reserve it for inf and NaN)": (2 - 2.0**-m)
            * 2.0**all_ones,
            "max taken as 2^(emax+1), without the mantissa": 2.0 ** (emax + 1),
            "max taken as 2^emax, ignoring the mantissa bits": 2.0**emax,
        },
        "tiny": {"tiny taken as 2^-bias (the smallest normal exponent is 1 - bias)": 2.0**-bias},
        "smallest_subnormal": {
            "the smallest subnormal half too small (subnormals share the smallest normal's exponent, "
            "1 - bias)": 2.0 ** (emin - m - 1),
        },
        "eps": {
            "eps confused with the unit roundoff eps/2 = 2^-(m+1)": 2.0 ** -(m + 1),
            "eps one bit too large": 2.0 ** -(m - 1),
        },
    }


@register("floating_point-limits")
def check_limits(format_limits: Any) -> None:
    """``format_limits(e, m)``: max, tiny, smallest_subnormal, eps of an IEEE-like format."""
    label = "floating_point-limits"
    hint = (
        "write each as a power of two from e, m and the bias 2^(e-1) - 1: the largest exponent field of a "
        "finite number is all ones minus one; the smallest normal has exponent field 1; a subnormal step is "
        "the smallest normal divided by 2^m; eps is the gap after 1."
    )
    references = {
        (5, 10): np.finfo(np.float16),
        (8, 23): np.finfo(np.float32),
        (11, 52): np.finfo(np.float64),
    }
    for e, m in [(5, 10), (8, 7), (5, 2), (3, 4), (4, 3), (8, 23), (11, 52), (2, 5)]:
        got = call(label, format_limits, e, m)
        case = f"e={e}, m={m}"
        if not isinstance(got, dict) or set(got) != set(_LIMIT_KEYS):
            fail(
                label,
                f"for {case} you returned {got!r}.",
                f"return a dict with exactly the keys {', '.join(_LIMIT_KEYS)}.",
            )
        if (e, m) in references:  # numpy's own finfo where it has the format
            info = references[(e, m)]
            want = {
                "max": float(info.max),
                "tiny": float(info.smallest_normal),
                "smallest_subnormal": float(info.smallest_subnormal),
                "eps": float(info.eps),
            }
        else:
            fmt = formats.custom(e, m)
            want = {
                "max": fmt.max,
                "tiny": fmt.tiny,
                "smallest_subnormal": fmt.smallest_subnormal,
                "eps": fmt.eps,
            }
        for key in _LIMIT_KEYS:
            value = float(got[key])
            if value == want[key]:
                continue
            for mistake, wrong in _limit_variants(e, m)[key].items():
                if value == wrong:
                    fail(label, f"for {case}, {key} = {value!r}: {mistake}.", hint)
            expect_close(label, value, want[key], rtol=0, case=f"{case}, {key}", hint=hint)


# ---- floating_point-bf16-rne --------------------------------------------------------------------------


def _bf16_cases() -> np.ndarray:
    """float32 values: random, every kind of tie, overflow, subnormals, infinities, NaNs with payloads."""
    rng = np.random.default_rng(11)
    high = rng.integers(0, 1 << 16, 4000, dtype=np.uint32)
    ties = (high << 16) | 0x8000  # exactly halfway, with even and odd upper halves
    near = np.concatenate([ties - 1, ties + 1])
    special = np.array(
        [
            0x00000000,
            0x80000000,
            0x7F800000,
            0xFF800000,
            0x7FC00000,
            0xFFC00000,
            0x7F800001,
            0x7FFFFFFF,
            0xFF800001,
            0x7F7F8000,
            0x7F7F7FFF,
            0x7F7FFFFF,
            0x00008000,
            0x00018000,
            0x00000001,
            0x3F808000,
            0x3F818000,
        ],
        dtype=np.uint32,
    )
    random = rng.integers(0, 1 << 32, 20000, dtype=np.uint64).astype(np.uint32)
    return np.concatenate([special, ties, near, random]).astype(np.uint32).view(np.float32)


class _WatchedArray(np.ndarray):
    """The float32 input, as an ndarray subclass that notices a float -> bfloat16 ``astype``.

    numpy calls ``__array_finalize__`` for every array derived from this one (``astype`` and ``view``
    included; a view's ``base`` is its parent, a converted copy's is not), so ``x.astype(bfloat16)``
    with ml_dtypes's type is seen however the type was imported.
    """

    casts: list[str]

    def __array_finalize__(self, obj: Any) -> None:
        if not isinstance(obj, np.ndarray):
            return
        self.casts = getattr(obj, "casts", [])
        if self.dtype.name == "bfloat16" and obj.dtype.kind == "f" and self.base is not obj:
            self.casts.append(f"x.astype({self.dtype.name}) (ml_dtypes)")


def _names_used(fn: Any) -> set[str]:
    """The identifiers in ``fn``'s source (comments and strings excluded); empty if there is no source."""
    import inspect

    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        return set()
    try:
        tokens = tokenize.generate_tokens(io.StringIO(source).readline)
        return {t.string for t in tokens if t.type == tokenize.NAME}
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return set()


@contextlib.contextmanager
def _library_bf16_casts() -> Iterator[list[str]]:
    """Record conversions to bf16 that a library does: any torch call given ``torch.bfloat16`` (``.to``,
    ``.bfloat16()``, ``torch.tensor(..., dtype=...)``, ...; a ``.view`` reinterprets bits and is allowed)
    and mpcourse.formats's rounding. The exercise is to round with integer operations, which none of
    these is; their results are bit-identical to the right answer, so only watching can tell.
    """
    from torch.overrides import TorchFunctionMode

    found: list[str] = []

    class Spy(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = getattr(func, "__name__", str(func))
            to_bf16 = name == "bfloat16" or any(a is torch.bfloat16 for a in (*args, *kwargs.values()))
            if to_bf16 and name != "view":  # a view reinterprets bits: no rounding happens
                found.append(f"torch ({name} to torch.bfloat16)")
            return func(*args, **kwargs)

    originals = {
        "_round_numpy": formats.FloatFormat._round_numpy,
        "_round_with_torch": formats._round_with_torch,
    }

    def round_numpy(self: formats.FloatFormat, *args: Any, **kwargs: Any) -> Any:
        found.append(f"mpcourse.formats ({self.name})")
        return originals["_round_numpy"](self, *args, **kwargs)

    def round_with_torch(t: Any, fmt: formats.FloatFormat, **kwargs: Any) -> Any:
        found.append(f"mpcourse.formats.round_tensor ({fmt.name})")
        return originals["_round_with_torch"](t, fmt, **kwargs)

    formats.FloatFormat._round_numpy = round_numpy  # type: ignore[method-assign]
    formats._round_with_torch = round_with_torch
    try:
        with Spy():
            yield found
    finally:
        formats.FloatFormat._round_numpy = originals["_round_numpy"]  # type: ignore[method-assign]
        formats._round_with_torch = originals["_round_with_torch"]


@register("floating_point-bf16-rne")
def check_bf16_rne(fp32_to_bf16_bits: Any) -> None:
    """``fp32_to_bf16_bits(x)``: uint16 bf16 patterns of a float32 array, round to nearest even.

    Besides the values, the check makes sure the rounding is the learner's own: a library cast to bf16
    (torch, ml_dtypes, mpcourse.formats) gives the same bits but skips the exercise, so it is refused.
    """
    label = "floating_point-bf16-rne"
    x = _bf16_cases()
    watched = x.copy().view(_WatchedArray)
    watched.casts = []
    with _library_bf16_casts() as casts:
        got = call(label, fp32_to_bf16_bits, watched)
    casts += watched.casts
    if "ml_dtypes" in _names_used(fp32_to_bf16_bits):
        casts.append("ml_dtypes (named in your function)")
    if casts:
        fail(
            label,
            f"your function lets a library round to bf16: {casts[0]}. That gives the right bits, but the "
            "exercise is to do the rounding yourself.",
            "work on the integers of x.view(np.uint32): add 0x7FFF plus the last bit you keep (bit 16), "
            "shift right by 16, and treat NaNs separately. No .to(torch.bfloat16), ml_dtypes or "
            "mpcourse.formats.",
        )
    got = np.asarray(got)
    if got.shape != x.shape or not np.issubdtype(got.dtype, np.integer):
        fail(
            label,
            f"you returned an array of dtype {got.dtype} and shape {got.shape}.",
            f"return integer bit patterns (np.uint16), one per input: shape {x.shape}.",
        )
    got = got.astype(np.int64)
    if got.min() < 0 or got.max() > 0xFFFF:
        fail(
            label,
            "some patterns do not fit in 16 bits.",
            "keep the upper 16 bits of the rounded float32 pattern.",
        )
    with np.errstate(invalid="ignore"):
        want = (
            torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().astype(np.int64) & 0xFFFF
        )
    bf16 = formats.BF16
    got_v, want_v = bf16.decode(got), bf16.decode(want)
    ok = (got == want) | (np.isnan(got_v) & np.isnan(want_v))  # any NaN pattern is fine for a NaN
    if ok.all():
        return
    u = x.view(np.uint32).astype(np.int64)
    bad = ~ok
    nan_in = np.isnan(x)
    if (bad & nan_in).any():
        i = np.flatnonzero(bad & nan_in)[0]
        became = "infinity" if np.isinf(got_v[i]) else repr(float(got_v[i]))
        fail(
            label,
            f"the NaN with pattern {u[i]:#010x} became {became}.",
            "a NaN whose payload sits only in the low 16 bits loses it when rounded; make sure the result "
            "keeps a non-zero mantissa (set the top mantissa bit), and do not add a rounding bias to NaNs.",
        )
    tie = (u & 0xFFFF) == 0x8000
    i = np.flatnonzero(bad)[0]
    if tie[bad].all():
        direction = "up" if got[i] > want[i] else "down"
        fail(
            label,
            f"the tie {x[i]!r} (pattern {u[i]:#010x}, exactly halfway) was rounded {direction}, away from "
            "the even neighbour.",
            "at exactly halfway, round to the pattern whose last kept bit is 0: the bias is 0x7FFF plus that bit.",
        )
    if (got[bad] == (u >> 16)[bad]).all():
        fail(
            label,
            "your results are truncations (the low 16 bits dropped).",
            "round to nearest: add a rounding bias before shifting, so values past halfway carry up.",
        )
    fail(
        label,
        f"{x[i]!r} (pattern {u[i]:#010x}) gave {got[i]:#06x}; torch gives {want[i]:#06x}.",
        "round the float32 pattern to its upper 16 bits, ties to even, and treat NaN separately.",
    )


# ---- floating_point-overflow ----------------------------------------------------------------------------


@register("floating_point-overflow")
def check_overflow(overflows_fp16: Any) -> None:
    """``overflows_fp16(x)``: True where a finite float64 becomes ±inf when rounded to fp16."""
    label = "floating_point-overflow"
    rng = np.random.default_rng(5)
    edges = np.array(
        [65504.0, 65505.0, 65519.0, 65519.999, 65520.0, 65520.001, 65535.0, 65536.0, 65552.0, 1e5, 1e300]
    )
    x = np.concatenate([edges, -edges, rng.uniform(-7e4, 7e4, 5000), [0.0, 1.0, -1e-8]])
    got = call(label, overflows_fp16, x.copy())
    got = np.asarray(got)
    if got.shape != x.shape or got.dtype != np.bool_:
        fail(
            label,
            f"you returned dtype {got.dtype}, shape {got.shape}.",
            f"return a boolean array of shape {x.shape}.",
        )
    # numpy rounds float64 to float16 once; torch goes through float32 and can round twice (65519.999
    # becomes 65520.0, a tie, then inf), so torch is not the reference for float64 inputs.
    with np.errstate(over="ignore"):
        want = np.isinf(x.astype(np.float16))
    if np.array_equal(got, want):
        return
    a = np.abs(x)
    for mistake, wrong in {
        "you flagged everything above max = 65504, but values up to half a gap above max round down to it": a
        > 65504,
        "the tie at exactly 65520 rounds to even, which here is up (to 65536, beyond max)": a > 65520,
        "values from 65520 up already round past max": a >= 65536,
        "negative values overflow too (to -inf)": x >= 65520,
    }.items():
        if np.array_equal(got, wrong):
            fail(
                label,
                f"your answer matches a common mistake: {mistake}.",
                "find the smallest value that rounds to something larger than max: max plus half the gap between "
                "values at the top of fp16's range, with ties to even.",
            )
    i = np.flatnonzero(got != want)[0]
    fail(
        label,
        f"for x = {x[i]!r} you said {bool(got[i])}; rounding to float16 says {bool(want[i])}.",
        "a value overflows if round-to-nearest-even sends it past max; think about the gap near max.",
    )


# ---- floating_point-stall --------------------------------------------------------------------------------


def _simulate_stall(fmt: formats.FloatFormat, addend: float) -> float:
    """Add ``addend`` to a sum rounded to ``fmt`` after every step, until the sum stops changing."""
    total = 0.0
    while True:
        new = float(fmt.round(total + addend))
        if new == total:
            return total
        total = new


def _torch_stall(dtype: torch.dtype, addend: float) -> float:
    """The same with torch arithmetic in ``dtype`` (each ``+`` rounds to ``dtype``)."""
    total = torch.zeros((), dtype=dtype)
    step = torch.tensor(addend, dtype=dtype)
    while True:
        new = total + step
        if new == total:
            return float(total)
        total = new


@register("floating_point-stall")
def check_stall(stall_value: Any) -> None:
    """``stall_value(fmt, largest_addend)``: where a running sum of addends up to that stops growing."""
    label = "floating_point-stall"
    hint = (
        "the sum stops growing once adding the largest addend no longer reaches the next representable "
        "value: when the addend is at most half the gap (the ulp) at the sum, and a tie goes to even. "
        "Write the gap at a value S as S times a power of two."
    )
    cases: list[tuple[formats.FloatFormat, float, Callable[[], float]]] = [
        (formats.BF16, 1.0, lambda: _torch_stall(torch.bfloat16, 1.0)),
        (formats.FP16, 1.0, lambda: _torch_stall(torch.float16, 1.0)),
        (formats.BF16, 2.0**-4, lambda: _torch_stall(torch.bfloat16, 2.0**-4)),
        (formats.FP16, 2.0**-12, lambda: _torch_stall(torch.float16, 2.0**-12)),
        (formats.E4M3, 1.0, lambda: _simulate_stall(formats.E4M3, 1.0)),
        (formats.E5M2, 0.5, lambda: _simulate_stall(formats.E5M2, 0.5)),
        (formats.TF32, 2.0**-3, lambda: _simulate_stall(formats.TF32, 2.0**-3)),
    ]
    for fmt, addend, reference in cases:
        got = call(label, stall_value, fmt, addend)
        want = reference()
        case = f"{fmt.name} with addends up to {addend!r}"
        if isinstance(got, (int, float, np.floating)) and math.isclose(float(got), want / 2):
            fail(
                label,
                f"for {case} you predict {got!r}, half the value the sum really reaches ({want!r}).",
                "at your value the addend is exactly one gap: the sum still grows. It stalls one binade later.",
            )
        if isinstance(got, (int, float, np.floating)) and math.isclose(float(got), want * 2):
            fail(
                label,
                f"for {case} you predict {got!r}, twice the value the sum stalls at.",
                "at half your value, the addend is already half a gap, and the tie goes to the even value.",
            )
        expect_close(label, got, want, rtol=1e-12, case=case, hint=hint)
