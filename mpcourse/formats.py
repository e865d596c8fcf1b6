"""Every floating-point format of mixed-precision training, as data, with exact rounding.

A binary floating-point number is a sign, an exponent and a significand. What makes fp16 differ
from bf16 or from the fp8 formats is only a handful of parameters: how many exponent and mantissa
bits, the exponent bias, and how (or whether) the format spends bit patterns on infinity, NaN and
negative zero. :class:`FloatFormat` holds exactly those parameters, and everything else (range,
precision, decoding a bit pattern, rounding a value) is derived from them, for any format::

    from mpcourse import formats

    fp16 = formats.get("fp16")
    fp16.max, fp16.tiny, fp16.smallest_subnormal, fp16.eps   # 65504.0, 2**-14, 2**-24, 2**-10
    fp16.decode(0x3C00)                                      # 1.0
    fp16.encode([1.0, 65520.0])                              # [0x3C00, 0x7C00]: 65520 overflows to inf
    formats.get("e4m3").round(x, saturate=True)              # nearest E4M3 values, as float64
    formats.round_tensor(t, "bf16")                          # the same for a torch tensor, on its device
    formats.custom(3, 4).max                                 # an IEEE-like E3M4 format: 15.5

Rounding is round-to-nearest, ties to even (the IEEE 754 default) unless another mode is asked
for; overflow gives infinity, NaN, or the largest finite value, as the format defines (or
saturates when asked). Conversions of float32 values agree bit for bit with ml_dtypes, except in
the corners documented in :meth:`FloatFormat.encode` (NaN payloads, NaN into a format that has no
NaN, E8M0 just above 2^-127 before ml_dtypes 0.7). float64 inputs are rounded once, from the exact
value; torch's CPU casts from float64 go through float32 and can round twice, while ml_dtypes 0.7
rounds once (:func:`float64_casts` asks the installed versions). numpy is the core;
:func:`round_tensor` runs the same algorithm with torch operations, so it works on any device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    import torch

__all__ = [
    "ALIASES",
    "ALL",
    "BF16",
    "E2M1",
    "E2M3",
    "E3M2",
    "E4M3",
    "E4M3FNUZ",
    "E5M2",
    "E5M2FNUZ",
    "E8M0",
    "FP16",
    "FP32",
    "FP64",
    "SHORT_NAMES",
    "TF32",
    "Fields",
    "FloatFormat",
    "custom",
    "dtype_name",
    "float64_casts",
    "get",
    "round_tensor",
    "table",
]

NanEncoding = Literal["ieee", "all_ones", "negative_zero", "none"]
Rounding = Literal["nearest", "toward_zero", "down", "up", "stochastic"]

NAN_ENCODINGS: tuple[str, ...] = ("ieee", "all_ones", "negative_zero", "none")
ROUNDINGS: tuple[str, ...] = ("nearest", "toward_zero", "down", "up", "stochastic")


class Fields(NamedTuple):
    """The three bit fields of a pattern, as integers (sign is 0 for unsigned formats)."""

    sign: Any
    exponent: Any
    mantissa: Any


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format, described by its parameters.

    A pattern is ``[sign][exponent field: exponent_bits][mantissa field: mantissa_bits]``. A normal
    value is ``(-1)^sign * 2^(exponent field - bias) * (1 + mantissa / 2^mantissa_bits)``: the leading
    1 of the significand is implied (the "hidden bit"), not stored. When ``subnormals`` is true, an
    exponent field of 0 means a subnormal (or zero): ``2^(1 - bias) * (0 + mantissa / 2^mantissa_bits)``,
    which fills the gap between the smallest normal value and zero evenly.

    Special values:

    - ``has_inf``: the IEEE encoding of infinity, exponent field all ones and mantissa 0.
    - ``nan``: where NaN lives. ``"ieee"``: exponent all ones with a non-zero mantissa (many
      patterns); ``"all_ones"``: only the pattern whose exponent and mantissa bits are all ones
      (OCP E4M3, MX E8M0), which frees the rest of the top binade for finite values;
      ``"negative_zero"``: only the pattern ``1000...0`` (the "fnuz" formats, which therefore have
      no negative zero); ``"none"``: the format has no NaN (FP4 and FP6).
    - ``signed``: False for E8M0, which has no sign bit.
    - ``subnormals``: False for E8M0, whose exponent field 0 is an ordinary power of two
      (2^-127): such a format has no subnormals and no zero.

    The metadata fields (``description``, ``introduced``, ``native``, ``sources``: keys of the
    course's bibliography) say what the format is for, who introduced it, and which hardware
    computes in it; they do not take part in comparisons.
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int
    has_inf: bool = True
    nan: NanEncoding = "ieee"
    signed: bool = True
    subnormals: bool = True
    description: str = field(default="", compare=False)
    introduced: str = field(default="", compare=False)
    native: str = field(default="", compare=False)
    sources: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        e, m = self.exponent_bits, self.mantissa_bits
        problems = []
        if not 1 <= e <= 11:
            problems.append(f"exponent_bits must be 1..11, got {e}")
        if not 0 <= m <= 52:
            problems.append(f"mantissa_bits must be 0..52, got {m}")
        if self.nan not in NAN_ENCODINGS:
            problems.append(f"nan must be one of {', '.join(NAN_ENCODINGS)}; got {self.nan!r}")
        if self.has_inf and (self.nan != "ieee" or m == 0):
            problems.append(
                "infinity uses the IEEE encoding, so has_inf needs nan='ieee' and mantissa_bits >= 1"
            )
        if self.nan == "ieee" and m == 0:
            problems.append("nan='ieee' needs mantissa_bits >= 1 (a NaN has a non-zero mantissa)")
        if self.nan == "negative_zero" and not self.signed:
            problems.append("nan='negative_zero' needs a sign bit")
        if not self.signed and self.nan == "none":
            problems.append("an unsigned format needs a NaN to map negative inputs to")
        if not self.subnormals and self.nan == "none":
            problems.append("a format without zero (subnormals=False) needs a NaN to map zero to")
        if problems:
            raise ValueError(f"invalid FloatFormat {self.name!r}: " + "; ".join(problems))
        if self.max_code < 0 or not math.isfinite(self.max) or self.max <= 0:
            raise ValueError(f"invalid FloatFormat {self.name!r}: it has no positive finite value")

    # ---- sizes and derived parameters --------------------------------------------------------

    @property
    def bits(self) -> int:
        """Total width in bits."""
        return int(self.signed) + self.exponent_bits + self.mantissa_bits

    @property
    def precision(self) -> int:
        """Significand bits, counting the hidden bit: ``mantissa_bits + 1``."""
        return self.mantissa_bits + 1

    @property
    def emin(self) -> int:
        """The exponent of the smallest normal binade: ``1 - bias`` (``-bias`` without subnormals)."""
        return 1 - self.bias if self.subnormals else -self.bias

    @property
    def emax(self) -> int:
        """The exponent of the largest finite binade."""
        return (self.max_code >> self.mantissa_bits) - self.bias

    @property
    def max_code(self) -> int:
        """The magnitude bits (pattern without the sign) of the largest finite value."""
        all_ones = (1 << (self.exponent_bits + self.mantissa_bits)) - 1
        if self.nan == "ieee":  # the top binade is reserved for inf and NaN
            return ((1 << self.exponent_bits) - 1 << self.mantissa_bits) - 1
        if self.nan == "all_ones":
            return all_ones - 1
        return all_ones

    @property
    def max(self) -> float:
        """The largest finite value."""
        m = self.mantissa_bits
        significand = (1 << m) + (self.max_code & ((1 << m) - 1))
        return math.ldexp(significand, (self.max_code >> m) - self.bias - m)

    @property
    def min(self) -> float:
        """The most negative finite value (``-max``; for an unsigned format, the smallest value)."""
        return -self.max if self.signed else self.tiny

    @property
    def tiny(self) -> float:
        """The smallest positive normal value, ``2^emin``."""
        return math.ldexp(1.0, self.emin)

    @property
    def smallest_subnormal(self) -> float:
        """The smallest positive value, ``2^(emin - mantissa_bits)``.

        A format without subnormals (E8M0) reports ``tiny``, as ``ml_dtypes.finfo`` does.
        """
        return math.ldexp(1.0, self.emin - self.mantissa_bits) if self.subnormals else self.tiny

    @property
    def eps(self) -> float:
        """Machine epsilon: the gap between 1 and the next value, ``2^-mantissa_bits``."""
        return math.ldexp(1.0, -self.mantissa_bits)

    @property
    def has_negative_zero(self) -> bool:
        """True when ``-0.0`` has its own pattern (not in fnuz formats, nor without a zero)."""
        return self.signed and self.subnormals and self.nan != "negative_zero"

    @property
    def nan_code(self) -> int | None:
        """The pattern this library writes for a (positive) NaN; None if the format has no NaN."""
        m = self.mantissa_bits
        if self.nan == "ieee":  # the canonical quiet NaN: top exponent, mantissa MSB set
            return ((1 << self.exponent_bits) - 1 << m) | (1 << (m - 1))
        if self.nan == "all_ones":
            return (1 << (self.exponent_bits + m)) - 1
        if self.nan == "negative_zero":
            return 1 << (self.exponent_bits + m)
        return None

    @property
    def inf_code(self) -> int | None:
        """The pattern of +infinity; None if the format has none."""
        return ((1 << self.exponent_bits) - 1) << self.mantissa_bits if self.has_inf else None

    @property
    def storage_dtype(self) -> np.dtype:
        """The unsigned integer dtype :meth:`encode` returns patterns in."""
        for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
            if self.bits <= np.dtype(dtype).itemsize * 8:
                return np.dtype(dtype)
        raise AssertionError("unreachable: formats have at most 64 bits")

    @property
    def torch_dtype(self) -> torch.dtype | None:
        """The torch dtype of this format, or None if torch has none (tf32, fp4 unpacked, fp6, custom)."""
        import torch

        dtype = getattr(torch, self.name, None)
        return dtype if isinstance(dtype, torch.dtype) else None

    @property
    def ml_dtype(self) -> np.dtype | None:
        """The numpy dtype (from numpy or ml_dtypes, if installed) of this format, or None."""
        if self.name in ("float16", "float32", "float64"):
            return np.dtype(self.name)
        try:
            import ml_dtypes
        except ImportError:
            return None
        kind = getattr(ml_dtypes, self.name, None)
        return np.dtype(kind) if kind is not None else None

    def __str__(self) -> str:
        sign = "1 sign, " if self.signed else "no sign, "
        return (
            f"{self.name}: {self.bits} bits ({sign}{self.exponent_bits} exponent, {self.mantissa_bits} mantissa), "
            f"bias {self.bias}, max {self.max:.6g}, tiny {self.tiny:.6g}, eps {self.eps:.6g}"
        )

    # ---- bit patterns -> values --------------------------------------------------------------

    def decode(self, bits: Any) -> Any:
        """The values (float64) of bit patterns: any integer array-like, each in ``[0, 2^bits)``.

        NaN patterns decode to NaN and negative zero to ``-0.0``. Patterns of formats up to 16 bits
        are looked up in a table of all their values (built once), so decoding is one gather.

        Raises:
            TypeError: if ``bits`` is not integers (e.g. floats: to round values, use :meth:`encode`).
            ValueError: if a pattern is negative or does not fit in the format's width.
        """
        codes = self._check_bits(bits)
        if self.bits <= 16:
            out = _value_table(self)[codes]
        else:
            out = self._decode_arithmetic(codes.reshape(-1)).reshape(codes.shape)
        return out[()] if out.ndim == 0 else out

    def _decode_arithmetic(self, codes: np.ndarray) -> np.ndarray:
        e, m = self.exponent_bits, self.mantissa_bits
        codes = codes.astype(np.uint64)
        magnitude = codes & np.uint64((1 << (e + m)) - 1)
        exponent = (magnitude >> np.uint64(m)).astype(np.int64)
        mantissa = (magnitude & np.uint64((1 << m) - 1)).astype(np.float64)
        if self.subnormals:
            significand = np.where(exponent == 0, mantissa, mantissa + 2.0**m)
            scale = np.maximum(exponent, 1) - self.bias - m
        else:
            significand = mantissa + 2.0**m
            scale = exponent - self.bias - m
        with np.errstate(over="ignore"):  # the top binade of IEEE formats: replaced below
            value = np.ldexp(significand, scale.astype(np.int32))
        if self.has_inf:
            value[magnitude == np.uint64(self.inf_code)] = np.inf
        if self.nan == "ieee":
            value[(exponent == (1 << e) - 1) & (mantissa != 0)] = np.nan
        elif self.nan == "all_ones":
            value[magnitude == np.uint64(self.nan_code)] = np.nan
        if self.signed:
            negative = (codes >> np.uint64(e + m)) == 1
            value = np.where(negative, -value, value)
            if self.nan == "negative_zero":
                value[negative & (magnitude == 0)] = np.nan
        return value

    def _check_bits(self, bits: Any) -> np.ndarray:
        codes = np.asarray(bits.detach().cpu() if hasattr(bits, "detach") else bits)
        if codes.dtype == np.bool_ or not np.issubdtype(codes.dtype, np.integer):
            raise TypeError(
                f"{self.name}.decode expects integer bit patterns (any numpy/torch integer dtype, e.g. "
                f"{self.storage_dtype}, or Python ints); got dtype {codes.dtype}. To round values to "
                f"{self.name}, use encode() or round()."
            )
        limit = 1 << self.bits
        if codes.size and (np.iinfo(codes.dtype).min < 0 or np.iinfo(codes.dtype).max >= limit):
            low, high = int(codes.min()), int(codes.max())
            if low < 0 or high >= limit:
                raise ValueError(
                    f"{self.name} patterns must be in [0, {limit - 1}] ({self.bits} bits); got values from {low} "
                    f"to {high}. Signed bytes? View them as unsigned first (np.uint8 / torch.uint8)."
                )
        return codes.astype(np.intp, copy=False)

    def fields(self, bits: Any) -> Fields:
        """Split patterns into their (sign, exponent field, mantissa field) integers."""
        codes = self._check_bits(bits).astype(np.int64)
        m, e = self.mantissa_bits, self.exponent_bits
        sign = (codes >> (e + m)) & 1 if self.signed else np.zeros_like(codes)
        parts = Fields(sign, (codes >> m) & ((1 << e) - 1), codes & ((1 << m) - 1))
        return Fields(*(p[()] if p.ndim == 0 else p for p in parts))

    def bit_string(self, bits: Any, sep: str = " ") -> Any:
        """Patterns as strings of 0s and 1s, fields separated by ``sep``: ``'0 01111 0000000000'``."""
        sign, exponent, mantissa = (np.asarray(f) for f in self.fields(bits))

        def one(s: int, x: int, mm: int) -> str:
            parts = [f"{s:b}"] if self.signed else []
            parts.append(f"{x:0{self.exponent_bits}b}")
            if self.mantissa_bits:
                parts.append(f"{mm:0{self.mantissa_bits}b}")
            return sep.join(parts)

        strings = [
            one(int(s), int(x), int(mm)) for s, x, mm in zip(sign.ravel(), exponent.ravel(), mantissa.ravel())
        ]
        return strings[0] if sign.ndim == 0 else np.array(strings).reshape(sign.shape)

    def classify(self, bits: Any) -> Any:
        """The class of each pattern: ``'zero'``, ``'subnormal'``, ``'normal'``, ``'inf'`` or ``'nan'``."""
        value = np.asarray(self.decode(bits))
        _, exponent, _ = (np.asarray(f) for f in self.fields(bits))
        kind = np.where(
            np.isnan(value),
            "nan",
            np.where(
                np.isinf(value),
                "inf",
                np.where(
                    value == 0, "zero", np.where((exponent == 0) & self.subnormals, "subnormal", "normal")
                ),
            ),
        )
        return kind[()] if kind.ndim == 0 else kind

    def describe(self, bits: int) -> str:
        """One pattern, decoded step by step: fields, class, and the formula that gives its value."""
        sign, exponent, mantissa = (int(f) for f in self.fields(int(bits)))
        kind = str(self.classify(int(bits)))
        value = float(self.decode(int(bits)))
        head = f"{self.bit_string(int(bits))}  ({kind})"
        if kind in ("nan", "inf"):
            return f"{head}: {value}"
        m = self.mantissa_bits
        sign_text = "-" if sign else "+"
        if kind == "subnormal" or (kind == "zero" and self.subnormals):
            formula = f"{sign_text}2^({1 - self.bias}) × (0 + {mantissa}/{1 << m})"
        else:
            lead = f"(1 + {mantissa}/{1 << m})" if m else "1"
            formula = f"{sign_text}2^({exponent} - {self.bias}) × {lead}"
        return f"{head}: {formula} = {value!r}"

    def values(self, *, include_negative: bool = True) -> np.ndarray:
        """Every finite value of the format, ascending, each once (zero once). Formats up to 20 bits."""
        if self.bits > 20:
            raise ValueError(
                f"{self.name} has 2^{self.bits} patterns, too many to list; values() is for formats of "
                "at most 20 bits (every 8- and 16-bit format, and tf32)"
            )
        all_values = self.decode(np.arange(1 << self.bits, dtype=np.int64))
        finite = np.unique(all_values[np.isfinite(all_values)])  # sorted; -0.0 and 0.0 merge
        return finite if include_negative else finite[finite >= 0]

    # ---- values -> bit patterns and rounded values -----------------------------------------

    def encode(
        self,
        values: Any,
        *,
        saturate: bool = False,
        rounding: Rounding = "nearest",
        rng: np.random.Generator | int | None = None,
    ) -> Any:
        """The bit patterns of the representable values nearest to ``values`` (default rounding).

        Every input is first converted to float64 exactly (float32, float16, bf16 arrays, Python
        numbers and CPU torch tensors of any float dtype are accepted), then rounded once. (torch's
        CPU casts from float64 go through float32 and so can round twice: 1 + 2^-4 + 2^-40 becomes
        1.0 in its E4M3 instead of 1.125. ml_dtypes 0.7 rounds once, as this does; what the
        installed versions do, :func:`float64_casts` measures. From float32 inputs all agree.)

        Args:
            values: real numbers, array-like.
            saturate: when False (the default) a value too large for the format becomes infinity if
                the format has one, otherwise NaN, otherwise (FP4, FP6) the largest value; this is
                what ml_dtypes does. When True it becomes ``±max``, and so do infinities (what torch's
                cast to ``float8_e4m3fn`` and CUDA's ``__NV_SATFINITE`` conversions do). NaN stays NaN.
            rounding: ``"nearest"`` (ties to even; IEEE 754's default), ``"toward_zero"``,
                ``"down"`` (toward -inf), ``"up"`` (toward +inf), or ``"stochastic"`` (round up with
                probability equal to the distance from the value below, in units of the gap). As in
                IEEE 754, a directed rounding that moves toward zero never overflows: it stops at max.
            rng: seed or ``numpy.random.Generator`` for stochastic rounding.

        Special inputs (ml_dtypes behaves the same unless noted):

        - NaN becomes the format's NaN with the input's sign (the canonical quiet NaN; payloads are
          not kept). A format without NaN (FP4, FP6) raises ValueError: there is nothing to map it
          to (ml_dtypes silently writes a zero pattern).
        - In a format without negative zero (fnuz), ``-0.0`` and negatives that round to zero give
          ``+0``.
        - E8M0 has no zero and no sign: zero and negative inputs give NaN (torch instead gives
          ``2^-127`` for zero and ignores the sign); positives below ``2^-127`` give ``2^-127``.
          Inputs strictly between ``2^-127`` and ``2^-126`` go to the nearer of the two, as ml_dtypes
          0.7 does; ml_dtypes up to 0.6 and torch send them all to ``2^-126``: they round float32's
          bit fields, and float32 numbers there are subnormal, a case their rounding did not treat by
          value.

        Returns:
            unsigned integers of :attr:`storage_dtype`, shaped like ``values`` (a numpy scalar for a
            scalar input).
        """
        code = self._round_numpy(values, "encode", saturate=saturate, rounding=rounding, rng=rng)
        return code[()] if code.ndim == 0 else code

    def round(
        self,
        values: Any,
        *,
        saturate: bool = False,
        rounding: Rounding = "nearest",
        rng: np.random.Generator | int | None = None,
    ) -> Any:
        """The nearest representable values, as float64: ``decode(encode(values))``, computed directly.

        This is what a quantiser needs ("what would this tensor look like stored in E4M3?"). Arguments
        and special cases as in :meth:`encode`.
        """
        value = self._round_numpy(values, "round", saturate=saturate, rounding=rounding, rng=rng)
        return value[()] if value.ndim == 0 else value

    def _round_numpy(self, values: Any, method: str, **options: Any) -> np.ndarray:
        """Run the rounding algorithm in numpy, in blocks small enough for the CPU caches.

        The algorithm is a chain of some thirty element-wise steps; on blocks of 16k values their
        temporaries stay in cache, which makes it about twice as fast as on a whole large array.
        """
        array = _as_float64(values, f"{self.name}.{method}")
        x = array.ravel()
        _reject_nan(self, np.isnan(x))  # up front, to count them all
        want_codes = method == "encode"
        out = np.empty(x.size, self.storage_dtype if want_codes else np.float64)
        ops = _numpy_ops(self)
        options["rng"] = (
            np.random.default_rng(options["rng"]) if options["rounding"] == "stochastic" else None
        )
        for start in range(0, x.size, _BLOCK):
            value, code = _round(x[start : start + _BLOCK], self, ops, want_codes=want_codes, **options)
            out[start : start + _BLOCK] = code if want_codes else value
        return out.reshape(array.shape)

    def neighbours(self, values: Any) -> tuple[Any, Any]:
        """The representable values just below and just above (equal to the value if it is representable)."""
        return self.round(values, rounding="down"), self.round(values, rounding="up")

    def spacing(self, values: Any) -> Any:
        """The gap between consecutive representable values in the binade of each value (its ulp).

        ``2^(e - mantissa_bits)`` for a value in ``[2^e, 2^(e+1))``; below ``tiny``, the constant
        subnormal gap; beyond ``max``, the gap of the top binade. NaN and infinity give NaN.
        """
        x = np.abs(_as_float64(values, f"{self.name}.spacing"))
        with np.errstate(divide="ignore", invalid="ignore"):
            exponent = np.frexp(x)[1].astype(np.int64) - 1
        exponent = np.clip(np.where(x == 0, self.emin, exponent), self.emin, self.emax)
        gap = np.ldexp(1.0, (exponent - self.mantissa_bits).astype(np.int32))
        gap = np.where(np.isfinite(x), gap, np.nan)
        return gap[()] if gap.ndim == 0 else gap


# ---- the rounding algorithm, once, for numpy and torch -----------------------------------------


class _Ops(NamedTuple):
    """The array operations the rounding algorithm needs, so that numpy and torch share one algorithm."""

    signbit: Callable[[Any], Any]
    isnan: Callable[[Any], Any]
    exponent: Callable[[Any], Any]  # floor(log2(x)) for finite x > 0, as int64
    ldexp: Callable[[Any, Any], Any]  # x * 2**e, exactly, for an int64 array e
    rint: Callable[[Any], Any]  # round half to even
    floor: Callable[[Any], Any]
    clip: Callable[[Any, int, int], Any]
    where: Callable[[Any, Any, Any], Any]
    fill: Callable[[Any, Any, Any], None]  # in place: array[mask] = scalar
    to_int: Callable[[Any], Any]
    uniform: Callable[[Any, Any], Any]  # uniform on [0, 1), shaped like x, from a seed or generator


_NUMPY = _Ops(
    signbit=np.signbit,
    isnan=np.isnan,
    exponent=lambda x: np.frexp(x)[1].astype(np.int64) - 1,
    ldexp=lambda x, e: x * ((e + 1023) << 52).view(np.float64),
    rint=np.rint,
    floor=np.floor,
    clip=np.clip,
    where=np.where,
    fill=lambda array, mask, value: np.copyto(array, value, where=mask),
    to_int=lambda x: x.astype(np.int64),
    uniform=lambda x, rng: np.random.default_rng(rng).random(np.shape(x)),
)
#: For formats whose scalings leave float64's normal exponents (float64 itself): numpy's own ldexp.
_NUMPY_WIDE = _NUMPY._replace(ldexp=lambda x, e: np.ldexp(x, e.astype(np.int32)))


def _numpy_ops(fmt: FloatFormat) -> _Ops:
    """The numpy operations for ``fmt``: 2^e from its bits when every scaling stays in [-1022, 1023]."""
    fast = fmt.emin - fmt.mantissa_bits >= -1022 and fmt.emax + 1 + fmt.mantissa_bits <= 1023
    return _NUMPY if fast else _NUMPY_WIDE


@functools.cache
def _torch_ops() -> _Ops:
    import torch

    def ldexp(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        # 2^e built from its float64 bits: exact, where torch.ldexp would compute 2^e in float32.
        # Valid for -1022 <= e <= 1023, which round_tensor guarantees (formats of <= 10 exponent bits).
        return x * ((e.to(torch.int64) + 1023) << 52).view(torch.float64)

    def uniform(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float64)

    return _Ops(
        signbit=torch.signbit,
        isnan=torch.isnan,
        exponent=lambda x: torch.frexp(x)[1].to(torch.int64) - 1,
        ldexp=ldexp,
        rint=torch.round,  # half to even, like np.rint
        floor=torch.floor,
        clip=lambda x, lo, hi: torch.clamp(x, lo, hi),
        where=torch.where,
        fill=lambda array, mask, value: array.masked_fill_(mask, value),
        to_int=lambda x: x.to(torch.int64),
        uniform=uniform,
    )


def _round(
    x: Any, fmt: FloatFormat, ops: _Ops, *, saturate: bool, rounding: str, rng: Any, want_codes: bool
) -> tuple[Any, Any]:
    """Round float64 ``x`` to ``fmt``: (values, patterns or None). The one implementation of rounding.

    For a finite non-zero magnitude ``a`` the binade exponent is ``E = floor(log2 a)``, held at
    ``emin`` below the normal range (which is what spaces subnormals evenly). Then ``a / 2^(E - m)``
    is the significand counted in units of the last place, and rounding it to an integer ``n`` is the
    whole rounding step: ``n * 2^(E - m)`` is the result, exactly, and a carry (``n = 2^(m+1)``) moves
    into the next binade by itself. The pattern is ``(E - emin) * 2^m + n``: the hidden bit of a
    normal ``n`` adds the 1 that its exponent field needs. With ``m >= 1``, ``n`` and the pattern
    have the same parity, so "ties to even" on ``n`` is ties to even on the pattern, as IEEE 754 says.
    Everything else is special cases: zero, infinity, NaN, overflow, and formats without some of them.
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; accepted: {', '.join(ROUNDINGS)}")
    m = fmt.mantissa_bits
    negative = ops.signbit(x)
    a = abs(x)
    nan_in = ops.isnan(a)
    inf_in = a == math.inf
    zero_in = a == 0
    regular = ~(nan_in | inf_in | zero_in)
    _reject_nan(fmt, nan_in)
    safe = abs(x)  # a fresh array, made safe for frexp below
    ops.fill(safe, ~regular, 1.0)

    exponent = ops.clip(ops.exponent(safe), fmt.emin, fmt.emax + 1)
    scaled = ops.ldexp(safe, m - exponent)  # exact: a power-of-two scaling
    toward_zero: Any = None  # where the magnitude is rounded down (only there can it not overflow)
    if rounding == "nearest":
        n = ops.rint(scaled)
    elif rounding == "stochastic":
        low = ops.floor(scaled)
        n = low + (ops.uniform(scaled, rng) < scaled - low)
    else:
        always = zero_in | ~zero_in  # an all-True array of the backend
        toward_zero = {"toward_zero": always, "down": ~negative, "up": negative}[rounding]
        n = ops.where(toward_zero, ops.floor(scaled), -ops.floor(-scaled))
    value = ops.ldexp(n, exponent - m)

    if not fmt.subnormals:  # no zero: anything below the smallest value is held there (as ml_dtypes does)
        below = value < fmt.tiny
        ops.fill(value, below, fmt.tiny)
        ops.fill(n, below, float(1 << m))
        ops.fill(exponent, below, fmt.emin)

    overflow = regular & (value > fmt.max)
    held = None  # where a rounding toward zero stopped at max: its pattern is max's too
    if toward_zero is not None:  # IEEE 754: a rounding toward zero stops at max
        held = overflow & toward_zero
        ops.fill(value, held, fmt.max)
        overflow = overflow & ~toward_zero
    big = overflow | inf_in
    # Inputs the format has no pattern for: NaN; for E8M0 also zero and negative numbers.
    invalid = nan_in
    if not fmt.subnormals:
        invalid = invalid | zero_in
    if not fmt.signed:
        invalid = invalid | negative
    big = big & ~invalid
    if saturate or fmt.nan == "none":  # a format with neither inf nor NaN can only saturate
        big_value, big_code, big_is_nan = fmt.max, fmt.max_code, False
    elif fmt.has_inf:
        big_value, big_code, big_is_nan = math.inf, fmt.inf_code, False
    else:
        big_value, big_code, big_is_nan = math.nan, 0, True
    ops.fill(value, zero_in, 0.0)
    ops.fill(value, big, big_value)
    ops.fill(value, invalid, math.nan)
    if fmt.signed:
        value = ops.where(negative, -value, value)
        if not fmt.has_negative_zero:
            ops.fill(value, value == 0, 0.0)  # fnuz: -0.0, and negatives that round to zero, give +0
    if not want_codes:
        return value, None

    nan_out = (invalid | big) if big_is_nan else invalid
    ops.fill(n, ~regular | big | nan_out, 0.0)
    n_int = ops.to_int(ops.clip(n, 0, 1 << (m + 1)))
    code = (exponent - fmt.emin) * (1 << m) + n_int - (0 if fmt.subnormals else 1 << m)
    ops.fill(code, ~regular | nan_out, 0)
    ops.fill(code, big, big_code)
    if held is not None:
        ops.fill(code, held & ~nan_out, fmt.max_code)
    if fmt.signed:
        sign = negative & ~nan_out
        if not fmt.has_negative_zero:
            sign = sign & (code != 0)
        if fmt.nan in ("ieee", "all_ones"):  # these NaNs keep the sign of the input
            sign = sign | (negative & nan_out)
        code = code + ops.to_int(sign) * (1 << (fmt.bits - 1))
    if fmt.nan_code is not None:
        code = code + ops.to_int(nan_out) * fmt.nan_code
    return value, code


#: Values per block of the numpy rounding (see FloatFormat._round_numpy).
_BLOCK = 1 << 14


def _reject_nan(fmt: FloatFormat, nan_mask: Any) -> None:
    """A format without NaN has no pattern for a NaN input: say so rather than invent one."""
    if fmt.nan == "none" and bool(nan_mask.any()):
        raise ValueError(
            f"{fmt.name} has no NaN, and {int(nan_mask.sum())} input value(s) are NaN: there is no pattern to "
            "map them to. Replace or mask the NaNs first (ml_dtypes silently writes a zero pattern)."
        )


def _as_float64(values: Any, what: str) -> np.ndarray:
    """Values as a float64 numpy array (exact for every float input), or a clear error."""
    if hasattr(values, "detach"):  # a torch tensor, bf16 and fp8 included
        import torch

        if values.is_complex():
            raise TypeError(f"{what} expects real numbers; got a complex tensor")
        return values.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(values)
    if array.dtype.kind not in "biuf" and not _is_ml_float(array.dtype):
        raise TypeError(
            f"{what} expects real numbers (Python numbers, numpy/ml_dtypes float or int arrays, torch tensors); "
            f"got {array.dtype}"
        )
    with np.errstate(invalid="ignore"):  # float32 signalling NaNs become quiet NaNs, silently
        return array.astype(np.float64)


def _is_ml_float(dtype: np.dtype) -> bool:
    """True for ml_dtypes's float types (bfloat16, float8_*, ...), which numpy reports as kind 'V'."""
    return dtype.kind == "V" and (dtype.name.startswith(("float", "bfloat")))


@functools.cache
def _value_table(fmt: FloatFormat) -> np.ndarray:
    """The value of every pattern of a format of at most 16 bits (decode is then one gather)."""
    table = fmt._decode_arithmetic(np.arange(1 << fmt.bits, dtype=np.int64))
    table.flags.writeable = False
    return table


# ---- the formats ---------------------------------------------------------------------------------


def _ieee(name: str, e: int, m: int, **meta: Any) -> FloatFormat:
    return FloatFormat(name, e, m, bias=(1 << (e - 1)) - 1, **meta)


FP64 = _ieee(
    "float64",
    11,
    52,
    description="IEEE 754 double precision (binary64)",
    introduced="IEEE 754-1985",
    native="every CPU and GPU",
    sources=("ieee754-2019",),
)
FP32 = _ieee(
    "float32",
    8,
    23,
    description="IEEE 754 single precision (binary32): the default dtype of PyTorch",
    introduced="IEEE 754-1985",
    native="every CPU and GPU",
    sources=("ieee754-2019",),
)
TF32 = _ieee(
    "tf32",
    8,
    10,
    description="TensorFloat-32: a tensor-core math mode for fp32 matmuls (fp32 range, 10 mantissa bits, "
    "fp32 accumulation), never a storage type; stored here as 19-bit patterns",
    introduced="NVIDIA, 2020 (Ampere A100)",
    native="NVIDIA tensor cores from Ampere (sm_80) on",
    sources=("nvidia2020tf32", "pytorch-cuda-semantics"),
)
FP16 = _ieee(
    "float16",
    5,
    10,
    description="IEEE 754 half precision (binary16)",
    introduced="IEEE 754-2008",
    native="NVIDIA tensor cores from Volta (sm_70) on; CPUs with AVX512-FP16 or AMX-FP16",
    sources=("ieee754-2019", "micikevicius2018mixed", "intel-amx"),
)
BF16 = _ieee(
    "bfloat16",
    8,
    7,
    description="brain floating point: fp32's exponent with a 7-bit mantissa (fp32 with 16 bits cut off)",
    introduced="Google Brain, for TPUs",
    native="Google TPUs; NVIDIA tensor cores from Ampere (sm_80) on; CPUs with AVX512-BF16 or AMX",
    sources=("google2019bf16", "kalamkar2019bf16", "intel-amx"),
)
E4M3 = FloatFormat(
    "float8_e4m3fn",
    4,
    3,
    bias=7,
    has_inf=False,
    nan="all_ones",
    description="OCP FP8 E4M3: no infinity, one NaN pattern per sign, so the top binade holds finite values",
    introduced="NVIDIA, Arm and Intel, 2022; OCP OFP8, 2023",
    native="NVIDIA tensor cores from Ada (sm_89) and Hopper (sm_90) on; AMD from MI350 (gfx950)",
    sources=("micikevicius2022fp8", "ocp2023ofp8", "triton-pr-7186"),
)
E5M2 = _ieee(
    "float8_e5m2",
    5,
    2,
    description="OCP FP8 E5M2: IEEE-style (inf and NaNs); fp16 with its mantissa cut to 2 bits",
    introduced="NVIDIA, Arm and Intel, 2022; OCP OFP8, 2023",
    native="NVIDIA tensor cores from Ada (sm_89) and Hopper (sm_90) on; AMD from MI350 (gfx950)",
    sources=("micikevicius2022fp8", "ocp2023ofp8", "triton-pr-7186"),
)
E4M3FNUZ = FloatFormat(
    "float8_e4m3fnuz",
    4,
    3,
    bias=8,
    has_inf=False,
    nan="negative_zero",
    description="E4M3 with bias 8, no infinity, no negative zero: the single NaN is 0x80",
    introduced="Graphcore (Noune et al., 2022)",
    native="AMD MI300 (gfx942); MI350 moved to the OCP formats",
    sources=("noune2022fp8", "triton-pr-7186"),
)
E5M2FNUZ = FloatFormat(
    "float8_e5m2fnuz",
    5,
    2,
    bias=16,
    has_inf=False,
    nan="negative_zero",
    description="E5M2 with bias 16, no infinity, no negative zero: the single NaN is 0x80",
    introduced="Graphcore (Noune et al., 2022)",
    native="AMD MI300 (gfx942); MI350 moved to the OCP formats",
    sources=("noune2022fp8", "triton-pr-7186"),
)
E8M0 = FloatFormat(
    "float8_e8m0fnu",
    8,
    0,
    bias=127,
    has_inf=False,
    nan="all_ones",
    signed=False,
    subnormals=False,
    description="MX scale: an unsigned power of two, 2^-127 to 2^127; no zero, no infinity; NaN is 0xFF",
    introduced="OCP Microscaling (MX) v1.0, 2023, as the shared scale of a block",
    native="NVIDIA tensor cores from Blackwell (sm_100) on, as MXFP8/MXFP4 block scales",
    sources=("ocp2023mx", "nvidia-te-recipes"),
)
E2M1 = FloatFormat(
    "float4_e2m1fn",
    2,
    1,
    bias=1,
    has_inf=False,
    nan="none",
    description="FP4 E2M1: ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}, no infinity, no NaN; useful with block scales",
    introduced="OCP Microscaling (MX) v1.0, 2023 (MXFP4); also NVIDIA's NVFP4",
    native="NVIDIA tensor cores from Blackwell (sm_100) on",
    sources=("ocp2023mx", "nvidia-te-recipes"),
)
E2M3 = FloatFormat(
    "float6_e2m3fn",
    2,
    3,
    bias=1,
    has_inf=False,
    nan="none",
    description="FP6 E2M3 (MXFP6 element): no infinity, no NaN",
    introduced="OCP Microscaling (MX) v1.0, 2023",
    sources=("ocp2023mx",),
)
E3M2 = FloatFormat(
    "float6_e3m2fn",
    3,
    2,
    bias=3,
    has_inf=False,
    nan="none",
    description="FP6 E3M2 (MXFP6 element): no infinity, no NaN",
    introduced="OCP Microscaling (MX) v1.0, 2023",
    sources=("ocp2023mx",),
)

#: Every named format, by its canonical name (PyTorch's and ml_dtypes's spelling, ``tf32`` aside).
ALL: dict[str, FloatFormat] = {
    f.name: f for f in (FP64, FP32, TF32, FP16, BF16, E4M3, E5M2, E4M3FNUZ, E5M2FNUZ, E8M0, E2M1, E2M3, E3M2)
}

#: Other names people use, lower case, mapped to canonical names.
ALIASES: dict[str, str] = {
    **{alias: "float64" for alias in ("fp64", "double", "binary64", "f64")},
    **{alias: "float32" for alias in ("fp32", "float", "single", "binary32", "f32")},
    **{alias: "tf32" for alias in ("tensorfloat32", "tensorfloat-32", "tfloat32")},
    **{alias: "float16" for alias in ("fp16", "half", "binary16", "f16")},
    **{alias: "bfloat16" for alias in ("bf16", "brain", "brainfloat16")},
    **{alias: "float8_e4m3fn" for alias in ("e4m3", "e4m3fn", "fp8_e4m3", "fp8_e4m3fn")},
    **{alias: "float8_e5m2" for alias in ("e5m2", "fp8_e5m2")},
    **{alias: "float8_e4m3fnuz" for alias in ("e4m3fnuz", "fp8_e4m3fnuz")},
    **{alias: "float8_e5m2fnuz" for alias in ("e5m2fnuz", "fp8_e5m2fnuz")},
    **{alias: "float8_e8m0fnu" for alias in ("e8m0", "e8m0fnu", "fp8_e8m0", "ue8m0", "fp8_e8m0fnu")},
    **{alias: "float4_e2m1fn" for alias in ("e2m1", "fp4", "fp4_e2m1", "float4_e2m1fn_x2", "e2m1fn")},
    **{alias: "float6_e2m3fn" for alias in ("e2m3", "fp6_e2m3", "e2m3fn")},
    **{alias: "float6_e3m2fn" for alias in ("e3m2", "fp6_e3m2", "e3m2fn")},
}


#: ml_dtypes types that are NOT the formats their names suggest to ML readers, and how to build them.
_LOOKALIKES: dict[str, str] = {
    "float8_e4m3": "IEEE-style E4M3 with infinities (max 240), not OCP's float8_e4m3fn (max 448): "
    "formats.custom(4, 3)",
    "float8_e3m4": "IEEE-style E3M4: formats.custom(3, 4)",
    "float8_e4m3b11fnuz": "E4M3 with bias 11, no infinity, NaN 0x80: "
    "formats.custom(4, 3, bias=11, has_inf=False, nan='negative_zero')",
}


def get(name_or_dtype: Any) -> FloatFormat:
    """The format for a name (``"fp16"``, ``"bf16"``, ``"e4m3"``, ``"float8_e5m2"``, ...), a torch or
    numpy/ml_dtypes dtype (``torch.bfloat16``, ``ml_dtypes.float8_e4m3fn``), or a FloatFormat.

    Raises:
        ValueError: for an unknown name or dtype, listing the accepted names.
        TypeError: for ``None``, which numpy would silently read as float64 (``np.dtype(None)``):
            a missing format is a bug in the caller, not a request for float64.
    """
    if isinstance(name_or_dtype, FloatFormat):
        return name_or_dtype
    if name_or_dtype is None:
        raise TypeError(
            "formats.get(None): no format given. Pass a name (e.g. 'fp16', 'bf16', 'e4m3', 'float8_e5m2'; "
            f"all of them: {', '.join(ALL)}), a torch or numpy/ml_dtypes dtype, or a FloatFormat."
        )
    if isinstance(name_or_dtype, str):
        key = name_or_dtype.strip().lower().removeprefix("torch.").removeprefix("ml_dtypes.")
    else:
        try:
            key = dtype_name(name_or_dtype)
        except TypeError:  # not a dtype at all: the error below names it
            key = repr(name_or_dtype)
    key = ALIASES.get(key, key)
    if key in ALL:
        return ALL[key]
    if key in _LOOKALIKES:
        raise ValueError(f"{name_or_dtype!r} is ml_dtypes's {key}, an {_LOOKALIKES[key]}")
    accepted = ", ".join(f"{name} ({', '.join(a for a, n in ALIASES.items() if n == name)})" for name in ALL)
    raise ValueError(
        f"unknown floating-point format {name_or_dtype!r}. Accepted names (aliases in brackets): {accepted}; "
        "torch and numpy/ml_dtypes dtypes of these formats; or build another one with "
        "formats.custom(exponent_bits, mantissa_bits)."
    )


#: The short spellings of :func:`dtype_name` (``short=True``), used in dense tables (profiler kernels).
SHORT_NAMES: dict[str, str] = {
    "float64": "fp64",
    "float32": "fp32",
    "float16": "fp16",
    "bfloat16": "bf16",
    "float8_e4m3fn": "e4m3",
    "float8_e5m2": "e5m2",
    "float8_e4m3fnuz": "e4m3fnuz",
    "float8_e5m2fnuz": "e5m2fnuz",
    "float8_e8m0fnu": "e8m0",
}


def dtype_name(dtype: Any, *, short: bool = False) -> str:
    """A dtype's name as PyTorch and numpy spell it in code: ``torch.bfloat16`` -> ``"bfloat16"``.

    Takes torch dtypes and numpy dtypes or scalar types (ml_dtypes' included), so that every table
    of the course names a dtype the same way. ``short=True`` gives the spelling of
    :data:`SHORT_NAMES` (``"bf16"``, ``"e4m3"``) where there is one, the full name otherwise.

    Raises:
        TypeError: for anything that is not a dtype (a name is not: :func:`get` reads names).
    """
    if isinstance(dtype, str) or dtype is None:
        raise TypeError(f"dtype_name takes a torch or numpy dtype, got {dtype!r} (formats.get reads names)")
    if type(dtype).__module__.startswith("torch"):
        name = str(dtype).removeprefix("torch.")
    else:
        try:
            name = np.dtype(dtype).name
        except (TypeError, ValueError):
            raise TypeError(f"dtype_name takes a torch or numpy dtype, got {dtype!r}") from None
    return SHORT_NAMES.get(name, name) if short else name


def custom(
    exponent_bits: int,
    mantissa_bits: int,
    *,
    bias: int | None = None,
    has_inf: bool = True,
    nan: NanEncoding = "ieee",
    name: str | None = None,
) -> FloatFormat:
    """A format of your own: IEEE-like by default (bias ``2^(e-1) - 1``, infinities, NaNs, subnormals).

    ``custom(3, 4)`` is an E3M4 format, ``custom(4, 3, has_inf=False, nan="all_ones")`` is OCP's E4M3.

    Raises:
        TypeError: if ``exponent_bits``, ``mantissa_bits`` or ``bias`` is not an integer (a float such
            as 4.5 or 4.0 is refused rather than truncated: a bit count has no fractions).
        ValueError: if a width is out of range (``exponent_bits`` 1..11, ``mantissa_bits`` 0..52, at
            least 1 with IEEE NaNs), checked here so the message names the argument, not a shift.
    """
    accepted = (
        "custom(exponent_bits, mantissa_bits) takes integers: exponent_bits from 1 to 11 and mantissa_bits "
        "from 0 to 52 (at least 1 with the default IEEE infinity and NaNs), e.g. custom(3, 4) for E3M4"
    )
    for arg, value in (("exponent_bits", exponent_bits), ("mantissa_bits", mantissa_bits), ("bias", bias)):
        if arg == "bias" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{arg} must be an integer; got {value!r} ({type(value).__name__}). {accepted}.")
    exponent_bits, mantissa_bits = int(exponent_bits), int(mantissa_bits)
    if not 1 <= exponent_bits <= 11:
        raise ValueError(f"exponent_bits = {exponent_bits} is out of range. {accepted}.")
    if not 0 <= mantissa_bits <= 52:
        raise ValueError(f"mantissa_bits = {mantissa_bits} is out of range. {accepted}.")
    if mantissa_bits == 0 and (has_inf or nan == "ieee"):
        raise ValueError(
            "mantissa_bits = 0 leaves no room for IEEE infinity and NaN (a NaN needs a non-zero mantissa); "
            f"pass has_inf=False with nan='all_ones', 'negative_zero' or 'none'. {accepted}."
        )
    bias = (1 << (exponent_bits - 1)) - 1 if bias is None else int(bias)
    suffix = "" if (has_inf, nan) == (True, "ieee") else "fn" if nan == "all_ones" else "custom"
    return FloatFormat(
        name or f"e{exponent_bits}m{mantissa_bits}{suffix}",
        exponent_bits,
        mantissa_bits,
        bias,
        has_inf=has_inf,
        nan=nan,
    )


def table(names: Any = None) -> pd.DataFrame:
    """The formats side by side, computed from their parameters: one row per format."""
    import pandas as pd

    chosen = [get(n) for n in names] if names is not None else list(ALL.values())
    rows = []
    for f in chosen:
        inf_text = "±inf" if f.has_inf else "none"
        nan_text = {
            "ieee": "exponent all ones, mantissa ≠ 0",
            "all_ones": "all ones" + (" (S.1111.111)" if f.signed and f.exponent_bits == 4 else ""),
            "negative_zero": "0x80 only (no −0)",
            "none": "none",
        }[f.nan]
        rows.append(
            {
                "format": f.name,
                "bits": f.bits,
                "S/E/M": f"{int(f.signed)}/{f.exponent_bits}/{f.mantissa_bits}",
                "bias": f.bias,
                "max": f.max,
                "tiny (min normal)": f.tiny,
                "smallest subnormal": f.smallest_subnormal if f.subnormals else math.nan,
                "eps": f.eps,
                "inf": inf_text,
                "NaN": nan_text,
                "description": f.description,
                "introduced by": f.introduced,
                "computes natively on": f.native,
            }
        )
    return pd.DataFrame(rows).set_index("format")


def round_tensor(
    t: torch.Tensor,
    fmt: Any,
    *,
    saturate: bool = False,
    rounding: Rounding = "nearest",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Round a tensor to a format, on its own device; the result has ``t``'s dtype and device.

    The same algorithm as :meth:`FloatFormat.round`, so the results are bit-identical: on a GPU it
    runs as torch operations on the device (in float64, so it is exact); on a CPU, numpy's cache-sized
    blocks are faster, except for stochastic rounding with a ``generator``, which stays in torch.
    The values are stored back in ``t.dtype``, which must be able to hold them: float32 holds every
    format but float64; float16 holds every 8-bit format but E8M0.

    Args:
        t: a floating-point tensor.
        fmt: a format, or anything :func:`get` accepts (up to 10 exponent bits: not float64).
        saturate, rounding: as in :meth:`FloatFormat.encode`.
        generator: a ``torch.Generator`` on ``t``'s device, for stochastic rounding.
    """
    import torch

    fmt = get(fmt)
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise TypeError(
            f"round_tensor expects a floating-point torch tensor; got {type(t).__name__} "
            f"{getattr(t, 'dtype', '')}"
        )
    if fmt.exponent_bits > 10:
        raise ValueError(
            f"round_tensor handles formats of up to 10 exponent bits; {fmt.name} has {fmt.exponent_bits} "
            "(a float64 tensor is already exact)"
        )
    if t.device.type == "cpu" and generator is None:
        value = fmt.round(t, saturate=saturate, rounding=rounding)
        return torch.as_tensor(value).to(t.dtype).reshape(t.shape)
    return _round_with_torch(t, fmt, saturate=saturate, rounding=rounding, generator=generator)


def _round_with_torch(
    t: torch.Tensor, fmt: FloatFormat, *, saturate: bool, rounding: str, generator: torch.Generator | None
) -> torch.Tensor:
    """The rounding algorithm as torch operations on ``t``'s device (what round_tensor runs on a GPU)."""
    import torch

    x = t.detach().to(torch.float64)
    value, _ = _round(
        x, fmt, _torch_ops(), saturate=saturate, rounding=rounding, rng=generator, want_codes=False
    )
    return value.to(t.dtype)


def float64_casts(names: Any = ("bf16", "fp16", "e4m3", "e5m2", "fp4")) -> pd.DataFrame:
    """How the installed torch and numpy/ml_dtypes round a float64 into each format: once, or twice.

    Rounding a float64 to float32 first and then to a narrow format is not the same as rounding it
    once: when the first rounding lands exactly on a tie of the narrow format, the second one can go
    the wrong way. The probe for each format is ``x = 1 + eps/2 + 2^-40``, just above the tie between
    1 and ``1 + eps``. Rounded once, ``x`` becomes ``1 + eps``. Rounded to float32 first, it becomes
    the tie ``1 + eps/2`` itself (``2^-40`` is less than half of float32's gap at 1, ``2^-23``), and the
    tie goes to the even neighbour, 1. So a cast that gives 1 went through float32.

    Returns one row per format with the columns ``x``, ``rounded once``, ``via float32``, ``mpcourse``
    (this module's :meth:`FloatFormat.round`), ``torch`` (a CPU cast of a float64 tensor) and
    ``numpy/ml_dtypes`` (numpy's cast for float16, ml_dtypes's for the others), each a float64 value
    or NaN where the library lacks the format (or ml_dtypes is not installed); and ``torch rounds
    once`` and ``numpy/ml_dtypes rounds once``: True, False, or None where there is no value.
    """
    import pandas as pd
    import torch

    rows = {}
    for name in names:
        fmt = get(name)
        if fmt.mantissa_bits >= 23:
            raise ValueError(f"float64_casts probes formats narrower than float32; got {fmt.name}")
        x = 1.0 + fmt.eps / 2 + 2.0**-40
        row: dict[str, Any] = {
            "x": x,
            "rounded once": 1.0 + fmt.eps,
            "via float32": float(fmt.round(np.float32(x))),
            "mpcourse": float(fmt.round(x)),
        }
        dtype = fmt.torch_dtype
        row["torch"] = (
            torch.tensor(x, dtype=torch.float64).to(dtype).double().item() if dtype is not None else math.nan
        )
        ml_dtype = fmt.ml_dtype
        row["numpy/ml_dtypes"] = (
            float(np.array(x, dtype=np.float64).astype(ml_dtype).astype(np.float64))
            if ml_dtype is not None
            else math.nan
        )
        for library in ("torch", "numpy/ml_dtypes"):
            value = row[library]
            row[f"{library} rounds once"] = None if math.isnan(value) else value == row["rounded once"]
        rows[fmt.name] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def torch_e4m3fn_saturates() -> bool:
    """Whether this PyTorch's CPU cast to ``float8_e4m3fn`` saturates an overflow to ±448.

    The OCP specification allows either behaviour. PyTorch's cast gave NaN (like ml_dtypes) until a
    fix merged in April 2026 (pytorch/pytorch PR 178817, first in 2.12) made it saturate; an older
    torch (hosted notebook services often preinstall one) still gives NaN. Ask the installed
    version instead of assuming.
    """
    import torch

    return bool(torch.tensor([1000.0]).to(torch.float8_e4m3fn).float().isfinite().item())


# ---- benchmark: `mpcourse bench formats` -------------------------------------------------------
