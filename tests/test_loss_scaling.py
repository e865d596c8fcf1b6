"""mpcourse.loss_scaling: the scalers against torch.amp.GradScaler, bit for bit, and their error handling."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from mpcourse import data, models, train
from mpcourse.exercises.conformance import compare_with_gradscaler, event_schedule, first_divergence
from mpcourse.loss_scaling import DynamicLossScaler, StaticLossScaler

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
]


def assert_conforms(trace) -> None:
    assert first_divergence(trace) is None, first_divergence(trace)
    assert (trace["scale"] == trace["scale_ref"]).all()
    assert (trace["skipped"] == trace["skipped_ref"]).all()
    assert (trace["tracker"] == trace["tracker_ref"]).all()
    assert trace["params_equal"].all()


# ---- conformance with GradScaler ----------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1])
def test_random_events_match_gradscaler(device: str, seed: int) -> None:
    trace = compare_with_gradscaler(DynamicLossScaler, steps=120, seed=seed, device=device, growth_interval=6)
    assert_conforms(trace)
    # The sequence exercised what it should: skips, back-offs and growth.
    assert trace["skipped"].sum() >= 5 and (trace["event"] != "clean").sum() >= 5
    scale = trace["scale"]
    assert (scale.diff() > 0).any() and (scale.diff() < 0).any()
    assert set(trace["event"]) == {"clean", "inf", "-inf", "nan"}


@pytest.mark.parametrize("device", DEVICES)
def test_long_clean_runs_across_growth_boundaries(device: str) -> None:
    events = ["clean"] * 45 + ["nan"] + ["clean"] * 30
    trace = compare_with_gradscaler(
        DynamicLossScaler, steps=len(events), events=events, device=device, init_scale=4.0, growth_interval=10
    )
    assert_conforms(trace)
    assert trace["scale"].iloc[44] == 4.0 * 2**4 and trace["tracker"].iloc[44] == 5
    assert trace["scale"].iloc[45] == 32.0 and trace["tracker"].iloc[45] == 0 and trace["skipped"].iloc[45]


@pytest.mark.parametrize("device", DEVICES)
def test_growth_stops_at_float32_max(device: str) -> None:
    events = ["clean"] * 12
    trace = compare_with_gradscaler(
        DynamicLossScaler,
        steps=12,
        events=events,
        device=device,
        optimizer="sgd",
        init_scale=2.0**125,
        growth_factor=3.0,
        growth_interval=2,
    )
    assert_conforms(trace)
    assert trace["scale"].max() < math.inf and trace["scale"].iloc[-1] == trace["scale"].iloc[3]


@pytest.mark.parametrize("device", DEVICES)
def test_non_power_of_two_factors_round_like_the_kernel(device: str) -> None:
    # float32 scale times a float64 factor, rounded once: a float32 product would differ here.
    trace = compare_with_gradscaler(
        DynamicLossScaler,
        steps=120,
        seed=5,
        device=device,
        init_scale=196608.0,
        growth_factor=1.7,
        backoff_factor=0.3,
        growth_interval=4,
    )
    assert_conforms(trace)
    assert (trace["scale"] % 1 != 0).any()  # the scale left the powers of two


@pytest.mark.parametrize("device", DEVICES)
def test_unscale_then_clip(device: str) -> None:
    trace = compare_with_gradscaler(
        DynamicLossScaler, steps=120, seed=7, device=device, clip=0.5, growth_interval=5
    )
    assert_conforms(trace)


@pytest.mark.parametrize("device", DEVICES)
def test_state_dict_round_trip_mid_run(device: str) -> None:
    trace = compare_with_gradscaler(
        DynamicLossScaler,
        steps=120,
        seed=11,
        device=device,
        growth_interval=5,
        checkpoint_at=[17, 18, 63, 100],
    )
    assert_conforms(trace)


@pytest.mark.parametrize("device", DEVICES)
def test_real_fp16_overflow_under_autocast(device: str) -> None:
    events = ["clean"] * 80  # no injection: the overflows come from fp16 backward at a huge scale
    trace = compare_with_gradscaler(
        DynamicLossScaler,
        steps=80,
        events=events,
        device=device,
        autocast=True,
        init_scale=2.0**40,
        growth_interval=10,
        optimizer="sgd",
    )
    assert_conforms(trace)
    assert trace["skipped"].iloc[0] and trace["scale"].iloc[-1] < 2.0**30


def test_a_wrong_scaler_is_caught_at_the_right_step() -> None:
    class GrowsEarly(DynamicLossScaler):
        def _update_scale(self, found_inf: bool) -> None:  # off by one: grows after interval - 1 steps
            self._growth_tracker += 1
            super()._update_scale(found_inf)

    events = ["clean"] * 20
    trace = compare_with_gradscaler(GrowsEarly, steps=20, events=events, growth_interval=4)
    message = first_divergence(trace)
    assert message is not None and message.startswith("step 1 ") and "growth tracker" in message


def test_float32_product_of_the_factor_would_differ() -> None:
    """Why the scaler multiplies in float64: for this scale and factor, float32 arithmetic rounds differently."""
    f32 = (torch.tensor(3000.0) * torch.tensor(0.3)).item()  # 900.0000610...: 0.3 rounded to float32 first
    f64 = torch.tensor(3000.0 * 0.3, dtype=torch.float32).item()  # 900.0: one rounding, as in the C++ kernel
    assert f32 != f64
    s = DynamicLossScaler(init_scale=3000.0, backoff_factor=0.3)
    s.scale(torch.tensor(1.0))
    s._update_scale(found_inf=True)
    ref = torch.amp.GradScaler("cpu", init_scale=3000.0, backoff_factor=0.3)
    ref.scale(torch.tensor(1.0))
    torch._amp_update_scale_(ref._scale, ref._growth_tracker, torch.ones(()), 2.0, 0.3, 2000)
    assert s.get_scale() == ref.get_scale() == f64


def test_multiple_optimizers_skip_independently_and_back_off_together() -> None:
    def run(scaler):
        torch.manual_seed(0)
        a, b = nn.Linear(4, 4), nn.Linear(4, 2)
        opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
        before_a, before_b = a.weight.detach().clone(), b.weight.detach().clone()
        loss = b(a(torch.randn(3, 4))).sum()
        scaler.scale(loss).backward()
        a.weight.grad[0, 0] = math.inf
        scaler.step(opt_a)
        scaler.step(opt_b)
        scaler.update()
        return torch.equal(a.weight, before_a), torch.equal(b.weight, before_b), scaler.get_scale()

    assert (
        run(DynamicLossScaler(init_scale=8.0))
        == run(torch.amp.GradScaler("cpu", init_scale=8.0))
        == (True, False, 4.0)
    )


def test_bf16_gradients_are_unscaled_like_gradscaler() -> None:
    trace_models = []
    for make in (DynamicLossScaler, lambda **kw: torch.amp.GradScaler("cpu", **kw)):
        torch.manual_seed(0)
        model = nn.Linear(8, 3).to(torch.bfloat16)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = make(init_scale=3.0 * 2**10)
        for _ in range(3):
            opt.zero_grad()
            scaler.scale(model(torch.ones(2, 8, dtype=torch.bfloat16)).float().sum()).backward()
            scaler.step(opt)
            scaler.update(scaler.get_scale() * 0.7)
        trace_models.append(model.weight.detach().clone())
    assert torch.equal(*trace_models)


def test_state_dicts_are_interchangeable_with_gradscaler() -> None:
    ours = DynamicLossScaler(init_scale=512.0, growth_interval=7)
    ref = torch.amp.GradScaler("cpu")
    ref.load_state_dict(ours.state_dict())
    assert ref.state_dict() == ours.state_dict()
    assert set(ours.state_dict()) == {
        "scale",
        "growth_factor",
        "backoff_factor",
        "growth_interval",
        "_growth_tracker",
    }
    fresh = DynamicLossScaler()
    fresh.load_state_dict(ref.state_dict())
    assert fresh.get_scale() == 512.0 and fresh.get_growth_interval() == 7
    assert isinstance(fresh.get_scale(), float)


# ---- the rest of GradScaler's contract ----------------------------------------------------------


def _model_and_opt():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


@pytest.mark.parametrize(
    "make", [DynamicLossScaler, lambda: torch.amp.GradScaler("cpu")], ids=["ours", "torch"]
)
def test_misuse_raises_the_same_errors(make) -> None:
    model, opt = _model_and_opt()
    scaler = make()
    with pytest.raises(AssertionError, match="did not use scaler.scale"):
        scaler.step(opt)
    scaler.scale(model(torch.ones(1, 3)).sum()).backward()
    scaler.unscale_(opt)
    with pytest.raises(
        RuntimeError, match="unscale_\\(\\) has already been called on this optimizer since the last update"
    ):
        scaler.unscale_(opt)
    scaler.step(opt)
    with pytest.raises(RuntimeError, match="unscale_\\(\\) is being called after step"):
        scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="step\\(\\) has already been called since the last update"):
        scaler.step(opt)
    with pytest.raises(RuntimeError, match="Closure use is not currently supported"):
        scaler.step(opt, closure=lambda: 0.0)
    scaler.update()
    with pytest.raises(ValueError, match="outputs must be a Tensor"):
        scaler.scale(3.0)


@pytest.mark.parametrize(
    "make", [DynamicLossScaler, lambda: torch.amp.GradScaler("cpu")], ids=["ours", "torch"]
)
def test_fp16_gradients_are_refused(make) -> None:
    model = nn.Linear(3, 1).half()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = make()
    scaler.scale(model(torch.ones(1, 3, dtype=torch.float16)).float().sum()).backward()
    with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
        scaler.step(opt)


def test_scale_keeps_dtype_and_structure_like_gradscaler() -> None:
    ours, ref = DynamicLossScaler(init_scale=3.0), torch.amp.GradScaler("cpu", init_scale=3.0)
    for value in [
        torch.tensor(0.1),
        torch.tensor(0.1, dtype=torch.float16),
        torch.tensor([0.1, 2.0], dtype=torch.bfloat16),
    ]:
        a, b = ours.scale(value), ref.scale(value)
        assert a.dtype == b.dtype and torch.equal(a, b)
    pair = ours.scale((torch.tensor(1.0), [torch.tensor(2.0)]))
    assert isinstance(pair, tuple) and isinstance(pair[1], list) and pair[1][0].item() == 6.0
    assert isinstance(ours.get_scale(), float) and ours._scale.dtype == torch.float32


def test_update_with_a_new_scale() -> None:
    model, opt = _model_and_opt()
    s = DynamicLossScaler()
    s.scale(model(torch.ones(1, 3)).sum()).backward()
    s.step(opt)
    s.update(128.0)
    assert s.get_scale() == 128.0
    s.scale(model(torch.ones(1, 3)).sum()).backward()
    s.step(opt)
    s.update(torch.tensor(64.0))
    assert s.get_scale() == 64.0
    for value in (np.float32(32.0), np.int64(16), 8):
        s.scale(model(torch.ones(1, 3)).sum()).backward()
        s.step(opt)
        s.update(value)
        assert s.get_scale() == float(value)
    with pytest.raises(ValueError, match="new_scale"):
        s.update(torch.ones(2))
    with pytest.raises(ValueError, match="new_scale should be a real number"):
        s.update(True)


def test_disabled_scaler_is_a_pass_through() -> None:
    model, opt = _model_and_opt()
    s = DynamicLossScaler(enabled=False)
    loss = model(torch.ones(1, 3)).sum()
    assert s.scale(loss) is loss
    loss.backward()
    before = model.weight.detach().clone()
    s.unscale_(opt)
    s.step(opt)
    s.update()
    assert not torch.equal(before, model.weight)
    assert s.get_scale() == 1.0 and s.state_dict() == {} and not s.is_enabled()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(growth_factor=1.0), "growth_factor must be a finite number > 1"),
        (dict(growth_factor=0.5), "growth_factor must be a finite number > 1"),
        (dict(growth_factor=math.inf), "growth_factor must be a finite number > 1"),
        (dict(backoff_factor=1.0), "backoff_factor must be in \\(0, 1\\)"),
        (dict(backoff_factor=0.0), "backoff_factor must be in \\(0, 1\\)"),
        (dict(backoff_factor=-0.5), "backoff_factor must be in \\(0, 1\\)"),
        (dict(growth_interval=0), "growth_interval must be a whole number >= 1"),
        (dict(growth_interval=2.5), "growth_interval must be a whole number >= 1"),
        (dict(init_scale=0.0), "init_scale must be a finite number > 0"),
        (dict(init_scale=math.nan), "init_scale must be a finite number > 0"),
        (dict(init_scale=True), "init_scale must be a finite number > 0"),
        (dict(init_scale="65536"), "init_scale must be a finite number > 0"),
        (dict(growth_factor=True), "growth_factor must be a finite number > 1"),
        (dict(growth_factor="2"), "growth_factor must be a finite number > 1"),
        (dict(backoff_factor=np.bool_(True)), "backoff_factor must be in \\(0, 1\\)"),
        (dict(backoff_factor=None), "backoff_factor must be in \\(0, 1\\)"),
        (dict(growth_interval=True), "growth_interval must be a whole number >= 1"),
        (dict(growth_interval=np.float64(3.0)), "growth_interval must be a whole number >= 1"),
        (dict(growth_interval="10"), "growth_interval must be a whole number >= 1"),
        (dict(growth_interval=np.int64(0)), "growth_interval must be a whole number >= 1"),
    ],
)
def test_nonsense_settings_raise_clear_errors(kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DynamicLossScaler(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(
            init_scale=np.float32(2.0**10),
            growth_factor=np.float64(2.0),
            backoff_factor=np.float32(0.5),
            growth_interval=np.int64(3),
        ),
        dict(
            init_scale=np.int64(1024),
            growth_factor=np.int32(2),
            backoff_factor=Fraction(1, 2),
            growth_interval=np.uint8(3),
        ),
        dict(init_scale=1024, growth_factor=2, backoff_factor=0.5, growth_interval=3),
    ],
    ids=["numpy floats", "numpy ints and a fraction", "python"],
)
def test_any_real_number_type_is_accepted_and_behaves_the_same(kwargs) -> None:
    ours = DynamicLossScaler(**kwargs)
    assert ours.get_scale() == 1024.0 and ours.get_growth_factor() == 2.0 and ours.get_backoff_factor() == 0.5
    assert ours.get_growth_interval() == 3 and type(ours.get_growth_interval()) is int
    static = StaticLossScaler(kwargs["init_scale"])
    assert static.get_scale() == 1024.0
    # Ours is built from these types; GradScaler (whose kernel takes Python floats only) from the same values.
    as_python = dict(init_scale=1024.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=3)
    trace = compare_with_gradscaler(
        lambda **_: DynamicLossScaler(**kwargs),
        steps=12,
        seed=1,
        events=["clean"] * 5 + ["inf"] + ["clean"] * 6,
        **as_python,
    )
    assert first_divergence(trace) is None and trace["scale"].nunique() > 1


def test_every_problem_is_named_at_once_and_setters_validate() -> None:
    with pytest.raises(ValueError, match="growth_factor.*backoff_factor.*growth_interval"):
        DynamicLossScaler(growth_factor=1, backoff_factor=2, growth_interval=0)
    s = DynamicLossScaler()
    with pytest.raises(ValueError, match="growth_factor"):
        s.set_growth_factor(1.0)
    with pytest.raises(ValueError, match="growth_interval"):
        s.load_state_dict(
            dict(scale=1.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=0, _growth_tracker=0)
        )
    with pytest.raises(RuntimeError, match="empty"):
        s.load_state_dict({})


# ---- the static scaler -------------------------------------------------------------------------


def test_static_scaler_matches_a_dynamic_one_until_the_first_overflow() -> None:
    events = ["clean"] * 30 + ["inf"]
    trace = compare_with_gradscaler(
        lambda **kw: StaticLossScaler(kw["init_scale"]),
        steps=31,
        events=events,
        init_scale=1024.0,
        growth_interval=10**6,
    )
    assert trace["params_equal"].iloc[:30].all() and (trace["scale"] == 1024.0).all()
    assert trace["skipped"].iloc[30] and trace["scale_ref"].iloc[30] == 512.0


def test_static_scaler_without_skipping_poisons_the_weights() -> None:
    model, opt = _model_and_opt()
    s = StaticLossScaler(2.0**10, skip_non_finite=False)
    s.scale(model(torch.ones(1, 3)).sum()).backward()
    model.weight.grad[0, 0] = math.inf
    s.step(opt)
    s.update()
    assert not torch.isfinite(model.weight).all() and s.last_step_skipped is False
    with pytest.raises(ValueError, match="init_scale must be"):
        StaticLossScaler(-1.0)
    assert StaticLossScaler(8.0).state_dict() == {"scale": 8.0, "skip_non_finite": True}
    assert StaticLossScaler(8.0, enabled=False).state_dict() == {}


def test_engine_counts_skipped_steps_of_both_scalers() -> None:
    digits = data.load_images(source="local", verbose=False)
    for scaler in (StaticLossScaler(2.0**40), DynamicLossScaler(init_scale=2.0**40)):
        run = train.train(
            lambda: models.for_data(digits, width=32),
            digits,
            "fp16",
            steps=6,
            batch_size=32,
            scaler=scaler,
            device="cpu",
            progress=False,
            verbose=False,
        )
        assert run.frame["skipped_steps"].iloc[-1] >= 1


def test_event_schedule_is_reproducible_and_validated() -> None:
    a = event_schedule(200, seed=4, growth_interval=5)
    assert a == event_schedule(200, seed=4, growth_interval=5) and len(a) == 200
    assert a != event_schedule(200, seed=5, growth_interval=5)
    with pytest.raises(ValueError, match="p_bad"):
        event_schedule(10, p_bad=2.0)
    with pytest.raises(ValueError, match="events must"):
        compare_with_gradscaler(DynamicLossScaler, steps=3, events=["clean", "boom", "clean"])


def test_sparse_gradients_are_unscaled_like_gradscaler() -> None:
    results = []
    for make in (DynamicLossScaler, lambda **kw: torch.amp.GradScaler("cpu", **kw)):
        torch.manual_seed(0)
        emb = nn.Embedding(10, 4, sparse=True)
        opt = torch.optim.SGD(emb.parameters(), lr=0.1)
        scaler = make(init_scale=2.0**8)
        for step in range(3):
            opt.zero_grad()
            scaler.scale(emb(torch.tensor([1, 3, 3, 7])).square().sum()).backward()
            if step == 1:
                emb.weight.grad._values()[0, 0] = math.nan
            scaler.step(opt)
            scaler.update()
        results.append((emb.weight.detach().clone(), scaler.get_scale()))
    assert torch.equal(results[0][0], results[1][0]) and results[0][1] == results[1][1] == 2.0**7


# ---- ScaleWatch: a collapsing scale ---------------------------------------------------------------


def test_scale_watch_ignores_a_healthy_saw_tooth() -> None:
    from mpcourse.loss_scaling import ScaleWatch

    watch = ScaleWatch(max_drops_in_row=2, warn=False)
    for scale in [2.0**16, 2.0**15, 2.0**15, 2.0**16, 2.0**15, 2.0**16, 2.0**15]:
        assert watch.observe(scale) is None
    assert not watch.collapsed and watch.history[-1] == 2.0**15


def test_scale_watch_fires_once_on_drops_in_row_and_warns() -> None:
    from mpcourse.loss_scaling import ScaleWatch

    watch = ScaleWatch(max_drops_in_row=3)
    messages = []
    with pytest.warns(RuntimeWarning, match="dropped 3 times in a row"):
        for k in range(8):
            messages.append(watch.observe(2.0 ** (16 - k)))
    assert watch.collapsed_at == 4
    assert [m is not None for m in messages] == [False, False, False, True, False, False, False, False]


def test_scale_watch_floor_and_scalers() -> None:
    from mpcourse.loss_scaling import ScaleWatch

    watch = ScaleWatch(floor=2.0**10, warn=False)
    assert watch.observe(DynamicLossScaler(init_scale=2.0**12)) is None
    assert "below the floor" in watch.observe(torch.amp.GradScaler("cpu", init_scale=2.0**9))
    assert watch.collapsed_at == 2 and "collapsed_at=2" in repr(watch)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"floor": 0}, "floor must be a finite number > 0"), ({"max_drops_in_row": 0}, "max_drops_in_row")],
)
def test_scale_watch_refuses_bad_settings(kwargs: dict, match: str) -> None:
    from mpcourse.loss_scaling import ScaleWatch

    with pytest.raises(ValueError, match=match):
        ScaleWatch(**kwargs)
    with pytest.raises(ValueError, match="finite number >= 0"):
        ScaleWatch().observe(math.nan)
