"""One step under ``torch.profiler``, summarised as a table: which kernels ran, for how long, in which dtypes.

The profiler records every PyTorch operator called on the CPU and, on a CUDA device, every GPU
kernel with its start and end on the GPU's clock, linked to the operator that launched it. That
answers the questions a timing cannot: where the time goes, and whether the matrix products
really ran in the precision you asked for (an fp32 ``aten::mm`` inside an autocast region is the
sign of an op that autocast does not cover; on a GPU, cuBLAS kernel names such as
``..._bf16bf16_...`` or ``...f16...`` say which units computed).

:func:`kernel_table` profiles a few calls of a function (after warming it up) and returns one row
per (kernel or operator, input dtypes): calls per step, total time per step, and share of the step.
On a CPU it lists operators by their *self* time (time not spent in operators they call); on a
CUDA device, GPU kernels by their time on the GPU.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator

import pandas as pd
import torch
from torch.profiler import ProfilerActivity, profile

from ..formats import dtype_name

__all__ = ["kernel_table", "short_dtype"]

#: What the profiler's C++ side (Kineto) writes to the process's stderr on every start and stop,
#: and on a machine without a GPU driver: notes, not problems, and noise in a chapter's output.
_PROFILER_NOTES = re.compile(
    r"USDT:.*profiler_(start|stop)|gpuGetDeviceCount failed|SyncActivityProfilerHandler"
)


@contextlib.contextmanager
def _quiet_profiler_notes() -> Iterator[None]:
    """Hold back what C++ code writes to file descriptor 2 meanwhile, and pass on every line that
    is not one of the profiler's routine notes (so a real error still shows)."""
    fd = 2  # where C++ writes, whatever sys.stderr is (a notebook's stream, pytest's capture)
    with tempfile.TemporaryFile(mode="w+b") as held:
        sys.stderr.flush()
        saved = os.dup(fd)
        os.dup2(held.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            held.seek(0)
            kept = [
                ln
                for ln in held.read().decode(errors="replace").splitlines()
                if not _PROFILER_NOTES.search(ln)
            ]
            if kept:
                print("\n".join(kept), file=sys.stderr)


#: The profiler's C++ names of the dtypes it records, and the dtypes they are.
_CPP_DTYPES: dict[str, torch.dtype] = {
    "float": torch.float32,
    "c10::Half": torch.float16,
    "c10::BFloat16": torch.bfloat16,
    "double": torch.float64,
    "c10::Float8_e4m3fn": torch.float8_e4m3fn,
    "c10::Float8_e5m2": torch.float8_e5m2,
    "long int": torch.int64,
    "int": torch.int32,
    "bool": torch.bool,
}

#: Entries of ``input_dtypes`` that describe a non-tensor argument, not a dtype.
_NOT_DTYPES = frozenset({"Scalar", "ScalarList", "TensorList", "GenericList", "None"})


def short_dtype(name: str) -> str:
    """The profiler's C++ dtype name (``c10::BFloat16``) in the course's short spelling (``bf16``)."""
    return dtype_name(_CPP_DTYPES[name], short=True) if name in _CPP_DTYPES else name


def _shorten(name: str, width: int = 90) -> str:
    """GPU kernel names are long template instantiations; keep the informative start."""
    return name if len(name) <= width else name[: width - 3] + "..."


def _raw_dtypes(prof: profile) -> dict[int, list[str]]:
    """Input dtypes of every recorded operator, by event id, from the profiler's raw results.

    Newer torch releases put them on each ``FunctionEvent`` (``input_dtypes``); older ones
    (e.g. 2.11, Colab's in late 2026) only on the raw Kineto events, whose correlation id is the
    ``FunctionEvent``'s id.
    """
    results = getattr(getattr(prof, "profiler", None), "kineto_results", None)
    if results is None:
        return {}
    return {event.correlation_id(): list(event.dtypes()) for event in results.events()}


def _dtypes(event: object, raw: dict[int, list[str]]) -> str:
    recorded = getattr(event, "input_dtypes", None) or raw.get(getattr(event, "id", None), [])
    names = [short_dtype(d) for d in recorded if d and d not in _NOT_DTYPES]
    return ", ".join(dict.fromkeys(names)) or "-"


def kernel_table(
    fn: Callable[[], object], *, device: str = "cpu", steps: int = 1, warmup: int = 1, top: int | None = 15
) -> pd.DataFrame:
    """Profile ``steps`` calls of ``fn`` (after ``warmup`` unprofiled ones); one row per kernel/op and dtypes.

    Columns: ``name`` (GPU kernel on CUDA, operator on CPU), ``op`` (the operator that launched it),
    ``dtypes`` (its input dtypes), ``calls`` and ``ms`` (per step), ``share`` (of the total time in
    the table). ``top`` keeps the longest rows (None: all).
    """
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"kernel_table profiles 'cpu' or 'cuda' devices, got {device!r}")
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if kind == "cuda" else [])
    with _quiet_profiler_notes(), profile(activities=activities, record_shapes=True) as prof:
        for _ in range(steps):
            fn()
        if kind == "cuda":
            torch.cuda.synchronize()
    totals: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0, 0.0])
    raw = _raw_dtypes(prof)
    for event in prof.events():
        if kind == "cuda":
            for kernel in getattr(event, "kernels", []):  # GPU kernels this operator launched
                entry = totals[(kernel.name, event.name, _dtypes(event, raw))]
                entry[0] += 1
                entry[1] += kernel.duration  # microseconds
        elif event.self_cpu_time_total > 0 and event.name.startswith("aten::"):
            entry = totals[(event.name, event.name, _dtypes(event, raw))]
            entry[0] += 1
            entry[1] += event.self_cpu_time_total
    if not totals:
        raise RuntimeError("the profiler recorded no kernels: did fn run any PyTorch operations?")
    frame = pd.DataFrame(
        [
            {"name": _shorten(n), "op": op, "dtypes": dt, "calls": c / steps, "ms": us / steps / 1e3}
            for (n, op, dt), (c, us) in totals.items()
        ]
    )
    frame["share"] = frame["ms"] / frame["ms"].sum()
    frame = frame.sort_values("ms", ascending=False, ignore_index=True)
    return frame.head(top) if top else frame
