"""Training with bf16 weights without losing small updates: stochastic rounding and Kahan compensation.

bf16 keeps fp32's exponent but only 8 significant bits, so ``w + u`` rounds back to ``w`` whenever
the update ``u`` is smaller than half the gap between bf16 numbers at ``w``: a relative size below
2^-9 to 2^-8. Mixed precision avoids the problem by keeping fp32 master weights; *pure* bf16
training (weights, gradients and optimizer state all bf16, half the memory) must fix it another way
(Zamirai et al., "Revisiting BFloat16 Training", arXiv 2010.06192):

- **stochastic rounding** (:func:`stochastic_round_bf16`): round ``w + u`` up with probability
  equal to how far it lies towards the upper neighbour. Each rounding is off, but its expected result
  is exact, so many small updates add up to the right total;
- **Kahan compensation** (:func:`kahan_add_`): keep, per weight, a second bf16 number holding what
  the last rounding lost, and add it back into the next update.

:class:`BF16AdamW` is AdamW with its arithmetic in fp32 whatever the parameters' dtype, and a choice
of how the new weight is written back to a bf16 parameter (``update="nearest"``, ``"stochastic"``
or ``"kahan"``) and of the precision of Adam's moments (``state_dtype``, ``state_rounding``). It is
for teaching and for measuring: the production tool is torchao's ``_AdamW(bf16_stochastic_round=True)``
(also in its 8-bit and 4-bit optimizers), which likewise computes in fp32 and keeps its moments in
the parameter's dtype. The recipes of :data:`RECIPE_NAMES` (:func:`training_recipes`) are in
:data:`mpcourse.train.RECIPES`, which loads them on first use.

Two stochastic roundings exist in the course, on purpose. :func:`mpcourse.formats.round_tensor`
(``rounding="stochastic"``) is the reference: exact, for any format, computed in float64; use it to
teach and to test. :func:`stochastic_round_bf16` does only fp32 -> bf16, with integer operations on
the bit pattern, in the memory of one int32 tensor: bf16 is the top half of fp32, so adding a random
16-bit integer to the pattern and clearing the low 16 bits rounds up with exactly the right
probability. That is what an optimizer step needs on every weight (torchao, too, rounds with integer
operations on the bit pattern); the tests check it against the reference, bit for bit on the neighbour set and statistically
on the probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import nn

from .train.recipes import Recipe

Update = Literal["nearest", "stochastic", "kahan"]
StateRounding = Literal["nearest", "stochastic"]

#: How :class:`BF16AdamW` writes a new weight back to a bf16 parameter.
UPDATES: tuple[str, ...] = ("nearest", "stochastic", "kahan")
#: How it writes Adam's moments back when they are kept in bf16.
STATE_ROUNDINGS: tuple[str, ...] = ("nearest", "stochastic")
#: Parameter dtypes it accepts (fp32 parameters are updated exactly, as torch.optim.AdamW does).
PARAM_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)
#: Dtypes the moments may be kept in.
STATE_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)

_LOW16 = 1 << 16
_HIGH16_MASK = -_LOW16  # 0xFFFF0000 as a signed int32: keeps sign, exponent and the top 7 mantissa bits


def _require_float32(x: Any, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} expects a torch.Tensor of dtype torch.float32; got {type(x).__name__}")
    if x.dtype != torch.float32:
        advice = (
            "it is already bf16: there is nothing to round"
            if x.dtype == torch.bfloat16
            else "convert it with .float() first (float64 would be rounded twice: use "
            "mpcourse.formats.round_tensor for an exact rounding from any dtype)"
            if x.is_floating_point()
            else "integer and boolean tensors hold no fractions to round"
        )
        raise TypeError(f"{what} expects a float32 tensor; got {x.dtype} ({advice})")
    return x


def stochastic_round_bf16(x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Round a float32 tensor to bf16 stochastically, with integer operations on its bits.

    A float32 value whose low 16 bits are ``f`` lies ``f / 2^16`` of the way from the bf16 value
    below it in magnitude (its top 16 bits) to the next one. Adding a uniform random integer
    ``r`` in ``[0, 2^16)`` to the 32-bit pattern carries into bit 16 exactly when ``r >= 2^16 - f``,
    which happens with probability ``f / 2^16``; clearing the low 16 bits then leaves the upper
    neighbour with that probability and the lower one otherwise. Sign-magnitude encoding makes this
    right for negative numbers and subnormals too, a carry out of the largest finite binade gives
    infinity (as for any rounding away from zero), and infinities are unchanged. NaNs are passed
    through explicitly: a NaN payload could carry into the sign bit.

    Args:
        x: a float32 tensor, on any device.
        generator: a ``torch.Generator`` on ``x``'s device, for reproducible draws.

    Returns:
        a bf16 tensor shaped like ``x``; each element is one of the two bf16 neighbours of the input
        (the input itself when it is already a bf16 value), and its expectation is the input.

    Raises:
        TypeError: if ``x`` is not a float32 tensor (saying what to do instead).
    """
    x = _require_float32(x, "stochastic_round_bf16")
    bits = x.contiguous().view(torch.int32)
    noise = torch.randint(0, _LOW16, x.shape, generator=generator, device=x.device, dtype=torch.int32)
    rounded = ((bits + noise) & _HIGH16_MASK).view(torch.float32)
    rounded = torch.where(torch.isnan(x), x, rounded)
    return rounded.to(torch.bfloat16)  # exact: the low 16 bits are zero


def _check_update_operands(param: Any, update: Any, what: str) -> None:
    if not isinstance(param, torch.Tensor) or not isinstance(update, torch.Tensor):
        raise TypeError(f"{what} expects tensors; got {type(param).__name__} and {type(update).__name__}")
    if param.dtype not in PARAM_DTYPES:
        raise TypeError(
            f"{what}: the parameter has dtype {param.dtype}; accepted: torch.bfloat16 (or torch.float32, "
            "which is updated exactly). fp16 weights need fp32 master weights and a loss scaler instead."
        )
    if not update.is_floating_point():
        raise TypeError(f"{what}: the update must be a floating-point tensor, got {update.dtype}")
    if update.shape != param.shape:
        raise ValueError(
            f"{what}: the update has shape {tuple(update.shape)}, the parameter {tuple(param.shape)}"
        )


@torch.no_grad()
def stochastic_add_(
    param: torch.Tensor, update: torch.Tensor, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``param += update``, computed in fp32 and written back with stochastic rounding (in place).

    For a float32 ``param`` this is a plain exact-as-fp32 addition.
    """
    _check_update_operands(param, update, "stochastic_add_")
    target = param.float() + update.float()
    if param.dtype == torch.float32:
        return param.copy_(target)
    return param.copy_(stochastic_round_bf16(target, generator=generator))


@torch.no_grad()
def kahan_add_(param: torch.Tensor, update: torch.Tensor, compensation: torch.Tensor) -> torch.Tensor:
    """``param += update`` with Kahan compensation, in place: nothing the rounding drops is lost.

    ``compensation`` (same dtype and shape as ``param``, zeros at the start) holds what previous
    roundings of ``param`` dropped. The update and the compensation are added in fp32 (both small,
    so this is nearly exact), that sum is added to the weight in fp32, and the result is rounded to
    the parameter's dtype to nearest; what that rounding dropped, ``target - new``, is exact in fp32
    and becomes the new compensation. Over many steps the weight therefore follows the fp32 sum of
    the updates to within one rounding of the compensation (Kahan's compensated summation, CACM
    8(1), 1965, applied to weight updates as in Zamirai et al., arXiv 2010.06192). The extra cost is
    one bf16 number per weight.

    Raises:
        TypeError / ValueError: for non-tensors, a parameter that is not bf16 or fp32, a
            non-float update, or shapes and dtypes that do not match.
    """
    _check_update_operands(param, update, "kahan_add_")
    if not isinstance(compensation, torch.Tensor) or compensation.dtype != param.dtype:
        raise TypeError(
            f"kahan_add_: the compensation must be a tensor of the parameter's dtype ({param.dtype}); got "
            f"{getattr(compensation, 'dtype', type(compensation).__name__)}"
        )
    if compensation.shape != param.shape:
        raise ValueError(
            f"kahan_add_: the compensation has shape {tuple(compensation.shape)}, the parameter {tuple(param.shape)}"
        )
    target = param.float() + (update.float() + compensation.float())
    new = target.to(param.dtype)
    compensation.copy_(target - new.float())
    return param.copy_(new)


class BF16AdamW(torch.optim.Optimizer):
    """AdamW whose arithmetic is fp32 whatever the parameters' dtype, with a choice of write-back.

    The update is decoupled AdamW's (Loshchilov and Hutter; as in ``torch.optim.AdamW``)::

        m = beta1 m + (1 - beta1) g;   v = beta2 v + (1 - beta2) g^2
        w = w - lr * weight_decay * w - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)

    computed in fp32 from the stored values. What is configurable is where precision is lost:

    - ``update``: how the new weight is written back to a bf16 parameter: ``"nearest"`` (a plain
      cast: updates below half a bf16 gap vanish), ``"stochastic"`` (:func:`stochastic_round_bf16`:
      unbiased), or ``"kahan"`` (:func:`kahan_add_`: one extra bf16 buffer per weight, state key
      ``"compensation"``). fp32 parameters are always updated as fp32, like ``torch.optim.AdamW``.
    - ``state_dtype``: Adam's moments in ``torch.float32`` (8 bytes per weight) or
      ``torch.bfloat16`` (4 bytes; what torchao's optimizers keep for bf16 weights).
    - ``state_rounding``: how bf16 moments are written back: ``"nearest"`` or ``"stochastic"``. With
      ``"nearest"``, the second moment's decay by ``beta2 = 0.999`` (a relative change of 1e-3, below
      bf16's half gap of 2^-9 to 2^-8) is lost, so ``v`` can grow but never shrink.

    Args:
        params: parameters (or parameter groups) of dtype float32 or bfloat16.
        lr, betas, eps, weight_decay: as in ``torch.optim.AdamW`` (same defaults).
        update, state_dtype, state_rounding: see above.
        seed: seeds the random draws of stochastic rounding (one generator per device), so a run
            is reproducible. Generators are not part of ``state_dict()``.

    Raises:
        ValueError: for hyper-parameters out of range or unknown option names, listing what is accepted.
        TypeError: for parameters that are not float32 or bfloat16 tensors, or an unknown state dtype.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        update: Update = "stochastic",
        state_dtype: torch.dtype = torch.float32,
        state_rounding: StateRounding = "nearest",
        seed: int = 0,
    ) -> None:
        if not 0.0 <= lr:
            raise ValueError(f"BF16AdamW: lr must be >= 0, got {lr}")
        if not (len(betas) == 2 and all(0.0 <= b < 1.0 for b in betas)):
            raise ValueError(f"BF16AdamW: betas must be two numbers in [0, 1), got {betas}")
        if not 0.0 <= eps:
            raise ValueError(f"BF16AdamW: eps must be >= 0, got {eps}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"BF16AdamW: weight_decay must be >= 0, got {weight_decay}")
        if update not in UPDATES:
            raise ValueError(f"BF16AdamW: unknown update {update!r}; accepted: {', '.join(UPDATES)}")
        if state_dtype not in STATE_DTYPES:
            raise TypeError(
                f"BF16AdamW: state_dtype {state_dtype!r} is not accepted; accepted: torch.float32, torch.bfloat16"
            )
        if state_rounding not in STATE_ROUNDINGS:
            raise ValueError(
                f"BF16AdamW: unknown state_rounding {state_rounding!r}; accepted: {', '.join(STATE_ROUNDINGS)}"
            )
        if state_rounding == "stochastic" and state_dtype != torch.bfloat16:
            raise ValueError(
                "BF16AdamW: state_rounding='stochastic' needs state_dtype=torch.bfloat16 (fp32 moments are not rounded)"
            )
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        for group in self.param_groups:
            for p in group["params"]:
                if not isinstance(p, torch.Tensor) or p.dtype not in PARAM_DTYPES:
                    raise TypeError(
                        f"BF16AdamW: a parameter has dtype {getattr(p, 'dtype', type(p).__name__)}; accepted: "
                        "torch.float32 and torch.bfloat16 (fp16 weights need fp32 master weights and a loss scaler)"
                    )
        self.update = update
        self.state_dtype = state_dtype
        self.state_rounding = state_rounding
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state, plus the states of the generators that draw its stochastic roundings.

        With them, a run resumed from a checkpoint rounds exactly as the uninterrupted run would have.
        """
        out = super().state_dict()
        out["rounding_generators"] = {str(device): g.get_state() for device, g in self._generators.items()}
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`, keeping Adam's moments in ``state_dtype``.

        torch's loader casts every floating-point state tensor to its parameter's dtype: fp32 moments
        of bf16 weights would come back rounded to bf16. They are restored here from the saved tensors.
        """
        state_dict = dict(state_dict)
        generators = state_dict.pop("rounding_generators", {})
        saved = state_dict["state"]
        ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        super().load_state_dict(state_dict)
        for i, p in zip(ids, params):
            for key in ("exp_avg", "exp_avg_sq"):
                if key in saved.get(i, {}):
                    self.state[p][key] = saved[i][key].to(device=p.device, dtype=self.state_dtype, copy=True)
        for device, state in generators.items():
            self._generator(torch.device(device)).set_state(state)

    def _store_state(self, stored: torch.Tensor, value: torch.Tensor) -> None:
        if stored is value:  # fp32 state, updated in place
            return
        if self.state_rounding == "stochastic":
            stored.copy_(stochastic_round_bf16(value, generator=self._generator(value.device)))
        else:
            stored.copy_(value)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("BF16AdamW does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(
                        p, dtype=self.state_dtype, memory_format=torch.preserve_format
                    )
                    state["exp_avg_sq"] = torch.zeros_like(
                        p, dtype=self.state_dtype, memory_format=torch.preserve_format
                    )
                    if self.update == "kahan" and p.dtype != torch.float32:
                        state["compensation"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                grad = p.grad.float()
                exp_avg = state["exp_avg"].float().lerp_(grad, 1 - beta1)
                exp_avg_sq = state["exp_avg_sq"].float().mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                self._store_state(state["exp_avg"], exp_avg)
                self._store_state(state["exp_avg_sq"], exp_avg_sq)
                denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
                delta = (exp_avg / denom).mul_(-lr / (1 - beta1**t))
                if wd:
                    delta.add_(p.float(), alpha=-lr * wd)
                self._write(p, delta, state)
        return loss

    def _write(self, p: torch.Tensor, delta: torch.Tensor, state: dict[str, Any]) -> None:
        if p.dtype == torch.float32:
            p.add_(delta)
        elif self.update == "stochastic":
            stochastic_add_(p, delta, generator=self._generator(p.device))
        elif self.update == "kahan":
            kahan_add_(p, delta, state["compensation"])
        else:
            p.copy_(p.float() + delta)


# ---- measuring what a step did ----------------------------------------------------------------------


class StepMonitor:
    """Records, at every optimizer step, how much of the model the step actually changed.

    Attached to an optimizer (:meth:`attach`, or :meth:`wrap` for a training recipe), it copies the
    parameters before each ``step()`` and compares them after it, bit for bit. Per step it appends
    to :attr:`unchanged` the fraction of weights left exactly as they were, and to
    :attr:`relative_update` the median of ``|new - old| / |old|`` over the weights that are not zero.
    In fp32 a step changes essentially every weight; in pure bf16 with round-to-nearest, every update
    below half a bf16 gap is rounded away and shows up here as "unchanged".

    It costs one copy of the parameters per step: meant for the course's small models. The last
    optimizer it was attached to is kept in :attr:`optimizer` (to measure its state afterwards).
    """

    def __init__(self) -> None:
        self.unchanged: list[float] = []
        self.relative_update: list[float] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self._before: list[torch.Tensor] = []

    def attach(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Hook into ``optimizer`` (returned, for chaining)."""
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"StepMonitor.attach expects a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        params = [p for group in optimizer.param_groups for p in group["params"]]

        def before(*_: Any) -> None:
            self._before = [p.detach().clone() for p in params]

        def after(*_: Any) -> None:
            old = torch.cat([b.reshape(-1).float() for b in self._before])
            new = torch.cat([p.detach().reshape(-1).float() for p in params])
            self.unchanged.append((new == old).float().mean().item())
            nonzero = old != 0
            ratio = (
                ((new - old).abs()[nonzero] / old.abs()[nonzero]) if bool(nonzero.any()) else old.new_zeros(1)
            )
            self.relative_update.append(ratio.median().item())
            self._before = []

        optimizer.register_step_pre_hook(before)
        optimizer.register_step_post_hook(after)
        self.optimizer = optimizer
        return optimizer

    def wrap(self, recipe: str | Recipe, optimizer: str = "adamw") -> Recipe:
        """``recipe`` (a name or :class:`~mpcourse.train.Recipe`) with this monitor on its optimizer.

        The recipe's own optimizer is used if it brings one; otherwise ``optimizer``, a name of
        :data:`mpcourse.train.OPTIMIZERS`. Pass the result to :func:`mpcourse.train.train`.
        """
        from dataclasses import replace

        from .train import OPTIMIZERS, get_recipe

        base = get_recipe(recipe)
        if base.make_optimizer is not None:
            factory = base.make_optimizer
        elif optimizer in OPTIMIZERS:
            factory = OPTIMIZERS[optimizer]
        else:
            raise ValueError(f"unknown optimizer {optimizer!r}; accepted: {', '.join(OPTIMIZERS)}")
        return replace(base, make_optimizer=lambda params, lr: self.attach(factory(params, lr)))


# ---- recipes --------------------------------------------------------------------------------------


def _factory(update: Update, state_dtype: torch.dtype):
    def make(params: Iterable[nn.Parameter], lr: float) -> BF16AdamW:
        return BF16AdamW(params, lr=lr, update=update, state_dtype=state_dtype)

    return make


_BF16, _FP32 = torch.bfloat16, torch.float32

#: name -> (description, parameter dtype, autocast dtype, write-back of the weights, dtype of Adam's moments)
_RECIPE_TABLE: dict[str, tuple[str, torch.dtype, torch.dtype | None, Update, torch.dtype]] = {
    "pure_bf16_sr": (
        "pure bf16 (weights, gradients, Adam moments in bf16), AdamW computed in fp32 and the new weights "
        "written back with stochastic rounding (as torchao's _AdamW(bf16_stochastic_round=True))",
        _BF16,
        None,
        "stochastic",
        _BF16,
    ),
    "pure_bf16_kahan": (
        "pure bf16 with Kahan-compensated weight updates: one extra bf16 buffer per weight keeps what "
        "rounding drops; Adam moments in bf16",
        _BF16,
        None,
        "kahan",
        _BF16,
    ),
    "pure_bf16_fp32_math": (
        "pure bf16, AdamW computed in fp32 but the new weights rounded to nearest bf16: shows that fp32 "
        "arithmetic alone does not save small updates",
        _BF16,
        None,
        "nearest",
        _FP32,
    ),
    "pure_bf16_sr_fp32_moments": (
        "pure bf16 weights with stochastic rounding, Adam moments kept in fp32",
        _BF16,
        None,
        "stochastic",
        _FP32,
    ),
    "bf16_bf16_moments": (
        "bf16 autocast with fp32 master weights, but Adam's moments stored in bf16 (rounded to nearest)",
        _FP32,
        _BF16,
        "nearest",
        _BF16,
    ),
}


def training_recipes() -> tuple[Recipe, ...]:
    """The pure-bf16 recipes of :data:`_RECIPE_TABLE`, for :data:`mpcourse.train.RECIPES` (which loads them)."""
    return tuple(
        Recipe(
            name,
            description,
            autocast_dtype=autocast,
            param_dtype=param,
            precision="bf16",
            make_optimizer=_factory(update, state),
        )
        for name, (description, param, autocast, update, state) in _RECIPE_TABLE.items()
    )


#: The recipes this module provides to :data:`mpcourse.train.RECIPES`.
RECIPE_NAMES: tuple[str, ...] = tuple(r.name for r in training_recipes())
