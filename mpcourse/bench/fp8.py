"""Is fp8 faster than bf16 here? ``mpcourse bench fp8`` measures it on a GPU with fp8 tensor cores.

Two measurements, both against bf16 on the same GPU:

1. **GEMMs** over a sweep of shapes (M, K, N), from small to large: the bf16 product ``a @ b.T``;
   ``torch._scaled_mm`` on fp8 operands that are already quantised (tensorwise and rowwise
   scales); and the same tensorwise GEMM *including* the quantisation of both operands (amax,
   scale, cast), which a training step pays every time. Small GEMMs do not fill the GPU, so the
   fp8 units' doubled throughput buys little while the quantisation's extra memory passes and
   kernel launches cost the same: fp8 loses there, and wins only once the GEMM is large.
2. **A training step** (forward and backward of a linear layer) with torchao's
   ``convert_to_float8_training`` (tensorwise and rowwise) against bf16, all under
   ``torch.compile`` as torchao recommends, for a small and a large shape; skipped when torchao
   is missing, and cut short if the time budget runs out (the record says what was skipped).

Timings are medians of ``torch.utils.benchmark.Timer.blocked_autorange`` (warm-up and CUDA
synchronisation included). ``--save`` stores the results in the course's one result format
(:mod:`mpcourse.bench.results`, topic ``fp8``: device, versions, torchao's version, date and the
command), so the same loader and validator read them as every other benchmark's;
:func:`mpcourse.reference.records` (``"fp8"``) reads the stored ones back from ``mpcourse/reference/fp8/``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .. import device as device_mod
from . import results

#: (M, K, N) of the GEMM sweep: from launch-bound to compute-bound; torchao's README quotes the
#: third (0.80x on an H100) and the last (1.39x) as its small and large examples.
GEMM_SHAPES: tuple[tuple[int, int, int], ...] = (
    (256, 256, 256), (512, 512, 512), (1024, 2048, 1024), (2048, 2048, 2048),
    (4096, 4096, 4096), (8192, 8192, 8192), (4096, 8192, 16384),
)
QUICK_GEMM_SHAPES: tuple[tuple[int, int, int], ...] = ((256, 256, 256), (1024, 2048, 1024), (4096, 4096, 4096))
#: (M, K, N) of the torchao training-step measurement: large first (if the budget runs out, the
#: small shape, whose answer is known to be "slower", is the one skipped).
STEP_SHAPES: tuple[tuple[int, int, int], ...] = ((4096, 8192, 8192), (1024, 2048, 1024))
#: The topic of their records in :mod:`mpcourse.bench.results`.
TOPIC = "fp8"


def _timer(fn: Callable[[], Any], min_run_time: float) -> float:
    """Median seconds of ``fn()`` (``blocked_autorange`` warms up and synchronises CUDA)."""
    import torch.utils.benchmark as benchmark

    return benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median


def _quantize_tensorwise(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """fp8 data and decode scale of ``x`` (current tensorwise scaling, saturating): the work of one cast."""
    fmax = torch.finfo(dtype).max
    scale = (x.abs().amax().float() / fmax).clamp_min(1e-12)
    return (x.float() / scale).clamp(-fmax, fmax).to(dtype), scale


def _quantize_rowwise(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    fmax = torch.finfo(dtype).max
    scale = (x.abs().amax(dim=1, keepdim=True).float() / fmax).clamp_min(1e-12)
    return (x.float() / scale).clamp(-fmax, fmax).to(dtype), scale


def measure_gemms(shapes: tuple[tuple[int, int, int], ...] = GEMM_SHAPES, *, min_run_time: float = 0.2,
                  device: str = "cuda", progress: bool = True) -> list[dict[str, Any]]:
    """Time bf16 vs fp8 GEMMs for each (M, K, N); one record per shape (seconds, TFLOP/s, speed-ups).

    Needs a device where ``torch._scaled_mm`` runs (sm_89+ on CUDA; it also runs, emulated and
    slowly, on a CPU, which makes the timings meaningless but lets the code be tested anywhere).
    """
    e4m3 = torch.float8_e4m3fn
    records = []
    for m, k, n in shapes:
        gen = torch.Generator(device=device).manual_seed(m + k + n)
        a = torch.randn(m, k, device=device, dtype=torch.bfloat16, generator=gen)
        b = torch.randn(n, k, device=device, dtype=torch.bfloat16, generator=gen)
        a8, sa = _quantize_tensorwise(a, e4m3)
        b8, sb = _quantize_tensorwise(b, e4m3)
        a8r, sar = _quantize_rowwise(a, e4m3)
        b8r, sbr = _quantize_rowwise(b, e4m3)
        b8t, b8rt, sbrt = b8.t(), b8r.t(), sbr.t()
        cases: dict[str, Callable[[], Any]] = {
            "bf16": lambda: a @ b.t(),
            "fp8_tensorwise": lambda: torch._scaled_mm(a8, b8t, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16),
            "fp8_rowwise": lambda: torch._scaled_mm(a8r, b8rt, scale_a=sar, scale_b=sbrt, out_dtype=torch.bfloat16,
                                                    use_fast_accum=True),
            "fp8_tensorwise_with_casts": lambda: _cast_and_mm(a, b, e4m3),
        }
        record: dict[str, Any] = {"m": m, "k": k, "n": n, "flops": 2.0 * m * k * n}
        for name, fn in cases.items():
            try:
                seconds = _timer(fn, min_run_time)
                record[f"{name}_s"] = seconds
                record[f"{name}_tflops"] = record["flops"] / seconds / 1e12
            except Exception as err:  # noqa: BLE001 - record what failed, keep measuring the rest
                record[f"{name}_error"] = f"{type(err).__name__}: {str(err)[:200]}"
        for name in ("fp8_tensorwise", "fp8_rowwise", "fp8_tensorwise_with_casts"):
            if f"{name}_s" in record and "bf16_s" in record:
                record[f"{name}_speedup"] = record["bf16_s"] / record[f"{name}_s"]
        records.append(record)
        if progress:
            print(_gemm_line(record), flush=True)
    return records


def _cast_and_mm(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    a8, sa = _quantize_tensorwise(a, dtype)
    b8, sb = _quantize_tensorwise(b, dtype)
    return torch._scaled_mm(a8, b8.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)


def _gemm_line(r: dict[str, Any]) -> str:
    def speed(name: str) -> str:
        return f"{r[name + '_speedup']:5.2f}x" if name + "_speedup" in r else "  n/a "

    bf16 = f"{r['bf16_tflops']:7.1f}" if "bf16_tflops" in r else "    n/a"
    return (f"  M,K,N = {r['m']:>5},{r['k']:>5},{r['n']:>5}  bf16 {bf16} TFLOP/s  fp8 tensorwise {speed('fp8_tensorwise')}"
            f"  rowwise {speed('fp8_rowwise')}  tensorwise incl. casts {speed('fp8_tensorwise_with_casts')}")


def measure_training_steps(shapes: tuple[tuple[int, int, int], ...] = STEP_SHAPES, *, budget_s: float = 50.0,
                           min_run_time: float = 0.3, compile: bool = True, progress: bool = True) -> list[dict[str, Any]]:
    """Forward+backward time of one linear layer, bf16 vs torchao float8 (tensorwise, rowwise).

    Each case is compiled first (``torch.compile``, which torchao's fp8 needs to be fast), which
    takes most of the time; cases that would start after ``budget_s`` are recorded as skipped.
    """
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    start = time.perf_counter()
    records = []
    for m, k, n in shapes:
        record: dict[str, Any] = {"m": m, "k": k, "n": n, "flops": 6.0 * m * k * n}
        for name in ("bf16", "tensorwise", "rowwise"):
            if time.perf_counter() - start > budget_s:
                record[f"{name}_error"] = f"skipped: the {budget_s:.0f} s budget was spent"
                continue
            try:
                torch.manual_seed(0)
                layer = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16)
                model = torch.nn.Sequential(layer)
                if name != "bf16":
                    convert_to_float8_training(model, config=Float8LinearConfig.from_recipe_name(name))
                step_model = torch.compile(model) if compile else model
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, requires_grad=True)

                def step() -> None:
                    step_model(x).sum().backward()

                compile_start = time.perf_counter()
                step()
                torch.cuda.synchronize()
                record[f"{name}_first_call_s"] = time.perf_counter() - compile_start
                seconds = _timer(step, min_run_time)
                record[f"{name}_s"] = seconds
            except Exception as err:  # noqa: BLE001 - record what failed, keep measuring the rest
                record[f"{name}_error"] = f"{type(err).__name__}: {str(err)[:200]}"
        for name in ("tensorwise", "rowwise"):
            if f"{name}_s" in record and "bf16_s" in record:
                record[f"{name}_speedup"] = record["bf16_s"] / record[f"{name}_s"]
        records.append(record)
        if progress:
            parts = [f"{nm} {record[nm + '_speedup']:.2f}x" for nm in ("tensorwise", "rowwise") if nm + "_speedup" in record]
            print(f"  train step M,K,N = {m},{k},{n}: " + (", ".join(parts) or "no speed-up measured"), flush=True)
    return records


def torchao_version() -> str | None:
    """The installed torchao's version (None without torchao): part of an fp8 result's environment."""
    try:
        import torchao
    except ImportError:
        return None
    return str(getattr(torchao, "__version__", "unknown"))


def make_record(gemms: list[dict[str, Any]], steps: list[dict[str, Any]], *, note: str, seconds: float,
                command: str) -> dict[str, Any]:
    """An :mod:`mpcourse.bench.results` record (topic ``fp8``) of one run of the benchmark.

    Tables: ``gemms`` (one row per shape), ``training_steps`` (one row per shape, empty when not
    measured) and ``run`` (why torchao's steps were or were not measured, and the run's duration).
    """
    tables = {"gemms": gemms, "training_steps": steps, "run": [{"torchao_note": note, "seconds": round(seconds, 1)}]}
    return results.make_record(TOPIC, tables, command=command, environment={"torchao": torchao_version()})


def benchmark(save: Path | None = None, quick: bool = False) -> int:
    """``mpcourse bench fp8``: fp8 vs bf16 GEMMs (and torchao training steps) on this GPU.

    Runs only where fp8 is native (NVIDIA sm_89+); elsewhere it says so and returns 1. About a
    minute and a half on an H100-class GPU (``--quick``: a few shapes, no torchao).
    """
    caps = device_mod.capabilities()
    if caps.kind != "cuda" or not caps.fp8_native:
        print(f"mpcourse bench fp8 measures fp8 tensor cores; this is {caps.describe()}, which has none. Nothing measured.")
        return 1
    started = time.perf_counter()
    print(f"fp8 vs bf16 on {caps.describe()} (torch {torch.__version__})")
    gemms = measure_gemms(QUICK_GEMM_SHAPES if quick else GEMM_SHAPES, min_run_time=0.05 if quick else 0.2)
    from ..fp8.linear import torchao_status

    ok, why = torchao_status(caps)
    steps: list[dict[str, Any]] = []
    note = why
    if quick:
        note = "training steps not measured (--quick)"
    elif ok:
        steps = measure_training_steps()
    print(note)
    command = "mpcourse bench fp8" + (" --quick" if quick else "") + (f" --save {save}" if save else "")
    record = make_record(gemms, steps, note=note, seconds=time.perf_counter() - started, command=command)
    if save is not None:
        print(f"saved to {results.save(record, save)}")
    return 0


def speedup_table(gemms: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Any:
    """A GEMM sweep as a DataFrame (one row per shape): the rows :func:`measure_gemms` returns, or a
    stored record (its ``gemms`` table)."""
    import pandas as pd

    if isinstance(gemms, Mapping):
        if "tables" not in gemms:
            raise ValueError("speedup_table takes the rows of measure_gemms or a stored fp8 record; got a mapping "
                             f"with keys {sorted(gemms)}")
        gemms = gemms["tables"]["gemms"]
    rows = []
    for r in gemms:
        rows.append({
            "M, K, N": f"{r['m']}, {r['k']}, {r['n']}",
            "GFLOP": r["flops"] / 1e9,
            "bf16 TFLOP/s": r.get("bf16_tflops", math.nan),
            "fp8 tensorwise TFLOP/s": r.get("fp8_tensorwise_tflops", math.nan),
            "speed-up tensorwise": r.get("fp8_tensorwise_speedup", math.nan),
            "speed-up rowwise": r.get("fp8_rowwise_speedup", math.nan),
            "speed-up incl. casts": r.get("fp8_tensorwise_with_casts_speedup", math.nan),
        })
    return pd.DataFrame(rows)
