"""Checks for the training exercises of chapter ``bf16``: Kahan-compensated updates and the fixed seed loop.

Registered when :mod:`mpcourse.exercises.bf16` loads. The references are float64 sums of the updates and
torch's own training step under ``torch.autocast`` for the corrected loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import formats
from . import call, fail, is_tensor_pair, register

BF16 = formats.BF16


# ---- bf16-kahan -----------------------------------------------------------------------------------


def _run_kahan(kahan_update: Any, label: str, w0: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
    param = w0.to(torch.bfloat16)
    comp = torch.zeros_like(param)
    for k in range(updates.shape[0]):
        result = call(label, kahan_update, param.clone(), updates[k].clone(), comp.clone())
        if not is_tensor_pair(result):
            fail(
                label,
                f"you returned {type(result).__name__}, not a pair of tensors.",
                "return (new_param, new_compensation), both bf16 tensors shaped like the parameter.",
            )
        param, comp = result
        if param.dtype != torch.bfloat16 or comp.dtype != torch.bfloat16:
            fail(
                label,
                f"you returned tensors of dtypes {param.dtype} and {comp.dtype}.",
                "the weight and its compensation both stay bf16: that is the whole point (4 bytes per weight).",
            )
        if param.shape != w0.shape or comp.shape != w0.shape:
            fail(
                label,
                f"you returned shapes {tuple(param.shape)} and {tuple(comp.shape)}; the parameter has "
                f"shape {tuple(w0.shape)}.",
                "update element-wise.",
            )
    return param


@register("bf16-kahan")
def check_kahan(kahan_update: Any) -> None:
    """``kahan_update(param, update, compensation) -> (param, compensation)`` for bf16 weights."""
    label = "bf16-kahan"
    hint = (
        "add the compensation to the update (in fp32), add that to the weight (in fp32), round the result to "
        "bf16 for the new weight, and keep what the rounding dropped, (fp32 result) - (new bf16 weight), "
        "as the new compensation."
    )
    # 1. A large update with no history is an ordinary rounding to nearest.
    w0 = torch.tensor([1.0, -3.5, 1000.0, 2.0**-20])
    big = torch.tensor([[0.25, -0.75, 37.0, 2.0**-22]])
    got = _run_kahan(kahan_update, label, w0, big)
    want = (w0.double() + big[0].double()).float().to(torch.bfloat16)
    if not torch.equal(got, want):
        fail(
            label,
            f"one large update from a zero compensation gave {got.tolist()}, expected {want.tolist()} "
            "(the sum rounded to nearest bf16).",
            hint,
        )
    # 2. Many small updates, each far below half a gap: the compensation must carry them.
    gen = torch.Generator().manual_seed(2)
    w0 = torch.tensor([1.0, -2.0, 0.3, 40.0, -0.01])
    steps = 1000
    small = (w0.abs() * 2.0**-11).expand(steps, -1).clone()  # each update is 1/16 to 1/8 of a gap
    exact = w0.to(torch.bfloat16).double() + small.double().sum(dim=0)
    got = _run_kahan(kahan_update, label, w0, small).double()
    gap = torch.from_numpy(BF16.spacing(exact.numpy()))
    naive = w0.to(torch.bfloat16).double()
    error = ((got - exact).abs() / gap).max().item()
    if torch.equal(got, naive):
        fail(
            label,
            f"after {steps} updates of an eighth of a gap or less the weights have not moved at all: the "
            "compensation is not fed back into the next update, or it has the wrong sign (it must be what the "
            "rounding dropped: the fp32 target minus the new bf16 weight).",
            hint,
        )
    if error > 2:
        overshoot = ((got - naive) / (exact - naive)).mean().item()
        if overshoot > 1.5:
            fail(
                label,
                f"after {steps} small updates the weights moved {overshoot:.1f} times as far as they "
                "should: the compensation has the wrong sign (it must be what was dropped: target - rounded).",
                hint,
            )
        fail(
            label,
            f"after {steps} small updates the weights are {error:.1f} gaps from the exact sum "
            "(at most 2 is expected).",
            hint,
        )
    # 3. Random updates of both signs and many sizes.
    w0 = torch.randn(64, generator=gen)
    updates = (
        torch.randn(300, 64, generator=gen)
        * w0.abs()
        * 2.0 ** torch.randint(-14, -6, (300, 64), generator=gen)
    )
    exact = w0.to(torch.bfloat16).double() + updates.double().sum(dim=0)
    got = _run_kahan(kahan_update, label, w0, updates).double()
    gap = torch.from_numpy(BF16.spacing(exact.numpy()))
    error = ((got - exact).abs() / gap).max().item()
    if error > 2:
        fail(
            label,
            f"after 300 random updates of both signs, a weight is {error:.1f} gaps away from the exact "
            "sum (at most 2 is expected).",
            hint,
        )


# ---- bf16-fix-b2 ----------------------------------------------------------------------------------


def _b2_model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 5))


def _b2_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(8)
    return [
        (torch.randn(16, 10, generator=gen) * 3, torch.randint(0, 5, (16,), generator=gen)) for _ in range(3)
    ]


def _b2_reference(variant: str) -> tuple[list[torch.Tensor], list[float]]:
    """Parameters and losses after three steps of a training loop, done right or in a known wrong way."""
    model = _b2_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(variant.removesuffix("-accumulate"), None)
    for x, y in _b2_batches():
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        if not variant.endswith("-accumulate"):
            opt.zero_grad()
        losses.append(loss.item())
    return [p.detach().clone() for p in model.parameters()], losses


def _distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x.double() - y.double()).abs().max().item() for x, y in zip(a, b))


def _autocast_on() -> bool:
    """Whether autocast is enabled for the CPU or CUDA on this thread (torch >= 2.4's spelling)."""
    return any(torch.is_autocast_enabled(device_type) for device_type in ("cpu", "cuda"))


class _StepWatch:
    """What a training step does that its result cannot show: the dtypes the model's inputs arrive in
    (a forward pre-hook), and whether autocast is still on while gradients are computed (a hook on each
    parameter's gradient runs inside backward, on the thread that called it for CPU tensors).

    A GradScaler and a backward under autocast leave the parameters exactly as a correct bf16 step does,
    and casting the inputs changes them by less than any tolerance could separate, so only watching
    the step tells them apart.
    """

    def __init__(self, model: nn.Module) -> None:
        self.input_dtypes: set[torch.dtype] = set()
        self.backward_under_autocast = False
        self.handles = [model.register_forward_pre_hook(self._forward)]
        self.handles += [p.register_hook(self._gradient) for p in model.parameters()]

    def _forward(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.input_dtypes.update(a.dtype for a in args if isinstance(a, torch.Tensor))

    def _gradient(self, grad: torch.Tensor) -> None:
        self.backward_under_autocast |= _autocast_on()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@contextlib.contextmanager
def _grad_scaler_uses() -> Iterator[list[str]]:
    """Record every GradScaler built or used meanwhile (torch.amp's class, which the deprecated
    torch.cuda.amp and torch.cpu.amp ones subclass), however the learner imported it."""
    from torch.amp.grad_scaler import GradScaler

    used: list[str] = []
    originals = {name: getattr(GradScaler, name) for name in ("__init__", "scale", "step", "unscale_")}

    def spy(name: str):
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            used.append(name)
            return originals[name](self, *args, **kwargs)

        return wrapper

    for name in originals:
        setattr(GradScaler, name, spy(name))
    try:
        yield used
    finally:
        for name, original in originals.items():
            setattr(GradScaler, name, original)


@register("bf16-fix-b2")
def check_fix_b2(bf16_train_step: Any) -> None:
    """``bf16_train_step(model, optimizer, loss_fn, inputs, targets) -> float``: one correct bf16 AMP step."""
    label = "bf16-fix-b2"
    hint = (
        "keep the model in fp32 (no .half(), no .bfloat16()); run the forward pass and the loss under "
        "torch.autocast(inputs.device.type, dtype=torch.bfloat16); call backward() outside it; step the "
        "optimizer and zero the gradients; no GradScaler is needed with bf16. Return loss.item()."
    )
    model = _b2_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss_fn = nn.CrossEntropyLoss()
    start = [p.detach().clone() for p in model.parameters()]
    losses = []
    watch = _StepWatch(model)
    try:
        with _grad_scaler_uses() as scaler_uses:
            for x, y in _b2_batches():
                losses.append(call(label, bf16_train_step, model, opt, loss_fn, x.clone(), y.clone()))
    finally:
        watch.remove()
    for got in losses:
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            fail(
                label,
                "you returned the loss as a tensor.",
                "return loss.item(), a Python float (a tensor would keep the autograd graph alive).",
            )
        if not isinstance(got, (int, float)):
            fail(label, f"you returned {type(got).__name__}, not a number.", "return loss.item().")
    losses = [float(v) for v in losses]
    params = list(model.parameters())
    dtypes = {formats.dtype_name(p.dtype) for p in params}
    if dtypes != {"float32"}:
        fail(
            label,
            f"after your steps the parameters are {'/'.join(sorted(dtypes))}.",
            "the parameters must stay fp32: they are the master weights. Autocast casts to bf16 on the fly, "
            "inside each op; .half() (the seed's bug) makes them fp16, not bf16, and drops the fp32 copy.",
        )
    if scaler_uses:
        fail(
            label,
            f"your step uses a GradScaler (GradScaler.{scaler_uses[0].strip('_')} was called).",
            "bf16 has fp32's exponent range, so gradients do not underflow and need no loss scaling: "
            "drop the scaler, call loss.backward() and optimizer.step() directly. (The seed's scaler "
            "belongs to fp16.)",
        )
    cast_inputs = sorted(formats.dtype_name(d) for d in watch.input_dtypes - {torch.float32})
    if cast_inputs:
        fail(
            label,
            f"the model received inputs of dtype {', '.join(cast_inputs)}: you cast them yourself.",
            "pass the fp32 inputs as they are. Autocast casts to bf16 inside each op that gains from it "
            "and keeps fp32 where precision matters; casting by hand (the seed's inputs.half(), or "
            ".bfloat16()) takes that choice away, and .half() is fp16 anyway.",
        )
    if watch.backward_under_autocast:
        fail(
            label,
            "backward() ran with autocast still on.",
            "close the autocast block after the loss and call loss.backward() outside it: PyTorch "
            "recommends against backward passes under autocast; backward already runs each op in the "
            "dtype its forward used.",
        )
    got_params = [p.detach().clone() for p in params]
    if _distance(got_params, start) == 0:
        fail(label, "the parameters did not change.", "call optimizer.step() after backward().")
    refs = {v: _b2_reference(v) for v in ("bf16", "fp32", "fp16", "bf16-accumulate")}
    distances = {v: _distance(got_params, ref[0]) for v, ref in refs.items()}
    closest = min(distances, key=distances.get)
    tolerance = 0.1 * min(
        d for v, d in ((v, _distance(refs["bf16"][0], ref[0])) for v, ref in refs.items()) if v != "bf16"
    )
    if closest == "bf16" and distances["bf16"] <= tolerance:
        want_losses = refs["bf16"][1]
        if not np.allclose(losses, want_losses, rtol=1e-2):
            fail(
                label,
                f"the parameters are right, but you returned the losses {losses}; expected about "
                f"{[round(v, 4) for v in want_losses]}.",
                "return the loss of this step's batch: loss.item().",
            )
        return
    messages = {
        "fp32": (
            "your steps give exactly what an fp32 loop gives: nothing ran in bf16.",
            "wrap the forward pass and the loss in torch.autocast(inputs.device.type, dtype=torch.bfloat16); "
            "use the inputs' device type, not a hard-coded 'cuda'.",
        ),
        "fp16": (
            "your steps match an fp16 autocast loop, not a bf16 one.",
            "torch.autocast's default dtype on CUDA is fp16: pass dtype=torch.bfloat16.",
        ),
        "bf16-accumulate": (
            "your second and third steps used the sum of all gradients so far: they are never zeroed.",
            "call optimizer.zero_grad() once per step (the seed's loop forgot it).",
        ),
    }
    if closest in messages:
        what, why = messages[closest]
        fail(label, what, why)
    fail(
        label,
        f"after three steps your parameters differ from a correct bf16 step by up to {distances['bf16']:.3g}.",
        hint,
    )
