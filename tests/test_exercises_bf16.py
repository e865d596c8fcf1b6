"""The checks of chapter bf16: reference solutions pass, realistic mistakes fail."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from mpcourse import formats
from mpcourse.exercises import ExerciseFailed, check

BF16 = formats.BF16


# ---- stochastic rounding ---------------------------------------------------------------------------


def sr_reference(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    bits = x.view(torch.int32)
    noise = torch.randint(0, 1 << 16, x.shape, generator=generator, dtype=torch.int32)
    return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)


def sr_wrong(variant: str):
    def fn(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        bits = x.view(torch.int32)
        if variant == "truncate":
            return (bits & -65536).view(torch.float32).to(torch.bfloat16)
        if variant == "nearest":
            return x.to(torch.bfloat16)
        if variant == "float32-result":
            noise = torch.randint(0, 1 << 16, x.shape, generator=generator, dtype=torch.int32)
            return ((bits + noise) & -65536).view(torch.float32)
        if variant == "15-bit-noise":
            noise = torch.randint(0, 1 << 15, x.shape, generator=generator, dtype=torch.int32)
            return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)
        if variant == "toward-plus-infinity":  # value-based: floor + Bernoulli(frac), wrong for negatives
            low = (bits & -65536).view(torch.float32)
            gap = torch.from_numpy(BF16.spacing(x.double().numpy())).float()
            frac = (x - low).abs() / gap
            up = torch.rand(x.shape, generator=generator) < frac
            away = torch.where(x < 0, ~up, up)  # the bug: "up" taken as toward +inf for negatives too
            out = torch.where(away, low + torch.sign(x) * gap, low)
            return torch.where((x == low) | torch.isinf(x), x, out).to(torch.bfloat16)
        if variant in ("global-generator", "seeded-inside"):  # right bit trick, wrong source of randomness
            if variant == "seeded-inside":
                generator = torch.Generator().manual_seed(0)
            noise = torch.randint(
                0,
                1 << 16,
                x.shape,
                dtype=torch.int32,
                generator=None if variant == "global-generator" else generator,
            )
            return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)
        if variant == "noise-on-value":  # adds up to a whole gap and then rounds to nearest: biased upward
            gap = torch.from_numpy(BF16.spacing(x.double().numpy())).float()
            return (x + torch.rand(x.shape, generator=generator) * gap * torch.sign(x)).to(torch.bfloat16)
        raise AssertionError(variant)

    return fn


def test_stochastic_round_accepts_the_reference() -> None:
    check("bf16-stochastic-round", sr_reference)


def test_stochastic_round_accepts_the_package_implementation() -> None:
    from mpcourse.bf16 import stochastic_round_bf16

    check("bf16-stochastic-round", lambda x, g: stochastic_round_bf16(x, generator=g))


@pytest.mark.parametrize(
    "variant, message",
    [
        ("truncate", "truncation"),
        ("nearest", "deterministic"),
        ("float32-result", "dtype"),
        ("15-bit-noise", "should be"),
        ("toward-plus-infinity", "negative values"),
        ("noise-on-value", "already a bf16 value"),
        ("global-generator", "seeded alike rounded the same inputs differently"),
        ("seeded-inside", "ignores `generator`"),
    ],
)
def test_stochastic_round_rejects_realistic_mistakes(variant: str, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("bf16-stochastic-round", sr_wrong(variant))


# ---- does an update survive? ---------------------------------------------------------------------


def survives_reference(w: np.ndarray, u: np.ndarray) -> np.ndarray:
    w, u = np.asarray(w, dtype=np.float64), np.asarray(u, dtype=np.float64)
    gap_up = BF16.spacing(w)  # the gap above |w|
    at_power = (np.abs(w) == 2.0 ** np.floor(np.log2(np.where(w == 0, 1, np.abs(w))))) & (w != 0)
    toward_zero = np.sign(u) == -np.sign(w)
    gap = np.where(at_power & toward_zero & (np.abs(w) > BF16.tiny), gap_up / 2, gap_up)
    half = gap / 2
    _, _, mantissa = BF16.fields(BF16.encode(w))
    odd = (np.asarray(mantissa) % 2) == 1
    return (np.abs(u) > half) | ((np.abs(u) == half) & odd)


def survives_wrong(variant: str):
    def fn(w: np.ndarray, u: np.ndarray) -> np.ndarray:
        if variant == "relative-threshold":
            return np.abs(u) > 2.0**-8 * np.abs(w)
        if variant == "ties-survive":
            return np.abs(u) >= BF16.spacing(w) / 2
        if variant == "gap-above-only":
            _, _, mantissa = BF16.fields(BF16.encode(w))
            half = BF16.spacing(w) / 2
            return (np.abs(u) > half) | ((np.abs(u) == half) & (np.asarray(mantissa) % 2 == 1))
        if variant == "fp32-double-rounding":
            wt = torch.from_numpy(w).to(torch.bfloat16)
            return ((wt.float() + torch.from_numpy(u).float()).to(torch.bfloat16) != wt).numpy()
        if variant == "floats":
            return survives_reference(w, u).astype(np.float64)
        raise AssertionError(variant)

    return fn


def test_update_survives_accepts_the_reference() -> None:
    check("bf16-update-survives", survives_reference)


def test_update_survives_accepts_the_exact_formats_answer() -> None:
    check("bf16-update-survives", lambda w, u: BF16.round(w + u) != w)


@pytest.mark.parametrize(
    "variant, message",
    [
        ("relative-threshold", "threshold|answered"),
        ("ties-survive", "tie"),
        ("gap-above-only", "power of two"),
        ("fp32-double-rounding", "double rounding"),
        ("floats", "boolean numpy array"),
    ],
)
def test_update_survives_rejects_realistic_mistakes(variant: str, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("bf16-update-survives", survives_wrong(variant))


# ---- Kahan-compensated update ----------------------------------------------------------------------


def kahan_reference(param: torch.Tensor, update: torch.Tensor, compensation: torch.Tensor):
    target = param.float() + (update.float() + compensation.float())
    new = target.to(torch.bfloat16)
    return new, (target - new.float()).to(torch.bfloat16)


def kahan_all_bf16(param: torch.Tensor, update: torch.Tensor, compensation: torch.Tensor):
    """Kahan's algorithm with every operation in bf16 (Zamirai et al.'s formulation): also correct."""
    y = update.to(torch.bfloat16) + compensation
    t = param + y
    return t, y - (t - param)


def kahan_wrong(variant: str):
    def fn(param: torch.Tensor, update: torch.Tensor, compensation: torch.Tensor):
        if variant == "naive":
            return (param.float() + update.float()).to(torch.bfloat16), compensation
        target = param.float() + (update.float() + compensation.float())
        new = target.to(torch.bfloat16)
        if variant == "wrong-sign":
            return new, (new.float() - target).to(torch.bfloat16)
        if variant == "compensation-ignored":
            target = param.float() + update.float()
            new = target.to(torch.bfloat16)
            return new, (target - new.float()).to(torch.bfloat16)
        if variant == "fp32-weights":
            return target, (target - new.float()).to(torch.bfloat16)
        if variant == "single-tensor":
            return new
        raise AssertionError(variant)

    return fn


def test_kahan_accepts_the_reference() -> None:
    check("bf16-kahan", kahan_reference)


def test_kahan_accepts_the_all_bf16_formulation() -> None:
    check("bf16-kahan", kahan_all_bf16)


def test_kahan_accepts_the_package_update() -> None:
    from mpcourse.bf16 import kahan_add_

    def fn(param, update, compensation):
        param, compensation = param.clone(), compensation.clone()
        kahan_add_(param, update, compensation)
        return param, compensation

    check("bf16-kahan", fn)


@pytest.mark.parametrize(
    "variant, message",
    [
        ("naive", "not moved"),
        ("wrong-sign", "wrong sign"),
        ("compensation-ignored", "not moved"),
        ("fp32-weights", "dtypes"),
        ("single-tensor", "pair of tensors"),
    ],
)
def test_kahan_rejects_realistic_mistakes(variant: str, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("bf16-kahan", kahan_wrong(variant))


# ---- the seed's B.2 loop, fixed ----------------------------------------------------------------------


def step_reference(model, optimizer, loss_fn, inputs, targets) -> float:
    with torch.autocast(inputs.device.type, dtype=torch.bfloat16):
        loss = loss_fn(model(inputs), targets)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


def step_loss_outside_autocast(model, optimizer, loss_fn, inputs, targets) -> float:
    with torch.autocast(inputs.device.type, dtype=torch.bfloat16):
        logits = model(inputs)
    loss = loss_fn(logits.float(), targets)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def step_zero_grad_first(model, optimizer, loss_fn, inputs, targets) -> float:
    optimizer.zero_grad()
    with torch.autocast(device_type=inputs.device.type, dtype=torch.bfloat16):
        loss = loss_fn(model(inputs), targets)
    loss.backward()
    optimizer.step()
    return loss.item()


def step_with_scaler(model, optimizer, loss_fn, inputs, targets) -> float:
    """Gives the right parameters (a scale of 2^16 is undone exactly), but bf16 needs no scaler."""
    scaler = torch.amp.GradScaler(inputs.device.type)
    optimizer.zero_grad()
    with torch.autocast(inputs.device.type, dtype=torch.bfloat16):
        loss = loss_fn(model(inputs), targets)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.item()


_SHARED_SCALER: list = []  # filled by the test before the check runs: the scaler exists before the step


def step_with_scaler_built_outside(model, optimizer, loss_fn, inputs, targets) -> float:
    """The scaler is made once, before the loop (as in the seed), and only used inside the step."""
    scaler = _SHARED_SCALER[0]
    with torch.autocast(inputs.device.type, dtype=torch.bfloat16):
        loss = loss_fn(model(inputs), targets)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
    return loss.item()


def step_backward_inside_autocast(model, optimizer, loss_fn, inputs, targets) -> float:
    """The same parameters as a correct step; PyTorch recommends against backward under autocast."""
    with torch.autocast(inputs.device.type, dtype=torch.bfloat16):
        loss = loss_fn(model(inputs), targets)
        loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


def step_inputs_cast_to_bf16(model, optimizer, loss_fn, inputs, targets) -> float:
    """Casting the inputs by hand: within rounding of a correct step, but autocast's job."""
    with torch.autocast(inputs.device.type, dtype=torch.bfloat16):
        loss = loss_fn(model(inputs.bfloat16()), targets)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


def step_wrong(variant: str):
    def fn(model, optimizer, loss_fn, inputs, targets):
        if variant == "seed-half":
            model.half()
            with torch.autocast(inputs.device.type):
                loss = loss_fn(model(inputs.half()), targets)
        elif variant == "no-autocast":
            loss = loss_fn(model(inputs), targets)
        elif variant == "fp16-autocast":
            with torch.autocast(inputs.device.type, dtype=torch.float16):
                loss = loss_fn(model(inputs), targets)
        elif variant == "hard-coded-cuda":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = loss_fn(model(inputs), targets)
        else:
            with torch.autocast(inputs.device.type, dtype=torch.bfloat16):
                loss = loss_fn(model(inputs), targets)
        loss.backward()
        if variant != "no-step":
            optimizer.step()
        if variant not in ("no-zero-grad",):
            optimizer.zero_grad()
        if variant == "returns-tensor":
            return loss
        if variant == "bfloat16-model":
            model.bfloat16()
        return loss.item()

    return fn


@pytest.mark.parametrize("fn", [step_reference, step_loss_outside_autocast, step_zero_grad_first])
def test_fix_b2_accepts_correct_loops(fn) -> None:
    check("bf16-fix-b2", fn)


@pytest.mark.parametrize(
    "fn, message",
    [
        (step_with_scaler, r"uses a GradScaler \(GradScaler.init was called\)"),
        (step_with_scaler_built_outside, r"uses a GradScaler \(GradScaler.scale was called\)"),
        (step_backward_inside_autocast, "backward\\(\\) ran with autocast still on"),
        (step_inputs_cast_to_bf16, "received inputs of dtype bfloat16: you cast them yourself"),
    ],
)
def test_fix_b2_rejects_what_the_parameters_cannot_show(fn, message: str) -> None:
    """Each of these leaves the parameters as a correct step does (or within rounding of it); the
    check must see the step itself."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecated torch.cuda.amp spelling of the seed
        _SHARED_SCALER[:] = [torch.cuda.amp.GradScaler(enabled=False)]
    with pytest.raises(ExerciseFailed, match=message):
        check("bf16-fix-b2", fn)


def test_fix_b2_check_leaves_no_spies_behind() -> None:
    from torch.amp.grad_scaler import GradScaler

    before = {name: getattr(GradScaler, name) for name in ("__init__", "scale", "step", "unscale_")}
    with pytest.raises(ExerciseFailed):
        check("bf16-fix-b2", step_with_scaler)
    assert {name: getattr(GradScaler, name) for name in before} == before
    check("bf16-fix-b2", step_reference)  # and a correct answer still passes afterwards


@pytest.mark.parametrize(
    "variant, message",
    [
        ("seed-half", "float16"),
        ("no-autocast", "nothing ran in bf16"),
        ("fp16-autocast", "fp16 autocast"),
        ("hard-coded-cuda", "nothing ran in bf16"),
        ("no-zero-grad", "never zeroed"),
        ("no-step", "did not change"),
        ("returns-tensor", "as a tensor"),
        ("bfloat16-model", "bfloat16"),
    ],
)
def test_fix_b2_rejects_realistic_mistakes(variant: str, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("bf16-fix-b2", step_wrong(variant))
