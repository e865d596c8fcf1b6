"""mpcourse.fp8.layouts: backward layouts, re-quantised from high precision or transposed from fp8 data,
against float64 and against quantize's own axis handling."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from mpcourse import fp8
from mpcourse.fp8 import layouts

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "mpcourse-hypothesis")
DERANDOMISED = settings(
    max_examples=15,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def with_row_outliers(m: int = 256, k: int = 384, seed: int = 0, factor: float = 300.0) -> torch.Tensor:
    """Activations whose few rows (tokens) are much larger than the rest, as in LLM activations."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen)
    rows = torch.randperm(m, generator=gen)[: m // 32]
    x[rows] *= factor
    return x


def float64_error(x: torch.Tensor, q: fp8.Quantized) -> float:
    return (torch.linalg.norm(q.dequantize().double() - x.double()) / torch.linalg.norm(x.double())).item()


@DERANDOMISED
@given(
    m=st.integers(1, 40),
    k=st.integers(1, 40),
    seed=st.integers(0, 999),
    fmt=st.sampled_from(["e4m3", "e5m2"]),
)
def test_tensorwise_transpose_is_exact_and_free(m: int, k: int, seed: int, fmt: str) -> None:
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed)) * 10.0 ** (seed % 7 - 3)
    q = fp8.quantize(x, "tensorwise", fmt)
    t = layouts.transpose_quantized(q)
    assert t.axis == 0 and t.data is q.data and t.scale is q.scale
    assert torch.equal(t.dequantize(), q.dequantize())
    # and it is what quantising along the other axis gives
    assert torch.equal(t.dequantize(), layouts.requantize_for_backward(x, "tensorwise", fmt).dequantize())


def test_128x128_tiles_transpose_exactly() -> None:
    x = with_row_outliers(256, 384)
    q = fp8.quantize(x, "blockwise_2d")
    assert torch.equal(
        layouts.transpose_quantized(q).dequantize(),
        layouts.requantize_for_backward(x, "blockwise_2d").dequantize(),
    )


@pytest.mark.parametrize("recipe", ["rowwise", "blockwise", "nvfp4"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_requantizing_beats_double_quantization_on_row_outliers(recipe: str, seed: int) -> None:
    x = with_row_outliers(seed=seed)
    forward = fp8.quantize(x, recipe)
    requantized = layouts.requantize_for_backward(x, recipe)
    doubled = layouts.transpose_quantized(forward)
    assert float64_error(x, requantized) < float64_error(x, doubled)
    # the double path is a re-quantisation of the forward's values, not of x
    assert torch.equal(doubled.dequantize(), fp8.quantize(forward.dequantize(), recipe, axis=0).dequantize())


@pytest.mark.parametrize(
    "recipe, scale_shape, block",
    [("rowwise", (1, 384), None), ("blockwise", (2, 384), 128), ("mxfp8", (8, 384), 32)],
)
def test_shapes_and_scales_along_the_other_axis(recipe: str, scale_shape: tuple, block: int | None) -> None:
    x = with_row_outliers(256, 384)
    for q in (
        layouts.requantize_for_backward(x, recipe),
        layouts.transpose_quantized(fp8.quantize(x, recipe)),
    ):
        assert q.shape == x.shape and q.axis == 0 and q.block_size == block
        assert tuple(q.scale.shape) == scale_shape
    # column j of the re-quantised tensor is column j of x^T quantised along its rows
    q = layouts.requantize_for_backward(x, recipe)
    assert torch.equal(q.dequantize(), fp8.quantize(x.t().contiguous(), recipe).dequantize().t())
    # a forward quantised along axis 0 (wgrad's dY) gets axis 1 back
    assert layouts.requantize_for_backward(x, recipe, forward_axis=0).axis == 1


def test_compare_backward_layouts_table() -> None:
    x = with_row_outliers()
    table = layouts.compare_backward_layouts(x)
    assert list(table.index) == [
        (r, p) for r in ("tensorwise", "rowwise", "blockwise") for p in ("requantize", "transpose")
    ]
    assert set(table.columns) >= {
        "relative_error",
        "snr_db",
        "exact",
        "extra_passes",
        "extra_bytes",
        "keeps_high_precision_bytes",
    }
    tw = table.loc[("tensorwise", "transpose")]
    assert tw["exact"] and tw["extra_passes"] == 0 and tw["extra_bytes"] == 0
    for recipe in ("rowwise", "blockwise"):
        re_, tr = table.loc[(recipe, "requantize")], table.loc[(recipe, "transpose")]
        assert re_["snr_db"] > tr["snr_db"] and not tr["exact"]
        assert re_["keeps_high_precision_bytes"] == x.numel() * 4 and tr["keeps_high_precision_bytes"] == 0
        assert tr["extra_bytes"] == fp8.quantize(x, recipe, axis=0).nbytes
        q = layouts.requantize_for_backward(x, recipe)
        assert re_["relative_error"] == pytest.approx(float64_error(x, q), rel=1e-9)
    single = layouts.compare_backward_layouts(x, "mxfp8")
    assert list(single.index.get_level_values(0)) == ["mxfp8", "mxfp8"]


@pytest.mark.parametrize("axis", [2, -3, 0.5, True])
def test_bad_axis_is_named(axis: object) -> None:
    with pytest.raises(ValueError, match="axes 0 and 1"):
        layouts.requantize_for_backward(torch.randn(4, 4), "rowwise", forward_axis=axis)


def test_bad_recipe_and_input_are_named() -> None:
    with pytest.raises(ValueError, match="unknown scaling recipe 'int8'; accepted"):
        layouts.requantize_for_backward(torch.randn(4, 4), "int8")
    with pytest.raises(ValueError, match="no backward layout here; accepted: tensorwise"):
        layouts.requantize_for_backward(torch.randn(4, 4), "delayed")
    with pytest.raises(TypeError, match="2-D floating-point tensor"):
        layouts.requantize_for_backward(torch.randn(4, 4, 4), "rowwise")
    with pytest.raises(TypeError, match="2-D Quantized"):
        layouts.transpose_quantized(torch.randn(4, 4))
    with pytest.raises(ValueError, match="does not divide"):
        layouts.requantize_for_backward(
            torch.randn(100, 128), "blockwise"
        )  # backward blocks run along the 100
