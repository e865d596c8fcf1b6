"""The checks of chapter mixed_precision_recipe: reference solutions pass, realistic mistakes fail."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mpcourse.exercises import ExerciseFailed, check

SLUG = "mixed_precision_recipe"


# --- lost-update ----------------------------------------------------------------------------------


def survives(w, u, dtype):
    w_low = w.to(dtype)
    return (w_low + u.to(dtype)) != w_low


def test_lost_update_accepts_the_reference() -> None:
    check(f"{SLUG}-lost-update", survives)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda w, u, d: (w + u) != w, "everything was computed in fp32"),
        (lambda w, u, d: (w.to(d) + u) != w.to(d), "u stayed fp32, so adding it"),
        (
            lambda w, u, d: (w.to(d) + u.to(d)) != w,
            "compared with the fp32 w",
        ),  # the sum was rounded: not "kept in fp32"
        (lambda w, u, d: u.abs() > torch.finfo(d).eps * w.abs(), "eps"),
        (lambda w, u, d: u.abs() >= torch.finfo(d).eps / 2 * w.abs(), "eps"),
        (lambda w, u, d: (w.to(d) + u.to(d)) == w.to(d), "answers are wrong"),  # inverted
        (lambda w, u, d: ((w.to(d) + u.to(d)) != w.to(d)).float(), "bool tensor"),
        (lambda w, u, d: (w.to(d).float() + u.to(d).float()).to(d) != w.to(d), None),  # also right
    ],
)
def test_lost_update_rejects_mistakes(wrong, message) -> None:
    if message is None:  # an equivalent formulation: rounding the fp32 sum of two low-precision numbers once
        check(f"{SLUG}-lost-update", wrong)
        return
    with pytest.raises(ExerciseFailed, match=message):
        check(f"{SLUG}-lost-update", wrong)


# --- master-weights ---------------------------------------------------------------------------------


def master_weight_step(master, grad, lr, low_dtype):
    new_master = master - lr * grad.float()
    return new_master, new_master.to(low_dtype)


def test_master_weights_accepts_the_reference_and_an_in_place_variant() -> None:
    check(f"{SLUG}-master-weights", master_weight_step)

    def in_place(master, grad, lr, low_dtype):
        master.add_(grad.float(), alpha=-lr)
        return master, master.to(low_dtype)

    check(f"{SLUG}-master-weights", in_place)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (
            lambda m, g, lr, d: ((m.to(d) - lr * g).float(), (m.to(d) - lr * g)),
            "applied to the low-precision",
        ),
        (lambda m, g, lr, d: (m - (lr * g).float(), (m - (lr * g).float()).to(d)), "computed in"),
        (
            lambda m, g, lr, d: ((m - lr * g.float()).to(d), (m - lr * g.float()).to(d)),
            "master weights are torch",
        ),
        (lambda m, g, lr, d: (m - lr * g.float(), m.to(d)), "old weights"),
        (lambda m, g, lr, d: (m - lr * g.float(), m - lr * g.float()), "copy is torch.float32"),
        (lambda m, g, lr, d: (m + lr * g.float(), (m + lr * g.float()).to(d)), "not master - lr"),
        (lambda m, g, lr, d: m - lr * g.float(), "expected a tuple"),
    ],
)
def test_master_weights_rejects_mistakes(wrong, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check(f"{SLUG}-master-weights", wrong)


# --- fp32-accumulate ---------------------------------------------------------------------------------


def dot_fp32_accumulate(a, b):
    return (a.float() * b.float()).sum()


def test_fp32_accumulate_accepts_the_reference_and_torch_dot() -> None:
    check(f"{SLUG}-fp32-accumulate", dot_fp32_accumulate)
    check(f"{SLUG}-fp32-accumulate", lambda a, b: torch.dot(a.float(), b.float()))


def sequential_low_precision(a, b):
    acc = torch.zeros((), dtype=a.dtype)
    for p in a * b:
        acc = acc + p
    return acc.float()


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda a, b: (a * b).sum(), "rounded to low precision at the end"),
        (lambda a, b: torch.dot(a, b), "rounded to low precision at the end"),
        (lambda a, b: (a * b).float().sum(), "each product was rounded"),
        (lambda a, b: torch.dot(a, b).float(), "differs from the exact"),
        (sequential_low_precision, "differs from the exact"),
        (lambda a, b: (a.float() * b.float()).sum().item(), "expected a one-element tensor"),
        (lambda a, b: a.float() * b.float(), "expected a one-element tensor"),
    ],
)
def test_fp32_accumulate_rejects_mistakes(wrong, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check(f"{SLUG}-fp32-accumulate", wrong)


# --- memory --------------------------------------------------------------------------------------------


def persistent_bytes(n_params, recipe):
    return n_params * {"fp32": 16, "amp": 16, "pure_bf16": 8}[recipe]


def test_memory_accepts_the_reference() -> None:
    check(f"{SLUG}-memory", persistent_bytes)


@pytest.mark.parametrize(
    "table, message",
    [
        ({"fp32": 16, "amp": 8, "pure_bf16": 8}, "does not halve"),
        ({"fp32": 16, "amp": 18, "pure_bf16": 8}, "temporary"),
        ({"fp32": 16, "amp": 20, "pure_bf16": 8}, "no separate fp16 weights"),
        ({"fp32": 8, "amp": 16, "pure_bf16": 8}, "optimizer state"),
        ({"fp32": 12, "amp": 16, "pure_bf16": 8}, "two"),
        ({"fp32": 16, "amp": 16, "pure_bf16": 16}, "optimizer state included"),
        ({"fp32": 16, "amp": 16, "pure_bf16": 4}, "two moments"),
        ({"fp32": 16, "amp": 16, "pure_bf16": 6}, "not right"),
    ],
)
def test_memory_rejects_mistakes(table, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check(f"{SLUG}-memory", lambda n, r: n * table[r])


# --- train-step -----------------------------------------------------------------------------------------


def amp_train_step(model, optimizer, scaler, x, y, device_type, dtype):
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type, dtype=dtype):
        loss = F.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss


def test_train_step_accepts_the_reference_and_backward_inside_autocast() -> None:
    check(f"{SLUG}-train-step", amp_train_step)

    def backward_inside(model, optimizer, scaler, x, y, device_type, dtype):
        optimizer.zero_grad()
        with torch.autocast(device_type, dtype=dtype):
            loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()  # not recommended, but the same numbers
        scaler.step(optimizer)
        scaler.update()
        return loss.item()

    check(f"{SLUG}-train-step", backward_inside)


def step_with(
    *,
    autocast=True,
    zero_grad=True,
    scaled_backward=True,
    through_scaler=True,
    update=True,
    return_scaled=False,
):
    """A training step with one part of the recipe changed: the realistic mistakes the check must catch."""

    def step(model, optimizer, scaler, x, y, device_type, dtype):
        if zero_grad:
            optimizer.zero_grad()
        with torch.autocast(device_type, dtype=dtype, enabled=autocast):
            loss = F.cross_entropy(model(x), y)
        scaled = scaler.scale(loss)
        (scaled if scaled_backward else loss).backward()
        if through_scaler:
            scaler.step(optimizer)
        else:
            optimizer.step()
        if update:
            scaler.update()
        return scaled if return_scaled else loss

    return step


@pytest.mark.parametrize(
    "wrong, message",
    [
        (step_with(autocast=False), "did not run under autocast"),
        (step_with(through_scaler=False), "no inf checks were recorded"),
        (step_with(through_scaler=False, update=False), r"never called scaler.step\(\)"),
        (step_with(scaled_backward=False), "differ from a correct step"),
        (step_with(zero_grad=False), "differ from a correct step"),
        (step_with(update=False), r"never called scaler.update\(\)"),
        (step_with(return_scaled=True), "scaled loss"),
    ],
)
def test_train_step_rejects_mistakes(wrong, message) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check(f"{SLUG}-train-step", wrong)
