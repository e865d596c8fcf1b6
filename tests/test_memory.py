"""mpcourse.memory: the calculator agrees with exact measurements of real training steps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mpcourse import memory, models


def loss_fn(model, x, y):
    return F.cross_entropy(model(x).float(), y)


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(32, 1, 8, 8, generator=gen), torch.randint(0, 10, (32,), generator=gen)


def test_bytes_per_parameter_table() -> None:
    assert memory.bytes_per_parameter("fp32") == {
        "weights": 4,
        "gradients": 4,
        "optimizer state": 8,
        "low-precision weight copies": 0,
    }
    assert memory.bytes_per_parameter("bf16")["low-precision weight copies"] == 2
    assert sum(memory.bytes_per_parameter("fp16").values()) - 2 == 16  # AMP keeps the 16 bytes of fp32
    assert sum(memory.bytes_per_parameter("pure_bf16").values()) == 8
    assert memory.bytes_per_parameter("fp32", "sgd")["optimizer state"] == 0
    assert memory.bytes_per_parameter("pure_bf16", "sgd_momentum")["optimizer state"] == 2
    table = memory.table()
    assert table.loc["amp", "persistent total"] == table.loc["fp32", "persistent total"] == 16
    assert table.loc["pure_bf16", "persistent total"] == 8
    assert table.loc["fp8", "low-precision weight copies"] == 1


def test_unknown_inputs_are_explained() -> None:
    with pytest.raises(ValueError, match="accepted: adamw, adam, sgd_momentum, sgd"):
        memory.bytes_per_parameter("fp32", "lamb")
    with pytest.raises(ValueError, match="unknown recipe"):
        memory.bytes_per_parameter("fp12")
    with pytest.raises(TypeError, match="expected a recipe"):
        memory.scheme_for(3.0)


@pytest.mark.parametrize(
    "recipe, autocast, param_dtype",
    [
        ("fp32", None, torch.float32),
        ("bf16", torch.bfloat16, torch.float32),
        ("fp16", torch.float16, torch.float32),
        ("pure_bf16", None, torch.bfloat16),
    ],
)
def test_calculator_matches_exact_measurement(recipe, autocast, param_dtype, batch) -> None:
    torch.manual_seed(0)
    model = models.MLP(64, 10, width=64, depth=2).to(param_dtype)
    x, y = batch
    measured = memory.measure_step(
        model, torch.optim.AdamW(model.parameters()), loss_fn, x.to(param_dtype), y, autocast_dtype=autocast
    )
    n = sum(p.numel() for p in model.parameters())
    predicted = memory.estimate(recipe, n, n_matmul_params=memory.matmul_parameter_count(model))
    for part in ("weights", "gradients", "optimizer state", "low-precision weight copies"):
        assert measured[part] == predicted[part], part


def test_autocast_halves_saved_activations(batch) -> None:
    torch.manual_seed(0)
    model = models.MLP(64, 10, width=256, depth=3)
    fp32 = memory.measure_step(model, torch.optim.SGD(model.parameters(), lr=0.0), loss_fn, *batch)
    bf16 = memory.measure_step(
        model, torch.optim.SGD(model.parameters(), lr=0.0), loss_fn, *batch, autocast_dtype=torch.bfloat16
    )
    ratio = bf16["activations"] / fp32["activations"]
    assert 0.45 < ratio < 0.6, ratio  # 2-byte activations, plus the fp32 log-softmax the loss saves


def test_storage_bytes_counts_views_once() -> None:
    t = torch.zeros(10, 10)
    assert memory.storage_bytes([t, t[0], t.T]) == 400
    assert memory.storage_bytes([t, torch.zeros(3, dtype=torch.bfloat16)]) == 406


def test_meter_separates_weights_copies_and_activations() -> None:
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(4, 16, requires_grad=True)
    with memory.SavedTensorMeter(lin) as meter:
        lin(x).sum()
    assert meter.bytes == {"activations": 4 * 16 * 4, "low-precision weight copies": 0, "weights": 8 * 16 * 4}
    with memory.SavedTensorMeter(lin) as meter, torch.autocast("cpu", dtype=torch.bfloat16):
        lin(x).sum()
    # bf16 copies of weight and bias; the bf16 cast of x is what linear saves
    assert meter.bytes == {
        "activations": 4 * 16 * 2,
        "low-precision weight copies": (8 * 16 + 8) * 2,
        "weights": 0,
    }


def test_estimate_adds_activations() -> None:
    est = memory.estimate("bf16", 1000, n_matmul_params=900, activation_elements=500)
    assert est["activations"] == 1000 and est["low-precision weight copies"] == 1800
    assert est["total"] == 4000 + 4000 + 8000 + 1800 + 1000


# ---- the calculator against a measured peak ----------------------------------------------------------


def _wide_step(device: str, batch: int = 8, width: int = 512):
    """A step whose parameters dominate (small batch), warmed up once so that AdamW's state exists."""
    torch.manual_seed(0)
    model = models.MLP(64, 10, width=width, depth=2).to(device)
    opt = torch.optim.AdamW(
        model.parameters(), foreach=True
    )  # the CUDA default, made explicit for the CPU too
    gen = torch.Generator().manual_seed(1)
    x, y = (
        torch.randn(batch, 1, 8, 8, generator=gen).to(device),
        torch.randint(0, 10, (batch,), generator=gen).to(device),
    )
    memory.measure_step(model, opt, loss_fn, x, y, autocast_dtype=torch.bfloat16)
    opt.zero_grad(set_to_none=True)
    n = sum(p.numel() for p in model.parameters())
    return model, opt, x, y, n


def _cpu_allocation_peak(fn) -> int:
    """Peak of CPU bytes allocated while ``fn`` runs, above what was allocated before, from the
    profiler's allocation and free events (the CPU has no counterpart of max_memory_allocated)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
        key=lambda e: e.start_ns(),
    )
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def test_step_peak_prediction_matches_the_profiled_cpu_peak() -> None:
    # The same prediction the chapter checks on CUDA, checked here against real allocation events.
    model, opt, x, y, n = _wide_step("cpu")
    measured = {}
    peak = _cpu_allocation_peak(
        lambda: measured.setdefault(
            "step", memory.measure_step(model, opt, loss_fn, x, y, autocast_dtype=torch.bfloat16)
        )
    )
    step = measured["step"]
    est = memory.estimate(
        "bf16",
        n,
        n_matmul_params=memory.matmul_parameter_count(model),
        activation_elements=step["activations"] // 2,
    )
    predicted = memory.step_peak(est)
    assert (
        predicted["optimizer step"]
        == est["gradients"] + est["optimizer state"] // 2
        > predicted["end of forward"]
    )
    assert predicted["predicted"] <= peak <= predicted["predicted"] * (1 + memory.PEAK_TOLERANCE)


def test_step_peak_components() -> None:
    est = memory.estimate("bf16", 1000, n_matmul_params=800, activation_elements=10_000)
    assert memory.step_peak(est) == {
        "optimizer step": 4000 + 4000,
        "end of forward": 20_000 + 1600,
        "predicted": 21_600,
    }
    assert (
        memory.step_peak(memory.estimate("fp32", 1000), "sgd")["optimizer step"] == 4000
    )  # SGD updates in place
    assert memory.step_peak(memory.estimate("fp32", 1000), "sgd_momentum")["optimizer step"] == 4000


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU: torch.cuda.max_memory_allocated has no CPU counterpart",
)
def test_step_peak_prediction_matches_max_memory_allocated() -> None:
    model, opt, x, y, n = _wide_step("cuda", width=1024)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()  # weights, optimizer state, the batch, cuBLAS workspaces
    step = memory.measure_step(model, opt, loss_fn, x, y, autocast_dtype=torch.bfloat16)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    est = memory.estimate(
        "bf16",
        n,
        n_matmul_params=memory.matmul_parameter_count(model),
        activation_elements=step["activations"] // 2,
    )
    predicted = memory.step_peak(est)["predicted"]
    assert predicted <= peak <= predicted * (1 + memory.PEAK_TOLERANCE), (peak, predicted)


def test_wrapper_tensor_subclasses_count_the_tensors_they_wrap() -> None:
    """torchao's fp8 training tensors wrap plain tensors and have no storage of their own to read."""
    from torch.testing._internal.two_tensor import TwoTensor

    a, b = torch.zeros(8), torch.zeros(4, dtype=torch.float16)
    wrapped = TwoTensor(a, a.clone())
    assert memory.storage_bytes([wrapped]) == 2 * a.nbytes
    assert memory.storage_bytes([wrapped, b, b[:2]]) == 2 * a.nbytes + b.nbytes  # views count once
