"""MXFP8, MXFP6, MXFP4 and NVFP4 quantisation against references written from the specifications.

The references below use numpy and ml_dtypes only (nothing from ``mpcourse.fp8``), and the course's
results are compared with them bit for bit: element bits and scale bits.

- MX: OCP Microscaling Formats (MX) Specification v1.0 (Sept. 2023). §6.3 gives the conversion from
  float32 to an MX block, X = 2^(floor(log2(max_i |V_i|)) - emax_elem) and P_i = V_i / X cast to the
  element format (the spec writes that procedure as a "should": NVIDIA's rceil rule also conforms,
  arch-hdl-lang/arch-com PR 824 reads it so). The scale is E8M0: 2^(bits - 127) for bits 0..254, no
  zero, 0xFF = NaN (spec p. 14, as read in uxlfoundation/oneDNN PR 4218 and jax-ml/ml_dtypes PR 166).
  Where the text leaves details open, the reference follows the spec's reference implementation,
  microsoft/microxcaling ``mx/mx_ops.py`` ``_quantize_mx``: elements saturate to the largest normal
  (``saturate_normals=True``), an amax of 0 takes log2 of the smallest normal float32 and so the
  smallest scale 2^-127, exponents below -127 are clamped to -127, and a non-finite amax gives a NaN
  scale.
- NVFP4: NVIDIA, "Pretraining Large Language Models with NVFP4", arXiv 2509.25149, §2 and App. B,
  with Transformer Engine's reference quantiser for the fp32 details
  (``NVFP4QuantizerRef._quantize_blockwise_reference``): s_enc = 2688 / amax (fp32 max if that
  overflows, 1 if it is 0), s_dec = 1 / s_enc, block scale = E4M3((block_amax / 6) * s_enc),
  elements = E2M1(clip(x * (1 / (scale * s_dec)), -6, 6)).

What the course does differently, on purpose, and tested as such: an MX block whose scale is NaN
stores its elements as +0 (the scale alone marks the block NaN: it decodes to NaN either way); an
NVFP4 block whose E4M3 scale underflows to 0 stores its elements as 0 where TE stores ±6 (both
decode to 0); and NVFP4 refuses a tensor holding NaN or inf, with an error that says so, where TE's
arithmetic would carry on.

Decode tables are not re-checked here: tests/test_formats.py decodes every bit pattern of E2M1,
E2M3, E3M2, E4M3, E5M2 and E8M0 against ml_dtypes, and tests/test_fp8_recipes.py checks the E8M0
scale decoder of ``mpcourse.fp8.quantized`` on all 256 patterns.
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

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "mpcourse-hypothesis")
MODEST = settings(
    max_examples=80,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

F32 = np.float32
F32_MAX = F32(np.finfo(np.float32).max)
E4M3 = ml_dtypes.float8_e4m3fn
E2M1 = ml_dtypes.float4_e2m1fn

#: MX element formats: course name -> (ml_dtypes type, emax_elem: the exponent of its largest normal).
MX_ELEMENTS: dict[str, tuple[type, int]] = {
    "float8_e4m3fn": (ml_dtypes.float8_e4m3fn, 8),
    "float8_e5m2": (ml_dtypes.float8_e5m2, 15),
    "float6_e3m2fn": (ml_dtypes.float6_e3m2fn, 4),
    "float6_e2m3fn": (ml_dtypes.float6_e2m3fn, 2),
    "float4_e2m1fn": (ml_dtypes.float4_e2m1fn, 2),
}
MX_BLOCK = 32  # OCP MX v1.0: k = 32 elements per scale in every concrete MX format
NV_BLOCK = 16  # arXiv 2509.25149 §2: 16 elements per E4M3 scale


# ---- the MX reference --------------------------------------------------------------------------


def mx_reference(x: np.ndarray, element: type, emax: int) -> tuple[np.ndarray, np.ndarray]:
    """(element bits, E8M0 scale bits) of float32 ``x`` (rows, K), 32-element blocks along K.

    Under a NaN scale the elements mean nothing (the block decodes to NaN); the reference stores 0
    there, and :func:`check_mx` compares element bits only in blocks with a finite scale."""
    x = np.asarray(x, F32)
    rows, k = x.shape
    blocks = np.abs(x).reshape(rows, k // MX_BLOCK, MX_BLOCK)
    amax = blocks.max(axis=-1)  # numpy's max propagates NaN, as a NaN element must
    finite = np.isfinite(amax)
    # floor(log2 amax), exactly: frexp writes amax = m 2^e with m in [0.5, 1), so floor(log2) = e - 1;
    # an amax of 0 counts as the smallest normal float32, 2^-126 (microxcaling's _shared_exponents).
    safe = np.where(finite & (amax > 0), amax, F32(np.finfo(np.float32).tiny))
    _, e = np.frexp(safe.astype(np.float64))
    shared = np.clip((e - 1) - emax, -127, 127)  # E8M0 holds 2^-127 ... 2^127
    scale_bits = np.where(finite, shared + 127, 255).astype(np.uint8)
    x_scale = np.where(finite, np.exp2(shared.astype(np.float64)), np.nan)
    with np.errstate(invalid="ignore"):
        p = x.astype(np.float64) / np.repeat(x_scale, MX_BLOCK, axis=1)  # exact: X is a power of two
    top = float(ml_dtypes.finfo(element).max)
    p = np.clip(np.nan_to_num(p, nan=0.0), -top, top)  # saturate to the largest normal
    return p.astype(element).view(np.uint8), scale_bits


def course_mx(x: np.ndarray, fmt: str) -> tuple[np.ndarray, np.ndarray, fp8.Quantized]:
    """The course's MX quantisation of ``x``: (element bits, scale bits, the Quantized)."""
    q = fp8.quantize(torch.from_numpy(np.asarray(x, F32).copy()), "mx", fmt)
    element, _ = MX_ELEMENTS[fmt]
    data = q.data
    if data.dtype == torch.float32:  # FP4 / FP6 elements: float32 holding exact values
        bits = data.numpy().astype(element).view(np.uint8)
    else:
        bits = data.view(torch.uint8).numpy()
    return bits, q.scale.view(torch.uint8).numpy(), q


def check_mx(x: np.ndarray, fmt: str) -> None:
    element, emax = MX_ELEMENTS[fmt]
    got_elements, got_scales, q = course_mx(x, fmt)
    want_elements, want_scales = mx_reference(x, element, emax)
    assert np.array_equal(got_scales, want_scales), (fmt, got_scales, want_scales)
    finite_block = np.repeat(want_scales != 255, MX_BLOCK, axis=1)
    assert np.array_equal(got_elements[finite_block], want_elements[finite_block]), fmt
    # A NaN scale (0xFF) marks the whole block NaN; the course stores +0 elements under it.
    assert np.all(got_elements[~finite_block] == 0)
    assert torch.isnan(q.dequantize()[torch.from_numpy(~finite_block)]).all()


def test_emax_elem_of_the_spec_table_is_floor_log2_of_each_formats_max() -> None:
    """emax_elem as written above is floor(log2(max)) of ml_dtypes' own largest value of each format."""
    for element, emax in MX_ELEMENTS.values():
        assert math.floor(math.log2(float(ml_dtypes.finfo(element).max))) == emax


# ---- MX: edge cases, bit for bit ------------------------------------------------------------------


def blocks_of(*rows: np.ndarray) -> np.ndarray:
    """A (1, 32 * len(rows)) tensor, one MX block per given 32-value row."""
    return np.concatenate([np.asarray(r, F32).reshape(MX_BLOCK) for r in rows])[None, :]


def near_powers_of_two(exponents: range) -> np.ndarray:
    """For each 2^k: the float32 just below, 2^k itself, and the float32 just above."""
    out = []
    for k in exponents:
        p = F32(2.0**k)
        out += [np.nextafter(p, F32(0)), p, np.nextafter(p, F32(np.inf))]
    return np.array(out, F32)


@pytest.mark.parametrize("fmt", list(MX_ELEMENTS))
def test_mx_zeros_whole_tensor_and_one_block(fmt: str) -> None:
    """amax 0: the smallest scale 2^-127 (E8M0 bits 0x00) and zero elements, sign of zero kept."""
    zeros = np.zeros((3, 64), F32)
    check_mx(zeros, fmt)
    _, scales, q = course_mx(zeros, fmt)
    assert np.all(scales == 0) and torch.equal(q.dequantize(), torch.zeros(3, 64))
    mixed = np.random.default_rng(0).standard_normal((2, 96)).astype(F32)
    mixed[1, 32:64] = 0.0
    mixed[0, 0:32] = -0.0
    check_mx(mixed, fmt)
    bits, scales, _ = course_mx(mixed, fmt)
    assert scales[1, 1] == 0 and scales[0, 0] == 0
    assert np.all(bits[0, :32] == bits[0, :32].max())  # every -0.0 keeps its sign bit


@pytest.mark.parametrize("fmt", list(MX_ELEMENTS))
def test_mx_all_equal_blocks(fmt: str) -> None:
    values = np.array([1.0, -3.0, 448.0, 1e-3, 2.0**-120, 3.0e38, 6.0, -7.5], F32)
    check_mx(blocks_of(*[np.full(MX_BLOCK, v, F32) for v in values]), fmt)


@pytest.mark.parametrize("fmt", list(MX_ELEMENTS))
def test_mx_amax_at_and_next_to_powers_of_two(fmt: str) -> None:
    """The floor of log2 changes exactly at 2^k: one float32 below it belongs to the binade below."""
    amaxes = near_powers_of_two(range(-130, 128, 11))
    rng = np.random.default_rng(1)
    rows = []
    for a in amaxes:
        row = rng.uniform(-1, 1, MX_BLOCK).astype(F32) * a
        row[rng.integers(MX_BLOCK)] = -a if rng.random() < 0.5 else a
        rows.append(row)
    x = blocks_of(*rows)
    check_mx(x, fmt)
    _, scales, _ = course_mx(x, fmt)
    below, at = scales[0, 3::3], scales[0, 4::3]  # the float32 below 2^k, and 2^k (k from -119 up)
    normal = at.astype(int) - 127 > -127  # where the clamp to 2^-127 does not hide the step
    assert np.all((at.astype(int) - below.astype(int))[normal] == 1)


@pytest.mark.parametrize("fmt", list(MX_ELEMENTS))
def test_mx_blocks_with_subnormal_elements(fmt: str) -> None:
    """A block's small values land in the element format's subnormals (or round to 0) below its amax."""
    element, emax = MX_ELEMENTS[fmt]
    tiny = float(ml_dtypes.finfo(element).smallest_subnormal)
    amax = 2.0**emax  # X = 1: elements are the values themselves
    row = np.linspace(-4 * tiny, 4 * tiny, MX_BLOCK).astype(F32)
    row[0] = amax
    halfway = np.array([tiny / 2, 3 * tiny / 2, -tiny / 2, np.nextafter(F32(tiny / 2), F32(1))], F32)
    row[1:5] = halfway  # ties to even: 0, 2 tiny, -0; just above half: tiny
    x = blocks_of(row, row * F32(2.0**-40), row * F32(2.0**60))
    check_mx(x, fmt)
    bits, _, q = course_mx(x, fmt)
    assert q.data.float()[0, 1:5].tolist() == [0.0, 2 * tiny, -0.0, tiny]
    info = ml_dtypes.finfo(element)
    magnitude = bits[0, :MX_BLOCK] & ((1 << (info.bits - 1)) - 1)  # the code without its sign bit
    subnormal = (magnitude > 0) & (magnitude < (1 << int(info.nmant)))  # exponent field 0, not zero
    assert subnormal.sum() >= 4  # the case is exercised


@pytest.mark.parametrize("fmt", list(MX_ELEMENTS))
def test_mx_mixed_signs_and_saturation(fmt: str) -> None:
    """amax just under the next power of two: floor puts amax / X near 2^(emax+1), above the format's
    largest value, so the spec's saturation applies; the signs are those of the inputs."""
    rng = np.random.default_rng(2)
    signs = rng.choice([-1.0, 1.0], (4, 64)).astype(F32)
    x = (rng.uniform(0.0, 1.0, (4, 64)).astype(F32) * signs) * F32(2.0**5)
    x[:, 0] = np.nextafter(F32(2.0**6), F32(0))
    x[:, 40] = -np.nextafter(F32(2.0**6), F32(0))
    check_mx(x, fmt)
    q = course_mx(x, fmt)[2]
    top = float(ml_dtypes.finfo(MX_ELEMENTS[fmt][0]).max)
    assert (q.data.float()[:, 0] == top).all() and (q.data.float()[:, 40] == -top).all()
    assert torch.equal(
        torch.sign(q.data.float())[q.data.float() != 0], torch.sign(torch.from_numpy(x))[q.data.float() != 0]
    )


@pytest.mark.parametrize("fmt", list(MX_ELEMENTS))
def test_mx_huge_dynamic_range_across_blocks(fmt: str) -> None:
    """Blocks from float32 subnormals (2^-149) to 2^124: the scale exponents run from the clamp at
    -127 to 124 - emax_elem or so. (The clamp at +127 cannot be reached from float32: its largest
    value is below 2^128, so floor(log2 amax) - emax_elem <= 127 - emax_elem.)"""
    rng = np.random.default_rng(3)
    exponents = np.arange(-149, 128, 7)
    x = rng.standard_normal((2, MX_BLOCK * len(exponents))).astype(np.float64)
    x = x / np.abs(x).max() * np.repeat(np.exp2(exponents.astype(np.float64)), MX_BLOCK)
    x = x.astype(F32)
    check_mx(x, fmt)
    _, scales, _ = course_mx(x, fmt)
    assert scales.min() == 0 and scales.max() >= 127 + 124 - MX_ELEMENTS[fmt][1] - 3


@pytest.mark.parametrize("fmt", ["float8_e4m3fn", "float8_e5m2", "float4_e2m1fn"])
def test_mx_nan_and_inf_make_the_block_scale_nan(fmt: str) -> None:
    """A NaN or an inf in a block: its scale is NaN (0xFF), the other blocks are untouched."""
    x = np.random.default_rng(4).standard_normal((2, 96)).astype(F32)
    x[0, 5] = np.nan
    x[1, 40] = np.inf
    x[1, 70] = -np.inf
    check_mx(x, fmt)
    _, scales, q = course_mx(x, fmt)
    assert scales[0, 0] == 255 and scales[1, 1] == 255 and scales[1, 2] == 255
    assert (scales[0, 1:] != 255).all() and scales[1, 0] != 255
    assert torch.isfinite(q.dequantize()[0, 32:]).all()


# ---- MX: any tensor ---------------------------------------------------------------------------------


@MODEST
@given(
    hnp.arrays(
        F32,
        st.tuples(st.integers(1, 3), st.sampled_from([32, 64, 96])),
        elements=st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=True),
    ),
    st.sampled_from(list(MX_ELEMENTS)),
)
def test_mx_any_finite_float32_tensor_matches_the_spec(x: np.ndarray, fmt: str) -> None:
    check_mx(x, fmt)


@MODEST
@given(
    hnp.arrays(
        F32,
        st.tuples(st.integers(1, 3), st.sampled_from([32, 64])),
        elements=st.floats(width=32, allow_subnormal=True),  # NaN and ±inf included
    ),
    st.sampled_from(["float8_e4m3fn", "float8_e5m2", "float4_e2m1fn"]),
)
def test_mx_any_float32_tensor_with_specials_matches_the_spec(x: np.ndarray, fmt: str) -> None:
    check_mx(x, fmt)


# ---- the NVFP4 reference ------------------------------------------------------------------------------


def nvfp4_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """(E2M1 element bits, E4M3 scale bits, s_dec) of finite float32 ``x`` (..., K), 1x16 blocks along
    the last axis, every operation in float32 as TE's reference quantiser does it."""
    x = np.asarray(x, F32)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        s_enc = F32(F32(6.0) * F32(448.0)) / np.abs(x).max()  # amax 0 gives inf, amax inf gives 0
        s_enc = F32(1.0) if s_enc == 0 else min(F32(s_enc), F32_MAX)
        s_dec = F32(1.0) / F32(s_enc)
        amax = np.abs(x).reshape(*x.shape[:-1], x.shape[-1] // NV_BLOCK, NV_BLOCK).max(axis=-1)
        unrounded = np.minimum((amax / F32(6.0)) * F32(s_enc), F32_MAX)
        scale = np.clip(unrounded, F32(-448.0), F32(448.0)).astype(E4M3)
        encode = np.minimum(F32(1.0) / (scale.astype(F32) * s_dec), F32_MAX)
        scaled = np.clip(x * np.repeat(encode, NV_BLOCK, axis=-1), F32(-6.0), F32(6.0))
    return scaled.astype(E2M1).view(np.uint8), scale.view(np.uint8), F32(s_dec)


def check_nvfp4(x: np.ndarray, axis: int = -1) -> fp8.Quantized:
    """The course's ``quantize(x, "nvfp4", axis=axis)`` against the reference, bit for bit."""
    x = np.asarray(x, F32)
    q = fp8.quantize(torch.from_numpy(x.copy()), "nvfp4", axis=axis)
    moved = np.moveaxis(x, axis, -1)
    want_elements, want_scales, s_dec = nvfp4_reference(moved)
    got_elements = np.moveaxis(q.data.numpy(), axis, -1).astype(E2M1).view(np.uint8)
    got_scales = np.moveaxis(q.scale.view(torch.uint8).numpy(), axis, -1)
    assert np.array_equal(got_scales, want_scales)
    assert q.tensor_scale.dtype == torch.float32 and q.tensor_scale.item() == s_dec
    zero_scale = np.repeat(want_scales == 0, NV_BLOCK, axis=-1)
    assert np.array_equal(got_elements[~zero_scale], want_elements[~zero_scale])
    # The documented difference: under a zero scale TE stores ±6 (x · fp32 max, clipped), the course
    # stores 0; both decode to 0, and the GEMM is the same.
    assert np.all((got_elements[zero_scale] & 0x7) == 0)
    assert q.axis == axis % x.ndim and q.block_size == NV_BLOCK and q.recipe == "nvfp4"
    return q


def pinned_blocks(*blocks: np.ndarray) -> np.ndarray:
    """Rows of 16 values after a first row whose amax is 2688: s_enc = 1, block scale = amax / 6."""
    first = np.zeros(NV_BLOCK, F32)
    first[0] = 2688.0
    return np.stack([first, *[np.asarray(b, F32).reshape(NV_BLOCK) for b in blocks]])


def test_nvfp4_zeros_whole_tensor_and_one_block() -> None:
    q = check_nvfp4(np.zeros((4, 32), F32))
    assert torch.equal(q.dequantize(), torch.zeros(4, 32)) and (q.scale.view(torch.uint8) == 0).all()
    assert q.tensor_scale.item() == F32(1.0) / F32_MAX  # 2688 / 0 = inf, held at fp32 max
    x = np.random.default_rng(5).standard_normal((3, 48)).astype(F32)
    x[1, 16:32] = 0.0
    q = check_nvfp4(x)
    assert q.scale.view(torch.uint8)[1, 1] == 0 and (q.dequantize()[1, 16:32] == 0).all()


def test_nvfp4_all_equal_blocks() -> None:
    values = [1.0, -2.5, 2688.0, 1e-3, -7.0, 100.0, 3.0e-6, 0.375]
    check_nvfp4(np.repeat(np.array(values, F32), NV_BLOCK).reshape(2, -1))
    q = check_nvfp4(pinned_blocks(*[np.full(NV_BLOCK, v, F32) for v in (6.0, -12.0, 0.75)]))
    assert q.data[1:].abs().eq(6.0).all()  # amax / scale = 6 exactly when the scale is exact


@pytest.mark.parametrize("k", [-30, -9, -1, 0, 1, 8, 11, 40])
def test_nvfp4_amax_at_and_next_to_powers_of_two(k: int) -> None:
    """Global and block amaxes at 2^k and one float32 either side, in one tensor and in pinned blocks."""
    near = near_powers_of_two(range(k - 6, k + 1, 3))  # 9 values: blocks at 2^(k-6), 2^(k-3), 2^k
    rng = np.random.default_rng(k + 100)
    rows = []
    for a in near:
        row = rng.uniform(-1, 1, NV_BLOCK).astype(F32) * a
        row[rng.integers(NV_BLOCK)] = a
        rows.append(row)
    check_nvfp4(np.stack(rows))  # the global amax is the last: 2^k's float32 successor
    check_nvfp4(np.stack(rows[:-1]))  # exactly 2^k
    check_nvfp4(np.stack(rows[:-2]))  # just below 2^k
    e4m3 = near_powers_of_two(range(-9, 9, 2)) * F32(6.0)  # block scales near E4M3's powers of two
    check_nvfp4(
        pinned_blocks(*[np.full(NV_BLOCK, v, F32) * np.where(np.arange(16) % 2, 1, -0.4) for v in e4m3])
    )


def test_nvfp4_subnormal_elements_and_subnormal_scales() -> None:
    """E2M1's only subnormal is 0.5 (ties 0.25 and 0.75 round to even: 0 and 1); E4M3's subnormal
    block scales are k · 2^-9 and a scale below 2^-10 is 0."""
    elements = np.array(
        [6.0, 0.25, 0.75, -0.25, -0.75, 0.5, 0.2, 0.3, 0.7, 0.8, 0, -0.5, 1e-9, 0.26, 0.74, 0], F32
    )
    scales = np.array([2**-9, 3 * 2**-10, 5 * 2**-10, 2**-10, 2**-11, 7 * 2**-9, 2**-6], F32)
    blocks = [elements] + [elements * F32(s) for s in scales]
    q = check_nvfp4(pinned_blocks(*blocks))
    assert q.data[1, 1:6].tolist() == [0.0, 1.0, -0.0, -1.0, 0.5]
    assert q.scale.float()[2:, 0].tolist() == [2**-9, 2**-8, 2**-8, 0.0, 0.0, 7 * 2**-9, 2**-6]


def test_nvfp4_mixed_signs_and_saturation() -> None:
    """A block scale that rounds down (6.36 / 6 = 1.06 -> E4M3 1.0) leaves amax · encode > 6: clipped."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 64)).astype(F32) * rng.choice([-1, 1], (8, 64)).astype(F32)
    check_nvfp4(x)
    block = np.linspace(-6.36, 6.36, NV_BLOCK).astype(F32)
    q = check_nvfp4(pinned_blocks(block, -block))
    assert q.data[1, 0].item() == -6.0 and q.data[1, -1].item() == 6.0 and q.data[2, 0].item() == 6.0


def test_nvfp4_huge_dynamic_range_across_blocks() -> None:
    """Blocks from 2^-149 to 2^121 in one tensor: most block scales underflow to 0 (the documented
    difference applies), the largest blocks keep normal E4M3 scales."""
    rng = np.random.default_rng(7)
    exponents = np.arange(-149, 128, 9)
    x = rng.standard_normal((2, NV_BLOCK * len(exponents)))
    x = (x / np.abs(x).max() * np.repeat(np.exp2(exponents.astype(np.float64)), NV_BLOCK)).astype(F32)
    q = check_nvfp4(x)
    bits = q.scale.view(torch.uint8)
    assert (bits == 0).float().mean() > 0.5 and (bits[:, -1] >= 0x30).all()


def test_nvfp4_axis_and_rank() -> None:
    """Blocks along axis 0 of a 2-D tensor, and along the last axis of a 3-D one."""
    rng = np.random.default_rng(8)
    check_nvfp4(rng.standard_normal((48, 5)).astype(F32), axis=0)
    q = check_nvfp4((rng.standard_normal((2, 3, 32)) * 10.0 ** rng.integers(-8, 8, (2, 3, 32))).astype(F32))
    assert q.scale.shape == (2, 3, 2)


def test_nvfp4_refuses_nan_and_inf() -> None:
    for special in (np.nan, np.inf, -np.inf):
        x = torch.ones(2, 16)
        x[1, 3] = float(special)
        with pytest.raises(ValueError, match="NaN or inf"):
            fp8.quantize(x, "nvfp4")


@MODEST
@given(
    hnp.arrays(
        F32,
        st.tuples(st.integers(1, 3), st.sampled_from([16, 32, 48])),
        elements=st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=True),
    ),
)
def test_nvfp4_any_finite_float32_tensor_matches_the_reference(x: np.ndarray) -> None:
    check_nvfp4(x)
    assert torch.isfinite(fp8.quantize(torch.from_numpy(x.copy()), "nvfp4").dequantize()).all()


def test_the_references_tell_other_rules_apart() -> None:
    """The comparisons can fail: NVIDIA's rceil scale (an option of the course, not the spec's rule)
    differs from the MX reference, and the textbook NVFP4 tensor scale amax / 2688 (one rounding) is
    not TE's 1 / (2688 / amax) (two) on some tensors."""
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((4, 64)) * 10).astype(F32)
    rceil = fp8.quantize(torch.from_numpy(x), "mxfp8", mx_scale_rounding="rceil")
    _, spec_scales = mx_reference(x, ml_dtypes.float8_e4m3fn, 8)
    assert not np.array_equal(rceil.scale.view(torch.uint8).numpy(), spec_scales)
    amaxes = (rng.uniform(1, 2, 200) * 2.0 ** rng.integers(-20, 20, 200)).astype(F32)
    textbook = amaxes / F32(2688.0)
    te = np.array([nvfp4_reference(np.full((1, 16), a, F32))[2] for a in amaxes])
    assert (textbook != te).any() and (textbook == te).any()


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: the same quantisers, on the device"
)
@pytest.mark.parametrize("recipe, fmt", [("mx", f) for f in MX_ELEMENTS] + [("nvfp4", "float4_e2m1fn")])
def test_cuda_stores_the_same_bits_as_the_cpu(recipe: str, fmt: str) -> None:
    """The CPU results are the references' (above); on a GPU the same torch code must give the same bits."""
    rng = np.random.default_rng(10)
    x = rng.standard_normal((8, 128)) * np.repeat(np.exp2(rng.integers(-60, 60, (8, 4))), 32, axis=1)
    x = torch.from_numpy(x.astype(F32))
    cpu, gpu = fp8.quantize(x, recipe, fmt), fp8.quantize(x.cuda(), recipe, fmt)
    assert torch.equal(gpu.data.cpu().float(), cpu.data.float())
    assert torch.equal(gpu.scale.cpu().view(torch.uint8), cpu.scale.view(torch.uint8))
    if recipe == "nvfp4":
        assert torch.equal(gpu.tensor_scale.cpu(), cpu.tensor_scale)
