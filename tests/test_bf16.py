"""mpcourse.bf16: fast stochastic rounding against the exact reference, compensated updates, the
optimizer against torch.optim.AdamW, the recipes it registers, and clear errors for bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mpcourse import bf16, data, formats, models, train
from mpcourse.bf16 import BF16AdamW, StepMonitor, kahan_add_, stochastic_add_, stochastic_round_bf16

BF16 = formats.BF16
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _values() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    random = torch.randn(20_000, generator=gen) * torch.exp(torch.randn(20_000, generator=gen) * 12)
    patterns = torch.randint(0, 2**31 - 1, (20_000,), generator=gen, dtype=torch.int64).to(torch.int32)
    every_binade = patterns.view(torch.float32)  # random bit patterns: subnormals, huge values, NaNs
    special = torch.tensor(
        [
            0.0,
            -0.0,
            1.0,
            -1.0,
            math.inf,
            -math.inf,
            math.nan,
            3.3e38,
            -3.4028e38,
            1e-45,
            -1e-40,
            2.0**-126,
            2.0**-133,
        ]
    )
    return torch.cat([random, every_binade, -every_binade, special]).float()


# ---- stochastic rounding ---------------------------------------------------------------------------


def test_results_are_always_one_of_the_two_neighbours_bit_for_bit() -> None:
    x = _values()
    down = formats.round_tensor(x, BF16, rounding="down")
    up = formats.round_tensor(x, BF16, rounding="up")
    for seed in range(3):
        got = stochastic_round_bf16(x, generator=torch.Generator().manual_seed(seed)).float()
        nan = torch.isnan(x)
        assert torch.isnan(got[nan]).all()
        same = (got.view(torch.int32) == down.view(torch.int32)) | (
            got.view(torch.int32) == up.view(torch.int32)
        )
        assert same[~nan].all(), x[~nan][~same[~nan]][:5]


def test_bf16_values_and_infinities_are_unchanged() -> None:
    exact = torch.arange(0, 1 << 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    exact = exact[~torch.isnan(exact)]
    got = stochastic_round_bf16(exact, generator=torch.Generator().manual_seed(1)).float()
    assert torch.equal(got.view(torch.int32), exact.view(torch.int32))  # signed zeros and infinities included


def test_overflow_past_the_largest_bf16_value_can_give_infinity_like_the_reference() -> None:
    x = torch.full((4000,), 3.3961e38)  # between bf16's max (3.3895e38) and fp32's
    fast = stochastic_round_bf16(x, generator=torch.Generator().manual_seed(2)).float()
    reference = formats.round_tensor(
        x, BF16, rounding="stochastic", generator=torch.Generator().manual_seed(2)
    )
    assert set(fast.unique().tolist()) == set(reference.unique().tolist()) == {BF16.max, math.inf}


def test_the_probability_of_rounding_up_is_the_fraction_of_the_gap_and_matches_the_reference() -> None:
    bases = torch.tensor([1.0, -1.0, 3.0, -0.015625, 2.0**-130, 1.0e30 // 2**96 * 2**96])
    bases = bases.to(torch.bfloat16).float()
    fractions = torch.tensor([1 / 64, 0.25, 0.5, 0.75, 63 / 64])
    gaps = torch.from_numpy(BF16.spacing(bases.double().numpy())).float()
    x = (bases[:, None] + torch.sign(bases)[:, None] * fractions * gaps[:, None]).float()
    draws = 20_000
    wide = x.expand(draws, -1, -1).contiguous()
    fast = stochastic_round_bf16(wide, generator=torch.Generator().manual_seed(3)).float()
    exact = formats.round_tensor(
        wide, BF16, rounding="stochastic", generator=torch.Generator().manual_seed(4)
    )
    p_fast = (fast != bases[None, :, None]).double().mean(0)
    p_exact = (exact != bases[None, :, None]).double().mean(0)
    se = torch.sqrt(fractions * (1 - fractions) / draws).double()
    assert ((p_fast - fractions).abs() < 5 * se).all(), p_fast
    assert ((p_fast - p_exact).abs() < 7 * se).all()
    # Unbiased: the mean of the draws is the input, to within the sampling error.
    mean_error = (fast.double().mean(0) - x.double()).abs() / gaps[:, None].double()
    assert (mean_error < 5 * 0.5 / math.sqrt(draws)).all()


def test_draws_are_reproducible_from_the_generator_and_shapes_are_kept() -> None:
    x = torch.randn(6, 7).t()  # not contiguous
    before = x.clone()
    a = stochastic_round_bf16(x, generator=torch.Generator().manual_seed(9))
    b = stochastic_round_bf16(x, generator=torch.Generator().manual_seed(9))
    assert a.shape == x.shape and a.dtype == torch.bfloat16 and torch.equal(a, b)
    assert torch.equal(x, before)  # the input is not modified
    assert ((a.float() - x).abs() <= torch.from_numpy(BF16.spacing(x.double().numpy())).float()).all()


@pytest.mark.parametrize(
    "bad, message",
    [
        ([1.0, 2.0], "torch.Tensor"),
        (torch.arange(4), "integer"),
        (torch.ones(3, dtype=torch.float64), r"\.float\(\)"),
        (torch.ones(3, dtype=torch.float16), r"\.float\(\)"),
        (torch.ones(3, dtype=torch.bfloat16), "already bf16"),
        (torch.ones(3, dtype=torch.bool), "integer and boolean"),
    ],
)
def test_stochastic_round_rejects_what_it_cannot_round(bad, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        stochastic_round_bf16(bad)


# ---- updates ---------------------------------------------------------------------------------------


def test_many_small_updates_survive_stochastic_rounding_on_average_and_vanish_to_nearest() -> None:
    w = torch.ones(10_000, dtype=torch.bfloat16)
    nearest = w.clone()
    update = torch.full((10_000,), 1e-4)  # 1/78 of the gap at 1 (2^-7): below half a gap
    gen = torch.Generator().manual_seed(5)
    for _ in range(200):
        stochastic_add_(w, update, generator=gen)
        nearest.copy_(nearest.float() + update)
    assert torch.equal(nearest, torch.ones_like(nearest))
    assert abs(w.double().mean().item() - 1.02) < 5e-4


def test_stochastic_add_on_fp32_is_a_plain_addition() -> None:
    w = torch.randn(100)
    u = torch.randn(100) * 1e-6
    want = w + u
    stochastic_add_(w, u)
    assert torch.equal(w, want)


def test_kahan_follows_the_exact_sum_to_within_one_gap() -> None:
    gen = torch.Generator().manual_seed(6)
    w0 = torch.randn(500, generator=gen)
    w = w0.to(torch.bfloat16)
    comp = torch.zeros_like(w)
    exact = w.double()
    for _ in range(400):
        u = torch.randn(500, generator=gen) * w0.abs() * 2.0**-12
        kahan_add_(w, u, comp)
        exact += u.double()
    gap = torch.from_numpy(BF16.spacing(exact.numpy()))
    assert ((w.double() - exact).abs() <= gap).all()
    assert (comp.double().abs() <= gap).all()


def test_kahan_with_a_large_update_is_round_to_nearest() -> None:
    w = torch.tensor([1.0, 300.0, -2.5]).to(torch.bfloat16)
    u = torch.tensor([0.3, 7.0, -0.01])
    comp = torch.zeros_like(w)
    want = (w.float() + u).to(torch.bfloat16)
    kahan_add_(w, u, comp)
    assert torch.equal(w, want)


@pytest.mark.parametrize(
    "param, update, comp, error, message",
    [
        (
            torch.ones(3, dtype=torch.float16),
            torch.ones(3),
            torch.zeros(3, dtype=torch.float16),
            TypeError,
            "float16",
        ),
        (
            torch.ones(3, dtype=torch.bfloat16),
            torch.ones(3, dtype=torch.int64),
            torch.zeros(3, dtype=torch.bfloat16),
            TypeError,
            "floating-point",
        ),
        (
            torch.ones(3, dtype=torch.bfloat16),
            torch.ones(4),
            torch.zeros(3, dtype=torch.bfloat16),
            ValueError,
            "shape",
        ),
        (torch.ones(3, dtype=torch.bfloat16), torch.ones(3), torch.zeros(3), TypeError, "compensation"),
        (
            torch.ones(3, dtype=torch.bfloat16),
            torch.ones(3),
            torch.zeros(2, dtype=torch.bfloat16),
            ValueError,
            "compensation has shape",
        ),
        ([1.0], torch.ones(1), torch.zeros(1), TypeError, "tensors"),
    ],
)
def test_kahan_rejects_bad_input(param, update, comp, error, message: str) -> None:
    with pytest.raises(error, match=message):
        kahan_add_(param, update, comp)


def test_stochastic_add_rejects_integer_parameters() -> None:
    with pytest.raises(TypeError, match="torch.bfloat16"):
        stochastic_add_(torch.ones(3, dtype=torch.int32), torch.ones(3))


# ---- the optimizer -----------------------------------------------------------------------------------


def _two_groups(dtype: torch.dtype, seed: int = 0) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [
        nn.Parameter(torch.randn(20, 30, generator=gen).to(dtype)),
        nn.Parameter(torch.randn(30, generator=gen).to(dtype)),
    ]


def _grads(step: int, shapes) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randn(s, generator=gen) * 1e-2 for s in shapes]


def test_with_fp32_parameters_it_is_torch_adamw() -> None:
    ours, theirs = _two_groups(torch.float32), _two_groups(torch.float32)
    opt = BF16AdamW([{"params": ours[:1]}, {"params": ours[1:], "lr": 3e-3, "weight_decay": 0.1}], lr=1e-3)
    ref = torch.optim.AdamW(
        [{"params": theirs[:1]}, {"params": theirs[1:], "lr": 3e-3, "weight_decay": 0.1}], lr=1e-3
    )
    for step in range(20):
        for params in (ours, theirs):
            for p, g in zip(params, _grads(step, [p.shape for p in params])):
                p.grad = g.clone()
        opt.step()
        ref.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # a few fp32 ulps of operation order


def test_nearest_write_back_is_the_fp32_step_rounded_once() -> None:
    params = _two_groups(torch.bfloat16)
    master = [nn.Parameter(p.detach().float()) for p in params]
    opt = BF16AdamW(params, lr=0.05, update="nearest")
    ref = torch.optim.AdamW(master, lr=0.05)
    for p, m, g in zip(params, master, _grads(0, [p.shape for p in params])):
        p.grad, m.grad = g.to(torch.bfloat16), g.to(torch.bfloat16).float()
    opt.step()
    ref.step()
    for p, m in zip(params, master):
        assert torch.equal(p, m.detach().to(torch.bfloat16))


def _trajectory(
    update: str, steps: int = 300, lr: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bf16 weights after `steps` AdamW steps with fixed gradients, and the fp32 trajectory."""
    w0 = torch.randn(4000, generator=torch.Generator().manual_seed(1))
    p = nn.Parameter(w0.to(torch.bfloat16))
    ref = nn.Parameter(p.detach().float())
    opt = BF16AdamW([p], lr=lr, weight_decay=0.0, update=update)
    ref_opt = torch.optim.AdamW([ref], lr=lr, weight_decay=0.0)
    g = torch.randn(4000, generator=torch.Generator().manual_seed(2))
    for _ in range(steps):
        p.grad, ref.grad = g.to(torch.bfloat16), g.to(torch.bfloat16).float()
        opt.step()
        ref_opt.step()
    return p.detach().double(), ref.detach().double(), w0.to(torch.bfloat16).double()


def test_small_steps_vanish_with_nearest_and_survive_with_stochastic_rounding_and_kahan() -> None:
    nearest, exact, start = _trajectory("nearest")
    moved = exact - start
    gap = torch.from_numpy(BF16.spacing(exact.numpy()))
    one_step_lost = torch.from_numpy(BF16.round((start + moved / 300).numpy()) == start.numpy())
    small = one_step_lost & (moved.abs() > 4 * gap)  # each step is lost, the total is several gaps
    assert small.sum() > 100
    assert (nearest[small] == start[small]).all()
    kahan, _, _ = _trajectory("kahan")
    assert ((kahan - exact).abs() <= gap).all()
    stochastic, _, _ = _trajectory("stochastic")
    relative = ((stochastic - exact) / moved)[small]
    assert abs(relative.mean().item()) < 0.02  # unbiased: errors average out
    assert relative.abs().median().item() < 0.3


def test_state_dtypes_and_the_kahan_buffer() -> None:
    p = nn.Parameter(torch.randn(8, 8).to(torch.bfloat16))
    q = nn.Parameter(torch.randn(8))
    opt = BF16AdamW([p, q], update="kahan", state_dtype=torch.bfloat16)
    p.grad, q.grad = torch.randn(8, 8).to(torch.bfloat16), torch.randn(8)
    opt.step()
    assert {k: v.dtype for k, v in opt.state[p].items() if isinstance(v, torch.Tensor)} == {
        "exp_avg": torch.bfloat16,
        "exp_avg_sq": torch.bfloat16,
        "compensation": torch.bfloat16,
    }
    assert "compensation" not in opt.state[q]  # fp32 parameters need no compensation


def test_bf16_second_moment_rounded_to_nearest_cannot_decay_but_stochastic_can() -> None:
    def final_v(state_rounding: str) -> float:
        p = nn.Parameter(torch.zeros(2000, dtype=torch.bfloat16))
        opt = BF16AdamW(
            [p], lr=0.0, state_dtype=torch.bfloat16, state_rounding=state_rounding, weight_decay=0
        )
        for step in range(3000):
            p.grad = torch.full_like(p, 1.0 if step < 100 else 0.01)
            opt.step()
        return opt.state[p]["exp_avg_sq"].double().mean().item()

    exact = 0.999**2900 * (1 - 0.999**100) + 1e-4 * (1 - 0.999**2900)
    assert final_v("nearest") > 10 * exact  # stuck near its value after the first 100 steps
    assert abs(final_v("stochastic") - exact) < 0.1 * exact


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(lr=-1.0), ValueError, "lr"),
        (dict(betas=(0.9, 1.0)), ValueError, "betas"),
        (dict(eps=-1e-8), ValueError, "eps"),
        (dict(weight_decay=-0.1), ValueError, "weight_decay"),
        (dict(update="round"), ValueError, "accepted: nearest, stochastic, kahan"),
        (dict(state_dtype=torch.float16), TypeError, "state_dtype"),
        (dict(state_rounding="up"), ValueError, "state_rounding"),
        (dict(state_rounding="stochastic"), ValueError, "needs state_dtype"),
    ],
)
def test_optimizer_rejects_bad_options(kwargs, error, message: str) -> None:
    with pytest.raises(error, match=message):
        BF16AdamW([nn.Parameter(torch.zeros(2))], **kwargs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.int64])
def test_optimizer_rejects_parameters_of_other_dtypes(dtype: torch.dtype) -> None:
    with pytest.raises(TypeError, match="accepted: torch.float32 and torch.bfloat16"):
        BF16AdamW([torch.zeros(3, dtype=dtype)])


# ---- measuring steps, and the recipes ----------------------------------------------------------------


def test_step_monitor_counts_unchanged_weights() -> None:
    w = torch.randn(1000)
    w = w + torch.sign(w)  # |w| >= 1: an update of 1e-5 is far below bf16's half gap, far above fp32's
    p32 = nn.Parameter(w.clone())
    p16 = nn.Parameter(w.to(torch.bfloat16))
    g = torch.randn(1000)  # a constant gradient: every Adam step is lr in size
    m32, m16 = StepMonitor(), StepMonitor()
    opt32 = m32.attach(torch.optim.AdamW([p32], lr=1e-5))
    opt16 = m16.attach(torch.optim.AdamW([p16], lr=1e-5))
    for _ in range(3):
        p32.grad = g.clone()
        p16.grad = g.to(torch.bfloat16)
        opt32.step()
        opt16.step()
    assert m32.unchanged == [0.0, 0.0, 0.0] and m16.unchanged == [1.0, 1.0, 1.0]
    assert 0 < m32.relative_update[0] < 1e-3 and m16.relative_update == [0.0, 0.0, 0.0]
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        StepMonitor().attach("adamw")
    with pytest.raises(ValueError, match="unknown optimizer"):
        StepMonitor().wrap("fp32", optimizer="lion")


def test_recipes_are_registered_and_build_the_right_optimizer() -> None:
    assert set(bf16.RECIPE_NAMES) <= set(train.RECIPES)
    expected = {
        "pure_bf16_sr": ("stochastic", torch.bfloat16, torch.bfloat16),
        "pure_bf16_kahan": ("kahan", torch.bfloat16, torch.bfloat16),
        "pure_bf16_fp32_math": ("nearest", torch.float32, torch.bfloat16),
        "pure_bf16_sr_fp32_moments": ("stochastic", torch.float32, torch.bfloat16),
        "bf16_bf16_moments": ("nearest", torch.bfloat16, torch.float32),
    }
    assert set(expected) == set(bf16.RECIPE_NAMES)
    for name, (update, state_dtype, param_dtype) in expected.items():
        recipe = train.get_recipe(name)
        assert recipe.param_dtype == param_dtype and recipe.precision == "bf16"
        opt = recipe.make_optimizer([nn.Parameter(torch.zeros(2, dtype=param_dtype))], 1e-3)
        assert isinstance(opt, BF16AdamW) and (opt.update, opt.state_dtype) == (update, state_dtype)


def test_importing_twice_does_not_fail() -> None:
    import importlib

    importlib.reload(bf16)


def test_pure_bf16_training_loses_most_updates_and_the_fixes_do_not() -> None:
    digits = data.load_images("digits", source="local", verbose=False)
    unchanged = {}
    for recipe in ("fp32", "pure_bf16", "pure_bf16_kahan"):
        monitor = StepMonitor()
        history = train.train(
            lambda: models.for_data(digits, width=32),
            digits,
            monitor.wrap(recipe),
            steps=12,
            batch_size=32,
            lr=1e-4,
            progress=False,
            verbose=False,
            label=recipe,
        )
        assert np.isfinite(history.frame["loss"]).all()
        unchanged[recipe] = float(np.mean(monitor.unchanged[2:]))
    assert unchanged["fp32"] < 0.01
    assert unchanged["pure_bf16"] > 0.5
    assert unchanged["pure_bf16_kahan"] > 0.3  # the weights still move in whole gaps, but nothing is lost


@CUDA
def test_on_cuda_stochastic_rounding_gives_neighbours_and_the_optimizer_runs() -> None:
    x = _values().cuda()
    got = stochastic_round_bf16(x, generator=torch.Generator(device="cuda").manual_seed(0)).float()
    down = formats.round_tensor(x, BF16, rounding="down")
    up = formats.round_tensor(x, BF16, rounding="up")
    finite = ~torch.isnan(x)
    assert (((got == down) | (got == up))[finite]).all()
    p = nn.Parameter(torch.randn(100, device="cuda").to(torch.bfloat16))
    opt = BF16AdamW([p], update="stochastic", state_dtype=torch.bfloat16, state_rounding="stochastic")
    p.grad = torch.randn_like(p)
    opt.step()
    assert torch.isfinite(p).all()


@pytest.mark.parametrize("state_dtype, update", [(torch.float32, "stochastic"), (torch.bfloat16, "kahan")])
def test_bf16_adamw_resumes_bit_for_bit_from_its_state_dict(state_dtype: torch.dtype, update: str) -> None:
    """fp32 moments stay fp32 through a checkpoint (torch's loader would cast them to the weights' bf16),
    and the stochastic-rounding generators are saved, so a resumed run continues exactly."""
    import io

    from mpcourse.bf16 import BF16AdamW

    def make() -> tuple[torch.nn.Linear, BF16AdamW]:
        torch.manual_seed(0)
        model = torch.nn.Linear(16, 4).to(torch.bfloat16)
        return model, BF16AdamW(model.parameters(), lr=1e-2, update=update, state_dtype=state_dtype, seed=3)

    def steps(model, opt, n: int, start: int) -> None:
        for i in range(start, start + n):
            g = torch.Generator().manual_seed(i)
            x = torch.randn(8, 16, generator=g).to(torch.bfloat16)
            model(x).float().square().mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    model, opt = make()
    steps(model, opt, 6, 0)
    straight = [p.detach().clone() for p in model.parameters()]

    model, opt = make()
    steps(model, opt, 3, 0)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model, opt = make()
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    moments = [opt.state[p]["exp_avg_sq"] for p in model.parameters()]
    assert all(m.dtype == state_dtype for m in moments)
    steps(model, opt, 3, 3)
    assert all(torch.equal(a, b) for a, b in zip(straight, model.parameters()))
