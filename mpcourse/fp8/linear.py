"""FP8 training: a linear layer whose three GEMMs run on fp8 operands, and the recipes that use it.

A linear layer does three matrix products per training step, and an fp8 recipe quantises both
operands of each:

============ ============================ =============================== ==========================
GEMM         computes                     operands (inner dimension K)    "hybrid" formats
============ ============================ =============================== ==========================
forward      ``y = x @ w.T``              x and w, along in_features      E4M3 x E4M3
input grad   ``dx = dy @ w``              dy and w, along out_features    E5M2 x E4M3
weight grad  ``dw = dy.T @ x``            dy and x, along the batch       E5M2 x E4M3
============ ============================ =============================== ==========================

:class:`FP8Linear` does this with any scaling recipe of :mod:`mpcourse.fp8.recipes`: the
weight stays an fp32 parameter (the master copy the optimizer updates) and is quantised afresh
each step; the backward pass treats quantisation as the identity (the straight-through
estimator); products run in :func:`~mpcourse.fp8.gemm.fp8_mm` (exact emulation, any device) or
in ``torch._scaled_mm`` (real fp8 tensor cores on sm_89+) where the recipe and shapes allow.

:data:`CONFIGS` holds the recipes as data (TE's delayed and current scaling, torchao's rowwise,
DeepSeek-V3's blockwise, MXFP8); :func:`training_recipes` makes each a training recipe
(``mpcourse.train.train(..., "fp8_rowwise")``, loaded by :data:`mpcourse.train.RECIPES` on first
use) whose ``prepare_model`` hook calls :func:`convert_to_fp8`. Following Transformer Engine, torchao and DeepSeek-V3, it keeps the first
and last linear layers in higher precision, and everything that is not a linear layer (embeddings,
norms, softmax, the loss, the optimizer) runs as the rest of the recipe says (bf16 autocast).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .. import device as device_mod
from .. import formats
from . import nvfp4
from .delayed import DelayedScaling
from .gemm import fp8_mm, scaled_mm, scaled_mm_problems
from .recipes import Quantized, quantize, resolve

Gemm = Literal["auto", "emulated", "scaled_mm"]
GEMMS: tuple[str, ...] = ("auto", "emulated", "scaled_mm")


@dataclass(frozen=True)
class FP8Config:
    """Which recipe quantises which operand of an :class:`FP8Linear`, in which format.

    ``input_recipe`` applies to activations, ``weight_recipe`` to weights, ``grad_recipe`` to the
    output gradient; ``forward_format`` to activations and weights, ``backward_format`` to gradients.
    ``delayed`` (a :class:`~mpcourse.fp8.delayed.DelayedScaling`) is used by the ``"delayed"`` recipe.

    Two fields describe recipes whose backward pass differs from the forward's:
    ``dgrad_weight_recipe`` quantises the weight for the input-gradient GEMM with another recipe
    than the forward's (None: the same), and ``wgrad_precision="bf16"`` runs the weight-gradient
    GEMM on bf16 operands instead of fp8: both as torchao's ``rowwise_with_gw_hp`` does
    (``torchao/float8/config.py``: the weight tensorwise for dgrad, the weight gradient "in high
    precision"). ``layer="nvfp4"`` selects :class:`NVFP4Linear`, NVIDIA's NVFP4 training recipe.
    """

    name: str
    description: str
    input_recipe: str = "tensorwise"
    weight_recipe: str = "tensorwise"
    grad_recipe: str = "tensorwise"
    forward_format: str = "float8_e4m3fn"
    backward_format: str = "float8_e5m2"
    block_size: int | None = None
    pow2_scales: bool = False
    delayed: DelayedScaling | None = None
    dgrad_weight_recipe: str | None = None
    wgrad_precision: Literal["fp8", "bf16"] = "fp8"
    layer: Literal["fp8", "nvfp4"] = "fp8"
    sources: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.wgrad_precision not in ("fp8", "bf16"):
            raise ValueError(
                f"configuration {self.name!r}: wgrad_precision={self.wgrad_precision!r}; accepted: 'fp8', 'bf16'"
            )
        if self.layer not in ("fp8", "nvfp4"):
            raise ValueError(f"configuration {self.name!r}: layer={self.layer!r}; accepted: 'fp8', 'nvfp4'")
        if self.layer == "nvfp4" and {self.input_recipe, self.weight_recipe, self.grad_recipe} != {"nvfp4"}:
            raise ValueError(
                f"configuration {self.name!r}: layer='nvfp4' quantises every operand with NVIDIA's NVFP4 "
                f"recipe; set input, weight and grad recipes to 'nvfp4' (got {self.input_recipe}, "
                f"{self.weight_recipe}, {self.grad_recipe})"
            )
        if self.dgrad_weight_recipe is not None:
            resolve(self.dgrad_weight_recipe, self.forward_format)
            if resolve(self.dgrad_weight_recipe)[0].granularity != "tensor":
                raise ValueError(
                    f"configuration {self.name!r}: dgrad_weight_recipe={self.dgrad_weight_recipe!r}; "
                    "accepted: a recipe with one scale per tensor ('tensorwise'), as torchao uses"
                )
        for _role, recipe, fmt in (
            ("input", self.input_recipe, self.forward_format),
            ("weight", self.weight_recipe, self.forward_format),
            ("grad", self.grad_recipe, self.backward_format),
        ):
            resolve(
                recipe, fmt, self.block_size if self._blocked(recipe) else None
            )  # raises for bad combinations
        roles = (self.input_recipe, self.weight_recipe, self.grad_recipe)
        if "delayed" in roles:
            if set(roles) != {"delayed"}:
                raise ValueError(
                    f"configuration {self.name!r}: delayed scaling applies to every tensor of the layer "
                    f"(as in Transformer Engine); got input/weight/grad recipes {roles}"
                )
            if self.delayed is None:
                object.__setattr__(self, "delayed", DelayedScaling())
            if (formats.get(self.forward_format), formats.get(self.backward_format)) != (
                self.delayed.forward_format,
                self.delayed.backward_format,
            ):
                raise ValueError(
                    f"configuration {self.name!r}: formats {self.forward_format}/{self.backward_format} "
                    f"differ from the DelayedScaling's fp8_format {self.delayed.fp8_format!r}"
                )

    @staticmethod
    def _blocked(recipe: str) -> bool:
        return resolve(recipe)[0].granularity in ("block", "block2d")

    def block_of(self, recipe: str) -> int | None:
        """The block size ``recipe`` uses in this configuration (None for tensor and row scaling)."""
        return resolve(recipe, None, self.block_size if self._blocked(recipe) else None)[2]


#: The fp8 training recipes of the course, as data. Sources: TE's DelayedScaling and
#: Float8CurrentScaling defaults, torchao's ``Float8LinearConfig.from_recipe_name``, DeepSeek-V3 §3.3,
#: TE's MXFP8BlockScaling (E4M3 for every tensor by default).
CONFIGS: dict[str, FP8Config] = {
    c.name: c
    for c in (
        FP8Config(
            "fp8_tensorwise",
            "current per-tensor scaling, E4M3 forward and E5M2 gradients (TE Float8CurrentScaling, "
            "torchao 'tensorwise')",
            sources=("nvidia-te-recipes", "torchao-float8"),
        ),
        FP8Config(
            "fp8_delayed",
            "delayed per-tensor scaling from a 1024-step amax history, E4M3 forward, E5M2 gradients "
            "(TE DelayedScaling defaults)",
            "delayed",
            "delayed",
            "delayed",
            delayed=DelayedScaling(),
            sources=("nvidia-te-recipes",),
        ),
        FP8Config(
            "fp8_rowwise",
            "per-row scales (rounded to powers of two), E4M3 for every tensor (torchao 'rowwise')",
            "rowwise",
            "rowwise",
            "rowwise",
            backward_format="float8_e4m3fn",
            pow2_scales=True,
            sources=("torchao-float8",),
        ),
        FP8Config(
            "fp8_blockwise",
            "1x128 blocks for activations and gradients, 128x128 tiles for weights, E4M3 for every "
            "tensor (DeepSeek-V3)",
            "blockwise",
            "blockwise_2d",
            "blockwise",
            backward_format="float8_e4m3fn",
            block_size=128,
            sources=("deepseek2024v3", "nvidia-te-blockwise"),
        ),
        FP8Config(
            "mxfp8",
            "MX: one power-of-two (E8M0) scale per 32 elements, E4M3 for every tensor (OCP MX; TE "
            "MXFP8BlockScaling)",
            "mx",
            "mx",
            "mx",
            backward_format="float8_e4m3fn",
            block_size=32,
            sources=("ocp2023mx", "nvidia-te-recipes"),
        ),
        FP8Config(
            "fp8_rowwise_gw_hp",
            "per-row E4M3 scales (powers of two) for the forward and the input gradient, the weight "
            "tensorwise for the input gradient, the weight gradient in bf16 (torchao "
            "'rowwise_with_gw_hp')",
            "rowwise",
            "rowwise",
            "rowwise",
            backward_format="float8_e4m3fn",
            pow2_scales=True,
            dgrad_weight_recipe="tensorwise",
            wgrad_precision="bf16",
            sources=("torchao-float8",),
        ),
        FP8Config(
            "nvfp4",
            "NVFP4 (E2M1, an E4M3 scale per 16 and an fp32 tensor scale): 16x16 weight tiles, "
            "gradients rounded stochastically, a Hadamard transform on the weight-gradient inputs "
            "(NVIDIA's NVFP4 training recipe)",
            "nvfp4",
            "nvfp4",
            "nvfp4",
            forward_format="float4_e2m1fn",
            backward_format="float4_e2m1fn",
            block_size=16,
            layer="nvfp4",
            sources=("nvidia2025nvfp4", "nvidia-te-nvfp4"),
        ),
    )
}


def get_config(config: str | FP8Config) -> FP8Config:
    """The :class:`FP8Config` named ``config`` (an FP8Config is returned as it is)."""
    if isinstance(config, FP8Config):
        return config
    if config not in CONFIGS:
        raise ValueError(
            f"unknown fp8 configuration {config!r}; accepted: {', '.join(CONFIGS)} or an FP8Config"
        )
    return CONFIGS[config]


# ---- the layer ----------------------------------------------------------------------------------


def _transposed(q: Quantized) -> Quantized:
    """A tensor-scaled quantisation of ``x.T``: the same fp8 data transposed, the same scale."""
    return Quantized(q.data.t(), q.scale, q.recipe, q.fmt, q.block_size, 1, q.tensor_scale)


def _pad_rows(t: torch.Tensor, multiple: int | None) -> torch.Tensor:
    """Zero rows appended so the row count is a multiple (exact for a GEMM along the rows: zeros add nothing)."""
    if not multiple or t.shape[0] % multiple == 0:
        return t
    return F.pad(t, (0, 0, 0, multiple - t.shape[0] % multiple))


class FP8LinearFunction(torch.autograd.Function):
    """The three GEMMs of :class:`FP8Linear`, each multiplying two quantised operands.

    ``layer.matmul(a, b)`` computes ``a @ b.T`` in fp32, with both operands quantised along their
    last axis, the inner dimension of the product. Backward treats quantisation as the identity
    (the straight-through estimator): it returns the gradients of ``x @ w.T`` for the fp32 ``x`` and
    ``w`` themselves, computed from quantised copies of ``dy``, ``w`` and ``x``.
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, layer: FP8Linear
    ) -> torch.Tensor:
        dev = x.device.type
        out_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        with torch.autocast(dev, enabled=False):  # the layer chooses its own formats
            x2 = x.reshape(-1, x.shape[-1]).float()  # (tokens, in_features)
            w = weight.float()  # the fp32 master weight, quantised afresh every step
            qx = layer.quantize("input", x2)  # along in_features
            qw = layer.quantize("weight", w)  # along in_features
            y = layer.matmul(qx, qw)  # forward GEMM: y = x w^T
            if bias is not None:
                y = y + bias.float()
        ctx.save_for_backward(x2, w)
        ctx.layer, ctx.shapes = layer, (x.shape, x.dtype, weight.dtype, bias is not None)
        # A cast with one scale per tensor serves backward too, transposed (as Transformer Engine does).
        ctx.casts = (layer.keep_for_backward("input", qx), layer.keep_for_backward("weight", qw))
        return y.reshape(*x.shape[:-1], y.shape[-1]).to(out_dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        layer: FP8Linear = ctx.layer
        x_shape, x_dtype, w_dtype, has_bias = ctx.shapes
        x2, w = ctx.saved_tensors
        qx, qw = ctx.casts
        dy = grad_out.reshape(-1, grad_out.shape[-1]).float()  # (tokens, out_features)
        with torch.autocast(dy.device.type, enabled=False):
            q_dy = layer.quantize("grad_output", dy)  # along out_features
            # input-gradient GEMM: dx = dy w, inner dimension out_features
            dx = layer.matmul(q_dy, layer.quantize_transposed("weight_dgrad", w, qw))
            # weight-gradient GEMM: dw = dy^T x, inner dimension the tokens (padded to whole blocks)
            if layer.config.wgrad_precision == "bf16":  # torchao's rowwise_with_gw_hp: this one in bf16
                dw = (dy.t().to(torch.bfloat16) @ x2.to(torch.bfloat16)).float()
            else:
                pad = layer.wgrad_block()
                dw = layer.matmul(
                    layer.quantize_transposed("grad_output", dy, q_dy, pad=pad),
                    layer.quantize_transposed("input", x2, qx, pad=pad),
                )
        db = dy.sum(0) if has_bias else None
        # Straight through: dx and dw are the gradients of x and w, as if quantising were the identity.
        return dx.reshape(x_shape).to(x_dtype), dw.to(w_dtype), db, None


class FP8Linear(nn.Linear):
    """``nn.Linear`` whose forward and backward GEMMs multiply fp8 (or fp4) operands.

    The parameters are ordinary fp32 tensors (master weights); their fp8 copies live only inside
    a step. Under ``torch.autocast`` the output has the autocast dtype, like ``nn.Linear``'s.

    Args:
        config: an :class:`FP8Config` or the name of one in :data:`CONFIGS`.
        gemm: ``"emulated"`` (:func:`fp8_mm`, any device), ``"scaled_mm"`` (``torch._scaled_mm``
            always: an error where it cannot run), or ``"auto"`` (``torch._scaled_mm`` on a GPU with
            fp8 units for tensor/row scaling and shapes it accepts, the emulation otherwise).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        config: str | FP8Config = "fp8_tensorwise",
        gemm: Gemm = "auto",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        if gemm not in GEMMS:
            raise ValueError(f"gemm={gemm!r}; accepted: {', '.join(GEMMS)}")
        self.config = get_config(config)
        self.gemm = gemm
        self.scalers = nn.ModuleDict()
        cfg = self.config
        if cfg.delayed is not None:
            for role, recipe, backward in (
                ("input", cfg.input_recipe, False),
                ("weight", cfg.weight_recipe, False),
                ("grad_output", cfg.grad_recipe, True),
            ):
                if recipe == "delayed":
                    scaler = cfg.delayed.scaler(backward)
                    self.scalers[role] = scaler.to(self.weight.device)
        self.used_scaled_mm = False
        self._native: bool | None = None

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, config: str | FP8Config = "fp8_tensorwise", gemm: Gemm = "auto"
    ) -> FP8Linear:
        """An FP8Linear sharing ``linear``'s parameters (the same Parameter objects).

        A weight under a parametrisation (``torch.nn.utils.parametrize``) keeps it: the new layer
        gets the same original Parameter and the same parametrisation modules, so it computes with
        the same effective weight and the optimizer still updates the original.
        """
        if any(parametrize.is_parametrized(linear, name) for name in ("bias",)):
            raise ValueError(
                "from_linear keeps a parametrised weight, not a parametrised bias; remove it first"
            )
        parametrized = parametrize.is_parametrized(linear, "weight")
        weight = linear.parametrizations.weight.original if parametrized else linear.weight
        new = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            config=config,
            gemm=gemm,
            device="meta",
        )
        new.weight = weight
        new.bias = linear.bias
        for scaler in new.scalers.values():
            scaler.to_empty(device=weight.device)
            scaler.amax_history.zero_()
            scaler.scale.fill_(1.0)
        if parametrized:
            for module in linear.parametrizations.weight:
                parametrize.register_parametrization(new, "weight", module)
        return new

    # -- pieces the autograd function calls --

    def _recipe_and_format(self, role: str) -> tuple[str, str]:
        cfg = self.config
        return {
            "input": (cfg.input_recipe, cfg.forward_format),
            "weight": (cfg.weight_recipe, cfg.forward_format),
            "weight_dgrad": (cfg.dgrad_weight_recipe or cfg.weight_recipe, cfg.forward_format),
            "grad_output": (cfg.grad_recipe, cfg.backward_format),
        }[role]

    def tensor_scaled(self, role: str) -> bool:
        """True when ``role``'s recipe has one scale per tensor (its quantisation transposes freely)."""
        return resolve(self._recipe_and_format(role)[0])[0].granularity == "tensor"

    def wgrad_block(self) -> int:
        """The block size along the batch that the weight-gradient GEMM's operands need (1: none)."""
        cfg = self.config
        return max(cfg.block_of(cfg.grad_recipe) or 1, cfg.block_of(cfg.input_recipe) or 1)

    def keep_for_backward(self, role: str, q: Quantized) -> Quantized | None:
        """``q`` if backward can reuse it transposed (one scale per tensor), else None (not kept)."""
        return q if self.tensor_scaled(role) else None

    def quantize_transposed(
        self, role: str, t: torch.Tensor, cast: Quantized | None, *, pad: int = 1
    ) -> Quantized:
        """Operand ``t.T`` of a backward GEMM, quantised along its last axis (``t``'s first).

        A tensor-scaled ``cast`` of ``t`` is reused: transposing changes neither its fp8 data nor
        its scale. Otherwise ``t.T`` is quantised afresh (without touching a delayed-scaling
        history), after appending zero rows to ``t`` up to a multiple of ``pad``: blocks along the
        inner dimension must be whole, and zeros add nothing to the product.
        """
        if cast is not None and pad <= 1 and self.tensor_scaled(role) and self._same_cast(role):
            return _transposed(cast)
        return self.quantize(role, _pad_rows(t, pad).t(), record=False)

    def _same_cast(self, role: str) -> bool:
        """Whether ``role`` is quantised as the forward quantised its tensor (``weight_dgrad`` may not be)."""
        return role != "weight_dgrad" or self._recipe_and_format(role) == self._recipe_and_format("weight")

    def quantize(self, role: str, t: torch.Tensor, *, record: bool = True) -> Quantized:
        """Quantise operand ``role`` (``input``, ``weight`` or ``grad_output``) along its last axis.

        With delayed scaling, ``record=False`` (and evaluation, ``self.training`` False) uses the current
        scale without touching the history: only training steps shape the scales.
        """
        recipe, fmt = self._recipe_and_format(role)
        if recipe == "delayed":
            record = record and self.training
            scaler = self.scalers["weight" if role == "weight_dgrad" else role]
            return scaler.quantize(t, record=record, update=record)
        return quantize(
            t,
            recipe,
            fmt,
            block_size=self.config.block_of(recipe),
            axis=-1,
            pow2_scales=self.config.pow2_scales,
        )

    def _fp8_native(self, dev: torch.device) -> bool:
        if self._native is None:
            self._native = dev.type == "cuda" and device_mod.capabilities(kind="cuda").fp8_native
        return self._native

    def matmul(self, a: Quantized, b: Quantized) -> torch.Tensor:
        """``a @ b.T`` in fp32, on the GEMM this layer was told to use."""
        if self.gemm == "emulated":
            return fp8_mm(a, b)
        dev = a.data.device
        out_dtype = torch.bfloat16 if a.recipe == "rowwise" else torch.float32
        if self.gemm == "scaled_mm":
            self.used_scaled_mm = True
            return scaled_mm(a, b, out_dtype=out_dtype, native=dev.type == "cuda").float()
        if self._fp8_native(dev) and not scaled_mm_problems(a, b, "cuda", out_dtype):
            self.used_scaled_mm = True
            return scaled_mm(a, b, out_dtype=out_dtype).float()
        return fp8_mm(a, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return FP8LinearFunction.apply(x, self.weight, self.bias, self)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, config={self.config.name}, gemm={self.gemm}"


class NVFP4Linear(FP8Linear):
    """``nn.Linear`` trained with NVIDIA's NVFP4 recipe, emulated exactly (:mod:`mpcourse.fp8.nvfp4`).

    The three GEMMs run on NVFP4 operands as the paper specifies them [NVFP4 §4]: activations in
    1x16 blocks, rounded to nearest; the weight in 16x16 tiles, so that its quantisation serves the
    input-gradient GEMM transposed (:func:`~mpcourse.fp8.nvfp4.transpose`), with no second pass; the
    output gradient rounded stochastically; and both inputs of the weight-gradient GEMM multiplied
    along the tokens by the 16x16 random Hadamard transform (TE's fixed signs) before they are
    quantised. The transform cancels in the product, so the layer computes the same function.
    Stochastic rounding draws from the layer's own generator, seeded from a hash of the layer's
    weights when it is converted: two runs from the same initial weights draw the same rounding, so
    a seeded run is reproducible without touching the global random state.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        config: str | FP8Config = "nvfp4",
        gemm: Gemm = "emulated",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(
            in_features, out_features, bias, config=config, gemm="emulated", device=device, dtype=dtype
        )
        if self.config.layer != "nvfp4":
            raise ValueError(
                f"NVFP4Linear needs a configuration with layer='nvfp4' (e.g. 'nvfp4'); got {self.config.name!r}"
            )
        if gemm != "emulated":
            raise ValueError(f"NVFP4Linear runs emulated only (gemm='emulated'); got gemm={gemm!r}")
        self._seed = 0
        self._generators: dict[torch.device, torch.Generator] = {}
        self.rht = nvfp4.rht_matrix(nvfp4.TE_WGRAD_SIGNS)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, config: str | FP8Config = "nvfp4", gemm: Gemm = "emulated"
    ) -> NVFP4Linear:
        new = super().from_linear(linear, config, gemm)
        digest = hashlib.sha256(linear.weight.detach().float().cpu().numpy().tobytes()).digest()
        new._seed = int.from_bytes(digest[:7], "little")
        return new

    def _generator(self, dev: torch.device) -> torch.Generator:
        if dev not in self._generators:
            self._generators[dev] = torch.Generator(device=dev).manual_seed(self._seed)
        return self._generators[dev]

    def quantize(self, role: str, t: torch.Tensor, *, record: bool = True) -> Quantized:
        """``weight``: 16x16 tiles; ``input``: 1x16 blocks, nearest; ``grad_output``: 1x16, stochastic."""
        if role in ("weight", "weight_dgrad"):
            return nvfp4.quantize_weight(t)
        if role == "input":
            return nvfp4.quantize_activation(t)
        return nvfp4.quantize_gradient(t, self._generator(t.device))

    def keep_for_backward(self, role: str, q: Quantized) -> Quantized | None:
        return q if role == "weight" else None  # 16x16 tiles transpose; 1x16 blocks do not

    def quantize_transposed(
        self, role: str, t: torch.Tensor, cast: Quantized | None, *, pad: int = 1
    ) -> Quantized:
        """``W^T`` from the forward's tiles; ``dy^T`` and ``x^T`` rotated along the tokens, then quantised."""
        if role in ("weight", "weight_dgrad"):
            return nvfp4.transpose(cast if cast is not None else self.quantize("weight", t))
        rotated = nvfp4.apply_rht(_pad_rows(t, nvfp4.BLOCK).t(), self.rht.to(t.device))
        return self.quantize(role, rotated)

    def wgrad_block(self) -> int:
        return nvfp4.BLOCK

    def matmul(self, a: Quantized, b: Quantized) -> torch.Tensor:
        """``a @ b.T`` of the decoded operands in fp32 (what the block-scaled GEMM computes, up to the
        order of the fp32 additions)."""
        return a.dequantize() @ b.dequantize().t()


def layer_class(config: str | FP8Config) -> type[FP8Linear]:
    """The layer that implements ``config``: :class:`NVFP4Linear` for ``layer="nvfp4"``, else :class:`FP8Linear`."""
    return NVFP4Linear if get_config(config).layer == "nvfp4" else FP8Linear


# ---- converting a model -------------------------------------------------------------------------


def plan(
    model: nn.Module,
    config: str | FP8Config = "fp8_tensorwise",
    *,
    skip_first_last: bool = True,
    module_filter: Callable[[str, nn.Linear], bool] | None = None,
) -> pd.DataFrame:
    """Which linear layers :func:`convert_to_fp8` would convert, and why the others stay as they are.

    One row per ``nn.Linear``: name, in/out features, and ``fp8`` (True/False) with the reason.
    Kept in higher precision: the first and last linear layers (``skip_first_last``; the usual
    practice of TE, torchao and DeepSeek-V3: the input projection and the output head are sensitive
    and cheap), layers whose dimensions a block size does not divide, and layers ``module_filter``
    (``(name, module) -> bool``) rejects.
    """
    cfg = get_config(config)
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    rows = []
    for i, (name, m) in enumerate(linears):
        reason = "converted"
        fp8 = True
        blocks = {
            b
            for b in (
                cfg.block_of(cfg.input_recipe),
                cfg.block_of(cfg.weight_recipe),
                cfg.block_of(cfg.grad_recipe),
            )
            if b
        }
        if isinstance(m, FP8Linear):
            fp8, reason = True, "already fp8"
        elif skip_first_last and len(linears) > 1 and i in (0, len(linears) - 1):
            fp8, reason = (
                False,
                "first linear layer: kept in higher precision"
                if i == 0
                else "last linear layer (output head): kept in higher precision",
            )
        elif any(m.in_features % b or m.out_features % b for b in blocks):
            fp8, reason = (
                False,
                f"in/out features ({m.in_features}, {m.out_features}) not divisible by the block size {sorted(blocks)}",
            )
        elif module_filter is not None and not module_filter(name, m):
            fp8, reason = False, "rejected by module_filter"
        rows.append(
            {
                "layer": name,
                "in_features": m.in_features,
                "out_features": m.out_features,
                "fp8": fp8,
                "reason": reason,
            }
        )
    return pd.DataFrame(rows, columns=["layer", "in_features", "out_features", "fp8", "reason"])


def convert_to_fp8(
    model: nn.Module,
    config: str | FP8Config = "fp8_tensorwise",
    *,
    gemm: Gemm = "auto",
    skip_first_last: bool = True,
    module_filter: Callable[[str, nn.Linear], bool] | None = None,
    verbose: bool = False,
) -> nn.Module:
    """Swap the eligible ``nn.Linear`` layers of ``model`` for :class:`FP8Linear`, in place; returns ``model``.

    The swapped layers keep their Parameter objects, so an optimizer built before or after sees the
    same parameters. Which layers are swapped, and why others are not: :func:`plan`.
    """
    cfg = get_config(config)
    table = plan(model, cfg, skip_first_last=skip_first_last, module_filter=module_filter)
    chosen = set(table.loc[table["fp8"], "layer"])
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if full in chosen and isinstance(child, nn.Linear) and not isinstance(child, FP8Linear):
                cls = layer_class(cfg)
                setattr(
                    module,
                    child_name,
                    cls.from_linear(child, cfg, "emulated" if cls is NVFP4Linear else gemm),
                )
    if verbose:
        kept = table[~table["fp8"]]
        print(
            f"[{cfg.name}] {len(chosen)} linear layer(s) in fp8; kept in higher precision: "
            + ("; ".join(f"{r.layer} ({r.reason})" for r in kept.itertuples()) or "none")
        )
    return model


__all__ = [
    "CONFIGS",
    "GEMMS",
    "FP8Config",
    "FP8Linear",
    "FP8LinearFunction",
    "NVFP4Linear",
    "convert_to_fp8",
    "get_config",
    "layer_class",
    "plan",
]
