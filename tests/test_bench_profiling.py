"""mpcourse.bench.profiling: the kernel table of a training step shows where time goes, and in which dtype."""

from __future__ import annotations

import os

import pytest
import torch

from mpcourse.bench.profiling import kernel_table, short_dtype


def _step(dtype: torch.dtype):
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    x, y = torch.randn(32, 64, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()

    return step


@pytest.mark.parametrize("dtype, name", [(torch.float32, "fp32"), (torch.bfloat16, "bf16")])
def test_matrix_products_appear_in_the_dtype_autocast_chose(dtype: torch.dtype, name: str) -> None:
    table = kernel_table(_step(dtype), top=None)
    products = table[table["op"].isin(["aten::mm", "aten::addmm"])]
    assert set(products["dtypes"]) == {name}
    assert products["calls"].sum() == 5  # 2 forward + 2 weight gradients + 1 input gradient
    assert table["share"].sum() == pytest.approx(1.0)
    assert table["ms"].is_monotonic_decreasing


def test_steps_are_averaged_and_top_limits_rows() -> None:
    one = kernel_table(_step(torch.float32), steps=1, top=None)
    three = kernel_table(_step(torch.float32), steps=3, top=4)
    assert len(three) == 4
    calls = lambda t: dict(zip(zip(t["op"], t["dtypes"]), t["calls"]))
    assert all(calls(one)[key] == c for key, c in calls(three).items())


def test_dtype_names() -> None:
    assert short_dtype("c10::BFloat16") == "bf16" and short_dtype("float") == "fp32"
    assert short_dtype("c10::Float8_e4m3fn") == "e4m3"


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="'cpu' or 'cuda'"):
        kernel_table(lambda: None, device="mps")
    with pytest.raises(RuntimeError, match="no kernels"):
        kernel_table(lambda: None)


def test_dtypes_come_from_the_event_or_else_from_the_raw_results() -> None:
    from types import SimpleNamespace

    from mpcourse.bench.profiling import _dtypes

    raw = {7: ["c10::BFloat16", "c10::BFloat16", "Scalar", ""]}
    # torch releases before input_dtypes existed on FunctionEvent (2.11): the raw Kineto events say
    assert _dtypes(SimpleNamespace(id=7), raw) == "bf16"
    # newer releases: the event's own record wins
    assert _dtypes(SimpleNamespace(id=7, input_dtypes=["float", "c10::Half"]), raw) == "fp32, fp16"
    assert _dtypes(SimpleNamespace(id=8), raw) == "-"


def test_profiler_notes_are_held_back_and_other_stderr_passes(capfd) -> None:
    from mpcourse.bench.profiling import _quiet_profiler_notes

    with _quiet_profiler_notes():
        os.write(2, b"USDT:2026-12-02 SyncActivityProfilerHandler.cpp:39] profiler_start\n")
        os.write(2, b"ERROR:2026 DeviceProperties.cpp:56] gpuGetDeviceCount failed with code 35\n")
        os.write(2, b"a real problem\n")
    err = capfd.readouterr().err
    assert "a real problem" in err
    assert "profiler_start" not in err and "gpuGetDeviceCount" not in err


def test_kernel_table_writes_no_profiler_notes(capfd) -> None:
    a = torch.randn(32, 32)
    kernel_table(lambda: a @ a, device="cpu")
    err = capfd.readouterr().err
    assert "profiler_start" not in err and "USDT" not in err, err
