"""Checks for the exercises of chapter ``getting_started``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from . import call, expect_close, fail, register

# ---- getting_started-tflops ---------------------------------------------------------------------


def _wrong_tflops(m: int, n: int, k: int, seconds: float) -> dict[str, tuple[float, str, str]]:
    """What the usual wrong counts give for one product: {name: (value, what, first hint)}."""
    per_second = 1 / seconds / 1e12
    count_hint = "count the operations of one entry of the result: k multiplications and k additions."
    return {
        "one per multiply-add": (
            m * n * k * per_second,
            "you get half the right value: a multiply-add was counted as one operation",
            "a multiply-add is a multiplication and an addition: datasheets and this course count two operations.",
        ),
        "2k - 1": (
            m * n * (2 * k - 1) * per_second,
            "you counted m*n*(2k-1) operations, leaving out each dot product's first addition",
            "datasheets (and this course) count every multiply-add as two operations, the first one too.",
        ),
        "GFLOP/s": (
            2 * m * n * k / seconds / 1e9,
            "you are 1000 times too high: that is GFLOP/s (10^9), not TFLOP/s",
            "check the unit you divide by: the T in TFLOP/s means 10^12.",
        ),
        "PFLOP/s": (
            2 * m * n * k / seconds / 1e15,
            "you are 1000 times too low (PFLOP/s, or the time taken as milliseconds)",
            "`seconds` is in seconds, and the T in TFLOP/s means 10^12.",
        ),
        "2^40": (
            2 * m * n * k / seconds / 2**40,
            "you divided by 2^40, but the T of TFLOP/s is the decimal 10^12",
            "operation rates use decimal prefixes: 1 TFLOP/s is 10^12 operations per second.",
        ),
        "no k": (2 * m * n * per_second, "you left out the inner dimension k", count_hint),
        **{
            f"square {side}": (
                2 * size**3 * per_second,
                f"you assumed square matrices ({side} x {side} times {side} x {side})",
                "the product is of an m x k matrix with a k x n one: each of m, n and k counts.",
            )
            for side, size in (("m", m), ("n", n), ("k", k))
        },
        "times seconds": (
            2 * m * n * k * seconds / 1e12,
            "you multiplied by the time instead of dividing by it",
            "a rate is operations per second: the more time a product takes, the lower its rate.",
        ),
    }


@register(
    "getting_started-tflops",
    hints=(
        "Count the floating-point operations of the product, then divide by the time. The result of an "
        "(m x k) @ (k x n) product has m*n entries: how many multiplications and additions does one "
        "entry take?",
        "Datasheets, and this course, count a multiply-add as two operations, and do not subtract the "
        "first addition of each dot product (which starts from zero).",
        "Operations divided by seconds is FLOP/s; then express it in units of 10^12, which is what the T "
        "of TFLOP/s means (decimal, not 2^40).",
    ),
)
def check_tflops(matmul_tflops: Any) -> None:
    """``matmul_tflops(m, n, k, seconds)``: achieved TFLOP/s of an (m x k) @ (k x n) product."""
    label = "getting_started-tflops"
    for m, n, k, seconds in [
        (4096, 1000, 768, 0.25),
        (8, 16, 2048, 1e-5),
        (1000, 3, 70, 2e-6),
        (1, 1, 1, 1.0),
    ]:
        want = 2 * m * n * k / seconds / 1e12
        got = call(label, matmul_tflops, m, n, k, seconds)
        case = f"m={m}, n={n}, k={k}, seconds={seconds}"
        if isinstance(got, (np.floating, np.integer)):
            got = float(got)
        if isinstance(got, (int, float)) and not isinstance(got, bool):
            for value, what, hint in _wrong_tflops(m, n, k, seconds).values():
                if math.isclose(got, value, rel_tol=1e-9) and not math.isclose(value, want, rel_tol=1e-9):
                    fail(label, f"for {case} your answer is {got!r}: {what}.", hint)
        expect_close(
            label,
            got,
            want,
            rtol=1e-9,
            case=case,
            hint="write down the number of operations of this product and the time it took, and divide.",
        )


# ---- getting_started-relative-error -------------------------------------------------------------


def _relative_error_cases() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Named (result, reference) pairs: float64, fp32, bf16 and fp16 references, from fixed seeds."""
    gen = torch.Generator().manual_seed(1234)
    a = torch.randn(96, 80, generator=gen, dtype=torch.float64)
    b = torch.randn(80, 64, generator=gen, dtype=torch.float64)
    product = a @ b
    outlier = torch.zeros_like(product)
    outlier.view(-1)[7] = 5.0
    bf16_reference = (4 * torch.randn(64, 64, generator=gen, dtype=torch.float64)).bfloat16()
    bf16_result = (
        bf16_reference.double() + 0.01 * torch.randn(64, 64, generator=gen, dtype=torch.float64)
    ).bfloat16()
    activations = 3000 + 500 * torch.randn(64, 96, generator=gen, dtype=torch.float64)
    noisy = activations * (1 + 1e-3 * torch.randn(64, 96, generator=gen, dtype=torch.float64))
    return {
        "a bf16 product against its float64 reference": (a.bfloat16() @ b.bfloat16(), product),
        "an fp32 product against its float64 reference": (a.float() @ b.float(), product),
        "a float64 tensor with one large outlier": (product + outlier, product),
        "a bf16 tensor against a bf16 reference": (bf16_result, bf16_reference),
        "fp16 activations near 3000 against an fp16 reference": (noisy.half(), activations.half()),
    }


def _wrong_relative_errors(result: torch.Tensor, ref: torch.Tensor) -> dict[str, tuple[float, str, str]]:
    """What the usual wrong definitions give: {name: (value, what, first hint)}."""
    r64, f64 = result.double(), ref.double()
    low = result.dtype if result.dtype != torch.float64 else torch.float32
    low_name = str(low).removeprefix("torch.")
    diff_low = result.to(low) - ref.to(low)
    convert_hint = (
        "the measurement must not round (or overflow) on its own: in which precision are your "
        "subtraction and your norms computed, and which one is wide enough for them?"
    )
    wrong = {
        "norm of result": (
            (torch.linalg.norm(r64 - f64) / torch.linalg.norm(r64)).item(),
            "dividing by the norm of the result instead of the reference",
            "the reference is what the error is measured against: it belongs in the denominator.",
        ),
        "mean elementwise": (
            ((r64 - f64).abs() / f64.abs()).mean().item(),
            "the mean of element-wise relative errors",
            "the measure is one norm of the whole difference over one norm of the whole reference, not "
            "an average of ratios (entries near zero make those explode).",
        ),
        "max elementwise": (
            ((r64 - f64).abs() / f64.abs()).max().item(),
            "the largest element-wise relative error",
            "the measure is one norm of the whole difference over one norm of the whole reference, not "
            "the worst ratio of single entries.",
        ),
        "difference in low precision": (
            (torch.linalg.norm(diff_low.float()).double() / torch.linalg.norm(f64)).item(),
            f"the difference computed in {low_name}, which rounds the reference before subtracting",
            convert_hint,
        ),
        "absolute": (
            torch.linalg.norm(r64 - f64).item(),
            "the absolute (not relative) error",
            "divide by the size of the reference, so that the error does not depend on the scale of the data.",
        ),
        "squared": (
            (torch.linalg.norm(r64 - f64) ** 2 / torch.linalg.norm(f64) ** 2).item(),
            "the ratio of the squared norms (sums of squares without their square roots)",
            "the Frobenius norm is the square root of the sum of squares.",
        ),
    }
    try:  # no conversion at all: with two bf16 or fp16 inputs, norms are rounded to that dtype
        in_place = (torch.linalg.norm(result - ref) / torch.linalg.norm(ref)).item()
    except RuntimeError:  # a dtype this torch cannot take a norm in
        in_place = math.nan
    wrong["no conversion"] = (
        in_place,
        f"the norms computed in {str(torch.promote_types(result.dtype, ref.dtype)).removeprefix('torch.')}, "
        "the inputs' own precision, so that the measurement rounds (and, in fp16, overflows) by itself",
        convert_hint,
    )
    return wrong


@register(
    "getting_started-relative-error",
    hints=(
        "The error measure is the one the chapter defines where it first compares the fp32 and bf16 "
        "products: one norm of the whole difference, divided by one norm of the whole reference.",
        "The inputs can be bf16 or fp16 tensors. Any arithmetic you do in their dtype is rounded to "
        "it, and fp16 overflows above 65504: convert before you compute anything.",
        "torch.linalg.norm of a matrix is its Frobenius norm, computed in the dtype of the tensor you "
        "give it. Which dtype should both tensors be in before you subtract them, so that nothing you "
        "compute adds a measurable error? Return a Python float, not a tensor.",
    ),
)
def check_relative_error(relative_error: Any) -> None:
    """``relative_error(result, reference)``: ||result - reference||_F / ||reference||_F in float64."""
    label = "getting_started-relative-error"
    for case, (result, ref) in _relative_error_cases().items():
        got = call(label, relative_error, result.clone(), ref.clone())
        if isinstance(got, torch.Tensor):
            if got.numel() != 1:
                fail(
                    label,
                    f"for {case} you returned a tensor of shape {tuple(got.shape)}.",
                    "return one number: the error of the whole tensor.",
                )
            got = got.item()
        if isinstance(got, (np.floating, np.integer)):
            got = float(got)
        want = (torch.linalg.norm(result.double() - ref.double()) / torch.linalg.norm(ref.double())).item()
        if isinstance(got, (int, float)) and not isinstance(got, bool):
            for value, what, hint in _wrong_relative_errors(result, ref).values():
                same = math.isclose(got, value, rel_tol=1e-6) or (math.isnan(got) and math.isnan(value))
                if same and not math.isclose(value, want, rel_tol=1e-6):
                    fail(label, f"for {case} your answer, {got!r}, matches a common mistake: {what}.", hint)
        expect_close(
            label,
            got,
            want,
            rtol=1e-6,
            case=case,
            hint="compute the measure for this case by hand, step by step, and compare each step with your function.",
        )
