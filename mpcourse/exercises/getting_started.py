"""Checks for the exercises of chapter ``getting_started``."""

from __future__ import annotations

import math
from typing import Any

import torch

from . import call, expect_close, fail, register


@register("getting_started-tflops")
def check_tflops(matmul_tflops: Any) -> None:
    """``matmul_tflops(m, n, k, seconds)``: achieved TFLOP/s of an (m x k) @ (k x n) product."""
    label = "getting_started-tflops"
    hint = (
        "an (m x k) @ (k x n) product computes m*n dot products of length k, and each term is "
        "one multiply and one add: two floating-point operations. 1 TFLOP/s is 1e12 FLOP/s."
    )
    for m, n, k, seconds in [
        (4096, 4096, 4096, 0.25),
        (8, 16, 2048, 1e-5),
        (1000, 3, 70, 2e-6),
        (1, 1, 1, 1.0),
    ]:
        want = 2 * m * n * k / seconds / 1e12
        got = call(label, matmul_tflops, m, n, k, seconds)
        case = f"m={m}, n={n}, k={k}, seconds={seconds}"
        if isinstance(got, (int, float)) and math.isclose(got, want / 2, rel_tol=1e-9):
            fail(label, f"for {case} you get half the right value.", "a multiply-add counts as two FLOPs.")
        if isinstance(got, (int, float)) and math.isclose(got, want * 1e3, rel_tol=1e-9):
            fail(
                label, f"for {case} you are off by a factor of 1000.", "TFLOP/s means 1e12, not 1e9, FLOP/s."
            )
        expect_close(label, got, want, rtol=1e-9, case=case, hint=hint)


@register("getting_started-relative-error")
def check_relative_error(relative_error: Any) -> None:
    """``relative_error(result, reference)``: ||result - reference||_F / ||reference||_F in float64."""
    label = "getting_started-relative-error"
    hint = (
        "take the Frobenius norm of (result - reference) and divide by the Frobenius norm of the "
        "reference, after converting both to float64 so the measurement adds no rounding of its own."
    )
    gen = torch.Generator().manual_seed(1234)
    a = torch.randn(96, 80, generator=gen, dtype=torch.float64)
    b = torch.randn(80, 64, generator=gen, dtype=torch.float64)
    reference = a @ b
    cases = {
        "a bf16 product against its float64 reference": (a.bfloat16() @ b.bfloat16(), reference),
        "an fp32 product against its float64 reference": (a.float() @ b.float(), reference),
        "a tensor with one large outlier": (reference + _one_hot_like(reference, 5.0), reference),
    }
    for case, (result, ref) in cases.items():
        got = call(label, relative_error, result, ref)
        if isinstance(got, torch.Tensor):
            if got.numel() != 1:
                fail(
                    label,
                    f"for {case} you returned a tensor of shape {tuple(got.shape)}.",
                    "return one number.",
                )
            got = got.item()
        want = (torch.linalg.norm(result.double() - ref) / torch.linalg.norm(ref)).item()
        wrong = _wrong_relative_errors(result, ref)
        for name, value in wrong.items():
            if (
                isinstance(got, (int, float))
                and math.isclose(got, value, rel_tol=1e-6)
                and not math.isclose(value, want, rel_tol=1e-6)
            ):
                fail(label, f"for {case} your answer matches a common mistake: {name}.", hint)
        expect_close(label, got, want, rtol=1e-6, case=case, hint=hint)


def _one_hot_like(t: torch.Tensor, value: float) -> torch.Tensor:
    out = torch.zeros_like(t)
    out.view(-1)[7] = value
    return out


def _wrong_relative_errors(result: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Values produced by the usual wrong definitions, to recognise them and say which one."""
    r64, f64 = result.double(), ref.double()
    low = result.dtype if result.dtype != torch.float64 else torch.float32
    diff_low = result.to(low) - ref.to(low)
    return {
        "dividing by the norm of the result instead of the reference": (
            torch.linalg.norm(r64 - f64) / torch.linalg.norm(r64)
        ).item(),
        "the mean of element-wise relative errors": ((r64 - f64).abs() / f64.abs()).mean().item(),
        "the largest element-wise relative error": ((r64 - f64).abs() / f64.abs()).max().item(),
        "computing the difference in the low precision": (
            torch.linalg.norm(diff_low.float()).double() / torch.linalg.norm(f64)
        ).item(),
        "the absolute (not relative) error": torch.linalg.norm(r64 - f64).item(),
    }
