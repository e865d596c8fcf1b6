"""Measurements on this machine: matrix products by precision and size, elementwise ops, bandwidth.

:func:`matmul_sweep` times ``C = A @ B`` in fp32, TF32, fp16, bf16 and fp8 (``torch._scaled_mm``)
over a list of shapes, and reports for each: seconds per call (median, fastest sample and spread,
by ``torch.utils.benchmark``), the same measured independently (CUDA events on a GPU, a
synchronised ``perf_counter`` loop elsewhere) as a check, achieved TFLOP/s, the percentage of a
reference peak (the datasheet's dense peak for a known GPU, otherwise the best rate measured on
this device), and the relative error against a float64 product of the same inputs.

Precisions the device cannot run are listed as skipped with the reason (TF32 off NVIDIA Ampere+,
fp8 off sm_89+ GPUs); emulated ones run and are marked so. A product predicted (from the previous
size) to take longer than ``max_call_seconds`` per call is skipped rather than run: emulated bf16
on a CPU without bf16 units can be a hundred times slower than fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch

from .. import device as devices
from ..device import PRECISIONS, Capabilities
from ..train import matmul_precision
from . import datasheets, timing

__all__ = [
    "DTYPES",
    "availability",
    "bandwidth",
    "elementwise_sweep",
    "matmul_fn",
    "matmul_sweep",
    "reference_peaks",
    "timing_pitfalls",
]

#: The storage dtype of each precision's operands (TF32 is fp32 storage with a tensor-core mode).
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "tf32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp8": torch.float8_e4m3fn,
}

#: Rows of the float64 reference product used to measure the error (enough for a stable estimate).
ERROR_ROWS = 64


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; accepted: {', '.join(PRECISIONS)}")


def _torch_device(caps: Capabilities) -> str:
    if caps.preset:
        raise ValueError(
            f"capabilities of preset {caps.preset!r} describe another machine; measurements need this "
            "machine's (mpcourse.device.capabilities() without a preset)"
        )
    return caps.kind


def availability(precision: str, caps: Capabilities) -> tuple[str, str]:
    """Whether a matrix product in ``precision`` runs here: (``native``|``emulated``|``skipped``, reason)."""
    _check_precision(precision)
    support = devices.precision_support(caps)[precision]
    if support.status == "unavailable":
        return "skipped", support.reason
    if precision == "fp8":
        if caps.kind == "cuda" and not caps.fp8_native:
            return "skipped", f"torch._scaled_mm needs fp8 tensor cores (sm_89 or later); {support.reason}"
        if caps.kind == "mps":
            return "skipped", "torch._scaled_mm has no MPS implementation"
        if caps.kind == "cpu":
            return (
                "emulated",
                "torch._scaled_mm on the CPU: fp8 operands, products computed in higher precision",
            )
    return support.status, support.reason


def _to_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensorwise scaling into E4M3: the largest magnitude maps to 448; returns (fp8 tensor, fp32 scale)."""
    scale = x.abs().amax().float() / torch.finfo(torch.float8_e4m3fn).max
    return (x / scale).to(torch.float8_e4m3fn), scale


def matmul_fn(precision: str, a: torch.Tensor, b: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A zero-argument function computing ``a @ b`` in ``precision``; operands are converted once, here.

    fp8 uses ``torch._scaled_mm`` with one fp32 scale per tensor (E4M3 x E4M3, bf16 output). It
    needs every dimension divisible by 16 and the second operand column-major, which is arranged
    here; quantising the operands is not part of the timed call. For TF32 vs fp32, wrap calls in
    :func:`mpcourse.train.matmul_precision`.
    """
    _check_precision(precision)
    if a.dtype != torch.float32 or b.dtype != torch.float32:
        raise TypeError(f"pass fp32 operands (they are converted here); got {a.dtype} and {b.dtype}")
    if precision in ("fp32", "tf32"):
        return lambda: torch.mm(a, b)
    if precision in ("fp16", "bf16"):
        x, y = a.to(DTYPES[precision]), b.to(DTYPES[precision])
        return lambda: torch.mm(x, y)
    bad = [d for d in (*a.shape, b.shape[1]) if d % 16]
    if bad:
        raise ValueError(
            f"torch._scaled_mm needs every dimension divisible by 16; got {tuple(a.shape)} @ {tuple(b.shape)}"
        )
    a8, scale_a = _to_fp8(a)
    b8, scale_b = _to_fp8(b)
    b8 = b8.t().contiguous().t()  # same values, column-major, as _scaled_mm requires of its second operand
    return lambda: torch._scaled_mm(a8, b8, scale_a=scale_a, scale_b=scale_b, out_dtype=torch.bfloat16)


def _shape(size: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(size, int):
        dims = (size, size, size)
    else:
        dims = tuple(int(d) for d in size)
    if len(dims) != 3 or min(dims) < 1:
        raise ValueError(
            f"a size is an int n (for n x n x n) or a triple (m, n, k) of positive ints; got {size!r}"
        )
    return dims  # type: ignore[return-value]


def reference_peaks(
    caps: Capabilities, measured_best: float | None = None
) -> dict[str, tuple[float | None, str]]:
    """For each precision, the peak TFLOP/s that "% of peak" refers to, and where it comes from."""
    sheet = datasheets.for_device(caps)
    out: dict[str, tuple[float | None, str]] = {}
    for p in PRECISIONS:
        peak = sheet.peak_tflops(p) if sheet else None
        if peak is not None:
            out[p] = (peak, f"datasheet: {sheet.name} (dense)")  # type: ignore[union-attr]
        else:
            why = (
                "not in the datasheet table"
                if sheet is None
                else f"no {p} figure in the {sheet.name} datasheet"
            )
            out[p] = (measured_best, f"best measured on this device ({why})")
    return out


def matmul_sweep(
    sizes: Sequence[int | Sequence[int]],
    precisions: Sequence[str] = PRECISIONS,
    *,
    caps: Capabilities | None = None,
    min_run_time: float = 0.1,
    max_call_seconds: float = 0.25,
    check: bool = True,
    num_threads: int | None = None,
    clock: Callable[[], float] | None = None,
    max_blocks: int = 50,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Time ``A @ B`` for every size and precision on this machine; one row per (precision, size).

    Args:
        sizes: ``n`` for square products, or ``(m, n, k)`` for ``(m x k) @ (k x n)``.
        precisions: any of ``fp32``, ``tf32``, ``fp16``, ``bf16``, ``fp8``.
        caps: this machine's capabilities (detected when omitted; presets are refused).
        min_run_time: seconds ``torch.utils.benchmark`` spends on each measurement.
        max_call_seconds: skip a product predicted to take longer than this per call.
        check: also time each product independently (CUDA events / perf_counter, alternating
            block by block with ``torch.utils.benchmark``), as ``check_s``; ``check_ratio`` is
            ``seconds / check_s`` (the two medians), ``check_paired_ratio`` the median of the
            block-by-block ratios, which a busy machine disturbs far less
            (:func:`mpcourse.bench.timing.paired_ratio`).
        num_threads: CPU threads (default: all PyTorch would use).
        clock: with ``check``, on a CPU only: the clock both measurements read (default: the wall
            clock); see :func:`mpcourse.bench.timing.paired`.
        max_blocks: at most this many timed blocks per measurement (more blocks of fewer calls:
            more samples for the medians and the paired ratio).
    """
    for p in precisions:
        _check_precision(p)
    shapes = [_shape(s) for s in sizes]
    caps = caps or devices.capabilities()
    dev = _torch_device(caps)
    rows: list[dict[str, Any]] = []
    last: dict[str, tuple[float, float]] = {}  # precision -> (flops, seconds) of its previous size
    cases = [(shape, p) for shape in shapes for p in precisions]
    bar = _progress(len(cases), "matmul sweep", progress)
    gen = torch.Generator(device=dev if dev == "cuda" else "cpu").manual_seed(seed)
    operands: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for (m, n, k), p in cases:
        bar.update(1)
        flops = 2 * m * n * k
        row: dict[str, Any] = {"precision": p, "m": m, "n": n, "k": k, "flops": flops}
        status, reason = availability(p, caps)
        row["status"], row["note"] = status, reason if status != "native" else ""
        if status != "skipped" and p in last:
            prev_flops, prev_seconds = last[p]
            predicted = prev_seconds * flops / prev_flops
            if predicted > max_call_seconds:
                row["status"], row["note"] = (
                    "skipped",
                    (
                        f"predicted {predicted:.2g} s per call from the previous size (over max_call_seconds="
                        f"{max_call_seconds}); {reason}"
                    ),
                )
        if row["status"] == "skipped":
            rows.append(row)
            continue
        if (m, n, k) not in operands:
            operands.clear()
            a = torch.randn(m, k, generator=gen, device=gen.device).to(dev)
            b = torch.randn(k, n, generator=gen, device=gen.device).to(dev)
            exact_dev = dev if dev != "mps" else "cpu"  # MPS has no float64
            exact = a[:ERROR_ROWS].to(exact_dev, torch.float64) @ b.to(exact_dev, torch.float64)
            operands[(m, n, k)] = (a, b, exact)
        a, b, exact = operands[(m, n, k)]
        try:
            fn = matmul_fn(p, a, b)
            with matmul_precision(p == "tf32", dev):
                out = fn()  # also the first call, which the measurements below do not count
                got = out[:ERROR_ROWS].to(exact.device, torch.float64)
                row["rel_error"] = (torch.linalg.norm(got - exact) / torch.linalg.norm(exact)).item()
                if check:
                    t, other = timing.paired(
                        fn,
                        device=dev,
                        min_run_time=min_run_time,
                        num_threads=num_threads,
                        clock=clock,
                        max_blocks=max_blocks,
                    )
                    row.update(
                        check_s=other.median,
                        check_best_s=min(other.samples),
                        check_spread=other.spread,
                        check_paired_ratio=timing.paired_ratio(t, other),
                    )
                else:
                    t = timing.benchmark(
                        fn, min_run_time=min_run_time, num_threads=num_threads, max_blocks=max_blocks
                    )
        except (RuntimeError, NotImplementedError, ValueError) as exc:
            row["status"], row["note"] = "skipped", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            rows.append(row)
            continue
        row.update(
            seconds=t.median,
            best_s=min(t.samples),
            spread=t.spread,
            samples=len(t.samples),
            tflops=flops / t.median / 1e12,
        )
        last[p] = (flops, t.median)
        rows.append(row)
    bar.close()
    frame = pd.DataFrame(rows)
    for column in (
        "seconds",
        "best_s",
        "spread",
        "samples",
        "check_s",
        "check_best_s",
        "check_spread",
        "check_paired_ratio",
        "tflops",
        "rel_error",
    ):
        if column not in frame:
            frame[column] = float("nan")
    best = frame["tflops"].max() if frame["tflops"].notna().any() else None
    peaks = reference_peaks(caps, best)
    frame["peak_tflops"] = [peaks[p][0] for p in frame["precision"]]
    frame["peak_source"] = [peaks[p][1] for p in frame["precision"]]
    frame["pct_of_peak"] = 100 * frame["tflops"] / frame["peak_tflops"].astype(float)
    frame["check_ratio"] = frame["seconds"] / frame["check_s"]
    columns = [
        "precision",
        "m",
        "n",
        "k",
        "status",
        "seconds",
        "best_s",
        "spread",
        "samples",
        "check_s",
        "check_best_s",
        "check_spread",
        "check_ratio",
        "check_paired_ratio",
        "tflops",
        "peak_tflops",
        "pct_of_peak",
        "rel_error",
        "flops",
        "peak_source",
        "note",
    ]
    return frame[columns]


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def bandwidth(*, caps: Capabilities | None = None, nbytes: int = 2**28, min_run_time: float = 0.1) -> float:
    """Measured memory bandwidth in GB/s: a copy of an ``nbytes`` buffer reads and writes ``2 * nbytes``.

    Choose ``nbytes`` well above the last-level cache (a few hundred MB on a GPU, several times the
    L3 on a CPU), or this measures the cache instead.
    """
    caps = caps or devices.capabilities()
    dev = _torch_device(caps)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=dev).fill_(1.0)
    dst = torch.empty_like(src)
    t = timing.benchmark(lambda: dst.copy_(src), min_run_time=min_run_time)
    return 2 * src.numel() * 4 / t.median / 1e9


def elementwise_sweep(
    elements: Sequence[int],
    precisions: Sequence[str] = ("fp32", "fp16", "bf16"),
    *,
    caps: Capabilities | None = None,
    min_run_time: float = 0.1,
) -> pd.DataFrame:
    """Time ``z = x + y`` (one FLOP per element, three tensors of traffic) by dtype and size.

    Reports seconds, the bandwidth it achieved (bytes moved / time) and TFLOP/s: the example of a
    memory-bound op, whose time follows bytes, not FLOPs.
    """
    caps = caps or devices.capabilities()
    dev = _torch_device(caps)
    rows = []
    for p in precisions:
        if p not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"elementwise precisions are 'fp32', 'fp16' and 'bf16'; got {p!r}")
        for count in elements:
            x = torch.rand(count, device=dev).to(DTYPES[p])
            y, z = torch.rand_like(x), torch.empty_like(x)
            t = timing.benchmark(lambda x=x, y=y, z=z: torch.add(x, y, out=z), min_run_time=min_run_time)
            nbytes = 3 * count * x.element_size()
            rows.append(
                {
                    "op": "add",
                    "precision": p,
                    "elements": count,
                    "bytes": nbytes,
                    "flops": count,
                    "seconds": t.median,
                    "spread": t.spread,
                    "gb_per_s": nbytes / t.median / 1e9,
                    "tflops": count / t.median / 1e12,
                }
            )
    return pd.DataFrame(rows)


def timing_pitfalls(
    n: int, precision: str = "fp32", *, caps: Capabilities | None = None, min_run_time: float = 0.1
) -> dict[str, Any]:
    """The same n x n product timed wrongly and rightly, on fresh operands (so the first call is cold).

    Returns seconds per call for: ``naive`` (one call, no warm-up, no synchronisation),
    ``unsynchronised`` (warm, but the clock stops before queued GPU work ends), ``benchmark``
    (``torch.utils.benchmark``) and ``independent`` (CUDA events or a synchronised perf_counter).
    """
    caps = caps or devices.capabilities()
    dev = _torch_device(caps)
    status, reason = availability(precision, caps)
    if status == "skipped":
        raise ValueError(f"{precision} matrix products do not run here: {reason}")
    gen = torch.Generator(device="cpu").manual_seed(n)
    a = torch.randn(n, n, generator=gen).to(dev)
    b = torch.randn(n, n, generator=gen).to(dev)
    timing.synchronize(dev)
    with matmul_precision(precision == "tf32", dev):
        fn = matmul_fn(precision, a, b)
        naive = timing.naive(fn)
        timing.synchronize(dev)
        right = timing.benchmark(fn, min_run_time=min_run_time)
        return {
            "device": caps.name,
            "precision": precision,
            "n": n,
            "naive": naive,
            "unsynchronised": timing.unsynchronised(fn),
            "benchmark": right.median,
            "benchmark_spread": right.spread,
            "independent": timing.independent(fn, device=dev).median,
        }
