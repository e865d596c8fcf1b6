"""The fp8 training recipes that :mod:`mpcourse.train` runs: the course's fp8 layers and torchao's.

Each recipe swaps a model's linear layers when a run starts (``Recipe.prepare_model``) and runs the
rest under bf16 autocast with fp32 master weights. :data:`mpcourse.train.RECIPES` loads
:func:`training_recipes` on first use, so no import order matters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..train import RECIPES as TRAIN_RECIPES
from ..train import Recipe, register_recipe
from .linear import CONFIGS, convert_to_fp8
from .torchao import TORCHAO_RECIPES, torchao_convert


def _prepare(config: str) -> Callable[[nn.Module], nn.Module]:
    def prepare(model: nn.Module) -> nn.Module:
        return convert_to_fp8(model, config, verbose=True)

    return prepare


def _prepare_torchao(recipe: str) -> Callable[[nn.Module], nn.Module]:
    def prepare(model: nn.Module) -> nn.Module:
        return torchao_convert(model, recipe)

    return prepare


def training_recipes() -> tuple[Recipe, ...]:
    """The fp8 training recipes: :data:`CONFIGS` (emulated anywhere, real GEMMs where possible) and
    torchao's three (``torchao_tensorwise``, ``torchao_rowwise``, ``torchao_rowwise_with_gw_hp``;
    sm_89+ only, since they measure torchao where it is fast). :data:`mpcourse.train.RECIPES` loads them on first use."""
    ours = tuple(
        Recipe(
            cfg.name,
            f"fp8 linear layers: {cfg.description}; the rest under bf16 autocast, fp32 master weights",
            autocast_dtype=torch.bfloat16,
            precision="fp8",
            prepare_model=_prepare(cfg.name),
        )
        for cfg in CONFIGS.values()
    )
    torchao = tuple(
        Recipe(
            f"torchao_{name}",
            f"torchao's float8 training, recipe '{name}' (needs sm_89+), the rest under bf16 autocast",
            autocast_dtype=torch.bfloat16,
            precision="fp8",
            prepare_model=_prepare_torchao(name),
        )
        for name in TORCHAO_RECIPES
    )
    return ours + torchao


def register_training_recipes() -> None:
    """Register any of :func:`training_recipes` missing from :data:`mpcourse.train.RECIPES` (after a
    test removed some, say: the registry loads them by itself). Idempotent."""
    for recipe in training_recipes():
        if recipe.name not in TRAIN_RECIPES:
            register_recipe(recipe)


__all__ = ["register_training_recipes", "training_recipes"]
