"""Checks for the exercises of chapter ``floating_point``.

References are independent of the learner's code and of the chapter's: numpy's float16 and finfo,
torch's casts and fp8 dtypes, and :mod:`mpcourse.formats` (itself tested against ml_dtypes and torch).
Each exercise asks for a derivation; where a library could stand in for it (a cast, a rounding, a
table of limits), the check watches for that library and refuses it, since it gives the right
numbers without the exercise.
"""

from __future__ import annotations

import contextlib
import io
import math
import tokenize
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from .. import formats
from . import call, expect_close, fail, plural, register, shortcuts

# ---- watching for library shortcuts -----------------------------------------------------------------


class _WatchedArray(np.ndarray):
    """An input array, as an ndarray subclass that notices a float -> ``targets`` ``astype``.

    numpy calls ``__array_finalize__`` for every array derived from this one (``astype`` and ``view``
    included; a view's ``base`` is its parent, a converted copy's is not), so ``x.astype(bfloat16)``
    with ml_dtypes's type, or ``x.astype(np.float16)``, is seen however the type was named.
    """

    casts: list[str]
    targets: frozenset[str]

    def __array_finalize__(self, obj: Any) -> None:
        if not isinstance(obj, np.ndarray):
            return
        self.casts = getattr(obj, "casts", [])
        self.targets = getattr(obj, "targets", frozenset())
        if self.dtype.name in self.targets and obj.dtype.kind == "f" and self.base is not obj:
            origin = " (ml_dtypes)" if self.dtype.name == "bfloat16" else ""
            self.casts.append(f"x.astype({self.dtype.name}){origin}")


def _watched(x: np.ndarray, *targets: str) -> _WatchedArray:
    watched = x.copy().view(_WatchedArray)
    watched.casts = []
    watched.targets = frozenset(targets)
    return watched


def _tokens(fn: Any) -> list[str]:
    """The identifiers and operators in ``fn``'s source (comments and strings excluded); [] without source."""
    import inspect

    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        return []
    try:
        tokens = tokenize.generate_tokens(io.StringIO(source).readline)
        return [t.string for t in tokens if t.type in (tokenize.NAME, tokenize.OP)]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return []


def _names_used(fn: Any) -> set[str]:
    """The identifiers in ``fn``'s source (comments and strings excluded); empty if there is no source."""
    return {t for t in _tokens(fn) if t.isidentifier()}


def _names_a_dtype(fn: Any, names: Iterable[str]) -> str | None:
    """The first of ``names`` that ``fn`` uses as a dtype, outside ``finfo(...)`` (which only reads limits)."""
    tokens, names = _tokens(fn), set(names)
    for i, token in enumerate(tokens):
        if token in names and "finfo" not in tokens[max(0, i - 4) : i]:
            return token
    return None


@contextlib.contextmanager
def _library_rounding(
    *,
    torch_dtypes: Iterable[torch.dtype] = (),
    torch_methods: Iterable[str] = (),
    format_methods: Iterable[str] = ("_round_numpy",),
    format_functions: Iterable[str] = (),
) -> Iterator[list[str]]:
    """Record what a library does for the learner while the block runs.

    - any torch call given one of ``torch_dtypes`` (``.to``, ``torch.tensor(..., dtype=...)``,
      ``torch.zeros(..., dtype=...)``, ...) or named in ``torch_methods`` (``.bfloat16()``,
      ``.half()``); a ``.view`` reinterprets bits and is allowed;
    - any call of the ``format_methods`` of :class:`mpcourse.formats.FloatFormat`, of
      ``round_tensor`` (whose GPU path is ``_round_with_torch``), and of the module functions
      ``format_functions`` (``custom``, ``get``).
    """

    def method(name: str) -> shortcuts.Target:
        shown = "" if name.startswith("_") else f".{name}"
        return (formats.FloatFormat, name, lambda fmt, *_, **__: f"mpcourse.formats ({fmt.name}{shown})")

    targets = [method(name) for name in format_methods]
    targets.append((formats, "_round_with_torch", "mpcourse.formats.round_tensor"))
    targets += [(formats, name, f"mpcourse.formats.{name}") for name in format_functions]
    found: list[str] = []
    with (
        shortcuts.watch(targets, found=found),
        shortcuts.conversions(torch_dtypes, methods=torch_methods, found=found),
    ):
        yield found


def _same(got: float, want: float) -> bool:
    """Equal as floats: NaN matches NaN, and a zero must have the right sign."""
    if math.isnan(want):
        return math.isnan(got)
    return got == want and math.copysign(1.0, got) == math.copysign(1.0, want)


# ---- floating_point-decode ------------------------------------------------------------------------

_ANY = object()  # a wrong reading that has no opinion about a pattern (it may be right or wrong there)


def _wrong_readings() -> dict[str, tuple[str, str, Callable[..., Any]]]:
    """The usual wrong readings of a pattern: (what it is, first hint, value from the fields).

    A reading gets ``(sign, exponent field, mantissa field, e, m, bias)`` of a pattern and returns the value it gives, None where it gives the right value, or
    ``_ANY`` where a learner with that mistake may or may not be right (zero, often special-cased).
    """

    def bias_too_large(s, E, M, e, m, b):
        if E == (1 << e) - 1:
            return None
        return s * 2.0 ** (E - b - 1) * (1 + M / 2**m) if E else s * 2.0 ** (-b) * (M / 2**m)

    def subnormal_minus_bias(s, E, M, e, m, b):
        if E == (1 << e) - 1:
            return None
        return s * 2.0 ** (-b) * (M / 2**m) if E == 0 else None

    def zero_field_as_normal(s, E, M, e, m, b):
        if E == (1 << e) - 1:
            return None
        if E:
            return None
        return _ANY if M == 0 else s * 2.0 ** (-b) * (1 + M / 2**m)

    def subnormal_hidden_one(s, E, M, e, m, b):
        if E == (1 << e) - 1:
            return None
        if E:
            return None
        return _ANY if M == 0 else s * 2.0 ** (1 - b) * (1 + M / 2**m)

    def no_hidden_bit(s, E, M, e, m, b):
        if E == (1 << e) - 1:
            return None
        return s * 2.0 ** (E - b) * (M / 2**m) if E else None

    def sign_ignored(s, E, M, e, m, b):
        if E == (1 << e) - 1:
            return None if M else math.inf
        return abs(2.0 ** (E - b) * (1 + M / 2**m) if E else 2.0 ** (1 - b) * (M / 2**m))

    def mantissa_one_bit_wide(s, E, M, e, m, b):
        if E == (1 << e) - 1:
            return None
        return s * 2.0 ** (E - b) * (1 + M / 2 ** (m + 1)) if E else s * 2.0 ** (1 - b) * (M / 2 ** (m + 1))

    return {
        "bias": (
            "a bias of 2^(e-1) instead of 2^(e-1) - 1: every exponent comes out one too small",
            "compare the bias you subtract with the one the prompt gives; try fp16's 1.0, pattern 0x3c00 "
            "(exponent field 15), by hand.",
            bias_too_large,
        ),
        "field-zero-as-normal": (
            "the exponent field 0 read like a normal exponent (a hidden 1 and exponent 0 - bias), but an "
            "all-zeros exponent field means zero or a subnormal",
            "patterns whose exponent field is all zeros are not normal numbers: the chapter's section "
            "'Normal, subnormal, zero, infinity, NaN' says how they are read, which differs from normal "
            "numbers in two ways.",
            zero_field_as_normal,
        ),
        "subnormal-minus-bias": (
            "a subnormal read with exponent -bias: your subnormals are half their value, which leaves a "
            "gap between the largest subnormal and the smallest normal number",
            "look at the exponent you give patterns whose exponent field is 0: which binade's exponent do "
            "subnormals share, so that they join up with the smallest normal numbers?",
            subnormal_minus_bias,
        ),
        "subnormal-hidden-one": (
            "a subnormal read with a hidden 1, which subnormals do not have",
            "compare your largest subnormal with the smallest normal number: the subnormals must stay "
            "below it, which they cannot with a leading 1 in front of the mantissa.",
            subnormal_hidden_one,
        ),
        "no-hidden-bit": (
            "the hidden bit forgotten: a normal number's significand lies in [1, 2)",
            "your normal numbers lack their leading 1: the mantissa field stores only the bits after the "
            "binary point.",
            no_hidden_bit,
        ),
        "sign": (
            "the sign bit ignored",
            "the top bit of the pattern is the sign: patterns with it set are negative (fp16's 0x8000 is -0.0).",
            sign_ignored,
        ),
        "mantissa-width": (
            "the mantissa read as a fraction of 2^(m+1), one bit too wide",
            "the mantissa field is an m-bit integer: what fraction of the binade is one step of it?",
            mantissa_one_bit_wide,
        ),
    }


_READINGS = _wrong_readings()


def _decode_formats() -> list[tuple[str, int, int, np.ndarray, np.ndarray]]:
    """(name, e, m, patterns, reference values) from numpy's float16, torch's E5M2, and E3M4."""
    rng = np.random.default_rng(7)
    fp16_patterns = np.unique(
        np.concatenate(
            [
                np.arange(0, 64),
                np.arange(0x3BF0, 0x3C10),
                np.arange(0x7BF0, 0x7C10),
                np.arange(0x8000, 0x8040),
                np.arange(0xFBF0, 0x10000),
                rng.integers(0, 1 << 16, 3000),
            ]
        )
    ).astype(np.uint16)
    every_byte = np.arange(256, dtype=np.uint8)
    return [
        ("float16", 5, 10, fp16_patterns, fp16_patterns.view(np.float16).astype(np.float64)),
        (
            "E5M2",
            5,
            2,
            every_byte,
            torch.from_numpy(every_byte).view(torch.float8_e5m2).double().numpy(),
        ),
        ("E3M4 (an IEEE-like 8-bit format)", 3, 4, every_byte, formats.custom(3, 4).decode(every_byte)),
    ]


def _fields(bits: int, e: int, m: int) -> tuple[float, int, int, int]:
    bias = (1 << (e - 1)) - 1
    sign = -1.0 if (bits >> (e + m)) & 1 else 1.0
    return sign, (bits >> m) & ((1 << e) - 1), bits & ((1 << m) - 1), bias


def _explained_by(reading: Callable[..., Any], e: int, m: int, patterns, got, want) -> bool:
    """Whether ``got`` is exactly what ``reading`` gives on every pattern (where it has an opinion)."""
    for bits, g, w in zip(patterns, got, want):
        sign, field, mantissa, bias = _fields(bits, e, m)
        value = reading(sign, field, mantissa, e, m, bias)
        if value is _ANY:
            continue
        if not _same(g, w if value is None else value):
            return False
    return True


def _power_of_two_off(got: list[float], want: list[float]) -> int | None:
    """k if every finite non-zero value is 2^k times the right one (k != 0), else None."""
    ratios = {g / w for g, w in zip(got, want) if math.isfinite(w) and w != 0 and math.isfinite(g) and g != 0}
    finite = [(g, w) for g, w in zip(got, want) if math.isfinite(w) and w != 0]
    if len(ratios) != 1 or any(g == 0 or not math.isfinite(g) for g, _ in finite):
        return None
    (ratio,) = ratios
    mantissa, exponent = math.frexp(ratio)
    return exponent - 1 if mantissa == 0.5 and ratio != 1 else None


@register(
    "floating_point-decode",
    hints=(
        "Split the pattern into its three fields with shifts and masks: the top bit is the sign, then "
        "e exponent bits, then m mantissa bits. Check your fields on fp16's 1.0, pattern 0x3c00: sign 0, "
        "exponent field 15, mantissa field 0.",
        "There are three kinds of exponent field, each read its own way: all ones (infinity when the "
        "mantissa field is 0, NaN otherwise), all zeros (zero and the subnormals), and anything else "
        "(normal numbers). Give each kind its own branch.",
        "Normal numbers have a hidden leading 1 in front of the mantissa bits. Zero and the subnormals "
        "have none, and their exponent is the one of the smallest normal binade (exponent field 1), not "
        "0 minus the bias: that is what makes them join up with the normal numbers.",
        "Apply the sign by multiplying a float by -1.0 or 1.0 at the end: then the pattern with only the "
        "sign bit set comes out as -0.0, as it must.",
    ),
)
def check_decode(decode: Any) -> None:
    """``decode(bits, exponent_bits, mantissa_bits)``: the value of one pattern of an IEEE-like format."""
    label = "floating_point-decode"
    for name, e, m, patterns, want_array in _decode_formats():
        patterns, want = [int(p) for p in patterns], [float(w) for w in want_array]
        with _library_rounding(format_methods=("decode", "describe", "fields", "classify", "values")) as used:
            answers = [call(label, decode, bits, e, m) for bits in patterns]
        if "formats" in _names_used(decode) or "ml_dtypes" in _names_used(decode):
            used.append("a format library named in your function")
        if used:
            fail(
                label,
                f"your function lets a library decode the patterns: {used[0]}. The exercise is to decode "
                "them yourself, with integer operations and powers of two.",
                "take the pattern apart with shifts and masks (>>, &) and build the value from its fields.",
            )
        fmt = formats.custom(e, m)

        def case(i: int) -> str:
            return f"{name} pattern {patterns[i]:#x} ({fmt.bit_string(patterns[i])})"

        for i, got in enumerate(answers):
            if isinstance(got, bool) or not isinstance(got, (int, float, np.floating, np.integer)):
                fail(
                    label,
                    f"for {case(i)} you returned {type(got).__name__}, not a number.",
                    "return a Python float.",
                )
        got = [float(g) for g in answers]
        wrong = [i for i in range(len(patterns)) if not _same(got[i], want[i])]
        if not wrong:
            continue
        kind = [_fields(p, e, m)[1] for p in patterns]
        normal = [i for i in wrong if 0 < kind[i] < (1 << e) - 1]
        shown = (normal or [i for i in wrong if want[i] != 0] or wrong)[0]
        count = f"{plural(len(wrong), 'pattern')} of {name} wrong, all in this way"
        for what, first_hint, reading in _READINGS.values():
            if _explained_by(reading, e, m, patterns, got, want):
                fail(
                    label,
                    f"for {case(shown)} you returned {got[shown]!r}, not {want[shown]!r}: that is {what} "
                    f"({count}).",
                    first_hint,
                )
        k = _power_of_two_off(got, want)
        if k is not None:
            fail(
                label,
                f"for {case(shown)} you returned {got[shown]!r}, not {want[shown]!r}: every finite value you "
                f"return is 2^{k} times the right one, so every exponent is off by {k} ({count}).",
                "compare the bias you subtract with the one the prompt gives; try fp16's 1.0, pattern 0x3c00, "
                "by hand.",
            )
        for i in wrong:
            if math.isnan(want[i]):
                fail(
                    label,
                    f"{case(i)} is a NaN; you returned {got[i]!r}.",
                    "look at the patterns whose exponent field is all ones: the mantissa field decides between "
                    "infinity and NaN.",
                )
            if math.isinf(want[i]):
                fail(
                    label,
                    f"{case(i)} is {want[i]}; you returned {got[i]!r}.",
                    "patterns whose exponent field is all ones are not normal numbers: with a zero mantissa "
                    "field they are the infinities, signed like any other value.",
                )
            if want[i] == 0 and got[i] == 0:
                fail(
                    label,
                    f"{case(i)} is {want[i]!r} (a signed zero); you returned {got[i]!r}.",
                    "the pattern with only the sign bit set is -0.0, a float with its sign: an integer 0 or a "
                    "literal 0.0 loses it.",
                )
        subnormal = [i for i in wrong if kind[i] == 0]
        for i in normal[:1] + subnormal[:1]:
            sign, field, mantissa, bias = _fields(patterns[i], e, m)
            for what, first_hint, reading in _READINGS.values():
                value = reading(sign, field, mantissa, e, m, bias)
                if value is not None and value is not _ANY and _same(got[i], value):
                    fail(
                        label,
                        f"for {case(i)} you returned {got[i]!r}, not {want[i]!r}: that looks like {what}.",
                        first_hint,
                    )
        i = (normal or wrong)[0]
        fail(
            label,
            f"for {case(i)} you returned {got[i]!r}; the value of that pattern is {want[i]!r}.",
            "decode this pattern by hand, field by field (sign, exponent field, mantissa field), and compare "
            "each step with what your function does.",
        )


# ---- floating_point-limits ---------------------------------------------------------------------------

_LIMIT_KEYS = ("max", "tiny", "smallest_subnormal", "eps")


def _limits(e: int, m: int, bias: int) -> dict[str, float]:
    """The four limits of an IEEE-like format with the given bias (right with bias 2^(e-1) - 1)."""
    emax, emin = (1 << e) - 2 - bias, 1 - bias
    return {
        "max": (2 - 2.0**-m) * 2.0**emax,
        "tiny": 2.0**emin,
        "smallest_subnormal": 2.0 ** (emin - m),
        "eps": 2.0**-m,
    }


def _limit_variants(e: int, m: int) -> dict[str, dict[str, tuple[float, str, str]]]:
    """For each limit, what the usual wrong derivations give: {key: {name: (value, what, hint)}}."""
    bias = (1 << (e - 1)) - 1
    emax, emin = (1 << e) - 2 - bias, 1 - bias
    all_ones = (1 << e) - 1 - bias  # the exponent of the reserved top binade
    top_hint = (
        "write down the bit pattern of the largest finite value: which exponent field does it have (the "
        "all-ones one is reserved), and which mantissa field?"
    )
    return {
        "max": {
            "all-ones": (
                (2 - 2.0**-m) * 2.0**all_ones,
                "the all-ones exponent used for max, but IEEE formats reserve it for inf and NaN",
                "which exponent field is the largest that a finite number can have?",
            ),
            "next binade": (
                2.0 ** (emax + 1),
                "max taken as 2^(emax+1), which is just beyond the format",
                top_hint,
            ),
            "no mantissa": (2.0**emax, "max taken as 2^emax, as if the mantissa bits were all 0", top_hint),
            "no hidden bit": (
                (1 - 2.0**-m) * 2.0**emax,
                "max without the hidden bit: a normal significand lies in [1, 2)",
                "the largest value is a normal number: its significand has a leading 1 besides the stored bits.",
            ),
        },
        "tiny": {
            "minus bias": (
                2.0**-bias,
                "tiny taken as 2^-bias, but exponent field 0 is not a normal binade",
                "list the exponent fields that normal numbers have: which is the smallest of them?",
            ),
            "subnormal": (
                2.0 ** (emin - m),
                "tiny confused with the smallest subnormal; tiny is the smallest positive *normal* number",
                "the smallest normal number has a hidden 1 and a zero mantissa field.",
            ),
        },
        "smallest_subnormal": {
            "half": (
                2.0 ** (emin - m - 1),
                "the smallest subnormal half too small: subnormals share the smallest normal binade's exponent",
                "the smallest subnormal is one mantissa step above zero, in the binade of exponent field 0: "
                "which exponent do its patterns have?",
            ),
            "twice": (
                2.0 ** (emin - m + 1),
                "the smallest subnormal twice too large",
                "the smallest subnormal is one step of the last mantissa bit (mantissa field 1): how many "
                "steps fill the subnormal range up to tiny?",
            ),
            "tiny": (
                2.0**emin,
                "the smallest subnormal taken as tiny, as if the format had no subnormals",
                "IEEE-style formats have subnormals below tiny: exponent field 0, no hidden bit.",
            ),
        },
        "eps": {
            "unit roundoff": (
                2.0 ** -(m + 1),
                "eps confused with the unit roundoff eps/2, the largest relative rounding error",
                "eps is the gap between 1 and the next value, not the largest rounding error (half of it).",
            ),
            "one bit": (
                2.0 ** -(m - 1),
                "eps one bit too large",
                "the next value after 1 differs from it in the last mantissa bit: which power of two is that bit?",
            ),
        },
    }


def _limit_references() -> list[tuple[int, int, dict[str, float]]]:
    """(e, m, limits): numpy's finfo where it has the format, mpcourse.formats elsewhere."""
    finfo = {(5, 10): np.finfo(np.float16), (8, 23): np.finfo(np.float32), (11, 52): np.finfo(np.float64)}
    cases = []
    for e, m in [(5, 10), (8, 7), (5, 2), (3, 4), (4, 3), (8, 23), (11, 52), (2, 5)]:
        if (e, m) in finfo:
            info = finfo[(e, m)]
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
        cases.append((e, m, want))
    return cases


@register(
    "floating_point-limits",
    hints=(
        "Start with fp16 (e = 5, m = 10), where np.finfo(np.float16) gives you the answers to compare "
        "with: max 65504, tiny about 6.1e-05, smallest subnormal about 6e-08, eps about 0.000977. Write "
        "each one as a power of two, or a power of two times a significand.",
        "Each limit is one bit pattern. Write down the pattern of the largest finite value, of the "
        "smallest positive normal number, of the smallest positive subnormal and of the number just after "
        "1: which exponent field and which mantissa field does each have?",
        "Decode those four patterns as the chapter's anatomy section does (normal numbers with their hidden "
        "bit, exponent field 0 with none), with the bias 2^(e-1) - 1 and the all-ones exponent field "
        "reserved for infinity and NaN. Then replace fp16's 5 and 10 by e and m.",
    ),
)
def check_limits(format_limits: Any) -> None:
    """``format_limits(e, m)``: max, tiny, smallest_subnormal, eps of an IEEE-like format."""
    label = "floating_point-limits"
    for e, m, want in _limit_references():
        with _library_rounding(format_methods=(), format_functions=("custom", "get")) as used:
            got = call(label, format_limits, e, m)
        if {"formats", "ml_dtypes", "finfo"} & _names_used(format_limits):
            used.append("a table of limits (mpcourse.formats, ml_dtypes or finfo) named in your function")
        if used:
            fail(
                label,
                f"your function reads the limits from a library: {used[0]}. The exercise is to derive them "
                "from e and m.",
                "build each limit as a power of two from e, m and the bias; use a library's table only to "
                "compare with, outside your function.",
            )
        case = f"e={e}, m={m}"
        if not isinstance(got, dict) or set(got) != set(_LIMIT_KEYS):
            fail(
                label,
                f"for {case} you returned {got!r}.",
                f"return a dict with exactly the keys {', '.join(_LIMIT_KEYS)}.",
            )
        try:
            values = {key: float(got[key]) for key in _LIMIT_KEYS}
        except (TypeError, ValueError):
            fail(label, f"for {case} some values are not numbers: {got!r}.", "return each limit as a float.")
        if values == want:
            continue
        bias = (1 << (e - 1)) - 1
        wrong_bias = _limits(e, m, bias + 1)
        if values == wrong_bias:
            fail(
                label,
                f"for {case} your limits are those of a bias of 2^(e-1) = {bias + 1}, not 2^(e-1) - 1 = {bias}: "
                f"max = {values['max']!r}, tiny = {values['tiny']!r}.",
                "compare the bias you use with the one the prompt gives: fp16's is 15.",
            )
        for key in _LIMIT_KEYS:
            if values[key] == want[key]:
                continue
            for value, what, hint in _limit_variants(e, m)[key].values():
                if values[key] == value:
                    fail(label, f"for {case}, {key} = {values[key]!r}: {what}.", hint)
            expect_close(
                label,
                values[key],
                want[key],
                rtol=0,
                case=f"{key} at {case}",
                hint=f"decode by hand the bit pattern that {key} stands for, in this format, and compare.",
            )


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
            0xFF7FFFFF,
            0x00008000,
            0x00018000,
            0x00000001,
            0x0000FFFF,
            0x007FFFFF,
            0x3F808000,
            0x3F818000,
        ],
        dtype=np.uint32,
    )
    random = rng.integers(0, 1 << 32, 20000, dtype=np.uint64).astype(np.uint32)
    return np.concatenate([special, ties, near, random]).astype(np.uint32).view(np.float32)


@register(
    "floating_point-bf16-rne",
    hints=(
        "bf16 keeps the upper 16 bits of the float32 pattern, so rounding decides one thing: whether the "
        "kept half goes up by one, judged from the 16 bits you drop. Look at x.view(np.uint32) and "
        "compare the dropped half with 0x8000, which is exactly halfway.",
        "A single addition before the shift can do that decision: a carry into bit 16 happens exactly "
        "when the dropped half is large enough. Which constant carries for a dropped half above 0x8000 "
        "and not below? Do the addition in a wider integer type, so that it cannot overflow.",
        "At exactly halfway the carry must happen only when the last kept bit (bit 16) is 1: that is "
        "ties to even. A carry out of the mantissa into the exponent is right, and at the top of the "
        "range it gives the infinity pattern, also right.",
        "NaNs are the exception: the rounding can turn a NaN whose payload sits in the low 16 bits into "
        "infinity, and a negative NaN can carry out of 32 bits. Treat NaNs on their own: keep the "
        "exponent all ones and make sure the kept mantissa is not zero.",
    ),
)
def check_bf16_rne(fp32_to_bf16_bits: Any) -> None:
    """``fp32_to_bf16_bits(x)``: uint16 bf16 patterns of a float32 array, round to nearest even.

    Besides the values, the check makes sure the rounding is the learner's own: a library cast to bf16
    (torch, ml_dtypes, mpcourse.formats) gives the same bits but skips the exercise, so it is refused.
    """
    label = "floating_point-bf16-rne"
    x = _bf16_cases()
    watched = _watched(x, "bfloat16")
    with _library_rounding(torch_dtypes=(torch.bfloat16,), torch_methods=("bfloat16",)) as casts:
        got = call(label, fp32_to_bf16_bits, watched)
    casts += watched.casts
    if "ml_dtypes" in _names_used(fp32_to_bf16_bits):
        casts.append("ml_dtypes (named in your function)")
    if casts:
        fail(
            label,
            f"your function lets a library round to bf16: {casts[0]}. That gives the right bits, but the "
            "exercise is to do the rounding yourself.",
            "work on the integers of x.view(np.uint32): which of their bits does bf16 keep, and how do the "
            "bits you drop decide whether the kept ones go up by one? No .to(torch.bfloat16), ml_dtypes or "
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
        i = int(np.flatnonzero((got < 0) | (got > 0xFFFF))[0])
        fail(
            label,
            f"some patterns do not fit in 16 bits: {float(x[i])!r} gave {got[i]:#x}.",
            "a bf16 pattern is the upper half of a 32-bit pattern: shift the kept bits down to bits 0-15.",
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
            f"the NaN with pattern {u[i]:#010x} became {became} (pattern {got[i]:#06x}).",
            "follow this pattern through your rounding: bf16 must still see a NaN (exponent all ones, a "
            "mantissa that is not zero). NaNs need their own treatment.",
        )
    i = np.flatnonzero(bad)[0]
    overflowed = np.isinf(want_v)
    if (bad <= overflowed).all() and (np.abs(got_v[bad]) == bf16.max).all():
        fail(
            label,
            f"{float(x[i])!r} (pattern {u[i]:#010x}) rounds past the largest bf16 value and must become infinity "
            f"({want[i]:#06x}); you saturated it to {float(got_v[i])!r}.",
            "let the carry out of the mantissa run into the exponent: past the largest value it gives the "
            "infinity pattern by itself, as IEEE 754 wants.",
        )
    subnormal_in = (u & 0x7F800000) == 0
    if (bad <= subnormal_in).all() and (got_v[bad] == 0).all():
        fail(
            label,
            f"the float32 subnormal {float(x[i])!r} (pattern {u[i]:#010x}) became zero: you flush subnormals to zero, "
            "which rounding to nearest (and torch's cast) does not.",
            "subnormals need no special case: their patterns round like any other.",
        )
    tie = (u & 0xFFFF) == 0x8000
    if tie[bad].all():
        direction = "up" if got[i] > want[i] else "down"
        fail(
            label,
            f"the tie {float(x[i])!r} (pattern {u[i]:#010x}, exactly halfway) was rounded {direction}, away from "
            "the even neighbour.",
            "at exactly halfway, round to the pattern whose last kept bit is 0: your rounding must look at "
            "that bit.",
        )
    if (got[bad] == (u >> 16)[bad]).all():
        fail(
            label,
            f"your results are truncations (the low 16 bits dropped): {float(x[i])!r} (pattern {u[i]:#010x}) gave "
            f"{got[i]:#06x}, but it lies past halfway and rounds to {want[i]:#06x}.",
            "round to nearest: when the dropped bits are more than halfway, the kept bits must go up by one.",
        )
    fail(
        label,
        f"{float(x[i])!r} (pattern {u[i]:#010x}) gave {got[i]:#06x}; torch gives {want[i]:#06x}.",
        "round the float32 pattern to its upper 16 bits to nearest, ties to even, and treat NaN separately; "
        "work this pattern through your function by hand.",
    )


# ---- floating_point-overflow ----------------------------------------------------------------------------


def _names_fp16(fn: Any) -> str | None:
    """``float16``, or ``np.half``, if ``fn``'s source names fp16 as a dtype (not inside ``finfo(...)``)."""
    tokens = _tokens(fn)
    for i, token in enumerate(tokens):
        if i >= 2 and token == "half" and tokens[i - 1] == "." and tokens[i - 2] in {"np", "numpy"}:
            return "np.half"
    return _names_a_dtype(fn, {"float16"})


@register(
    "floating_point-overflow",
    hints=(
        "A value a little above fp16's largest value, 65504, is rounded to the nearer of two neighbours: "
        "65504 itself, or the next step up, which fp16 does not have. Where would that next step lie? "
        "The gap between values in fp16's top binade tells you.",
        "The boundary between rounding down to 65504 and rounding up to the missing step lies halfway "
        "between them. At exactly halfway the tie goes to the neighbour with the even mantissa: which of "
        "the two is it here, and what does that mean for the boundary itself?",
        "Rounding is symmetric about zero: a negative value overflows to -inf exactly when its magnitude "
        "would overflow. Compare magnitudes with the boundary and return a boolean array of x's shape.",
    ),
)
def check_overflow(overflows_fp16: Any) -> None:
    """``overflows_fp16(x)``: True where a finite float64 becomes ±inf when rounded to fp16, predicted
    without converting to fp16 (a cast by numpy, torch or mpcourse.formats is refused)."""
    label = "floating_point-overflow"
    rng = np.random.default_rng(5)
    edges = np.array(
        [65504.0, 65505.0, 65519.0, 65519.999, 65520.0, 65520.001, 65535.0, 65536.0, 65552.0, 1e5, 1e300]
    )
    x = np.concatenate([edges, -edges, rng.uniform(-7e4, 7e4, 5000), [0.0, 1.0, -1e-8]])
    watched = _watched(x, "float16")
    with _library_rounding(torch_dtypes=(torch.float16,), torch_methods=("half",)) as casts:
        got = call(label, overflows_fp16, watched)
    casts += watched.casts
    named = _names_fp16(overflows_fp16)
    if named:
        casts.append(f"{named} (named in your function)")
    if casts:
        fail(
            label,
            f"your function converts x to fp16: {casts[0]}. That answers the question without predicting "
            "it; the exercise is to say from fp16's numbers where overflow starts.",
            "compare x with a boundary you work out from fp16's largest value and the gap at the top of its "
            "range; reading np.finfo(np.float16) for those is fine.",
        )
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
    with np.errstate(over="ignore"):
        via_float32 = np.abs(x.astype(np.float32))
    mistakes = {
        "you flagged everything above max = 65504, but values a little above max round down to it": (
            a > 65504,
            "how far above max can a value be and still be nearer to max than to the next step up?",
        ),
        "the tie at exactly 65520 is not flagged, but it overflows": (
            a > 65520,
            "look at the tie, halfway between max and the next step up: which neighbour is even?",
        ),
        "values from 65520 up to 65536 are not flagged, but they are nearer the next step than max": (
            a >= 65536,
            "the next step up from max does not exist in fp16: a value rounds to infinity as soon as it is "
            "nearer to that step than to max, not only once it reaches it.",
        ),
        "negative values overflow too (to -inf)": (
            x >= 65520,
            "rounding is symmetric about zero: compare magnitudes.",
        ),
        "you round x to float32 first: 65519.999 becomes 65520.0 and crosses the boundary (rounding twice is "
        "not rounding once)": (
            via_float32 >= 65520,
            "compare the float64 values themselves with the boundary.",
        ),
    }
    for mistake, (wrong, hint) in mistakes.items():
        if np.array_equal(got, wrong):
            fail(label, f"your answer matches a common mistake: {mistake}.", hint)
    i = np.flatnonzero(got != want)[0]
    fail(
        label,
        f"for x = {float(x[i])!r} you said {bool(got[i])}; rounding to float16 says {bool(want[i])}.",
        "a value overflows if round-to-nearest-even sends it beyond max: work out what happens to this value.",
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


_LOW_PRECISION = (torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2)


@register(
    "floating_point-stall",
    hints=(
        "Start with bf16 and addends up to 1, where you know the answer, 256. Why does the sum still "
        "grow at 128 and stop at 256? Compare the largest addend with the gap between bf16 values at each "
        "(fmt.spacing(128.0) and fmt.spacing(256.0) give them).",
        "An addition moves the sum only if the addend reaches past half of the gap at the sum. At exactly "
        "half it is a tie, and the tie goes to the even neighbour: the sum itself, when the sum is a power "
        "of two (its mantissa is all zeros).",
        "The gap at a value in the binade [2^k, 2^(k+1)) is 2^k times eps. So the sum stalls at the first "
        "power of two S where half the gap at S is no longer smaller than the largest addend: write that "
        "condition with S, eps and the addend, and solve it for S.",
    ),
)
def check_stall(stall_value: Any) -> None:
    """``stall_value(fmt, largest_addend)``: where a running sum of addends up to that stops growing,
    predicted from the format's parameters (a function that runs the sum itself is refused)."""
    label = "floating_point-stall"
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
        with _library_rounding(
            torch_dtypes=_LOW_PRECISION,
            torch_methods=("bfloat16", "half"),
            format_methods=("_round_numpy", "round", "encode", "neighbours"),
        ) as used:
            got = call(label, stall_value, fmt, addend)
        if used:
            fail(
                label,
                f"your function rounds in the format itself, with {used[0]}: it runs the sum instead of "
                "predicting where it stalls. The check runs the sums; the exercise is to predict them.",
                "work from the format's parameters (fmt.eps, fmt.mantissa_bits) and the largest addend, "
                "without rounding anything.",
            )
        want = reference()
        case = f"{fmt.name} with addends up to {addend!r}"
        number = isinstance(got, (int, float, np.floating)) and not isinstance(got, bool)
        if number and math.isclose(float(got), want / 2):
            fail(
                label,
                f"for {case} you predict {got!r}, but there the sum still grows: adding {addend!r} to "
                f"{float(got)!r} reaches the next {fmt.name} value.",
                "work out the gap between values at your predicted sum: is the largest addend a full gap "
                "there, or half of one?",
            )
        if number and math.isclose(float(got), want * 2):
            fail(
                label,
                f"for {case} you predict {got!r}, but the sum stops growing before it gets there.",
                "find the first power of two where the largest addend is no more than half the gap; a tie "
                "rounds to the even neighbour.",
            )
        expect_close(
            label,
            got,
            want,
            rtol=1e-12,
            case=case,
            hint="compare the largest addend with half the gap between values at your predicted sum, and at "
            "half of it.",
        )
