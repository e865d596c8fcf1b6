"""Scaling recipes: how a tensor is put into an 8-bit (or 4-bit) format, and what it costs.

An 8-bit float has too little range for a tensor as it comes: E4M3 spans about 2^-9 to 448, and a
gradient tensor's values may all sit below 2^-10. So every fp8 recipe stores a tensor as
*elements* in the narrow format plus one or more *scales*, and ``x ≈ element × scale``. Recipes
differ only in how many scales there are and how each is chosen:

============== ============================================ ====================== ==================
recipe         one scale per                                scale stored as        source
============== ============================================ ====================== ==================
tensorwise     tensor (from its amax, now: "current")       fp32                   FP8 paper, TE, torchao
delayed        tensor (from an amax *history*)              fp32                   TE DelayedScaling
rowwise        row (slice along the GEMM's K dimension)     fp32                   torchao rowwise
blockwise      1 x 128 block along K (DeepSeek-V3 acts)     fp32                   DeepSeek-V3, TE
blockwise_2d   128 x 128 tile (DeepSeek-V3 weights)         fp32                   DeepSeek-V3, TE
mx             32 consecutive elements along K              E8M0 (a power of two)  OCP MX v1.0
nvfp4          16 elements along K, plus one per tensor     E4M3, and fp32         NVIDIA (TE docs)
============== ============================================ ====================== ==================

:func:`quantize` applies any of them to any tensor and returns a :class:`Quantized` (elements,
scales, and enough metadata to dequantize and to count the bits); :func:`error_stats` measures
what was lost. Convention: a **scale here is always the decode scale**, the number the stored
element is multiplied by (what ``torch._scaled_mm`` takes as ``scale_a``/``scale_b``, and what the
MX spec calls X). Transformer Engine's ``scale`` is the reciprocal, the factor applied *before* the
cast; :class:`DelayedScaler` keeps TE's convention internally, as its docstring says.

Casting is saturating by default (values beyond the format's largest finite value become ±max, as
TE and torchao do); ``saturate=False`` gives the OCP spec's other conversion, where they become NaN
(E4M3, which has no infinity) or ±inf (E5M2). Elements are stored in torch's own fp8 dtypes where
torch has one (``torch.float8_e4m3fn``, ...); FP4 and FP6 elements, which torch cannot hold unpacked,
are float32 tensors holding exactly representable values (the bit counts below still use 4 or 6).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from .. import formats

Granularity = Literal["tensor", "row", "block", "block2d"]

#: Element formats a recipe can store into (every signed format of at most 8 bits).
ELEMENT_FORMATS: tuple[str, ...] = (
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
    "float6_e2m3fn", "float6_e3m2fn", "float4_e2m1fn",
)
FP8_FORMATS: tuple[str, ...] = ELEMENT_FORMATS[:4]
MX_FORMATS: tuple[str, ...] = ("float8_e4m3fn", "float8_e5m2", "float6_e2m3fn", "float6_e3m2fn", "float4_e2m1fn")

E4M3 = formats.get("e4m3")
E5M2 = formats.get("e5m2")
E2M1 = formats.get("e2m1")
E8M0 = formats.get("e8m0")
E8M0_DTYPE: torch.dtype | None = getattr(torch, "float8_e8m0fnu", None)


@dataclass(frozen=True)
class ScalingRecipe:
    """One way of choosing scales: its granularity, default block size, scale format and formats."""

    name: str
    description: str
    granularity: Granularity
    block_size: int | None
    scale_format: str
    default_format: str
    formats: tuple[str, ...]
    sources: tuple[str, ...] = ()

    @property
    def stateful(self) -> bool:
        """True when the scale depends on earlier tensors (delayed scaling), not only on this one."""
        return self.name == "delayed"


RECIPES: dict[str, ScalingRecipe] = {
    r.name: r
    for r in (
        ScalingRecipe(
            "tensorwise", "one fp32 scale per tensor, from the tensor's own amax (\"current\" or \"dynamic\" scaling)",
            "tensor", None, "float32", "float8_e4m3fn", ELEMENT_FORMATS,
            ("micikevicius2022fp8", "nvidia-te-recipes", "torchao-float8"),
        ),
        ScalingRecipe(
            "delayed", "one fp32 scale per tensor, from the largest amax of the previous steps (an amax history)",
            "tensor", None, "float32", "float8_e4m3fn", FP8_FORMATS, ("nvidia-te-recipes",),
        ),
        ScalingRecipe(
            "rowwise", "one fp32 scale per row: per slice along the GEMM's inner (K) dimension",
            "row", None, "float32", "float8_e4m3fn", ELEMENT_FORMATS, ("torchao-float8",),
        ),
        ScalingRecipe(
            "blockwise", "one fp32 scale per 1 x B block along K (DeepSeek-V3: 1 x 128 for activations and gradients)",
            "block", 128, "float32", "float8_e4m3fn", ELEMENT_FORMATS, ("deepseek2024v3", "nvidia-te-blockwise"),
        ),
        ScalingRecipe(
            "blockwise_2d", "one fp32 scale per B x B tile (DeepSeek-V3: 128 x 128 for weights)",
            "block2d", 128, "float32", "float8_e4m3fn", ELEMENT_FORMATS, ("deepseek2024v3", "nvidia-te-blockwise"),
        ),
        ScalingRecipe(
            "mx", "OCP microscaling: one E8M0 (power-of-two) scale per 32 consecutive elements along K",
            "block", 32, "float8_e8m0fnu", "float8_e4m3fn", MX_FORMATS, ("ocp2023mx",),
        ),
        ScalingRecipe(
            "nvfp4", "NVIDIA's NVFP4: E2M1 elements, one E4M3 scale per 16 elements along K, one fp32 scale per tensor",
            "block", 16, "float8_e4m3fn x float32", "float4_e2m1fn", ("float4_e2m1fn",), ("nvidia-te-nvfp4",),
        ),
    )
}

#: Other names for recipes, each with the format and block size it implies (None: the recipe's default).
ALIASES: dict[str, tuple[str, str | None, int | None]] = {
    "current": ("tensorwise", None, None),
    "dynamic": ("tensorwise", None, None),
    "per_tensor": ("tensorwise", None, None),
    "block_1x128": ("blockwise", None, 128),
    "block_128x128": ("blockwise_2d", None, 128),
    "deepseek": ("blockwise", None, 128),
    "mxfp8": ("mx", "float8_e4m3fn", 32),
    "mxfp8_e5m2": ("mx", "float8_e5m2", 32),
    "mxfp6": ("mx", "float6_e2m3fn", 32),
    "mxfp4": ("mx", "float4_e2m1fn", 32),
}

MX_SCALE_ROUNDINGS: tuple[str, ...] = ("floor", "rceil")


def resolve(recipe: str, fmt: Any = None, block_size: int | None = None) -> tuple[ScalingRecipe, formats.FloatFormat, int | None]:
    """The recipe, element format and block size that ``quantize(x, recipe, fmt, block_size=...)`` uses.

    Raises:
        ValueError: for an unknown recipe, a format the recipe cannot store into, or a bad block size,
            each naming what is accepted.
    """
    if not isinstance(recipe, str):
        raise TypeError(f"recipe must be a name, got {type(recipe).__name__}")
    key = recipe.strip().lower()
    alias_fmt, alias_block = None, None
    if key in ALIASES:
        key, alias_fmt, alias_block = ALIASES[key]
    if key not in RECIPES:
        raise ValueError(
            f"unknown scaling recipe {recipe!r}; accepted: {', '.join(RECIPES)} "
            f"(aliases: {', '.join(ALIASES)})"
        )
    spec = RECIPES[key]
    if alias_fmt is not None and fmt is not None and formats.get(fmt).name != alias_fmt:
        raise ValueError(f"recipe {recipe!r} means {alias_fmt} elements; got fmt={formats.get(fmt).name!r}. "
                         f"Use recipe {key!r} to choose the format yourself.")
    chosen = formats.get(fmt if fmt is not None else (alias_fmt or spec.default_format))
    if chosen.name not in spec.formats:
        raise ValueError(
            f"recipe {spec.name!r} stores elements in {', '.join(spec.formats)}; got {chosen.name!r}"
        )
    if block_size is not None and alias_block is not None and block_size != alias_block:
        raise ValueError(f"recipe {recipe!r} means blocks of {alias_block}; got block_size={block_size}")
    size = block_size if block_size is not None else (alias_block or spec.block_size)
    if spec.granularity in ("tensor", "row"):
        if block_size is not None:
            raise ValueError(f"recipe {spec.name!r} has no blocks; block_size is only for blockwise, blockwise_2d, mx, nvfp4")
        size = None
    elif not isinstance(size, int) or size < 1:
        raise ValueError(f"block_size must be a positive integer, got {size!r}")
    return spec, chosen, size


# ---- the result ---------------------------------------------------------------------------------


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
        total = self.scale.numel() * bits.get(str(self.scale.dtype).removeprefix("torch."), 32)
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
        return (f"Quantized({self.recipe}, {self.fmt.name}{block}, shape {tuple(self.data.shape)}, "
                f"{self.scale.numel()} scale(s), {self.bits_per_element:.3f} bits/element)")


def expand_blocks(scale: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Repeat each block's scale over the elements it covers, to ``shape`` (a 0-d scale broadcasts)."""
    if scale.dim() == 0:
        return scale.expand(shape)
    out = scale
    for dim, (n_scale, n_data) in enumerate(zip(scale.shape, shape)):
        if n_scale != n_data:
            out = out.repeat_interleave(n_data // n_scale, dim=dim)
    return out


# ---- casting ------------------------------------------------------------------------------------


def cast(values: torch.Tensor, fmt: Any, *, saturate: bool = True) -> torch.Tensor:
    """Round float32 ``values`` to ``fmt`` (nearest, ties to even), saturating or not.

    Returns torch's own dtype for the format where there is one (the real fp8 storage), else float32.
    With ``saturate=True`` the result never depends on torch's version (torch's eager cast to
    ``float8_e4m3fn`` saturates only from 2.12 on, pytorch/pytorch PR 178817, and gave NaN before;
    :func:`mpcourse.formats.torch_e4m3fn_saturates` asks the installed one): values are clamped to
    ±max first, and in-range casts are exact in every version. ``saturate=False`` is computed by
    :func:`mpcourse.formats.round_tensor`: overflow becomes NaN (E4M3, fnuz) or ±inf (E5M2).
    """
    fmt = formats.get(fmt)
    dtype = fmt.torch_dtype
    values = values.float()
    if dtype is not None and saturate:
        return values.clamp(-fmt.max, fmt.max).to(dtype)
    if fmt.nan == "none":  # FP4/FP6 hold no NaN: the block's scale carries it instead
        values = torch.nan_to_num(values, nan=0.0)
    rounded = formats.round_tensor(values, fmt, saturate=saturate)
    return rounded.to(dtype) if dtype is not None else rounded


# ---- quantize -----------------------------------------------------------------------------------


def _moved(x: torch.Tensor, axis: int, granularity: str) -> tuple[torch.Tensor, int]:
    """``x`` as a 2-D (rows, L) view with the scaled axis last; returns it and the normalised axis."""
    if x.dim() == 0:
        raise ValueError("quantize needs a tensor with at least one dimension for this recipe")
    axis = axis % x.dim()
    if axis == x.dim() - 1:
        return x.reshape(-1, x.shape[-1]), axis
    if x.dim() != 2:
        raise ValueError(f"blocks along axis {axis} need a 2-D tensor (got {x.dim()}-D); "
                         "use axis=-1, or reshape to 2-D first")
    return x.t(), axis


def _restore(t: torch.Tensor, x_shape: torch.Size, axis: int, last_dim_blocks: int) -> torch.Tensor:
    """Undo :func:`_moved` for a (rows, L') tensor: L' is L for data, or the number of blocks for scales."""
    if axis == len(x_shape) - 1:
        return t.reshape(*x_shape[:-1], last_dim_blocks)
    return t.t()


#: Block sizes a format's specification fixes (so the remedy for a dimension they do not divide is
#: padding, never another block size): OCP MX, 32 elements per E8M0 scale; NVFP4, 16 per E4M3 scale.
SPEC_BLOCKS: dict[str, tuple[int, str]] = {"mx": (32, "the OCP MX specification"), "nvfp4": (16, "NVFP4")}


def _check_divides(length: int, block: int, what: str, recipe: str, padded_name: str = "K") -> None:
    """Raise, naming the remedy, when blocks of ``block`` elements do not tile ``length``.

    Zero padding is always exact: zeros raise no block's amax and add nothing to a GEMM. For MX and
    NVFP4 it is the only remedy (their specifications fix the block); for the fp32-scaled blockwise
    recipes a block size that divides the dimension is another, and the message lists the usual ones.
    """
    if length % block == 0:
        return
    padded = -(-length // block) * block
    pad = (f"pad {padded_name} with zeros to {padded}, the next multiple of {block} (zeros change no block's scale "
           "and add nothing to a GEMM)")
    if recipe in SPEC_BLOCKS:
        fixed, spec = SPEC_BLOCKS[recipe]
        size = f"fixed by {spec}" if block == fixed else f"{spec} fixes {fixed}"
        raise ValueError(f"recipe {recipe!r} uses blocks of {block} elements ({size}), which do not divide {what} "
                         f"({length}): {pad}")
    divisors = [b for b in (16, 32, 64, 128, 256) if length % b == 0]
    if divisors:
        other = f"choose a block size that divides {length}, such as {' or '.join(map(str, divisors))}, or {pad}"
    else:
        other = f"{pad} (no power of two from 16 to 256 divides {length})"
    raise ValueError(f"recipe {recipe!r}: block size {block} does not divide {what} ({length}); {other}")


def pow2(exponent: torch.Tensor) -> torch.Tensor:
    """``2^exponent`` as float32, exactly, built from its bits (integer exponents in [-149, 127]).

    (``torch.ldexp`` and ``torch.exp2`` go through floating-point arithmetic that is not guaranteed
    exact for every exponent on every device; a power of two's bit pattern is.)
    """
    e = exponent.to(torch.int32).clamp(-149, 127)
    normal = (e + 127) << 23
    subnormal = torch.ones_like(e) << (e + 149).clamp(0, 22)
    return torch.where(e >= -126, normal, subnormal).view(torch.float32)


def _amax_scale(amax: torch.Tensor, fmt: formats.FloatFormat, power_of_two: bool) -> torch.Tensor:
    """Decode scale ``amax / fmt.max``; 1 where amax is 0 or not finite (as Transformer Engine does)."""
    scale = amax.float() / fmt.max
    if power_of_two:  # round the decode scale up to a power of two, so nothing overflows (TE's pow-2 scales)
        mantissa, exponent = torch.frexp(scale)
        scale = pow2(torch.where(mantissa == 0.5, exponent - 1, exponent))
    scale = scale.clamp_min(torch.finfo(torch.float32).tiny)
    return torch.where(torch.isfinite(amax) & (amax > 0), scale, torch.ones_like(scale))


def _mx_scale(amax: torch.Tensor, fmt: formats.FloatFormat, rounding: str) -> torch.Tensor:
    """MX decode scale 2^e (float32): OCP MX v1.0 §6.3, ``e = floor(log2 amax) - emax_elem``.

    ``rounding="rceil"`` is NVIDIA's alternative (cuBLAS): ``e = ceil(log2(amax / max))``, the
    smallest power of two that keeps every element in range. Exponents are clamped to E8M0's
    [-127, 127]; a block of zeros gets 2^-127; a block with NaN or inf gets NaN.
    """
    amax = amax.float()
    if rounding == "floor":
        _, e = torch.frexp(amax)
        exponent = e.to(torch.int32) - 1 - fmt.emax  # floor(log2 amax) = frexp exponent - 1
    else:
        mantissa, e = torch.frexp(amax / fmt.max)
        exponent = torch.where(mantissa == 0.5, e - 1, e).to(torch.int32)
    exponent = torch.where(amax > 0, exponent, torch.full_like(exponent, -127)).clamp(-127, 127)
    scale = pow2(exponent)
    return torch.where(torch.isfinite(amax), scale, torch.full_like(amax, math.nan))


def _e8m0_storage(scale: torch.Tensor) -> torch.Tensor:
    """Powers of two (or NaN) as ``torch.float8_e8m0fnu``, built from the bits (biased exponent, 0xFF for NaN)
    so that no cast kernel is needed on any device; float32 where torch lacks the dtype."""
    if E8M0_DTYPE is None:
        return scale
    _, e = torch.frexp(scale)
    biased = torch.where(torch.isfinite(scale), (e.to(torch.int32) - 1 + 127).clamp(0, 254), torch.full_like(e, 255, dtype=torch.int32))
    return biased.to(torch.uint8).view(E8M0_DTYPE)


def e8m0_to_float(t: torch.Tensor) -> torch.Tensor:
    """Decode ``torch.float8_e8m0fnu`` values to float32 from their bits: 2^(bits - 127), NaN for 0xFF."""
    bits = t.view(torch.uint8).to(torch.int32)
    return torch.where(bits == 255, torch.full_like(bits, math.nan, dtype=torch.float32), pow2(bits - 127))


def quantize(
    x: torch.Tensor,
    recipe: str = "tensorwise",
    fmt: Any = None,
    *,
    block_size: int | None = None,
    axis: int = -1,
    saturate: bool = True,
    pow2_scales: bool = False,
    mx_scale_rounding: str = "floor",
    scaler: DelayedScaler | None = None,
) -> Quantized:
    """Quantize ``x`` with a scaling recipe; returns elements and scales (see :class:`Quantized`).

    Args:
        x: a floating-point tensor (any dtype; computed in float32).
        recipe: a name from :data:`RECIPES` or :data:`ALIASES` (``"mxfp8"``, ``"block_1x128"``, ...).
        fmt: element format (anything :func:`mpcourse.formats.get` accepts); default per recipe.
        block_size: elements per block (blockwise, blockwise_2d, mx, nvfp4); default per recipe.
            Must divide the length along ``axis`` (both dimensions for ``blockwise_2d``).
        axis: the dimension rows and blocks run along: the inner (K) dimension of the GEMM that
            consumes the tensor. ``-1`` for ``x`` in ``x @ w.T`` and for ``w``; ``0`` for the
            operands of a weight-gradient GEMM.
        saturate: clamp overflow to ±max (default) or produce NaN/inf as the format defines.
        pow2_scales: round fp32 scales up to powers of two (TE's blockwise default; exact rescaling).
        mx_scale_rounding: ``"floor"`` (the OCP spec) or ``"rceil"`` (NVIDIA's cuBLAS), for ``mx``.
        scaler: the :class:`DelayedScaler` holding the amax history, for ``recipe="delayed"``.

    Raises:
        ValueError / TypeError: unknown recipe or format, a block size that does not divide the
            tensor, ``delayed`` without a scaler, each naming what is accepted.
    """
    spec, fmt, block = resolve(recipe, fmt, block_size)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"quantize expects a floating-point tensor, got {type(x).__name__} {getattr(x, 'dtype', '')}")
    if mx_scale_rounding not in MX_SCALE_ROUNDINGS:
        raise ValueError(f"mx_scale_rounding={mx_scale_rounding!r}; accepted: {', '.join(MX_SCALE_ROUNDINGS)}")
    x = x.detach().float()
    if spec.name == "delayed":
        if scaler is None:
            raise ValueError("recipe 'delayed' needs scaler=DelayedScaler(...): its scale comes from the amax "
                             "history of earlier steps, which a single tensor does not have")
        return scaler.quantize(x, saturate=saturate)
    if spec.granularity == "tensor":
        scale = _amax_scale(x.abs().amax() if x.numel() else torch.zeros((), device=x.device), fmt, pow2_scales)
        return Quantized(cast(x / scale, fmt, saturate=saturate), scale, spec.name, fmt, None, axis % max(x.dim(), 1))

    x2, ax = _moved(x, axis, spec.granularity)
    rows, length = x2.shape
    if spec.granularity == "row":
        scale2 = _amax_scale(x2.abs().amax(dim=1, keepdim=True), fmt, pow2_scales)
        data2 = cast(x2 / scale2, fmt, saturate=saturate)
        return Quantized(_restore(data2, x.shape, ax, length), _restore(scale2, x.shape, ax, 1),
                         spec.name, fmt, None, ax)

    assert block is not None
    if spec.granularity == "block2d":
        if x.dim() != 2:
            raise ValueError(f"recipe 'blockwise_2d' needs a 2-D tensor, got shape {tuple(x.shape)}")
        _check_divides(rows, block, "the number of rows", spec.name, "the rows")
        _check_divides(length, block, "K, the length along the scaled axis", spec.name)
        tiles = x2.reshape(rows // block, block, length // block, block)
        scale2 = _amax_scale(tiles.abs().amax(dim=(1, 3)), fmt, pow2_scales)
        data2 = cast(x2 / expand_blocks(scale2, x2.shape), fmt, saturate=saturate)
        return Quantized(_restore(data2, x.shape, ax, length), scale2 if ax == 1 else scale2.t(),
                         spec.name, fmt, block, ax)

    _check_divides(length, block, "K, the length along the scaled axis", spec.name)
    blocks = x2.reshape(rows, length // block, block)
    amax = blocks.abs().amax(dim=2)
    tensor_scale = None
    if spec.name == "mx":
        scale2 = _mx_scale(amax, fmt, mx_scale_rounding)
        divisor = expand_blocks(scale2, x2.shape)
        stored = _e8m0_storage(scale2)
    elif spec.name == "nvfp4":
        global_amax = x.abs().amax() if x.numel() else torch.zeros((), device=x.device)
        tensor_scale = global_amax / (E4M3.max * fmt.max)  # TE: s_global = amax / (448 * 6)
        tensor_scale = torch.where(torch.isfinite(tensor_scale) & (tensor_scale > 0), tensor_scale,
                                   torch.ones_like(tensor_scale))
        stored = cast((amax / fmt.max) / tensor_scale, E4M3, saturate=True)  # s_block, stored in E4M3
        divisor = expand_blocks(stored.float() * tensor_scale, x2.shape)
    else:
        scale2 = _amax_scale(amax, fmt, pow2_scales)
        divisor = expand_blocks(scale2, x2.shape)
        stored = scale2
    scaled = torch.where(divisor > 0, x2 / divisor, torch.zeros_like(x2))  # an E4M3 block scale can round to 0
    data2 = cast(scaled, fmt, saturate=saturate)
    return Quantized(_restore(data2, x.shape, ax, length), _restore(stored, x.shape, ax, length // block),
                     spec.name, fmt, block, ax, tensor_scale)


def dequantize(q: Quantized, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``q.dequantize(dtype)``: the values a quantisation represents."""
    return q.dequantize(dtype)


def fake_quantize(x: torch.Tensor, recipe: str = "tensorwise", fmt: Any = None, **kwargs: Any) -> torch.Tensor:
    """Quantize then dequantize: what ``x`` looks like after a trip through the recipe (x's dtype)."""
    return quantize(x, recipe, fmt, **kwargs).dequantize(x.dtype)


# ---- delayed scaling ----------------------------------------------------------------------------

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
            raise ValueError(f"amax_compute_algo={self.amax_compute_algo!r}; accepted: "
                             f"{', '.join(AMAX_COMPUTE_ALGOS)} or a function history -> amax")

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

    def __init__(self, fmt: Any = "e4m3", amax_history_len: int = 1024,
                 amax_compute_algo: str | Callable[[torch.Tensor], torch.Tensor] = "max", margin: int = 0) -> None:
        super().__init__()
        DelayedScaling(margin, "hybrid", amax_history_len, amax_compute_algo)  # validates the arguments
        self.fmt = formats.get(fmt)
        if self.fmt.name not in FP8_FORMATS:
            raise ValueError(f"delayed scaling stores fp8; accepted formats: {', '.join(FP8_FORMATS)}, got {self.fmt.name!r}")
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

    def quantize(self, x: torch.Tensor, *, saturate: bool = True, record: bool = True, update: bool = True) -> Quantized:
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
        return (f"{self.fmt.name}, history {self.amax_history.numel()}, algo {self.amax_compute_algo!r}, "
                f"margin {self.margin}")


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
    if isinstance(q, Quantized):  # stored at ±max although the scaled value was beyond the rounding tie above max
        tie = q.fmt.max + float(q.fmt.spacing(q.fmt.max)) / 2
        saturated = ((data.abs() == q.fmt.max) & (x64.abs() > tie * scale.double())).sum().item() / max(x64.numel(), 1)
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
