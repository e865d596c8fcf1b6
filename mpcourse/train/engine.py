"""The training loop: one call runs a model on a dataset under a precision recipe.

The loop is the standard PyTorch mixed-precision loop, written once so that every chapter runs the
same, correct code on a CPU and on a GPU:

1. forward pass and loss under ``torch.autocast(device_type, dtype)`` when the recipe autocasts;
2. backward **outside** autocast, on the scaled loss when a scaler is in use;
3. ``scaler.step(optimizer)`` (which unscales, and skips the step if a gradient overflowed) and
   ``scaler.update()``; or a plain ``optimizer.step()`` without a scaler;
4. evaluation every ``eval_every`` steps under ``torch.no_grad()`` and the same autocast.

Whether the device can run the recipe is decided by :func:`mpcourse.device.precision_support`
for the recipe's ``precision``: natively, the run just happens; emulated, it runs with a printed
note (or raises :class:`UnsupportedRecipeError` naming a recipe that runs natively, with
``on_unsupported="error"``). Runs are reproducible: the seed fixes the model's initialisation (when
a factory is passed) and every batch.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, Protocol, runtime_checkable

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import device as device_mod
from .. import memory, sizes
from ..data import DataBundle
from .history import COLUMNS, History
from .recipes import OptimizerFactory, Recipe, alternative, get_recipe

OnUnsupported = Literal["emulate", "error"]
ON_UNSUPPORTED: tuple[str, ...] = ("emulate", "error")

#: Optimizers ``train(optimizer=...)`` accepts by name: name -> factory(params, lr), torch defaults.
OPTIMIZERS: dict[str, OptimizerFactory] = {
    "adamw": lambda params, lr: torch.optim.AdamW(params, lr=lr),
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr),
    "sgd_momentum": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
}

_SCALER_METHODS = ("scale", "unscale_", "step", "update", "get_scale")

#: Below this much work per step (parameters x predictions per batch), ``threads=None`` trains on one
#: CPU thread: at this size coordinating threads costs more than it saves. How much more depends on
#: how busy the machine's other cores are (the threads wait for each other), so no figure is given
#: here: compare ``train(..., threads=1)`` with ``threads=2`` on your machine.
SINGLE_THREAD_WORK = 2**25


class UnsupportedRecipeError(RuntimeError):
    """The device cannot run a recipe natively and ``on_unsupported="error"`` was asked for."""


@runtime_checkable
class ScalerLike(Protocol):
    """What the engine needs from a loss scaler: the interface of ``torch.amp.GradScaler``.

    A scaler may also expose ``last_step_skipped`` (bool, set by ``update()``); otherwise a step
    counts as skipped when ``update()`` lowered the scale, which is what a dynamic scaler does
    exactly when it skips.
    """

    def scale(self, outputs: torch.Tensor) -> torch.Tensor: ...
    def unscale_(self, optimizer: torch.optim.Optimizer) -> None: ...
    def step(self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any: ...
    def update(self, new_scale: Any = None) -> None: ...
    def get_scale(self) -> float: ...


def _resolve_device(device: str | torch.device | None, caps: device_mod.Capabilities | None) -> torch.device:
    if device is not None:
        kind = device.type if isinstance(device, torch.device) else str(device).split(":")[0]
        if kind not in ("cpu", "cuda", "mps"):
            raise ValueError(f"unsupported device {device!r}; accepted: 'cpu', 'cuda', 'mps'")
        return torch.device(device)
    if caps is not None and caps.preset is None:
        return torch.device(caps.kind)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


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


def _build_model(model: nn.Module | Callable[[], nn.Module], seed: int) -> tuple[nn.Module, bool]:
    if isinstance(model, nn.Module):
        return model, False
    if callable(model):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            built = model()
        if not isinstance(built, nn.Module):
            raise TypeError(f"the model factory returned {type(built).__name__}, not an nn.Module")
        return built, True
    raise TypeError(f"model must be an nn.Module or a function returning one, got {type(model).__name__}")


def _build_optimizer(
    optimizer: str | OptimizerFactory | None, recipe: Recipe, params: Iterable[nn.Parameter], lr: float
) -> torch.optim.Optimizer:
    if recipe.make_optimizer is not None:
        if optimizer is not None:
            raise ValueError(
                f"recipe {recipe.name!r} brings its own optimizer (make_optimizer); do not pass optimizer= as well"
            )
        return recipe.make_optimizer(params, lr)
    if optimizer is None:
        optimizer = "adamw"
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; accepted: {', '.join(OPTIMIZERS)} or a function")
        return OPTIMIZERS[optimizer](params, lr)
    if callable(optimizer):
        return optimizer(params, lr)
    raise TypeError(f"optimizer must be a name, a function (params, lr) -> Optimizer, or None; got {optimizer!r}")


def _resolve_scaler(
    scaler: ScalerLike | Literal[False] | None, recipe: Recipe, device_type: str, notes: list[str]
) -> ScalerLike | None:
    if scaler is None:
        return torch.amp.GradScaler(device_type) if recipe.loss_scaling else None
    if scaler is False:
        if recipe.loss_scaling:
            notes.append(f"Loss scaling is off (scaler=False), although recipe '{recipe.name}' normally uses it.")
        return None
    missing = [m for m in _SCALER_METHODS if not callable(getattr(scaler, m, None))]
    if missing:
        raise TypeError(
            f"scaler {type(scaler).__name__} lacks {', '.join(missing)}; a scaler needs the methods of "
            f"torch.amp.GradScaler: {', '.join(_SCALER_METHODS)} (or pass None for the recipe's default, "
            "False for none)"
        )
    if recipe.compute_dtype == torch.bfloat16:
        notes.append("A loss scaler is in use with bf16, which has fp32's exponent range: harmless, but unnecessary.")
    return scaler


def _support_notes(
    recipe: Recipe, caps: device_mod.Capabilities, dev: torch.device, on_unsupported: str, notes: list[str]
) -> str:
    support = device_mod.precision_support(caps)[recipe.precision]
    where = caps.describe()
    if caps.preset is not None and caps.kind != dev.type:
        notes.append(f"Support is judged for the preset device ({where}); the run itself uses {dev.type}.")
    if support.status == "native":
        return support.status
    alt = alternative(recipe, caps)
    if on_unsupported == "error":
        raise UnsupportedRecipeError(
            f"recipe '{recipe.name}' needs {recipe.precision}, which is {support.status} on {where}: "
            f"{support.reason}. Use recipe '{alt.name}' instead ({alt.description}), or pass "
            "on_unsupported='emulate' to run it anyway."
        )
    if support.status == "unavailable":
        notes.append(
            f"{recipe.precision} is unavailable on {where} ({support.reason}); this run is plain "
            f"{alt.name}. Recipe '{alt.name}' is the honest name for it here."
        )
    else:
        notes.append(
            f"{recipe.precision} is emulated on {where}: {support.reason}. The numbers are those of "
            f"{recipe.precision}; the speed is not. Recipe '{alt.name}' runs natively here."
        )
    return support.status


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
    with torch.no_grad(), torch.autocast(dev.type, dtype=recipe.autocast_dtype, enabled=recipe.autocast_dtype is not None):
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


def _dtype_name(dtype: torch.dtype | None) -> str:
    return str(dtype).removeprefix("torch.") if dtype is not None else "none"


def _dtypes_of(tensors: Iterable[torch.Tensor | None]) -> str:
    names = sorted({_dtype_name(t.dtype) for t in tensors if t is not None})
    return "/".join(names) or "none"


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
    if on_unsupported not in ON_UNSUPPORTED:
        raise ValueError(f"on_unsupported={on_unsupported!r}; accepted: {', '.join(ON_UNSUPPORTED)}")
    if not isinstance(data, DataBundle):
        raise TypeError(f"data must be a bundle from mpcourse.data (load_images, load_text), got {type(data).__name__}")
    steps = steps if steps is not None else sizes.pick(ci=100, small=500, full=2000)
    batch_size = batch_size if batch_size is not None else sizes.pick(ci=64, small=128, full=256)
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got steps={steps}, batch_size={batch_size}")
    dev = _resolve_device(device, caps)
    caps = caps or device_mod.capabilities(kind=dev.type)
    notes: list[str] = []
    status = _support_notes(recipe, caps, dev, on_unsupported, notes)
    net, fresh = _build_model(model, seed)
    if not fresh:
        notes.append("The model was passed as a module: it is trained in place. Pass a factory for fresh, seeded weights.")
    net = net.to(dev)
    if recipe.pure:
        net = net.to(recipe.param_dtype)
    if recipe.prepare_model is not None:
        net = recipe.prepare_model(net)
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    opt = _build_optimizer(optimizer, recipe, params, lr)
    active_scaler = _resolve_scaler(scaler, recipe, dev.type, notes)
    if isinstance(active_scaler, torch.amp.GradScaler) and any(p.dtype == torch.float16 for p in params):
        raise ValueError(
            "torch.amp.GradScaler cannot unscale fp16 gradients ('Attempting to unscale FP16 gradients'): "
            "loss scaling needs fp32 master weights. Use recipe 'fp16' (fp32 parameters, fp16 autocast), "
            "or pass scaler=False"
        )
    # On a GPU the peak is read from the allocator, which also counts what other code holds there
    # (an earlier cell's tensors, a previous run's model): measure that, and the dataset, to leave out.
    if dev.type == "cuda":
        data = data.to(dev)
        here = torch.device("cuda", dev.index if dev.index is not None else torch.cuda.current_device())
        held = memory.storage_bytes(t for t in (*net.parameters(), *net.buffers()) if t.device == here)
        outside_bytes = torch.cuda.memory_allocated(dev) - held
    else:
        data = data.to(dev)
        outside_bytes = 0
    eval_every = eval_every or max(1, steps // 5)
    if eval_items is None and data.items_per_sample > 1:
        eval_items = sizes.pick(ci=64, small=256, full=1024)
    label = label or recipe.name
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be a positive number of CPU threads (or None), got {threads}")
    if dev.type != "cpu":
        threads = None
    elif threads is None and sum(p.numel() for p in params) * batch_size * data.items_per_sample < SINGLE_THREAD_WORK:
        threads = 1
        if torch.get_num_threads() > 1:
            notes.append("A small model on a CPU: training on one thread, faster here than coordinating several (threads= overrides).")
    if verbose:
        for note in notes:
            print(f"[{label}] {note}")
    notes.insert(0, data.note)

    generator = torch.Generator().manual_seed(seed)
    on_cuda = dev.type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(dev)
        memory_note = (
            "peak_memory_bytes: torch.cuda.max_memory_allocated (everything the caching allocator handed out, "
            "temporaries included), less what was on the GPU before the run other than the model: the dataset, "
            "and tensors that other code holds there"
        )
    else:
        memory_note = (
            "peak_memory_bytes: exact storage of weights, gradients, optimizer state and tensors saved for "
            f"backward (PyTorch keeps no peak statistics for {dev.type} memory; temporaries are not counted)"
        )
    autocast = dict(device_type=dev.type, dtype=recipe.autocast_dtype, enabled=recipe.autocast_dtype is not None)
    rows: list[dict[str, float]] = []
    dtypes: dict[str, str] = {}
    skipped, peak = 0, 0
    bar = tqdm(range(1, steps + 1), desc=label, disable=not progress, leave=True)
    with matmul_precision(recipe.tf32, dev.type), device_mod.cpu_threads(threads):
        for step in bar:
            start = time.perf_counter()
            x, y = data.sample(batch_size, generator)
            if recipe.pure and x.is_floating_point():
                x = x.to(recipe.param_dtype)
            meter = memory.SavedTensorMeter(net) if (not on_cuda and step <= 2) else contextlib.nullcontext()
            with meter, torch.autocast(**autocast):
                logits = net(x)
                loss = data.loss(logits, y)
            if active_scaler is not None:
                active_scaler.scale(loss).backward()
            else:
                loss.backward()
            if grad_clip is not None:
                if active_scaler is not None:
                    active_scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            if step == 1:
                dtypes = {
                    "parameters": _dtypes_of(params),
                    "gradients": _dtypes_of(p.grad for p in params),
                    "logits": _dtype_name(logits.dtype),
                    "loss": _dtype_name(loss.dtype),
                }
            if active_scaler is not None:
                before = float(active_scaler.get_scale())
                active_scaler.step(opt)
                active_scaler.update()
                scale = float(active_scaler.get_scale())
                was_skipped = getattr(active_scaler, "last_step_skipped", None)
                skipped += int(was_skipped if was_skipped is not None else scale < before)
            else:
                opt.step()
                scale = math.nan
            if step == 1:
                dtypes["optimizer state"] = _dtypes_of(memory.optimizer_tensors(opt))
            if not on_cuda and step <= 2:
                state = memory.state_bytes(net, opt)
                saved = meter.bytes  # type: ignore[union-attr]
                peak = max(peak, sum(state.values()) + saved["activations"] + saved["low-precision weight copies"])
            opt.zero_grad(set_to_none=True)
            loss_value = loss.item()  # waits for the device, so the wall clock below is honest
            hits, count = data.correct(logits, y)
            elapsed = time.perf_counter() - start
            if on_cuda:
                peak = torch.cuda.max_memory_allocated(dev) - outside_bytes
            row = {
                "step": step,
                "loss": loss_value,
                "accuracy": hits / count,
                "samples_per_s": batch_size / elapsed,
                "tokens_per_s": batch_size * data.items_per_sample / elapsed if data.items_per_sample > 1 else math.nan,
                "peak_memory_bytes": peak,
                "loss_scale": scale,
                "skipped_steps": skipped,
                "eval_loss": math.nan,
                "eval_accuracy": math.nan,
            }
            finite = math.isfinite(loss_value)
            if step % eval_every == 0 or step == steps or (not finite and active_scaler is None):
                row["eval_loss"], row["eval_accuracy"] = evaluate(net, data, recipe, max_items=eval_items)
            rows.append(row)
            if step % 10 == 0 or step == steps:
                bar.set_postfix(loss=f"{loss_value:.3f}", **({"scale": f"{scale:.0f}"} if active_scaler else {}))
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
    config = dict(steps=steps, batch_size=batch_size, lr=lr, seed=seed, optimizer=type(opt).__name__,
                  scaler=type(active_scaler).__name__ if active_scaler is not None else None, data=data.name,
                  threads=threads or (torch.get_num_threads() if dev.type == "cpu" else None))
    return History(
        label=label, recipe=recipe, frame=frame, notes=notes, status=status, device=str(dev),
        dtypes=dtypes, config=config, memory_note=memory_note, model=net,
    )
