"""mpcourse.fp8.scaled: the public F.scaled_mm against the course's emulation and float64, its layouts,
its errors, and the support table's probed row against what actually runs."""

from __future__ import annotations

import dataclasses
import re
import tempfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from mpcourse import fp8
from mpcourse.fp8 import scaled
from mpcourse.fp8.gemm import UnsupportedFP8Error

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "mpcourse-hypothesis")
DERANDOMISED = settings(
    max_examples=12,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
pytestmark = pytest.mark.skipif(not scaled.has_public_scaled_mm(), reason="this PyTorch has no F.scaled_mm")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
COLUMNS = list(scaled.TABLE_RECIPES)


def operands(column: str, m: int, k: int, n: int, seed: int = 0, device: str = "cpu") -> tuple:
    """Quantised (M, K) and (N, K) operands for one support-table column, with a spread of magnitudes."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen) * torch.logspace(-2, 1, k)
    w = torch.randn(n, k, generator=gen)
    (ra, fa), (rb, fb) = scaled.TABLE_RECIPES[column]
    return fp8.quantize(x.to(device), ra, fa), fp8.quantize(w.to(device), rb, fb)


def float64_reference(a: fp8.Quantized, b: fp8.Quantized) -> torch.Tensor:
    """The exact product of the dequantised operands (float64 holds every fp8 product and most sums)."""
    return a.dequantize().double() @ b.dequantize().double().T


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return (torch.linalg.norm(x.double().cpu() - ref.cpu()) / torch.linalg.norm(ref.cpu())).item()


# ---- agreement with the emulation and float64 --------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("column", COLUMNS)
def test_every_recipe_that_runs_agrees_with_fp8_mm_and_float64(column: str, device: str) -> None:
    if scaled.probe(column, device) != "runs":
        pytest.skip(f"{column} does not run on {device} here: {scaled.probe(column, device)}")

    @DERANDOMISED
    @given(
        m=st.integers(1, 8).map(lambda v: 16 * v),
        kb=st.integers(1, 3),
        n=st.integers(1, 4),
        seed=st.integers(0, 9),
    )
    def check(m: int, kb: int, n: int, seed: int) -> None:
        big = "128" in column or "nvfp4" in column or "mx" in column
        m, k, n = (128 * (m // 64 + 1), 256 * kb, 128 * n) if big else (m, 128 * kb, 32 * n)
        a, b = operands(column, m, k, n, seed, device)
        out = scaled.scaled_mm(a, b, out_dtype=torch.float32)
        assert out.shape == (m, n) and out.dtype == torch.float32
        ref = float64_reference(a, b)
        assert rel(out, ref) < 1e-5
        assert rel(out, fp8.fp8_mm(a, b).double()) < 1e-5

    check()


@pytest.mark.parametrize("fmt_a, fmt_b", [("e4m3", "e5m2"), ("e5m2", "e4m3"), ("e4m3", "e4m3")])
@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise", "delayed"])
def test_format_pairs_on_cpu_agree_with_float64(recipe: str, fmt_a: str, fmt_b: str) -> None:
    gen = torch.Generator().manual_seed(1)
    x, w = torch.randn(48, 64, generator=gen), torch.randn(32, 64, generator=gen)
    if recipe == "delayed":
        a, b = (
            dataclasses.replace(fp8.quantize(t, "tensorwise", f), recipe="delayed")
            for t, f in ((x, fmt_a), (w, fmt_b))
        )
    else:
        a, b = fp8.quantize(x, recipe, fmt_a), fp8.quantize(w, recipe, fmt_b)
    out = scaled.scaled_mm(a, b, out_dtype=torch.float32)
    assert rel(out, float64_reference(a, b)) < 1e-5
    bf16 = scaled.scaled_mm(a, b)
    assert bf16.dtype == torch.bfloat16 and rel(bf16, float64_reference(a, b)) < 2**-8


# ---- the arguments as ScaledBlas.cpp wants them ---------------------------------------------------------


def test_arguments_of_each_recipe() -> None:
    m, k, n = 128, 256, 256
    a, b = operands("tensorwise", m, k, n)
    args = scaled.scaled_mm_arguments(a, b)
    assert args["scale_a"].shape == () and args["scale_recipe_a"] == F.ScalingType.TensorWise
    assert args["mat_b"].shape == (k, n) and args["mat_b"].stride() == (1, k)  # column-major, no copy
    assert "swizzle_a" not in args

    a, b = operands("rowwise", m, k, n)
    args = scaled.scaled_mm_arguments(a, b)
    assert args["scale_a"].shape == (m, 1) and args["scale_b"].shape == (1, n)
    assert args["scale_b"].is_contiguous() and args["scale_recipe_b"] == F.ScalingType.RowWise

    a, b = operands("1x128 x 1x128", m, k, n)
    args = scaled.scaled_mm_arguments(a, b)
    assert args["scale_a"].shape == (m, 2) and args["scale_a"].stride() == (1, m)  # outer-dim-major
    assert args["scale_b"].shape == (n, 2) and args["scale_b"].stride() == (1, n)
    assert torch.equal(args["scale_a"], a.scale)

    a, b = operands("1x128 x 128x128", m, k, n)
    args = scaled.scaled_mm_arguments(a, b)
    assert args["scale_recipe_b"] == F.ScalingType.BlockWise128x128
    assert args["scale_b"].shape == (4, n // 128) and args["scale_b"].stride() == (1, 4)  # K/128 padded to 4
    assert torch.equal(args["scale_b"][:2].t(), b.scale) and not args["scale_b"][2:].any()

    a, b = operands("mxfp8", m, k, n)
    args = scaled.scaled_mm_arguments(a, b)
    assert args["scale_a"].dtype == torch.float8_e8m0fnu and args["scale_a"].numel() == 128 * 8
    assert args["swizzle_a"] == F.SwizzleType.SWIZZLE_32_4_4
    assert torch.equal(
        scaled.unswizzle_32_4_4(args["scale_a"], m, k // 32).view(torch.uint8), a.scale.view(torch.uint8)
    )

    a, b = operands("nvfp4", m, k, n)
    args = scaled.scaled_mm_arguments(a, b)
    assert args["mat_a"].dtype == torch.float4_e2m1fn_x2 and args["mat_a"].shape == (m, k // 2)
    assert args["mat_b"].shape == (k // 2, n)
    assert args["scale_recipe_a"] == [F.ScalingType.BlockWise1x16, F.ScalingType.TensorWise]
    assert args["swizzle_a"] == [F.SwizzleType.SWIZZLE_32_4_4, F.SwizzleType.NO_SWIZZLE]
    blocks, tensor = args["scale_a"]
    assert blocks.dtype == torch.float8_e4m3fn and blocks.numel() == 128 * 16 and tensor.shape == ()


def test_packed_fp4_codes_are_ml_dtypes_codes() -> None:
    a, b = operands("nvfp4", 128, 64, 128)
    packed = scaled.scaled_mm_arguments(a, b)["mat_a"].view(torch.uint8).numpy()
    codes = a.data.numpy().astype(ml_dtypes.float4_e2m1fn).view(np.uint8) & 0xF
    assert (packed & 0xF == codes[:, 0::2]).all() and (packed >> 4 == codes[:, 1::2]).all()


def tiles_by_reshape(bits: torch.Tensor) -> torch.Tensor:
    """cuBLAS's blocked layout by reshapes (the method of torch's test helper ``to_blocked``): pad to
    128x4 tiles, tiles in row-band order, each tile's four 32-row groups interleaved column by column."""
    rows, cols = bits.shape
    bands, tiles = -(-rows // 128), -(-cols // 4)
    padded = torch.zeros(bands * 128, tiles * 4, dtype=bits.dtype)
    padded[:rows, :cols] = bits
    blocks = padded.view(bands, 128, tiles, 4).permute(0, 2, 1, 3)
    return blocks.reshape(-1, 4, 32, 4).transpose(1, 2).reshape(-1)


@DERANDOMISED
@given(rows=st.integers(1, 300), cols=st.integers(1, 13), seed=st.integers(0, 99))
def test_swizzle_matches_a_reshape_of_128x4_tiles_and_round_trips(rows: int, cols: int, seed: int) -> None:
    bits = torch.randint(
        0, 255, (rows, cols), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
    )
    scale = bits.view(torch.float8_e8m0fnu)
    flat = scaled.swizzle_32_4_4(scale)
    assert flat.dtype == torch.float8_e8m0fnu and flat.dim() == 1
    assert torch.equal(flat.view(torch.uint8), tiles_by_reshape(bits))
    assert torch.equal(scaled.unswizzle_32_4_4(flat, rows, cols).view(torch.uint8), bits)


# ---- errors ------------------------------------------------------------------------------------------


def _bad(q: fp8.Quantized, **changes: object) -> fp8.Quantized:
    return dataclasses.replace(q, **changes)


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda a, b: (_bad(a, scale=a.scale[:, :1]), b),
            r"scale has shape \(64, 1\); blockwise needs \(64, 2\)",
        ),
        (lambda a, b: (_bad(a, scale=a.scale.bfloat16()), b), "scales are bfloat16; blockwise needs float32"),
        (
            lambda a, b: (_bad(a, data=a.data[:, :192], scale=a.scale[:, :1]), b),
            "K=192 is not divisible by the block of 128",
        ),
        (
            lambda a, b: (_bad(a, block_size=64, scale=torch.ones(64, 4)), b),
            "blocks of 64; ScalingType.BlockWise1x128 means 128",
        ),
        (
            lambda a, b: (fp8.quantize(torch.randn(64, 256), "tensorwise"), b),
            "no F.scaled_mm kernel for tensorwise x blockwise",
        ),
        (
            lambda a, b: (
                fp8.quantize(torch.randn(64, 256), "nvfp4"),
                fp8.quantize(torch.randn(32, 256), "mxfp8"),
            ),
            "nvfp4 x mx; accepted pairs",
        ),
        (
            lambda a, b: (
                fp8.quantize(torch.randn(64, 256), "mxfp4"),
                fp8.quantize(torch.randn(32, 256), "mxfp8"),
            ),
            "MXFP8 x MXFP8 or MXFP4 x MXFP4",
        ),
        (
            lambda a, b: (fp8.quantize(torch.randn(64, 256), "mxfp6"), b),
            "float6_e2m3fn elements; F.scaled_mm's mx kernels take",
        ),
        (lambda a, b: (fp8.quantize(torch.randn(256, 64), "blockwise", axis=0), b), "quantised along axis 0"),
        (lambda a, b: (a, fp8.quantize(torch.randn(32, 128), "blockwise")), "inner dimensions differ"),
        (lambda a, b: (_bad(a, recipe="mystery"), b), "uses recipe 'mystery'"),
        (
            lambda a, b: (
                _bad(fp8.quantize(torch.randn(64, 256), "mxfp8"), scale=torch.ones(64, 8)),
                fp8.quantize(torch.randn(32, 256), "mxfp8"),
            ),
            "scales are float32; mx needs float8_e8m0fnu",
        ),
        (
            lambda a, b: (
                _bad(fp8.quantize(torch.randn(64, 256), "nvfp4"), tensor_scale=None),
                fp8.quantize(torch.randn(32, 256), "nvfp4"),
            ),
            "without its fp32 tensor scale",
        ),
        (
            lambda a, b: (
                _bad(fp8.quantize(torch.randn(64, 64), "rowwise"), scale=torch.ones(1, 64)),
                fp8.quantize(torch.randn(32, 64), "rowwise"),
            ),
            r"rowwise needs \(64, 1\)",
        ),
        (
            lambda a, b: (_bad(a, data=a.data.float()), b),
            "a's elements are float32; float8_e4m3fn elements are stored as float8_e4m3fn",
        ),
        (
            lambda a, b: (
                _bad(fp8.quantize(torch.randn(64, 256), "nvfp4"), tensor_scale=torch.ones(64)),
                fp8.quantize(torch.randn(32, 256), "nvfp4"),
            ),
            r"tensor scale is a float32 tensor of shape \(64,\); ScalingType.TensorWise takes one float32",
        ),
        (
            lambda a, b: (
                fp8.quantize(torch.randn(64, 256), "nvfp4"),
                _bad(
                    fp8.quantize(torch.randn(32, 256), "nvfp4"),
                    tensor_scale=torch.ones((), dtype=torch.bfloat16),
                ),
            ),
            r"b's nvfp4 tensor scale is a bfloat16 tensor of shape \(\)",
        ),
        (
            lambda a, b: (
                _bad(fp8.quantize(torch.randn(64, 256), "nvfp4"), scale=torch.ones(64, 16)),
                fp8.quantize(torch.randn(32, 256), "nvfp4"),
            ),
            "a's scales are float32; nvfp4 needs float8_e4m3fn",
        ),
        (
            lambda a, b: (
                _bad(
                    fp8.quantize(torch.randn(64, 256), "nvfp4"),
                    scale=torch.ones(64, 8).to(torch.float8_e4m3fn),
                ),
                fp8.quantize(torch.randn(32, 256), "nvfp4"),
            ),
            r"a's scale has shape \(64, 8\); nvfp4 needs \(64, 16\)",
        ),
        (
            lambda a, b: (
                fp8.quantize(torch.randn(64, 256), "mx", block_size=16),
                fp8.quantize(torch.randn(32, 256), "mxfp8"),
            ),
            "a has blocks of 16; ScalingType.BlockWise1x32 means 32",
        ),
        (
            lambda a, b: (
                fp8.quantize(torch.randn(64, 256), "tensorwise", "e2m1"),
                fp8.quantize(torch.randn(32, 256), "tensorwise", "e2m1"),
            ),
            "a holds float4_e2m1fn elements; F.scaled_mm's tensorwise kernels take float8_e4m3fn",
        ),
    ],
)
def test_bad_operands_get_errors_naming_what_is_accepted(make, match: str) -> None:
    a, b = fp8.quantize(torch.randn(64, 256), "blockwise"), fp8.quantize(torch.randn(32, 256), "blockwise")
    a, b = make(a, b)
    with pytest.raises(ValueError, match=match):
        scaled.scaled_mm(a, b)


def test_non_quantized_operand_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="a must be a Quantized"):
        scaled.scaled_mm(torch.randn(16, 16), fp8.quantize(torch.randn(16, 16)))
    with pytest.raises(TypeError, match=r"b must be a Quantized \(from mpcourse.fp8.quantize\), got Tensor"):
        scaled.check_operands(fp8.quantize(torch.randn(16, 16)), torch.randn(16, 16))
    with pytest.raises(TypeError, match="a must be a Quantized"):
        scaled.scaled_mm_arguments(torch.ones(16, 16, dtype=torch.int8), fp8.quantize(torch.randn(16, 16)))


def test_scaled_mm_arguments_checks_before_building() -> None:
    """The printable arguments are refused for the same reasons as the call, with the same message."""
    a = fp8.quantize(torch.randn(64, 256), "blockwise")
    b = fp8.quantize(torch.randn(32, 256), "tensorwise")
    with pytest.raises(ValueError, match="no F.scaled_mm kernel for blockwise x tensorwise; accepted pairs"):
        scaled.scaled_mm_arguments(a, b)


def test_cuda_rules_are_checked_by_name() -> None:
    a, b = (
        fp8.quantize(torch.randn(16, 24), "tensorwise", "e5m2"),
        fp8.quantize(torch.randn(8, 24), "tensorwise", "e5m2"),
    )
    with pytest.raises(ValueError, match="K=24, N=8") as err:
        scaled.check_operands(a, b, "cuda")
    assert "E5M2 x E5M2 is not supported on CUDA" in str(err.value)
    scaled.check_operands(a, b, "cpu")  # the CPU multiplies them


# ---- without the public API -------------------------------------------------------------------------


def test_without_public_api_tensorwise_and_rowwise_use_the_private_op(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected = {}
    for column in ("tensorwise", "rowwise"):
        a, b = operands(column, 32, 64, 48)
        expected[column] = scaled.scaled_mm(a, b, out_dtype=torch.float32)
    monkeypatch.delattr(F, "scaled_mm")
    assert not scaled.has_public_scaled_mm()
    for column in ("tensorwise", "rowwise"):
        a, b = operands(column, 32, 64, 48)
        assert torch.equal(scaled.scaled_mm(a, b, out_dtype=torch.float32), expected[column])
    a, b = operands("1x128 x 1x128", 128, 256, 128)
    with pytest.raises(UnsupportedFP8Error, match=rf"needs PyTorch >= {re.escape(scaled.PUBLIC_API_SINCE)}"):
        scaled.scaled_mm(a, b)
    monkeypatch.delattr(torch, "_scaled_mm")
    a, b = operands("tensorwise", 32, 64, 48)
    with pytest.raises(UnsupportedFP8Error, match="no torch.nn.functional.scaled_mm"):
        scaled.scaled_mm(a, b)


# ---- the support table ---------------------------------------------------------------------------------


def _runs_now(column: str, device: str) -> bool:
    a, b = operands(column, 128, 256, 128, device=device)
    try:
        scaled.scaled_mm(a, b)
    except (RuntimeError, NotImplementedError, ValueError, TypeError):
        return False
    return True


def test_support_table_probed_rows_match_what_runs() -> None:
    table = scaled.support_table()
    assert list(table.columns) == [*COLUMNS, "basis", "source"]
    assert {"sm_89", "sm_90", "sm_100"} <= set(table.index)
    measured = table[table["basis"] == "measured"]
    assert len(measured) == len(DEVICES)
    for label, device in zip(measured.index, DEVICES):
        for column in COLUMNS:
            assert (measured.loc[label, column] == "runs") == _runs_now(column, device), (label, column)
    cpu = measured.loc["cpu (this machine)"]
    assert cpu["tensorwise"] == cpu["rowwise"] == "runs"  # torch 2.14's CPU kernels
    for arch in ("sm_89", "sm_90", "sm_100"):
        row = table.loc[arch]
        assert row["basis"] == "from source" and "ScaledBlas.cpp" in row["source"]
    assert table.loc["sm_90", "1x128 x 1x128"].startswith("runs") and table.loc["sm_100", "nvfp4"] == "runs"


def test_probe_rejects_unknown_recipes() -> None:
    with pytest.raises(ValueError, match="accepted: tensorwise, rowwise"):
        scaled.probe("int8")


def test_nvfp4_16x16_weight_tiles_are_passed_as_1x16_blocks() -> None:
    from mpcourse.fp8 import nvfp4

    gen = torch.Generator().manual_seed(3)
    w = nvfp4.quantize_weight(torch.randn(128, 256, generator=gen))
    x = nvfp4.quantize_activation(torch.randn(128, 256, generator=gen))
    blocks, tensor = scaled.scaled_mm_arguments(x, w)["scale_b"]
    unswizzled = scaled.unswizzle_32_4_4(blocks, 128, 16).view(torch.uint8)
    assert torch.equal(unswizzled, w.scale.view(torch.uint8).repeat_interleave(16, dim=0))
    assert tensor.item() == w.tensor_scale.item()
