"""Delayed scaling: Transformer Engine's recipe, where a tensor's scale comes from earlier steps' amaxes.

Current scaling (:func:`mpcourse.fp8.quantize` with ``"tensorwise"``) reads a tensor's amax before
casting it, which costs a pass over the tensor (a reduction) before the cast can start. Delayed
scaling removes that wait: each step casts with a scale chosen from a *history* of the amaxes of
previous steps, and only records the new amax for the steps to come. It is stateful, so it lives
here, apart from the stateless recipes of :mod:`mpcourse.fp8.recipes`:

- :class:`DelayedScaling`: the recipe's settings, with Transformer Engine's documented defaults
  (amax history of 1024 steps, ``max`` over it, margin 0, E4M3 forward and E5M2 backward);
- :class:`DelayedScaler`: the state of one tensor (its amax history and current scale), which
  ``quantize(x, "delayed", scaler=...)`` and :class:`mpcourse.fp8.FP8Linear` use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import formats
from .recipes import FP8_FORMATS, Quantized, cast

__all__ = ["AMAX_COMPUTE_ALGOS", "FP8_FORMAT_CHOICES", "DelayedScaler", "DelayedScaling"]

AMAX_COMPUTE_ALGOS: tuple[str, ...] = ("max", "most_recent")
FP8_FORMAT_CHOICES: dict[str, tuple[str, str]] = {
    "hybrid": ("float8_e4m3fn", "float8_e5m2"),
    "e4m3": ("float8_e4m3fn", "float8_e4m3fn"),
}


@dataclass(frozen=True)
class DelayedScaling:
    """Transformer Engine's ``DelayedScaling`` recipe, with its documented defaults.

    ``fp8_format="hybrid"`` stores forward tensors (activations, weights) in E4M3 and backward
    tensors (gradients) in E5M2; ``"e4m3"`` uses E4M3 everywhere. The scale of each tensor is
    ``fp8_max / amax / 2^margin``, where amax is the largest entry (``"max"``) or the newest entry
    (``"most_recent"``) of a history of the last ``amax_history_len`` steps' amaxes, and it is used
    from the *next* step on: that is what "delayed" means.
    """

    margin: int = 0
    fp8_format: str = "hybrid"
    amax_history_len: int = 1024
    amax_compute_algo: str | Callable[[torch.Tensor], torch.Tensor] = "max"

    def __post_init__(self) -> None:
        if self.fp8_format not in FP8_FORMAT_CHOICES:
            raise ValueError(f"fp8_format={self.fp8_format!r}; accepted: {', '.join(FP8_FORMAT_CHOICES)}")
        if not isinstance(self.amax_history_len, int) or self.amax_history_len < 1:
            raise ValueError(f"amax_history_len must be a positive integer, got {self.amax_history_len!r}")
        if not callable(self.amax_compute_algo) and self.amax_compute_algo not in AMAX_COMPUTE_ALGOS:
            raise ValueError(
                f"amax_compute_algo={self.amax_compute_algo!r}; accepted: "
                f"{', '.join(AMAX_COMPUTE_ALGOS)} or a function history -> amax"
            )

    @property
    def forward_format(self) -> formats.FloatFormat:
        return formats.get(FP8_FORMAT_CHOICES[self.fp8_format][0])

    @property
    def backward_format(self) -> formats.FloatFormat:
        return formats.get(FP8_FORMAT_CHOICES[self.fp8_format][1])

    def scaler(self, backward: bool = False) -> DelayedScaler:
        """A fresh :class:`DelayedScaler` for one tensor (a gradient if ``backward``)."""
        fmt = self.backward_format if backward else self.forward_format
        return DelayedScaler(fmt, self.amax_history_len, self.amax_compute_algo, self.margin)


class DelayedScaler(nn.Module):
    """The delayed-scaling state of one tensor: an amax history and the scale derived from it.

    Mirrors Transformer Engine's kernel (``delayed_scaling.cu``) step for step:

    - ``amax_history[0]`` receives the amax of the tensor quantised in the current step;
    - :meth:`update` takes the amax to use (``max`` of the whole history, or the ``most_recent``
      entry ``amax_history[0]``), sets ``scale = fp8_max * 2^-margin / amax`` if that amax is finite
      and positive (else keeps the old scale), then rolls the history by one (``torch.roll(h, -1)``)
      and clears slot 0 for the next step;
    - ``scale`` starts at 1, so the very first step casts unscaled.

    ``scale`` is TE's *encode* scale (multiplied in before the cast); the decode scale in the
    :class:`Quantized` it returns is ``1 / scale``. Buffers move with ``.to(device)``.
    """

    amax_history: torch.Tensor
    scale: torch.Tensor

    def __init__(
        self,
        fmt: Any = "e4m3",
        amax_history_len: int = 1024,
        amax_compute_algo: str | Callable[[torch.Tensor], torch.Tensor] = "max",
        margin: int = 0,
    ) -> None:
        super().__init__()
        DelayedScaling(margin, "hybrid", amax_history_len, amax_compute_algo)  # validates the arguments
        self.fmt = formats.get(fmt)
        if self.fmt.name not in FP8_FORMATS:
            raise ValueError(
                f"delayed scaling stores fp8; accepted formats: {', '.join(FP8_FORMATS)}, got {self.fmt.name!r}"
            )
        self.amax_compute_algo = amax_compute_algo
        self.margin = margin
        self.register_buffer("amax_history", torch.zeros(amax_history_len))
        self.register_buffer("scale", torch.ones(()))

    @property
    def scale_inv(self) -> torch.Tensor:
        """The decode scale ``1 / scale`` (what a GEMM multiplies the fp8 product by)."""
        return 1.0 / self.scale

    def record(self, amax: torch.Tensor | float) -> None:
        """Note the amax of a tensor quantised in the current step (the largest, if several)."""
        amax = torch.as_tensor(amax, dtype=torch.float32, device=self.amax_history.device)
        self.amax_history[0] = torch.maximum(self.amax_history[0], amax)

    def update(self) -> None:
        """End of step: new scale from the history, then roll the history (TE's semantics)."""
        h = self.amax_history
        if callable(self.amax_compute_algo):
            amax = torch.as_tensor(self.amax_compute_algo(h.clone()), dtype=torch.float32, device=h.device)
        elif self.amax_compute_algo == "max":
            amax = h.max()
        else:
            amax = h[0]
        scaled_max = self.fmt.max * 2.0 ** (-self.margin)
        new = scaled_max / amax
        self.scale.copy_(torch.where(torch.isfinite(amax) & (amax > 0), new, self.scale))
        rolled = torch.roll(h, -1, 0)
        rolled[0] = 0.0
        h.copy_(rolled)

    def quantize(
        self, x: torch.Tensor, *, saturate: bool = True, record: bool = True, update: bool = True
    ) -> Quantized:
        """Cast ``x`` with the *current* scale; record its amax (``record``) and :meth:`update` (``update``).

        One call per tensor per step, with the defaults, is Transformer Engine's cycle: this step is
        cast with the scale the previous steps chose, and its amax shapes the next steps' scales.
        """
        x = x.detach().float()
        data = cast(x * self.scale, self.fmt, saturate=saturate)
        q = Quantized(data, self.scale_inv.clone(), "delayed", self.fmt, None, max(x.dim() - 1, 0))
        if record:
            self.record(x.abs().amax() if x.numel() else 0.0)
        if update:
            self.update()
        return q

    def extra_repr(self) -> str:
        return (
            f"{self.fmt.name}, history {self.amax_history.numel()}, algo {self.amax_compute_algo!r}, "
            f"margin {self.margin}"
        )
