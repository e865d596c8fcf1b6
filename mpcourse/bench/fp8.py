"""Is fp8 faster than bf16 here? ``mpcourse bench fp8`` measures it on a GPU with fp8 tensor cores.

Two measurements, both against bf16 on the same GPU:

1. **GEMMs** over a sweep of shapes (M, K, N), from small to large: the bf16 product ``a @ b.T``;
   ``torch._scaled_mm`` on fp8 operands that are already quantised (tensorwise and rowwise
   scales); and the same tensorwise GEMM *including* the quantisation of both operands (amax,
   scale, cast), which a training step pays every time. The operands are quantised by the
   course's own :func:`mpcourse.fp8.quantize`, the code the fp8 chapter teaches, run eagerly: a
   few elementwise kernels per operand, where a compiled training step (torchao under
   ``torch.compile``) fuses them, so the "including the casts" column overstates what a compiled
   step pays for its casts. Small GEMMs do not fill the GPU, so the fp8 units' doubled
   throughput buys little while the quantisation's extra memory passes and kernel launches cost
   the same: fp8 loses there, and wins only once the GEMM is large.
2. **A training step** (forward and backward of a linear layer) with torchao's
   ``convert_to_float8_training`` (tensorwise and rowwise) against bf16, all under
   ``torch.compile`` as torchao recommends, for a small and a large shape; skipped when torchao
   is missing, and cut short if the time budget runs out (the record says what was skipped).

Timings are medians from :func:`mpcourse.bench.timing.benchmark`, the course's one timing entry
point (``torch.utils.benchmark.Timer`` blocks: warm-up and CUDA synchronisation included).
``--save`` stores the results in the course's one result format (:mod:`mpcourse.bench.results`,
topic ``fp8``: device, versions, torchao's version, date and the command), so the same loader and
validator read them as every other benchmark's; :func:`mpcourse.reference.records` (``"fp8"``)
reads the stored ones back from ``mpcourse/reference/fp8/``, and :func:`check_record` says what
each must show.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .. import device as device_mod
from ..fp8 import quantize
from . import datasheets, results

#: (M, K, N) of the GEMM sweep: from launch-bound to compute-bound; torchao's README quotes the
#: third (0.80x on an H100) and the last (1.39x) as its small and large examples.
GEMM_SHAPES: tuple[tuple[int, int, int], ...] = (
    (256, 256, 256),
    (512, 512, 512),
    (1024, 2048, 1024),
    (2048, 2048, 2048),
    (4096, 4096, 4096),
    (8192, 8192, 8192),
    (4096, 8192, 16384),
)
QUICK_GEMM_SHAPES: tuple[tuple[int, int, int], ...] = (
    (256, 256, 256),
    (1024, 2048, 1024),
    (4096, 4096, 4096),
)
#: (M, K, N) of the torchao training-step measurement: large first (if the budget runs out, the
#: small shape, whose answer is known to be "slower", is the one skipped).
STEP_SHAPES: tuple[tuple[int, int, int], ...] = ((4096, 8192, 8192), (1024, 2048, 1024))
#: The topic of their records in :mod:`mpcourse.bench.results`.
TOPIC = "fp8"


def measure_gemms(
    shapes: tuple[tuple[int, int, int], ...] = GEMM_SHAPES,
    *,
    min_run_time: float = 0.2,
    device: str = "cuda",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Time bf16 vs fp8 GEMMs for each (M, K, N); one record per shape (seconds, TFLOP/s, speed-ups).

    Needs a device where ``torch._scaled_mm`` runs (sm_89+ on CUDA; it also runs, emulated and
    slowly, on a CPU, which makes the timings meaningless but lets the code be tested anywhere).
    """
    # Imported here: torch.utils.benchmark, which timing imports, warns on a machine without CUDA.
    from . import timing

    records = []
    for m, k, n in shapes:
        gen = torch.Generator(device=device).manual_seed(m + k + n)
        a = torch.randn(m, k, device=device, dtype=torch.bfloat16, generator=gen)
        b = torch.randn(n, k, device=device, dtype=torch.bfloat16, generator=gen)
        qa, qb = quantize(a, "tensorwise"), quantize(b, "tensorwise")  # E4M3, one fp32 scale each
        ra, rb = quantize(a, "rowwise"), quantize(b, "rowwise")  # E4M3, scales (M, 1) and (N, 1)
        b8t, b8rt, sbrt = qb.data.t(), rb.data.t(), rb.scale.t()
        cases: dict[str, Callable[[], Any]] = {
            "bf16": lambda: a @ b.t(),
            "fp8_tensorwise": lambda: torch._scaled_mm(
                qa.data, b8t, scale_a=qa.scale, scale_b=qb.scale, out_dtype=torch.bfloat16
            ),
            "fp8_rowwise": lambda: torch._scaled_mm(
                ra.data, b8rt, scale_a=ra.scale, scale_b=sbrt, out_dtype=torch.bfloat16, use_fast_accum=True
            ),
            "fp8_tensorwise_with_casts": lambda: _cast_and_mm(a, b),
        }
        record: dict[str, Any] = {"m": m, "k": k, "n": n, "flops": 2.0 * m * k * n}
        for name, fn in cases.items():
            try:
                seconds = timing.benchmark(fn, min_run_time=min_run_time).median
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


def _cast_and_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` in fp8 from bf16 operands: quantise both (tensorwise E4M3), then the scaled GEMM."""
    qa, qb = quantize(a, "tensorwise"), quantize(b, "tensorwise")
    return torch._scaled_mm(
        qa.data, qb.data.t(), scale_a=qa.scale, scale_b=qb.scale, out_dtype=torch.bfloat16
    )


def _gemm_line(r: dict[str, Any]) -> str:
    def speed(name: str) -> str:
        return f"{r[name + '_speedup']:5.2f}x" if name + "_speedup" in r else "  n/a "

    bf16 = f"{r['bf16_tflops']:7.1f}" if "bf16_tflops" in r else "    n/a"
    return (
        f"  M,K,N = {r['m']:>5},{r['k']:>5},{r['n']:>5}  bf16 {bf16} TFLOP/s  fp8 tensorwise {speed('fp8_tensorwise')}"
        f"  rowwise {speed('fp8_rowwise')}  tensorwise incl. casts {speed('fp8_tensorwise_with_casts')}"
    )


def measure_training_steps(
    shapes: tuple[tuple[int, int, int], ...] = STEP_SHAPES,
    *,
    budget_s: float = 50.0,
    min_run_time: float = 0.3,
    compile: bool = True,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Forward+backward time of one linear layer, bf16 vs torchao float8 (tensorwise, rowwise).

    Each case is compiled first (``torch.compile``, which torchao's fp8 needs to be fast), which
    takes most of the time; cases that would start after ``budget_s`` are recorded as skipped.
    """
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    from . import timing

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
                seconds = timing.benchmark(step, min_run_time=min_run_time).median
                record[f"{name}_s"] = seconds
            except Exception as err:  # noqa: BLE001 - record what failed, keep measuring the rest
                record[f"{name}_error"] = f"{type(err).__name__}: {str(err)[:200]}"
        for name in ("tensorwise", "rowwise"):
            if f"{name}_s" in record and "bf16_s" in record:
                record[f"{name}_speedup"] = record["bf16_s"] / record[f"{name}_s"]
        records.append(record)
        if progress:
            parts = [
                f"{nm} {record[nm + '_speedup']:.2f}x"
                for nm in ("tensorwise", "rowwise")
                if nm + "_speedup" in record
            ]
            print(
                f"  train step M,K,N = {m},{k},{n}: " + (", ".join(parts) or "no speed-up measured"),
                flush=True,
            )
    return records


def torchao_version() -> str | None:
    """The installed torchao's version (None without torchao): part of an fp8 result's environment."""
    try:
        import torchao
    except ImportError:
        return None
    return str(getattr(torchao, "__version__", "unknown"))


def make_record(
    gemms: list[dict[str, Any]], steps: list[dict[str, Any]], *, note: str, seconds: float, command: str
) -> dict[str, Any]:
    """An :mod:`mpcourse.bench.results` record (topic ``fp8``) of one run of the benchmark.

    Tables: ``gemms`` (one row per shape), ``training_steps`` (one row per shape, empty when not
    measured) and ``run`` (why torchao's steps were or were not measured, and the run's duration).
    """
    tables = {
        "gemms": gemms,
        "training_steps": steps,
        "run": [{"torchao_note": note, "seconds": round(seconds, 1)}],
    }
    return results.make_record(TOPIC, tables, command=command, environment={"torchao": torchao_version()})


def benchmark(save: Path | None = None, quick: bool = False, force: bool = False) -> int:
    """``mpcourse bench fp8``: fp8 vs bf16 GEMMs (and torchao training steps) on this GPU.

    Runs only where fp8 is native (NVIDIA sm_89+); elsewhere it says so and returns 1. About a
    minute and a half on an H100-class GPU (``--quick``: a few shapes, no torchao).
    """
    caps = device_mod.capabilities()
    if caps.kind != "cuda" or not caps.fp8_native:
        print(
            f"mpcourse bench fp8 measures fp8 tensor cores; this is {caps.describe()}, which has none. Nothing measured."
        )
        return 1
    started = time.perf_counter()
    print(f"fp8 vs bf16 on {caps.describe()} (torch {torch.__version__})")
    gemms = measure_gemms(QUICK_GEMM_SHAPES if quick else GEMM_SHAPES, min_run_time=0.05 if quick else 0.2)
    from ..fp8.torchao import torchao_status

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
        print(f"saved to {results.save(record, save, overwrite=force)}")
    return 0


#: The cases :func:`measure_gemms` times for every shape; the first is the reference of every speed-up.
GEMM_CASES: tuple[str, ...] = ("bf16", "fp8_tensorwise", "fp8_rowwise", "fp8_tensorwise_with_casts")


def check_record(record: Mapping[str, Any]) -> list[str]:
    """What a stored fp8 record must show; returns the statements verified (as :mod:`mpcourse.bench.checks` does).

    - it was measured by ``mpcourse bench fp8`` on a CUDA GPU, one with fp8 units if the GPU is in
      :data:`mpcourse.gpus.GPUS`;
    - every GEMM row has its shape and FLOPs (2MKN), a bf16 time (the reference of every speed-up),
      and for each other case a time or the error that stopped it; each speed-up is the bf16 time
      over the case's time;
    - no product beats its datasheet's dense peak (bf16 and fp8), where the GPU has a datasheet;
    - the largest GEMM gains more from fp8 (tensorwise) than the smallest, which is how the fp8
      chapter reads the plot: a small GEMM is bound by launches and memory, not by the fp8 units.

    Raises:
        AssertionError: naming the record and what it contradicts.
    """
    where = results.label(dict(record))
    env = record["environment"]
    assert record["topic"] == TOPIC, f"{where}: topic {record['topic']!r}, not {TOPIC!r}"
    assert env.get("kind") == "cuda", (
        f"{where}: measured on {env.get('kind')!r}; fp8 records come from CUDA GPUs"
    )
    assert str(record["command"]).startswith("mpcourse bench fp8"), f"{where}: made by {record['command']!r}"
    sheet = datasheets.lookup(str(env.get("device_name", "")))
    assert sheet is None or "fp8" in sheet.native, f"{where}: the {sheet.name} has no fp8 units"
    gemms = record["tables"].get("gemms") or []
    assert gemms, f"{where}: no GEMM rows"
    for r in gemms:
        shape = f"M, K, N = {r['m']}, {r['k']}, {r['n']}"
        assert r["flops"] == 2 * r["m"] * r["k"] * r["n"], f"{where}, {shape}: {r['flops']} FLOPs is not 2MKN"
        assert "bf16_s" in r, f"{where}, {shape}: no bf16 time, the reference of every speed-up"
        for case in GEMM_CASES[1:]:
            assert (f"{case}_s" in r) != (f"{case}_error" in r), (
                f"{where}, {shape}: {case} needs a time or an error"
            )
            if f"{case}_s" in r:
                assert math.isclose(r[f"{case}_speedup"], r["bf16_s"] / r[f"{case}_s"], rel_tol=1e-9), (
                    f"{where}, {shape}: the {case} speed-up is not the bf16 time over its time"
                )
        for case, precision in (("bf16", "bf16"), ("fp8_tensorwise", "fp8"), ("fp8_rowwise", "fp8")):
            peak = sheet.peak_tflops(precision) if sheet else None
            rate = r["flops"] / r[f"{case}_s"] / 1e12 if f"{case}_s" in r else None
            assert peak is None or rate is None or rate <= 1.05 * peak, (
                f"{where}, {shape}: {case} at {rate:.0f} TFLOP/s, above the datasheet's dense {precision} peak of {peak:g}"
            )
    checked = [f"{len(gemms)} GEMM shapes, each timed in bf16 and, per fp8 case, timed or with its error"]
    if sheet is not None:
        checked.append(f"no GEMM beats the {sheet.name}'s dense bf16 or fp8 peak")
    timed = sorted((r for r in gemms if "fp8_tensorwise_speedup" in r), key=lambda r: r["flops"])
    if len(timed) >= 2:
        small, large = timed[0]["fp8_tensorwise_speedup"], timed[-1]["fp8_tensorwise_speedup"]
        assert large > small, (
            f"{where}: fp8 gained {large:.2f}x on the largest GEMM but {small:.2f}x on the smallest; "
            "a larger GEMM keeps the fp8 units busier"
        )
        checked.append(
            f"fp8 (tensorwise) gains more on the largest GEMM ({large:.2f}x) than on the smallest ({small:.2f}x)"
        )
    return checked


def speedup_table(gemms: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Any:
    """A GEMM sweep as a DataFrame (one row per shape): the rows :func:`measure_gemms` returns, or a
    stored record (its ``gemms`` table)."""
    import pandas as pd

    if isinstance(gemms, Mapping):
        if "tables" not in gemms:
            raise ValueError(
                "speedup_table takes the rows of measure_gemms or a stored fp8 record; got a mapping "
                f"with keys {sorted(gemms)}"
            )
        gemms = gemms["tables"]["gemms"]
    rows = []
    for r in gemms:
        rows.append(
            {
                "M, K, N": f"{r['m']}, {r['k']}, {r['n']}",
                "GFLOP": r["flops"] / 1e9,
                "bf16 TFLOP/s": r.get("bf16_tflops", math.nan),
                "fp8 tensorwise TFLOP/s": r.get("fp8_tensorwise_tflops", math.nan),
                "speed-up tensorwise": r.get("fp8_tensorwise_speedup", math.nan),
                "speed-up rowwise": r.get("fp8_rowwise_speedup", math.nan),
                "speed-up incl. casts": r.get("fp8_tensorwise_with_casts_speedup", math.nan),
            }
        )
    return pd.DataFrame(rows)
