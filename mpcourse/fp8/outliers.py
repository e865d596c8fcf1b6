"""A small language model with outlier channels, and a comparison of fp8 recipes on it.

Large language models develop a few feature dimensions whose activations are far larger than the
rest: systematic outliers in a handful of hidden dimensions (Dettmers et al., LLM.int8(), arXiv
2208.07339) and, in a few activations, values up to 100,000 times the others (Sun et al., "Massive
activations in large language models", arXiv 2402.17762). These are what make per-tensor fp8 scaling
fragile at scale (DeepSeek-V3, arXiv 2412.19437, §3.3). A model small enough to train in a minute
does not grow them, so :func:`outlier_transformer` plants them, without changing what the model
computes:

- :class:`ChannelGain` multiplies a few channels of each block's normalised input by ``gain`` (a
  buffer, not a parameter);
- :class:`DivideColumns` divides the matching input columns of the linear layers that read that
  input (``qkv`` and ``up``) by ``gain``, as a parametrisation of their weights.

``(x * g) @ (W / g)^T = x @ W^T``: the function, the gradients of the trained parameters and
bf16 training are unchanged (bf16 keeps its relative precision at any magnitude, so only rounding
differs), while every quantiser of those layers sees activations with outlier channels and weights
with tiny columns. The optimizer trains ordinary-sized parameters (the parametrisation's original),
so Adam's step size does not undo the plant.

:func:`compare_recipes` trains the model with several recipes on the same seeds and batches and
tabulates the final losses, their spread over seeds, and each recipe's gap to bf16 paired by seed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn
from torch.nn.utils import parametrize

from .. import train as train_mod
from ..data import TextData
from ..models import CharTransformer
from ..train.resolve import resolve_threads
from .linear import CONFIGS, convert_to_fp8

__all__ = [
    "OUTLIER_CHANNELS",
    "ChannelGain",
    "DivideColumns",
    "RecipeRun",
    "compare_recipes",
    "gaps",
    "gradient_errors",
    "outlier_transformer",
    "set_gain",
    "with_layers",
]

#: The channels that get the gain (any few channels would do; two, as in Sun et al.'s LLaMA2-7B).
OUTLIER_CHANNELS: tuple[int, ...] = (3, 77)


class ChannelGain(nn.Module):
    """Multiply the last dimension of the input by a fixed vector: ``gain`` on ``channels``, 1 elsewhere."""

    def __init__(self, width: int, gain: float, channels: Sequence[int] = OUTLIER_CHANNELS) -> None:
        super().__init__()
        if not gain > 0:
            raise ValueError(f"gain must be a positive number, got {gain!r}")
        bad = [c for c in channels if not 0 <= c < width]
        if bad:
            raise ValueError(f"outlier channels {bad} are outside 0..{width - 1} (the model's width)")
        planted = torch.zeros(width, dtype=torch.bool)
        planted[list(channels)] = True
        self.register_buffer("planted", planted)
        self.register_buffer("g", torch.where(planted, float(gain), 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.g.to(x.dtype)


class DivideColumns(nn.Module):
    """A weight parametrisation: the effective weight is the trained one with column ``j`` divided by ``g[j]``."""

    def __init__(self, g: torch.Tensor, planted: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("g", g.detach().clone())
        self.register_buffer("planted", (g != 1) if planted is None else planted.detach().clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight / self.g.to(weight.dtype)


def outlier_transformer(
    data: TextData,
    *,
    gain: float = 1e4,
    width: int = 128,
    depth: int = 2,
    heads: int = 4,
    channels: Sequence[int] = OUTLIER_CHANNELS,
) -> CharTransformer:
    """A :class:`~mpcourse.models.CharTransformer` for ``data`` whose blocks' linear layers see outlier
    channels ``gain`` times larger than they would be, with the weights that read them compensated.

    ``gain=1`` gives the plain model. The outliers sit in the inputs of every block's ``qkv`` and
    ``up`` layers; ``proj`` and ``down`` and the output head see ordinary activations.
    """
    if not isinstance(data, TextData):
        raise TypeError(
            f"outlier_transformer needs a TextData bundle (mpcourse.data.load_text), got {type(data).__name__}"
        )
    model = CharTransformer(data.num_classes, data.block_size, width=width, depth=depth, heads=heads)
    for block in model.blocks:
        for norm, readers in (("norm1", (block.qkv,)), ("norm2", (block.up,))):
            gain_module = ChannelGain(width, gain, channels)
            setattr(block, norm, nn.Sequential(getattr(block, norm), gain_module))
            for linear in readers:
                parametrize.register_parametrization(
                    linear, "weight", DivideColumns(gain_module.g, gain_module.planted)
                )
    return model


def with_layers(recipe: str, *, skip_first_last: bool) -> train_mod.Recipe:
    """The course's fp8 ``recipe`` (a name in :data:`mpcourse.fp8.CONFIGS`) converting the first and
    last linear layers too (``skip_first_last=False``) or keeping them in higher precision (True,
    what every registered recipe does)."""
    if recipe not in CONFIGS:
        raise ValueError(
            f"recipe {recipe!r} is not one of the course's fp8 recipes; accepted: {', '.join(CONFIGS)}"
        )
    base = train_mod.get_recipe(recipe)

    def prepare(model: nn.Module) -> nn.Module:
        return convert_to_fp8(model, recipe, skip_first_last=skip_first_last)

    suffix = "first_last_bf16" if skip_first_last else "every_layer"
    return dataclasses.replace(base, name=f"{recipe}_{suffix}", prepare_model=prepare)


@dataclass(frozen=True)
class RecipeRun:
    """One run of :func:`compare_recipes`: the recipe's label, the seed, and the run's history."""

    label: str
    seed: int
    history: train_mod.History


def compare_recipes(
    make_model: Callable[[], nn.Module],
    data: TextData,
    recipes: Sequence[str | train_mod.Recipe],
    *,
    seeds: Sequence[int] = (0, 1),
    steps: int,
    batch_size: int,
    lr: float,
    labels: Sequence[str] | None = None,
) -> list[RecipeRun]:
    """Train ``make_model`` with each recipe and each seed; a seed fixes the initial weights and the
    batches, so two recipes with the same seed differ only in their arithmetic."""
    labels = list(labels) if labels is not None else [train_mod.get_recipe(r).name for r in recipes]
    if len(labels) != len(recipes):
        raise ValueError(f"{len(labels)} labels for {len(recipes)} recipes: give one label per recipe")
    runs = []
    for recipe, label in zip(recipes, labels, strict=True):
        for seed in seeds:
            history = train_mod.train(
                make_model,
                data,
                recipe,
                steps=steps,
                batch_size=batch_size,
                lr=lr,
                seed=seed,
                label=f"{label}, seed {seed}",
                verbose=False,
                progress=False,
            )
            runs.append(RecipeRun(label, seed, history))
    return runs


def gaps(runs: Sequence[RecipeRun], baseline: str = "bf16", metric: str = "eval_loss") -> pd.DataFrame:
    """Per recipe: ``metric`` at the end of training (mean over seeds, and its spread, max - min),
    and the gap to ``baseline`` paired by seed (mean, min, max). A gap whose min and max have the
    same sign is one every seed agrees on; one smaller than the baseline's spread is not measured."""
    final = pd.DataFrame(
        [{"recipe": r.label, "seed": r.seed, metric: r.history.summary()[metric]} for r in runs]
    ).pivot(index="seed", columns="recipe", values=metric)
    if baseline not in final:
        raise ValueError(f"no runs labelled {baseline!r}; labels: {', '.join(map(str, final))}")
    rows = []
    for recipe in dict.fromkeys(r.label for r in runs):
        gap = final[recipe] - final[baseline]
        rows.append(
            {
                "recipe": recipe,
                metric: final[recipe].mean(),
                "spread over seeds": final[recipe].max() - final[recipe].min(),
                f"gap to {baseline}": gap.mean(),
                "gap min": gap.min(),
                "gap max": gap.max(),
            }
        )
    return pd.DataFrame(rows).set_index("recipe")


def set_gain(model: nn.Module, gain: float) -> nn.Module:
    """Change the planted gain of an :func:`outlier_transformer` in place (trained or not); returns it.

    The trained parameters do not depend on the gain (the plant leaves the function unchanged), so one
    trained model can be looked at through every gain: the same weights, outliers of another size.
    """
    if not gain > 0:
        raise ValueError(f"gain must be a positive number, got {gain!r}")
    gains = [m for m in model.modules() if isinstance(m, ChannelGain)]
    if not gains:
        raise ValueError(
            "the model has no planted outliers (ChannelGain modules): build it with outlier_transformer"
        )
    for module in (*gains, *(m for m in model.modules() if isinstance(m, DivideColumns))):
        module.g[module.planted] = float(gain)
    return model


def gradient_errors(
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    recipes: Sequence[str | train_mod.Recipe],
    *,
    labels: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One step's loss and gradient under each recipe, at the same weights, against fp32.

    Each recipe gets a copy of ``model``, prepared as the recipe prepares a model (its fp8 layers),
    and runs one forward and backward pass on ``batch`` under its autocast dtype. Columns: the loss,
    its difference from fp32's, and the gradient's relative error (the norm of the difference over
    the norm of fp32's gradient, over every parameter) and cosine similarity with fp32's. Training
    amplifies small differences chaotically; one step at fixed weights does not, so this measures
    what each recipe's arithmetic does, free of run-to-run noise.
    """
    import copy

    import torch.nn.functional as F

    labels = list(labels) if labels is not None else [train_mod.get_recipe(r).name for r in recipes]
    if len(labels) != len(recipes):
        raise ValueError(f"{len(labels)} labels for {len(recipes)} recipes: give one label per recipe")
    inputs, targets = batch

    def step(recipe: train_mod.Recipe | None) -> tuple[float, torch.Tensor]:
        net = copy.deepcopy(model).train()
        if recipe is not None and recipe.prepare_model is not None:
            with contextlib.redirect_stdout(io.StringIO()):  # the conversion's note, once per recipe
                net = recipe.prepare_model(net)
        dtype = recipe.autocast_dtype if recipe is not None else None
        with torch.autocast(inputs.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            logits = net(inputs)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        return loss.item(), torch.cat(
            [p.grad.flatten().float() for p in net.parameters() if p.grad is not None]
        )

    n_params = sum(p.numel() for p in model.parameters())
    threads = resolve_threads(None, inputs.device, n_params * targets.numel(), [])  # as a training run would
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        ref_loss, ref_grad = step(None)
        results = [step(train_mod.get_recipe(recipe)) for recipe in recipes]
    finally:
        torch.set_num_threads(saved_threads)
    rows = []
    for label, (loss, grad) in zip(labels, results, strict=True):
        rows.append(
            {
                "recipe": label,
                "loss": loss,
                "loss - fp32": loss - ref_loss,
                "gradient error": ((grad - ref_grad).norm() / ref_grad.norm()).item(),
                "gradient cosine": F.cosine_similarity(grad, ref_grad, dim=0).item(),
            }
        )
    return pd.DataFrame(rows).set_index("recipe")
