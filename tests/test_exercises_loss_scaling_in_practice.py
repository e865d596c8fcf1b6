"""The checks of chapter loss_scaling_in_practice: reference solutions pass, realistic mistakes fail."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mpcourse.exercises import ExerciseFailed, check
from mpcourse.exercises.loss_scaling_in_practice import _accumulate_variant, _loop_variant

# ---- broken loop ---------------------------------------------------------------------------------


def fixed_epoch(model, optimizer, scaler, batches, max_norm=1.0):
    loss_fn = nn.CrossEntropyLoss()
    for x, y in batches:
        optimizer.zero_grad()
        with torch.autocast(x.device.type, dtype=torch.float16):
            logits = model(x)
            loss = loss_fn(logits, y)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        scaler.step(optimizer)
        scaler.update()


def test_broken_loop_reference_passes_quietly(capsys: pytest.CaptureFixture[str]) -> None:
    check("loss_scaling_in_practice-broken-loop", fixed_epoch)
    assert capsys.readouterr().err == ""


def test_another_valid_fix_passes() -> None:
    def other(model, optimizer, scaler, batches, max_norm=1.0):
        for x, y in batches:
            model.zero_grad(set_to_none=False)  # zeroes the same gradients as optimizer.zero_grad()
            with torch.autocast(device_type=x.device.type, dtype=torch.float16):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], max_norm=max_norm)
            scaler.step(optimizer)
            scaler.update()

    check("loss_scaling_in_practice-broken-loop", other)


def test_deleting_the_clipping_is_named() -> None:
    with pytest.raises(ExerciseFailed, match="your loop clips nothing: either the clipping is gone"):
        check("loss_scaling_in_practice-broken-loop", _loop_variant(frozenset({"no_clip"})))
    with pytest.raises(ExerciseFailed, match="1 bug remained.*never zeroed.*; and your loop clips nothing"):
        check("loss_scaling_in_practice-broken-loop", _loop_variant(frozenset({"no_clip", "zero_grad"})))


@pytest.mark.parametrize(
    "set_to_none, message",
    [(False, "parameters have not changed at all"), (True, "no parameter had a gradient")],
)
def test_zeroing_between_backward_and_step_is_named(set_to_none: bool, message: str) -> None:
    def zeroed_too_late(model, optimizer, scaler, batches, max_norm=1.0):
        loss_fn = nn.CrossEntropyLoss()
        for x, y in batches:
            with torch.autocast(x.device.type, dtype=torch.float16):
                loss = loss_fn(model(x), y)
            scaler.scale(loss).backward()
            optimizer.zero_grad(set_to_none=set_to_none)  # wrong place: the step below sees no gradient
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            scaler.step(optimizer)
            scaler.update()

    with pytest.raises(ExerciseFailed, match=message):
        check("loss_scaling_in_practice-broken-loop", zeroed_too_late)


def test_a_hard_coded_clipping_threshold_is_caught() -> None:
    def hard_coded(model, optimizer, scaler, batches, max_norm=1.0):
        fixed_epoch(model, optimizer, scaler, batches, 1.0)  # ignores the max_norm it was given

    with pytest.raises(ExerciseFailed, match="ignores the max_norm it is given"):
        check("loss_scaling_in_practice-broken-loop", hard_coded)


def test_an_equivalent_fix_passes_too() -> None:
    def other(model, optimizer, scaler, batches, max_norm=1.0):
        for x, y in batches:
            with torch.autocast(x.device.type, dtype=torch.float16):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)  # the same fp32 loss, written differently
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)  # zeroing after the step instead of before

    check("loss_scaling_in_practice-broken-loop", other)


def broken_epoch(model, optimizer, scaler, batches, max_norm=1.0):
    """The chapter's broken loop, as a learner sees it: four bugs."""
    loss_fn = nn.CrossEntropyLoss()
    for x, y in batches:
        with torch.autocast(x.device.type, dtype=torch.float16):
            probs = torch.softmax(model(x), dim=1)
            loss = loss_fn(probs, y)
        scaler.scale(loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        scaler.step(optimizer)
        optimizer.step()
        scaler.update()


def test_the_unfixed_loop_is_told_all_four_bugs() -> None:
    with pytest.raises(ExerciseFailed, match="4 bugs"):
        check("loss_scaling_in_practice-broken-loop", broken_epoch)


@pytest.mark.parametrize(
    "bugs, message",
    [
        ({"softmax"}, "log-softmax"),
        ({"zero_grad"}, "never zeroed"),
        ({"clip"}, "still multiplied by the scale"),
        ({"double_step"}, "taken twice"),
        ({"clip", "double_step"}, "2 bugs"),
    ],
)
def test_remaining_bugs_are_named(bugs: set[str], message: str) -> None:
    # The check's own bug generator makes the partial fixes; the check must name the bugs left.
    with pytest.raises(ExerciseFailed, match=message):
        check("loss_scaling_in_practice-broken-loop", _loop_variant(frozenset(bugs)))


def test_an_unrecognised_loop_fails_generically() -> None:
    def wrong(model, optimizer, scaler, batches, max_norm=1.0):
        for group in optimizer.param_groups:
            group["lr"] *= 2
        fixed_epoch(model, optimizer, scaler, batches, max_norm)

    with pytest.raises(ExerciseFailed, match="not in a way that one of the known bugs explains"):
        check("loss_scaling_in_practice-broken-loop", wrong)


# A loop that leaves out the scaler, or calls it in the wrong order, takes the same steps as the fixed loop
# whenever nothing overflows; the check must still reject it.


def _epoch_calling(order: str):
    def epoch(model, optimizer, scaler, batches, max_norm=1.0):
        loss_fn = nn.CrossEntropyLoss()
        own = torch.amp.GradScaler("cpu", init_scale=2.0**4)
        for x, y in batches:
            optimizer.zero_grad()
            with torch.autocast(x.device.type, dtype=torch.float16):
                loss = loss_fn(model(x), y)
            if order == "no-scaler":
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                optimizer.step()
            elif order == "own-scaler":
                own.scale(loss).backward()
                own.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                own.step(optimizer)
                own.update()
            elif order == "optimizer-step":
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                optimizer.step()
                scaler.update()
            elif order == "no-update":
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                scaler.step(optimizer)
            elif order == "step-then-unscale":  # GradScaler itself raises here
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                scaler.update()
            elif order == "clip-after-update":  # runs without an error; the clipping comes too late
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            elif order == "pinned-scale":  # the right calls, but the scale is forced back every step
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                scaler.step(optimizer)
                scaler.update(2.0**4)
            else:
                raise ValueError(order)

    return epoch


@pytest.mark.parametrize(
    "order, message",
    [
        ("no-scaler", "never called the scaler it was given"),
        ("own-scaler", "never called the scaler it was given"),
        ("optimizer-step", r"never calls the scaler's step\(\)"),
        ("no-update", r"scaled a second loss before the scaler's update\(\) ended"),
        ("step-then-unscale", "in the order scale -> step -> unscale_"),
        ("clip-after-update", "in the order unscale_ -> scale -> step -> update"),
        ("pinned-scale", "first steps overflow"),
    ],
)
def test_loops_that_misuse_the_scaler_are_rejected(order: str, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("loss_scaling_in_practice-broken-loop", _epoch_calling(order))


def test_the_scalerless_loop_nearly_matches_the_fixed_one_without_overflow() -> None:
    # Why the spy is needed: with a small scale the parameters of a loop without the scaler differ from the
    # fixed loop's only by fp16 rounding (scaling by 16 moves a few roundings), far too little to rely on.
    from mpcourse.exercises.loss_scaling_in_practice import _run_epoch

    a, b = _run_epoch(_epoch_calling("no-scaler"), "small"), _run_epoch(fixed_epoch, "small")
    assert a["scale"] == b["scale"]
    assert all(torch.allclose(p, q, rtol=1e-3, atol=1e-5) for p, q in zip(a["params"], b["params"]))


def test_the_overflow_run_skips_some_steps_and_takes_others() -> None:
    from mpcourse.exercises.loss_scaling_in_practice import _EPOCH_BATCHES, _run_epoch

    run = _run_epoch(fixed_epoch, "overflow")
    assert 0 < run["skipped"] < _EPOCH_BATCHES
    assert _run_epoch(fixed_epoch, "small")["skipped"] == 0


# ---- gradient accumulation -----------------------------------------------------------------------


def accumulated_step(model, optimizer, scaler, micro_batches):
    optimizer.zero_grad()
    for x, y in micro_batches:
        with torch.autocast(x.device.type, dtype=torch.float16):
            loss = F.cross_entropy(model(x), y) / len(micro_batches)
        scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def test_accumulate_reference_passes() -> None:
    check("loss_scaling_in_practice-accumulate", accumulated_step)


def test_accumulate_alternatives_pass() -> None:
    def divide_the_gradients(model, optimizer, scaler, micro_batches):
        """Unscale once, then divide the summed gradients by the micro-batch count."""
        optimizer.zero_grad(set_to_none=True)
        for x, y in micro_batches:
            with torch.autocast(x.device.type, dtype=torch.float16):
                loss = nn.CrossEntropyLoss()(model(x), y)
            scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        for p in model.parameters():
            if p.grad is not None:
                p.grad /= len(micro_batches)
        scaler.step(optimizer)
        scaler.update()

    def divide_the_scaled_loss(model, optimizer, scaler, micro_batches):
        for p in model.parameters():
            p.grad = None
        k = len(micro_batches)
        for x, y in micro_batches:
            with torch.autocast(x.device.type, dtype=torch.float16):
                logits = model(x)
            (scaler.scale(F.cross_entropy(logits.float(), y)) / k).backward()
        scaler.step(optimizer)
        scaler.update()

    check("loss_scaling_in_practice-accumulate", divide_the_gradients)
    check("loss_scaling_in_practice-accumulate", divide_the_scaled_loss)


@pytest.mark.parametrize(
    ("bugs", "message"),
    [
        ({"no_divide"}, "not divided by the number of micro-batches"),
        ({"zero_each"}, "only the last one reaches the optimizer"),
        ({"no_zero"}, "never zeroed"),
        ({"no_divide", "zero_each"}, "not divided.*; and the gradients are zeroed before every micro-batch"),
    ],
)
def test_accumulate_mistakes_are_named(bugs: set[str], message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("loss_scaling_in_practice-accumulate", _accumulate_variant(frozenset(bugs)))


def _stepping_each(update_too: bool):
    def step(model, optimizer, scaler, micro_batches):
        optimizer.zero_grad()
        for x, y in micro_batches:
            with torch.autocast(x.device.type, dtype=torch.float16):
                loss = F.cross_entropy(model(x), y) / len(micro_batches)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            if update_too:
                scaler.update()
        if not update_too:
            scaler.update()

    return step


@pytest.mark.parametrize(
    ("update_too", "message"), [(True, "stepped or updated more than once"), (False, "already been called")]
)
def test_accumulate_stepping_per_micro_batch_is_rejected(update_too: bool, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("loss_scaling_in_practice-accumulate", _stepping_each(update_too))


def test_accumulate_without_the_scaler_is_rejected() -> None:
    def no_scaler(model, optimizer, scaler, micro_batches):
        optimizer.zero_grad()
        for x, y in micro_batches:
            with torch.autocast(x.device.type, dtype=torch.float16):
                loss = F.cross_entropy(model(x), y) / len(micro_batches)
            loss.backward()
        optimizer.step()

    with pytest.raises(ExerciseFailed, match="never called the scaler"):
        check("loss_scaling_in_practice-accumulate", no_scaler)


def test_accumulate_that_hides_overflows_is_rejected() -> None:
    """Replacing the infinities before the scaler's step: the scaler then sees nothing to skip."""

    def hides_overflows(model, optimizer, scaler, micro_batches):
        optimizer.zero_grad()
        for x, y in micro_batches:
            with torch.autocast(x.device.type, dtype=torch.float16):
                loss = F.cross_entropy(model(x), y) / len(micro_batches)
            scaler.scale(loss).backward()
        for p in model.parameters():
            p.grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        scaler.step(optimizer)
        scaler.update()

    with pytest.raises(ExerciseFailed, match="overflowing at first"):
        check("loss_scaling_in_practice-accumulate", hides_overflows)


def test_the_accumulate_overflow_run_skips_some_steps_and_takes_others() -> None:
    from mpcourse.exercises.loss_scaling_in_practice import _ACCUMULATE_STEPS, _run_accumulate

    run = _run_accumulate(accumulated_step, "4 micro-batches, overflowing at first")
    assert 0 < run["skipped"] < _ACCUMULATE_STEPS
    assert _run_accumulate(accumulated_step, "4 micro-batches")["skipped"] == 0


# ---- safe attention logits -----------------------------------------------------------------------


def logits_in_fp32(q, k):
    return q.float() @ k.float().T / math.sqrt(q.shape[-1])


def queries_scaled_first(q, k):
    return (q / math.sqrt(q.shape[-1])) @ k.T


def both_scaled(q, k):
    s = q.shape[-1] ** -0.25
    return (q * s) @ (k * s).transpose(0, 1)


def autocast_off(q, k):
    with torch.autocast(q.device.type, enabled=False):
        return torch.matmul(q.double(), k.double().T) / q.shape[-1] ** 0.5


@pytest.mark.parametrize("fn", [logits_in_fp32, queries_scaled_first, both_scaled, autocast_off])
def test_safe_logits_valid_answers_pass(fn) -> None:
    check("loss_scaling_in_practice-safe-logits", fn)


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda q, k: q @ k.T / math.sqrt(q.shape[-1]), "inf or NaN"),
        (lambda q, k: (q @ k.T).float() / math.sqrt(q.shape[-1]), "inf or NaN"),
        (lambda q, k: torch.nan_to_num(q @ k.T) / math.sqrt(q.shape[-1]), "differ from the exact ones"),
        (
            lambda q, k: torch.clamp((q @ k.T).float(), max=65504) / math.sqrt(q.shape[-1]),
            "differ from the exact",
        ),
        (lambda q, k: q.float() @ k.float().T, "sqrt\\(d\\) times too large"),
        (lambda q, k: q.float() @ k.float().T / q.shape[-1], "sqrt\\(d\\) times too small"),
        (lambda q, k: q.float() @ q.float().T / math.sqrt(q.shape[-1]), "shape"),
        (lambda q, k: q.div_(math.sqrt(q.shape[-1])) @ k.T, "in place"),
        (lambda q, k: (q.float() @ k.float().T / math.sqrt(q.shape[-1])).tolist(), "floating-point tensor"),
    ],
)
def test_safe_logits_mistakes_fail(fn, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("loss_scaling_in_practice-safe-logits", fn)


def test_the_logit_cases_overflow_fp16_when_divided_afterwards() -> None:
    from mpcourse.exercises.loss_scaling_in_practice import _LOGIT_CASES, _logit_inputs

    overflowing = [bool(torch.isinf(q @ k.T).any()) for q, k in (_logit_inputs(*c) for c in _LOGIT_CASES)]
    assert overflowing == [True, True, False]


# ---- watching the scale --------------------------------------------------------------------------


def first_collapse(init_scale, scales, floor=1.0, max_drops=12):
    previous, in_row = init_scale, 0
    for step, scale in enumerate(scales, 1):
        in_row = in_row + 1 if scale < previous else 0
        previous = scale
        if scale < floor or in_row >= max_drops:
            return step
    return None


def first_collapse_with_scale_watch(init_scale, scales, floor=1.0, max_drops=12):
    """The course's ScaleWatch, told the initial scale first (then its iterations count from 0)."""
    from mpcourse.loss_scaling import ScaleWatch

    watch = ScaleWatch(floor=floor, max_drops_in_row=max_drops, warn=False)
    watch.observe(init_scale)
    for scale in scales:
        watch.observe(scale)
    return None if watch.collapsed_at is None else watch.collapsed_at - 1


@pytest.mark.parametrize("fn", [first_collapse, first_collapse_with_scale_watch])
def test_watch_valid_answers_pass(fn) -> None:
    check("loss_scaling_in_practice-watch", fn)


def _watch_wrong(kind: str):
    def fn(init_scale, scales, floor=1.0, max_drops=12):
        previous, in_row, total = (None if kind == "no_init" else init_scale), 0, 0
        for step, scale in enumerate(scales, 1):
            dropped = previous is not None and scale < previous
            total += dropped
            if dropped:
                in_row += 1
            elif kind != "no_reset" and (kind != "reset_on_growth" or scale > previous):
                in_row = 0
            previous = scale
            below = scale <= floor if kind == "le_floor" else scale < floor
            count = total if kind == "total" else in_row
            if below or count >= max_drops:
                return step - 1 if kind == "zero_based" else step
        return None

    return fn


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("no_init", "you report step 13, expected step 12"),
        ("no_reset", "you report step 5, expected step 8"),
        ("reset_on_growth", "you report step 5, expected step 8"),
        ("total", "you report step 5, expected step 8"),
        ("le_floor", "you report step 7, expected step 10"),
        ("zero_based", "you report step 11, expected step 12"),
    ],
)
def test_watch_mistakes_fail(kind: str, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=re.escape(message)):
        check("loss_scaling_in_practice-watch", _watch_wrong(kind))


def test_watch_that_never_fires_or_returns_a_bool_fails() -> None:
    with pytest.raises(ExerciseFailed, match="expected the step number 12"):
        check("loss_scaling_in_practice-watch", lambda *args, **kwargs: None)
    with pytest.raises(ExerciseFailed, match="an int"):
        check(
            "loss_scaling_in_practice-watch",
            lambda i, s, floor=1.0, max_drops=12: bool(first_collapse(i, s, floor, max_drops)),
        )
