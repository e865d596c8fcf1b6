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

:func:`quantize` applies any of them to any tensor and returns a
:class:`~mpcourse.fp8.quantized.Quantized` (elements, scales, and enough metadata to dequantize and
to count the bits); :func:`~mpcourse.fp8.quantized.error_stats` measures what was lost. Convention: a **scale here is always the decode scale**, the number the stored
element is multiplied by (what ``torch._scaled_mm`` takes as ``scale_a``/``scale_b``, and what the
MX spec calls X). Transformer Engine's ``scale`` is the reciprocal, the factor applied *before* the
cast; :class:`mpcourse.fp8.delayed.DelayedScaler` (the state of the stateful ``delayed`` recipe, in
its own module) keeps TE's convention internally, as its docstring says.

``nvfp4`` here is :mod:`mpcourse.fp8.nvfp4`'s quantiser (Transformer Engine's arithmetic), with its
blocks along ``axis``; that module adds NVFP4 training's 16x16 weight tiles, stochastic rounding and
Hadamard transform.

Casting is saturating by default (values beyond the format's largest finite value become ±max, as
TE and torchao do); ``saturate=False`` gives the OCP spec's other conversion, where they become NaN
(E4M3, which has no infinity) or ±inf (E5M2). Elements are stored in torch's own fp8 dtypes where
torch has one (``torch.float8_e4m3fn``, ...); FP4 and FP6 elements, which torch cannot hold unpacked,
are float32 tensors holding exactly representable values (the bit counts below still use 4 or 6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from .. import formats
from .quantized import Quantized, expand_blocks, float_to_e8m0, pow2

if TYPE_CHECKING:
    from .delayed import DelayedScaler

Granularity = Literal["tensor", "row", "block", "block2d"]

#: Element formats a recipe can store into (every signed format of at most 8 bits).
ELEMENT_FORMATS: tuple[str, ...] = (
    "float8_e4m3fn",
    "float8_e5m2",
    "float8_e4m3fnuz",
    "float8_e5m2fnuz",
    "float6_e2m3fn",
    "float6_e3m2fn",
    "float4_e2m1fn",
)
FP8_FORMATS: tuple[str, ...] = ELEMENT_FORMATS[:4]
MX_FORMATS: tuple[str, ...] = (
    "float8_e4m3fn",
    "float8_e5m2",
    "float6_e2m3fn",
    "float6_e3m2fn",
    "float4_e2m1fn",
)

E4M3 = formats.get("e4m3")
E5M2 = formats.get("e5m2")
E2M1 = formats.get("e2m1")
E8M0 = formats.get("e8m0")


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
            "tensorwise",
            'one fp32 scale per tensor, from the tensor\'s own amax ("current" or "dynamic" scaling)',
            "tensor",
            None,
            "float32",
            "float8_e4m3fn",
            ELEMENT_FORMATS,
            ("micikevicius2022fp8", "nvidia-te-recipes", "torchao-float8"),
        ),
        ScalingRecipe(
            "delayed",
            "one fp32 scale per tensor, from the largest amax of the previous steps (an amax history)",
            "tensor",
            None,
            "float32",
            "float8_e4m3fn",
            FP8_FORMATS,
            ("nvidia-te-recipes",),
        ),
        ScalingRecipe(
            "rowwise",
            "one fp32 scale per row: per slice along the GEMM's inner (K) dimension",
            "row",
            None,
            "float32",
            "float8_e4m3fn",
            ELEMENT_FORMATS,
            ("torchao-float8",),
        ),
        ScalingRecipe(
            "blockwise",
            "one fp32 scale per 1 x B block along K (DeepSeek-V3: 1 x 128 for activations and gradients)",
            "block",
            128,
            "float32",
            "float8_e4m3fn",
            ELEMENT_FORMATS,
            ("deepseek2024v3", "nvidia-te-blockwise"),
        ),
        ScalingRecipe(
            "blockwise_2d",
            "one fp32 scale per B x B tile (DeepSeek-V3: 128 x 128 for weights)",
            "block2d",
            128,
            "float32",
            "float8_e4m3fn",
            ELEMENT_FORMATS,
            ("deepseek2024v3", "nvidia-te-blockwise"),
        ),
        ScalingRecipe(
            "mx",
            "OCP microscaling: one E8M0 (power-of-two) scale per 32 consecutive elements along K",
            "block",
            32,
            "float8_e8m0fnu",
            "float8_e4m3fn",
            MX_FORMATS,
            ("ocp2023mx",),
        ),
        ScalingRecipe(
            "nvfp4",
            "NVIDIA's NVFP4: E2M1 elements, one E4M3 scale per 16 elements along K, one fp32 scale per tensor",
            "block",
            16,
            "float8_e4m3fn x float32",
            "float4_e2m1fn",
            ("float4_e2m1fn",),
            ("nvidia-te-nvfp4",),
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


def resolve(
    recipe: str, fmt: Any = None, block_size: int | None = None
) -> tuple[ScalingRecipe, formats.FloatFormat, int | None]:
    """The recipe, element format and block size that ``quantize(x, recipe, fmt, block_size=...)`` uses.

    Raises:
        ValueError: for an unknown recipe, a format the recipe cannot store into, or a bad block size,
            each naming what is accepted.
    """
    if not isinstance(recipe, str):
        raise TypeError(
            f"recipe must be a name (a str), got {type(recipe).__name__} {recipe!r}; accepted: "
            f"{', '.join(RECIPES)} (aliases: {', '.join(ALIASES)})"
        )
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
        raise ValueError(
            f"recipe {recipe!r} means {alias_fmt} elements; got fmt={formats.get(fmt).name!r}. "
            f"Use recipe {key!r} to choose the format yourself."
        )
    chosen = formats.get(fmt if fmt is not None else (alias_fmt or spec.default_format))
    if chosen.name not in spec.formats:
        raise ValueError(
            f"recipe {spec.name!r} stores elements in {', '.join(spec.formats)}; got {chosen.name!r}"
        )
    if block_size is not None and alias_block is not None and block_size != alias_block:
        raise ValueError(f"recipe {recipe!r} means blocks of {alias_block}; got block_size={block_size}")
    size = block_size if block_size is not None else (alias_block or spec.block_size)
    if spec.name == "nvfp4" and size != spec.block_size:
        raise ValueError(
            f"recipe 'nvfp4' has blocks of {spec.block_size} elements, fixed by the format (one E4M3 scale per "
            f"16, arXiv 2509.25149 §2); got block_size={size!r}. Accepted: {spec.block_size} or None; "
            "for other block sizes use recipe 'mx' (E8M0 scales) or 'blockwise' (fp32 scales)"
        )
    if spec.granularity in ("tensor", "row"):
        if block_size is not None:
            raise ValueError(
                f"recipe {spec.name!r} has no blocks; block_size is only for blockwise, blockwise_2d, mx, nvfp4"
            )
        size = None
    elif isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"block_size must be a positive integer, got {size!r}")
    return spec, chosen, size


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
        raise ValueError(
            f"blocks along axis {axis} need a 2-D tensor (got {x.dim()}-D); "
            "use axis=-1, or reshape to 2-D first"
        )
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
    pad = (
        f"pad {padded_name} with zeros to {padded}, the next multiple of {block} (zeros change no block's scale "
        "and add nothing to a GEMM)"
    )
    if recipe in SPEC_BLOCKS:
        fixed, spec = SPEC_BLOCKS[recipe]
        size = f"fixed by {spec}" if block == fixed else f"{spec} fixes {fixed}"
        raise ValueError(
            f"recipe {recipe!r} uses blocks of {block} elements ({size}), which do not divide {what} "
            f"({length}): {pad}"
        )
    divisors = [b for b in (16, 32, 64, 128, 256) if length % b == 0]
    if divisors:
        other = (
            f"choose a block size that divides {length}, such as {' or '.join(map(str, divisors))}, or {pad}"
        )
    else:
        other = f"{pad} (no power of two from 16 to 256 divides {length})"
    raise ValueError(f"recipe {recipe!r}: block size {block} does not divide {what} ({length}); {other}")


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


def _nvfp4(x2: torch.Tensor, shape: torch.Size, axis: int) -> Quantized:
    """NVFP4 of the (rows, K) view ``x2``, by :func:`mpcourse.fp8.nvfp4.quantize_steps` (1x16 blocks, to
    nearest): one implementation with Transformer Engine's fp32 arithmetic, put back in ``shape`` with
    its scales along ``axis``. (Imported here: :mod:`~mpcourse.fp8.nvfp4` imports :func:`cast` from this
    module.) A NaN or inf in the tensor is an error there, naming where to look."""
    from . import nvfp4

    steps = nvfp4.quantize_steps(x2, block_shape="1x16", rounding="nearest")
    return Quantized(
        _restore(steps.elements, shape, axis, x2.shape[1]),
        _restore(steps.block_scale, shape, axis, x2.shape[1] // nvfp4.BLOCK),
        "nvfp4",
        E2M1,
        nvfp4.BLOCK,
        axis,
        steps.global_decode,
    )


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
        saturate: clamp overflow to ±max (default) or produce NaN/inf as the format defines (E2M1
            and the FP6 formats define neither, so their elements saturate either way).
        pow2_scales: round fp32 scales up to powers of two (TE's blockwise default; exact rescaling).
        mx_scale_rounding: ``"floor"`` (the OCP spec) or ``"rceil"`` (NVIDIA's cuBLAS), for ``mx``.
        scaler: the :class:`DelayedScaler` holding the amax history, for ``recipe="delayed"``.

    ``"nvfp4"`` is computed by :func:`mpcourse.fp8.nvfp4.quantize_steps` (1x16 blocks along ``axis``,
    round to nearest even), so both give the same bits: Transformer Engine's fp32 arithmetic, with
    reciprocals where the textbook formula divides. That module has the 16x16 weight tiles,
    stochastic rounding and the Hadamard transform of NVFP4 training.

    Raises:
        ValueError / TypeError: unknown recipe or format, a block size that does not divide the
            tensor (or, for ``nvfp4``, is not 16), ``delayed`` without a scaler, NaN or inf in a
            tensor for ``nvfp4``, each naming what is accepted.
    """
    spec, fmt, block = resolve(recipe, fmt, block_size)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(
            f"quantize expects a floating-point tensor (a torch.Tensor of float32, bfloat16, float16 or "
            f"float64), got {type(x).__name__} {getattr(x, 'dtype', '')}".rstrip()
            + (
                "; convert it with torch.as_tensor(x, dtype=torch.float32)"
                if not isinstance(x, torch.Tensor)
                else "; convert an integer or boolean tensor first, e.g. with x.float()"
            )
        )
    if mx_scale_rounding not in MX_SCALE_ROUNDINGS:
        raise ValueError(
            f"mx_scale_rounding={mx_scale_rounding!r}; accepted: {', '.join(MX_SCALE_ROUNDINGS)}"
        )
    if x.dim() and (isinstance(axis, bool) or not isinstance(axis, int) or not -x.dim() <= axis < x.dim()):
        raise ValueError(
            f"axis={axis!r} is not a dimension of a {x.dim()}-D tensor (shape {tuple(x.shape)}); "
            f"accepted: {-x.dim()} to {x.dim() - 1}"
        )
    if spec.granularity != "tensor" and x.dim() and x.shape[axis] == 0:
        raise ValueError(
            f"recipe {spec.name!r} scales along axis {axis}, which is empty (shape {tuple(x.shape)}): "
            "no elements to choose a scale from"
        )
    x = x.detach().float()
    if spec.name == "delayed":
        if scaler is None:
            raise ValueError(
                "recipe 'delayed' needs scaler=DelayedScaler(...): its scale comes from the amax "
                "history of earlier steps, which a single tensor does not have"
            )
        return scaler.quantize(x, saturate=saturate)
    if spec.granularity == "tensor":
        scale = _amax_scale(
            x.abs().amax() if x.numel() else torch.zeros((), device=x.device), fmt, pow2_scales
        )
        return Quantized(
            cast(x / scale, fmt, saturate=saturate), scale, spec.name, fmt, None, axis % max(x.dim(), 1)
        )

    x2, ax = _moved(x, axis, spec.granularity)
    rows, length = x2.shape
    if spec.granularity == "row":
        scale2 = _amax_scale(x2.abs().amax(dim=1, keepdim=True), fmt, pow2_scales)
        data2 = cast(x2 / scale2, fmt, saturate=saturate)
        return Quantized(
            _restore(data2, x.shape, ax, length), _restore(scale2, x.shape, ax, 1), spec.name, fmt, None, ax
        )

    assert block is not None
    if spec.granularity == "block2d":
        if x.dim() != 2:
            raise ValueError(f"recipe 'blockwise_2d' needs a 2-D tensor, got shape {tuple(x.shape)}")
        _check_divides(rows, block, "the number of rows", spec.name, "the rows")
        _check_divides(length, block, "K, the length along the scaled axis", spec.name)
        tiles = x2.reshape(rows // block, block, length // block, block)
        scale2 = _amax_scale(tiles.abs().amax(dim=(1, 3)), fmt, pow2_scales)
        data2 = cast(x2 / expand_blocks(scale2, x2.shape), fmt, saturate=saturate)
        return Quantized(
            _restore(data2, x.shape, ax, length), scale2 if ax == 1 else scale2.t(), spec.name, fmt, block, ax
        )

    _check_divides(length, block, "K, the length along the scaled axis", spec.name)
    if spec.name == "nvfp4":
        return _nvfp4(x2, x.shape, ax)
    blocks = x2.reshape(rows, length // block, block)
    amax = blocks.abs().amax(dim=2)
    if spec.name == "mx":
        scale2 = _mx_scale(amax, fmt, mx_scale_rounding)
        divisor = expand_blocks(scale2, x2.shape)
        stored = float_to_e8m0(scale2)
    else:
        scale2 = _amax_scale(amax, fmt, pow2_scales)
        divisor = expand_blocks(scale2, x2.shape)
        stored = scale2
    scaled = torch.where(divisor > 0, x2 / divisor, torch.zeros_like(x2))  # a NaN scale (MX) stores 0
    data2 = cast(scaled, fmt, saturate=saturate)
    return Quantized(
        _restore(data2, x.shape, ax, length),
        _restore(stored, x.shape, ax, length // block),
        spec.name,
        fmt,
        block,
        ax,
    )


def fake_quantize(
    x: torch.Tensor, recipe: str = "tensorwise", fmt: Any = None, **kwargs: Any
) -> torch.Tensor:
    """Quantize then dequantize: what ``x`` looks like after a trip through the recipe (x's dtype)."""
    return quantize(x, recipe, fmt, **kwargs).dequantize(x.dtype)
