"""Checks for the exercises of chapter ``benchmarking``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ..bench import roofline
from . import call, expect_close, fail, register


def _number(label: str, got: Any, case: str) -> float:
    if hasattr(got, "item"):
        got = got.item()
    if not isinstance(got, (int, float)) or isinstance(got, bool):
        fail(label, f"for {case} you returned {got!r}; expected one number.", "return a Python float.")
    return float(got)


def _near(got: float, value: float) -> bool:
    return math.isclose(got, value, rel_tol=1e-6)


def _judge(label: str, got: float, want: float, mistakes: dict[str, float], case: str, hint: str) -> None:
    """Name a recognised mistake if ``got`` matches one (and not the right answer), else compare."""
    for name, value in mistakes.items():
        if _near(got, value) and not _near(value, want):
            fail(label, f"for {case} your answer matches a common mistake: {name}.", hint)
    expect_close(label, got, want, rtol=1e-6, case=case, hint=hint)


@register("benchmarking-intensity")
def check_intensity(matmul_intensity: Any) -> None:
    """``matmul_intensity(m, n, k, bytes_per_element)``: FLOPs per byte of ``(m x k) @ (k x n)``."""
    label = "benchmarking-intensity"
    hint = (
        "count the FLOPs (a multiply and an add per term of each dot product) and the bytes: each of "
        "the three matrices, A (m x k), B (k x n) and C (m x n), crosses the memory bus once."
    )
    for m, n, k, b in [
        (4096, 4096, 4096, 2),
        (16, 8192, 8192, 2),
        (1024, 64, 4096, 4),
        (8192, 8192, 8192, 1),
    ]:
        case = f"m={m}, n={n}, k={k}, {b} bytes per element"
        got = _number(label, call(label, matmul_intensity, m, n, k, b), case)
        precision = {1: "fp8", 2: "bf16", 4: "fp32"}[b]
        flops, nbytes = roofline.matmul_cost(m, n, k, precision, out_precision=precision)
        want = flops / nbytes
        mistakes = {
            "counting one FLOP per multiply-add (half the FLOPs)": want / 2,
            "leaving out the result matrix C, which must be written": flops / ((m * k + k * n) * b),
            "counting bits instead of bytes": want / 8,
            "assuming square matrices": 2 * n**3 / (3 * n * n * b),
            "counting elements instead of bytes": want * b,
        }
        _judge(label, got, want, mistakes, case, hint)


@register("benchmarking-speedup")
def check_speedup(roofline_speedup: Any) -> None:
    """``roofline_speedup(flops, bytes_high, bytes_low, peak_high, peak_low, bandwidth)``: t_high / t_low."""
    label = "benchmarking-speedup"
    hint = (
        "an op takes at least max(FLOPs / peak, bytes / bandwidth): whichever limit it hits first. "
        "Compute that time in each precision (peaks in TFLOP/s = 1e12 FLOP/s, bandwidth in GB/s = 1e9 "
        "bytes/s) and divide the high-precision time by the low-precision one."
    )
    # (flops, bytes fp32, bytes bf16, peak fp32, peak bf16, bandwidth): H100-like and T4-like devices.
    cases = {
        "a large matrix product on an H100": (
            2 * 8192**3,
            3 * 8192**2 * 4,
            3 * 8192**2 * 2,
            67.0,
            989.5,
            3350.0,
        ),
        "an elementwise add of 2^28 elements on an H100": (
            2**28,
            3 * 2**28 * 4,
            3 * 2**28 * 2,
            67.0,
            989.5,
            3350.0,
        ),
        "a thin product (16 rows) on an H100": (
            2 * 16 * 8192 * 8192,
            (16 * 8192 + 8192**2 + 16 * 8192) * 4,
            (16 * 8192 + 8192**2 + 16 * 8192) * 2,
            67.0,
            989.5,
            3350.0,
        ),
        "a mid-sized product on a T4 (fp16)": (
            2 * 2048**3,
            3 * 2048**2 * 4,
            3 * 2048**2 * 2,
            8.1,
            65.0,
            320.0,
        ),
    }
    for case, (f, bh, bl, ph, pl, bw) in cases.items():
        got = _number(label, call(label, roofline_speedup, f, bh, bl, ph, pl, bw), case)
        th, tl = max(f / (ph * 1e12), bh / (bw * 1e9)), max(f / (pl * 1e12), bl / (bw * 1e9))
        want = th / tl
        mistakes = {
            "the ratio of the peaks (assumes every op is compute-bound)": pl / ph,
            "the ratio of the bytes (assumes every op is memory-bound)": bh / bl,
            "adding the compute and memory times instead of taking the larger": (
                f / (ph * 1e12) + bh / (bw * 1e9)
            )
            / (f / (pl * 1e12) + bl / (bw * 1e9)),
            "taking the smaller of the two times instead of the larger": min(f / (ph * 1e12), bh / (bw * 1e9))
            / min(f / (pl * 1e12), bl / (bw * 1e9)),
            "the inverse ratio (low-precision time over high-precision time)": tl / th,
        }
        _judge(label, got, want, mistakes, case, hint)


class _SimulatedGPU:
    """A device with its own queue and a host clock, advanced by the simulation, not by real time.

    ``fn()`` costs the host ``launch`` seconds (plus ``first`` on the very first call: one-off
    initialisation) and queues ``kernel`` seconds of work, which starts when the device is free.
    ``sync()`` advances the host clock to the moment the queue is empty. ``backlog`` seconds of
    earlier work are queued before the learner's function is called.
    """

    def __init__(self, kernel: float, launch: float, first: float, backlog: float) -> None:
        self.kernel, self.launch, self.first = kernel, launch, first
        self.now, self.free_at, self.calls, self.readings = 0.0, backlog, 0, 0

    def clock(self) -> float:
        self.readings += 1
        return self.now

    def sync(self) -> None:
        self.now = max(self.now, self.free_at)

    def fn(self) -> None:
        self.calls += 1
        self.now += self.launch + (self.first if self.calls == 1 else 0.0)
        self.free_at = max(self.now, self.free_at) + self.kernel


@register("benchmarking-timing")
def check_timing(time_per_call: Callable[..., Any]) -> None:
    """``time_per_call(fn, sync, clock)``: seconds per call of an asynchronous ``fn``, measured right."""
    label = "benchmarking-timing"
    scenarios = {
        "a 2 ms kernel": (2e-3, 1e-5, 0.0, 0.0),
        "a 2 ms kernel whose first call takes 0.3 s (initialisation)": (2e-3, 1e-5, 0.3, 0.0),
        "a 2 ms kernel, with 50 ms of earlier work still queued": (2e-3, 1e-5, 0.0, 0.05),
        "a 50 µs kernel with 10 µs launches": (5e-5, 1e-5, 0.0, 0.0),
    }
    too_long = {
        0.0: "you counted more than one call's work: if warm-up calls (or earlier code) left work queued, "
        "call sync() before starting the clock; and report the time per call, not the total.",
        0.3: "the first call pays one-off costs; call fn a few times before you start measuring.",
    }
    for case, (kernel, launch, first, backlog) in scenarios.items():
        gpu = _SimulatedGPU(kernel, launch, first, backlog)
        got = _number(label, call(label, time_per_call, gpu.fn, gpu.sync, gpu.clock), case)
        if gpu.calls == 0:
            fail(
                label, f"for {case} your function never called fn.", "call fn() between readings of clock()."
            )
        if gpu.readings < 2:
            fail(
                label,
                f"for {case} your function read clock() {gpu.readings} times.",
                "time with the clock() you are given (it is the simulated device's), before and after the calls.",
            )
        what = f"for {case} you measured {got * 1e3:.4g} ms per call; the kernel takes {kernel * 1e3:.4g} ms."
        # Right: the kernel time, plus at most one launch (when each call is synchronised on its own).
        if got < kernel * 0.95:
            fail(
                label,
                what,
                "fn() only queues the work and returns; call sync() before reading the clock at "
                "the end, or you time the launch, not the work.",
            )
        if got > (kernel + launch) * 1.05:
            hint = (
                too_long[first]
                if not backlog
                else (
                    "work queued before your measurement is still running when you start the clock; call sync() "
                    "before starting it."
                )
            )
            fail(label, what, hint)


@register("benchmarking-mfu")
def check_mfu(mfu: Any) -> None:
    """``mfu(n_params, tokens_per_step, step_seconds, peak_tflops)``: model FLOPs utilisation, a fraction."""
    label = "benchmarking-mfu"
    hint = (
        "a transformer's training step does about 6 FLOPs per parameter per token (2 forward, 4 "
        "backward); divide by the step time to get FLOP/s, then by the peak (TFLOP/s are 1e12 FLOP/s). "
        "Return a fraction: 0.4, not 40."
    )
    for n, t, s, peak in [
        (124e6, 8 * 1024, 0.05, 989.5),
        (7e9, 4 * 4096, 1.2, 989.5),
        (350e6, 512, 0.9, 65.0),
    ]:
        case = f"{n:.3g} parameters, {t} tokens per step, {s} s per step, peak {peak} TFLOP/s"
        got = _number(label, call(label, mfu, n, t, s, peak), case)
        want = 6 * n * t / s / (peak * 1e12)
        mistakes = {
            "counting only the forward pass (2 FLOPs per parameter per token)": want / 3,
            "a percentage instead of a fraction": want * 100,
            "leaving the peak in TFLOP/s while the FLOPs are plain FLOPs": want * 1e12,
            "multiplying by the step time instead of dividing": 6 * n * t * s / (peak * 1e12),
        }
        _judge(label, got, want, mistakes, case, hint)
