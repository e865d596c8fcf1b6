"""torchao's fp8 training, where it can run (NVIDIA sm_89+ with a torchao built for this torch).

The course's own :class:`~mpcourse.fp8.linear.FP8Linear` runs every recipe anywhere, emulated where
the hardware lacks fp8 units; torchao is what a practitioner uses on a capable GPU. These helpers say
whether it can run here (and why not, in one line), which layers it would convert, and convert a
model with one of its recipe names.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from .. import device as device_mod
from .gemm import UnsupportedFP8Error
from .linear import plan

TORCHAO_RECIPES: tuple[str, ...] = ("tensorwise", "rowwise", "rowwise_with_gw_hp")


def torchao_status(caps: device_mod.Capabilities | None = None) -> tuple[bool, str]:
    """Whether torchao's fp8 training can run here, and why not if it cannot."""
    caps = caps or device_mod.capabilities()
    if caps.kind != "cuda" or not caps.fp8_native:
        return False, (
            f"torchao's float8 training needs fp8 tensor cores (NVIDIA sm_89+, AMD MI300+); this is "
            f"{caps.describe()}, so the course emulates fp8 instead"
        )
    try:
        import torchao
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training  # noqa: F401
    except ImportError as err:
        return False, f"torchao is not installed or too old ({err}); `pip install torchao` to use it"
    except Exception as err:  # noqa: BLE001 - a torchao built for another torch fails in many ways at import
        return False, (
            f"torchao is installed but does not load with torch {torch.__version__} "
            f"({type(err).__name__}: {err}); install the torchao release made for this torch"
        )
    return True, f"torchao {getattr(torchao, '__version__', '?')} on {caps.describe()}"


def torchao_plan(model: nn.Module, *, skip_first_last: bool = True) -> pd.DataFrame:
    """Which linear layers :func:`torchao_convert` converts, in the format of :func:`plan`: the first
    and last stay in higher precision, and so does a layer with in/out features not divisible by 16
    (``torch._scaled_mm`` needs that)."""
    table = plan(model, "fp8_tensorwise", skip_first_last=skip_first_last)
    odd = table["fp8"] & ((table["in_features"] % 16 != 0) | (table["out_features"] % 16 != 0))
    table.loc[odd, "fp8"] = False
    table.loc[odd, "reason"] = [
        f"in/out features ({i}, {o}) not divisible by 16 (torch._scaled_mm)"
        for i, o in zip(table.loc[odd, "in_features"], table.loc[odd, "out_features"])
    ]
    return table


def torchao_convert(
    model: nn.Module, recipe: str = "tensorwise", *, skip_first_last: bool = True
) -> nn.Module:
    """``torchao.float8.convert_to_float8_training`` with a recipe name, keeping first/last layers and
    layers with dimensions not divisible by 16 in higher precision (what ``torch._scaled_mm`` needs).

    Raises:
        UnsupportedFP8Error: where torchao's fp8 training cannot run (see :func:`torchao_status`).
        ValueError: for an unknown recipe name.
    """
    if recipe not in TORCHAO_RECIPES:
        raise ValueError(f"unknown torchao recipe {recipe!r}; accepted: {', '.join(TORCHAO_RECIPES)}")
    ok, why = torchao_status()
    if not ok:
        raise UnsupportedFP8Error(why)
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    table = torchao_plan(model, skip_first_last=skip_first_last)
    chosen = set(table.loc[table["fp8"], "layer"])

    def keep(module: nn.Module, fqn: str) -> bool:
        return not isinstance(module, nn.Linear) or fqn in chosen

    return convert_to_float8_training(
        model, config=Float8LinearConfig.from_recipe_name(recipe), module_filter_fn=keep
    )


__all__ = ["TORCHAO_RECIPES", "torchao_convert", "torchao_plan", "torchao_status"]
