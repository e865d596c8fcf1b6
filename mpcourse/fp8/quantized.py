"""A quantised tensor: narrow elements, scales, and what the round trip lost.

Every scaling recipe of :mod:`mpcourse.fp8.recipes` returns the same thing, a :class:`Quantized`:
elements in the narrow format, the decode scales of their blocks (``x ≈ element × scale``), and
enough metadata to dequantize and to count the bits. This module holds that container, the exact
power-of-two arithmetic its E8M0 (MX) scales need, and :func:`error_stats`, which measures what a
quantisation lost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import formats

__all__ = [
    "E8M0_DTYPE",
    "Quantized",
    "dequantize",
    "e8m0_to_float",
    "error_stats",
    "expand_blocks",
    "float_to_e8m0",
    "pow2",
]

#: torch's dtype for E8M0 scales (None in a PyTorch without it: MX scales are then kept as float32).
E8M0_DTYPE: torch.dtype | None = getattr(torch, "float8_e8m0fnu", None)


@dataclass(frozen=True)
class Quantized:
    """A tensor stored as narrow-format elements and scales: ``x ≈ data × scale`` (× ``tensor_scale``).

    Attributes:
        data: the elements, shaped like the original tensor; a torch fp8 dtype where torch has one,
            else float32 holding values exactly representable in ``fmt`` (FP4, FP6).
        scale: decode scales, one per block. Same number of dimensions as ``data``; each dimension
            is ``data``'s divided by the block extent along it (a 0-d tensor for tensorwise).
            float32, except MX (``torch.float8_e8m0fnu``) and NVFP4 (``torch.float8_e4m3fn``).
        tensor_scale: NVFP4's second-level fp32 scale (None for the other recipes).
        recipe, fmt, block_size, axis: how it was made (``axis``: the dimension the blocks or rows
            run along, i.e. the K of the GEMM that will consume it).
    """

    data: torch.Tensor
    scale: torch.Tensor
    recipe: str
    fmt: formats.FloatFormat
    block_size: int | None
    axis: int
    tensor_scale: torch.Tensor | None = None

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    def scale_values(self) -> torch.Tensor:
        """The decode scales as float32, NVFP4's tensor scale folded in."""
        s = e8m0_to_float(self.scale) if self.scale.dtype == E8M0_DTYPE else self.scale.float()
        return s * self.tensor_scale if self.tensor_scale is not None else s

    def expanded_scale(self) -> torch.Tensor:
        """The decode scale of every element, shaped like ``data`` (float32)."""
        return expand_blocks(self.scale_values(), self.data.shape)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The values this quantisation represents, ``data × scale``, in ``dtype``."""
        return (self.data.float() * self.expanded_scale()).to(dtype)

    @property
    def scale_bits(self) -> int:
        """Storage bits of all scales together."""
        bits = {"float32": 32, "float8_e8m0fnu": 8, "float8_e4m3fn": 8}
        total = self.scale.numel() * bits.get(formats.dtype_name(self.scale.dtype), 32)
        return total + (32 if self.tensor_scale is not None else 0)

    @property
    def bits_per_element(self) -> float:
        """Storage per element, scales included: e.g. 8.25 for MXFP8, 4.5 (and a little) for NVFP4."""
        n = self.data.numel()
        return (n * self.fmt.bits + self.scale_bits) / n

    @property
    def nbytes(self) -> int:
        """Bytes this representation needs (elements packed at ``fmt.bits`` each, plus scales)."""
        return math.ceil((self.data.numel() * self.fmt.bits + self.scale_bits) / 8)

    def __repr__(self) -> str:
        block = f", block {self.block_size}" if self.block_size else ""
        return (
            f"Quantized({self.recipe}, {self.fmt.name}{block}, shape {tuple(self.data.shape)}, "
            f"{self.scale.numel()} scale(s), {self.bits_per_element:.3f} bits/element)"
        )


def expand_blocks(scale: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Repeat each block's scale over the elements it covers, to ``shape`` (a 0-d scale broadcasts)."""
    if scale.dim() == 0:
        return scale.expand(shape)
    out = scale
    for dim, (n_scale, n_data) in enumerate(zip(scale.shape, shape)):
        if n_scale != n_data:
            out = out.repeat_interleave(n_data // n_scale, dim=dim)
    return out


def dequantize(q: Quantized, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``q.dequantize(dtype)``: the values a quantisation represents."""
    return q.dequantize(dtype)


# ---- powers of two and E8M0 scales ---------------------------------------------------------------


def pow2(exponent: torch.Tensor) -> torch.Tensor:
    """``2^exponent`` as float32, exactly, built from its bits (integer exponents in [-149, 127]).

    (``torch.ldexp`` and ``torch.exp2`` go through floating-point arithmetic that is not guaranteed
    exact for every exponent on every device; a power of two's bit pattern is.)
    """
    e = exponent.to(torch.int32).clamp(-149, 127)
    normal = (e + 127) << 23
    subnormal = torch.ones_like(e) << (e + 149).clamp(0, 22)
    return torch.where(e >= -126, normal, subnormal).view(torch.float32)


def float_to_e8m0(scale: torch.Tensor) -> torch.Tensor:
    """Powers of two (or NaN) as ``torch.float8_e8m0fnu``, built from the bits (biased exponent, 0xFF for NaN)
    so that no cast kernel is needed on any device; float32 where torch lacks the dtype."""
    if E8M0_DTYPE is None:
        return scale
    _, e = torch.frexp(scale)
    biased = torch.where(
        torch.isfinite(scale),
        (e.to(torch.int32) - 1 + 127).clamp(0, 254),
        torch.full_like(e, 255, dtype=torch.int32),
    )
    return biased.to(torch.uint8).view(E8M0_DTYPE)


def e8m0_to_float(t: torch.Tensor) -> torch.Tensor:
    """Decode ``torch.float8_e8m0fnu`` values to float32 from their bits: 2^(bits - 127), NaN for 0xFF."""
    bits = t.view(torch.uint8).to(torch.int32)
    return torch.where(bits == 255, torch.full_like(bits, math.nan, dtype=torch.float32), pow2(bits - 127))


# ---- what was lost ------------------------------------------------------------------------------


def error_stats(x: torch.Tensor, q: Quantized | torch.Tensor) -> dict[str, float]:
    """How much a quantisation lost, in float64.

    - ``relative_error``: ``||x - x̂|| / ||x||`` (Frobenius norms);
    - ``snr_db``: ``20 log10(||x|| / ||x - x̂||)``, signal-to-noise ratio in decibels (inf if exact);
    - ``underflow``: fraction of the non-zero entries of ``x`` that became 0;
    - ``saturated``: fraction of entries clamped to ±max (their scaled value was beyond the rounding
      tie above max, where rounding alone would have left the format; NaN when ``q`` is a plain tensor);
    - ``nonfinite``: fraction of entries that became NaN or inf;
    - ``bits_per_element``: storage cost with scales (NaN when ``q`` is a plain tensor).
    """
    x64 = x.detach().double()
    if isinstance(q, Quantized):
        data, scale = q.data.float(), q.expanded_scale()
        xhat = (data * scale).double()
    else:
        xhat = q.detach().double()
    if xhat.shape != x64.shape:
        raise ValueError(f"shapes differ: x {tuple(x64.shape)} vs quantised {tuple(xhat.shape)}")
    finite = torch.isfinite(xhat)
    diff = torch.where(finite, xhat - x64, torch.zeros_like(x64))
    signal, noise = torch.linalg.norm(x64).item(), torch.linalg.norm(diff).item()
    nonzero = x64 != 0
    if isinstance(
        q, Quantized
    ):  # stored at ±max although the scaled value was beyond the rounding tie above max
        tie = q.fmt.max + float(q.fmt.spacing(q.fmt.max)) / 2
        saturated = ((data.abs() == q.fmt.max) & (x64.abs() > tie * scale.double())).sum().item() / max(
            x64.numel(), 1
        )
    else:
        saturated = math.nan
    return {
        "relative_error": noise / signal if signal else 0.0,
        "snr_db": 20 * math.log10(signal / noise) if noise else math.inf,
        "underflow": ((xhat == 0) & nonzero).sum().item() / max(nonzero.sum().item(), 1),
        "saturated": saturated,
        "nonfinite": (~finite).sum().item() / max(x64.numel(), 1),
        "bits_per_element": q.bits_per_element if isinstance(q, Quantized) else math.nan,
    }
