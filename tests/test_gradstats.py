"""mpcourse.gradstats: binades, histograms and format windows against numpy, ml_dtypes and torch casts."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch
from torch import nn

from mpcourse import formats, gradstats


def sample(seed: int = 0, n: int = 20_000) -> torch.Tensor:
    """Magnitudes spread over 2^-60 .. 2^20, both signs, with zeros, infs and a NaN."""
    gen = torch.Generator().manual_seed(seed)
    mags = torch.exp2(torch.empty(n, dtype=torch.float64).uniform_(-60, 20, generator=gen))
    signs = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).double()
    x = (mags * signs).float()
    x[:50] = 0.0
    x[50:53] = torch.tensor([math.inf, -math.inf, math.nan])
    # Exact powers of two and their float32 neighbours: where log2 would round.
    edges = torch.tensor([2.0**-24, 2.0**-14, 2.0**-25, 65504.0, 65520.0, 65536.0], dtype=torch.float32)
    x[53:59] = edges
    x[59:65] = torch.nextafter(edges, torch.zeros_like(edges))
    return x


def test_binades_are_exact_at_powers_of_two() -> None:
    x = sample()
    got = gradstats.binades(x).numpy()
    finite = x[torch.isfinite(x) & (x != 0)].double().numpy()
    want = np.floor(np.log2(np.abs(finite)))  # float64 log2 of float32 values is exact enough here
    assert np.array_equal(got, want.astype(np.int64))
    assert gradstats.binades(torch.tensor([2.0**-24])).item() == -24
    assert gradstats.binades(torch.nextafter(torch.tensor([2.0**-24]), torch.tensor([0.0]))).item() == -25


def test_histogram_counts_every_value_once() -> None:
    x = sample()
    h = gradstats.log2_histogram(x, lo=-40, hi=10, label="x")
    assert h.total == x.numel()
    assert h.zeros == 50 and h.nonfinite == 3
    e = np.floor(np.log2(np.abs(x[torch.isfinite(x) & (x != 0)].double().numpy())))
    assert h.below == int((e < -40).sum()) and h.above == int((e > 10).sum())
    want = np.array([(e == k).sum() for k in range(-40, 11)])
    assert np.array_equal(h.counts, want)
    assert math.isclose(h.fractions().sum(), (x.numel() - 53 - h.below - h.above) / x.numel())


def test_shift_by_a_power_of_two_equals_histogram_of_scaled_values() -> None:
    x = sample()
    h = gradstats.log2_histogram(x, lo=-64, hi=30)
    scaled = gradstats.log2_histogram(x.double() * 2.0**7, lo=-57, hi=37)
    shifted = h.shifted(7)
    assert np.array_equal(shifted.exponents, scaled.exponents)
    assert np.array_equal(shifted.counts, scaled.counts)
    with pytest.raises(ValueError, match="whole number"):
        h.shifted(0.5)


@pytest.mark.parametrize(
    "fmt, dtype", [("fp16", np.float16), ("bf16", ml_dtypes.bfloat16), ("e5m2", ml_dtypes.float8_e5m2)]
)
@pytest.mark.parametrize("scale", [1.0, 2.0**10, 2.0**24, 3.0])
def test_window_agrees_with_ml_dtypes_casts(fmt: str, dtype, scale: float) -> None:
    x = sample(1)
    row = gradstats.window(x, fmt, scale=scale)
    v = x.double().numpy()
    finite = np.isfinite(v)
    nonzero = finite & (v != 0)
    with np.errstate(all="ignore"):
        cast = (v[nonzero] * scale).astype(dtype).astype(np.float64)
    n = v.size
    f = formats.get(fmt)
    mag = np.abs(v * scale)
    assert row["zero"] == (v == 0).sum() / n
    assert row["nonfinite"] == (~finite).sum() / n
    assert row["underflows_to_zero"] == (cast == 0).sum() / n
    assert row["overflow"] == (~np.isfinite(cast)).sum() / n
    assert row["below_smallest_subnormal"] == (nonzero & (mag < f.smallest_subnormal)).sum() / n
    assert row["below_smallest_normal"] == (nonzero & (mag < f.tiny)).sum() / n
    assert row["above_max"] == (nonzero & (mag > f.max)).sum() / n
    parts = ["zero", "below_smallest_normal", "normal", "above_max", "nonfinite"]
    assert math.isclose(row[parts].sum(), 1.0)
    assert math.isclose(row["below_smallest_normal"], row["below_smallest_subnormal"] + row["subnormal"])


def test_window_of_fp16_boundaries() -> None:
    fp16 = formats.get("fp16")
    ss = fp16.smallest_subnormal
    x = torch.tensor(
        [ss / 2, np.nextafter(ss / 2, 1.0), ss, fp16.tiny, fp16.max, 65519.0, 65520.0], dtype=torch.float64
    )
    row = gradstats.window(x, "fp16")
    n = len(x)
    assert row["underflows_to_zero"] * n == 1  # ss/2 is a tie: it rounds to even, i.e. to zero
    assert row["below_smallest_subnormal"] * n == 2
    assert row["subnormal"] * n == 1
    assert row["overflow"] * n == 1  # 65520 rounds to inf; 65519 rounds down to 65504
    assert row["above_max"] * n == 2


def test_window_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="scale must be"):
        gradstats.window(torch.ones(3), "fp16", scale=0)
    with pytest.raises(ValueError, match="unknown floating-point format"):
        gradstats.window(torch.ones(3), "fp12")
    with pytest.raises(TypeError, match="floating-point"):
        gradstats.window(torch.ones(3, dtype=torch.int64), "fp16")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_capture_records_output_gradients_and_weight_gradients() -> None:
    model = _mlp()
    x = torch.randn(5, 8)
    with gradstats.capture(model) as grads:
        out = model(x)
        loss = out.square().sum()
        loss.backward()
    assert set(grads.activations) == {"0", "1", "2"}
    assert torch.equal(grads.activations["2"], 2 * out.detach())  # dL/d(out) of sum(out^2)
    # Independent: the gradient of the hidden layer's output, by autograd directly.
    h = model[0](x)
    (g_h,) = torch.autograd.grad(model[2](model[1](h)).square().sum(), h)
    assert torch.allclose(grads.activations["0"], g_h)
    assert set(grads.weights) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert torch.equal(grads.weights["0.weight"], model[0].weight.grad)
    assert grads.values("all").numel() == sum(
        t.numel() for t in [*grads.activations.values(), *grads.weights.values()]
    )
    # The hooks are gone after the block: another backward records nothing new.
    before = dict(grads.activations)
    model(x).sum().backward()
    assert grads.activations.keys() == before.keys()
    assert all(not m._forward_hooks for m in model.modules())


def test_capture_under_fp16_autocast_sees_fp16_activation_gradients() -> None:
    model = _mlp()
    with gradstats.capture(model) as grads:
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(torch.randn(5, 8))
        out.float().sum().backward()
    assert grads.dtypes() == {"activations": "float16", "weights": "float32"}


def test_capture_concatenates_a_module_used_twice_and_validates() -> None:
    layer = nn.Linear(4, 4)
    model = nn.Sequential(layer, nn.ReLU(), layer)
    with gradstats.capture(model, modules=lambda name, m: isinstance(m, nn.Linear)) as grads:
        model(torch.randn(3, 4)).sum().backward()
    assert set(grads.activations) == {"0"}  # one module (named once), run twice: both gradients kept
    assert grads.activations["0"].numel() == 24
    with pytest.raises(ValueError, match="unknown kind"):
        grads.values("biases")
    with pytest.raises(ValueError, match="no activations gradients"):
        gradstats.GradientSnapshot().values("activations")
    with pytest.raises(TypeError, match="nn.Module"):
        with gradstats.capture("model"):  # type: ignore[arg-type]
            pass


def test_underflow_table_has_a_row_per_tensor() -> None:
    model = _mlp()
    with gradstats.capture(model) as grads:
        (model(torch.randn(5, 8)).sum() * 1e-9).backward()
    table = gradstats.underflow_table(grads, "fp16")
    assert len(table) == len(grads.activations) + len(grads.weights)
    # Every gradient is about 1e-9 (below 2^-25) or exactly zero (behind a ReLU): all are lost.
    acts = table.loc["activations"]
    assert (
        np.allclose(acts["underflows_to_zero"] + acts["zero"], 1.0)
        and (acts["underflows_to_zero"] > 0.5).all()
    )


def test_plot_window_has_a_static_slider_that_moves_the_window() -> None:
    x = sample()
    h = gradstats.log2_histogram(x, label="x")
    fig = gradstats.plot_window([h], "fp16", scales_log2=[0, 8, 16])
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == ["0", "8", "16"]
    x0 = [min(shape["x0"] for shape in s.args[1]["shapes"]) for s in steps]
    assert x0 == [-24, -32, -40]  # the subnormal range starts at 2^-24 / scale
    fp16_window = gradstats.format_window("fp16")
    assert fp16_window["smallest_subnormal"] == -24 and fp16_window["smallest_normal"] == -14
    assert "below 2^-24" in steps[0].args[0]["name"][0]
    with pytest.raises(TypeError):
        gradstats.plot_window([x], "fp16")  # type: ignore[list-item]


def test_plot_window_refuses_a_histogram_too_narrow_for_the_scale() -> None:
    h = gradstats.log2_histogram(sample(), lo=-20, hi=10, label="narrow")
    with pytest.raises(ValueError, match="too few"):
        gradstats.plot_window([h], "fp16", scales_log2=[0])


def test_window_works_for_every_gradient_format() -> None:
    x = sample()
    for name in ("fp16", "bf16", "e4m3", "e5m2"):
        row = gradstats.window(x, name)
        assert math.isclose(
            row[["zero", "below_smallest_normal", "normal", "above_max", "nonfinite"]].sum(), 1.0
        )
    # bf16 has fp32's exponent range: far fewer values fall below its window than below fp16's.
    assert (
        gradstats.window(x, "bf16")["below_smallest_normal"]
        < gradstats.window(x, "fp16")["below_smallest_normal"] / 2
    )
