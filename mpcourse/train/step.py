"""One mixed-precision training step, as PyTorch documents it: the code every run of the course executes.

:func:`train_step` is the loop body of PyTorch's automatic mixed precision examples
(``torch.autocast`` + ``torch.amp.GradScaler``), with gradient clipping done the way those examples
prescribe. :func:`mpcourse.train.train` calls it once per step and does its bookkeeping (timing,
memory, dtypes, evaluation) around it, so the chapters can show this function as the code that ran.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch

#: The methods a loss scaler needs: those of ``torch.amp.GradScaler`` that a training step calls.
SCALER_METHODS: tuple[str, ...] = ("scale", "unscale_", "step", "update", "get_scale")

_AUTOCAST_DTYPES = (None, torch.float16, torch.bfloat16)


@runtime_checkable
class ScalerLike(Protocol):
    """What a training step needs from a loss scaler: the interface of ``torch.amp.GradScaler``.

    A scaler may also expose ``last_step_skipped`` (bool, set by ``update()``); otherwise a step
    counts as skipped when ``update()`` lowered the scale, which is what a dynamic scaler does
    exactly when it skips.
    """

    def scale(self, outputs: torch.Tensor) -> torch.Tensor: ...
    def unscale_(self, optimizer: torch.optim.Optimizer) -> None: ...
    def step(self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any: ...
    def update(self, new_scale: Any = None) -> None: ...
    def get_scale(self) -> float: ...


class StepResult(NamedTuple):
    """What one :func:`train_step` leaves: the loss and logits of the batch, and what the scaler did."""

    loss: torch.Tensor
    logits: torch.Tensor
    skipped: bool  # the scaler found an inf or NaN gradient and did not call optimizer.step()
    scale: float  # the loss scale after scaler.update() (NaN without a scaler)


def train_step(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    autocast_dtype: torch.dtype | None,
    scaler: ScalerLike | None = None,
    grad_clip: float | None = None,
    forward_context: AbstractContextManager[Any] | None = None,
) -> StepResult:
    """Train ``model`` for one step on the batch ``(x, y)``; return a :class:`StepResult`.

    Args:
        model, loss_fn: ``loss_fn(model(x), y)`` is the scalar loss.
        optimizer: updates the parameters; its parameters are the ones ``grad_clip`` clips.
        autocast_dtype: ``torch.float16`` or ``torch.bfloat16`` to run the forward pass under
            ``torch.autocast`` on ``x``'s device; ``None`` for no autocast.
        scaler: a ``torch.amp.GradScaler`` (or any object with its methods) to scale the loss;
            ``None`` for a plain ``optimizer.step()``.
        grad_clip: clip the norm of the (unscaled) gradients to this value; ``None`` for no clipping.
        forward_context: entered around the forward pass and the loss, outside autocast
            (:func:`~mpcourse.train.train` meters memory there); ``None`` for nothing.

    The gradients stay on the parameters until the next step's ``zero_grad``, so a caller can
    inspect them. Call this outside any ``torch.autocast`` region: it opens its own, for the
    forward pass only.

    Raises:
        TypeError / ValueError: bad arguments, with what is accepted.
    """
    _check_arguments(model, loss_fn, optimizer, autocast_dtype, scaler, grad_clip, x)
    optimizer.zero_grad(set_to_none=True)  # drop the last step's gradients (None, not zeros: less memory)
    autocast = torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    with forward_context or contextlib.nullcontext(), autocast:
        logits = model(x)  # eligible ops (matmuls, convolutions) run in autocast_dtype
        loss = loss_fn(logits, y)  # cross-entropy, MSE and other losses are on autocast's fp32 list
    # Backward runs outside autocast, as PyTorch advises: each op's backward runs in the dtype autocast
    # chose for its forward anyway. With a scaler it starts from loss * S, so that small fp16 gradients
    # do not underflow to zero.
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if grad_clip is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)  # divide by S first: clipping must see the true gradients
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
    if scaler is None:
        optimizer.step()
        return StepResult(loss, logits, skipped=False, scale=math.nan)
    before = float(scaler.get_scale())
    scaler.step(optimizer)  # unscales (unless done above); an inf or NaN gradient means S was too large:
    scaler.update()  # then no optimizer.step() and S halves; after growth_interval clean steps S doubles
    after = float(scaler.get_scale())
    skipped = getattr(scaler, "last_step_skipped", None)
    return StepResult(
        loss, logits, skipped=bool(skipped if skipped is not None else after < before), scale=after
    )


def check_scaler(scaler: object) -> None:
    """Raise ``TypeError`` unless ``scaler`` has the methods of ``torch.amp.GradScaler`` a step calls."""
    missing = [m for m in SCALER_METHODS if not callable(getattr(scaler, m, None))]
    if missing:
        raise TypeError(
            f"scaler {type(scaler).__name__} lacks {', '.join(missing)}; a scaler needs the methods of "
            f"torch.amp.GradScaler: {', '.join(SCALER_METHODS)}"
        )


def _check_arguments(
    model: object,
    loss_fn: object,
    optimizer: object,
    autocast_dtype: object,
    scaler: object,
    grad_clip: object,
    x: object,
) -> None:
    """The errors a step would otherwise raise deep inside PyTorch, or not at all, said plainly."""
    if not callable(model):
        raise TypeError(f"model must be a module (or a function of the input), got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a function (logits, targets) -> loss, got {type(loss_fn).__name__}")
    if not hasattr(optimizer, "param_groups") or not all(
        callable(getattr(optimizer, m, None)) for m in ("zero_grad", "step")
    ):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer (param_groups, zero_grad, step), got {type(optimizer).__name__}"
        )
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor (the batch's inputs), got {type(x).__name__}")
    if autocast_dtype not in _AUTOCAST_DTYPES:
        raise ValueError(
            f"autocast_dtype must be None, torch.float16 or torch.bfloat16, got {autocast_dtype}"
        )
    if scaler is not None:
        check_scaler(scaler)
    if grad_clip is not None and (
        isinstance(grad_clip, bool) or not isinstance(grad_clip, (int, float)) or not 0 < grad_clip < math.inf
    ):
        raise ValueError(f"grad_clip must be a positive, finite gradient norm (or None), got {grad_clip!r}")
    if torch.is_autocast_enabled(x.device.type):
        raise RuntimeError(
            "train_step was called inside torch.autocast; call it outside: it autocasts the forward pass "
            "itself, and backward must run outside autocast"
        )


__all__ = ["SCALER_METHODS", "ScalerLike", "StepResult", "check_scaler", "train_step"]
