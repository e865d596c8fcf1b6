"""Backward needs other layouts: re-quantise along the other axis, or transpose the quantised data.

A linear layer ``Y = X W^T`` (X: (M, K), W: (N, K)) runs three GEMMs, each contracting a different
dimension:

========= ======================= ================== ======================================
GEMM      product                 contracts over     so its operands are scaled along
========= ======================= ================== ======================================
forward   ``Y  = X W^T``          K                  X along K (axis 1), W along K (axis 1)
dgrad     ``dX = dY W``           N                  dY along N (axis 1), W along N (axis 0)
wgrad     ``dW = dY^T X``         M (tokens)         dY along M (axis 0), X along M (axis 0)
========= ======================= ================== ======================================

A scale has to be constant along the contracted dimension inside one block (the kernel multiplies
a block's partial sum by one scale of each operand), so X and W, quantised along K for the forward,
are along the wrong axis for backward. Two ways out:

- :func:`requantize_for_backward`: keep the high-precision tensor and quantise it again along the
  other axis: Transformer Engine's "columnwise" usage of a quantised tensor, DeepSeek-V3's 1x128
  tiles for the forward and 128x1 for backward (arXiv 2412.19437, §3.3). One more pass over the
  high-precision tensor; a second quantised copy; exact-as-possible values.
- :func:`transpose_quantized`: reuse the forward's fp8 data. Per-tensor scales do not care about the
  axis, and neither do square 128x128 tiles (why DeepSeek-V3 scales weights that way), so those are
  exact. Rows and 1xB blocks are not: their scales run along the wrong axis, and the only honest way
  to get column scales from the stored data is to dequantise it and quantise it again: the
  "double quantisation" path, whose error is the forward's rounding plus a second one.

:func:`compare_backward_layouts` measures both against float64: error, and what each costs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .quantized import Quantized, error_stats
from .recipes import quantize, resolve

__all__ = [
    "AXIS_FREE",
    "BACKWARD_RECIPES",
    "compare_backward_layouts",
    "other_axis",
    "requantize_for_backward",
    "transpose_quantized",
]

#: Recipes this module re-lays out (delayed needs a scaler's state; use tensorwise for its layout).
BACKWARD_RECIPES: tuple[str, ...] = ("tensorwise", "rowwise", "blockwise", "blockwise_2d", "mx", "nvfp4")
#: Recipes whose scales do not depend on the axis: one per tensor, or square tiles (DeepSeek-V3's
#: 128x128 weight tiles, §3.3): their quantisation of ``x`` is their quantisation of ``x^T``.
AXIS_FREE: tuple[str, ...] = ("tensorwise", "blockwise_2d")


def _check_2d(x: object, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 2:
        raise TypeError(
            f"{what} must be a 2-D floating-point tensor (a GEMM operand), got "
            f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))} {getattr(x, 'dtype', '')}"
        )
    return x


def other_axis(axis: int) -> int:
    """The other axis of a 2-D operand: 1 -> 0 and 0 -> 1 (negative axes accepted)."""
    if isinstance(axis, bool) or not isinstance(axis, int) or axis not in (-2, -1, 0, 1):
        raise ValueError(f"axis={axis!r}: a 2-D operand has axes 0 and 1 (or -2 and -1)")
    return 1 - axis % 2


def _check_recipe(recipe: object) -> str:
    if not isinstance(recipe, str):
        raise TypeError(f"recipe must be a name, got {type(recipe).__name__}")
    name = resolve(recipe)[0].name
    if name not in BACKWARD_RECIPES:
        raise ValueError(
            f"recipe {recipe!r} ({name}) has no backward layout here; accepted: {', '.join(BACKWARD_RECIPES)} "
            "(delayed scaling lays out like tensorwise)"
        )
    return recipe


def requantize_for_backward(
    x: torch.Tensor, recipe: str, fmt: Any = None, *, forward_axis: int = -1, **kwargs: Any
) -> Quantized:
    """Quantise the high-precision ``x`` again, along the other axis than the forward's.

    ``x`` is a 2-D operand of the forward GEMM (X or W), quantised there along ``forward_axis``
    (its K). The result has ``x``'s shape, with rows or blocks along the other axis: what the dgrad
    (W) and wgrad (X) GEMMs need. ``kwargs`` go to :func:`mpcourse.fp8.quantize` (``block_size``,
    ``pow2_scales``, ...).

    Raises:
        TypeError: ``x`` not a 2-D floating-point tensor.
        ValueError: an axis other than 0/1/-2/-1, a recipe without a backward layout, or a block
            size that does not divide the backward axis (from :func:`quantize`).
    """
    x = _check_2d(x, "x")
    return quantize(x, _check_recipe(recipe), fmt, axis=other_axis(forward_axis), **kwargs)


def transpose_quantized(q: Quantized) -> Quantized:
    """The forward's quantised ``q`` re-laid out for backward from its fp8 data alone.

    Same shape as ``q``, scaled along the other axis. For :data:`AXIS_FREE` recipes this is exact and
    free: the same elements and scales, read along the other axis. For rows and 1xB blocks, the
    scales do not fit the other axis, so the stored values are dequantised and quantised again
    along it (double quantisation): a second rounding of already-rounded values.

    Raises:
        TypeError: ``q`` is not a 2-D :class:`Quantized`.
        ValueError: a recipe this module does not re-lay out.
    """
    if not isinstance(q, Quantized) or q.data.dim() != 2:
        raise TypeError(f"transpose_quantized needs a 2-D Quantized (from quantize), got {q!r}")
    _check_recipe(q.recipe)
    axis = other_axis(q.axis)
    if q.recipe in AXIS_FREE:
        return Quantized(q.data, q.scale, q.recipe, q.fmt, q.block_size, axis, q.tensor_scale)
    block = {"block_size": q.block_size} if q.block_size else {}
    return quantize(q.dequantize(), q.recipe, q.fmt, axis=axis, **block)


def _cost(x: torch.Tensor, q: Quantized, path: str) -> dict[str, Any]:
    """What a path costs: extra passes, extra bytes stored, and whether x must stay in high precision."""
    free = path == "transpose" and q.recipe in AXIS_FREE
    return {
        "extra_passes": 0 if free else 1,
        "extra_bytes": 0 if free else q.nbytes,
        # re-quantising needs x (in its own dtype) kept from forward to backward; the others need only q
        "keeps_high_precision_bytes": x.numel() * x.element_size() if path == "requantize" else 0,
    }


def compare_backward_layouts(
    x: torch.Tensor,
    recipe: str | Sequence[str] = ("tensorwise", "rowwise", "blockwise"),
    *,
    forward_axis: int = -1,
) -> Any:
    """A pandas DataFrame: for each recipe, the error and cost of each way to get the backward layout.

    Rows (recipe, path), with path ``"requantize"`` (:func:`requantize_for_backward` from ``x``) or
    ``"transpose"`` (:func:`transpose_quantized` of the forward's quantisation). Columns:
    ``relative_error`` and ``snr_db`` against ``x`` in float64 (:func:`error_stats`); ``exact``
    (the backward values equal the forward's, no new rounding); ``extra_passes`` (quantisation passes
    beyond the forward's); ``extra_bytes`` (a second quantised copy, elements and scales);
    ``keeps_high_precision_bytes`` (memory held from forward to backward only to re-quantise).
    """
    import pandas as pd

    x = _check_2d(x, "x")
    recipes = [recipe] if isinstance(recipe, str) else list(recipe)
    rows = []
    for name in recipes:
        forward = quantize(x, _check_recipe(name), axis=forward_axis)
        for path, q in (
            ("requantize", requantize_for_backward(x, name, forward_axis=forward_axis)),
            ("transpose", transpose_quantized(forward)),
        ):
            stats = error_stats(x, q)
            exact = bool(torch.equal(q.dequantize(), forward.dequantize()))
            rows.append(
                {
                    "recipe": name,
                    "path": path,
                    "relative_error": stats["relative_error"],
                    "snr_db": stats["snr_db"],
                }
                | {"exact": exact}
                | _cost(x, q, path)
            )
    return pd.DataFrame(rows).set_index(["recipe", "path"])
