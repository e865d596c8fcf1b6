"""Loss scalers, written to be read: a static one, and a dynamic one that behaves exactly like
``torch.amp.GradScaler``.

Why scale at all? Under fp16 autocast, backpropagation computes activation gradients in fp16,
whose smallest subnormal is 2^-24 (about 6e-8). Gradients of at most half of that (2^-25) round
to zero and are lost (underflow); those between 2^-25 and 2^-24 round up to 2^-24. Multiplying
the loss by S multiplies every gradient of the backward pass by S (the chain rule is linear in
the loss), which lifts small gradients into fp16's range; dividing the fp32 weight gradients by
S before the optimizer step ("unscaling") gives back the true gradient. The price is overflow:
too large an S pushes large gradients past fp16's max (65504) to inf. A scaler reaches only the
backward pass: an fp16 *forward* activation of 65520 or more is inf whatever S is (see
:mod:`mpcourse.forward_overflow`), and :class:`ScaleWatch` catches the collapsing scale it causes.

- :class:`StaticLossScaler` uses one fixed S, chosen by the user.
- :class:`DynamicLossScaler` chooses S itself: start high, halve S and skip the step whenever a
  gradient overflows, and double it after ``growth_interval`` steps without overflow. This is
  ``torch.amp.GradScaler``'s algorithm; this implementation matches it bit for bit (scale, skip
  decisions, growth tracker, parameters), and the course's tests check that.

Both scalers have GradScaler's interface, so they drop into the standard loop, and into
``mpcourse.train.train(..., scaler=...)``::

    scaler = DynamicLossScaler()
    for x, y in batches:
        optimizer.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = loss_fn(model(x), y)
        scaler.scale(loss).backward()    # backward on the scaled loss: gradients are S times too big
        scaler.unscale_(optimizer)       # optional: only if you need true gradients (clipping)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)           # unscales if not done yet; skips the step on inf/NaN
        scaler.update()                  # adjusts S for the next iteration

The state is explicit on purpose: ``_scale`` (a float32 tensor on the loss's device, as in
GradScaler), ``_growth_tracker`` (clean steps since the scale last changed) and, per optimizer,
the stage of the iteration (``READY`` -> ``UNSCALED`` -> ``STEPPED``) and the inf/NaN flags found
while unscaling, one per device. The flags stay tensors until ``step`` needs a decision, so that
on a GPU the check costs one synchronisation per step, as GradScaler's does.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable
from enum import Enum
from typing import Any

import numpy as np
import torch

__all__ = ["DynamicLossScaler", "OptState", "ScaleWatch", "StaticLossScaler"]


class OptState(Enum):
    """Where an optimizer is in the current iteration (the same stages GradScaler tracks)."""

    READY = 0  # gradients are scaled (or not computed yet)
    UNSCALED = 1  # unscale_() ran: gradients hold true values, inf/NaN flags are known
    STEPPED = 2  # step() ran (or was skipped); update() ends the iteration


def _fresh_state() -> dict[str, Any]:
    return {"stage": OptState.READY, "found_inf_per_device": {}}


def _is_real(value: Any) -> bool:
    """Any real number type (int, float, numpy's int64 and float32, fractions...), but not a bool.

    bool is an int to Python (and np.bool_ is not a number at all): a flag passed where a scale was
    meant is a mistake worth stopping.
    """
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _positive_finite(name: str, value: Any) -> float:
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


class _LossScaler:
    """What every loss scaler does: multiply the loss, unscale the gradients, skip a poisoned step.

    Subclasses decide how the scale changes in :meth:`update`.
    """

    def __init__(self, init_scale: float, *, enabled: bool = True) -> None:
        self._enabled = bool(enabled)
        self._init_scale = _positive_finite("init_scale", init_scale)
        self._scale: torch.Tensor | None = None  # created on the loss's device by the first scale()
        self._per_optimizer_states: dict[int, dict[str, Any]] = {}
        #: True after an :meth:`update` that ended an iteration whose step was skipped.
        self.last_step_skipped = False

    # ---- the loop's four calls ---------------------------------------------------------------

    def scale(self, outputs: Any) -> Any:
        """Multiply ``outputs`` (the loss, or a tensor or nested list/tuple of tensors) by the scale.

        The scale is a float32 tensor, created on the device of the first output the scaler sees;
        the product follows PyTorch's type promotion, so an fp32 loss gives an fp32 scaled loss.
        """
        if not self._enabled:
            return outputs
        if isinstance(outputs, torch.Tensor):
            if self._scale is None:
                self._lazy_init(outputs.device)
            assert self._scale is not None
            return outputs * self._scale.to(device=outputs.device, non_blocking=True)
        if isinstance(outputs, (list, tuple)):
            scaled = [self.scale(o) for o in outputs]
            return type(outputs)(scaled)
        raise ValueError("outputs must be a Tensor or an iterable of Tensors")

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients of ``optimizer``'s parameters by the scale, in place, and record
        whether any of them is inf or NaN (checked before dividing, as GradScaler does).

        Call it at most once per iteration, before :meth:`step`, and only when you need the true
        gradients before the step (to clip them, or to look at them); :meth:`step` calls it
        otherwise. A second call would divide twice, so it raises instead.
        """
        if not self._enabled:
            return
        self._check_scale("unscale_")
        state = self._state(optimizer)
        if state["stage"] is OptState.UNSCALED:
            raise RuntimeError(
                "unscale_() has already been called on this optimizer since the last update()."
            )
        if state["stage"] is OptState.STEPPED:
            raise RuntimeError("unscale_() is being called after step().")
        assert self._scale is not None
        # 1/S computed in float64 and rounded once to float32, exactly as GradScaler does ("FP32
        # division can be imprecise for certain compile options").
        inv_scale = self._scale.double().reciprocal().float()
        state["found_inf_per_device"] = self._unscale_grads(optimizer, inv_scale)
        state["stage"] = OptState.UNSCALED

    def step(self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        """Unscale (if :meth:`unscale_` was not called), then run ``optimizer.step(*args, **kwargs)``
        unless a gradient was inf or NaN: then the step is skipped and the parameters (and the
        optimizer's state, e.g. Adam's moments) stay as they were. Returns what the optimizer's
        step returns, or None when skipped.
        """
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        if "closure" in kwargs:
            raise RuntimeError("Closure use is not currently supported if GradScaler is enabled.")
        self._check_scale("step")
        state = self._state(optimizer)
        if state["stage"] is OptState.STEPPED:
            raise RuntimeError("step() has already been called since the last update().")
        if state["stage"] is OptState.READY:
            self.unscale_(optimizer)
        assert len(state["found_inf_per_device"]) > 0, "No inf checks were recorded for this optimizer."
        result = None
        if not self._should_skip(state):
            result = optimizer.step(*args, **kwargs)
        state["stage"] = OptState.STEPPED
        return result

    def update(self, new_scale: float | torch.Tensor | None = None) -> None:
        """End the iteration: adjust the scale (see the subclass) and forget this iteration's flags.

        ``new_scale`` (a real number, or a one-element float tensor) sets the scale directly instead.
        """
        if not self._enabled:
            return
        self._check_scale("update")
        assert self._scale is not None
        found_infs = [
            flag.to(self._scale.device, non_blocking=True)
            for state in self._per_optimizer_states.values()
            for flag in state["found_inf_per_device"].values()
        ]
        if new_scale is not None:
            self._set_scale(new_scale)
        else:
            assert len(found_infs) > 0, "No inf checks were recorded prior to update."
            found_inf = bool(
                sum(f.item() for f in found_infs)
            )  # any inf/NaN, on any device, in any optimizer
            self._update_scale(found_inf)
        self.last_step_skipped = any(self._should_skip(s) for s in self._per_optimizer_states.values())
        self._per_optimizer_states = {}

    def get_scale(self) -> float:
        """The current scale as a Python float (1.0 when disabled). Reads the device: a GPU sync."""
        if not self._enabled:
            return 1.0
        return self._init_scale if self._scale is None else float(self._scale.item())

    def is_enabled(self) -> bool:
        return self._enabled

    # ---- the machinery ---------------------------------------------------------------------------

    def _lazy_init(self, device: torch.device) -> None:
        self._scale = torch.full((), self._init_scale, dtype=torch.float32, device=device)

    def _check_scale(self, funcname: str) -> None:
        if self._scale is None:
            raise AssertionError(
                f"Attempted {funcname} but _scale is None.  This may indicate your script did not use "
                "scaler.scale(loss or outputs) earlier in the iteration."
            )

    def _state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return self._per_optimizer_states.setdefault(id(optimizer), _fresh_state())

    def _unscale_grads(
        self, optimizer: torch.optim.Optimizer, inv_scale: torch.Tensor
    ) -> dict[torch.device, torch.Tensor]:
        """Multiply every gradient by ``inv_scale`` in place; return one inf/NaN flag per device.

        The check runs on the *scaled* gradient, before the multiplication, like PyTorch's kernel.
        The flag is a float32 tensor on the gradients' device (1.0: found inf or NaN), so no value
        leaves the GPU here.
        """
        found: dict[torch.device, torch.Tensor] = {}
        inv: dict[torch.device, torch.Tensor] = {}
        with torch.no_grad():
            for grad in self._grads(optimizer):
                dev = grad.device
                if dev not in found:
                    found[dev] = torch.zeros((), dtype=torch.float32, device=dev)
                    inv[dev] = inv_scale.to(dev, non_blocking=True)
                nonfinite = torch.logical_not(torch.isfinite(grad)).any()
                found[dev] = torch.maximum(found[dev], nonfinite.float())
                grad.mul_(inv[dev])
        return found

    @staticmethod
    def _grads(optimizer: torch.optim.Optimizer) -> Iterable[torch.Tensor]:
        """The gradient tensors to unscale: dense ``.grad``, or the values of a sparse one."""
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.dtype == torch.float16:
                    # The scaler divides by S in the gradients' own dtype: fp16 gradients would
                    # underflow in that division, the very loss scaling exists to prevent. Keep
                    # fp32 master weights (fp16 autocast), whose gradients are fp32.
                    raise ValueError("Attempting to unscale FP16 gradients.")
                yield param.grad._values() if param.grad.is_sparse else param.grad

    def _should_skip(self, state: dict[str, Any]) -> bool:
        return bool(sum(flag.item() for flag in state["found_inf_per_device"].values()))

    def _set_scale(self, new_scale: float | torch.Tensor) -> None:
        assert self._scale is not None
        if _is_real(new_scale):  # GradScaler takes a Python float only; any real number type is as good
            self._scale.fill_(float(new_scale))
            return
        reason = "new_scale should be a real number (not a bool) or a 1-element torch.FloatTensor with requires_grad=False."
        if not isinstance(new_scale, torch.Tensor) or new_scale.numel() != 1 or new_scale.requires_grad:
            raise ValueError(reason)
        self._scale.copy_(new_scale)

    def _update_scale(self, found_inf: bool) -> None:
        raise NotImplementedError


class StaticLossScaler(_LossScaler):
    """Loss scaling with one fixed scale ``S``, chosen by you.

    Pick S so that the gradients that matter land inside fp16's range and none overflow. Too small, and small
    gradients still underflow to zero; too large, and large ones overflow to inf.

    With ``skip_non_finite=True`` (the default) a step whose gradients hold an inf or NaN is
    skipped, as a dynamic scaler would, but the scale does not change: too large a scale then skips
    *every* step. With ``skip_non_finite=False`` the step is always taken, as by a scaler that never
    checks: an overflow puts inf/NaN into the weights, for good.
    """

    def __init__(self, scale: float, *, skip_non_finite: bool = True, enabled: bool = True) -> None:
        super().__init__(scale, enabled=enabled)
        self.skip_non_finite = bool(skip_non_finite)

    def _should_skip(self, state: dict[str, Any]) -> bool:
        return self.skip_non_finite and super()._should_skip(state)

    def _update_scale(self, found_inf: bool) -> None:
        """A static scale never changes."""

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.get_scale(), "skip_non_finite": self.skip_non_finite} if self._enabled else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self._enabled:
            return
        if not state_dict:
            raise RuntimeError(
                "The source state dict is empty, possibly because it was saved from a disabled scaler."
            )
        self._init_scale = _positive_finite("scale", state_dict["scale"])
        if self._scale is not None:
            self._scale.fill_(self._init_scale)
        self.skip_non_finite = bool(state_dict["skip_non_finite"])

    def __repr__(self) -> str:
        return f"StaticLossScaler(scale={self.get_scale():g}, skip_non_finite={self.skip_non_finite})"


class DynamicLossScaler(_LossScaler):
    """Dynamic loss scaling: ``torch.amp.GradScaler``'s algorithm, in plain tensor operations.

    The scale starts at ``init_scale`` (2^16: high, since overflow is cheap to detect and undo and
    underflow is not detected at all). After each iteration, :meth:`update`:

    - if any gradient was inf or NaN (the step was skipped): multiplies the scale by
      ``backoff_factor`` and resets the count of clean steps;
    - otherwise counts one more clean step; after ``growth_interval`` of them in a row, multiplies
      the scale by ``growth_factor`` (unless that would overflow float32) and restarts the count.

    So the scale hovers just below the largest value that does not overflow, probing upwards every
    ``growth_interval`` steps; a few skipped steps at the start (while 2^16 comes down) are normal.

    Each product is computed in float64 and rounded once to float32, as PyTorch's kernel does
    (``float * double`` in C++), so non-power-of-two factors give the same scale bit for bit.

    Raises:
        ValueError: for a growth factor <= 1, a backoff factor outside (0, 1), a growth interval
            that is not a whole number >= 1, or an initial scale that is not finite and positive.
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        *,
        enabled: bool = True,
    ) -> None:
        super().__init__(init_scale, enabled=enabled)
        self._growth_factor, self._backoff_factor, self._growth_interval = _check_factors(
            growth_factor, backoff_factor, growth_interval
        )
        self._init_growth_tracker = 0
        self._growth_tracker: int = 0  # clean steps in a row since the scale last changed

    def _update_scale(self, found_inf: bool) -> None:
        assert self._scale is not None
        scale = self._scale.item()  # a float32 value, held exactly by a Python float (float64)
        if found_inf:
            self._scale.fill_(scale * self._backoff_factor)  # float64 product, rounded once to float32
            self._growth_tracker = 0
            return
        successful = self._growth_tracker + 1
        if successful == self._growth_interval:
            grown = torch.tensor(scale * self._growth_factor, dtype=torch.float32)
            if torch.isfinite(grown):  # never grow past float32's range to inf
                self._scale.fill_(grown.item())
            self._growth_tracker = 0
        else:
            self._growth_tracker = successful

    def _lazy_init(self, device: torch.device) -> None:
        super()._lazy_init(device)
        self._growth_tracker = self._init_growth_tracker

    # ---- GradScaler's accessors ------------------------------------------------------------------

    def get_growth_factor(self) -> float:
        return self._growth_factor

    def set_growth_factor(self, new_factor: float) -> None:
        self._growth_factor, _, _ = _check_factors(new_factor, self._backoff_factor, self._growth_interval)

    def get_backoff_factor(self) -> float:
        return self._backoff_factor

    def set_backoff_factor(self, new_factor: float) -> None:
        _, self._backoff_factor, _ = _check_factors(self._growth_factor, new_factor, self._growth_interval)

    def get_growth_interval(self) -> int:
        return self._growth_interval

    def set_growth_interval(self, new_interval: int) -> None:
        _, _, self._growth_interval = _check_factors(self._growth_factor, self._backoff_factor, new_interval)

    def get_growth_tracker(self) -> int:
        """Clean steps in a row since the scale last changed."""
        if not self._enabled:
            return 0
        return self._init_growth_tracker if self._scale is None else self._growth_tracker

    # ---- checkpoints -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """GradScaler's checkpoint: the same keys, so either can load the other's state.

        Save it with the model and optimizer: without it, a resumed run restarts at 2^16 and
        skips steps again while the scale comes back down.
        """
        if not self._enabled:
            return {}
        return {
            "scale": self.get_scale(),
            "growth_factor": self._growth_factor,
            "backoff_factor": self._backoff_factor,
            "growth_interval": self._growth_interval,
            "_growth_tracker": self.get_growth_tracker(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self._enabled:
            return
        if len(state_dict) == 0:
            raise RuntimeError(
                "The source state dict is empty, possibly because it was saved from a disabled instance of GradScaler."
            )
        self._init_scale = _positive_finite("scale", state_dict["scale"])
        if self._scale is not None:
            self._scale.fill_(state_dict["scale"])
        self._growth_factor, self._backoff_factor, self._growth_interval = _check_factors(
            state_dict["growth_factor"], state_dict["backoff_factor"], state_dict["growth_interval"]
        )
        self._init_growth_tracker = int(state_dict["_growth_tracker"])
        if self._scale is not None:
            self._growth_tracker = self._init_growth_tracker

    def __repr__(self) -> str:
        if not self._enabled:
            return "DynamicLossScaler(enabled=False)"
        return (
            f"DynamicLossScaler(scale={self.get_scale():g}, growth_factor={self._growth_factor:g}, "
            f"backoff_factor={self._backoff_factor:g}, growth_interval={self._growth_interval}, "
            f"growth_tracker={self.get_growth_tracker()})"
        )


def _check_factors(growth_factor: Any, backoff_factor: Any, growth_interval: Any) -> tuple[float, float, int]:
    """Validate a dynamic scaler's settings, naming every problem and what is accepted."""
    problems = []
    if not _is_real(growth_factor) or not growth_factor > 1 or not math.isfinite(growth_factor):
        problems.append(
            f"growth_factor must be a finite number > 1 (the scale must grow), got {growth_factor!r}"
        )
    if not _is_real(backoff_factor) or not 0 < backoff_factor < 1:
        problems.append(
            f"backoff_factor must be in (0, 1) (the scale must shrink and stay positive), got {backoff_factor!r}"
        )
    if (
        not (_is_real(growth_interval) and isinstance(growth_interval, numbers.Integral))
        or growth_interval < 1
    ):
        problems.append(
            f"growth_interval must be a whole number >= 1 (clean steps before growing), got {growth_interval!r}"
        )
    if problems:
        raise ValueError("invalid loss scaler settings: " + "; ".join(problems))
    return float(growth_factor), float(backoff_factor), int(growth_interval)


class ScaleWatch:
    """A check for a collapsing loss scale, to call once per iteration after ``scaler.update()``.

    A healthy dynamic scale saw-tooths: it drops once after an overflow and grows back. A scale that
    keeps dropping means every step overflows, which a scaler cannot fix (an inf or NaN in the forward
    pass, a diverging model): the run skips every step while the scale heads to zero. The watch
    records the scale and reports the first iteration at which either

    - the scale fell below ``floor``, or
    - it dropped ``max_drops_in_row`` times in a row (a factor of ``2 ** max_drops_in_row`` with
      GradScaler's default backoff).

    Args:
        floor: the smallest scale considered healthy (default 1: scaling the loss *down*).
        max_drops_in_row: consecutive drops that count as a collapse.
        warn: also issue a ``RuntimeWarning`` the first time (otherwise only :meth:`observe`'s
            return value and :attr:`collapsed_at` report it).
    """

    def __init__(self, floor: float = 1.0, max_drops_in_row: int = 12, *, warn: bool = True) -> None:
        self.floor = _positive_finite("floor", floor)
        if (
            not isinstance(max_drops_in_row, numbers.Integral)
            or isinstance(max_drops_in_row, bool)
            or (max_drops_in_row < 1)
        ):
            raise ValueError(f"max_drops_in_row must be a whole number >= 1, got {max_drops_in_row!r}")
        self.max_drops_in_row = int(max_drops_in_row)
        self.warn = bool(warn)
        self.history: list[float] = []
        self.drops_in_row = 0
        self.collapsed_at: int | None = None  # the iteration (counting from 1) of the first alarm
        self.message: str | None = None  # what the alarm said

    def observe(self, scaler_or_scale: Any) -> str | None:
        """Record the scale after this iteration's ``update()``: a scaler (anything with
        ``get_scale()``) or the scale itself. Returns a message on the iteration the collapse is
        first detected, and None otherwise."""
        get_scale = getattr(scaler_or_scale, "get_scale", None)
        scale = float(get_scale() if callable(get_scale) else scaler_or_scale)
        if not math.isfinite(scale) or scale < 0:
            raise ValueError(f"a loss scale is a finite number >= 0, got {scale!r}")
        if self.history and scale < self.history[-1]:
            self.drops_in_row += 1
        elif self.history:
            self.drops_in_row = 0
        self.history.append(scale)
        if self.collapsed_at is not None:
            return None
        reason = None
        if scale < self.floor:
            reason = f"the loss scale fell to {scale:g}, below the floor {self.floor:g}"
        elif self.drops_in_row >= self.max_drops_in_row:
            reason = f"the loss scale dropped {self.drops_in_row} times in a row, to {scale:g}"
        if reason is None:
            return None
        self.collapsed_at = len(self.history)
        self.message = message = (
            f"iteration {self.collapsed_at}: {reason}. Steps keep overflowing: look for inf/NaN in the "
            "forward pass (activations above the format's max) or a diverging loss; a scaler cannot fix either."
        )
        if self.warn:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        return message

    @property
    def collapsed(self) -> bool:
        """Whether a collapse has been detected."""
        return self.collapsed_at is not None

    def __repr__(self) -> str:
        last = f"{self.history[-1]:g}" if self.history else "none yet"
        return (
            f"ScaleWatch(floor={self.floor:g}, max_drops_in_row={self.max_drops_in_row}, "
            f"iterations={len(self.history)}, last scale={last}, collapsed_at={self.collapsed_at})"
        )
