"""Forward overflow: an fp16 activation past 65504 becomes inf, and no loss scaler can help.

A loss scaler protects the *backward* pass: it multiplies the loss, so every gradient, by S.
Nothing it does touches the forward pass. When a forward activation reaches 65520 (the first
value that rounds past fp16's largest finite value, 65504), fp16 autocast stores it as inf; a
softmax over a row holding inf computes ``inf - inf = NaN``, the loss is NaN, every gradient is
NaN, and a dynamic scaler skips the step and halves S. The next forward pass overflows the same
way, since S never entered it: the scaler skips every step and drives S down for nothing.

The usual place for this is an attention layer's logits ``q @ k^T``: a sum of ``d`` products, which
grows with the head dimension and with the size of the queries and keys. This module holds a tiny
single-head attention classifier, :class:`TinyAttention`, whose ``fix`` argument chooses among the
remedies that do work:

- ``"none"``: logits ``q @ k^T`` in the autocast dtype (fp16 overflows);
- ``"fp32_logits"``: the logits computed in fp32, autocast disabled for that one product;
- ``"scale_queries"``: queries multiplied by ``d ** -0.5`` *before* the product, as scaled
  dot-product attention does (scaling the product afterwards is too late: inf / 8 is inf);
- ``"qk_norm"``: queries and keys layer-normalised first, which bounds every logit by ``d``.

(Training in bf16, whose range is fp32's, is the fourth remedy; it needs no change to the model.)
:func:`overflow_data` makes a classification task whose inputs are large enough for the plain
logits to overflow fp16.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["FIXES", "TinyAttention", "overflow_data"]

#: The accepted values of ``TinyAttention(fix=...)``.
FIXES: tuple[str, ...] = ("none", "fp32_logits", "scale_queries", "qk_norm")


class TinyAttention(nn.Module):
    """One attention head over a sequence, mean-pooled, then a linear classifier.

    After each forward pass, ``last_logit_max`` holds the largest attention-logit magnitude that
    pass computed, as a Python float (``inf`` when a logit overflowed; NaN is reported as ``nan``).

    Args:
        d_in: features per sequence position.
        d: the head dimension (width of queries, keys and values).
        classes: number of output classes.
        fix: one of :data:`FIXES`: how the logits are kept finite, if at all.
    """

    def __init__(self, d_in: int, d: int, classes: int, fix: str = "none") -> None:
        super().__init__()
        if fix not in FIXES:
            raise ValueError(f"fix must be one of {FIXES}, not {fix!r}")
        for name, value in (("d_in", d_in), ("d", d), ("classes", classes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, not {value!r}")
        self.fix, self.d = fix, d
        self.q, self.k, self.v = (nn.Linear(d_in, d) for _ in range(3))
        self.head = nn.Linear(d, classes)
        self.q_norm = nn.LayerNorm(d) if fix == "qk_norm" else nn.Identity()
        self.k_norm = nn.LayerNorm(d) if fix == "qk_norm" else nn.Identity()
        self.last_logit_max = math.nan

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The attention logits of ``x`` (batch, positions, d_in), as this head's ``fix`` computes them."""
        q, k = self.q_norm(self.q(x)), self.k_norm(self.k(x))
        if self.fix == "scale_queries":
            q = q * self.d**-0.5
        if self.fix == "fp32_logits":
            with torch.autocast(x.device.type, enabled=False):
                return q.float() @ k.float().transpose(-1, -2)
        return q @ k.transpose(-1, -2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(
                f"TinyAttention expects (batch, positions, features), got shape {tuple(x.shape)}"
            )
        logits = self.logits(x)
        self.last_logit_max = logits.detach().abs().max().item()
        weights = logits.softmax(dim=-1)  # autocast runs softmax in fp32; inf - inf is NaN all the same
        pooled = (weights @ self.v(x)).mean(dim=1)  # under autocast, matmul casts both sides to fp16
        return self.head(pooled)


def overflow_data(
    n: int, positions: int = 8, d_in: int = 16, classes: int = 4, magnitude: float = 100.0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable task whose inputs are ``magnitude`` times a standard normal.

    The label of a sequence is the class whose (fixed, random) direction its mean input is most
    aligned with. Large inputs make large queries and keys: with the default magnitude, the plain
    attention logits of :class:`TinyAttention` exceed fp16's max.

    Returns:
        ``(x, y)``: float32 inputs of shape (n, positions, d_in) and int64 labels of shape (n,).
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, not {n!r}")
    if not (isinstance(magnitude, (int, float)) and math.isfinite(magnitude) and magnitude > 0):
        raise ValueError(f"magnitude must be a positive finite number, not {magnitude!r}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, positions, d_in, generator=gen) * magnitude
    directions = torch.randn(d_in, classes, generator=gen)
    y = (x.mean(dim=1) @ directions).argmax(dim=1)
    return x, y
