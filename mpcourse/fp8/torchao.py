"""torchao's fp8 training: whether it can run here, which layers it converts, and the conversion.

The course's own :class:`~mpcourse.fp8.linear.FP8Linear` runs every recipe anywhere, emulated where
the hardware lacks fp8 units; torchao is what a practitioner uses. Its recipes call
``torch._scaled_mm``, which runs on fp8 tensor cores (NVIDIA sm_89+, AMD MI300+) and, in recent
PyTorch, on the CPU through an emulated kernel: the numbers of fp8 training without its speed. These
helpers say whether it can run here (and why not, in one line), which layers it would convert, and
convert a model with one of its recipe names.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import pandas as pd
import torch
from torch import nn

from .. import device as device_mod
from .gemm import UnsupportedFP8Error, cpu_rowwise_scaled_mm
from .linear import plan

#: The recipe names of ``torchao.float8.Float8LinearConfig.from_recipe_name`` (torchao 0.18.0,
#: ``Float8LinearRecipeName``).
TORCHAO_RECIPES: tuple[str, ...] = ("tensorwise", "rowwise", "rowwise_with_gw_hp")


def _import_torchao() -> str:
    """Import torchao's float8 training API and return torchao's version; quiet about torch's pytree log.

    torchao 0.18 registers an Enum with torch's pytree at import, and torch 2.14 logs a deprecation
    note about it ("is now natively supported by torch.compile"); it says nothing a learner can act on.
    """
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        import torchao
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training  # noqa: F401

        return str(getattr(torchao, "__version__", "?"))
    finally:
        pytree_log.setLevel(level)


def torchao_status(
    caps: device_mod.Capabilities | None = None, *, recipe: str = "tensorwise", on_cpu: bool = False
) -> tuple[bool, str]:
    """Whether torchao's fp8 training with ``recipe`` can run here, and why not if it cannot.

    By default only a GPU with fp8 tensor cores counts, since that is where torchao is fast. With
    ``on_cpu=True`` a CPU counts too: torchao's code then runs unchanged and ``torch._scaled_mm``
    computes on the CPU, giving fp8's numbers at none of its speed (rowwise scales need a PyTorch
    whose CPU kernel takes them, 2.14 does).
    """
    if recipe not in TORCHAO_RECIPES:
        raise ValueError(f"unknown torchao recipe {recipe!r}; accepted: {', '.join(TORCHAO_RECIPES)}")
    caps = caps or device_mod.capabilities()
    gpu_ok = caps.kind == "cuda" and caps.fp8_native
    cpu_ok = on_cpu and caps.kind == "cpu"
    if not (gpu_ok or cpu_ok):
        where = "fp8 tensor cores (NVIDIA sm_89+, AMD MI300+)" + (" or a CPU" if on_cpu else "")
        return False, (
            f"torchao's float8 training needs {where}; this is {caps.describe()}, so the course "
            "emulates fp8 instead"
        )
    if cpu_ok and recipe != "tensorwise" and caps.preset is None and not cpu_rowwise_scaled_mm():
        return False, (
            f"torchao's {recipe!r} recipe needs rowwise scales, which this PyTorch's CPU torch._scaled_mm "
            f"(torch {torch.__version__}) does not take; 'tensorwise' runs, or a newer PyTorch"
        )
    try:
        version = _import_torchao()
    except ImportError as err:
        return False, f"torchao is not installed or too old ({err}); `pip install torchao` to use it"
    except Exception as err:  # noqa: BLE001 - a torchao built for another torch fails in many ways at import
        return False, (
            f"torchao is installed but does not load with torch {torch.__version__} "
            f"({type(err).__name__}: {err}); install the torchao release made for this torch"
        )
    if gpu_ok:
        return True, f"torchao {version} on {caps.describe()}"
    return True, (
        f"torchao {version} on {caps.describe()}: torch._scaled_mm runs on the CPU, so these are fp8's "
        "numbers, not its speed"
    )


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
    model: nn.Module, recipe: str = "tensorwise", *, skip_first_last: bool = True, on_cpu: bool = False
) -> nn.Module:
    """``torchao.float8.convert_to_float8_training`` with a recipe name, keeping first/last layers and
    layers with dimensions not divisible by 16 in higher precision (what ``torch._scaled_mm`` needs).

    ``on_cpu`` is :func:`torchao_status`'s: whether a CPU, where fp8 is emulated, may run it.

    Raises:
        UnsupportedFP8Error: where torchao's fp8 training cannot run (see :func:`torchao_status`).
        ValueError: for an unknown recipe name.
    """
    ok, why = torchao_status(recipe=recipe, on_cpu=on_cpu)
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


@contextlib.contextmanager
def count_scaled_mm() -> Iterator[list[tuple[torch.dtype, torch.dtype, str]]]:
    """Count the ``torch._scaled_mm`` calls made inside the block, with their operand dtypes and device.

    Yields a list that each call appends ``(dtype of a, dtype of b, device type)`` to: evidence of
    what ran, for a page that says a library's fp8 GEMMs ran. It wraps the attribute
    ``torch._scaled_mm``, so it sees eager calls that look the op up at call time (torchao's do), not
    the kernels of a model compiled by ``torch.compile``.
    """
    calls: list[tuple[torch.dtype, torch.dtype, str]] = []
    original = torch._scaled_mm

    def counted(a: torch.Tensor, b: torch.Tensor, *args, **kwargs):
        calls.append((a.dtype, b.dtype, a.device.type))
        return original(a, b, *args, **kwargs)

    torch._scaled_mm = counted
    try:
        yield calls
    finally:
        torch._scaled_mm = original


__all__ = ["TORCHAO_RECIPES", "count_scaled_mm", "torchao_convert", "torchao_plan", "torchao_status"]
