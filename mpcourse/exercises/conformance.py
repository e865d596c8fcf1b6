"""Conformance: does a loss scaler behave exactly like ``torch.amp.GradScaler``?

:func:`compare_with_gradscaler` trains two identical copies of a small model, one with the scaler
under test and one with ``GradScaler``, on the same batches, writing the same infs and NaNs into
their scaled gradients (:func:`event_schedule`), and tabulates scale, skip decision, growth tracker
and parameters step by step; :func:`first_divergence` says in words where they first differ. The
loss_scaling chapter runs it on :class:`mpcourse.loss_scaling.DynamicLossScaler`, and the
exercise checks run it on the learner's scaler.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd
import torch
from torch import nn

from ..device import cpu_threads

#: What :func:`compare_with_gradscaler` can inject into a step's scaled gradients.
EVENTS: tuple[str, ...] = ("clean", "inf", "-inf", "nan")


def event_schedule(
    steps: int, *, seed: int = 0, growth_interval: int = 2000, p_bad: float = 0.05
) -> list[str]:
    """A random sequence of step events: runs of clean steps (some longer than ``growth_interval``,
    so the scale grows) separated by bursts of steps whose gradients hold inf or NaN.

    ``p_bad`` is the probability that a run of clean steps ends after any given step.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 <= p_bad <= 1:
        raise ValueError(f"p_bad must be a probability in [0, 1], got {p_bad}")
    gen = torch.Generator().manual_seed(seed)
    events: list[str] = []
    while len(events) < steps:
        if torch.rand((), generator=gen).item() < 0.2:  # now and then a clean run past a growth boundary
            run = growth_interval + int(torch.randint(0, growth_interval + 1, (), generator=gen))
        elif p_bad > 0:  # geometric: the run ends after each step with probability p_bad
            u = 1.0 - torch.rand((), generator=gen, dtype=torch.float64).item()
            run = 1 + int(math.log(u) / math.log1p(-p_bad)) if p_bad < 1 else 0
        else:
            run = steps
        events += ["clean"] * run
        burst = int(torch.randint(1, 3, (), generator=gen))
        events += [EVENTS[1 + int(torch.randint(0, 3, (), generator=gen))] for _ in range(burst)]
    return events[:steps]


def compare_with_gradscaler(
    make_scaler: Callable[..., Any],
    *,
    steps: int = 200,
    seed: int = 0,
    device: str | torch.device = "cpu",
    init_scale: float = 2.0**16,
    growth_factor: float = 2.0,
    backoff_factor: float = 0.5,
    growth_interval: int = 8,
    events: list[str] | None = None,
    clip: float | None = None,
    checkpoint_at: Iterable[int] = (),
    optimizer: str = "adam",
    autocast: bool = False,
) -> pd.DataFrame:
    """Train two identical copies of a small model, one with ``make_scaler(...)`` and one with
    ``torch.amp.GradScaler``, on the same batches and the same injected infs/NaNs; return a
    per-step table comparing them.

    ``make_scaler(init_scale=..., growth_factor=..., backoff_factor=..., growth_interval=...)``
    must return a scaler with GradScaler's methods. Each step: forward (under fp16 autocast with
    ``autocast=True``), ``scale(loss).backward()``, the step's event written into one scaled
    gradient element (``"inf"``, ``"-inf"``, ``"nan"``, or nothing for ``"clean"``), then, with
    ``clip``, ``unscale_`` and ``clip_grad_norm_``; then ``step`` and ``update``. After each step in
    ``checkpoint_at`` both scalers go through ``state_dict()`` into fresh instances.

    Columns: ``step``, ``event``, ``scale`` / ``scale_ref`` (after ``update``), ``skipped`` /
    ``skipped_ref`` (the parameters did not change), ``tracker`` / ``tracker_ref`` (the growth
    tracker from ``state_dict()``, NaN if the scaler has none), ``params_equal`` (bit for bit).
    :func:`first_divergence` reads it.
    """
    dev = torch.device(device)
    settings = dict(
        init_scale=init_scale,
        growth_factor=growth_factor,
        backoff_factor=backoff_factor,
        growth_interval=growth_interval,
    )
    events = (
        events if events is not None else event_schedule(steps, seed=seed, growth_interval=growth_interval)
    )
    if len(events) < steps or any(e not in EVENTS for e in events):
        raise ValueError(f"events must hold at least {steps} entries from {EVENTS}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        base = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5))
    optimizers = {
        "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
        "sgd": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9),
    }
    if optimizer not in optimizers:
        raise ValueError(f"unknown optimizer {optimizer!r}; accepted: {', '.join(optimizers)}")
    checkpoints = set(checkpoint_at)

    def reference(**kw: Any) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(dev.type, **kw)

    runs = []
    for factory in (make_scaler, reference):
        model = copy.deepcopy(base).to(dev)
        runs.append(
            {
                "factory": factory,
                "scaler": factory(**settings),
                "model": model,
                "opt": optimizers[optimizer](list(model.parameters())),
            }
        )
    gen = torch.Generator().manual_seed(seed + 1)
    n_params = len(list(base.parameters()))
    rows = []
    with cpu_threads(1):  # tensors this small run faster on one thread
        for step in range(1, steps + 1):
            x = torch.randn(16, 12, generator=gen).to(dev)
            y = torch.randint(0, 5, (16,), generator=gen).to(dev)
            event = events[step - 1]
            which = int(torch.randint(0, n_params, (), generator=gen))
            where = torch.rand((), generator=gen).item()
            record: dict[str, Any] = {"step": step, "event": event}
            for run, suffix in zip(runs, ("", "_ref")):
                scaler, model, opt = run["scaler"], run["model"], run["opt"]
                opt.zero_grad(set_to_none=True)
                with torch.autocast(dev.type, dtype=torch.float16, enabled=autocast):
                    logits = model(x)
                loss = nn.functional.cross_entropy(logits.float(), y)
                scaler.scale(loss).backward()
                if event != "clean":
                    flat = list(model.parameters())[which].grad.view(-1)
                    flat[int(where * flat.numel())] = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}[
                        event
                    ]
                if clip is not None:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                before = [p.detach().clone() for p in model.parameters()]
                scaler.step(opt)
                scaler.update()
                record["scale" + suffix] = float(scaler.get_scale())
                record["skipped" + suffix] = all(
                    torch.equal(a, p) for a, p in zip(before, model.parameters())
                )
                state = scaler.state_dict() if callable(getattr(scaler, "state_dict", None)) else {}
                record["tracker" + suffix] = state.get("_growth_tracker", math.nan)
                if step in checkpoints:
                    run["scaler"] = run["factory"](**settings)
                    run["scaler"].load_state_dict(state)
            record["params_equal"] = all(
                torch.equal(a, b)
                for a, b in zip(runs[0]["model"].parameters(), runs[1]["model"].parameters())
            )
            rows.append(record)
    return pd.DataFrame(rows)


def first_divergence(trace: pd.DataFrame) -> str | None:
    """The first step where a scaler and GradScaler differ, in words; None if they never do."""
    checks = [
        ("skipped", "skipped the step", "took the step"),
        ("scale", None, None),
        ("tracker", None, None),
    ]
    for _, row in trace.iterrows():
        for column, yes, no in checks:
            mine, ref = row[column], row[column + "_ref"]
            if column == "tracker" and pd.isna(mine):
                continue
            if mine != ref:
                if yes is not None:
                    return (
                        f"step {row['step']} (event: {row['event']}): your scaler {yes if mine else no}, "
                        f"GradScaler {yes if ref else no}"
                    )
                what = "scale" if column == "scale" else "growth tracker"
                return (
                    f"step {row['step']} (event: {row['event']}): after update() your {what} is {mine!r}, "
                    f"GradScaler's is {ref!r}"
                )
        if not row["params_equal"]:
            return f"step {row['step']} (event: {row['event']}): the parameters differ from GradScaler's run"
    return None


__all__ = ["EVENTS", "compare_with_gradscaler", "event_schedule", "first_divergence"]
