"""The fp8 training recipes added for issue 16: torchao's rowwise_with_gw_hp, NVIDIA's NVFP4 training
layer, parametrised weights through conversion, and the outlier model that tells recipes apart."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from mpcourse import data, fp8, train
from mpcourse.fp8 import nvfp4, outliers
from mpcourse.fp8.linear import FP8Linear, NVFP4Linear


def _layer(config: str, in_features: int = 64, out_features: int = 32) -> FP8Linear:
    torch.manual_seed(0)
    return fp8.layer_class(config).from_linear(nn.Linear(in_features, out_features), config, "emulated")


def test_rowwise_with_gw_hp_runs_dgrad_on_a_tensorwise_weight_and_wgrad_in_bf16() -> None:
    layer = _layer("fp8_rowwise_gw_hp")
    x = torch.randn(48, 64, requires_grad=True)
    dy = torch.randn(48, 32)
    layer(x).backward(dy)
    w = layer.weight.detach()
    q = lambda t, recipe: fp8.quantize(t, recipe, "e4m3", pow2_scales=True).dequantize()
    want_dx = q(dy, "rowwise") @ q(w.t().contiguous(), "tensorwise").t()
    want_dw = (dy.t().bfloat16() @ x.detach().bfloat16()).float()
    assert torch.equal(layer.weight.grad, want_dw)
    assert fp8.relative_error(x.grad, want_dx) < 1e-6
    # and it is a different recipe from plain rowwise, whose dgrad quantises the weight per row of W^T
    plain = _layer("fp8_rowwise")
    x2 = x.detach().clone().requires_grad_()
    plain(x2).backward(dy)
    assert not torch.equal(plain.weight.grad, layer.weight.grad)


@pytest.mark.parametrize("tokens", [48, 40])
def test_nvfp4_layer_is_the_papers_three_gemms(tokens: int) -> None:
    layer = _layer("nvfp4")
    assert isinstance(layer, NVFP4Linear) and layer.gemm == "emulated"
    x = torch.randn(tokens, 64, requires_grad=True)
    dy = torch.randn(tokens, 32)
    y = layer(x)
    y.backward(dy)
    w = layer.weight.detach()
    assert torch.equal(y, nvfp4.fprop(x.detach(), w) + layer.bias.detach())
    gen = torch.Generator().manual_seed(layer._seed)  # the layer's stochastic rounding, replayed
    assert torch.equal(x.grad, nvfp4.dgrad(dy, w, gen))
    pad = (-tokens) % 16  # wgrad's inner dimension is padded with zero tokens to whole 16-blocks
    dy_p, x_p = (torch.nn.functional.pad(t, (0, 0, 0, pad)) for t in (dy, x.detach()))
    assert torch.allclose(layer.weight.grad, nvfp4.wgrad(dy_p, x_p, gen), rtol=0, atol=1e-6)


def test_nvfp4_stochastic_rounding_is_reproducible_from_the_initial_weights() -> None:
    grads = []
    for _ in range(2):
        layer = _layer("nvfp4")
        x = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
        layer(x).sum().backward()
        grads.append(layer.weight.grad)
    assert torch.equal(*grads)


def test_bad_recipe_fields_name_what_is_accepted() -> None:
    with pytest.raises(ValueError, match="accepted: 'fp8', 'bf16'"):
        fp8.FP8Config("x", "y", wgrad_precision="fp16")
    with pytest.raises(ValueError, match="accepted: 'fp8', 'nvfp4'"):
        fp8.FP8Config("x", "y", layer="mx")
    with pytest.raises(ValueError, match="set input, weight and grad recipes to 'nvfp4'"):
        fp8.FP8Config("x", "y", layer="nvfp4")
    with pytest.raises(ValueError, match="one scale per tensor"):
        fp8.FP8Config("x", "y", "rowwise", "rowwise", "rowwise", dgrad_weight_recipe="rowwise")
    with pytest.raises(ValueError, match="layer='nvfp4'"):
        NVFP4Linear(32, 32, config="fp8_tensorwise")
    with pytest.raises(ValueError, match="emulated only"):
        NVFP4Linear(32, 32, gemm="scaled_mm")


def test_conversion_keeps_a_parametrised_weight() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 32))
    g = torch.ones(32)
    g[3] = 100.0
    parametrize.register_parametrization(model[1], "weight", outliers.DivideColumns(g))
    original = model[1].parametrizations.weight.original
    effective = model[1].weight.detach().clone()
    fp8.convert_to_fp8(model, "fp8_tensorwise", gemm="emulated")
    assert isinstance(model[1], FP8Linear)
    assert model[1].parametrizations.weight.original is original  # the optimizer's parameter is kept
    assert torch.equal(model[1].weight, effective)
    model(torch.randn(16, 32)).sum().backward()
    assert original.grad is not None and original.grad.abs().sum() > 0


def test_the_planted_outliers_leave_the_function_unchanged() -> None:
    text = data.load_text("pydoc", source="local", block_size=16, max_chars=20_000, verbose=False)
    tokens = text.train_tokens[:64].reshape(4, 16)
    logits = {}
    for gain in (1.0, 1e4):
        torch.manual_seed(0)
        model = outliers.outlier_transformer(text, gain=gain, width=128, depth=1)
        logits[gain] = model(tokens)
        inputs = {}
        hook = model.blocks[0].up.register_forward_pre_hook(lambda m, a: inputs.setdefault("up", a[0]))
        model(tokens)
        hook.remove()
        big = inputs["up"][..., list(outliers.OUTLIER_CHANNELS)].abs().mean()
        rest = inputs["up"][..., 10:20].abs().mean()
        if gain > 1:
            assert big > 1000 * rest  # the layer's input has outlier channels
    assert torch.allclose(logits[1.0], logits[1e4], rtol=1e-4, atol=1e-5)


def test_bad_outlier_arguments() -> None:
    text = data.load_text("pydoc", source="local", block_size=16, max_chars=20_000, verbose=False)
    with pytest.raises(ValueError, match="outside 0..63"):
        outliers.outlier_transformer(text, width=64, channels=(3, 77))
    with pytest.raises(ValueError, match="positive"):
        outliers.ChannelGain(64, 0.0)
    with pytest.raises(TypeError, match="TextData"):
        outliers.outlier_transformer(data.load_images("digits", verbose=False))
    with pytest.raises(ValueError, match="accepted: fp8_tensorwise"):
        outliers.with_layers("bf16", skip_first_last=False)


def test_compare_recipes_pairs_seeds_and_reports_gaps() -> None:
    text = data.load_text("pydoc", source="local", block_size=16, max_chars=20_000, verbose=False)
    make = lambda: outliers.outlier_transformer(text, gain=100.0, width=128, depth=1)
    every = outliers.with_layers("fp8_tensorwise", skip_first_last=False)
    runs = outliers.compare_recipes(
        make,
        text,
        ["bf16", "fp8_tensorwise", every],
        seeds=(0, 1),
        steps=4,
        batch_size=4,
        lr=1e-3,
        labels=["bf16", "tensorwise", "every layer"],
    )
    assert [(r.label, r.seed) for r in runs][:3] == [("bf16", 0), ("bf16", 1), ("tensorwise", 0)]
    count = lambda run: sum(isinstance(m, FP8Linear) for m in run.history.model.modules())
    assert count(runs[-1]) == 5  # qkv, proj, up, down and the head: every linear layer
    assert count(runs[2]) == 3  # the first (qkv) and the last (head) kept in bf16
    table = outliers.gaps(runs)
    final = {(r.label, r.seed): r.history.summary()["eval_loss"] for r in runs}
    gap0 = final[("tensorwise", 0)] - final[("bf16", 0)]
    gap1 = final[("tensorwise", 1)] - final[("bf16", 1)]
    assert table.loc["tensorwise", "gap to bf16"] == pytest.approx((gap0 + gap1) / 2)
    assert table.loc["tensorwise", "gap min"] == pytest.approx(min(gap0, gap1))
    assert table.loc["bf16", "gap to bf16"] == 0
    with pytest.raises(ValueError, match="one label per recipe"):
        outliers.compare_recipes(make, text, ["bf16"], steps=1, batch_size=2, lr=1e-3, labels=["a", "b"])
    with pytest.raises(ValueError, match="no runs labelled"):
        outliers.gaps(runs, baseline="fp32")


def test_new_recipes_are_registered() -> None:
    for name in ("fp8_rowwise_gw_hp", "nvfp4"):
        recipe = train.get_recipe(name)
        assert recipe.precision == "fp8" and recipe.autocast_dtype == torch.bfloat16


def test_set_gain_changes_only_the_planted_channels_and_gradient_errors_compare_with_fp32() -> None:
    text = data.load_text("pydoc", source="local", block_size=16, max_chars=20_000, verbose=False)
    torch.manual_seed(0)
    model = outliers.outlier_transformer(text, gain=1.0, width=128, depth=1)
    before = model(text.train_tokens[:32].reshape(2, 16))
    outliers.set_gain(model, 1e5)
    gains = [m.g for m in model.modules() if isinstance(m, (outliers.ChannelGain, outliers.DivideColumns))]
    assert len(gains) == 4 and all(set(g.unique().tolist()) == {1.0, 1e5} for g in gains)
    assert all(g[list(outliers.OUTLIER_CHANNELS)].eq(1e5).all() for g in gains)
    assert torch.allclose(model(text.train_tokens[:32].reshape(2, 16)), before, rtol=1e-4, atol=1e-5)
    batch = text.sample(4, torch.Generator().manual_seed(0))
    table = outliers.gradient_errors(model, batch, ["bf16", "fp8_tensorwise", "nvfp4"])
    assert list(table.index) == ["bf16", "fp8_tensorwise", "nvfp4"]
    assert (table["gradient error"] > 0).all() and (table["gradient cosine"] <= 1 + 1e-6).all()
    assert table.loc["bf16", "gradient error"] < table.loc["nvfp4", "gradient error"]
    assert not any(isinstance(m, FP8Linear) for m in model.modules())  # each recipe converted a copy
    with pytest.raises(ValueError, match="no planted outliers"):
        outliers.set_gain(nn.Sequential(nn.Linear(2, 2)), 10.0)
    with pytest.raises(ValueError, match="positive"):
        outliers.set_gain(model, -1.0)


def test_what_a_recipe_prints_while_converting_is_silent_unless_verbose(capsys) -> None:
    text = data.load_text("pydoc", source="local", block_size=16, max_chars=20_000, verbose=False)
    make = lambda: outliers.outlier_transformer(text, gain=1.0, width=128, depth=1)
    for verbose in (False, True):
        train.train(make, text, "fp8_tensorwise", steps=1, batch_size=2, progress=False, verbose=verbose)
        said = capsys.readouterr().out
        assert ("linear layer(s) in fp8" in said) is verbose
