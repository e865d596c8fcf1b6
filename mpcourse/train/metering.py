"""What :func:`mpcourse.train.train` measures around each step: peak memory, dtypes, the per-step row.

Memory is measured the way each device allows. On a GPU the caching allocator keeps a peak
(``torch.cuda.max_memory_allocated``), which counts every tensor on the GPU, so what was there before
the run (other than the model) is measured first and left out. Elsewhere PyTorch keeps no peak
statistics, so the first two steps are metered exactly instead: weights, gradients and optimizer
state from their storages, and the tensors autograd saves for backward (with the low-precision
weight copies autocast makes) from hooks around the forward pass. Two steps, because optimizers
such as Adam create their state during the first.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from .. import memory
from ..formats import dtype_name
from .step import StepResult

#: Steps whose memory is metered exactly where there is no allocator peak (see the module's docstring).
METERED_STEPS = 2


class MemoryMeter:
    """The peak memory of one run: :attr:`peak` after each step, explained by :attr:`note`."""

    def __init__(self, net: nn.Module, dev: torch.device) -> None:
        self.net, self.on_cuda, self.dev = net, dev.type == "cuda", dev
        self.peak = 0
        self.outside_bytes = 0
        if self.on_cuda:
            here = torch.device("cuda", dev.index if dev.index is not None else torch.cuda.current_device())
            held = memory.storage_bytes(t for t in (*net.parameters(), *net.buffers()) if t.device == here)
            self.outside_bytes = torch.cuda.memory_allocated(dev) - held
            torch.cuda.reset_peak_memory_stats(dev)
            self.note = (
                "peak_memory_bytes: torch.cuda.max_memory_allocated (everything the caching allocator handed out, "
                "temporaries included), less what was on the GPU before the run other than the model: the dataset, "
                "and tensors that other code holds there"
            )
        else:
            self.note = (
                "peak_memory_bytes: exact storage of weights, gradients, optimizer state and tensors saved for "
                f"backward (PyTorch keeps no peak statistics for {dev.type} memory; temporaries are not counted)"
            )
        self._saved: memory.SavedTensorMeter | None = None

    def forward_context(self, step: int) -> AbstractContextManager[Any]:
        """What to wrap step ``step``'s forward pass in: the saved-tensor meter on a metered step."""
        self._saved = (
            memory.SavedTensorMeter(self.net) if not self.on_cuda and step <= METERED_STEPS else None
        )
        return self._saved if self._saved is not None else contextlib.nullcontext()

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Update :attr:`peak` once the optimizer has stepped (gradients and optimizer state both exist)."""
        if self._saved is not None:
            state = memory.state_bytes(self.net, optimizer)
            saved = self._saved.bytes
            self.peak = max(
                self.peak, sum(state.values()) + saved["activations"] + saved["low-precision weight copies"]
            )
            self._saved = None

    def read_peak(self) -> int:
        """The peak so far; on a GPU, read from the allocator (call after the step's results are on the host)."""
        if self.on_cuda:
            self.peak = torch.cuda.max_memory_allocated(self.dev) - self.outside_bytes
        return self.peak


def dtypes_of(tensors: Iterable[torch.Tensor | None]) -> str:
    """The distinct dtypes of ``tensors`` (``None`` entries skipped), e.g. ``"bfloat16/float32"``."""
    names = sorted({dtype_name(t.dtype) for t in tensors if t is not None})
    return "/".join(names) or "none"


def step_dtypes(
    params: list[nn.Parameter], result: StepResult, optimizer: torch.optim.Optimizer
) -> dict[str, str]:
    """Which dtype each part of a step kept, read right after the step (gradients still in place)."""
    return {
        "parameters": dtypes_of(params),
        "gradients": dtypes_of(p.grad for p in params),
        "logits": dtype_name(result.logits.dtype),
        "loss": dtype_name(result.loss.dtype),
        "optimizer state": dtypes_of(memory.optimizer_tensors(optimizer)),
    }


def step_row(
    step: int,
    loss: float,
    accuracy: float,
    batch_size: int,
    items_per_sample: int,
    elapsed: float,
    peak: int,
    result: StepResult,
    skipped: int,
) -> dict[str, float]:
    """One row of :attr:`mpcourse.train.History.frame` (evaluation columns NaN until an evaluation fills them)."""
    return {
        "step": step,
        "loss": loss,
        "accuracy": accuracy,
        "samples_per_s": batch_size / elapsed,
        "tokens_per_s": batch_size * items_per_sample / elapsed if items_per_sample > 1 else math.nan,
        "peak_memory_bytes": peak,
        "loss_scale": result.scale,
        "skipped_steps": skipped,
        "eval_loss": math.nan,
        "eval_accuracy": math.nan,
    }
