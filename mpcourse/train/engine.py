"""The training loop: one call runs a model on a dataset under a precision recipe.

Every step is :func:`mpcourse.train.step.train_step`, the standard PyTorch mixed-precision step
(forward and loss under ``torch.autocast``, backward outside it on the scaled loss, ``scaler.step``
and ``scaler.update``), so every chapter runs the same, correct code on a CPU and on a GPU.
:func:`train` is the loop around it: it prepares the run (:mod:`~mpcourse.train.resolve`), times
each step, meters memory and dtypes (:mod:`~mpcourse.train.metering`), evaluates every
``eval_every`` steps under ``torch.no_grad()`` and the same autocast, and stops a run whose loss is
no longer finite when no scaler can skip the update.

Whether the device can run the recipe is decided by :func:`mpcourse.device.precision_support`
for the recipe's ``precision``: natively, the run just happens; emulated, it runs with a printed
note (or raises :class:`UnsupportedRecipeError` naming a recipe that runs natively, with
``on_unsupported="error"``). Runs are reproducible: the seed fixes the model's initialisation (when
a factory is passed) and every batch.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable, Iterator
from typing import Literal

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import device as device_mod
from .. import sizes
from ..data import DataBundle
from .history import COLUMNS, History
from .metering import MemoryMeter, step_dtypes, step_row
from .recipes import OptimizerFactory, Recipe, get_recipe
from .resolve import (
    ON_UNSUPPORTED,
    OPTIMIZERS,
    SINGLE_THREAD_WORK,
    OnUnsupported,
    UnsupportedRecipeError,
    build_model,
    build_optimizer,
    check_run,
    resolve_device,
    resolve_scaler,
    resolve_threads,
    support_status,
)
from .step import ScalerLike, train_step

__all__ = [
    "ON_UNSUPPORTED",
    "OPTIMIZERS",
    "SINGLE_THREAD_WORK",
    "UnsupportedRecipeError",
    "evaluate",
    "matmul_precision",
    "train",
]


@contextlib.contextmanager
def matmul_precision(tf32: bool, device_type: str) -> Iterator[None]:
    """Allow (``tf32=True``) or forbid TF32 for fp32 matmuls and convolutions on CUDA, then restore.

    Uses the ``fp32_precision`` controls of PyTorch >= 2.9 where they exist (PyTorch does not
    support mixing them with the older ``allow_tf32`` flags), else the ``allow_tf32`` flags.
    Forbidding matters too: cuDNN convolutions allow TF32 by default, so a "fp32" baseline on an
    Ampere GPU is not fp32 unless it says so. Off CUDA nothing changes: TF32 does not exist there.
    """
    if device_type != "cuda":
        yield
        return
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    if hasattr(matmul, "fp32_precision"):
        saved = (matmul.fp32_precision, conv.fp32_precision)
        value = "tf32" if tf32 else "ieee"
        matmul.fp32_precision, conv.fp32_precision = value, value
        try:
            yield
        finally:
            matmul.fp32_precision, conv.fp32_precision = saved
    else:  # pragma: no cover - PyTorch < 2.9
        saved_old = (matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        try:
            yield
        finally:
            matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_old


def _status_after(net: nn.Module, status: str, notes: list[str], label: str | None) -> str:
    """Correct a "native" verdict that the hardware alone cannot give.

    A GPU with fp8 tensor cores runs an fp8 recipe natively only if its GEMMs reach them: layers
    that may fall back to an emulated GEMM (``mpcourse.fp8.FP8Linear``, e.g. with block scales that
    ``torch._scaled_mm`` does not take) say whether they did through ``used_scaled_mm``.
    """
    layers = [m for m in net.modules() if hasattr(m, "used_scaled_mm")]
    if status != "native" or not layers or any(m.used_scaled_mm for m in layers):
        return status
    notes.append(
        "None of this run's fp8 GEMMs could use torch._scaled_mm here (mpcourse.fp8.scaled_mm_problems says why), "
        "so they ran emulated in fp32: status 'emulated', and its speed is not that of the fp8 tensor cores."
    )
    if label is not None:
        print(f"[{label}] {notes[-1]}")
    return "emulated"


def evaluate(
    model: nn.Module,
    data: DataBundle,
    recipe: str | Recipe = "fp32",
    *,
    batch_size: int = 256,
    max_items: int | None = None,
) -> tuple[float, float]:
    """Held-out (loss, accuracy) under ``torch.no_grad()`` and the recipe's autocast.

    No scaler is needed here: loss scaling protects gradients, and evaluation computes none.
    """
    recipe = get_recipe(recipe)
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, hits, count = 0.0, 0, 0
    with (
        torch.no_grad(),
        torch.autocast(dev.type, dtype=recipe.autocast_dtype, enabled=recipe.autocast_dtype is not None),
    ):
        for x, y in data.eval_batches(batch_size, max_items):
            if recipe.pure and x.is_floating_point():
                x = x.to(recipe.param_dtype)
            logits = model(x)
            n = y.numel()
            total_loss += data.loss(logits, y).item() * n
            h, _ = data.correct(logits, y)
            hits, count = hits + h, count + n
    model.train(was_training)
    return total_loss / max(count, 1), hits / max(count, 1)


def train(
    model: nn.Module | Callable[[], nn.Module],
    data: DataBundle,
    recipe: str | Recipe = "fp32",
    *,
    steps: int | None = None,
    batch_size: int | None = None,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device | None = None,
    caps: device_mod.Capabilities | None = None,
    scaler: ScalerLike | Literal[False] | None = None,
    optimizer: str | OptimizerFactory | None = None,
    on_unsupported: OnUnsupported = "emulate",
    eval_every: int | None = None,
    eval_items: int | None = None,
    grad_clip: float | None = None,
    label: str | None = None,
    threads: int | None = None,
    progress: bool = True,
    verbose: bool = True,
) -> History:
    """Train ``model`` on ``data`` with a precision recipe; return the run's :class:`History`.

    Args:
        model: a function returning a fresh model (called under ``seed``, so runs with the same
            seed start from the same weights: pass one to compare recipes), or a module, which is
            trained in place (moved, cast and prepared as the recipe says).
        data: a bundle from :mod:`mpcourse.data`.
        recipe: a registered recipe name (see :data:`mpcourse.train.RECIPES`) or a :class:`Recipe`.
        steps, batch_size: default from the profile (``ci``: 100 steps of 64).
        lr: learning rate.
        seed: fixes the initialisation (with a factory) and every batch.
        device: where to run (default: the GPU if there is one, else the CPU).
        caps: the capabilities that decide native vs emulated (default: those of ``device``; a
            preset, e.g. ``mpcourse.device.capabilities(preset="t4")``, asks what would happen there).
        scaler: ``None`` for the recipe's default (a ``torch.amp.GradScaler`` when it uses loss
            scaling), ``False`` for no scaling, or any object with GradScaler's methods
            (``scale``, ``unscale_``, ``step``, ``update``, ``get_scale``).
        optimizer: ``"adamw"`` (default), ``"adam"``, ``"sgd"``, ``"sgd_momentum"``, or a function
            ``(params, lr) -> Optimizer``. Not allowed with a recipe that brings its own.
        on_unsupported: ``"emulate"`` runs a recipe the device cannot run natively, with a note;
            ``"error"`` raises :class:`UnsupportedRecipeError` naming a recipe that runs natively.
        eval_every: evaluate on held-out data every this many steps (default: 5 times per run)
            and always after the last step.
        eval_items: held-out samples per evaluation (default: all images; profile-sized for text).
        grad_clip: clip the gradient norm to this value (after unscaling, as it must be).
        label: the run's name in tables and plots (default: the recipe's name).
        threads: CPU threads for the run (restored afterwards). Default: PyTorch's setting, except
            for small models on a CPU (see :data:`SINGLE_THREAD_WORK`), which run on one thread,
            with a note. Ignored on a GPU.
        progress: show a tqdm progress bar.
        verbose: print the notes (data source, emulation, divergence) as they arise.

    Raises:
        ValueError / TypeError: bad arguments, with what is accepted.
        UnsupportedRecipeError: with ``on_unsupported="error"``, for a recipe the device does not
            run natively.
    """
    recipe = get_recipe(recipe)
    steps = steps if steps is not None else sizes.pick(ci=100, small=500, full=2000)
    batch_size = batch_size if batch_size is not None else sizes.pick(ci=64, small=128, full=256)
    check_run(on_unsupported, data, steps, batch_size)
    dev = resolve_device(device, caps)
    caps = caps or device_mod.capabilities(kind=dev.type)
    notes: list[str] = []
    status = support_status(recipe, caps, dev, on_unsupported, notes)
    # What a recipe's preparation prints (which layers it converted, say) is a note: silent unless verbose.
    with contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO()):
        net = build_model(model, recipe, seed, dev, notes)
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    opt = build_optimizer(optimizer, recipe, params, lr)
    active_scaler = resolve_scaler(scaler, recipe, dev.type, params, notes)
    data = data.to(dev)
    meter = MemoryMeter(net, dev)  # on a GPU, measures what is there before the run, to leave it out
    eval_every = eval_every or max(1, steps // 5)
    if eval_items is None and data.items_per_sample > 1:
        eval_items = sizes.pick(ci=64, small=256, full=1024)
    label = label or recipe.name
    threads = resolve_threads(
        threads, dev, sum(p.numel() for p in params) * batch_size * data.items_per_sample, notes
    )
    if verbose:
        for note in notes:
            print(f"[{label}] {note}")
    notes.insert(0, data.note)

    generator = torch.Generator().manual_seed(seed)
    rows: list[dict[str, float]] = []
    dtypes: dict[str, str] = {}
    skipped = 0
    bar = tqdm(range(1, steps + 1), desc=label, disable=not progress, leave=True)
    with matmul_precision(recipe.tf32, dev.type), device_mod.cpu_threads(threads):
        for step in bar:
            start = time.perf_counter()
            x, y = data.sample(batch_size, generator)
            if recipe.pure and x.is_floating_point():
                x = x.to(recipe.param_dtype)
            result = train_step(
                net,
                x,
                y,
                data.loss,
                opt,
                autocast_dtype=recipe.autocast_dtype,
                scaler=active_scaler,
                grad_clip=grad_clip,
                forward_context=meter.forward_context(step),
            )
            meter.after_step(opt)
            if step == 1:
                dtypes = step_dtypes(params, result, opt)
            opt.zero_grad(set_to_none=True)  # free the gradients now: evaluation and the next batch need none
            skipped += result.skipped
            loss_value = result.loss.item()  # waits for the device, so the wall clock below is honest
            hits, count = data.correct(result.logits, y)
            elapsed = time.perf_counter() - start
            row = step_row(
                step,
                loss_value,
                hits / count,
                batch_size,
                data.items_per_sample,
                elapsed,
                meter.read_peak(),
                result,
                skipped,
            )
            finite = math.isfinite(loss_value)
            if step % eval_every == 0 or step == steps or (not finite and active_scaler is None):
                row["eval_loss"], row["eval_accuracy"] = evaluate(net, data, recipe, max_items=eval_items)
            rows.append(row)
            if step % 10 == 0 or step == steps:
                bar.set_postfix(
                    loss=f"{loss_value:.3f}", **({"scale": f"{result.scale:.0f}"} if active_scaler else {})
                )
            if not finite and active_scaler is None:
                notes.append(
                    f"The loss became {loss_value} at step {step} and no scaler can skip the update: "
                    "the run diverged and stopped."
                )
                if verbose:
                    print(f"[{label}] {notes[-1]}")
                break
    bar.close()
    status = _status_after(net, status, notes, label if verbose else None)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    config = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "optimizer": type(opt).__name__,
        "scaler": type(active_scaler).__name__ if active_scaler is not None else None,
        "data": data.name,
        "threads": threads or (torch.get_num_threads() if dev.type == "cpu" else None),
    }
    return History(
        label=label,
        recipe=recipe,
        frame=frame,
        notes=notes,
        status=status,
        device=str(dev),
        dtypes=dtypes,
        config=config,
        memory_note=meter.note,
        model=net,
    )
