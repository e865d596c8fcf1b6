"""Precision recipes: what a training run keeps in which format, as data, and a registry of them.

A :class:`Recipe` says everything the training engine needs to know about precision:

- ``autocast_dtype``: the dtype ``torch.autocast`` runs eligible ops in (None: no autocast);
- ``param_dtype``: the dtype of the parameters the optimizer updates (fp32 = fp32 master weights;
  bf16/fp16 = "pure" low-precision training, no master copy);
- ``loss_scaling``: whether the engine creates a ``torch.amp.GradScaler`` by default;
- ``tf32``: whether fp32 matmuls and convolutions may use TF32 tensor cores (NVIDIA Ampere+);
- ``precision``: which entry of :data:`mpcourse.device.PRECISIONS` decides whether the device runs
  the recipe natively, emulated, or not at all;
- ``prepare_model`` / ``make_optimizer``: optional hooks for recipes that change the model (e.g.
  swap ``nn.Linear`` for an fp8 linear) or need their own optimizer (e.g. stochastic rounding or
  Kahan-compensated updates for pure bf16).

Later chapters add recipes with :func:`register_recipe`; :func:`get_recipe` looks them up by name.
:data:`RECIPES` holds every recipe of the course as soon as this module is imported, in any import
order: the recipes defined next to their machinery (:data:`PROVIDERS`) are loaded on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass

import torch
from torch import nn

from .. import device as device_mod

ModelHook = Callable[[nn.Module], nn.Module]
OptimizerFactory = Callable[[Iterable[nn.Parameter], float], torch.optim.Optimizer]

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Recipe:
    """One precision recipe. Frozen, so a registered recipe cannot be changed behind a run's back."""

    name: str
    description: str
    autocast_dtype: torch.dtype | None = None
    param_dtype: torch.dtype = torch.float32
    loss_scaling: bool = False
    tf32: bool = False
    precision: str = "fp32"
    prepare_model: ModelHook | None = None
    make_optimizer: OptimizerFactory | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"a recipe name must be letters, digits, '_' or '-', got {self.name!r}")
        if self.precision not in device_mod.PRECISIONS:
            raise ValueError(
                f"recipe {self.name!r}: precision {self.precision!r} is not one of {', '.join(device_mod.PRECISIONS)}"
            )
        if self.autocast_dtype not in (None, torch.float16, torch.bfloat16):
            raise ValueError(
                f"recipe {self.name!r}: autocast_dtype must be None, torch.float16 or torch.bfloat16, "
                f"got {self.autocast_dtype}"
            )
        if self.param_dtype not in _FLOAT_DTYPES:
            raise ValueError(
                f"recipe {self.name!r}: param_dtype must be torch.float32, torch.float16 or torch.bfloat16, "
                f"got {self.param_dtype}"
            )

    @property
    def pure(self) -> bool:
        """True when the parameters themselves are low precision (no fp32 master weights)."""
        return self.param_dtype != torch.float32

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype most matmuls run in: the autocast dtype, else the parameter dtype."""
        return self.autocast_dtype or self.param_dtype


#: Modules that define recipes next to the machinery they need (pure-bf16 optimizers, fp8 layers), each
#: with a function ``training_recipes()`` that returns them. They import this module, so it cannot
#: import them at its top: :class:`RecipeRegistry` imports them on first use.
PROVIDERS: tuple[str, ...] = ("mpcourse.bf16", "mpcourse.fp8.training")


class RecipeRegistry(MutableMapping[str, Recipe]):
    """The recipes by name, complete on first use whatever was imported before.

    The first lookup, membership test, iteration or registration imports :data:`PROVIDERS` and adds
    what their ``training_recipes()`` return; so ``train.get_recipe("fp8_rowwise")`` works right
    after ``from mpcourse import train``, and the order is always this module's recipes, then each
    provider's, then any registered later. Assigning ``registry[name] = recipe`` checks the pair;
    :func:`register_recipe` also refuses to overwrite one by accident.
    """

    def __init__(self, providers: tuple[str, ...]) -> None:
        self._recipes: dict[str, Recipe] = {}
        self._providers = providers
        self._loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # first: a lookup made while a provider is being imported must not recurse
        for module in self._providers:
            try:
                provided = importlib.import_module(module).training_recipes()
            except Exception as err:
                self._loaded = False
                raise ImportError(f"loading the training recipes of {module} failed: {err}") from err
            for recipe in provided:
                self._recipes.setdefault(recipe.name, recipe)

    def _add_builtin(self, recipe: Recipe) -> None:
        """Register one of this module's own recipes (at import time, so without loading the providers)."""
        self._recipes[recipe.name] = recipe

    def __getitem__(self, name: str) -> Recipe:
        self._load()
        return self._recipes[name]

    def __setitem__(self, name: str, recipe: Recipe) -> None:
        if not isinstance(recipe, Recipe):
            raise TypeError(f"expected a Recipe, got {type(recipe).__name__}")
        if name != recipe.name:
            raise ValueError(f"recipe {recipe.name!r} cannot be registered under another name ({name!r})")
        self._load()
        self._recipes[name] = recipe

    def __delitem__(self, name: str) -> None:
        self._load()
        del self._recipes[name]

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(list(self._recipes))

    def __len__(self) -> int:
        self._load()
        return len(self._recipes)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._recipes

    def __repr__(self) -> str:
        return f"RecipeRegistry({', '.join(self)})"


RECIPES = RecipeRegistry(PROVIDERS)


def register_recipe(recipe: Recipe, *, replace: bool = False) -> Recipe:
    """Add ``recipe`` to :data:`RECIPES` (``replace=True`` to overwrite one of the same name)."""
    if not isinstance(recipe, Recipe):
        raise TypeError(f"expected a Recipe, got {type(recipe).__name__}")
    if recipe.name in RECIPES and not replace:
        raise ValueError(
            f"a recipe named {recipe.name!r} is already registered; pass replace=True to overwrite it"
        )
    RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(recipe: str | Recipe) -> Recipe:
    """The registered recipe called ``recipe`` (a :class:`Recipe` is returned as it is).

    Raises:
        ValueError: for an unknown name, listing the registered ones.
    """
    if isinstance(recipe, Recipe):
        return recipe
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; accepted: {', '.join(RECIPES)}")
    return RECIPES[recipe]


#: The recipe to suggest, per precision, when a device cannot run the one asked for.
FALLBACK_ORDER: dict[str, tuple[str, ...]] = {
    "fp8": ("bf16", "fp16", "fp32"),
    "bf16": ("fp16", "fp32"),
    "fp16": ("bf16", "fp32"),
    "tf32": ("fp32",),
    "fp32": (),
}


def alternative(recipe: Recipe, caps: device_mod.Capabilities) -> Recipe:
    """A registered recipe this device runs natively, to suggest instead of ``recipe``.

    Tries the precisions of :data:`FALLBACK_ORDER` in turn (keeping ``recipe``'s use of master
    weights: a pure-bf16 recipe's alternative is mixed precision, never another pure one) and ends
    with plain fp32, which every device runs.
    """
    support = device_mod.precision_support(caps)
    for precision in FALLBACK_ORDER.get(recipe.precision, ("fp32",)):
        if support[precision].status == "native" and precision in RECIPES:
            return RECIPES[precision]
    return RECIPES["fp32"]


for _recipe in (
    Recipe(
        "fp32",
        "everything in fp32: the reference every other recipe is compared with",
        precision="fp32",
    ),
    Recipe(
        "tf32",
        "fp32 parameters and arithmetic, but matmuls and convolutions may round their inputs to TF32 "
        "(10 mantissa bits) on NVIDIA tensor cores",
        tf32=True,
        precision="tf32",
    ),
    Recipe(
        "fp16",
        "automatic mixed precision: fp32 master weights, eligible ops autocast to fp16, dynamic loss scaling",
        autocast_dtype=torch.float16,
        loss_scaling=True,
        precision="fp16",
    ),
    Recipe(
        "bf16",
        "automatic mixed precision: fp32 master weights, eligible ops autocast to bf16, no loss scaling "
        "(bf16 has fp32's exponent range)",
        autocast_dtype=torch.bfloat16,
        precision="bf16",
    ),
    Recipe(
        "pure_bf16",
        "parameters, gradients, optimizer state and all arithmetic in bf16: no fp32 master weights",
        param_dtype=torch.bfloat16,
        precision="bf16",
    ),
    Recipe(
        "pure_fp16",
        "parameters, gradients, optimizer state and all arithmetic in fp16, no loss scaling: "
        "the naive recipe, kept to show how it fails",
        param_dtype=torch.float16,
        precision="fp16",
    ),
):
    RECIPES._add_builtin(_recipe)
