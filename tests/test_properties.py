"""Property-based tests (hypothesis) of the public numeric helpers, against independent oracles.

- mpcourse.formats: encode/round of random values, shapes and input dtypes against ml_dtypes' casts
  and torch's; every rounding mode against a brute-force search of the format's values, on named
  and random custom formats; stochastic rounding always lands on a neighbour.
- mpcourse.fp8.quantize: stored elements are the format's rounding of x / scale, and the round
  trip errs by at most half a unit in the last place of the format (plus saturation), per element.
- mpcourse.loss_scaling.DynamicLossScaler: step for step identical to torch.amp.GradScaler on
  random schedules of infs and NaNs, settings and checkpoints.
- Bad inputs (wrong dtypes, NaN where there is no NaN, impossible axes, empty axes, bad settings)
  raise a clear error, never return a silent wrong answer.

The examples are derandomised (the same on every run, so CI is reproducible) and few enough to keep
this file within about a minute on two CPU cores; no example database is written.
"""

from __future__ import annotations

import functools
import math
import tempfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.extra import numpy as hnp

from mpcourse import formats, fp8
from mpcourse.exercises.conformance import EVENTS, compare_with_gradscaler, first_divergence
from mpcourse.fp8.recipes import ELEMENT_FORMATS, FP8_FORMATS, MX_FORMATS
from mpcourse.loss_scaling import DynamicLossScaler

# NaN payloads and float32 overflows in the drawn values are intended.
pytestmark = pytest.mark.filterwarnings(
    "ignore:invalid value encountered:RuntimeWarning", "ignore:overflow encountered:RuntimeWarning"
)


# Hypothesis keeps caches in .hypothesis/ of the working folder; a test run writes nothing into the repository.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "mpcourse-hypothesis")


def derandomised(max_examples: int):
    """Reproducible settings: the same examples on every run, no database, no per-example deadline."""
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


#: Formats ml_dtypes (or numpy) implements: the oracle of encode.
ML_FORMATS = [f for f in formats.ALL.values() if f.ml_dtype is not None and f.bits <= 32]
#: Formats torch casts to (besides float32 and float64): the oracle of round_tensor.
TORCH_FORMATS = [f for f in formats.ALL.values() if f.torch_dtype is not None and f.bits <= 16]
ROUNDINGS = ("nearest", "toward_zero", "down", "up")
ML_DTYPES_ROUNDS_E8M0_TO_NEAREST = tuple(int(p) for p in ml_dtypes.__version__.split(".")[:2]) >= (0, 7)


@functools.cache
def grid(fmt: formats.FloatFormat) -> np.ndarray:
    """Every finite value of ``fmt``, ascending (the brute-force oracle's search space)."""
    return fmt.values()


def magnitudes(fmt: formats.FloatFormat) -> st.SearchStrategy[float]:
    """Values from below the smallest subnormal to beyond the largest finite value of ``fmt``."""
    low, high = fmt.emin - fmt.mantissa_bits - 2, fmt.emax + 2
    return st.builds(
        lambda e, f, negative: (-1) ** negative * math.ldexp(1 + f, e),
        st.integers(low, high),
        st.floats(0, 1, exclude_max=True),
        st.booleans(),
    )


def points(fmt: formats.FloatFormat) -> st.SearchStrategy[float]:
    """The format's own values and the ties halfway between neighbours (where rounding is decided)."""
    if fmt.bits > 16:
        return st.nothing()
    values = grid(fmt)
    return st.builds(
        lambda i, tie: (values[i] + values[i + 1]) / 2 if tie else values[i],
        st.integers(0, len(values) - 2),
        st.booleans(),
    )


def float32_arrays(fmt: formats.FloatFormat, *, nan: bool = True, finite_within: float | None = None):
    """float32 arrays of random shape (0-d and empty included) of values that matter for ``fmt``."""
    if finite_within is not None:
        element = st.one_of(magnitudes(fmt), points(fmt)).filter(lambda v: abs(v) <= finite_within)
    else:
        element = st.one_of(
            st.floats(width=32, allow_nan=nan),
            magnitudes(fmt),
            points(fmt),
            st.sampled_from([0.0, -0.0, math.inf, -math.inf]),
        )
    shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)
    return hnp.arrays(np.float32, shapes, elements=element.map(np.float32))


def same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise equal, NaN equal to NaN, zeros compared by sign."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (np.isnan(a) & np.isnan(b)) | ((a == b) & (np.signbit(a) == np.signbit(b)))


# ---- formats: encode and round against ml_dtypes ---------------------------------------------------


@derandomised(150)
@given(data=st.data(), fmt=st.sampled_from(ML_FORMATS))
def test_encode_is_ml_dtypes_cast_bit_for_bit(data, fmt: formats.FloatFormat) -> None:
    x = data.draw(float32_arrays(fmt, nan=fmt.nan != "none"), label="x")
    got = fmt.encode(x)
    assert got.shape == x.shape and got.dtype == fmt.storage_dtype
    with np.errstate(all="ignore"):
        want = x.astype(fmt.ml_dtype).view(np.dtype(f"uint{8 * fmt.ml_dtype.itemsize}"))
    agree = got.astype(np.int64) == want.astype(np.int64)
    agree |= np.isnan(x) & np.isnan(
        fmt.decode(got)
    )  # NaN payloads: ml_dtypes keeps float32's, we write one NaN
    if fmt.name == "float8_e8m0fnu" and not ML_DTYPES_ROUNDS_E8M0_TO_NEAREST:  # documented in encode()
        agree |= (x > 2.0**-127) & (x < 2.0**-126)
    assert agree.all(), (x[~agree], got[~agree], want[~agree])


@derandomised(80)
@given(data=st.data(), fmt=st.sampled_from(ML_FORMATS))
def test_every_input_dtype_holding_the_same_values_rounds_the_same(data, fmt: formats.FloatFormat) -> None:
    x = data.draw(float32_arrays(fmt, nan=fmt.nan != "none"), label="x")
    expected = fmt.encode(x)
    for same_values in (
        x.astype(np.float64),
        torch.from_numpy(x.copy()),
        torch.from_numpy(x.astype(np.float64)),
        *([x.tolist()] if x.size else []),
    ):  # nested lists (an empty one has no shape to keep)
        assert (np.asarray(fmt.encode(same_values)) == expected).all()


@derandomised(80)
@given(
    data=st.data(),
    fmt=st.sampled_from(ML_FORMATS),
    rounding=st.sampled_from(ROUNDINGS),
    saturate=st.booleans(),
)
def test_round_is_the_value_of_the_encoded_pattern(data, fmt, rounding: str, saturate: bool) -> None:
    x = data.draw(float32_arrays(fmt, nan=fmt.nan != "none"), label="x")
    rounded = fmt.round(x, rounding=rounding, saturate=saturate)
    assert np.shape(rounded) == x.shape
    assert same(rounded, fmt.decode(fmt.encode(x, rounding=rounding, saturate=saturate))).all()


@pytest.mark.parametrize("fmt", [f for f in formats.ALL.values() if f.bits <= 32], ids=lambda f: f.name)
def test_a_directed_rounding_held_at_max_encodes_max(fmt: formats.FloatFormat) -> None:
    """Found by the property above: encode gave the infinity pattern where round gave max (IEEE 754: a
    rounding toward zero never overflows)."""
    x = np.array([fmt.max * 1.5, -fmt.max * 1.5, fmt.max * 2.0**80])
    for rounding in ROUNDINGS:
        assert same(fmt.decode(fmt.encode(x, rounding=rounding)), fmt.round(x, rounding=rounding)).all(), (
            rounding
        )
    assert fmt.round(fmt.max * 1.5, rounding="toward_zero") == fmt.max


# ---- formats: every rounding mode against a brute-force search ---------------------------------------


@st.composite
def signed_formats(draw) -> formats.FloatFormat:
    """A named signed format with subnormals of at most 16 bits, or a random custom one."""
    named = [
        f for f in formats.ALL.values() if f.bits <= 16 and f.signed and f.subnormals and f.name != "tf32"
    ]
    if draw(st.booleans()):
        return draw(st.sampled_from(named))
    e, m = draw(st.integers(2, 6)), draw(st.integers(1, 7))
    special = draw(
        st.sampled_from([(True, "ieee"), (False, "all_ones"), (False, "negative_zero"), (False, "none")])
    )
    return formats.custom(e, m, has_inf=special[0], nan=special[1])


def brute_force(fmt: formats.FloatFormat, x: np.ndarray, rounding: str) -> np.ndarray:
    """Round finite ``x`` within ±max by searching the format's value list (nothing of formats' algorithm)."""
    values = grid(fmt)
    down = values[np.searchsorted(values, x, side="right") - 1]
    up = values[np.searchsorted(values, x, side="left")]
    if rounding == "down":
        return down
    if rounding == "up":
        return up
    if rounding == "toward_zero":
        return np.where(x >= 0, down, up)

    def even(v: np.ndarray) -> np.ndarray:  # the last significand bit of v is 0
        quantum = np.maximum(
            np.ldexp(1.0, np.frexp(np.abs(v))[1] - 1 - fmt.mantissa_bits), fmt.smallest_subnormal
        )
        return np.round(np.abs(v) / quantum) % 2 == 0

    nearer = np.where(x - down < up - x, down, up)
    return np.where(x - down == up - x, np.where(even(down), down, up), nearer)


@derandomised(200)
@given(data=st.data(), fmt=signed_formats(), rounding=st.sampled_from(ROUNDINGS))
def test_rounding_picks_the_value_a_brute_force_search_picks(
    data, fmt: formats.FloatFormat, rounding: str
) -> None:
    x = data.draw(float32_arrays(fmt, finite_within=fmt.max), label="x").astype(np.float64)
    got = fmt.round(x, rounding=rounding)
    assert (got == brute_force(fmt, x, rounding)).all(), (fmt, x, got)
    zeros = got == 0
    expected_sign = np.signbit(x) if fmt.has_negative_zero else np.zeros_like(zeros)
    assert (
        np.signbit(got)[zeros] == expected_sign[zeros]
    ).all()  # -0.0 kept, except where the format has none


@derandomised(80)
@given(data=st.data(), fmt=signed_formats(), seed=st.integers(0, 2**32 - 1))
def test_stochastic_rounding_lands_on_a_neighbour(data, fmt: formats.FloatFormat, seed: int) -> None:
    x = data.draw(float32_arrays(fmt, finite_within=fmt.max), label="x").astype(np.float64)
    down, up = brute_force(fmt, x, "down"), brute_force(fmt, x, "up")
    for got in (
        fmt.round(x, rounding="stochastic", rng=seed),
        formats.round_tensor(
            torch.from_numpy(x), fmt, rounding="stochastic", generator=torch.Generator().manual_seed(seed)
        ).numpy(),
    ):
        assert ((got == down) | (got == up)).all()


# ---- formats: round_tensor against torch's casts --------------------------------------------------------


@derandomised(150)
@given(
    data=st.data(), fmt=st.sampled_from(TORCH_FORMATS), dtype=st.sampled_from([torch.float32, torch.float64])
)
def test_round_tensor_is_torchs_cast_within_range_and_keeps_the_dtype(data, fmt, dtype: torch.dtype) -> None:
    low = (
        2.0**-126 if fmt.name == "float8_e8m0fnu" else -fmt.max
    )  # torch's E8M0 cast differs below (see encode)
    x = data.draw(float32_arrays(fmt, finite_within=fmt.max), label="x")
    t = torch.from_numpy(x[x >= low] if fmt.name == "float8_e8m0fnu" else x).to(dtype)
    got = formats.round_tensor(t, fmt)
    assert got.dtype == dtype and got.shape == t.shape
    reference = t.float().to(fmt.torch_dtype).to(dtype)  # from float32 values: no double rounding
    assert same(got.numpy(), reference.numpy()).all()


@derandomised(80)
@given(data=st.data(), fmt=st.sampled_from([f for f in TORCH_FORMATS if f.signed]))
def test_saturation_is_clamping_then_rounding(data, fmt: formats.FloatFormat) -> None:
    x = data.draw(float32_arrays(fmt, nan=False), label="x")
    t = torch.from_numpy(x)
    reference = (
        t.clamp(-fmt.max, fmt.max).to(fmt.torch_dtype).float()
    )  # in range, torch's cast is exact in every version
    assert same(formats.round_tensor(t, fmt, saturate=True).numpy(), reference.numpy()).all()


# ---- formats: bad inputs ------------------------------------------------------------------------------


@derandomised(30)
@given(
    fmt=st.sampled_from(list(formats.ALL.values())),
    bad=st.sampled_from(
        [
            np.array([1 + 2j]),
            np.array(["1.5"]),
            np.array([None, 1.0], dtype=object),
            np.array([1], dtype="timedelta64[s]"),
        ]
    ),
)
def test_values_that_are_not_real_numbers_are_refused(fmt: formats.FloatFormat, bad: np.ndarray) -> None:
    for method in (fmt.encode, fmt.round):
        with pytest.raises(TypeError, match="expects real numbers"):
            method(bad)


@derandomised(30)
@given(
    fmt=st.sampled_from(list(formats.ALL.values())),
    dtype=st.sampled_from([torch.int32, torch.int64, torch.bool, torch.uint8]),
)
def test_round_tensor_refuses_tensors_that_are_not_floating_point(fmt: formats.FloatFormat, dtype) -> None:
    if fmt.exponent_bits > 10:
        return  # float64: refused for its width, tested in test_formats
    with pytest.raises(TypeError, match="floating-point torch tensor"):
        formats.round_tensor(torch.zeros(3, dtype=dtype), fmt)


@derandomised(30)
@given(data=st.data(), fmt=st.sampled_from([f for f in formats.ALL.values() if f.nan == "none"]))
def test_nan_into_a_format_without_nan_is_an_error_not_a_pattern(data, fmt: formats.FloatFormat) -> None:
    x = data.draw(float32_arrays(fmt), label="x").reshape(-1)
    x = x if x.size else np.zeros(1, np.float32)
    x[data.draw(st.integers(0, x.size - 1), label="where")] = data.draw(st.sampled_from([np.nan, -np.nan]))
    for method in (fmt.encode, fmt.round):
        with pytest.raises(ValueError, match=f"{fmt.name} has no NaN"):
            method(x)


# ---- fp8: quantize and dequantize -----------------------------------------------------------------------

#: (recipe, element formats, block size): every recipe, at block sizes small enough for quick examples.
RECIPES = [
    ("tensorwise", ELEMENT_FORMATS, None),
    ("rowwise", ELEMENT_FORMATS, None),
    ("blockwise", ELEMENT_FORMATS, 16),
    ("blockwise_2d", FP8_FORMATS, 8),
    ("mx", MX_FORMATS, 32),
    ("nvfp4", ("float4_e2m1fn",), 16),
]


@st.composite
def quantize_cases(draw) -> tuple[str, str, int | None, torch.Tensor, bool]:
    recipe, fmts, block = draw(st.sampled_from(RECIPES))
    fmt = draw(st.sampled_from(fmts))
    rows = (block or 1) * draw(st.integers(1, 2)) if recipe == "blockwise_2d" else draw(st.integers(1, 4))
    k = (block or 1) * draw(st.integers(1, 3)) if block else draw(st.integers(1, 40))
    exponents = draw(hnp.arrays(np.int32, (rows, k), elements=st.integers(-40, 40)))
    spread = draw(st.integers(0, 40))  # how far apart the magnitudes in one tensor are, in powers of two
    mantissas = draw(hnp.arrays(np.float32, (rows, k), elements=st.floats(-2, 2, width=32)))
    x = torch.from_numpy(np.ldexp(mantissas, exponents * spread // 40).astype(np.float32))
    return recipe, fmt, block, x, draw(st.booleans())


@derandomised(250)
@given(case=quantize_cases())
def test_quantize_rounds_each_element_and_dequantize_errs_by_half_an_ulp(case) -> None:
    recipe, name, block, x, saturate = case
    fmt = formats.get(name)
    q = fp8.quantize(x, recipe, name, block_size=block, saturate=saturate)
    scale = q.expanded_scale()
    assert q.data.shape == x.shape and scale.shape == x.shape and bool((scale >= 0).all())
    if recipe == "nvfp4":  # Transformer Engine's order, which the recipe follows: times the reciprocal scale
        y = torch.where(scale > 0, x * torch.div(1.0, scale), torch.zeros_like(x))
    else:  # as the recipe divides, in float32
        y = torch.where(scale > 0, x / scale, torch.zeros_like(x))
    elements = q.data.float().numpy()
    assert same(elements, fmt.round(y, saturate=saturate or fmt.nan == "none").astype(np.float32)).all()
    if not saturate and not np.isfinite(elements).all():
        return  # overflow without saturation is NaN or inf by the format's definition, not a rounding error
    x64, s, y64 = (t.double().numpy() for t in (x, scale, y))
    clipped = np.clip(y64, -fmt.max, fmt.max)
    half_ulp = np.maximum(np.abs(clipped) * 2.0 ** -(fmt.mantissa_bits + 1), fmt.smallest_subnormal / 2)
    bound = s * (np.abs(y64 - clipped) + half_ulp + np.abs(y64) * 2.0**-23) + np.abs(x64) * 2.0**-23
    if recipe == "nvfp4":  # a block scale below E4M3's smallest value rounds to 0, and so does its block
        tensor_scale = float(q.tensor_scale)
        bound = np.where(
            s == 0, tensor_scale * fmt.max * formats.E4M3.smallest_subnormal / 2 * (1 + 2.0**-20), bound
        )
    error = np.abs(q.dequantize().double().numpy() - x64)
    assert (error <= bound).all(), (recipe, name, error[error > bound][:5], bound[error > bound][:5])


@derandomised(80)
@given(recipe=st.sampled_from([r for r, _, _ in RECIPES]), shape=st.sampled_from([(3, 0), (0, 0), (2, 2, 0)]))
def test_an_empty_scaled_axis_is_an_error_not_an_empty_answer(recipe: str, shape: tuple[int, ...]) -> None:
    if recipe == "tensorwise":  # one scale for any tensor, empty or not: nothing is ambiguous
        assert fp8.quantize(torch.zeros(shape), recipe).dequantize().shape == shape
        return
    with pytest.raises(ValueError, match="empty|2-D tensor"):
        fp8.quantize(torch.zeros(shape), recipe)


@derandomised(80)
@given(recipe=st.sampled_from([r for r, _, _ in RECIPES]), dims=st.integers(1, 3), axis=st.integers(-6, 6))
def test_an_axis_the_tensor_lacks_is_an_error_not_another_axis(recipe: str, dims: int, axis: int) -> None:
    x = torch.ones((32,) * dims)
    if -dims <= axis < dims:
        return
    with pytest.raises(ValueError, match=f"axis={axis} is not a dimension"):
        fp8.quantize(x, recipe, axis=axis)


@derandomised(30)
@given(
    recipe=st.sampled_from([r for r, _, _ in RECIPES]),
    dtype=st.sampled_from([torch.int8, torch.int32, torch.int64, torch.bool, torch.uint8]),
)
def test_quantize_refuses_tensors_that_are_not_floating_point(recipe: str, dtype: torch.dtype) -> None:
    with pytest.raises(TypeError, match="floating-point tensor"):
        fp8.quantize(torch.zeros(4, 32, dtype=dtype), recipe)


# ---- the loss scaler against torch.amp.GradScaler -------------------------------------------------------


@derandomised(30)
@given(
    events=st.lists(st.sampled_from(EVENTS), min_size=1, max_size=30),
    seed=st.integers(0, 1000),
    growth_interval=st.integers(1, 4),
    init_exponent=st.integers(0, 20),
    growth_factor=st.sampled_from([2.0, 1.5, 4.0]),
    backoff_factor=st.sampled_from([0.5, 0.25, 0.3]),
    clip=st.sampled_from([None, 1.0]),
    optimizer=st.sampled_from(["adam", "sgd"]),
    data=st.data(),
)
def test_the_dynamic_scaler_is_gradscaler_on_any_schedule(
    events, seed, growth_interval, init_exponent, growth_factor, backoff_factor, clip, optimizer, data
) -> None:
    checkpoints = data.draw(st.sets(st.integers(1, len(events))), label="checkpoints")
    trace = compare_with_gradscaler(
        DynamicLossScaler,
        steps=len(events),
        events=events,
        seed=seed,
        init_scale=2.0**init_exponent,
        growth_factor=growth_factor,
        backoff_factor=backoff_factor,
        growth_interval=growth_interval,
        clip=clip,
        optimizer=optimizer,
        checkpoint_at=checkpoints,
    )
    assert first_divergence(trace) is None
    assert list(trace["event"]) == events and (trace["skipped"] == (trace["event"] != "clean")).all()


def _valid_setting(name: str, value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if name == "growth_interval":
        return isinstance(value, int) and value >= 1
    if not math.isfinite(value):
        return False
    return (
        value > 1 if name == "growth_factor" else (0 < value < 1 if name == "backoff_factor" else value > 0)
    )


@derandomised(150)
@given(
    name=st.sampled_from(["init_scale", "growth_factor", "backoff_factor", "growth_interval"]),
    value=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-3, 3),
        st.booleans(),
        st.just("2"),
        st.none(),
    ),
)
def test_bad_scaler_settings_are_refused_by_name(name: str, value: object) -> None:
    if _valid_setting(name, value):
        DynamicLossScaler(**{name: value})
        return
    with pytest.raises(ValueError, match=name if name != "init_scale" else "init_scale|scale"):
        DynamicLossScaler(**{name: value})
