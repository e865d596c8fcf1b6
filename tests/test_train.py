"""mpcourse.train: recipes, the registry, the loop's dtypes, reproducibility, scalers, unsupported devices."""

from __future__ import annotations

import math
import sys
import types

import pandas as pd
import pytest
import torch
from torch import nn

from mpcourse import data, device, formats, memory, models, xray
from mpcourse.train import (
    COLUMNS,
    RECIPES,
    History,
    Recipe,
    UnsupportedRecipeError,
    alternative,
    compare,
    evaluate,
    get_recipe,
    matmul_precision,
    plot_histories,
    register_recipe,
    train,
)
from mpcourse.train.metering import MemoryMeter
from mpcourse.train.recipes import RecipeRegistry

QUIET = dict(progress=False, verbose=False, device="cpu")  # CPU runs: deterministic, on any machine


@pytest.fixture(autouse=True)
def ci_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPCOURSE_PROFILE", "ci")
    monkeypatch.delenv("MPCOURSE_DEVICE_PRESET", raising=False)


@pytest.fixture(scope="module")
def digits() -> data.ImageData:
    return data.load_images(source="local", verbose=False)


@pytest.fixture(scope="module")
def text() -> data.TextData:
    return data.load_text(source="local", block_size=16, max_chars=20_000, verbose=False)


def mlp(bundle: data.DataBundle):
    return lambda: models.for_data(bundle, width=32)


@pytest.fixture
def custom_recipes():
    """Register test recipes, and remove them afterwards."""
    before = dict(RECIPES)
    yield
    RECIPES.clear()
    RECIPES.update(before)


# --- the registry --------------------------------------------------------------------------------


def test_the_required_recipes_are_registered() -> None:
    assert {"fp32", "tf32", "fp16", "bf16", "pure_bf16"} <= set(RECIPES)
    assert get_recipe("fp16").loss_scaling and get_recipe("fp16").autocast_dtype == torch.float16
    assert get_recipe("bf16").autocast_dtype == torch.bfloat16 and not get_recipe("bf16").loss_scaling
    assert get_recipe("pure_bf16").param_dtype == torch.bfloat16 and get_recipe("pure_bf16").pure
    assert get_recipe("tf32").tf32 and get_recipe("tf32").autocast_dtype is None
    assert all(r.param_dtype == torch.float32 for n, r in RECIPES.items() if not n.startswith("pure"))


def test_unknown_recipe_lists_the_accepted_ones() -> None:
    with pytest.raises(
        ValueError, match="unknown recipe 'fp12'; accepted: fp32, tf32, fp16, bf16, pure_bf16"
    ):
        get_recipe("fp12")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(precision="fp12"), "precision 'fp12' is not one of fp32, tf32, fp16, bf16, fp8"),
        (dict(autocast_dtype=torch.float64), "autocast_dtype must be None"),
        (dict(param_dtype=torch.int8), "param_dtype must be"),
        (dict(name="has space"), "recipe name"),
    ],
)
def test_recipes_validate_their_fields(kwargs, message: str) -> None:
    fields = dict(name="x", description="test") | kwargs
    with pytest.raises(ValueError, match=message):
        Recipe(**fields)


def test_recipes_are_frozen() -> None:
    with pytest.raises(AttributeError):
        get_recipe("bf16").loss_scaling = True  # type: ignore[misc]


def test_register_refuses_duplicates_unless_asked(custom_recipes) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_recipe(Recipe("bf16", "again"))
    replacement = Recipe("bf16", "replaced", autocast_dtype=torch.bfloat16, precision="bf16")
    assert register_recipe(replacement, replace=True) is get_recipe("bf16")
    with pytest.raises(TypeError, match="expected a Recipe"):
        register_recipe("bf16")  # type: ignore[arg-type]


def test_the_registry_loads_its_providers_on_first_use_in_a_fixed_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    imported: list[str] = []

    def provider(name: str, *recipes: Recipe) -> types.ModuleType:
        module = types.ModuleType(name)

        def training_recipes() -> tuple[Recipe, ...]:
            imported.append(name)
            return recipes

        module.training_recipes = training_recipes  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, name, module)
        return module

    provider("fake_first", Recipe("a", "first"), Recipe("b", "first"))
    provider("fake_second", Recipe("c", "second"))
    registry = RecipeRegistry(("fake_first", "fake_second"))
    registry._add_builtin(Recipe("builtin", "defined with the registry"))
    assert imported == []  # nothing loaded yet
    assert list(registry) == ["builtin", "a", "b", "c"] and imported == ["fake_first", "fake_second"]
    assert "c" in registry and len(registry) == 4 and imported == ["fake_first", "fake_second"]  # loaded once
    with pytest.raises(ValueError, match="cannot be registered under another name"):
        registry["d"] = Recipe("e", "mismatch")
    with pytest.raises(TypeError, match="expected a Recipe"):
        registry["d"] = "d"  # type: ignore[assignment]


def test_a_provider_that_fails_to_load_is_named() -> None:
    registry = RecipeRegistry(("mpcourse.no_such_module",))
    with pytest.raises(ImportError, match="loading the training recipes of mpcourse.no_such_module failed"):
        list(registry)
    with pytest.raises(ImportError, match="no_such_module"):  # and again: the error is not swallowed
        "fp32" in registry  # noqa: B015


def test_every_module_that_defines_recipes_is_a_provider() -> None:
    from mpcourse import bf16, fp8

    assert {r.name for r in bf16.training_recipes()} | {
        r.name for r in fp8.training.training_recipes()
    } <= set(RECIPES)
    assert list(RECIPES)[: len(bf16.RECIPE_NAMES) + 6] == [
        "fp32",
        "tf32",
        "fp16",
        "bf16",
        "pure_bf16",
        "pure_fp16",
        *bf16.RECIPE_NAMES,
    ]


def test_hooks_of_a_registered_recipe_are_used(digits, custom_recipes) -> None:
    calls: list[str] = []

    class Marked(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    def prepare(model: nn.Module) -> nn.Module:
        calls.append("prepare")
        return Marked(model)

    def make_optimizer(params, lr):
        calls.append(f"optimizer lr={lr}")
        return torch.optim.SGD(params, lr=lr)

    register_recipe(
        Recipe("hooked", "test hooks", precision="fp32", prepare_model=prepare, make_optimizer=make_optimizer)
    )
    run = train(mlp(digits), digits, "hooked", steps=3, lr=0.05, **QUIET)
    assert calls == ["prepare", "optimizer lr=0.05"]
    assert isinstance(run.model, Marked) and run.config["optimizer"] == "SGD"
    with pytest.raises(ValueError, match="brings its own optimizer"):
        train(mlp(digits), digits, "hooked", steps=1, optimizer="adamw", **QUIET)


# --- the loop --------------------------------------------------------------------------------------


def test_history_has_the_documented_columns(digits) -> None:
    run = train(mlp(digits), digits, "fp32", steps=10, eval_every=5, **QUIET)
    assert isinstance(run, History)
    assert tuple(run.frame.columns) == COLUMNS
    f = run.frame
    assert f["step"].tolist() == list(range(1, 11))
    assert f["eval_accuracy"].notna().tolist() == [s % 5 == 0 for s in range(1, 11)]
    assert (f["samples_per_s"] > 0).all() and f["tokens_per_s"].isna().all()
    assert f["loss_scale"].isna().all() and (f["skipped_steps"] == 0).all()
    assert (f["peak_memory_bytes"] > 0).all()
    assert run.config["batch_size"] == 64 and run.status == "native"
    assert "digits" in run.notes[0]


def test_same_seed_same_history_on_cpu(digits) -> None:
    deterministic = [
        "loss",
        "accuracy",
        "loss_scale",
        "skipped_steps",
        "eval_loss",
        "eval_accuracy",
        "peak_memory_bytes",
    ]
    for recipe in ("fp32", "fp16", "bf16", "pure_bf16"):
        a = train(mlp(digits), digits, recipe, steps=20, seed=3, **QUIET).frame[deterministic]
        b = train(mlp(digits), digits, recipe, steps=20, seed=3, **QUIET).frame[deterministic]
        pd.testing.assert_frame_equal(a, b)
    c = train(mlp(digits), digits, "fp32", steps=20, seed=4, **QUIET).frame
    assert not a["loss"].equals(c["loss"])


def test_training_learns(digits) -> None:
    run = train(mlp(digits), digits, "bf16", steps=150, **QUIET)
    s = run.summary()
    assert s["final_loss"] < 0.5 * run.frame["loss"].iloc[0]
    assert s["eval_accuracy"] > 0.8  # ten classes: chance is 0.1


@pytest.mark.parametrize(
    "recipe, parameters, logits, optimizer_state",
    [
        ("fp32", "float32", "float32", "float32"),
        ("tf32", "float32", "float32", "float32"),
        ("fp16", "float32", "float16", "float32"),
        ("bf16", "float32", "bfloat16", "float32"),
        ("pure_bf16", "bfloat16", "bfloat16", "bfloat16"),
    ],
)
def test_each_recipe_keeps_what_it_says_in_which_dtype(
    digits, recipe, parameters, logits, optimizer_state
) -> None:
    run = train(mlp(digits), digits, recipe, steps=2, **QUIET)
    assert run.dtypes == {
        "parameters": parameters,
        "gradients": parameters,  # gradients always have their parameter's dtype
        "logits": logits,
        "loss": "float32",
        "optimizer state": optimizer_state,
    }
    assert {p.dtype for p in run.model.parameters()} == {getattr(torch, parameters)}


@pytest.mark.parametrize("recipe, dtype", [("bf16", "bfloat16"), ("fp16", "float16")])
def test_autocast_recipes_run_their_matmuls_in_low_precision(digits, recipe, dtype) -> None:
    """Independent of the engine's own bookkeeping: the x-ray sees every linear layer's output dtype."""
    with xray.recording() as rec:
        train(mlp(digits), digits, recipe, steps=2, **QUIET)
    ops = rec.frame()
    linear = ops[ops["op"] == "linear"]
    assert len(linear) and set(linear["output"]) == {dtype}
    assert set(linear["effect"]) == {"to low precision (autocast)"}
    # The optimizer's arithmetic ran on fp32 master weights.
    updates = ops[ops["op"].isin(["addcdiv_", "lerp_"])]
    assert len(updates) and set(updates["output"]) == {"float32"}


def test_fp32_recipe_runs_no_op_in_low_precision(digits) -> None:
    with xray.recording() as rec:
        train(mlp(digits), digits, "fp32", steps=2, **QUIET)
    assert set(rec.frame()["output"]) == {"float32"}


def test_fp16_recipe_uses_a_grad_scaler(digits) -> None:
    run = train(mlp(digits), digits, "fp16", steps=5, **QUIET)
    assert run.config["scaler"] == "GradScaler"
    assert run.frame["loss_scale"].iloc[0] == 2.0**16  # torch.amp.GradScaler's default init_scale


def test_pure_fp16_with_adam_diverges_and_stops(digits) -> None:
    """Adam's eps=1e-8 rounds to 0 in fp16, so a zero gradient gives 0/0 (the digits' corner pixels are always 0)."""
    run = train(mlp(digits), digits, "pure_fp16", steps=50, **QUIET)
    assert run.diverged and len(run.frame) < 50
    assert "diverged" in run.notes[-1]
    assert torch.tensor(1e-8, dtype=torch.float16).item() == 0.0


def test_text_bundle_reports_tokens_per_second(text) -> None:
    run = train(
        lambda: models.for_data(text, width=32, depth=1), text, "bf16", steps=3, batch_size=4, **QUIET
    )
    f = run.frame
    assert (f["tokens_per_s"] == f["samples_per_s"] * 16).all()
    assert f["eval_accuracy"].notna().iloc[-1]


def test_a_module_is_trained_in_place(digits) -> None:
    torch.manual_seed(0)
    net = models.for_data(digits, width=32)
    before = net.net[1].weight.detach().clone()
    run = train(net, digits, "fp32", steps=3, **QUIET)
    assert run.model is net and not torch.equal(before, net.net[1].weight)
    assert any("in place" in note for note in run.notes)


def test_evaluate_uses_no_grad_and_restores_the_mode(digits) -> None:
    net = models.for_data(digits, width=32)
    net.train()
    loss, acc = evaluate(net, digits, "bf16")
    assert net.training and 0 <= acc <= 1 and math.isfinite(loss)
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(on_unsupported="ignore"), ValueError, "accepted: emulate, error"),
        (dict(optimizer="lamb"), ValueError, "accepted: adamw, adam, sgd, sgd_momentum"),
        (dict(steps=0), ValueError, "positive"),
        (dict(device="tpu"), ValueError, "accepted: 'cpu', 'cuda', 'mps'"),
        (dict(scaler=object()), TypeError, "lacks scale, unscale_, step, update, get_scale"),
    ],
)
def test_bad_arguments_are_explained(digits, kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        train(mlp(digits), digits, "fp16", **(QUIET | dict(steps=2) | kwargs))


def test_bad_model_and_data_are_explained(digits) -> None:
    with pytest.raises(TypeError, match="bundle from mpcourse.data"):
        train(mlp(digits), (torch.zeros(1), torch.zeros(1)), "fp32", steps=1, **QUIET)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not an nn.Module"):
        train(lambda: 42, digits, "fp32", steps=1, **QUIET)  # type: ignore[arg-type, return-value]


def test_grad_scaler_refuses_pure_fp16_with_the_reason(digits) -> None:
    with pytest.raises(ValueError, match="needs fp32 master weights"):
        train(mlp(digits), digits, "pure_fp16", steps=1, scaler=torch.amp.GradScaler("cpu"), **QUIET)


def test_the_gpu_memory_meter_leaves_out_what_was_there_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA branch of the meter, on any machine: the allocator's counters are faked."""
    resets: list[object] = []
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1_000)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 5_000)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", resets.append)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    meter = MemoryMeter(
        nn.Linear(2, 2), torch.device("cuda")
    )  # its weights are not on the GPU: all 1000 are outside
    assert resets == [torch.device("cuda")] and meter.outside_bytes == 1_000
    assert not isinstance(meter.forward_context(1), memory.SavedTensorMeter)  # the allocator needs no hooks
    meter.after_step(torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))
    assert meter.read_peak() == 4_000 and "max_memory_allocated" in meter.note


def test_the_cpu_memory_meter_meters_the_first_two_steps_only() -> None:
    net = nn.Linear(4, 4)
    meter = MemoryMeter(net, torch.device("cpu"))
    opt = torch.optim.AdamW(net.parameters())
    for step in (1, 2, 3):
        context = meter.forward_context(step)
        assert isinstance(context, memory.SavedTensorMeter) == (step <= 2)
        with context:
            loss = net(torch.randn(8, 4)).square().mean()
        loss.backward()
        opt.step()
        meter.after_step(opt)
        if step == 2:
            metered = meter.read_peak()
    state = memory.state_bytes(net, opt)
    assert metered > sum(state.values()) and meter.read_peak() == metered  # step 3 changed nothing
    assert "no peak statistics for cpu" in meter.note


def test_dtype_names_are_spelled_once_for_every_table() -> None:
    import ml_dtypes
    import numpy as np

    assert formats.dtype_name(torch.bfloat16) == "bfloat16" == formats.dtype_name(ml_dtypes.bfloat16)
    assert (
        formats.dtype_name(torch.float8_e4m3fn)
        == "float8_e4m3fn"
        == formats.dtype_name(np.dtype(ml_dtypes.float8_e4m3fn))
    )
    assert formats.dtype_name(np.float32) == "float32" and formats.dtype_name(torch.int64) == "int64"
    assert (
        formats.dtype_name(torch.bfloat16, short=True) == "bf16"
        and formats.dtype_name(torch.int64, short=True) == "int64"
    )
    for bad in (None, "bfloat16", 3.5):
        with pytest.raises(TypeError, match="dtype_name takes a torch or numpy dtype"):
            formats.dtype_name(bad)


# --- scalers ----------------------------------------------------------------------------------------


class SpyScaler:
    """A GradScaler-like object that records the calls the engine makes (wrapping a real one)."""

    def __init__(self, **kwargs) -> None:
        self.inner = torch.amp.GradScaler("cpu", **kwargs)
        self.calls: list[str] = []

    def __getattr__(self, name):
        method = getattr(self.inner, name)

        def spy(*args, **kwargs):
            self.calls.append(name)
            return method(*args, **kwargs)

        return spy


def test_a_custom_scaler_replaces_the_default(digits) -> None:
    spy = SpyScaler(init_scale=256.0)
    run = train(mlp(digits), digits, "fp16", steps=3, scaler=spy, grad_clip=1.0, **QUIET)
    per_step = ["scale", "unscale_", "get_scale", "step", "update", "get_scale"]
    assert spy.calls == per_step * 3
    assert run.frame["loss_scale"].tolist() == [256.0] * 3
    assert run.config["scaler"] == "SpyScaler"


def test_overflowing_steps_are_skipped_and_counted(digits) -> None:
    """A scale of 2**40 makes the fp16 gradients of the logits overflow: GradScaler skips and halves."""
    run = train(
        mlp(digits), digits, "fp16", steps=40, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**40), **QUIET
    )
    f = run.frame
    assert f["skipped_steps"].iloc[-1] >= 10
    skipped_now = f["skipped_steps"].diff().fillna(f["skipped_steps"].iloc[0]) > 0
    halved = f["loss_scale"] == f["loss_scale"].shift(1, fill_value=2.0**40) / 2
    assert (skipped_now == halved).all()
    assert f["loss"].iloc[-5:].mean() < f["loss"].iloc[0]  # training went on once the scale fitted


def test_a_scaler_may_report_skips_itself(digits) -> None:
    class AlwaysSkips(SpyScaler):
        last_step_skipped = True

    run = train(mlp(digits), digits, "fp16", steps=4, scaler=AlwaysSkips(), **QUIET)
    assert run.frame["skipped_steps"].tolist() == [1, 2, 3, 4]


def test_scaler_false_turns_scaling_off_with_a_note(digits) -> None:
    run = train(mlp(digits), digits, "fp16", steps=2, scaler=False, **QUIET)
    assert run.frame["loss_scale"].isna().all() and run.config["scaler"] is None
    assert any("Loss scaling is off" in n for n in run.notes)


def test_a_scaler_with_bf16_is_allowed_but_noted(digits) -> None:
    run = train(mlp(digits), digits, "bf16", steps=2, scaler=torch.amp.GradScaler("cpu"), **QUIET)
    assert any("unnecessary" in n for n in run.notes)


# --- devices that cannot run a recipe natively --------------------------------------------------------


def test_emulated_recipe_runs_with_a_visible_note(digits, capsys) -> None:
    t4 = device.capabilities(preset="t4")
    run = train(mlp(digits), digits, "bf16", steps=2, caps=t4, progress=False, device="cpu")
    out = capsys.readouterr().out
    assert run.status == "emulated" and run.device == "cpu"
    assert "bf16 is emulated on cuda: Tesla T4" in out and "Recipe 'fp16' runs natively here" in out
    assert "preset device" in out


@pytest.mark.parametrize(
    "preset, recipe, alternative_name",
    [
        ("t4", "bf16", "fp16"),
        ("t4", "pure_bf16", "fp16"),
        ("t4", "tf32", "fp32"),
        ("cpu", "tf32", "fp32"),
        ("cpu", "fp16", "fp32"),
        ("cpu", "bf16", "fp32"),
    ],
)
def test_unsupported_recipe_with_error_names_the_alternative(
    digits, preset, recipe, alternative_name
) -> None:
    caps = device.capabilities(preset=preset)
    with pytest.raises(UnsupportedRecipeError, match=f"Use recipe '{alternative_name}' instead"):
        train(mlp(digits), digits, recipe, steps=1, caps=caps, on_unsupported="error", **QUIET)


@pytest.mark.parametrize(
    "preset, recipe",
    [("a100", "bf16"), ("a100", "tf32"), ("t4", "fp16"), ("h100", "pure_bf16"), ("cpu_amx", "bf16")],
)
def test_native_recipes_run_without_a_support_note(digits, preset, recipe) -> None:
    run = train(
        mlp(digits),
        digits,
        recipe,
        steps=1,
        caps=device.capabilities(preset=preset),
        on_unsupported="error",
        **QUIET,
    )
    assert run.status == "native"
    assert not any("emulated" in n or "unavailable" in n for n in run.notes)


def test_unavailable_tf32_runs_as_fp32(digits) -> None:
    a = train(mlp(digits), digits, "tf32", steps=5, **QUIET)
    b = train(mlp(digits), digits, "fp32", steps=5, **QUIET)
    assert a.status == "unavailable" and any("plain fp32" in n for n in a.notes)
    assert a.frame["loss"].equals(b.frame["loss"])


def test_alternative_prefers_a_native_precision() -> None:
    assert alternative(get_recipe("bf16"), device.capabilities(preset="t4")).name == "fp16"
    assert alternative(get_recipe("pure_bf16"), device.capabilities(preset="t4")).name == "fp16"
    assert alternative(get_recipe("fp16"), device.capabilities(preset="cpu")).name == "fp32"
    assert alternative(get_recipe("bf16"), device.capabilities(preset="cpu")).name == "fp32"


def test_matmul_precision_leaves_cpu_settings_alone() -> None:
    before = (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.fp32_precision)
    with matmul_precision(True, "cpu"):
        assert (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.fp32_precision) == before
    assert (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.fp32_precision) == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("recipe", ["fp32", "tf32", "fp16", "bf16", "pure_bf16"])
def test_recipes_run_on_cuda(digits, recipe) -> None:  # pragma: no cover - GPU only
    run = train(mlp(digits), digits, recipe, steps=5, device="cuda", progress=False, verbose=False)
    assert run.device.startswith("cuda") and (run.frame["peak_memory_bytes"] > 0).all()
    assert run.dtypes["parameters"] == ("bfloat16" if recipe == "pure_bf16" else "float32")
    assert run.config["threads"] is None and (run.config["scaler"] == "GradScaler") == (recipe == "fp16")
    assert "max_memory_allocated" in run.memory_note


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_peak_leaves_out_what_other_code_holds(digits) -> None:  # pragma: no cover - GPU only
    """An earlier cell's 256 MB on the GPU must not show up in this run's peak."""

    def peak() -> int:
        run = train(mlp(digits), digits, "fp32", steps=3, device="cuda", progress=False, verbose=False)
        return int(run.frame["peak_memory_bytes"].max())

    alone = peak()
    ballast = torch.empty(2**28, dtype=torch.uint8, device="cuda")
    crowded = peak()
    del ballast
    assert 0 < alone < 2**28 and abs(crowded - alone) < 2**20


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_matmul_precision_sets_and_restores_tf32_on_cuda() -> None:  # pragma: no cover - GPU only
    before = torch.backends.cuda.matmul.fp32_precision
    with matmul_precision(True, "cuda"):
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    with matmul_precision(False, "cuda"):
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    assert torch.backends.cuda.matmul.fp32_precision == before


# --- comparing runs ------------------------------------------------------------------------------------


def test_compare_and_plot(digits) -> None:
    runs = [train(mlp(digits), digits, r, steps=10, eval_every=5, **QUIET) for r in ("fp32", "fp16")]
    table = compare(runs)
    assert list(table.index) == ["fp32", "fp16"]
    assert {"final_loss", "eval_accuracy", "samples_per_s", "peak_memory_bytes", "skipped_steps"} <= set(
        table.columns
    )
    fig = plot_histories(runs)
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["training loss (smoothed)", "held-out accuracy", "samples per second", "loss scale"]
    assert {t.name for t in fig.data} == {"fp32", "fp16"}
    no_scaler = plot_histories(runs[:1])
    assert "loss scale" not in [a.text for a in no_scaler.layout.annotations]


def test_compare_needs_distinct_labels(digits) -> None:
    run = train(mlp(digits), digits, "fp32", steps=2, **QUIET)
    with pytest.raises(ValueError, match="distinct labels"):
        compare([run, run])
    with pytest.raises(ValueError, match="unknown metrics"):
        plot_histories([run], metrics=["speed"])
    with pytest.raises(TypeError, match="non-empty list of History"):
        compare([])


def test_small_cpu_runs_use_one_thread_and_restore_the_setting(digits) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        auto = train(mlp(digits), digits, "fp32", steps=2, **QUIET)
        assert auto.config["threads"] == 1 and any("one thread" in n for n in auto.notes)
        assert torch.get_num_threads() == 2
        chosen = train(mlp(digits), digits, "fp32", steps=2, threads=2, **QUIET)
        assert chosen.config["threads"] == 2 and not any("one thread" in n for n in chosen.notes)
        with pytest.raises(ValueError, match="positive number of CPU threads"):
            train(mlp(digits), digits, "fp32", steps=1, threads=0, **QUIET)
    finally:
        torch.set_num_threads(before)
