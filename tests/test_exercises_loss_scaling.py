"""The checks of chapter loss_scaling: reference solutions pass, realistic mistakes fail."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mpcourse import formats
from mpcourse.exercises import ExerciseFailed, check
from mpcourse.exercises.loss_scaling_loops import _clipped_step_variant, _loop_variant

# ---- dynamic scaler ------------------------------------------------------------------------------


def make_scaler_class(mistake: str | None = None):
    class MyDynamicScaler:
        def __init__(self, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
            self.scale_factor = float(init_scale)
            self.growth_factor, self.backoff_factor = growth_factor, backoff_factor
            self.growth_interval = growth_interval
            self.growth_tracker = 0
            self.found_inf = False
            self.unscaled = False

        def scale(self, loss):
            return loss * self.scale_factor

        def unscale_(self, optimizer):
            if self.unscaled and mistake != "unscale-twice":
                raise RuntimeError(
                    "unscale_() has already been called on this optimizer since the last update()."
                )
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    bad = torch.isinf(p.grad).any() if mistake == "isinf" else ~torch.isfinite(p.grad).all()
                    if bad:
                        self.found_inf = True
                    p.grad.mul_(1.0 / self.scale_factor)
            self.unscaled = True

        def step(self, optimizer):
            if not self.unscaled or mistake == "unscale-twice":
                self.unscale_(optimizer)
            if not self.found_inf or mistake == "no-skip":
                optimizer.step()

        def update(self):
            if self.found_inf:
                self.scale_factor *= self.backoff_factor if mistake != "hard-coded-half" else 0.5
                if mistake != "keep-tracker":
                    self.growth_tracker = 0
            else:
                self.growth_tracker += 1
                limit = self.growth_interval - 1 if mistake == "off-by-one" else self.growth_interval
                if self.growth_tracker >= limit:
                    self.scale_factor *= self.growth_factor
                    self.growth_tracker = 0
            if mistake != "sticky-flag":
                self.found_inf = False
            self.unscaled = False

        def get_scale(self):
            return self.scale_factor

    return MyDynamicScaler


def test_dynamic_scaler_reference_passes() -> None:
    check("loss_scaling-dynamic-scaler", make_scaler_class())


@pytest.mark.parametrize(
    "mistake, message",
    [
        ("no-skip", "must not call optimizer.step"),
        ("isinf", "torch.isfinite"),
        ("off-by-one", "growth_interval"),
        ("keep-tracker", "growth_interval"),
        ("sticky-flag", "Forget the inf/NaN flag"),
        ("unscale-twice", "exactly once"),
        ("hard-coded-half", "backoff_factor"),
    ],
)
def test_dynamic_scaler_mistakes_fail_with_a_hint(mistake: str, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message) as err:
        check("loss_scaling-dynamic-scaler", make_scaler_class(mistake))
    assert "first divergence" in str(err.value) and "seed" in str(err.value)


def test_gradscaler_itself_is_refused() -> None:
    with pytest.raises(ExerciseFailed, match="build your own"):
        check("loss_scaling-dynamic-scaler", lambda **kw: torch.amp.GradScaler("cpu", **kw))


def test_a_scaler_without_methods_is_refused() -> None:
    class Empty:
        def __init__(self, **kw):
            pass

    with pytest.raises(ExerciseFailed, match="no scale, unscale_, step, update, get_scale"):
        check("loss_scaling-dynamic-scaler", Empty)


# ---- static scale --------------------------------------------------------------------------------


def choose_static_scale(hist, fmt="fp16", margin=1):
    if hist.above:
        raise ValueError("values above the histogram's last binade: their size is unknown")
    top = int(hist.exponents[hist.counts > 0].max())
    return math.floor(math.log2(formats.get(fmt).max)) - margin - top - 1


def test_static_scale_reference_passes() -> None:
    check("loss_scaling-static-scale", choose_static_scale)


def _static_wrong(kind: str):
    def f(hist, fmt="fp16", margin=1):
        if kind != "no-raise" and hist.above:
            raise ValueError("unknown")
        nonempty = hist.exponents[hist.counts > 0]
        top = (
            int(hist.exponents[-1])
            if kind == "last-bin"
            else int(nonempty.min() if kind == "lowest" else nonempty.max())
        )
        log2max = (
            math.ceil(math.log2(formats.get(fmt).max))
            if kind == "ceil"
            else math.floor(math.log2(formats.get(fmt).max))
        )
        s = log2max - (0 if kind == "no-margin" else margin) - top - (0 if kind == "upper-edge" else 1)
        if kind == "power":
            return 2.0**s
        if kind == "fp16-only":
            return 15 - margin - top - 1
        return s

    return f


@pytest.mark.parametrize(
    "kind, message",
    [
        ("ceil", "rounded up"),
        ("upper-edge", "rounded up"),
        ("no-margin", "margin ignored"),
        ("last-bin", "whether or not it holds any value"),
        ("lowest", "lowest non-empty binade"),
        ("power", "the scale itself"),
        ("fp16-only", "bf16|e5m2"),
        ("no-raise", "raise ValueError"),
    ],
)
def test_static_scale_mistakes_fail(kind: str, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("loss_scaling-static-scale", _static_wrong(kind))


# ---- clipping ------------------------------------------------------------------------------------


def clipped_step(model, optimizer, scaler, x, y, max_norm):
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.float16):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    scaler.step(optimizer)
    scaler.update()
    return norm.item()


def test_clip_reference_passes() -> None:
    check("loss_scaling-clip", clipped_step)


def clipped_step_returning_the_scaled_norm(model, optimizer, scaler, x, y, max_norm):
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.float16):
        logits = model(x)
    scaler.scale(F.cross_entropy(logits.float(), y)).backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))  # still scaled
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    scaler.step(optimizer)
    scaler.update()
    return float(norm)


def test_returning_the_scaled_norm_fails() -> None:
    with pytest.raises(ExerciseFailed, match="norm of the scaled gradients"):
        check("loss_scaling-clip", clipped_step_returning_the_scaled_norm)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("clip-then-unscale", "clip threshold is then max_norm / scale"),
        ("no-unscale", "clipping the scaled gradients"),
        ("no-zero-grad", "not zeroing the gradients"),
        ("optimizer-step", "not skipped"),
    ],
)
def test_clip_mistakes_are_named(kind: str, message: str) -> None:
    # The check's own generator of the usual mistakes; each must be recognised and named.
    with pytest.raises(ExerciseFailed, match=message):
        check("loss_scaling-clip", _clipped_step_variant(kind))


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


def test_broken_loop_reference_passes() -> None:
    check("loss_scaling-broken-loop", fixed_epoch)


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

    check("loss_scaling-broken-loop", other)


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
        check("loss_scaling-broken-loop", broken_epoch)


@pytest.mark.parametrize(
    "bugs, message",
    [
        ({"softmax"}, "log-softmax"),
        ({"zero_grad"}, "never zeroed"),
        ({"clip"}, "still scaled"),
        ({"double_step"}, "taken twice"),
        ({"clip", "double_step"}, "2 bugs"),
    ],
)
def test_remaining_bugs_are_named(bugs: set[str], message: str) -> None:
    # The check's own bug generator makes the partial fixes; the check must name the bugs left.
    with pytest.raises(ExerciseFailed, match=message):
        check("loss_scaling-broken-loop", _loop_variant(frozenset(bugs)))


def test_an_unrecognised_loop_fails_generically() -> None:
    def wrong(model, optimizer, scaler, batches, max_norm=1.0):
        for group in optimizer.param_groups:
            group["lr"] *= 2
        fixed_epoch(model, optimizer, scaler, batches, max_norm)

    with pytest.raises(ExerciseFailed, match="not in a way that one of the known bugs explains"):
        check("loss_scaling-broken-loop", wrong)


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
        ("optimizer-step", r"never calls scaler.step\(\)"),
        ("no-update", r"before scaler.update\(\) ended"),
        ("step-then-unscale", "in the order scale -> step -> unscale_"),
        ("clip-after-update", "in the order unscale_ -> scale -> step -> update"),
        ("pinned-scale", "first steps overflow"),
    ],
)
def test_loops_that_misuse_the_scaler_are_rejected(order: str, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("loss_scaling-broken-loop", _epoch_calling(order))


def test_the_scalerless_loop_nearly_matches_the_fixed_one_without_overflow() -> None:
    # Why the spy is needed: with a small scale the parameters of a loop without the scaler differ from the
    # fixed loop's only by fp16 rounding (scaling by 16 moves a few roundings), far too little to rely on.
    from mpcourse.exercises.loss_scaling_loops import _run_epoch

    a, b = _run_epoch(_epoch_calling("no-scaler"), "small"), _run_epoch(fixed_epoch, "small")
    assert a["scale"] == b["scale"]
    assert all(torch.allclose(p, q, rtol=1e-3, atol=1e-5) for p, q in zip(a["params"], b["params"]))


def test_the_overflow_run_skips_some_steps_and_takes_others() -> None:
    from mpcourse.exercises.loss_scaling_loops import _EPOCH_BATCHES, _run_epoch

    run = _run_epoch(fixed_epoch, "overflow")
    assert 0 < run["skipped"] < _EPOCH_BATCHES
    assert _run_epoch(fixed_epoch, "small")["skipped"] == 0
