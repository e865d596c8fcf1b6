"""FP8 (and FP4) quantisation, scaled GEMMs and fp8 training, emulated anywhere and real on sm_89+.

- :mod:`~mpcourse.fp8.recipes`: the scaling recipes (tensorwise current and delayed, rowwise,
  1x128 and 128x128 blocks, MX with E8M0 scales, NVFP4) and :func:`quantize`.
- :mod:`~mpcourse.fp8.quantized`: what :func:`quantize` returns, a :class:`Quantized` (elements +
  scales), and :func:`error_stats`, what it lost.
- :mod:`~mpcourse.fp8.delayed`: the stateful recipe, :class:`DelayedScaling` and
  :class:`DelayedScaler` (Transformer Engine's amax history).
- :mod:`~mpcourse.fp8.gemm`: :func:`fp8_mm` (a scaled fp8 GEMM, emulated exactly) and
  :func:`scaled_mm` (``torch._scaled_mm`` with its rules checked and explained).
- :mod:`~mpcourse.fp8.linear`: :class:`FP8Linear` (three fp8 GEMMs, straight-through) and
  :func:`convert_to_fp8`, which swaps a model's linear layers for it.
- :mod:`~mpcourse.fp8.torchao`: torchao's fp8 training where it can run (sm_89+), and why not elsewhere.
- :mod:`~mpcourse.fp8.training`: the fp8 training recipes (in :data:`mpcourse.train.RECIPES`,
  whatever was imported first: ``fp8_tensorwise``, ``fp8_delayed``, ``fp8_rowwise``,
  ``fp8_blockwise``, ``mxfp8``, and ``torchao_*`` for sm_89+).
- :mod:`~mpcourse.bench.fp8`: ``mpcourse bench fp8`` (fp8 vs bf16 speed on a GPU) and the stored results.

Example::

    from mpcourse import fp8

    q = fp8.quantize(x, "mxfp8")             # E4M3 elements, one E8M0 scale per 32
    q.dequantize(), q.bits_per_element          # the values it stands for; 8.25
    fp8.error_stats(x, q)["snr_db"]
"""

from .delayed import DelayedScaler, DelayedScaling
from .gemm import (
    SCALED_MM_DTYPES,
    SCALED_MM_RECIPES,
    UnsupportedFP8Error,
    flops,
    fp8_mm,
    relative_error,
    scaled_mm,
    scaled_mm_problems,
)
from .linear import (
    CONFIGS,
    FP8Config,
    FP8Linear,
    NVFP4Linear,
    convert_to_fp8,
    get_config,
    layer_class,
    plan,
)
from .quantized import Quantized, dequantize, error_stats, expand_blocks, pow2
from .recipes import (
    ALIASES,
    ELEMENT_FORMATS,
    RECIPES,
    ScalingRecipe,
    cast,
    fake_quantize,
    quantize,
    resolve,
)
from .torchao import TORCHAO_RECIPES, torchao_convert, torchao_plan, torchao_status
from .training import register_training_recipes, training_recipes

__all__ = [
    "ALIASES",
    "CONFIGS",
    "ELEMENT_FORMATS",
    "RECIPES",
    "SCALED_MM_DTYPES",
    "SCALED_MM_RECIPES",
    "TORCHAO_RECIPES",
    "DelayedScaler",
    "DelayedScaling",
    "FP8Config",
    "FP8Linear",
    "NVFP4Linear",
    "Quantized",
    "ScalingRecipe",
    "UnsupportedFP8Error",
    "cast",
    "convert_to_fp8",
    "dequantize",
    "error_stats",
    "expand_blocks",
    "fake_quantize",
    "flops",
    "fp8_mm",
    "get_config",
    "layer_class",
    "plan",
    "pow2",
    "quantize",
    "register_training_recipes",
    "relative_error",
    "resolve",
    "scaled_mm",
    "scaled_mm_problems",
    "torchao_convert",
    "torchao_plan",
    "torchao_status",
    "training_recipes",
]
