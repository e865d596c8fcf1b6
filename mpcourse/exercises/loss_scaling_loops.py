"""Checks for the training-loop exercise of chapter ``loss_scaling``: the broken loop, fixed.

Registered when :mod:`mpcourse.exercises.loss_scaling` loads. The reference is ``torch.amp.GradScaler``
itself, run side by side with the learner's loop on identical models. (This is the course's only
"find the bugs in a real loop" exercise; the only "write an AMP training step" one is in the
mixed_precision_recipe chapter.)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .. import device
from . import ExerciseFailed, call, fail, plural, register

# ---- loss_scaling-broken-loop --------------------------------------------------------------------


def _small_model(seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def _batches(seed: int, n: int, batch: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 16, generator=gen) * 3, torch.randint(0, 4, (batch,), generator=gen))
        for _ in range(n)
    ]


def _same_run(a: dict[str, Any], b: dict[str, Any]) -> bool:
    params = all(
        p.shape == q.shape and torch.allclose(p, q, rtol=1e-4, atol=1e-6, equal_nan=True)
        for p, q in zip(a["params"], b["params"])
    )
    return params and a["scale"] == b["scale"]


_LOOP_BUGS = {
    "softmax": "the model's output goes through softmax before CrossEntropyLoss, which applies log-softmax itself",
    "zero_grad": "the gradients are never zeroed, so every step uses the sum of all gradients so far",
    "clip": "the gradients are clipped while they are still multiplied by the scale",
    "double_step": "the optimizer steps a second time after scaler.step(): every step is taken twice, and an "
    "overflowed one is taken anyway",
}


def _loop_variant(bugs: frozenset[str]) -> Callable[..., None]:
    """The fixed loop, with the given bugs put back in (and ``"no_clip"``: the clipping deleted)."""

    def epoch(
        model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, batches: Any, max_norm: float = 1.0
    ) -> None:
        loss_fn = nn.CrossEntropyLoss()
        for x, y in batches:
            if "zero_grad" not in bugs:
                optimizer.zero_grad()
            with torch.autocast(x.device.type, dtype=torch.float16):
                out = model(x)
                if "softmax" in bugs:
                    out = torch.softmax(out, dim=1)
                loss = loss_fn(out, y)
            scaler.scale(loss).backward()
            if "no_clip" not in bugs:
                if "clip" not in bugs:
                    scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            scaler.step(optimizer)
            if "double_step" in bugs:
                optimizer.step()
            scaler.update()

    return epoch


class _SpyScaler(torch.amp.GradScaler):
    """``torch.amp.GradScaler`` that also records which of its methods the loop called, in order.

    Comparing parameters alone cannot tell a loop that uses the scaler from one that deletes it: at
    a small scale that never overflows, ``loss.backward(); optimizer.step()`` takes the same steps.
    The record shows whether every iteration went scale -> (unscale_) -> step -> update.
    """

    def __init__(self, init_scale: float, growth_interval: int) -> None:
        super().__init__("cpu", init_scale=init_scale, growth_interval=growth_interval)
        self.calls: list[str] = []
        self.skipped = 0
        self._in_step = False  # GradScaler.step calls unscale_ itself; that call is not the loop's

    def scale(self, outputs: Any) -> Any:
        self.calls.append("scale")
        return super().scale(outputs)

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        if not self._in_step:
            self.calls.append("unscale_")
        super().unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        self.calls.append("step")
        self._in_step = True
        try:
            out = super().step(optimizer, *args, **kwargs)
        finally:
            self._in_step = False
        state = self._per_optimizer_states[id(optimizer)]
        self.skipped += int(sum(v.item() for v in state["found_inf_per_device"].values()) > 0)
        return out

    def update(self, new_scale: Any = None) -> None:
        self.calls.append("update")
        super().update(new_scale)


#: The two runs of the check: a small scale that never overflows (so that each bug shows on its own)
#: and a large one whose first steps overflow fp16 (so that a loop that does not skip them shows).
_EPOCH_RUNS = {
    "small": dict(init_scale=2.0**4, growth_interval=2000),
    "overflow": dict(init_scale=2.0**20, growth_interval=2),
}
_EPOCH_BATCHES = 8
#: The clipping threshold handed to the loop: this model's gradient norms are 0.6 to 0.9 in the small run,
#: so clipping changes some steps and not others (at the default 1.0 it would change none).
_EPOCH_MAX_NORM = 0.7
#: Not one of the four bugs but a wrong fix of the clipping one.
_NO_CLIP = (
    f"your loop clips nothing: either the clipping is gone (it belongs in the loop, only its place was "
    f"wrong) or it ignores the max_norm it is given (the check passes {_EPOCH_MAX_NORM}, which some steps exceed)"
)


def _run_epoch(epoch_fn: Callable[..., Any], run: str = "small", label: str | None = None) -> dict[str, Any]:
    model = _small_model(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = _SpyScaler(**_EPOCH_RUNS[run])
    args = (model, opt, scaler, _batches(4, _EPOCH_BATCHES), _EPOCH_MAX_NORM)
    error = None
    with device.cpu_threads(1):
        if label:
            try:
                call(label, epoch_fn, *args)
            except ExerciseFailed as exc:
                error = exc
        else:
            epoch_fn(*args)
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "scale": scaler.get_scale(),
        "calls": scaler.calls,
        "skipped": scaler.skipped,
        "error": error,
    }


#: GradScaler's iteration, in words (the messages name the protocol, not the lines of the fix).
_ORDER = (
    "scale the loss before backward, unscale (only if something needs the true gradients) before using "
    "them, step through the scaler, update the scale last"
)


_ITERATIONS = (["scale", "step", "update"], ["scale", "unscale_", "step", "update"])


def _protocol_problem(calls: list[str], batches: int, *, finished: bool = True) -> str | None:
    """What is wrong with the order in which a loop called the scaler, or None if every iteration
    went ``scale``, optionally ``unscale_``, ``step``, ``update``, once per batch.

    For a loop that raised (``finished=False``) only the calls it made are judged: GradScaler raises
    on some wrong orders (``unscale_`` after ``step``), and the order is the useful message then.
    """
    if finished and not calls:
        return (
            "your loop never called the scaler it was given (a scaler of your own does not count: the check "
            "hands you the one to use). Without scaling, small fp16 gradients underflow to zero, and without "
            "the scaler's step an overflowed step is taken anyway"
        )
    if finished:
        for name, why in (
            ("scale", "the loss is not scaled, so small fp16 gradients underflow to zero"),
            (
                "step",
                "the optimizer steps directly, so a step whose gradients hold inf or NaN is not skipped",
            ),
            ("update", "the scale never backs off after an overflow nor grows after clean steps"),
        ):
            if name not in calls:
                return f"your loop never calls the scaler's {name}(): {why}"
    iterations: list[list[str]] = [[]]
    for c in calls:
        iterations[-1].append(c)
        if c == "update":
            iterations.append([])
    last = iterations.pop()
    if last and finished:
        iterations.append(last)
    elif last and not any(ok[: len(last)] == last for ok in _ITERATIONS):
        iterations.append(last)
    for i, it in enumerate(iterations, 1):
        if it not in _ITERATIONS and it.count("scale") > 1:
            return (
                f"in iteration {i} your loop scaled a second loss before the scaler's update() ended the "
                f"iteration (the order was {' -> '.join(it)}); GradScaler's iteration is: {_ORDER}"
            )
        if it not in _ITERATIONS:
            return (
                f"in iteration {i} your loop called the scaler in the order {' -> '.join(it)}; GradScaler's "
                f"iteration is: {_ORDER}"
            )
    if finished and len(iterations) != batches:
        return (
            f"your loop went through {len(iterations)} scaler iterations for {batches} batches: one per batch"
        )
    return None


def _raise_error(label: str, error: ExerciseFailed | None) -> None:
    """Re-raise what the learner's loop raised, naming the cause of GradScaler's most puzzling error."""
    if error is None:
        return
    if "No inf checks were recorded" in str(error):
        fail(
            label,
            "GradScaler's step() found no gradient to check (\"No inf checks were recorded for this "
            'optimizer"): when the scaler stepped, no parameter had a gradient.',
            "look at where your loop resets the gradients, relative to backward and the step.",
        )
    raise error


@register(
    "loss_scaling-broken-loop",
    hints=(
        "Read the loop line by line against the chapter's sections on using a scaler and on the seed's "
        "template: four lines are wrong, missing or extra.",
        "Ask of each line: what does CrossEntropyLoss expect as its input? What happens to .grad from one "
        "iteration to the next? Which gradients does the clipping see, scaled or true ones?",
        "Count how many times the optimizer steps in one iteration, and which of those steps the scaler can "
        "skip when the gradients overflow. Change nothing else: the check compares with the loop fixed in "
        "exactly four places.",
    ),
)
def check_broken_loop(fixed_epoch: Any) -> None:
    """``fixed_epoch(model, optimizer, scaler, batches, max_norm)``: the broken loop with every bug fixed.

    Two runs on identical models against the fixed loop: one at a small scale, where each of the
    four bugs changes the parameters on its own, and one at a scale whose first steps overflow,
    where only a loop that lets the scaler skip them and back off ends right. The scaler handed to
    the loop records its calls, so a loop that leaves the scaler out, or calls it out of order, is
    named as such.
    """
    label = "loss_scaling-broken-loop"
    got = _run_epoch(fixed_epoch, "small", label=label)
    problem = _protocol_problem(got["calls"], _EPOCH_BATCHES, finished=got["error"] is None)
    if problem:
        fail(
            label,
            problem + ".",
            "keep the scaler you are given, and let it go through its whole iteration once per batch.",
        )
    _raise_error(label, got["error"])
    want = _run_epoch(_loop_variant(frozenset()), "small")
    if not _same_run(got, want):
        start = _run_epoch(lambda *args: None, "small")
        if _same_run(got, start):
            fail(
                label,
                "after one epoch of your loop the parameters have not changed at all.",
                "look at what the gradients hold when the optimizer steps.",
            )
        candidates = [*_LOOP_BUGS, "no_clip"]
        for n in range(1, len(candidates) + 1):
            for bugs in itertools.combinations(candidates, n):
                if "clip" in bugs and "no_clip" in bugs:
                    continue
                if _same_run(got, _run_epoch(_loop_variant(frozenset(bugs)), "small")):
                    left = [_LOOP_BUGS.get(b, _NO_CLIP) for b in bugs if b != "no_clip"]
                    what = (
                        f"your loop still behaves as if {plural(len(left), 'bug')} remained: {'; '.join(left)}"
                        if left
                        else ""
                    )
                    if "no_clip" in bugs:
                        what = f"{what}; and {_NO_CLIP}" if left else _NO_CLIP
                    fail(label, what + ".", "fix that, and keep the rest of the loop as it is.")
        fail(
            label,
            "after one epoch your loop's parameters differ from the fixed loop's, and not in a way that one of the "
            "known bugs explains.",
            "change only what is wrong: the loss's input, the gradient zeroing, the clipping, the steps.",
        )
    got = _run_epoch(fixed_epoch, "overflow", label=label)
    _raise_error(label, got["error"])
    want = _run_epoch(_loop_variant(frozenset()), "overflow")
    if not _same_run(got, want):
        fail(
            label,
            f"with init_scale=2^{math.log2(_EPOCH_RUNS['overflow']['init_scale']):.0f}, whose first steps overflow fp16 "
            f"(the fixed loop skips {want['skipped']} of {_EPOCH_BATCHES} steps), your loop ends with other "
            f"parameters or scale (it skipped {got['skipped']}).",
            "an overflowed step must be skipped and nothing else: let the scaler's step() decide, and do not "
            "step, zero or rescale anything yourself.",
        )
