"""mpcourse.fp8.nvfp4 against independent computations.

- A numpy + ml_dtypes reimplementation of the NVFP4 quantiser (TE's reference arithmetic, float32
  numpy operations, ml_dtypes' float8_e4m3fn and float4_e2m1fn casts), bit for bit, on tensors whose
  blocks span forty binades (so zero, subnormal and saturating scales all occur), 1x16 and 16x16.
- Every float32 value of a dense grid over [-6, 6] (all E2M1 values, every midpoint and its float32
  neighbours) against ml_dtypes' E2M1 cast; every E4M3 scale bit pattern, and every tie between two.
- Edge cases: all-zero tensors and blocks, all-equal blocks, amax just below a power of two,
  subnormal and underflowing E4M3 scales, saturating elements.
- Stochastic rounding: only the two E2M1 neighbours, unbiased within a bound derived from the
  Bernoulli variance, reproducible with a torch.Generator.
- The Hadamard transform: orthogonal, the popcount formula, cancels in float64 products, spreads an
  outlier; 2D weight scales give W^T exactly; bad input raises clear errors.
"""

from __future__ import annotations

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

from mpcourse import fp8
from mpcourse.fp8 import nvfp4

# Hypothesis keeps caches in .hypothesis/ of the working folder; a test run writes nothing into the repository.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "mpcourse-hypothesis")

F4 = ml_dtypes.float4_e2m1fn
F8 = ml_dtypes.float8_e4m3fn
F32 = np.float32
F32_MAX = F32(np.finfo(np.float32).max)
#: The 15 distinct E2M1 values, from ml_dtypes' decoding of all 16 bit patterns.
E2M1_GRID = np.unique(np.arange(16, dtype=np.uint8).view(F4).astype(np.float64))


# ---- an independent reference ---------------------------------------------------------------------


def reference(x: np.ndarray, tile: tuple[int, int] = (1, 16)) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """NVFP4 in numpy float32 with ml_dtypes casts, as TE's reference quantiser computes it:
    (E2M1 elements, E4M3 scale bit patterns, s_dec). Blocks whose scale is 0 hold ±6 here (TE)."""
    x = x.astype(F32)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        s_enc = min(F32(2688.0) / np.abs(x).max(), F32_MAX)
        s_enc = F32(1.0) if s_enc == 0 else F32(s_enc)
        s_dec = F32(1.0) / s_enc
        r, c = tile
        lead, (m, k) = x.shape[:-2], x.shape[-2:]
        blocks = np.abs(x).reshape(*lead, m // r, r, k // c, c).max(axis=(-3, -1))
        unrounded = np.minimum((blocks / F32(6.0)) * s_enc, F32_MAX)
        scale = np.clip(unrounded, -448, 448).astype(F8)
        encode = np.minimum(F32(1.0) / (scale.astype(F32) * s_dec), F32_MAX)
        per_element = np.repeat(np.repeat(encode, r, axis=-2), c, axis=-1)
        scaled = np.clip(x * per_element, F32(-6), F32(6))
    return scaled.astype(F4).astype(F32), scale.view(np.uint8), s_dec


def wide(shape: tuple[int, ...], seed: int, zero_blocks: bool = True) -> torch.Tensor:
    """Gaussian values whose 16-element blocks are scaled by 2^-30 ... 2^10, some blocks all zero."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    scale = np.exp2(rng.integers(-30, 11, (*shape[:-1], shape[-1] // 16)))
    if zero_blocks:
        scale[rng.random(scale.shape) < 0.05] = 0.0
    return torch.from_numpy(x * np.repeat(scale, 16, axis=-1)).float()


def pinned(blocks: np.ndarray) -> torch.Tensor:
    """A (1 + len(blocks), 16) tensor whose first row pins the global amax at 2688, so that s_enc = 1
    exactly and each further row's block scale is its amax / 6, unrounded."""
    first = np.zeros((1, 16), np.float32)
    first[0, 0] = 2688.0
    return torch.from_numpy(np.concatenate([first, np.asarray(blocks, np.float32)]))


def check_against_reference(x: torch.Tensor, block_shape: str) -> None:
    q = nvfp4.quantize(x, block_shape=block_shape)
    x_np = x.numpy() if x.dim() >= 2 else x.numpy()[None]
    elements, scale_bits, s_dec = reference(x_np, nvfp4.BLOCK_SHAPES[block_shape])
    data = q.data.numpy().reshape(elements.shape)
    zero_scale = q.expanded_scale().numpy().reshape(elements.shape) == 0
    assert np.array_equal(data[~zero_scale], elements[~zero_scale])  # TE's bits, element for element
    assert np.all(data[zero_scale] == 0)  # where TE stores ±6 under a zero scale: both decode to 0
    assert np.array_equal(q.scale.view(torch.uint8).numpy().reshape(scale_bits.shape), scale_bits)
    assert q.tensor_scale.item() == s_dec
    assert q.scale.dtype == torch.float8_e4m3fn and q.data.dtype == torch.float32


# ---- bit for bit ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("block_shape", ["1x16", "16x16"])
def test_matches_the_independent_reference_bit_for_bit(seed: int, block_shape: str) -> None:
    check_against_reference(wide((64, 128), seed), block_shape)


@settings(
    max_examples=60,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.sampled_from([16, 32]), st.sampled_from([16, 32, 48])),
        elements=st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=True),
    ),
    st.sampled_from(["1x16", "16x16"]),
)
def test_any_finite_float32_tensor_matches_the_reference(x: np.ndarray, block_shape: str) -> None:
    """Any finite float32 values, float32 subnormals and ±3.4e38 included, in either block shape."""
    check_against_reference(torch.from_numpy(x.copy()), block_shape)
    q = nvfp4.quantize(torch.from_numpy(x.copy()), block_shape=block_shape)
    assert torch.isfinite(q.dequantize()).all()


def test_activations_of_any_rank_use_blocks_along_the_last_dimension() -> None:
    x = wide((3, 16, 32), seed=7)
    check_against_reference(x, "1x16")
    q = nvfp4.quantize(x)
    assert q.scale.shape == (3, 16, 2) and q.dequantize().shape == x.shape
    check_against_reference(wide((64,), seed=8), "1x16")  # a 1-D tensor: one row


def test_every_element_value_and_tie_rounds_as_ml_dtypes() -> None:
    """With s_enc = 1 and a block scale of exactly 1, the elements are the E2M1 rounding of x itself:
    a dense float32 grid over [-6, 6], every midpoint between E2M1 values and its float32 neighbours."""
    grid = np.arange(-6.0, 6.0 + 1 / 64, 1 / 32, dtype=np.float32)
    mids = ((E2M1_GRID[1:] + E2M1_GRID[:-1]) / 2).astype(np.float32)
    values = np.concatenate(
        [grid, mids, np.nextafter(mids, F32(np.inf)), np.nextafter(mids, F32(-np.inf)), E2M1_GRID]
    ).astype(np.float32)
    values = np.concatenate([values, np.zeros(-len(values) % 15, np.float32)])
    rows = values.reshape(-1, 15)
    blocks = np.concatenate([np.full((len(rows), 1), 6.0, np.float32), rows], axis=1)  # amax 6: scale 1
    q = nvfp4.quantize(pinned(blocks))
    assert np.all(q.scale.float().numpy()[1:] == 1.0)
    want = rows.astype(F4).astype(np.float32)
    assert np.array_equal(q.data.numpy()[1:, 1:], want)
    assert set(np.unique(q.data.numpy()).tolist()) <= set(E2M1_GRID.tolist())


def test_every_e4m3_scale_bit_pattern_and_every_tie_between_two() -> None:
    """A block of amax 6·v has block scale v (s_enc = 1): exactly for every non-negative finite E4M3
    value v (subnormals included), and rounded to nearest even for every midpoint between two."""
    values = np.arange(0, 0x7F, dtype=np.uint8).view(F8).astype(np.float32)  # 0 ... 448, NaN excluded
    mids = (values[1:] + values[:-1]) / 2
    targets = np.concatenate([values, mids]).astype(np.float32)
    blocks = np.zeros((len(targets), 16), np.float32)
    blocks[:, 0] = 6 * targets  # exact in float32, and (6 v) / 6 = v exactly
    blocks[:, 1] = -3 * targets
    q = nvfp4.quantize(pinned(blocks))
    bits = q.scale.view(torch.uint8).numpy()[1:, 0]
    assert np.array_equal(bits[: len(values)], np.arange(0, 0x7F))  # every pattern, in order
    assert np.array_equal(bits, targets.astype(F8).view(np.uint8))  # ties to even, as ml_dtypes
    exact = q.dequantize().numpy()[1 : len(values) + 1]
    assert np.array_equal(exact[:, :2], blocks[: len(values), :2])  # 6v and -3v come back exactly


# ---- edge cases -----------------------------------------------------------------------------------


@pytest.mark.parametrize("block_shape", ["1x16", "16x16"])
def test_all_zero_tensors_and_blocks_give_zero_not_nan(block_shape: str) -> None:
    for x in (torch.zeros(32, 32), torch.cat([torch.zeros(16, 32), torch.randn(16, 32)])):
        steps = nvfp4.quantize_steps(x, block_shape=block_shape)
        q = steps.to_quantized()
        assert torch.isfinite(q.scale.float()).all() and torch.isfinite(q.tensor_scale).all()
        assert torch.isfinite(steps.block_encode).all() and torch.isfinite(steps.global_encode)
        assert torch.equal(q.dequantize()[:16], torch.zeros(16, 32))
        check_against_reference(x, block_shape)
    q = nvfp4.quantize(torch.zeros(16, 16))
    assert q.tensor_scale.item() == np.float32(1) / F32_MAX  # s_enc = 2688 / 0 = inf, held at fp32 max


def test_global_encode_scale_follows_te_guards() -> None:
    """s_enc = 2688 / amax; amax 0 gives inf, held at fp32 max; amax inf gives 0, replaced by 1."""
    amax = torch.tensor([2688.0, 1.0, 0.0, math.inf, 3.0])
    got = nvfp4.global_encode_scale(amax)
    assert got.tolist() == [1.0, 2688.0, float(F32_MAX), 1.0, float(F32(2688) / F32(3))]


def test_all_equal_blocks_store_six_within_the_e4m3_scale_rounding() -> None:
    """A block of 16 copies of c: its scale is E4M3(|c|/6 · s_enc) = (|c|/6 · s_enc)(1 + d) with
    |d| <= 2^-4 (half of E4M3's 2^-3 relative spacing, normal range), so c · encode = 6/(1 + d) lies
    in [5.65, 6.4]: it clamps or rounds to 6 (the next E2M1 value down, 4, is beyond the 5 midpoint),
    and the block decodes to ±6 · scale · s_dec, within a relative 2^-4 of c (for scales in E4M3's
    normal range, here: blocks within 2^8 of the global amax)."""
    rng = np.random.default_rng(0)
    c = np.exp2(rng.uniform(-4, 4, 64)).astype(np.float32) * rng.choice([-1, 1], 64)  # normal E4M3 scales
    x = torch.from_numpy(np.repeat(c, 16).reshape(4, 256))
    q = nvfp4.quantize(x)
    assert torch.equal(q.data.abs(), torch.full_like(q.data, 6.0))
    rel = ((q.dequantize() - x) / x).abs()
    assert rel.max().item() <= 2**-4
    check_against_reference(x, "1x16")


@pytest.mark.parametrize("k", [-20, -1, 0, 1, 7, 30])
def test_amax_just_below_a_power_of_two(k: int) -> None:
    """Global amax 2^k (1 - 2^-24) and a block of amax 6 · 2^j (1 - 2^-24) (with s_enc = 1): the
    scale rounds up to 2^j and the largest element is 6, within 2^-24 of the input."""
    below = np.float32(2.0**k) * np.float32(1 - 2**-24)
    x = wide((16, 64), seed=k + 50, zero_blocks=False)
    x = x / x.abs().max() * float(below)
    assert x.abs().max().item() == below
    check_against_reference(x, "1x16")
    check_against_reference(x, "16x16")
    j = max(min(k, 8), -9)
    block = np.zeros((1, 16), np.float32)
    block[0, 0] = np.float32(6 * 2.0**j) * np.float32(1 - 2**-24)
    q = nvfp4.quantize(pinned(block))
    assert q.scale.float()[1, 0].item() == 2.0**j and q.data[1, 0].item() == 6.0
    assert q.dequantize()[1, 0].item() == 6 * 2.0**j


def test_subnormal_and_underflowing_block_scales() -> None:
    """E4M3's subnormal scales k · 2^-9 (k = 1..7) are reached and rounded to nearest even; at and
    below 2^-10 a scale is 0 and its block is stored and decoded as 0 (TE stores ±6 under it)."""
    targets = np.array([2**-8, 3 * 2**-10, 5 * 2**-10, 2**-10, 2**-11, 7 * 2**-9], np.float32)
    blocks = np.zeros((len(targets), 16), np.float32)
    blocks[:, 0] = 6 * targets
    blocks[:, 1] = 2 * targets
    steps = nvfp4.quantize_steps(pinned(blocks))
    scale = steps.block_scale.float().numpy()[1:, 0]
    assert scale.tolist() == [2**-8, 2**-8, 2**-8, 0.0, 0.0, 7 * 2**-9]  # ties 1.5, 2.5, 0.5 (x 2^-9) -> even
    assert np.array_equal(scale, targets.astype(F8).astype(np.float32))
    deq = steps.dequantize().numpy()[1:]
    assert np.array_equal(deq[[0, 5], 0], 6 * targets[[0, 5]])  # exact where the scale is exact
    assert np.all(deq[3:5] == 0) and np.all(steps.elements.numpy()[4:6] == 0)
    q = steps.to_quantized()
    assert fp8.error_stats(pinned(blocks), q)["underflow"] > 0
    check_against_reference(pinned(blocks), "1x16")


def test_elements_saturate_when_the_block_scale_rounds_down() -> None:
    """amax 6 × 1.06 (s_enc = 1): the scale 1.06 rounds down to E4M3's 1.0, so amax · encode = 6.36,
    beyond E2M1's 6: it is clamped to 6 before rounding (TE's clamp), never NaN. (The scale's rounding
    is at most 2^-4 relative, so the product stays below 6.4, short of the tie at 7 above 6: to nearest,
    the clamp changes nothing; it keeps stochastic rounding on the grid.)"""
    block = np.zeros((1, 16), np.float32)
    block[0, :3] = [6 * 1.06, -6 * 1.06, 1.0]
    steps = nvfp4.quantize_steps(pinned(block))
    assert steps.block_scale.float()[1, 0].item() == 1.0
    assert steps.elements[1, :3].tolist() == [6.0, -6.0, 1.0]
    assert steps.scaled[1, :2].abs().max().item() == 6.0
    assert (pinned(block)[1, 0] * steps.block_encode[1, 0]).item() == pytest.approx(6.36, rel=1e-6)
    sr = nvfp4.quantize(pinned(block), rounding="stochastic", generator=torch.Generator().manual_seed(0))
    assert sr.data[1, :2].tolist() == [6.0, -6.0]


# ---- stochastic rounding --------------------------------------------------------------------------


def test_stochastic_rounding_picks_only_the_two_neighbours() -> None:
    x = wide((64, 64), seed=11)
    steps = nvfp4.quantize_steps(x, rounding="stochastic", generator=torch.Generator().manual_seed(0))
    s = steps.scaled.double().numpy()
    e = steps.elements.double().numpy()
    hi_index = np.searchsorted(E2M1_GRID, s, side="left")
    lo = E2M1_GRID[np.clip(np.searchsorted(E2M1_GRID, s, side="right") - 1, 0, 14)]
    hi = E2M1_GRID[np.clip(hi_index, 0, 14)]
    assert np.all((e == lo) | (e == hi))
    on_grid = np.isin(s, E2M1_GRID)
    assert np.array_equal(e[on_grid], s[on_grid])  # representable values never move
    assert (e != steps.x.numpy().astype(np.float64)).any()


def test_stochastic_rounding_is_unbiased_within_the_bernoulli_bound() -> None:
    """v between E2M1 neighbours lo < hi (gap g) becomes hi with probability p = (v - lo)/g: the mean of
    n draws has expectation v and standard deviation g sqrt(p(1-p)/n) <= g/(2 sqrt n). With n = 4096
    draws per value, every mean lies within 5 of its own standard deviations (plus float32 rounding);
    round-to-nearest misses the same values by up to g/2."""
    rng = np.random.default_rng(1)
    v = rng.uniform(-6, 6, 15).astype(np.float32)
    n = 4096
    blocks = np.tile(np.concatenate([[6.0], v]).astype(np.float32), (n, 1))  # amax 6: scale 1, s_enc 1
    gen = torch.Generator().manual_seed(123)
    q = nvfp4.quantize(pinned(blocks), rounding="stochastic", generator=gen)
    mean = q.dequantize().double().numpy()[1:, 1:].mean(axis=0)
    lo = E2M1_GRID[np.searchsorted(E2M1_GRID, v, side="right") - 1]
    hi = E2M1_GRID[np.searchsorted(E2M1_GRID, v, side="left")]
    g = hi - lo
    p = np.where(g > 0, (v - lo) / np.where(g > 0, g, 1), 0)
    sd = g * np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(mean - v) <= 5 * sd + 1e-6)
    nearest = nvfp4.quantize(pinned(blocks)).dequantize().double().numpy()[1, 1:]
    assert np.abs(nearest - v).max() > 10 * sd.max()  # the bound is tight enough to see RTN's bias


def test_stochastic_rounding_is_reproducible_with_a_generator() -> None:
    g = torch.randn(32, 64)
    a = nvfp4.quantize_gradient(g, torch.Generator().manual_seed(5))
    b = nvfp4.quantize_gradient(g, torch.Generator().manual_seed(5))
    c = nvfp4.quantize_gradient(g, torch.Generator().manual_seed(6))
    assert torch.equal(a.data, b.data) and not torch.equal(a.data, c.data)
    assert torch.equal(a.scale.float(), c.scale.float())  # scales are deterministic; only elements vary


# ---- the random Hadamard transform ----------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 32])
def test_hadamard_is_orthogonal_and_the_popcount_formula(n: int) -> None:
    h = nvfp4.hadamard_matrix(n, torch.float64)
    i = np.arange(n)
    popcount = np.vectorize(lambda a: bin(a).count("1"))(i[:, None] & i[None, :])
    assert np.array_equal(h.numpy(), (-1.0) ** popcount / math.sqrt(n))
    assert torch.allclose(h @ h.T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-15)
    if n in (1, 4, 16):  # 1/sqrt(n) is a power of two: exact
        assert torch.equal(h @ h.T, torch.eye(n, dtype=torch.float64))


def test_random_hadamard_transform_cancels_in_the_product() -> None:
    """X R (W R)^T == X W^T (float64) along K; and (R dy)^T (R x) == dy^T x along tokens (wgrad)."""
    gen = torch.Generator().manual_seed(0)
    for signs in (nvfp4.TE_WGRAD_SIGNS, nvfp4.random_signs(16, gen)):
        r = nvfp4.rht_matrix(signs).double()
        assert torch.allclose(r @ r.T, torch.eye(16, dtype=torch.float64), atol=0, rtol=0)
        x, w = torch.randn(8, 64, dtype=torch.float64), torch.randn(24, 64, dtype=torch.float64)
        got = nvfp4.apply_rht(x, r) @ nvfp4.apply_rht(w, r).T
        assert torch.allclose(got, x @ w.T, rtol=1e-12, atol=1e-12)
        dy, a = torch.randn(32, 24, dtype=torch.float64), torch.randn(32, 40, dtype=torch.float64)
        got = nvfp4.apply_rht(dy, r, axis=0).T @ nvfp4.apply_rht(a, r, axis=0)
        assert torch.allclose(got, dy.T @ a, rtol=1e-12, atol=1e-12)
    assert torch.equal(
        nvfp4.rht_matrix(), torch.diag(torch.tensor(nvfp4.TE_WGRAD_SIGNS).float()) @ nvfp4.hadamard_matrix()
    )


def test_hadamard_spreads_an_outlier_and_lowers_the_error() -> None:
    """One outlier among zeros (crest factor 4) becomes 16 values of magnitude outlier/4 (crest 1).
    On Gaussian blocks with one outlier 30x larger, the block scale follows the outlier and most other
    values flush to 0 (about half, measured); after the transform far fewer do (about 1%). (The
    Frobenius round-trip error is not lower on such synthetic tensors: the outliers dominate the norm
    and are exact without the transform; the benefit the paper reports is in training, §4.2.)"""
    one_hot = torch.zeros(1, 16)
    one_hot[0, 5] = 100.0
    spread = nvfp4.apply_rht(one_hot)
    assert torch.equal(spread.abs(), torch.full((1, 16), 25.0))
    assert nvfp4.block_crest_factor(one_hot).item() == pytest.approx(4.0)
    assert nvfp4.block_crest_factor(spread).item() == pytest.approx(1.0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 256, generator=gen)
    x[:, ::16] *= 30  # an outlier in every block
    xr = nvfp4.apply_rht(x)
    assert nvfp4.block_crest_factor(xr).mean() < 0.5 * nvfp4.block_crest_factor(x).mean()
    plain, rotated = fp8.error_stats(x, nvfp4.quantize(x)), fp8.error_stats(xr, nvfp4.quantize(xr))
    assert plain["underflow"] > 0.4 and rotated["underflow"] < 0.05
    back = nvfp4.apply_rht(xr, nvfp4.rht_matrix().T)  # R^-1 = R^T
    assert torch.allclose(back, x, rtol=1e-5, atol=1e-5)


def test_random_signs_are_reproducible_plus_or_minus_one() -> None:
    a = nvfp4.random_signs(16, torch.Generator().manual_seed(3))
    b = nvfp4.random_signs(16, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and set(a.tolist()) <= {-1.0, 1.0}


# ---- 2D weight scales and the GEMMs ---------------------------------------------------------------


@pytest.mark.parametrize("shape", [(16, 16), (48, 32), (64, 128)])
def test_2d_weight_scales_quantise_w_and_w_transposed_identically(shape: tuple[int, int]) -> None:
    w = wide(shape, seed=shape[0])
    q, qt = nvfp4.quantize_weight(w), nvfp4.quantize_weight(w.t().contiguous())
    assert torch.equal(qt.data, q.data.t()) and torch.equal(
        qt.scale.view(torch.uint8), q.scale.view(torch.uint8).t()
    )
    assert torch.equal(qt.dequantize(), q.dequantize().t())
    t = nvfp4.transpose(q)
    assert torch.equal(t.data, qt.data) and torch.equal(t.scale.view(torch.uint8), qt.scale.view(torch.uint8))


def test_1x16_blocks_do_not_survive_a_transpose() -> None:
    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(2))
    rowwise = nvfp4.quantize(w).dequantize()
    colwise = nvfp4.quantize(w.t().contiguous()).dequantize().t()
    assert not torch.equal(rowwise, colwise)  # why 1x16 weights would differ between fprop and dgrad
    with pytest.raises(ValueError, match="16x16-tiled"):
        nvfp4.transpose(nvfp4.quantize(w))


def test_the_three_gemms_approximate_their_high_precision_products() -> None:
    gen = torch.Generator().manual_seed(0)
    x, w, dy = (
        torch.randn(64, 128, generator=gen),
        torch.randn(32, 128, generator=gen),
        torch.randn(64, 32, generator=gen),
    )
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()
    assert rel(nvfp4.fprop(x, w), x @ w.T) < 0.2  # measured 0.14
    assert rel(nvfp4.dgrad(dy, w, gen), dy @ w) < 0.3  # stochastic rounding adds noise
    assert rel(nvfp4.wgrad(dy, x, gen), dy.T @ x) < 0.3
    assert rel(nvfp4.wgrad(dy, x, gen, signs=None), dy.T @ x) < 0.3
    assert nvfp4.fprop(x.reshape(4, 16, 128), w).shape == (4, 16, 32)


# ---- the container and storage --------------------------------------------------------------------


def test_quantized_container_counts_bits_and_dequantizes() -> None:
    x = wide((32, 64), seed=3)
    steps = nvfp4.quantize_steps(x)
    q = steps.to_quantized()
    assert q.recipe == "nvfp4" and q.fmt.name == "float4_e2m1fn" and q.block_size == 16
    assert q.bits_per_element == 4 + 8 / 16 + 32 / x.numel()
    assert torch.allclose(q.dequantize(), steps.dequantize(), rtol=2**-22, atol=0)
    assert torch.allclose(fp8.dequantize(q), q.dequantize())
    ref = (
        steps.elements.double()
        * steps.block_scale.double().repeat_interleave(16, -1)
        * steps.global_decode.double()
    )
    assert torch.equal(steps.dequantize(), ref.float())  # e × scale exact, then one rounding


def test_block_shows_every_step_of_one_block() -> None:
    x = wide((32, 64), seed=4, zero_blocks=False)
    steps = nvfp4.quantize_steps(x, block_shape="16x16")
    b = steps.block(1, 2)
    assert len(b["x"]) == 256 and b["x"] == x[16:32, 32:48].flatten().tolist()
    assert b["block_amax"] == max(abs(v) for v in b["x"])
    assert b["block_scale"] == float(np.float32(b["block_decode_unrounded"]).astype(F8).astype(np.float32))
    assert b["dequantized"] == steps.dequantize()[16:32, 32:48].flatten().tolist()


def test_pack_e2m1_matches_ml_dtypes_codes() -> None:
    q = nvfp4.quantize(torch.randn(4, 32, generator=torch.Generator().manual_seed(0)))
    packed = nvfp4.pack_e2m1(q.data)
    assert packed.dtype == getattr(torch, "float4_e2m1fn_x2", torch.uint8) and packed.shape == (4, 16)
    codes = q.data.numpy().astype(F4).view(np.uint8) & 0xF
    assert np.array_equal(packed.view(torch.uint8).numpy(), codes[:, 0::2] | (codes[:, 1::2] << 4))


def test_the_course_recipe_is_this_module() -> None:
    """fp8.quantize(x, "nvfp4") calls quantize_steps: the same bits, tensor scale and decoded values,
    on tensors whose blocks span forty binades (zero, subnormal and saturating scales included)."""
    for seed in range(3):
        x = wide((64, 128), seed)
        a, b = fp8.quantize(x, "nvfp4"), nvfp4.quantize(x)
        assert torch.equal(a.data, b.data) and torch.equal(
            a.scale.view(torch.uint8), b.scale.view(torch.uint8)
        )
        assert torch.equal(a.tensor_scale, b.tensor_scale) and torch.equal(a.dequantize(), b.dequantize())


# ---- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: nvfp4.quantize(torch.randn(4, 40)),
            ValueError,
            r"do not divide the last dimension.*pad it with zeros to 48",
        ),
        (
            lambda: nvfp4.quantize_weight(torch.randn(40, 32)),
            ValueError,
            r"first dimension.*pad it with zeros to 48",
        ),
        (
            lambda: nvfp4.quantize(torch.ones(4, 16, dtype=torch.int32)),
            TypeError,
            "floating-point torch tensor",
        ),
        (lambda: nvfp4.quantize([[1.0] * 16]), TypeError, "floating-point torch tensor"),
        (lambda: nvfp4.quantize_weight(torch.randn(32)), ValueError, "2-D tensor"),
        (lambda: nvfp4.quantize_weight([[0.0] * 16] * 16), TypeError, "floating-point torch tensor"),
        (lambda: nvfp4.wgrad(torch.randn(40, 16), torch.randn(40, 16)), ValueError, "tokens M.*pad it"),
        (lambda: nvfp4.wgrad(torch.randn(32, 16), torch.randn(48, 16)), ValueError, "must match"),
        (lambda: nvfp4.quantize_steps(torch.randn(16, 32)).block(16, 0), ValueError, "outside the 16 x 2"),
        (lambda: nvfp4.quantize_weight(torch.randn(2, 16, 16)), ValueError, "2-D tensor"),
        (
            lambda: nvfp4.quantize(torch.randn(2, 16, 16), block_shape="16x16"),
            ValueError,
            "16x16 blocks are for 2-D",
        ),
        (
            lambda: nvfp4.quantize(torch.randn(4, 32), block_shape="1x32"),
            ValueError,
            "accepted: '1x16', '16x16'",
        ),
        (
            lambda: nvfp4.quantize(torch.randn(4, 32), rounding="up"),
            ValueError,
            "accepted: 'nearest', 'stochastic'",
        ),
        (lambda: nvfp4.quantize(torch.tensor([[math.nan] * 16])), ValueError, "NaN or inf"),
        (lambda: nvfp4.quantize(torch.tensor(1.0)), ValueError, "at least one dimension"),
        (lambda: nvfp4.apply_rht(torch.randn(4, 24)), ValueError, "pad it with zeros to a multiple of 16"),
        (lambda: nvfp4.apply_rht(torch.randn(4, 16), axis=2), ValueError, "not a dimension"),
        (lambda: nvfp4.hadamard_matrix(12), ValueError, "power of two"),
        (lambda: nvfp4.rht_matrix((1, 2, 1, 1)), ValueError, "±1"),
        (lambda: nvfp4.pack_e2m1(torch.full((2, 4), 0.3)), ValueError, "E2M1 values"),
        (lambda: nvfp4.pack_e2m1(torch.zeros(3)), ValueError, "even"),
        (lambda: nvfp4.quantize_steps(torch.zeros(0, 16)), ValueError, r"one element; got shape \(0, 16\)"),
        (lambda: nvfp4.quantize_steps(torch.ones(4, 16).numpy()), TypeError, "floating-point torch tensor"),
        (
            lambda: nvfp4.quantize_steps(torch.ones(4, 16), rounding="even"),
            ValueError,
            "'nearest', 'stochastic'",
        ),
        (
            lambda: nvfp4.quantize_steps(torch.ones(48, 20), block_shape="16x16"),
            ValueError,
            "pad it with zeros to 32",
        ),
    ],
)
def test_bad_input_raises_a_clear_error(call, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()


# ---- on a GPU -------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: the same torch operations, on the device"
)
@pytest.mark.parametrize("block_shape", ["1x16", "16x16"])
def test_cuda_gives_the_same_bits_as_the_cpu(block_shape: str) -> None:
    x = wide((64, 128), seed=21)
    cpu, gpu = nvfp4.quantize(x, block_shape=block_shape), nvfp4.quantize(x.cuda(), block_shape=block_shape)
    assert torch.equal(gpu.data.cpu(), cpu.data)
    assert torch.equal(gpu.scale.view(torch.uint8).cpu(), cpu.scale.view(torch.uint8))
    assert torch.equal(gpu.tensor_scale.cpu(), cpu.tensor_scale)
    sr = nvfp4.quantize_gradient(x.cuda(), torch.Generator("cuda").manual_seed(0))
    assert torch.isin(sr.data.cpu(), torch.from_numpy(E2M1_GRID).float()).all()


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_the_e2m1_rounding_written_out_is_the_general_routine_bit_for_bit(rounding: str) -> None:
    """nvfp4's own E2M1 rounding (for speed) against mpcourse.formats.round_tensor, with the same draws."""
    from mpcourse import formats
    from mpcourse.fp8.nvfp4 import _round_elements

    grid = torch.linspace(-6, 6, 12_001)  # every tie, every gap boundary, both signs, and -0.0
    values = torch.cat([grid, torch.tensor([-0.0, 0.0, 0.25, 0.75, 1.75, 2.5, 3.5, 5.0, 5.999, 6.0])])
    values = torch.cat(
        [values, torch.nextafter(values, torch.tensor(7.0)), torch.nextafter(values, torch.tensor(-7.0))]
    )
    values = values.clamp(-6, 6)
    fast = _round_elements(values, rounding, torch.Generator().manual_seed(3))
    general = formats.round_tensor(
        values, formats.E2M1, saturate=True, rounding=rounding, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(fast, general)
    assert torch.equal(torch.signbit(fast), torch.signbit(general))
