"""mpcourse.formats against independent implementations: ml_dtypes, torch's casts, numpy, bit tricks.

Decoding is checked on every bit pattern of every format of at most 16 bits. Encoding is checked
on more than 10^6 float32 values: random bit patterns (every class of float32, NaN payloads and
subnormals included), values over many magnitudes, every tie (midpoint) of every format and its
float32 neighbours, each format's subnormal range and its overflow boundary.
"""

from __future__ import annotations

import dataclasses
import math

import ml_dtypes
import numpy as np
import pytest
import torch

from mpcourse import formats
from mpcourse.formats import FloatFormat, _round_with_torch

# The samples hold float32 signalling NaNs on purpose; converting them to float64 warns.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")

#: Formats that ml_dtypes (or numpy) implements, by our canonical name.
ML_DTYPES = {
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "float8_e4m3fnuz": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "float8_e5m2fnuz": np.dtype(ml_dtypes.float8_e5m2fnuz),
    "float8_e8m0fnu": np.dtype(ml_dtypes.float8_e8m0fnu),
    "float4_e2m1fn": np.dtype(ml_dtypes.float4_e2m1fn),
    "float6_e2m3fn": np.dtype(ml_dtypes.float6_e2m3fn),
    "float6_e3m2fn": np.dtype(ml_dtypes.float6_e3m2fn),
}
#: Formats torch can cast to, by our canonical name (float32 and float64 aside).
TORCH = [name for name, f in formats.ALL.items() if f.torch_dtype is not None and f.bits <= 16]
#: custom() formats that ml_dtypes also implements: an independent check of custom().
CUSTOM = {(3, 4): np.dtype(ml_dtypes.float8_e3m4), (4, 3): np.dtype(ml_dtypes.float8_e4m3)}


def same_values(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise: equal, with NaN equal to NaN and zeros compared by sign."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (np.isnan(a) & np.isnan(b)) | ((a == b) & (np.signbit(a) == np.signbit(b)))


def reference_bits(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """ml_dtypes's (or numpy's) encoding of float32 values, as integer patterns."""
    with np.errstate(all="ignore"):
        cast = values.astype(dtype)
    return cast.view(np.uint16 if dtype.itemsize == 2 else np.uint8).astype(np.int64)


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    """More than 10^6 float32 values that exercise every path of rounding."""
    rng = np.random.default_rng(2024)
    parts = [
        rng.integers(0, 2**32, 600_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
        (rng.standard_normal(200_000) * np.exp2(rng.uniform(-40, 40, 200_000))).astype(np.float32),
        np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan], np.float32),
    ]
    for fmt in [formats.get(n) for n in ML_DTYPES] + [formats.custom(e, m) for e, m in CUSTOM]:
        grid = fmt.values()
        if grid.size > 70_000:  # 16-bit formats: a random part of the grid keeps the sample small
            grid = np.sort(rng.choice(grid, 40_000, replace=False))
        mid = ((grid[1:] + grid[:-1]) / 2).astype(np.float32)  # exact: ties of every kind
        top = np.array([fmt.max, -fmt.max], np.float64)
        over = top + np.sign(top) * fmt.spacing(top) / 2  # the tie at the overflow boundary
        with np.errstate(over="ignore"):  # 2 * max of bf16 is inf in float32: fine
            edge = np.concatenate([mid, over, 2 * top, top]).astype(np.float32)
        tiny = rng.uniform(-2 * fmt.tiny, 2 * fmt.tiny, 2_000).astype(np.float32)  # subnormal range
        parts += [edge, np.nextafter(edge, np.inf), np.nextafter(edge, -np.inf), tiny]
    with np.errstate(over="ignore"):
        values = np.concatenate(parts)
    assert values.size >= 1_000_000
    return values


# ---- decoding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ML_DTYPES))
def test_every_pattern_decodes_as_ml_dtypes_does(name: str) -> None:
    fmt, dtype = formats.get(name), ML_DTYPES[name]
    patterns = np.arange(1 << fmt.bits)
    reference = patterns.astype(np.uint16 if dtype.itemsize == 2 else np.uint8).view(dtype).astype(np.float64)
    decoded = fmt.decode(patterns)
    assert same_values(decoded, reference).all()
    assert decoded.dtype == np.float64


@pytest.mark.parametrize("name", TORCH)
def test_every_pattern_decodes_as_torch_does(name: str) -> None:
    fmt = formats.get(name)
    unsigned = torch.uint16 if fmt.bits == 16 else torch.uint8
    patterns = torch.arange(1 << fmt.bits, dtype=torch.int32).to(unsigned)
    reference = patterns.view(fmt.torch_dtype).double().numpy()
    assert same_values(fmt.decode(patterns), reference).all()


@pytest.mark.parametrize("shape", [(e, m) for e, m in CUSTOM])
def test_custom_formats_decode_as_ml_dtypes_ieee_like_types(shape) -> None:
    fmt, dtype = formats.custom(*shape), CUSTOM[shape]
    reference = np.arange(256, dtype=np.uint8).view(dtype).astype(np.float64)
    assert same_values(fmt.decode(np.arange(256)), reference).all()


def test_tf32_patterns_are_the_top_19_bits_of_float32() -> None:
    patterns = np.arange(1 << 19, dtype=np.uint32)
    reference = (patterns << 13).view(np.float32).astype(np.float64)
    assert same_values(formats.TF32.decode(patterns), reference).all()


def test_float32_and_float64_decode_as_numpy_does() -> None:
    rng = np.random.default_rng(0)
    bits32 = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    assert same_values(formats.FP32.decode(bits32), bits32.view(np.float32)).all()
    bits64 = rng.integers(0, 2**63, 200_000, dtype=np.uint64) * np.uint64(2) + rng.integers(
        0, 2, 200_000
    ).astype(np.uint64)
    assert same_values(formats.FP64.decode(bits64), bits64.view(np.float64)).all()


# ---- encoding: ml_dtypes ---------------------------------------------------------------------


def e8m0_quirk(values: np.ndarray) -> np.ndarray:
    """Where ml_dtypes and torch knowingly differ from nearest rounding to E8M0 (see encode's docstring)."""
    return (values > 2.0**-127) & (values < 2.0**-126)


@pytest.mark.parametrize("name", list(ML_DTYPES))
def test_encoding_matches_ml_dtypes_bit_for_bit(name: str, sample: np.ndarray) -> None:
    fmt, dtype = formats.get(name), ML_DTYPES[name]
    values = (
        sample[~np.isnan(sample)] if fmt.nan == "none" else sample
    )  # see test_nan_in_a_format_without_nan
    got, want = fmt.encode(values).astype(np.int64), reference_bits(values, dtype)
    assert fmt.encode(values).dtype == fmt.storage_dtype
    differ = got != want
    # NaN payloads: ml_dtypes (numpy, for float16) keeps float32's payload bits; we write the
    # canonical quiet NaN with the input's sign. Both are NaN of the same sign.
    payload = np.isnan(values) & same_values(fmt.decode(got), fmt.decode(want))
    if name == "float8_e8m0fnu":
        quirk = e8m0_quirk(values)
        assert quirk.sum() > 100, "the sample must reach the interval where the libraries differ"
        nearest = np.where(values[quirk] < 1.5 * 2.0**-127, 2.0**-127, 2.0**-126)
        assert (fmt.decode(got[quirk]) == nearest).all()
        if not (got[quirk] == want[quirk]).all():  # ml_dtypes up to 0.6 (0.7 rounds to nearest, as we do):
            assert (want[quirk] == 1).all()  # everything in (2^-127, 2^-126) becomes 2^-126
            differ &= ~quirk
    assert not (differ & ~payload).any(), values[differ & ~payload][:10]


@pytest.mark.parametrize("shape", list(CUSTOM))
def test_custom_formats_encode_as_ml_dtypes(shape, sample: np.ndarray) -> None:
    fmt = formats.custom(*shape)
    got, want = fmt.encode(sample).astype(np.int64), reference_bits(sample, CUSTOM[shape])
    assert ((got == want) | (np.isnan(sample) & same_values(fmt.decode(got), fmt.decode(want)))).all()


@pytest.mark.parametrize("name", list(ML_DTYPES) + ["tf32", "float32"])
def test_round_is_decode_of_encode(name: str, sample: np.ndarray) -> None:
    fmt = formats.get(name)
    values = sample[~np.isnan(sample)] if fmt.nan == "none" else sample
    for saturate in (False, True):
        rounded = fmt.round(values, saturate=saturate)
        assert same_values(rounded, fmt.decode(fmt.encode(values, saturate=saturate))).all()


def test_float32_encoding_is_numpys_cast() -> None:
    rng = np.random.default_rng(1)
    values = rng.integers(0, 2**63, 300_000, dtype=np.uint64).view(np.float64)  # every float64 class
    values = np.concatenate(
        [values, rng.standard_normal(100_000) * 1e-40, rng.standard_normal(100_000) * 1e38]
    )
    with np.errstate(all="ignore"):
        want = values.astype(np.float32)
    got = formats.FP32.round(values)
    assert same_values(got, want).all()
    bits = formats.FP32.encode(values)
    finite = ~np.isnan(values)
    assert (bits[finite] == want[finite].view(np.uint32)).all()


def test_tf32_is_float32_rounded_to_10_mantissa_bits(sample: np.ndarray) -> None:
    """TF32 keeps float32's exponent and rounds the mantissa to 10 bits, ties to even: a bit trick."""
    u = sample.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0xFFF + ((u >> 13) & 1)) & ~np.uint64(0x1FFF)).astype(np.uint32)  # may carry into inf
    finite = np.isfinite(sample)
    assert same_values(formats.TF32.round(sample)[finite], rounded.view(np.float32)[finite]).all()
    assert (formats.TF32.encode(sample)[finite] == (rounded[finite] >> 13)).all()


def exact_nearest(fmt: FloatFormat, x: float) -> float:
    """Round to nearest even by exact rational arithmetic over the list of values: slow, and independent."""
    from fractions import Fraction

    grid = fmt.values()
    i = int(np.searchsorted(grid, x))
    if i == 0 or i == grid.size:
        raise AssertionError("keep the reference inside the range")
    lo, hi = grid[i - 1], grid[i]
    d_lo, d_hi = Fraction(x) - Fraction(lo), Fraction(hi) - Fraction(x)
    if d_lo != d_hi:
        nearest = float(lo if d_lo < d_hi else hi)
    else:
        nearest = float(lo if int(fmt.encode(lo)) % 2 == 0 else hi)
    return math.copysign(0.0, x) if nearest == 0 else nearest  # IEEE: a rounded zero keeps the sign


@pytest.mark.parametrize("name", ["float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float4_e2m1fn"])
def test_float64_inputs_are_rounded_once(name: str) -> None:
    """Ties nudged by less than float32 can resolve: we round once, exactly as rational arithmetic says."""
    fmt = formats.get(name)
    rng = np.random.default_rng(9)
    grid = fmt.values()
    grid = grid[(grid > -fmt.max) & (grid < fmt.max)]
    mid = (grid[1:] + grid[:-1]) / 2
    picks = rng.choice(mid, 300)
    nudge = picks * 2.0**-40 + 2.0**-1060  # far below float32's resolution at these values
    x = np.concatenate([picks, picks + nudge, picks - nudge])
    want = np.array([exact_nearest(fmt, float(v)) for v in x])
    assert same_values(fmt.round(x), want).all()
    if name == "float16":  # numpy also rounds float64 to float16 once
        assert same_values(x.astype(np.float16), want).all()


def ml_dtypes_version() -> tuple[int, ...]:
    return tuple(int(part) for part in ml_dtypes.__version__.split(".")[:2])


def test_torch_rounds_float64_through_float32_and_ml_dtypes_rounds_once() -> None:
    """Documented in FloatFormat.encode: torch's float64 casts round twice; ml_dtypes 0.7's and ours once."""
    x = 1 + 2**-4 + 2**-40  # just above the tie between 1 and 1.125 in E4M3
    assert formats.E4M3.round(x) == 1.125
    via_float32 = formats.E4M3.round(np.float32(x))  # float32(x) is the tie itself, which goes to even
    assert via_float32 == 1.0
    assert torch.tensor(x, dtype=torch.float64).to(torch.float8_e4m3fn).item() == via_float32
    y = 1 + 2**-8 + 2**-40  # just above the tie between 1 and 1 + 2^-7 in bf16
    assert torch.tensor(y, dtype=torch.float64).to(torch.bfloat16).item() == 1.0
    ml_e4m3 = float(np.float64(x).astype(ml_dtypes.float8_e4m3fn))
    ml_bf16 = float(np.float64(y).astype(ml_dtypes.bfloat16))
    if ml_dtypes_version() >= (0, 7):
        assert (ml_e4m3, ml_bf16) == (1.125, 1.0078125)
    else:  # older versions: either is possible; the chapter asks the installed one
        assert ml_e4m3 in (1.0, 1.125) and ml_bf16 in (1.0, 1.0078125)


def test_float64_casts_reports_what_each_library_does() -> None:
    table = formats.float64_casts()
    assert list(table.index) == ["bfloat16", "float16", "float8_e4m3fn", "float8_e5m2", "float4_e2m1fn"]
    assert (table["mpcourse"] == table["rounded once"]).all()
    assert (table["via float32"] == 1.0).all() and (table["rounded once"] > 1.0).all()
    assert table.loc["float8_e4m3fn", "rounded once"] == 1.125
    assert table.loc["bfloat16", "rounded once"] == 1.0078125
    # Every library value is one of the two roundings, and the flags say which.
    for library in ("torch", "numpy/ml_dtypes"):
        known = table[library].notna()
        values = table.loc[known, library]
        assert ((values == 1.0) | (values == table.loc[known, "rounded once"])).all()
        assert (
            table.loc[known, f"{library} rounds once"] == (values == table.loc[known, "rounded once"])
        ).all()
        assert table.loc[~known, f"{library} rounds once"].isna().all()
    assert math.isnan(table.loc["float4_e2m1fn", "torch"])  # torch has only a packed fp4 (two per byte)
    assert table.loc["float16", "numpy/ml_dtypes rounds once"]  # numpy rounds float64 to float16 once
    assert not table["torch rounds once"].dropna().any()  # torch's CPU casts go through float32
    if ml_dtypes_version() >= (0, 7):
        assert table["numpy/ml_dtypes rounds once"].all()


def test_float64_casts_refuses_formats_as_wide_as_float32() -> None:
    with pytest.raises(ValueError, match="narrower than float32"):
        formats.float64_casts(["fp32"])
    assert list(formats.float64_casts(["tf32"]).index) == ["tf32"]


# ---- encoding: torch ------------------------------------------------------------------------------


def torch_bits(values: np.ndarray, name: str) -> np.ndarray:
    fmt = formats.get(name)
    cast = torch.from_numpy(values.copy()).to(fmt.torch_dtype)
    return cast.view(torch.uint16 if fmt.bits == 16 else torch.uint8).numpy().astype(np.int64)


@pytest.mark.parametrize("name", [n for n in TORCH if n != "float8_e8m0fnu"])
def test_torch_casts_saturate_only_to_e4m3fn(name: str, sample: np.ndarray) -> None:
    """torch's cast saturates to float8_e4m3fn (saturate=True, from torch 2.12) and nowhere else."""
    fmt = formats.get(name)
    want = torch_bits(sample, name)
    saturate = name == "float8_e4m3fn" and formats.torch_e4m3fn_saturates()
    got = fmt.encode(sample, saturate=saturate).astype(np.int64)
    assert ((got == want) | (np.isnan(sample) & same_values(fmt.decode(got), fmt.decode(want)))).all()


@pytest.mark.skipif(
    not formats.torch_e4m3fn_saturates(), reason="this torch (< 2.12) gives NaN like ml_dtypes"
)
def test_e4m3fn_torch_saturates_where_ml_dtypes_gives_nan(sample: np.ndarray) -> None:
    """The two libraries disagree exactly on values beyond E4M3's range (|x| > 464) and infinities."""
    fmt = formats.E4M3
    by_torch, by_ml = (
        fmt.decode(torch_bits(sample, fmt.name)),
        fmt.decode(reference_bits(sample, ML_DTYPES[fmt.name])),
    )
    differ = ~same_values(by_torch, by_ml)
    beyond = np.abs(sample.astype(np.float64)) > 464  # 464 itself is a tie that rounds (to even) to 448
    assert (differ == beyond).all()
    assert (np.abs(by_torch[beyond]) == 448).all() and np.isnan(by_ml[beyond]).all()
    assert same_values(fmt.round(sample, saturate=True), by_torch).all()
    assert same_values(fmt.round(sample, saturate=False), by_ml).all()


def test_e8m0_torch_differs_on_sign_zero_and_the_subnormal_interval(sample: np.ndarray) -> None:
    fmt = formats.E8M0
    want = torch_bits(sample, fmt.name)
    got = fmt.encode(sample).astype(np.int64)
    positive = (sample > 0) & ~e8m0_quirk(sample)
    assert (got[positive] == want[positive]).all()
    # torch maps zero to 2^-127 and ignores the sign; E8M0 has neither zero nor sign, so we give NaN.
    assert torch_bits(np.array([0.0, -2.0], np.float32), fmt.name).tolist() == [0x00, 0x80]
    assert np.isnan(fmt.round([0.0, -2.0])).all()


# ---- special values and the semantics of each format ------------------------------------------


def test_overflow_per_format_and_saturation() -> None:
    big = np.array([1e6, -1e6, np.inf, -np.inf])
    assert np.array_equal(formats.FP16.round(big), [np.inf, -np.inf, np.inf, -np.inf])
    assert np.isnan(formats.E4M3.round(big)).all()
    assert np.isnan(formats.E4M3FNUZ.round(big)).all()
    assert np.array_equal(formats.E2M1.round(big), [6, -6, 6, -6])  # no inf, no NaN: saturates
    for fmt in formats.ALL.values():
        if fmt.signed:
            with np.errstate(over="ignore"):
                beyond = np.array([4 * fmt.max, -4 * fmt.max, np.inf, -np.inf])
            assert np.array_equal(fmt.round(beyond, saturate=True), [fmt.max, -fmt.max, fmt.max, -fmt.max])
    assert formats.E4M3.encode(464.0) == 0x7E and np.isnan(formats.E4M3.round(464.01))  # the tie goes to even


@pytest.mark.parametrize("name", list(ML_DTYPES) + ["tf32"])
def test_saturation_is_rounding_after_clipping(name: str, sample: np.ndarray) -> None:
    fmt = formats.get(name)
    values = sample[~np.isnan(sample)]
    clipped = np.clip(values.astype(np.float64), fmt.min if fmt.signed else -np.inf, fmt.max)
    assert same_values(fmt.round(values, saturate=True), fmt.round(clipped)).all()


def test_fnuz_has_no_negative_zero_and_one_nan() -> None:
    for fmt in (formats.E4M3FNUZ, formats.E5M2FNUZ):
        assert fmt.encode([-0.0, -1e-30, 0.0]).tolist() == [0, 0, 0]
        assert fmt.encode([np.nan, -np.nan]).tolist() == [0x80, 0x80]
        assert not fmt.has_negative_zero


def test_nan_keeps_its_sign_where_the_format_has_signed_nans() -> None:
    assert formats.E4M3.encode([np.nan, -np.nan]).tolist() == [0x7F, 0xFF]
    assert formats.E5M2.encode([np.nan, -np.nan]).tolist() == [0x7E, 0xFE]
    assert formats.BF16.encode([np.nan, -np.nan]).tolist() == [0x7FC0, 0xFFC0]
    assert formats.E8M0.encode([np.nan, -np.nan]).tolist() == [0xFF, 0xFF]


def test_nan_in_a_format_without_nan_is_an_error_not_a_silent_zero() -> None:
    for fmt in (formats.E2M1, formats.E2M3, formats.E3M2):
        with pytest.raises(ValueError, match="has no NaN"):
            fmt.encode([1.0, np.nan])
        assert (
            fmt.decode(reference_bits(np.array([np.nan], np.float32), ML_DTYPES[fmt.name]))[0] == 0
        )  # ml_dtypes


def test_e8m0_semantics() -> None:
    fmt = formats.E8M0
    assert fmt.encode([1.0, 2.0, 0.25, 2.0**127, 2.0**-127]).tolist() == [127, 128, 125, 254, 0]
    assert fmt.round([1.5, 3.0, 1.4]).tolist() == [2.0, 4.0, 1.0]  # ties round up, like ml_dtypes
    assert fmt.round(2.0**-140) == 2.0**-127  # no zero: held at the smallest value
    assert np.isnan(fmt.round([0.0, -1.0, 2.0**128, np.inf])).all()
    assert fmt.round(2.0**128, saturate=True) == 2.0**127
    assert fmt.min == fmt.tiny == 2.0**-127 and fmt.smallest_subnormal == 2.0**-127


def test_fp4_values() -> None:
    assert formats.E2M1.values(include_negative=False).tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert formats.E2M1.round([0.25, 0.75, 2.5, 5.0, 5.1]).tolist() == [
        0.0,
        1.0,
        2.0,
        4.0,
        6.0,
    ]  # ties to even


def test_subnormals_and_underflow() -> None:
    fp16 = formats.FP16
    assert fp16.round(2.0**-24) == 2.0**-24 and fp16.classify(1) == "subnormal"
    assert fp16.round(2.0**-25) == 0.0  # the tie between 0 and 2^-24 goes to even (0)
    assert fp16.round(1.5 * 2.0**-25) == 2.0**-24
    assert np.signbit(fp16.round(-1e-30))  # underflow keeps the sign: -0.0


# ---- properties against ml_dtypes.finfo and numpy.finfo ----------------------------------------


@pytest.mark.parametrize("name", list(ML_DTYPES) + ["float32", "float64"])
def test_properties_match_finfo(name: str) -> None:
    fmt = formats.get(name)
    info = (
        np.finfo(fmt.name) if name in ("float16", "float32", "float64") else ml_dtypes.finfo(ML_DTYPES[name])
    )
    assert fmt.max == float(info.max)
    assert fmt.min == float(info.min)
    assert fmt.tiny == float(info.smallest_normal)
    assert fmt.smallest_subnormal == float(info.smallest_subnormal)
    assert fmt.eps == float(info.eps)
    assert fmt.bits == info.bits and fmt.mantissa_bits == info.nmant
    assert fmt.emin == info.minexp and fmt.emax == info.maxexp - 1


@pytest.mark.parametrize("shape", list(CUSTOM))
def test_custom_properties_match_finfo(shape) -> None:
    fmt, info = formats.custom(*shape), ml_dtypes.finfo(CUSTOM[shape])
    assert (fmt.max, fmt.tiny, fmt.smallest_subnormal, fmt.eps) == tuple(
        float(v) for v in (info.max, info.smallest_normal, info.smallest_subnormal, info.eps)
    )


def test_values_lists_every_finite_value_once() -> None:
    assert formats.E4M3.values().size == 256 - 2 - 1  # two NaNs; +0 and -0 are one value
    assert formats.E5M2.values().size == 256 - 6 - 2 - 1  # six NaNs, two infinities
    assert formats.E4M3FNUZ.values().size == 255
    assert formats.E8M0.values().size == 255
    assert formats.FP16.values().size == 65536 - 2048 - 1
    with pytest.raises(ValueError, match="too many"):
        formats.FP32.values()


def test_spacing_is_numpys_spacing_within_range() -> None:
    rng = np.random.default_rng(3)
    with np.errstate(over="ignore"):
        x16 = np.abs(rng.standard_normal(10_000) * np.exp2(rng.uniform(-26, 15, 10_000))).astype(np.float16)
    x16 = x16[np.isfinite(x16) & (x16 < formats.FP16.max)]
    assert np.array_equal(formats.FP16.spacing(x16), np.spacing(x16).astype(np.float64))
    x32 = np.abs(rng.standard_normal(10_000) * np.exp2(rng.uniform(-140, 120, 10_000))).astype(np.float32)
    assert np.array_equal(formats.FP32.spacing(x32), np.spacing(x32).astype(np.float64))
    assert formats.BF16.spacing(256.0) == 2.0 and formats.E4M3.spacing(0.0) == 2.0**-9


def test_directed_rounding_gives_the_neighbours() -> None:
    rng = np.random.default_rng(4)
    for fmt in (formats.E4M3, formats.E5M2, formats.E2M1, formats.E4M3FNUZ):
        grid = fmt.values()
        x = rng.uniform(-fmt.max, fmt.max, 20_000)
        below, above = fmt.neighbours(x)
        i = np.searchsorted(grid, x, side="right")
        assert np.array_equal(below, grid[i - 1])  # the largest value <= x
        j = np.searchsorted(grid, x, side="left")
        assert np.array_equal(above, grid[j])  # the smallest value >= x
        toward_zero = fmt.round(x, rounding="toward_zero")
        assert np.array_equal(toward_zero, np.where(x >= 0, below, above))
        nearest = fmt.round(x)
        assert (np.abs(nearest - x) <= np.minimum(x - below, above - x) + 0).all()


def test_directed_rounding_overflows_as_ieee_754_says() -> None:
    fp16 = formats.FP16
    assert fp16.round(1e6, rounding="toward_zero") == 65504
    assert fp16.round(1e6, rounding="down") == 65504 and fp16.round(-1e6, rounding="down") == -np.inf
    assert fp16.round(1e6, rounding="up") == np.inf and fp16.round(-1e6, rounding="up") == -65504
    assert fp16.round(np.inf, rounding="toward_zero") == np.inf  # infinity is exact


def test_stochastic_rounding_is_unbiased_and_picks_a_neighbour() -> None:
    bf16 = formats.BF16
    x = np.full(200_000, 1.0 + 2.0**-9)  # a quarter of the way from 1 to the next bf16 value
    rounded = bf16.round(x, rounding="stochastic", rng=0)
    assert set(np.unique(rounded)) == {1.0, 1.0 + 2.0**-7}
    assert abs(rounded.mean() - x[0]) < 5 * 2.0**-7 * math.sqrt(0.25 * 0.75 / x.size)  # 5 standard errors
    assert np.array_equal(rounded, bf16.round(x, rounding="stochastic", rng=0))  # reproducible by seed


def _stochastic_inputs(fmt: FloatFormat) -> np.ndarray:
    """Values strictly inside the range of ``fmt``, at known fractions of their gap: normal values of
    several binades, subnormals (below tiny, where the gap is the smallest subnormal), values between
    zero and the smallest subnormal, exact values (which must come back unchanged), and their negatives."""
    fractions = np.array([0.0, 0.1, 0.25, 0.5, 0.9])
    lows = [fmt.tiny, 1.0, fmt.max / 2]  # lower neighbours in three binades (all values of the format)
    if fmt.subnormals:
        lows += [0.0, fmt.smallest_subnormal, fmt.tiny - 2 * fmt.smallest_subnormal]  # subnormal range
    lows = np.array([v for v in lows if v < fmt.max])
    gaps = np.where(lows < fmt.tiny, fmt.smallest_subnormal, fmt.spacing(lows))
    if not fmt.subnormals:  # E8M0: the gap above 2^k is 2^k (no mantissa bits)
        gaps = lows.copy()
    x = (lows[:, None] + fractions[None, :] * gaps[:, None]).ravel()
    assert np.array_equal(fmt.round(lows), lows)  # the grid is made of the format's own values
    return np.concatenate([x, -x]) if fmt.signed else x


#: Formats for the statistics of stochastic rounding: IEEE-like, OCP fp8, fnuz, fp4, E8M0, TF32, custom.
STOCHASTIC_FORMATS = [
    "bfloat16",
    "float16",
    "tf32",
    "float8_e4m3fn",
    "float8_e5m2",
    "float8_e4m3fnuz",
    "float8_e5m2fnuz",
    "float4_e2m1fn",
    "float8_e8m0fnu",
    "e3m4",
]


def _format(name: str) -> FloatFormat:
    return formats.custom(3, 4) if name == "e3m4" else formats.get(name)


@pytest.mark.parametrize("name", STOCHASTIC_FORMATS)
def test_stochastic_rounding_picks_a_neighbour_and_is_unbiased(name: str) -> None:
    """Every result is one of the two neighbours; the mean of many results is the input.

    For an input a fraction p of the gap g above its lower neighbour, one result is that neighbour
    plus g with probability p: its standard deviation is g * sqrt(p (1 - p)), so the mean of N draws has
    standard error g * sqrt(p (1 - p) / N). The test allows 5 standard errors per input (a chance of
    about 6e-7 each to fail for a correct implementation; the seed is fixed, so the test is repeatable).
    Exact inputs (p = 0) have no spread at all and must come back exactly.
    """
    fmt, draws = _format(name), 4000
    x = _stochastic_inputs(fmt)
    below, above = fmt.neighbours(x)
    rounded = fmt.round(np.broadcast_to(x, (draws, x.size)), rounding="stochastic", rng=1)
    assert ((rounded == below) | (rounded == above)).all()
    gap = above - below
    p = np.divide(np.abs(x - below), gap, out=np.zeros_like(x), where=gap > 0)
    standard_error = gap * np.sqrt(p * (1 - p) / draws)
    bias = np.abs(rounded.mean(axis=0) - x)
    too_far = bias > 5 * standard_error + 1e-12 * np.abs(x)  # (the 1e-12: float64 rounding of the mean)
    assert not too_far.any(), x[too_far]
    exact = gap == 0
    assert exact.any() and (rounded[:, exact] == x[exact]).all()
    inexact = (p > 0.05) & (p < 0.95)
    assert (rounded[:, inexact] != rounded[0, inexact]).any(axis=0).all()  # random, not a fixed rounding


@pytest.mark.parametrize("name", ["bfloat16", "float8_e4m3fn", "float8_e5m2fnuz", "float4_e2m1fn"])
def test_round_tensor_stochastic_picks_a_neighbour_and_is_unbiased(name: str) -> None:
    """The same statistics through round_tensor with a torch generator (the path a GPU takes)."""
    fmt, draws = _format(name), 4000
    x = _stochastic_inputs(fmt)
    below, above = fmt.neighbours(x)
    t = torch.from_numpy(np.broadcast_to(x, (draws, x.size)).copy())
    gen = torch.Generator().manual_seed(3)
    rounded = formats.round_tensor(t, fmt, rounding="stochastic", generator=gen).numpy()
    assert ((rounded == below) | (rounded == above)).all()
    gap = above - below
    p = np.divide(np.abs(x - below), gap, out=np.zeros_like(x), where=gap > 0)
    standard_error = gap * np.sqrt(p * (1 - p) / draws)
    assert (np.abs(rounded.mean(axis=0) - x) <= 5 * standard_error + 1e-12 * np.abs(x)).all()


# ---- round_tensor: the same algorithm with torch operations --------------------------------------


@pytest.mark.parametrize("name", [n for n in formats.ALL if n != "float64"])
def test_the_torch_algorithm_matches_numpys(name: str, sample: np.ndarray) -> None:
    """The torch operations that round_tensor runs on a GPU, run here on the CPU against numpy's."""
    fmt = formats.get(name)
    values = sample[::4]  # a quarter of the sample still holds every kind of input; the full one is slow here
    values = values[~np.isnan(values)] if fmt.nan == "none" else values
    t = torch.from_numpy(values.astype(np.float64))
    modes = [(False, "nearest"), (True, "nearest"), (False, "toward_zero"), (False, "down"), (False, "up")]
    for saturate, rounding in modes:
        got = _round_with_torch(t, fmt, saturate=saturate, rounding=rounding, generator=None).numpy()
        assert same_values(got, fmt.round(values, saturate=saturate, rounding=rounding)).all(), (
            saturate,
            rounding,
        )
    # Stochastic rounding: the two backends draw from different generators, so give both the same
    # uniform numbers; the rest of the algorithm must then agree bit for bit, patterns included.
    uniform = np.random.default_rng(4).random(values.shape)
    numpy_ops = formats._numpy_ops(fmt)._replace(uniform=lambda x, rng: uniform)
    torch_ops = formats._torch_ops()._replace(uniform=lambda x, rng: torch.from_numpy(uniform))
    for saturate in (False, True):
        options = {"saturate": saturate, "rounding": "stochastic", "rng": None, "want_codes": True}
        want_value, want_code = formats._round(values.astype(np.float64), fmt, numpy_ops, **options)
        got_value, got_code = formats._round(t.clone(), fmt, torch_ops, **options)
        assert same_values(got_value.numpy(), want_value).all(), saturate
        assert np.array_equal(got_code.numpy(), want_code), saturate


def test_round_tensor_keeps_dtype_and_agrees_with_torch_casts() -> None:
    x = torch.randn(4096, dtype=torch.float32) * 100
    for dtype in (torch.bfloat16, torch.float16, torch.float8_e5m2):
        rounded = formats.round_tensor(x, dtype)
        assert rounded.dtype == torch.float32
        assert torch.equal(rounded, x.to(dtype).float())
    saturates = formats.torch_e4m3fn_saturates()
    assert torch.equal(formats.round_tensor(x, "e4m3", saturate=saturates), x.to(torch.float8_e4m3fn).float())
    assert formats.round_tensor(x.bfloat16(), "e4m3").dtype == torch.bfloat16


def test_round_tensor_stochastic_with_a_generator() -> None:
    x = torch.full((100_000,), 1.0 + 2.0**-9)
    gen = torch.Generator().manual_seed(0)
    rounded = formats.round_tensor(x, "bf16", rounding="stochastic", generator=gen)
    assert set(rounded.unique().tolist()) == {1.0, 1.0 + 2.0**-7}
    assert abs(rounded.double().mean().item() - (1 + 2.0**-9)) < 5 * 2.0**-7 * math.sqrt(
        0.25 * 0.75 / x.numel()
    )


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: checks round_tensor on the device"
)
def test_round_tensor_on_gpu_matches_cpu(sample: np.ndarray) -> None:
    t = torch.from_numpy(sample.astype(np.float64))
    for name in ("bfloat16", "float8_e4m3fn", "float8_e8m0fnu", "float16"):
        on_gpu = formats.round_tensor(t.cuda(), name).cpu().numpy()
        assert same_values(on_gpu, formats.round_tensor(t, name).numpy()).all(), name


# ---- bit fields and descriptions ----------------------------------------------------------------


def test_fields_bit_strings_and_descriptions() -> None:
    fp16 = formats.FP16
    assert fp16.bit_string(0x3C00) == "0 01111 0000000000"
    assert fp16.fields(0xC000) == (1, 16, 0)
    assert fp16.describe(0x3E00).endswith("= 1.5")
    assert "subnormal" in fp16.describe(0x0001)
    assert formats.E8M0.bit_string(127) == "01111111"
    assert formats.E2M1.bit_string(np.array([1, 7])).tolist() == ["0 00 1", "0 11 1"]
    assert formats.E4M3.classify(np.array([0x00, 0x01, 0x08, 0x7E, 0x7F])).tolist() == [
        "zero",
        "subnormal",
        "normal",
        "normal",
        "nan",
    ]
    assert formats.E5M2.classify(0x7C) == "inf"
    assert formats.FP32.encode(1.0) == 0x3F800000


def test_table_is_computed_from_the_formats() -> None:
    t = formats.table()
    assert list(t.index) == list(formats.ALL)
    assert t.loc["float8_e4m3fn", "max"] == 448 and t.loc["float8_e5m2", "max"] == 57344
    assert t.loc["bfloat16", "S/E/M"] == "1/8/7"
    assert all(t["introduced by"].loc[["float16", "bfloat16", "float8_e4m3fn", "float8_e8m0fnu"]] != "")


# ---- names, dtypes and errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling, name",
    [
        ("fp16", "float16"),
        ("half", "float16"),
        ("FLOAT16", "float16"),
        ("bf16", "bfloat16"),
        ("bfloat16", "bfloat16"),
        ("e4m3", "float8_e4m3fn"),
        ("fp8_e5m2", "float8_e5m2"),
        ("float8_e4m3fn", "float8_e4m3fn"),
        ("e8m0", "float8_e8m0fnu"),
        ("fp4", "float4_e2m1fn"),
        ("tf32", "tf32"),
        ("fp32", "float32"),
        ("torch.bfloat16", "bfloat16"),
        (" e5m2fnuz ", "float8_e5m2fnuz"),
        (torch.float16, "float16"),
        (torch.float8_e4m3fn, "float8_e4m3fn"),
        (torch.float8_e8m0fnu, "float8_e8m0fnu"),
        (ml_dtypes.bfloat16, "bfloat16"),
        (ml_dtypes.float8_e5m2, "float8_e5m2"),
        (np.float32, "float32"),
        (np.dtype("float16"), "float16"),
        (ml_dtypes.float4_e2m1fn, "float4_e2m1fn"),
    ],
)
def test_get_accepts_names_aliases_and_dtypes(spelling, name: str) -> None:
    assert formats.get(spelling).name == name


def test_every_alias_and_dtype_round_trips() -> None:
    for alias, name in formats.ALIASES.items():
        assert formats.get(alias) is formats.ALL[name]
    for fmt in formats.ALL.values():
        assert formats.get(fmt) is fmt
        if fmt.torch_dtype is not None:
            assert formats.get(fmt.torch_dtype) is fmt
        if fmt.ml_dtype is not None:
            assert formats.get(fmt.ml_dtype) is fmt


@pytest.mark.parametrize("bad", ["fp12", "e3m4", torch.int8, np.int16, 3])
def test_unknown_formats_are_rejected_with_the_accepted_names(bad) -> None:
    with pytest.raises(
        ValueError, match=r"unknown floating-point format.*float8_e4m3fn \(e4m3.*formats\.custom"
    ):
        formats.get(bad)


def test_get_none_is_an_error_not_float64() -> None:
    """np.dtype(None) is float64: without its own check, get(None) would silently return FP64."""
    with pytest.raises(TypeError, match=r"get\(None\): no format given.*'bf16'.*float8_e4m3fn.*FloatFormat"):
        formats.get(None)
    with pytest.raises(TypeError, match="no format given"):
        formats.round_tensor(torch.ones(2), None)


@pytest.mark.parametrize(
    "args, error, message",
    [
        ((0, 3), ValueError, r"exponent_bits = 0 is out of range.*from 1 to 11"),
        ((12, 3), ValueError, r"exponent_bits = 12 is out of range"),
        ((4, -1), ValueError, r"mantissa_bits = -1 is out of range.*from 0 to 52"),
        ((4, 53), ValueError, r"mantissa_bits = 53 is out of range"),
        ((4, 0), ValueError, r"no room for IEEE infinity and NaN.*has_inf=False"),
        ((4.5, 3), TypeError, r"exponent_bits must be an integer; got 4\.5 \(float\).*takes integers"),
        ((4.0, 3), TypeError, r"exponent_bits must be an integer; got 4\.0"),
        ((4, "3"), TypeError, r"mantissa_bits must be an integer; got '3' \(str\)"),
        ((True, 3), TypeError, r"exponent_bits must be an integer; got True \(bool\)"),
        ((4, None), TypeError, r"mantissa_bits must be an integer; got None"),
    ],
)
def test_custom_validates_its_widths_up_front(args, error, message: str) -> None:
    with pytest.raises(error, match=message):
        formats.custom(*args)


def test_custom_accepts_numpy_integers_and_checks_the_bias_type() -> None:
    assert formats.custom(np.int64(3), np.uint8(4)) == formats.custom(3, 4)
    assert formats.custom(4, 0, has_inf=False, nan="all_ones").eps == 1.0  # no IEEE NaNs: mantissa 0 is fine
    with pytest.raises(TypeError, match=r"bias must be an integer; got 7\.5"):
        formats.custom(4, 3, bias=7.5)


def test_ml_dtypes_lookalikes_are_not_mistaken_for_ocp_formats() -> None:
    with pytest.raises(ValueError, match=r"IEEE-style E4M3.*not OCP's float8_e4m3fn.*custom\(4, 3\)"):
        formats.get(ml_dtypes.float8_e4m3)
    with pytest.raises(ValueError, match=r"custom\(3, 4\)"):
        formats.get("float8_e3m4")


def test_bad_bit_patterns_are_rejected_clearly() -> None:
    with pytest.raises(TypeError, match="expects integer bit patterns.*got dtype float32.*encode"):
        formats.FP16.decode(np.array([1.0], np.float32))
    with pytest.raises(TypeError, match="integer bit patterns"):
        formats.FP16.decode(np.array([True]))
    with pytest.raises(ValueError, match=r"patterns must be in \[0, 255\].*from 0 to 256"):
        formats.E4M3.decode([0, 256])
    with pytest.raises(ValueError, match=r"from -1 to .*View them as unsigned"):
        formats.E4M3.decode(np.array([-1, 3], np.int8))
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        formats.E2M1.decode(np.uint8(16))
    assert formats.E4M3.decode(np.array([0x38], np.int64)) == 1.0  # any integer dtype is fine in range


def test_bad_values_and_options_are_rejected_clearly() -> None:
    with pytest.raises(TypeError, match="expects real numbers.*got <U"):
        formats.FP16.encode(["1.0"])
    with pytest.raises(TypeError, match="complex"):
        formats.FP16.round(torch.ones(2, dtype=torch.complex64))
    with pytest.raises(
        ValueError, match="unknown rounding 'even'.*nearest, toward_zero, down, up, stochastic"
    ):
        formats.FP16.round(1.0, rounding="even")
    with pytest.raises(TypeError, match="floating-point torch tensor"):
        formats.round_tensor(torch.ones(2, dtype=torch.int32), "bf16")
    with pytest.raises(ValueError, match="up to 10 exponent bits"):
        formats.round_tensor(torch.ones(2), "fp64")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"exponent_bits": 0, "mantissa_bits": 3, "bias": 1}, "exponent_bits must be 1..11"),
        ({"exponent_bits": 4, "mantissa_bits": 60, "bias": 7}, "mantissa_bits must be 0..52"),
        ({"exponent_bits": 4, "mantissa_bits": 3, "bias": 7, "nan": "payload"}, "nan must be one of"),
        ({"exponent_bits": 4, "mantissa_bits": 3, "bias": 7, "nan": "all_ones"}, "has_inf needs nan='ieee'"),
        (
            {
                "exponent_bits": 4,
                "mantissa_bits": 3,
                "bias": 7,
                "has_inf": False,
                "signed": False,
                "nan": "none",
            },
            "unsigned",
        ),
    ],
)
def test_invalid_formats_are_rejected(kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FloatFormat("bad", **kwargs)


def test_formats_are_frozen_values() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        formats.FP16.bias = 3  # type: ignore[misc]
    assert formats.custom(5, 10) == dataclasses.replace(
        formats.FP16, name="e5m10"
    )  # metadata is not compared
    assert formats.custom(4, 3, has_inf=False, nan="all_ones").max == formats.E4M3.max


def test_scalars_in_scalars_out() -> None:
    assert isinstance(formats.FP16.decode(0x3C00), np.float64)
    assert formats.FP32.decode(0x3F800000) == 1.0 and formats.TF32.decode(np.array([[0x1FC00]])).shape == (
        1,
        1,
    )
    assert isinstance(formats.FP16.encode(1.0), np.uint16)
    assert formats.E4M3.round(0.3) == 0.3125
    assert formats.BF16.round(torch.tensor([257.0])).tolist() == [256.0]


def test_shapes_are_kept_and_inputs_never_modified() -> None:
    x = np.array([[1.0, -0.0, np.nan], [1e9, 3e-9, -7.3]])
    before = x.copy()
    assert formats.E4M3FNUZ.encode(x).shape == (2, 3) and formats.E8M0.round(x).shape == (2, 3)
    t = torch.from_numpy(x.copy())  # float64: round_tensor works on it without a copy of its own
    formats.round_tensor(t, "e4m3fnuz", saturate=True)
    assert same_values(x, before).all() and same_values(t.numpy(), before).all()
