"""Checks for the exercises of chapter ``loss_scaling_in_practice``.

The references are independent of the learner's code and of the chapter's: ``torch.amp.GradScaler``
itself, run side by side with the learner's loop on identical models (the broken loop, gradient
accumulation), and exact fp32 logits for the attention exercise. (The broken loop is the course's
only "find the bugs in a real loop" exercise; the only "write an AMP training step" one is in the
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

# ---- loss_scaling_in_practice-broken-loop --------------------------------------------------------------------


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
    "loss_scaling_in_practice-broken-loop",
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
    label = "loss_scaling_in_practice-broken-loop"
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


# ---- loss_scaling_in_practice-accumulate ---------------------------------------------------------

#: The check's runs: three effective batches each, the micro-batch count a power of two and not, and a
#: scale whose first micro-batches overflow fp16 (so that the scaler must skip a whole effective batch).
#: The small scales matter: gradients left over from an earlier step were unscaled in place, so they
#: enter the next one divided by the scale, which would hide a missing zero_grad at a large scale.
_ACCUMULATE_RUNS: dict[str, dict[str, Any]] = {
    "4 micro-batches": dict(micro=4, init_scale=2.0**4, growth_interval=2000, seed=5),
    "3 micro-batches": dict(micro=3, init_scale=2.0, growth_interval=2000, seed=6),
    "4 micro-batches, overflowing at first": dict(micro=4, init_scale=2.0**20, growth_interval=2, seed=7),
}
_ACCUMULATE_STEPS = 3

_ACCUMULATE_BUGS = {
    "no_divide": "each micro-batch's loss is not divided by the number of micro-batches, so the accumulated "
    "gradient is that many times the whole batch's",
    "zero_each": "the gradients are zeroed before every micro-batch, so only the last one reaches the optimizer",
    "no_zero": "the gradients are never zeroed, so each step also adds up every earlier effective batch",
}


def _accumulate_variant(bugs: frozenset[str]) -> Callable[..., None]:
    """The reference accumulation step, with the given bugs put back in (``"divide_gradients"`` is no
    bug: the other valid way, dividing the unscaled gradients instead of the loss)."""

    def accumulated_step(
        model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, micro_batches: Any
    ) -> None:
        if not bugs & {"zero_each", "no_zero"}:
            optimizer.zero_grad()
        for x, y in micro_batches:
            if "zero_each" in bugs:
                optimizer.zero_grad()
            with torch.autocast(x.device.type, dtype=torch.float16):
                loss = nn.functional.cross_entropy(model(x), y)
            if not bugs & {"no_divide", "divide_gradients"}:
                loss = loss / len(micro_batches)
            scaler.scale(loss).backward()
        if "divide_gradients" in bugs:
            scaler.unscale_(optimizer)
            for p in model.parameters():
                if p.grad is not None:
                    p.grad /= len(micro_batches)
        scaler.step(optimizer)
        scaler.update()

    return accumulated_step


def _run_accumulate(step_fn: Callable[..., Any], run: str, label: str | None = None) -> dict[str, Any]:
    settings = _ACCUMULATE_RUNS[run]
    model = _small_model(settings["seed"])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = _SpyScaler(init_scale=settings["init_scale"], growth_interval=settings["growth_interval"])
    batches = _batches(settings["seed"] + 100, settings["micro"] * _ACCUMULATE_STEPS, batch=16)
    calls: list[list[str]] = []
    error = None
    with device.cpu_threads(1):
        for i in range(_ACCUMULATE_STEPS):
            micro = batches[i * settings["micro"] : (i + 1) * settings["micro"]]
            start = len(scaler.calls)
            try:
                if label:
                    call(label, step_fn, model, opt, scaler, micro)
                else:
                    step_fn(model, opt, scaler, micro)
            except ExerciseFailed as exc:
                error = exc
            calls.append(scaler.calls[start:])
            if error is not None:
                break
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "scale": scaler.get_scale(),
        "calls": calls,
        "skipped": scaler.skipped,
        "error": error,
        "micro": settings["micro"],
    }


#: How far an accumulated step may move the weights from the reference's, relative to how far the
#: reference moved them: rounding differs between valid answers (dividing the loss or the gradients
#: by the micro-batch count, in fp16 or fp32), by a few parts in 10^4 at most here.
_ACCUMULATE_TOLERANCE = 1e-2


def _same_update(got: dict[str, Any], want: dict[str, Any], start: dict[str, Any]) -> bool:
    """Whether two runs moved the weights alike (see _ACCUMULATE_TOLERANCE) and end at the same scale."""
    if got["scale"] != want["scale"] or got["skipped"] != want["skipped"]:
        return False
    if any(p.shape != q.shape or not torch.isfinite(p).all() for p, q in zip(got["params"], want["params"])):
        return False
    moved = [(p - s, q - s) for p, q, s in zip(got["params"], want["params"], start["params"])]
    want_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(w) for _, w in moved]))
    gap = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g - w) for g, w in moved]))
    if want_norm == 0:
        return bool(gap == 0)
    return bool(gap <= _ACCUMULATE_TOLERANCE * want_norm)


def _accumulate_protocol(calls: list[list[str]], micro: int) -> str | None:
    """What is wrong with the scaler calls of each effective batch, or None if each went
    ``scale`` once per micro-batch, optionally ``unscale_``, then ``step`` and ``update`` once."""
    want = ["scale"] * micro
    for i, got in enumerate(calls, 1):
        if got in (want + ["step", "update"], want + ["unscale_", "step", "update"]):
            continue
        if not got:
            return (
                f"in effective batch {i} your function never called the scaler it was given: the losses are not "
                "scaled, and an overflowed step would not be skipped"
            )
        if got.count("update") > 1 or got.count("step") > 1:
            return (
                f"for one effective batch of {micro} micro-batches your function called the scaler in the order "
                f"{' -> '.join(got)}: it stepped or updated more than once, so the micro-batches were not "
                "accumulated into one step (and the scale could change between them)"
            )
        return (
            f"for one effective batch of {micro} micro-batches your function called the scaler in the order "
            f"{' -> '.join(got)}; the accumulation pattern scales each micro-batch's loss, then steps and "
            "updates once"
        )
    return None


@register(
    "loss_scaling_in_practice-accumulate",
    hints=(
        "Reread the section on gradient accumulation: what happens to .grad when backward() runs several times "
        "without zeroing in between?",
        "The accumulated step must move the weights as one step on the whole effective batch would. The loss of "
        "the whole batch is a mean over all its items: how does each micro-batch's mean enter it?",
        "Count, for one effective batch, how many times each scaler method should run, and when the gradients "
        "are reset.",
    ),
)
def check_accumulate(accumulated_step: Any) -> None:
    """``accumulated_step(model, optimizer, scaler, micro_batches)``: one optimizer step over the micro-batches.

    Three runs of three effective batches each, on identical models against the reference step, with
    a scaler that records its calls: four and three micro-batches at a scale that never overflows,
    and four at a scale whose first effective batches overflow and must be skipped whole.
    """
    label = "loss_scaling_in_practice-accumulate"
    for run in _ACCUMULATE_RUNS:
        got = _run_accumulate(accumulated_step, run, label=label)
        problem = _accumulate_protocol(got["calls"], got["micro"])
        if problem and got["error"] is None:
            fail(
                label,
                problem + ".",
                "keep the scaler you are given, and let it scale every micro-batch's loss.",
            )
        _raise_error(label, got["error"])
        want = _run_accumulate(_accumulate_variant(frozenset()), run)
        start = _run_accumulate(lambda *args: None, run)
        if _same_update(got, want, start):
            continue
        # Dividing the gradients after unscaling is valid too; its fp16 gradients are k times larger than
        # with the loss divided, so at a scale near overflow it can skip other steps.
        if _same_update(
            got, _run_accumulate(_accumulate_variant(frozenset({"divide_gradients"})), run), start
        ):
            continue
        for n in (1, 2):
            for bugs in itertools.combinations(_ACCUMULATE_BUGS, n):
                if {"zero_each", "no_zero"} <= set(bugs):
                    continue
                if _same_update(got, _run_accumulate(_accumulate_variant(frozenset(bugs)), run), start):
                    fail(
                        label,
                        f"with {got['micro']} micro-batches per step, your function behaves as if "
                        f"{'; and '.join(_ACCUMULATE_BUGS[b] for b in bugs)}.",
                        "compare the step your function takes with one step on the whole effective batch.",
                    )
        fail(
            label,
            f"in the run with {run}, after {_ACCUMULATE_STEPS} effective batches your model's parameters or the "
            f"scale differ from the reference's (scale {got['scale']:g}, expected {want['scale']:g}; skipped "
            f"{got['skipped']} steps, expected {want['skipped']}).",
            "one effective batch is one optimizer step: its gradient is the whole batch's, and the scaler decides "
            "whether it is taken.",
        )


# ---- loss_scaling_in_practice-safe-logits --------------------------------------------------------

#: (queries, keys, head dimension, size of the inputs, seed): the first two overflow fp16 when the
#: product is computed before the division by sqrt(d), while the logits themselves fit; the third
#: overflows nothing, with fewer keys than queries.
_LOGIT_CASES = ((8, 8, 64, 40.0, 1), (12, 6, 16, 80.0, 2), (6, 10, 32, 1.0, 3))
_LOGIT_TOLERANCE = 5e-3


def _logit_inputs(n: int, m: int, d: int, size: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp16 queries and keys; each key close to a query, so that some products are near size^2 * d."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, d, generator=gen) * size
    k = q[torch.arange(m) % n] + 0.1 * size * torch.randn(m, d, generator=gen)
    return q.half(), k.half()


@register(
    "loss_scaling_in_practice-safe-logits",
    hints=(
        "Reread the remedies for the overflowing attention head: which of them change how the logits are "
        "computed, without changing what they are?",
        "The division by sqrt(d) makes the logits fit fp16; the trouble is the value that exists before it. Where "
        "could the division happen instead, or in which format could that intermediate value live?",
    ),
)
def check_safe_logits(safe_logits: Any) -> None:
    """``safe_logits(q, k)``: the logits ``q @ k.T / sqrt(d)`` of fp16 queries and keys, finite and right.

    Compared with the exact logits (computed in float64) on three inputs, two of which overflow fp16
    when the product is formed before the division.
    """
    label = "loss_scaling_in_practice-safe-logits"
    for n, m, d, size, seed in _LOGIT_CASES:
        q, k = _logit_inputs(n, m, d, size, seed)
        q_in, k_in = q.clone(), k.clone()
        got = call(label, safe_logits, q_in, k_in)
        case = f"queries of shape {tuple(q.shape)} and keys of shape {tuple(k.shape)} (fp16, d = {d})"
        if not (torch.equal(q_in, q) and torch.equal(k_in, k)):
            fail(
                label,
                f"on {case}, your function changed its inputs in place.",
                "compute new tensors from q and k; the caller still needs them.",
            )
        if not isinstance(got, torch.Tensor) or not got.is_floating_point():
            fail(
                label,
                f"on {case}, expected a floating-point tensor, got {type(got).__name__}.",
                "return the logits.",
            )
        if tuple(got.shape) != (n, m):
            fail(
                label,
                f"on {case}, expected logits of shape {(n, m)} (one per query and key), got {tuple(got.shape)}.",
                "each query is multiplied with every key.",
            )
        exact = q.double() @ k.double().T / math.sqrt(d)
        if not torch.isfinite(got).all():
            fail(
                label,
                f"on {case}, {int((~torch.isfinite(got)).sum())} of your logits are inf or NaN, though every exact "
                f"logit is at most {exact.abs().max().item():.4g}, well inside fp16's range.",
                "an fp16 value overflowed on the way to the result, even if the result would fit.",
            )
        g = got.double()
        error = ((g - exact).abs().max() / exact.abs().max()).item()
        if error > _LOGIT_TOLERANCE:
            ratio = (g.abs().max() / exact.abs().max()).item()
            why = ""
            if math.isclose(ratio, math.sqrt(d), rel_tol=0.01):
                why = " Your logits are sqrt(d) times too large: scaled dot-product attention divides by sqrt(d)."
            elif math.isclose(ratio, 1 / math.sqrt(d), rel_tol=0.01):
                why = " Your logits are sqrt(d) times too small: they are divided by sqrt(d) once, not twice."
            fail(
                label,
                f"on {case}, your logits differ from the exact ones by {error:.2g} of the largest logit (at most "
                f"{_LOGIT_TOLERANCE:g} is accepted).{why}",
                "compute q k^T / sqrt(d) itself: clamping or replacing infinities changes the values.",
            )


# ---- loss_scaling_in_practice-watch --------------------------------------------------------------


def _reference_collapse(init_scale: float, scales: list[float], floor: float, max_drops: int) -> int | None:
    previous, in_row = init_scale, 0
    for t, scale in enumerate(scales, 1):
        in_row = in_row + 1 if scale < previous else 0
        previous = scale
        if scale < floor or in_row >= max_drops:
            return t
    return None


def _halving(start: float, n: int) -> list[float]:
    return [start * 0.5**t for t in range(1, n + 1)]


#: (what the log shows, init_scale, scales, floor, max_drops).
_WATCH_CASES: tuple[tuple[str, float, list[float], float, int], ...] = (
    ("a scale that halves at every step from 2^16", 2.0**16, _halving(2.0**16, 20), 1.0, 12),
    (
        "a healthy saw-tooth: one drop, clean steps, growth, one drop",
        2.0**16,
        [2.0**15] + [2.0**15] * 4 + [2.0**16, 2.0**15] + [2.0**15] * 4 + [2.0**16, 2.0**15] * 3,
        1.0,
        12,
    ),
    (
        "drops interrupted by one unchanged step, then drops again",
        2.0**10,
        _halving(2.0**10, 3) + [2.0**7] + _halving(2.0**7, 4),
        1.0,
        4,
    ),
    (
        "a scale that sinks below the floor with growth in between",
        2.0**3,
        [2.0**2, 2.0**3, 2.0**2, 2.0**1, 2.0**2, 2.0**1, 2.0**0, 2.0**1, 2.0**0, 2.0**-1, 2.0**0],
        1.0,
        12,
    ),
    (
        "a scale that falls exactly to the floor and stays there",
        2.0**2,
        [2.0**1, 2.0**0, 2.0**0, 2.0**0],
        1.0,
        12,
    ),
    ("the first update already drops, twice in a row is too many", 2.0**8, [2.0**7, 2.0**6, 2.0**6], 1.0, 2),
    ("a clean log", 2.0**16, [2.0**16] * 30, 1.0, 12),
)


@register(
    "loss_scaling_in_practice-watch",
    hints=(
        "Reread the section on watching the scale: which two signs mean a collapse, and when does a drop "
        "count as one in a row?",
        "Step t's scale is compared with the one before it; for the first step, what came before is the initial "
        "scale. A step whose scale did not go down ends a run of drops.",
        "Check the floor with the comparison the exercise states, and return the step number, counting from 1.",
    ),
)
def check_watch(first_collapse: Any) -> None:
    """``first_collapse(init_scale, scales, floor, max_drops)``: the first step (from 1) at which the scale is
    below ``floor`` or has dropped ``max_drops`` times in a row, or None; compared with a reference on
    logs of collapsing and healthy runs."""
    label = "loss_scaling_in_practice-watch"
    for what, init_scale, scales, floor, max_drops in _WATCH_CASES:
        given = list(scales)
        got = call(label, first_collapse, init_scale, given, floor=floor, max_drops=max_drops)
        want = _reference_collapse(init_scale, scales, floor, max_drops)
        case = f"on {what} (floor {floor:g}, max_drops {max_drops})"
        if given != scales:
            fail(
                label, f"{case}, your function changed the log it was given.", "read the log; do not edit it."
            )
        if want is None and got is None:
            continue
        if want is None:
            fail(
                label,
                f"{case}, you report a collapse at step {got!r}, but the run is healthy.",
                "a single drop followed by clean steps is a scaler doing its job; only a long run of drops, or a "
                "scale below the floor, is a collapse.",
            )
        if isinstance(got, bool) or not isinstance(got, int):
            fail(
                label,
                f"{case}, expected the step number {want} (an int), got {got!r}.",
                "return the step at which the watch fires, counting from 1, or None.",
            )
        if got != want:
            fail(
                label,
                f"{case}, you report step {got}, expected step {want}.",
                "count the drops from the initial scale on, reset the count on any step that is not a drop, and "
                "compare with the floor strictly.",
            )
