"""Checks for the training-loop exercises of chapter ``loss_scaling``: clipping with a scaler, and the broken loop.

Registered when :mod:`mpcourse.exercises.loss_scaling` loads. The reference is ``torch.amp.GradScaler``
itself, run side by side with the learner's step or loop on identical models.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import device
from . import ExerciseFailed, call, fail, register

# ---- loss_scaling-clip ---------------------------------------------------------------------------


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


def _clipped_step_variant(kind: str) -> Callable[..., float]:
    """The reference ``clipped_step`` (``kind="right"``) and the usual wrong ones."""

    def step(
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: Any,
        x: torch.Tensor,
        y: torch.Tensor,
        max_norm: float,
    ) -> float:
        if kind != "no-zero-grad":
            optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.float16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        scaler.scale(loss).backward()
        if kind == "clip-then-unscale":
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            scaler.unscale_(optimizer)
        elif kind == "no-unscale":
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        else:
            scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        if kind == "optimizer-step":
            optimizer.step()
        else:
            scaler.step(optimizer)
        scaler.update()
        return float(norm)

    return step


_CLIP_MISTAKES = {
    "clip-then-unscale": "clipping the scaled gradients, then unscaling: the clip threshold is then max_norm / scale",
    "no-unscale": "clipping the scaled gradients (scaler.step unscales them only afterwards)",
    "no-zero-grad": "not zeroing the gradients: each step adds this batch's gradients to all the previous ones",
    "optimizer-step": "calling optimizer.step() directly: a step whose gradients hold inf or NaN is not skipped",
}


def _run_steps(
    step_fn: Callable[..., Any], init_scale: float, seed: int, label: str | None = None
) -> dict[str, Any]:
    model = _small_model(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=2)
    norms = []
    with device.cpu_threads(1):
        for x, y in _batches(seed + 1, 5):
            args = (model, opt, scaler, x, y, 0.5)
            norms.append(call(label, step_fn, *args) if label else step_fn(*args))
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "norms": norms,
        "scale": scaler.get_scale(),
    }


def _same_run(a: dict[str, Any], b: dict[str, Any]) -> bool:
    params = all(
        p.shape == q.shape and torch.allclose(p, q, rtol=1e-4, atol=1e-6, equal_nan=True)
        for p, q in zip(a["params"], b["params"])
    )
    norms = np.allclose(
        np.asarray(a["norms"], dtype=float), np.asarray(b["norms"], dtype=float), rtol=1e-4, equal_nan=True
    )
    return params and norms and a["scale"] == b["scale"]


@register("loss_scaling-clip")
def check_clip(clipped_step: Any) -> None:
    """``clipped_step(model, optimizer, scaler, x, y, max_norm) -> float``: one fp16-autocast step with
    gradient clipping done right; returns the total norm of the true (unscaled) gradients before clipping."""
    label = "loss_scaling-clip"
    hint = (
        "zero the gradients; forward under torch.autocast(x.device.type, dtype=torch.float16); loss = "
        "F.cross_entropy(logits.float(), y); scaler.scale(loss).backward(); scaler.unscale_(optimizer); "
        "norm = clip_grad_norm_(...); scaler.step(optimizer); scaler.update()."
    )
    for init_scale, what in (
        (2.0**12, "a scale with no overflow"),
        (2.0**40, "a scale so large that the first steps overflow"),
    ):
        seed = 7
        want = _run_steps(_clipped_step_variant("right"), init_scale, seed)
        got = _run_steps(clipped_step, init_scale, seed, label=label)
        if not all(
            isinstance(n, (int, float, np.floating)) or (isinstance(n, torch.Tensor) and n.numel() == 1)
            for n in got["norms"]
        ):
            fail(label, "return the total gradient norm as a number (clip_grad_norm_ returns it).", hint)
        got["norms"] = [float(n) for n in got["norms"]]
        if _same_run(got, want):
            continue
        for kind, mistake in _CLIP_MISTAKES.items():
            if _same_run(got, _run_steps(_clipped_step_variant(kind), init_scale, seed)):
                fail(label, f"with {what}, your step matches a common mistake: {mistake}.", hint)
        ratios = np.asarray(got["norms"], float) / np.asarray(want["norms"], float)
        ratios = ratios[np.isfinite(ratios)]
        if (
            ratios.size
            and np.all(ratios > 1)
            and np.allclose(np.log2(ratios), np.round(np.log2(ratios)), atol=1e-3)
        ):
            fail(
                label,
                f"with {what}, you return the norm of the scaled gradients.",
                "return the norm after unscale_().",
            )
        fail(
            label,
            f"with {what}, five steps of your function end with parameters, norms or scale that differ from "
            "the same steps done right.",
            hint,
        )


# ---- loss_scaling-broken-loop --------------------------------------------------------------------

_LOOP_BUGS = {
    "softmax": "the model's output goes through softmax before CrossEntropyLoss, which applies log-softmax itself",
    "zero_grad": "the gradients are never zeroed, so every step uses the sum of all gradients so far",
    "clip": "the gradients are clipped while still scaled (call scaler.unscale_(optimizer) before clipping)",
    "double_step": "optimizer.step() runs after scaler.step(): every step is taken twice, and overflowed ones anyway",
}


def _loop_variant(bugs: frozenset[str]) -> Callable[..., None]:
    """The fixed loop, with the given bugs put back in."""

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


def _run_epoch(epoch_fn: Callable[..., Any], run: str = "small", label: str | None = None) -> dict[str, Any]:
    model = _small_model(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = _SpyScaler(**_EPOCH_RUNS[run])
    args = (model, opt, scaler, _batches(4, _EPOCH_BATCHES), 1.0)
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
        "norms": [],
        "scale": scaler.get_scale(),
        "calls": scaler.calls,
        "skipped": scaler.skipped,
        "error": error,
    }


_ORDER = (
    "scaler.scale(loss).backward(), scaler.unscale_(optimizer), clip, scaler.step(optimizer), scaler.update()"
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
            "your loop never called the scaler it was given (if you made a scaler of your own, use the one "
            "passed in). Without scaler.scale() small fp16 gradients underflow to zero, and without "
            "scaler.step() a step whose gradients overflowed is taken anyway"
        )
    if finished:
        for name, why in (
            ("scale", "the loss is not scaled, so small fp16 gradients underflow to zero"),
            (
                "step",
                "optimizer.step() runs directly, so a step whose gradients hold inf or NaN is not skipped",
            ),
            ("update", "the scale never backs off after an overflow nor grows after clean steps"),
        ):
            if name not in calls:
                return f"your loop never calls scaler.{name}(): {why}"
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
                f"in iteration {i} your loop called scaler.scale() again before scaler.update() ended the "
                f"iteration (the order was {' -> '.join(it)}); each iteration must call, in this order: {_ORDER}"
            )
        if it not in _ITERATIONS:
            return (
                f"in iteration {i} your loop called the scaler in the order {' -> '.join(it)}; each iteration "
                f"must call, in this order: {_ORDER}"
            )
    if finished and len(iterations) != batches:
        return (
            f"your loop went through {len(iterations)} scaler iterations for {batches} batches: one per batch"
        )
    return None


@register("loss_scaling-broken-loop")
def check_broken_loop(fixed_epoch: Any) -> None:
    """``fixed_epoch(model, optimizer, scaler, batches, max_norm)``: the broken loop with every bug fixed.

    Two runs on identical models against the fixed loop: one at a small scale, where each of the
    four bugs changes the parameters on its own, and one at a scale whose first steps overflow,
    where only a loop that lets the scaler skip them and back off ends right. The scaler handed to
    the loop records its calls, so a loop that leaves the scaler out, or calls it out of order, is
    named as such.
    """
    label = "loss_scaling-broken-loop"
    hint = f"keep the scaler and call it in this order in every iteration: {_ORDER}."
    got = _run_epoch(fixed_epoch, "small", label=label)
    problem = _protocol_problem(got["calls"], _EPOCH_BATCHES, finished=got["error"] is None)
    if problem:
        fail(label, problem + ".", hint)
    if got["error"] is not None:
        raise got["error"]
    want = _run_epoch(_loop_variant(frozenset()), "small")
    if not _same_run(got, want):
        for n in range(1, len(_LOOP_BUGS) + 1):
            for bugs in itertools.combinations(_LOOP_BUGS, n):
                if _same_run(got, _run_epoch(_loop_variant(frozenset(bugs)), "small")):
                    left = "; ".join(_LOOP_BUGS[b] for b in bugs)
                    raise ExerciseFailed(
                        f"{label}: your loop still behaves as if {len(bugs)} bug{'s' if n > 1 else ''} remained: {left}.\n"
                        "Hint: fix that, and keep the rest of the loop as it is."
                    )
        fail(
            label,
            "after one epoch your loop's parameters differ from the fixed loop's, and not in a way that one of the "
            "known bugs explains.",
            "change only what is wrong: the loss, the gradient zeroing, the clipping, the steps.",
        )
    got = _run_epoch(fixed_epoch, "overflow", label=label)
    if got["error"] is not None:
        raise got["error"]
    want = _run_epoch(_loop_variant(frozenset()), "overflow")
    if not _same_run(got, want):
        fail(
            label,
            f"with init_scale=2^{math.log2(_EPOCH_RUNS['overflow']['init_scale']):.0f}, whose first steps overflow fp16 "
            f"(the fixed loop skips {want['skipped']} of {_EPOCH_BATCHES} steps), your loop ends with other "
            f"parameters or scale (it skipped {got['skipped']}).",
            "an overflowed step must be skipped and nothing else: let scaler.step() decide, and do not step, "
            "zero or rescale anything yourself.",
        )
