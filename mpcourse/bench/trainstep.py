"""Training-step throughput, memory and MFU per precision recipe, on top of :mod:`mpcourse.train`.

Nothing here trains by itself: every step runs in :func:`mpcourse.train.train`, the course's one
training loop, under its recipes (``fp32``, ``tf32``, ``fp16``, ``bf16``, ``pure_bf16``, the fp8
recipes of :mod:`mpcourse.fp8`, which :func:`default_recipes` imports so that they are registered,
and any recipe a later chapter registers). This module adds what a benchmark needs on top:

- the model FLOPs of one step, counted by ``FlopCounterMode`` on the same model and batch shape,
  and checked against the ``6 N T`` rule (:mod:`mpcourse.bench.flops`);
- MFU: those FLOPs at the measured step rate, over the datasheet's dense peak of the precision the
  recipe's matrix products run in (fp32, TF32, fp16 or bf16);
- a ``torch.profiler`` table of one step's kernels and their dtypes (:mod:`mpcourse.bench.profiling`);
- for an fp8 recipe, how many linear layers actually compute in fp8 at the benchmarked size (a
  block size that does not divide a layer's features keeps it in bf16, and the first and last
  layers stay in higher precision by design), so that a row is not read as more fp8 than it is;
- recipes that cannot run on this device at all (torchao's, off sm_89+ GPUs or without torchao)
  are listed as ``skipped`` with the reason in ``note``, not run.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch

from .. import device as devices
from .. import memory, models
from .. import train as engine
from ..data import TextData
from . import datasheets, flops, profiling

__all__ = ["EXCLUDED", "default_recipes", "fp8_layers", "model_flops", "recipe_table", "unavailable"]

#: Recipes benchmarked by default: every registered recipe except the one kept to show a failure.
EXCLUDED = ("pure_fp16",)


def default_recipes() -> list[str]:
    """The registered recipes worth benchmarking (``pure_fp16`` diverges by design), fp8 ones included
    (:data:`mpcourse.train.RECIPES` loads them on first use: emulated anywhere, torchao's for sm_89+)."""
    return [name for name in engine.RECIPES if name not in EXCLUDED]


def unavailable(name: str, caps: devices.Capabilities) -> str | None:
    """Why recipe ``name`` cannot run on this device at all (so it is listed, not run), or None.

    Today that is torchao's fp8 training (``torchao_*``), which needs fp8 tensor cores and torchao
    installed; every other recipe runs, emulated where the hardware lacks the precision.
    """
    if name.startswith("torchao_"):
        from ..fp8 import torchao_status

        ok, why = torchao_status(caps)
        return None if ok else why
    return None


def fp8_layers(name: str, factory: Callable[[], torch.nn.Module]) -> tuple[str, str] | None:
    """For an fp8 recipe (of :mod:`mpcourse.fp8`, or torchao's): ("converted/linear layers", why others
    are not); None for any other recipe."""
    from .. import fp8

    if name in fp8.CONFIGS:
        table, divisor = fp8.plan(factory(), name), f"the block size {fp8.get_config(name).block_size}"
    elif name.startswith("torchao_"):
        table, divisor = fp8.torchao_plan(factory()), "16"
    else:
        return None
    converted = int(table["fp8"].sum())
    kept = table.loc[~table["fp8"], "reason"]
    indivisible = int(kept.str.contains("not divisible").sum())
    why = f"fp8 GEMMs in {converted} of {len(table)} linear layers"
    if len(kept):
        parts = ["first and last kept in higher precision"] if kept.str.contains("first|last").any() else []
        if indivisible:
            parts.append(f"{indivisible} with features not divisible by {divisor}")
        why += f" ({'; '.join(parts) or 'others filtered'})"
    if converted == 0:
        why += ": at this model size the recipe runs as bf16"
    return f"{converted}/{len(table)}", why


def model_flops(
    model: torch.nn.Module,
    data: TextData,
    batch_size: int,
    *,
    recompute: bool = False,
    countable_attention: bool = False,
) -> dict[str, float]:
    """FLOPs of one training step (forward and backward) of ``model`` on a batch of ``data``.

    Returns ``counted`` (``FlopCounterMode``), ``six_nt`` (6 x matrix parameters x tokens) and the
    tokens per step. The count is independent of the precision: the same products run in any dtype.

    ``recompute=True`` runs each of the model's ``blocks`` under activation checkpointing
    (``torch.utils.checkpoint``, non-reentrant), so the count includes the forward pass that the
    backward pass repeats: the hardware FLOPs of such a step, against its unchanged model FLOPs.
    ``countable_attention=True`` runs attention through PyTorch's reference ("math") kernel, whose
    batched products ``FlopCounterMode`` counts; the fused CPU kernel it otherwise uses has no FLOP
    formula in ``FlopCounterMode`` and counts as zero.
    """
    dev = next(model.parameters()).device
    x, y = data.to(dev).sample(batch_size, torch.Generator().manual_seed(0))
    blocks = getattr(model, "blocks", None)
    if recompute and not isinstance(blocks, torch.nn.Sequential):
        raise ValueError(
            "recompute=True needs a model whose transformer blocks are an nn.Sequential `blocks`"
        )
    model.zero_grad(set_to_none=True)
    attention = contextlib.nullcontext()
    if countable_attention:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        attention = sdpa_kernel(SDPBackend.MATH)
    try:
        if recompute:
            model.blocks = _Checkpointed(blocks)
        with attention:
            counted = flops.count_flops(lambda: data.loss(model(x), y).backward())
    finally:
        if recompute:
            model.blocks = blocks
        model.zero_grad(set_to_none=True)
    tokens = batch_size * data.items_per_sample
    return {
        "counted": counted,
        "six_nt": flops.transformer_flops(memory.matmul_parameter_count(model), tokens),
        "tokens": tokens,
    }


class _Checkpointed(torch.nn.Module):
    """Blocks run one by one under activation checkpointing: their activations are recomputed in backward."""

    def __init__(self, blocks: torch.nn.Sequential) -> None:
        super().__init__()
        self.inner = blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        for block in self.inner:
            x = checkpoint(block, x, use_reentrant=False)
        return x


def recipe_table(
    data: TextData,
    recipes: Sequence[str] | None = None,
    *,
    width: int,
    depth: int,
    steps: int,
    batch_size: int,
    caps: devices.Capabilities | None = None,
    profile_top: int | None = 10,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train the same transformer under each recipe; return (one row per recipe, kernel tables).

    The rows hold the status (native / emulated / unavailable on this device), samples and tokens
    per second (median after warm-up, from the run's history), step time, peak memory (see the
    history's ``memory_note``), final loss, FLOPs per step (counted and 6NT), achieved model
    TFLOP/s, and MFU against the datasheet's dense peak (NaN where the device has no datasheet, and
    for a recipe that ran emulated: no peak describes those units).
    The kernel tables are one ``torch.profiler`` step per recipe, stacked with a ``recipe`` column.
    """
    caps = caps or devices.capabilities()
    if caps.preset:
        raise ValueError(f"preset {caps.preset!r} describes another machine; a benchmark measures this one")
    dev = caps.kind if caps.kind in ("cpu", "cuda") else "cpu"
    names = list(recipes) if recipes is not None else default_recipes()
    from .. import fp8  # noqa: F401 - so that fp8 recipe names resolve when passed explicitly

    for name in names:
        engine.get_recipe(name)  # unknown names fail here, listing the registered ones
    sheet = datasheets.for_device(caps)

    def factory() -> torch.nn.Module:
        return models.for_data(data, width=width, depth=depth)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        counter_model = factory().to(dev)
    count = model_flops(counter_model, data, batch_size)
    del counter_model
    rows: list[dict[str, Any]] = []
    kernels: list[pd.DataFrame] = []
    for name in names:
        recipe = engine.get_recipe(name)
        row: dict[str, Any] = {"recipe": name, "precision": recipe.precision}
        why_not = unavailable(name, caps)
        if why_not is not None:
            rows.append(row | {"status": "skipped", "note": why_not})
            continue
        with torch.random.fork_rng(devices=[]):  # building a model to inspect must not shift the runs' seeds
            layers = fp8_layers(name, factory)
        if layers is not None:
            row["fp8_layers"] = layers[0]
        try:
            run = engine.train(
                factory,
                data,
                name,
                steps=steps,
                batch_size=batch_size,
                device=dev,
                eval_every=steps,
                eval_items=8,
                progress=progress,
                verbose=False,
                label=name,
            )
        except Exception as exc:  # noqa: BLE001 - a benchmark reports a recipe that cannot run here, and goes on
            rows.append(row | {"status": "failed", "note": _describe(exc)})
            continue
        summary = run.summary()
        samples_per_s = float(summary["samples_per_s"])
        step_s = batch_size / samples_per_s
        # MFU against the peak of the units the recipe used: none is defined for an emulated run.
        peak = sheet.peak_tflops(recipe.precision) if sheet and run.status == "native" else None
        row |= {
            "status": run.status,
            "samples_per_s": samples_per_s,
            "tokens_per_s": samples_per_s * data.items_per_sample,
            "step_ms": step_s * 1e3,
            "peak_memory_mb": float(summary["peak_memory_bytes"]) / 2**20,
            "final_loss": float(summary["final_loss"]),
            "flops_per_step": count["counted"],
            "six_nt_per_step": count["six_nt"],
            "model_tflops": count["counted"] / step_s / 1e12,
            "peak_tflops": peak if peak is not None else math.nan,
            "mfu": flops.mfu(count["counted"], step_s, peak) if peak is not None else math.nan,
            "memory_note": run.memory_note,
            "note": "; ".join([*([layers[1]] if layers else []), *run.notes[1:]]),
        }
        try:
            kernels.append(_kernels(run.model, data, name, batch_size, dev, profile_top).assign(recipe=name))
        except Exception as exc:  # noqa: BLE001 - e.g. a profiler without GPU tracing (CUPTI) support
            row["note"] = "; ".join(filter(None, [row["note"], f"no kernel table: {_describe(exc)}"]))
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame, (pd.concat(kernels, ignore_index=True) if kernels else pd.DataFrame())


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"


def _kernels(
    model: torch.nn.Module, data: TextData, recipe: str, batch_size: int, dev: str, top: int
) -> pd.DataFrame:
    """One further training step of the trained model, under the profiler (after one warm-up step).

    ``train`` is called with the model itself (trained in place) and ``steps=1``; its final
    evaluation is cut to a single window so that the table is essentially the step.
    """

    def one_step() -> None:
        engine.train(
            model,
            data,
            recipe,
            steps=1,
            batch_size=batch_size,
            device=dev,
            eval_items=1,
            progress=False,
            verbose=False,
        )

    return profiling.kernel_table(one_step, device=dev, warmup=1, steps=1, top=top)
