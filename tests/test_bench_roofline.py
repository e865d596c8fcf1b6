"""mpcourse.bench.roofline against byte counts of real tensors and hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from mpcourse.bench import datasheets, roofline
from mpcourse.bench.sweeps import DTYPES


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "fp8"])
@pytest.mark.parametrize("m, n, k", [(64, 48, 32), (1, 4096, 4096), (8192, 8192, 8192)])
def test_matmul_cost_counts_the_bytes_of_real_tensors(precision: str, m: int, n: int, k: int) -> None:
    flops, nbytes = roofline.matmul_cost(m, n, k, precision)
    size = torch.empty((), dtype=DTYPES[precision]).element_size()
    out = torch.empty((), dtype=torch.bfloat16 if precision == "fp8" else DTYPES[precision]).element_size()
    assert flops == 2 * m * n * k
    assert nbytes == (m * k + k * n) * size + m * n * out


def test_square_matmul_intensity_grows_with_size() -> None:
    for n in (256, 1024, 8192):
        flops, nbytes = roofline.matmul_cost(n, n, n, "bf16")
        assert flops / nbytes == pytest.approx(2 * n / 6)  # 2n^3 / (3 n^2 * 2 bytes)


def test_elementwise_add_moves_three_tensors() -> None:
    assert roofline.elementwise_cost(1000, "fp32") == (1000, 12000)
    assert roofline.elementwise_cost(1000, "bf16", inputs=1, outputs=1, flops_per_element=4) == (4000, 4000)


def test_roofline_bound_is_the_slower_of_the_two_limits() -> None:
    # 1 TFLOP on a 100 TFLOP/s, 1000 GB/s device: compute takes 10 ms; 1 GB takes 1 ms.
    assert roofline.roofline_seconds(1e12, 1e9, 100, 1000) == pytest.approx(0.01)
    assert roofline.roofline_seconds(1e9, 1e10, 100, 1000) == pytest.approx(0.01)
    assert roofline.attainable_tflops(10.0, 100, 1000) == pytest.approx(10.0)  # memory-bound
    assert roofline.attainable_tflops(1e4, 100, 1000) == 100  # compute-bound


def test_predicted_speedups_on_an_h100() -> None:
    roofs = roofline.Roofs.from_datasheet(datasheets.DATASHEETS["h100-sxm"])
    add = {p: roofline.elementwise_cost(2**28, p) for p in ("fp32", "bf16", "fp8")}
    assert roofline.predicted_speedup(add, roofs, "fp32", "bf16") == pytest.approx(2.0)  # memory-bound: bytes
    big = {p: roofline.matmul_cost(8192, 8192, 8192, p) for p in ("fp32", "bf16")}
    assert roofline.predicted_speedup(big, roofs, "fp32", "bf16") == pytest.approx(
        989.5 / 67
    )  # compute-bound
    # A thin product (a batch of 16 rows) stays memory-bound in bf16: its gain is the bytes only.
    thin = {p: roofline.matmul_cost(16, 8192, 8192, p) for p in ("fp32", "bf16")}
    assert 1.9 < roofline.predicted_speedup(thin, roofs, "fp32", "bf16") <= 2.0
    assert roofs.balance_point("bf16") == pytest.approx(989.5e12 / 3350e9)


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        roofline.matmul_cost(2, 2, 2, "int4")
    with pytest.raises(ValueError, match="positive"):
        roofline.matmul_cost(0, 2, 2, "fp32")
    with pytest.raises(ValueError, match="positive"):
        roofline.Roofs("x", {"fp32": 1.0}, 0.0, "test")
    with pytest.raises(KeyError, match="has no peak for 'fp8'"):
        roofline.Roofs.from_datasheet(datasheets.DATASHEETS["a100-sxm-80gb"]).peak("fp8")
