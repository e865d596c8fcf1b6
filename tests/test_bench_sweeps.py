"""mpcourse.bench.sweeps on this CPU: statuses, errors against float64, fp8 through _scaled_mm."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpcourse import device
from mpcourse.bench import sweeps

CPU = device.capabilities(kind="cpu")


@pytest.fixture(scope="module")
def small_sweep():
    return sweeps.matmul_sweep([32, (48, 16, 64)], min_run_time=0.005, caps=CPU, progress=False)


def test_one_row_per_precision_and_size(small_sweep) -> None:
    assert len(small_sweep) == 2 * len(device.PRECISIONS)
    assert list(small_sweep["precision"][:5]) == list(device.PRECISIONS)
    assert small_sweep.loc[5, ["m", "n", "k"]].tolist() == [48, 16, 64]


def test_statuses_on_a_cpu(small_sweep) -> None:
    status = dict(zip(small_sweep["precision"], small_sweep["status"]))
    assert status["fp32"] == "native"
    assert status["tf32"] == "skipped"  # an NVIDIA tensor-core mode
    assert status["fp8"] in ("emulated", "skipped")  # skipped only where torch lacks CPU _scaled_mm
    tf32 = small_sweep[small_sweep["precision"] == "tf32"].iloc[0]
    assert "TF32" in tf32["note"] and np.isnan(tf32["seconds"])


def test_rates_and_peaks_are_consistent(small_sweep) -> None:
    ran = small_sweep[small_sweep["status"] != "skipped"]
    assert np.allclose(ran["tflops"], ran["flops"] / ran["seconds"] / 1e12)
    # No datasheet for a CPU: the reference is the best rate measured, so the best row is 100%.
    assert ran["pct_of_peak"].max() == pytest.approx(100)
    assert ran["peak_source"].str.startswith("best measured").all()


def test_errors_follow_the_formats(small_sweep) -> None:
    err = small_sweep.groupby("precision")["rel_error"].max()
    # Unit roundoffs: fp32 6e-8, fp16 4.9e-4, bf16 3.9e-3; E4M3 6.25e-2.
    assert err["fp32"] < 1e-6
    assert 1e-5 < err["fp16"] < 2e-3
    assert 4 * err["fp16"] < err["bf16"] < 1e-2
    if not np.isnan(err["fp8"]):
        assert 3 * err["bf16"] < err["fp8"] < 0.1


def test_fp8_product_equals_the_dequantised_product() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(32, 48, generator=gen), torch.randn(48, 16, generator=gen)
    try:
        out = sweeps.matmul_fn("fp8", a, b)()
    except (RuntimeError, NotImplementedError) as exc:  # older torch: no CPU _scaled_mm
        pytest.skip(f"torch._scaled_mm does not run on this CPU: {exc}")
    a8, sa = sweeps._to_fp8(a)
    b8, sb = sweeps._to_fp8(b)
    reference = (a8.double() * sa.double()) @ (b8.double() * sb.double())
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.double(), reference, rtol=2**-7, atol=1e-2)


def test_slow_sizes_are_skipped_with_the_prediction() -> None:
    frame = sweeps.matmul_sweep(
        [32, 64], ["fp32"], caps=CPU, min_run_time=0.005, max_call_seconds=1e-12, progress=False
    )
    assert frame["status"].tolist() == ["native", "skipped"]
    assert "predicted" in frame.loc[1, "note"]


def test_presets_cannot_be_measured() -> None:
    with pytest.raises(ValueError, match="another machine"):
        sweeps.matmul_sweep([32], caps=device.capabilities(preset="h100"), progress=False)


def test_reference_peaks_come_from_the_datasheet_for_a_known_gpu() -> None:
    peaks = sweeps.reference_peaks(device.capabilities(preset="h100"), measured_best=1.0)
    assert peaks["bf16"][0] == 989.5 and "datasheet" in peaks["bf16"][1]
    t4 = sweeps.reference_peaks(device.capabilities(preset="t4"), measured_best=3.0)
    assert t4["bf16"] == (3.0, "best measured on this device (no bf16 figure in the NVIDIA T4 datasheet)")


@pytest.mark.parametrize(
    "preset, precision, status",
    [
        ("t4", "bf16", "emulated"),
        ("t4", "tf32", "skipped"),
        ("a100", "fp8", "skipped"),
        ("h100", "fp8", "native"),
    ],
)
def test_availability_on_gpus(preset: str, precision: str, status: str) -> None:
    assert sweeps.availability(precision, device.capabilities(preset=preset))[0] == status


def test_bad_input_is_named() -> None:
    a = torch.randn(16, 16)
    with pytest.raises(ValueError, match="unknown precision 'fp4'"):
        sweeps.matmul_fn("fp4", a, a)
    with pytest.raises(TypeError, match="fp32 operands"):
        sweeps.matmul_fn("bf16", a.bfloat16(), a)
    with pytest.raises(ValueError, match="divisible by 16"):
        sweeps.matmul_fn("fp8", torch.randn(16, 24), torch.randn(24, 16))
    with pytest.raises(ValueError, match="a size is an int"):
        sweeps.matmul_sweep([(16, 16)], caps=CPU)
    with pytest.raises(ValueError, match="elementwise precisions"):
        sweeps.elementwise_sweep([16], ["fp8"], caps=CPU)


def test_elementwise_sweep_counts_three_tensors() -> None:
    frame = sweeps.elementwise_sweep([1024], ["fp32", "bf16"], caps=CPU, min_run_time=0.005)
    assert frame["bytes"].tolist() == [3 * 1024 * 4, 3 * 1024 * 2]
    assert np.allclose(frame["gb_per_s"], frame["bytes"] / frame["seconds"] / 1e9)


def test_bandwidth_and_pitfalls_run() -> None:
    assert sweeps.bandwidth(caps=CPU, nbytes=2**22, min_run_time=0.005) > 0
    pit = sweeps.timing_pitfalls(64, caps=CPU, min_run_time=0.005)
    assert {"naive", "unsynchronised", "benchmark", "independent"} <= set(pit)
    with pytest.raises(ValueError, match="do not run here"):
        sweeps.timing_pitfalls(64, "tf32", caps=CPU)
