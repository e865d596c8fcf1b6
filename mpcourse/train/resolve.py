"""From :func:`mpcourse.train.train`'s arguments to the objects of a run, with the notes they call for.

Each function checks one argument (or a few that belong together), says what was wrong and what is
accepted when it is bad, and appends to ``notes`` what a reader of the run should know (emulation,
a scaler that is off, a model trained in place). Keeping them here leaves the engine a readable loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import nn

from .. import device as device_mod
from ..data import DataBundle
from .recipes import OptimizerFactory, Recipe, alternative
from .step import ScalerLike, check_scaler

OnUnsupported = Literal["emulate", "error"]
ON_UNSUPPORTED: tuple[str, ...] = ("emulate", "error")

#: Optimizers ``train(optimizer=...)`` accepts by name: name -> factory(params, lr), torch defaults.
OPTIMIZERS: dict[str, OptimizerFactory] = {
    "adamw": lambda params, lr: torch.optim.AdamW(params, lr=lr),
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr),
    "sgd_momentum": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
}

#: Below this much work per step (parameters x predictions per batch), ``threads=None`` trains on one
#: CPU thread: at this size coordinating threads costs more than it saves. How much more depends on
#: how busy the machine's other cores are (the threads wait for each other), so no figure is given
#: here: compare ``train(..., threads=1)`` with ``threads=2`` on your machine.
SINGLE_THREAD_WORK = 2**25


class UnsupportedRecipeError(RuntimeError):
    """The device cannot run a recipe natively and ``on_unsupported="error"`` was asked for."""


def check_run(on_unsupported: str, data: object, steps: int, batch_size: int) -> None:
    """The arguments of ``train`` that need no device to be checked."""
    if on_unsupported not in ON_UNSUPPORTED:
        raise ValueError(f"on_unsupported={on_unsupported!r}; accepted: {', '.join(ON_UNSUPPORTED)}")
    if not isinstance(data, DataBundle):
        raise TypeError(
            f"data must be a bundle from mpcourse.data (load_images, load_text), got {type(data).__name__}"
        )
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got steps={steps}, batch_size={batch_size}")


def resolve_device(device: str | torch.device | None, caps: device_mod.Capabilities | None) -> torch.device:
    """The device to run on: the one asked for, the one ``caps`` describes (unless a preset), else the GPU or CPU."""
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


def support_status(
    recipe: Recipe, caps: device_mod.Capabilities, dev: torch.device, on_unsupported: str, notes: list[str]
) -> str:
    """Whether ``caps`` runs ``recipe`` natively, emulated or not at all; a note (or an error) when not natively."""
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


def build_model(
    model: nn.Module | Callable[[], nn.Module], recipe: Recipe, seed: int, dev: torch.device, notes: list[str]
) -> nn.Module:
    """The model to train, on ``dev``, cast and prepared as the recipe says, in training mode.

    A factory is called under ``seed`` (without disturbing the global random state), so that runs
    with the same seed start from the same weights; a module is trained in place.
    """
    if isinstance(model, nn.Module):
        net = model
        notes.append(
            "The model was passed as a module: it is trained in place. Pass a factory for fresh, seeded weights."
        )
    elif callable(model):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = model()
        if not isinstance(net, nn.Module):
            raise TypeError(f"the model factory returned {type(net).__name__}, not an nn.Module")
    else:
        raise TypeError(f"model must be an nn.Module or a function returning one, got {type(model).__name__}")
    net = net.to(dev)
    if recipe.pure:
        net = net.to(recipe.param_dtype)
    if recipe.prepare_model is not None:
        net = recipe.prepare_model(net)
    return net.train()


def build_optimizer(
    optimizer: str | OptimizerFactory | None, recipe: Recipe, params: Iterable[nn.Parameter], lr: float
) -> torch.optim.Optimizer:
    """The optimizer: the recipe's own, one of :data:`OPTIMIZERS` by name, or one a function builds."""
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
            raise ValueError(
                f"unknown optimizer {optimizer!r}; accepted: {', '.join(OPTIMIZERS)} or a function"
            )
        return OPTIMIZERS[optimizer](params, lr)
    if callable(optimizer):
        return optimizer(params, lr)
    raise TypeError(
        f"optimizer must be a name, a function (params, lr) -> Optimizer, or None; got {optimizer!r}"
    )


def resolve_scaler(
    scaler: ScalerLike | Literal[False] | None,
    recipe: Recipe,
    device_type: str,
    params: list[nn.Parameter],
    notes: list[str],
) -> ScalerLike | None:
    """The scaler: the recipe's default (``None``), none (``False``), or the one given, checked."""
    if scaler is None:
        active = torch.amp.GradScaler(device_type) if recipe.loss_scaling else None
    elif scaler is False:
        if recipe.loss_scaling:
            notes.append(
                f"Loss scaling is off (scaler=False), although recipe '{recipe.name}' normally uses it."
            )
        active = None
    else:
        try:
            check_scaler(scaler)
        except TypeError as err:
            raise TypeError(f"{err} (or pass None for the recipe's default, False for none)") from None
        if recipe.compute_dtype == torch.bfloat16:
            notes.append(
                "A loss scaler is in use with bf16, which has fp32's exponent range: harmless, but unnecessary."
            )
        active = scaler
    if isinstance(active, torch.amp.GradScaler) and any(p.dtype == torch.float16 for p in params):
        raise ValueError(
            "torch.amp.GradScaler cannot unscale fp16 gradients ('Attempting to unscale FP16 gradients'): "
            "loss scaling needs fp32 master weights. Use recipe 'fp16' (fp32 parameters, fp16 autocast), "
            "or pass scaler=False"
        )
    return active


def resolve_threads(threads: int | None, dev: torch.device, work: int, notes: list[str]) -> int | None:
    """CPU threads for the run (None: leave PyTorch's setting); ``work`` is parameters x predictions per batch."""
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be a positive number of CPU threads (or None), got {threads}")
    if dev.type != "cpu":
        return None
    if threads is None and work < SINGLE_THREAD_WORK:
        if torch.get_num_threads() > 1:
            notes.append(
                "A small model on a CPU: training on one thread, faster here than coordinating several (threads= overrides)."
            )
        return 1
    return threads
