"""mpcourse.fp8.gemm: the emulated scaled GEMM against torch._scaled_mm, and the wrapper's rules."""

from __future__ import annotations

import pytest
import torch

from mpcourse import fp8

HAS_SCALED_MM = hasattr(torch, "_scaled_mm")


def operands(m: int = 64, k: int = 256, n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=gen) * torch.logspace(-2, 1, k)
    b = torch.randn(n, k, generator=gen)
    return a, b


def _cpu_scaled_mm_runs() -> bool:
    if not HAS_SCALED_MM:
        return False
    try:
        one = torch.ones(16, 16).to(torch.float8_e4m3fn)
        torch._scaled_mm(
            one, one.t(), scale_a=torch.tensor(1.0), scale_b=torch.tensor(1.0), out_dtype=torch.float32
        )
    except (RuntimeError, NotImplementedError):
        return False
    return True


needs_cpu_scaled_mm = pytest.mark.skipif(
    not _cpu_scaled_mm_runs(), reason="this PyTorch has no CPU torch._scaled_mm"
)


@needs_cpu_scaled_mm
@pytest.mark.parametrize(
    "recipe, fmt_a, fmt_b",
    [
        ("tensorwise", "e4m3", "e4m3"),
        ("tensorwise", "e5m2", "e4m3"),
        ("tensorwise", "e4m3", "e5m2"),
        ("rowwise", "e4m3", "e4m3"),
    ],
)
def test_emulated_gemm_agrees_with_torch_scaled_mm(recipe: str, fmt_a: str, fmt_b: str) -> None:
    if recipe == "rowwise" and not fp8.gemm.cpu_rowwise_scaled_mm():
        pytest.skip("this PyTorch's CPU torch._scaled_mm takes only per-tensor scales")
    a, b = operands()
    qa, qb = fp8.quantize(a, recipe, fmt_a), fp8.quantize(b, recipe, fmt_b)
    ours = fp8.fp8_mm(qa, qb)
    scale_a = qa.scale if recipe == "tensorwise" else qa.scale.reshape(-1, 1)
    scale_b = qb.scale if recipe == "tensorwise" else qb.scale.reshape(1, -1)
    torch_out = torch._scaled_mm(
        qa.data, qb.data.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=torch.float32
    )
    assert fp8.relative_error(ours, torch_out) < 1e-6  # fp32 accumulation order only
    wrapped = fp8.scaled_mm(qa, qb, out_dtype=torch.bfloat16 if recipe == "rowwise" else torch.float32)
    assert fp8.relative_error(wrapped.float(), torch_out) < (4e-3 if recipe == "rowwise" else 1e-6)


@pytest.mark.parametrize(
    "recipe_a, recipe_b",
    [
        ("blockwise", "blockwise"),
        ("blockwise", "block_128x128"),
        ("mxfp8", "mxfp8"),
        ("mxfp4", "mxfp4"),
        ("nvfp4", "nvfp4"),
        ("tensorwise", "blockwise"),
        ("rowwise", "mxfp8"),
    ],
)
def test_emulated_gemm_equals_dequantize_then_multiply(recipe_a: str, recipe_b: str) -> None:
    """Scaling each block's partial sum equals multiplying the dequantised operands (up to fp32 rounding)."""
    a, b = operands(64, 256, 128)
    qa, qb = fp8.quantize(a, recipe_a), fp8.quantize(b, recipe_b)
    exact = qa.dequantize().double() @ qb.dequantize().double().T
    assert fp8.relative_error(fp8.fp8_mm(qa, qb), exact) < 1e-6
    assert fp8.relative_error(fp8.fp8_mm(qa, qb), a.double() @ b.double().T) < 0.2


def test_block_partial_sums_are_chunked_correctly() -> None:
    a, b = operands(40, 4096, 48)
    qa, qb = fp8.quantize(a, "mxfp8"), fp8.quantize(b, "mxfp8")
    exact = qa.dequantize().double() @ qb.dequantize().double().T
    assert fp8.relative_error(fp8.fp8_mm(qa, qb), exact) < 1e-6


def test_fp8_mm_rejects_mismatched_operands() -> None:
    a, b = operands()
    with pytest.raises(ValueError, match="inner dimensions differ"):
        fp8.fp8_mm(fp8.quantize(a, "tensorwise"), fp8.quantize(b[:, :128], "tensorwise"))
    with pytest.raises(ValueError, match="along K"):
        fp8.fp8_mm(fp8.quantize(a, "rowwise", axis=0), fp8.quantize(b, "rowwise"))
    with pytest.raises(ValueError, match="do not nest"):
        fp8.fp8_mm(
            fp8.quantize(a[:, :96], "blockwise", block_size=32),
            fp8.quantize(b[:, :96], "blockwise", block_size=48),
        )
    with pytest.raises(TypeError, match="Quantized"):
        fp8.fp8_mm(a, fp8.quantize(b, "tensorwise"))


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda a, b: (fp8.quantize(a, "tensorwise", "e5m2"), fp8.quantize(b, "tensorwise", "e5m2")),
            "E5M2 x E5M2",
        ),
        (
            lambda a, b: (fp8.quantize(a[:, :250], "tensorwise"), fp8.quantize(b[:, :250], "tensorwise")),
            "divisible by 16",
        ),
        (lambda a, b: (fp8.quantize(a, "tensorwise"), fp8.quantize(b[:90], "tensorwise")), "divisible by 16"),
        (lambda a, b: (fp8.quantize(a, "mxfp8"), fp8.quantize(b, "mxfp8")), "use fp8_mm"),
        (lambda a, b: (fp8.quantize(a, "mxfp4"), fp8.quantize(b, "mxfp4")), "fp8 tensors"),
        (lambda a, b: (fp8.quantize(a, "rowwise"), fp8.quantize(b, "tensorwise")), "both tensorwise"),
    ],
)
def test_scaled_mm_explains_what_it_refuses(make, message) -> None:
    a, b = operands()
    qa, qb = make(a, b)
    with pytest.raises(ValueError, match=message):
        fp8.scaled_mm(qa, qb)


def test_rowwise_output_must_be_16_bit_under_cuda_rules() -> None:
    a, b = operands()
    problems = fp8.scaled_mm_problems(
        fp8.quantize(a, "rowwise"), fp8.quantize(b, "rowwise"), "cuda", torch.float32
    )
    assert any("bf16 or fp16" in p for p in problems)
    assert (
        fp8.scaled_mm_problems(fp8.quantize(a, "rowwise"), fp8.quantize(b, "rowwise"), "cuda", torch.bfloat16)
        == []
    )


def test_native_fp8_on_a_device_without_it_is_an_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    a, b = operands()
    with pytest.raises(fp8.UnsupportedFP8Error, match="compute capability 8.9"):
        fp8.scaled_mm(fp8.quantize(a, "tensorwise"), fp8.quantize(b, "tensorwise"), native=True)


@needs_cpu_scaled_mm
def test_cpu_rules_only_when_not_portable() -> None:
    """The CPU emulation accepts shapes cuBLAS refuses; portable=False applies only this device's rules."""
    a, b = operands(8, 40, 24)
    out = fp8.scaled_mm(
        fp8.quantize(a, "tensorwise"), fp8.quantize(b, "tensorwise"), out_dtype=torch.float32, portable=False
    )
    assert out.shape == (8, 24)


def test_rowwise_on_a_cpu_scaled_mm_without_it_is_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fp8.gemm, "cpu_rowwise_scaled_mm", lambda: False)
    a, b = operands()
    qa, qb = fp8.quantize(a, "rowwise"), fp8.quantize(b, "rowwise")
    with pytest.raises(ValueError, match="only per-tensor"):
        fp8.scaled_mm(qa, qb)
    assert any("only per-tensor" in p for p in fp8.scaled_mm_problems(qa, qb, "cpu"))
    assert not any("only per-tensor" in p for p in fp8.scaled_mm_problems(qa, qb, "cuda"))
