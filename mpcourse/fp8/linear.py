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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .. import device as device_mod
from .. import formats
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
    sources: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
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
            dx = layer.matmul(q_dy, layer.quantize_transposed("weight", w, qw))
            # weight-gradient GEMM: dw = dy^T x, inner dimension the tokens (padded to whole blocks)
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
        """An FP8Linear sharing ``linear``'s parameters (the same Parameter objects)."""
        new = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            config=config,
            gemm=gemm,
            device="meta",
        )
        new.weight = linear.weight
        new.bias = linear.bias
        for scaler in new.scalers.values():
            scaler.to_empty(device=linear.weight.device)
            scaler.amax_history.zero_()
            scaler.scale.fill_(1.0)
        return new

    # -- pieces the autograd function calls --

    def _recipe_and_format(self, role: str) -> tuple[str, str]:
        cfg = self.config
        return {
            "input": (cfg.input_recipe, cfg.forward_format),
            "weight": (cfg.weight_recipe, cfg.forward_format),
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
        if cast is not None and pad <= 1 and self.tensor_scaled(role):
            return _transposed(cast)
        return self.quantize(role, _pad_rows(t, pad).t(), record=False)

    def quantize(self, role: str, t: torch.Tensor, *, record: bool = True) -> Quantized:
        """Quantise operand ``role`` (``input``, ``weight`` or ``grad_output``) along its last axis.

        With delayed scaling, ``record=False`` (and evaluation, ``self.training`` False) uses the current
        scale without touching the history: only training steps shape the scales.
        """
        recipe, fmt = self._recipe_and_format(role)
        if recipe == "delayed":
            record = record and self.training
            return self.scalers[role].quantize(t, record=record, update=record)
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
                setattr(module, child_name, FP8Linear.from_linear(child, cfg, gemm))
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
    "convert_to_fp8",
    "get_config",
    "plan",
]
