"""Checks for the exercises of chapter ``benchmarking``.

No check times anything real: a verdict must not depend on the machine's speed or load. The
timing exercises run the learner's code on *simulated* devices whose clocks advance by a model of
the device (launch costs, a queue, one-off set-up, roofline-limited kernels), never by real time;
the prediction exercises compare with :mod:`mpcourse.bench.roofline` and the datasheet table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..bench import datasheets, roofline
from . import call, expect_close, fail, plural, register


def _number(label: str, got: Any, case: str) -> float:
    if hasattr(got, "item"):
        got = got.item()
    if not isinstance(got, (int, float)) or isinstance(got, bool):
        fail(
            label,
            f"for {case} you returned {got!r}; expected one number.",
            "return a plain Python float (a 0-d tensor or numpy scalar is converted with float(...)).",
        )
    return float(got)


def _near(got: float, value: float, rel: float = 1e-3) -> bool:
    return math.isclose(got, value, rel_tol=rel)


def _judge(
    label: str,
    got: float,
    want: float,
    mistakes: dict[str, float],
    case: str,
    hint: str,
    rel: float = 1e-3,
    exact: dict[str, float] | None = None,
) -> None:
    """Name a recognised mistake if ``got`` matches one (and not the right answer), else compare.

    ``exact`` lists mistakes, checked first, that ``got`` must match to rounding (1e-6), not within ``rel``:
    many close values, such as the MFU of each single step of a log. They are named whenever the comparison
    with ``want`` would fail.
    """
    for name, value in (exact or {}).items():
        if _near(got, value, 1e-6) and abs(value - want) > rel * abs(want):
            fail(label, f"for {case} your answer, {got:.4g}, matches a common mistake: {name}.", hint)
    for name, value in mistakes.items():
        if _near(got, value, rel) and not _near(value, want, rel):
            fail(label, f"for {case} your answer, {got:.4g}, matches a common mistake: {name}.", hint)
    expect_close(label, got, want, rtol=rel, case=case, hint=hint)


# ---- benchmarking-timing ----------------------------------------------------------------------


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


@register(
    "benchmarking-timing",
    hints=(
        "List what the broken loop's clock really measures on a GPU: which work has finished when it is "
        "read at the start, and which at the end?",
        "fn only queues work and returns at once; sync waits for everything queued so far, including work "
        "queued before your function started. Each reading of the clock must come right after the device "
        "is idle.",
        "The first call pays one-off costs: make a few calls before any measurement. Then time complete "
        "calls (one at a time or a block of many, divided by their number) and report a robust summary "
        "such as the median.",
    ),
)
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
        "wait for the device before starting the clock; and report the time per call, not the total.",
        0.3: "the first call pays one-off costs; call fn a few times before you start measuring.",
    }
    for case, (kernel, launch, first, backlog) in scenarios.items():
        gpu = _SimulatedGPU(kernel, launch, first, backlog)
        got = _number(label, call(label, time_per_call, gpu.fn, gpu.sync, gpu.clock), case)
        if gpu.calls == 0:
            fail(
                label,
                f"for {case} your function never called fn.",
                "call fn between two readings of the clock you are given.",
            )
        if gpu.readings < 2:
            fail(
                label,
                f"for {case} your function read clock() {plural(gpu.readings, 'time')}: a duration needs two "
                "readings of the simulated device's clock.",
                "time with the clock you are given (it is the simulated device's), before and after the calls.",
            )
        what = f"for {case} you measured {got * 1e3:.4g} ms per call; the kernel takes {kernel * 1e3:.4g} ms."
        # Right: the kernel time, plus at most one launch (when each call is synchronised on its own).
        if got < kernel * 0.95:
            fail(
                label,
                what,
                "fn only queues the work and returns; wait for the device before reading the clock at the end, "
                "or you time the launch, not the work.",
            )
        if got > (kernel + launch) * 1.05:
            hint = (
                too_long[first]
                if not backlog
                else (
                    "work queued before your measurement is still running when you start the clock; wait for the "
                    "device before starting it."
                )
            )
            fail(label, what, hint)


# ---- benchmarking-fair-speedup -------------------------------------------------------------------

_PRECISIONS = ("fp32", "bf16")


class _SimulatedMatmulGPU:
    """A simulated GPU that runs n x n x n matrix products in fp32 or bf16, on a simulated clock.

    ``run(n, precision)`` costs the host ``launch`` seconds (plus ``setup`` the first time a shape and
    precision meet: choosing a kernel) and queues one product, whose time on the device is the
    roofline's ``max(2 n^3 / peak, 3 n^2 bytes / bandwidth)``. ``sync()`` waits for the queue;
    ``clock()`` reads the host clock. Products above ``max_n`` do not fit in memory.

    With ``synced_readings``, a reading taken while the device is busy gives the moment the queue will
    be empty, as if ``sync()`` had come just before it, without moving the host clock: everything else
    runs as before, so a measurement whose result changes on such a device used a busy reading.
    """

    def __init__(
        self,
        name: str,
        peaks: dict[str, float],
        bandwidth_gb_s: float,
        *,
        launch: float,
        setup: float,
        max_n: int,
        synced_readings: bool = False,
    ) -> None:
        self.name, self.peaks, self.bandwidth = name, peaks, bandwidth_gb_s
        self.launch, self.setup, self.max_n = launch, setup, max_n
        self.synced_readings = synced_readings
        self.now = self.free_at = 0.0
        self.log: list[tuple[int, str]] = []
        self.seen: set[tuple[int, str]] = set()
        self.syncs = self.readings = self.busy_readings = 0

    def kernel_seconds(self, n: int, precision: str) -> float:
        flops, nbytes = roofline.matmul_cost(n, n, n, precision)
        return roofline.roofline_seconds(flops, nbytes, self.peaks[precision], self.bandwidth)

    def per_call(self, n: int, precision: str) -> float:
        """Seconds per warm call, each synchronised on its own: what a careful measurement at ``n`` finds."""
        return self.launch + self.kernel_seconds(n, precision)

    def ratio(self, n: int) -> float:
        return self.per_call(n, "fp32") / self.per_call(n, "bf16")

    def truth(self) -> float:
        """The speed-up of large products: the limit of :meth:`ratio` as n grows, the ratio of the peaks."""
        return self.peaks["bf16"] / self.peaks["fp32"]

    def run(self, n: int, precision: str) -> None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        n = int(n)
        if n > self.max_n:
            raise RuntimeError(
                f"simulated device out of memory: three {n} x {n} matrices do not fit (max_n is {self.max_n})"
            )
        first = (n, precision) not in self.seen
        self.seen.add((n, precision))
        self.log.append((n, precision))
        self.now += self.launch + (self.setup if first else 0.0)
        self.free_at = max(self.now, self.free_at) + self.kernel_seconds(n, precision)

    def sync(self) -> None:
        self.syncs += 1
        self.now = max(self.now, self.free_at)

    def clock(self) -> float:
        self.readings += 1
        if self.free_at > self.now:
            self.busy_readings += 1
            if self.synced_readings:
                return self.free_at
        return self.now


def _matmul_devices(synced_readings: bool = False) -> list[_SimulatedMatmulGPU]:
    """Three simulated GPUs: big tensor cores, modest ones, and bf16 without units (slower than fp32)."""
    common = dict(launch=5e-6, setup=2e-3, max_n=16384, synced_readings=synced_readings)
    return [
        _SimulatedMatmulGPU("device A", {"fp32": 67.0, "bf16": 989.5}, 3350.0, **common),
        _SimulatedMatmulGPU("device B", {"fp32": 30.3, "bf16": 121.0}, 300.0, **common),
        _SimulatedMatmulGPU(
            "device C (bf16 emulated at half fp32's rate)", {"fp32": 19.5, "bf16": 9.75}, 1555.0, **common
        ),
    ]


def simulated_matmul_gpu() -> _SimulatedMatmulGPU:
    """A fresh copy of the first simulated GPU of the fair-speedup check, for the chapter's demonstration."""
    return _matmul_devices()[0]


def _sizes(gpu: _SimulatedMatmulGPU, precision: str) -> list[int]:
    return sorted({n for n, p in gpu.log if p == precision})


def _busy_readings_count(bf16_speedup: Any, device: int, got: float) -> bool:
    """Whether readings taken while device ``device`` was busy enter the answer ``got``: run the learner's
    function again on a copy whose busy readings give what a reading after ``sync()`` would, and compare."""
    gpu = _matmul_devices(synced_readings=True)[device]
    try:
        again = bf16_speedup(gpu.run, gpu.sync, gpu.clock, gpu.max_n)
        again = float(again.item() if hasattr(again, "item") else again)
    except Exception:  # noqa: BLE001 - it behaved differently, so something it read did count
        return True
    return not math.isclose(again, got, rel_tol=1e-9, abs_tol=1e-12)


@register(
    "benchmarking-fair-speedup",
    hints=(
        "Compare like with like: the same products in both precisions, each warmed up and timed to completion, "
        "as in the timing exercise. Then ask how the launch of one call compares with its work at the size "
        "you chose.",
        "A small product measures launches, not arithmetic, so its speed-up is not that of large products. "
        "Watch the ratio as you double n: it changes while the launch still matters, and settles once the "
        "work dwarfs it. max_n is the largest size that fits.",
        "Each new shape and precision pays a one-off set-up on its first call: call it once before timing it. "
        "Report the time of complete calls, per call, for fp32 over bf16.",
    ),
)
def check_fair_speedup(bf16_speedup: Any) -> None:
    """``bf16_speedup(run, sync, clock, max_n)``: how many times faster large bf16 products run than fp32
    ones on a simulated GPU, measured with ``run(n, precision)``, ``sync()`` and ``clock()``."""
    label = "benchmarking-fair-speedup"
    for device, gpu in enumerate(_matmul_devices()):
        case = gpu.name
        got = _number(label, call(label, bf16_speedup, gpu.run, gpu.sync, gpu.clock, gpu.max_n), case)
        if not gpu.log:
            fail(
                label,
                f"for {case} your function never called run.",
                "run products on the device and time them.",
            )
        if gpu.readings < 2:
            fail(
                label,
                f"for {case} your function read clock() {plural(gpu.readings, 'time')}.",
                "time with the clock you are given (the simulated device's), before and after the calls.",
            )
        ran = {p for _, p in gpu.log}
        if ran != set(_PRECISIONS):
            fail(
                label,
                f"for {case} you ran products only in {', '.join(sorted(ran))}; a speed-up compares fp32 with bf16.",
                "time the same products in both precisions.",
            )
        if gpu.syncs == 0:
            fail(
                label,
                f"for {case} you never synchronised: run only queues a product, so your clock saw launches, not "
                f"products, and your answer ({got:.3g}) is a ratio of launch times.",
                "wait for the device before each reading of the clock that ends a measurement.",
            )
        truth = gpu.truth()
        if _near(got, truth, 0.05):
            continue
        if got > 0 and _near(1 / got, truth, 0.05):
            fail(
                label,
                f"for {case} your answer, {got:.3g}, is the inverse of a speed-up: bf16's time over fp32's.",
                "a speed-up of bf16 is fp32's time divided by bf16's.",
            )
        sizes = {p: _sizes(gpu, p) for p in _PRECISIONS}
        common = sorted(set(sizes["fp32"]) & set(sizes["bf16"]))
        if not common:
            fail(
                label,
                f"for {case} you ran fp32 products of n = {sizes['fp32']} and bf16 products of n = {sizes['bf16']}: "
                "no size in both, so your ratio compares different products.",
                "time the same n in both precisions.",
            )
        n = common[-1]
        what = f"for {case} your answer is {got:#.3g}"
        # Readings taken while products were still running only matter if the answer depends on them (a
        # timer may read the clock around every call and still base its result on synchronised readings).
        if gpu.busy_readings and _busy_readings_count(bf16_speedup, device, got):
            fail(
                label,
                f"{what}, and {plural(gpu.busy_readings, 'reading')} of the clock came while the device was still "
                "busy with queued products.",
                "wait for the device right before every reading that ends (or starts) a measurement.",
            )
        problems, hints = [], []
        if not _near(gpu.ratio(n), truth, 0.05):
            launch_share = gpu.launch / gpu.per_call(n, "bf16")
            problems.append(
                f"the largest product you timed in both precisions is n = {n}, where the launch is {launch_share:.0%} "
                "of a bf16 call's time: at that size the ratio still grows with n, and you measured launches as "
                "much as products"
            )
            hints.append("small products measure launches; see how the ratio changes as n grows, up to max_n")
        once = [p for p in _PRECISIONS if sum(1 for m, q in gpu.log if (m, q) == (n, p)) == 1]
        if once:
            problems.append(
                f"you ran {' and '.join(once)} at n = {n} only once, so the call you timed was the first of its "
                f"shape, which pays {gpu.setup * 1e3:g} ms of one-off set-up"
            )
            hints.append("call each shape and precision once before you time it")
        if problems:
            fail(label, f"{what}; " + "; and ".join(problems) + ".", "; ".join(hints) + ".")
        fail(
            label,
            f"{what}, measured at n = {n}, where large products are not that much faster in bf16 on this device.",
            "check that every time covers complete calls only (the device idle at both readings), excludes the "
            "first call of each shape, and is divided by the number of calls timed.",
        )


# ---- benchmarking-speedup -----------------------------------------------------------------------

#: (case, op, datasheet key, precision): the ops whose bf16/fp16/tf32 speed-up over fp32 the learner predicts.
_SPEEDUP_CASES: tuple[tuple[str, dict[str, Any], str, str], ...] = (
    ("an 8192-cube product", {"op": "matmul", "m": 8192, "n": 8192, "k": 8192}, "h100-sxm", "bf16"),
    ("an add of 2^28 elements", {"op": "add", "elements": 2**28}, "h100-sxm", "bf16"),
    (
        "a layer norm of 16384 rows of 4096",
        {"op": "layer_norm", "rows": 16384, "cols": 4096},
        "a100-sxm-80gb",
        "bf16",
    ),
    ("an add of 2^28 elements", {"op": "add", "elements": 2**28}, "h100-sxm", "tf32"),
    ("a 4096-cube product", {"op": "matmul", "m": 4096, "n": 4096, "k": 4096}, "a100-sxm-80gb", "tf32"),
    (
        "128 rows times an 8192 x 8192 matrix",
        {"op": "matmul", "m": 128, "n": 8192, "k": 8192},
        "h100-sxm",
        "bf16",
    ),
    (
        "128 rows times an 8192 x 8192 matrix",
        {"op": "matmul", "m": 128, "n": 8192, "k": 8192},
        "h100-sxm",
        "tf32",
    ),
    ("16 rows times an 8192 x 8192 matrix", {"op": "matmul", "m": 16, "n": 8192, "k": 8192}, "l4", "bf16"),
    ("a 2048-cube product", {"op": "matmul", "m": 2048, "n": 2048, "k": 2048}, "t4", "fp16"),
    ("64 rows times a 4096 x 4096 matrix", {"op": "matmul", "m": 64, "n": 4096, "k": 4096}, "t4", "fp16"),
)

#: FLOPs per element the reference counts for a layer norm (any count of a few dozen gives the same answer).
_LAYER_NORM_FLOPS = 8


def _op_cost(
    op: dict[str, Any], precision: str, *, bytes_per: dict[str, float] | None = None, write_c: bool = True
) -> tuple[float, float]:
    """(FLOPs, bytes) of ``op`` in ``precision``; ``bytes_per`` and ``write_c`` model mistakes."""
    b = (bytes_per or roofline.BYTES)[precision]
    if op["op"] == "matmul":
        m, n, k = op["m"], op["n"], op["k"]
        return 2 * m * n * k, (m * k + k * n + (m * n if write_c else 0)) * b
    if op["op"] == "add":
        return op["elements"], 3 * op["elements"] * b
    elements = op["rows"] * op["cols"]
    return _LAYER_NORM_FLOPS * elements, 2 * elements * b


def _time(
    flops: float, nbytes: float, peak: float, bandwidth: float, combine: Callable[..., float] = max
) -> float:
    return combine(flops / (peak * 1e12), nbytes / (bandwidth * 1e9))


def _speedup_mistakes(op: dict[str, Any], gpu: Any, precision: str, want: float) -> dict[str, float]:
    dense, bw = gpu.dense_tflops, gpu.bandwidth_gb_s
    hi, lo = _op_cost(op, "fp32"), _op_cost(op, precision)

    def ratio(
        h: tuple[float, float] = hi,
        low: tuple[float, float] = lo,
        peaks: Any = dense,
        bandwidth: float = bw,
        combine: Callable[..., float] = max,
    ) -> float:
        return _time(*h, peaks["fp32"], bandwidth, combine) / _time(
            *low, peaks[precision], bandwidth, combine
        )

    mistakes = {
        "the ratio of the peaks, which assumes the op is compute-bound in both precisions": dense[precision]
        / dense["fp32"],
        "the ratio of the bytes, which assumes the op is memory-bound in both precisions": hi[1] / lo[1],
        "the peaks as the datasheet prints them: its tensor-core figures for this GPU assume 2:4 sparsity, "
        "and a dense op gets half": ratio(peaks=gpu.printed_tflops),
        "adding the compute time and the memory time instead of taking the larger": ratio(
            combine=lambda a, b: a + b
        ),
        "taking the smaller of the compute and memory times instead of the larger": ratio(combine=min),
        "the inverse ratio (the low-precision time over the fp32 time)": 1 / want,
        "bandwidth in GiB/s (2^30 bytes) where the datasheet's GB/s are 10^9 bytes": ratio(
            bandwidth=bw * 2**30 / 1e9
        ),
    }
    if precision == "tf32":
        mistakes[
            "TF32 stored in 2 bytes: TF32 is a way of multiplying fp32 numbers, which stay 4 bytes in memory"
        ] = ratio(low=_op_cost(op, precision, bytes_per=dict(roofline.BYTES, tf32=2)))
    if op["op"] == "matmul":
        mistakes["leaving out the result matrix, which must be written"] = ratio(
            h=_op_cost(op, "fp32", write_c=False), low=_op_cost(op, precision, write_c=False)
        )
        halved = ((hi[0] / 2, hi[1]), (lo[0] / 2, lo[1]))
        mistakes["one FLOP per multiply-add instead of two"] = ratio(*halved)
    return mistakes


@register(
    "benchmarking-speedup",
    hints=(
        "For each op, count its FLOPs and the bytes it moves in fp32 and in the lower precision, then decide "
        "which roof binds in each: the same op can be compute-bound in one precision and memory-bound in the other.",
        "Use the datasheet's dense peaks and its bandwidth in GB/s (10^9 bytes per second). A lower precision "
        "changes two things, the peak and the bytes per element; TF32 changes only one of them.",
        "Compute the roofline's lower bound on the time in each precision, the larger of the compute time and the "
        "memory time, and divide the fp32 time by the other.",
    ),
)
def check_speedup(predicted_speedup: Any) -> None:
    """``predicted_speedup(op, gpu, precision)``: the roofline's speed-up of ``op`` in ``precision`` over fp32
    on datasheet GPU ``gpu``."""
    label = "benchmarking-speedup"
    for name, op, key, precision in _SPEEDUP_CASES:
        gpu = datasheets.DATASHEETS[key]
        case = f"{name} ({op}) in {precision} on the {gpu.name}:"
        got = _number(label, call(label, predicted_speedup, dict(op), gpu, precision), case)
        hi, lo = _op_cost(op, "fp32"), _op_cost(op, precision)
        dense, bw = gpu.dense_tflops, gpu.bandwidth_gb_s
        want = _time(*hi, dense["fp32"], bw) / _time(*lo, dense[precision], bw)
        _judge(
            label,
            got,
            want,
            _speedup_mistakes(op, gpu, precision, want),
            case,
            "work out the time in each precision separately, from that precision's peak and bytes, and see "
            "which roof binds in each.",
        )


# ---- benchmarking-min-rows ------------------------------------------------------------------------

#: (datasheet key, precision, k, n) of the products checked: weights of transformer layers, on several GPUs.
_MIN_ROWS_CASES: tuple[tuple[str, str, int, int], ...] = (
    ("h100-sxm", "bf16", 8192, 8192),
    ("a100-sxm-80gb", "tf32", 4096, 4096),
    ("h100-sxm", "fp16", 8192, 28672),
    ("l4", "fp16", 4096, 11008),
    ("a100-sxm-80gb", "bf16", 12288, 4096),
    ("h100-sxm", "bf16", 256, 256),
    ("h200-sxm", "fp32", 1024, 1024),
)


def _min_rows(
    gpu: Any,
    precision: str,
    k: int,
    n: int,
    *,
    bytes_per: float | None = None,
    peak: float | None = None,
    bandwidth: float | None = None,
    flops_per_fma: int = 2,
    output: bool = True,
    inputs: bool = True,
    rounding: Callable[[float], int] = math.ceil,
) -> int | None:
    """The smallest m making an m x k by k x n product compute-bound, with switches for the usual mistakes."""
    b = roofline.BYTES[precision] if bytes_per is None else bytes_per
    balance = (
        (gpu.dense_tflops[precision] if peak is None else peak)
        * 1e12
        / ((gpu.bandwidth_gb_s if bandwidth is None else bandwidth) * 1e9)
    )
    # flops_per_fma * m k n >= balance * b * (m k [inputs] + k n + m n [output]), solved for m
    per_row = flops_per_fma * k * n - balance * b * ((k if inputs else 0) + (n if output else 0))
    if per_row <= 0:
        return None
    return max(1, int(rounding(balance * b * k * n / per_row)))


@register(
    "benchmarking-min-rows",
    hints=(
        "Write the product's FLOPs and bytes as functions of m, then its arithmetic intensity, and compare "
        "it with the balance point of the datasheet GPU in that precision.",
        "Intensity above the balance point is an inequality in m; solve it (or search for the smallest m "
        "that satisfies it). Where does the intensity go as m grows without bound?",
        "Count every tensor read or written once, in the precision's bytes (TF32 is stored as fp32), peaks "
        "in TFLOP/s and bandwidth in GB/s (10^9 bytes per second); the answer is a whole number of rows.",
    ),
)
def check_min_rows(min_rows: Any) -> None:
    """``min_rows(gpu, precision, k, n)``: the fewest rows m for which an m x k by k x n product is
    compute-bound on ``gpu`` in ``precision``, or None when no m is."""
    label = "benchmarking-min-rows"
    hint = "write the intensity as a function of m and compare it with the balance point."
    for key, precision, k, n in _MIN_ROWS_CASES:
        gpu = datasheets.DATASHEETS[key]
        case = f"an m x {k} by {k} x {n} product in {precision} on the {gpu.name}"
        want = _min_rows(gpu, precision, k, n)
        got = call(label, min_rows, gpu, precision, k, n)
        if want is None:
            if got is not None:
                fail(
                    label,
                    f"for {case} you returned {got!r}; even as m grows without bound its intensity stays below the "
                    f"balance point ({gpu.balance_point[precision]:.4g} FLOP/B): expected None.",
                    "find the limit of the intensity as m grows, and compare that with the balance point.",
                )
            continue
        if got is None:
            fail(label, f"for {case} you returned None, but some number of rows is compute-bound.", hint)
        if isinstance(got, bool) or not float(got).is_integer():
            fail(
                label,
                f"for {case} you returned {got!r}; a product has a whole number of rows.",
                "round to the smallest whole number of rows that is still compute-bound.",
            )
        got = int(got)
        mistakes = {
            "the bandwidth read as GiB/s: datasheet GB/s are 10^9 bytes per second": _min_rows(
                gpu, precision, k, n, bandwidth=gpu.bandwidth_gb_s * 2**30 / 1e9
            ),
            "TF32 stored in 2 bytes: TF32 changes the arithmetic, not the storage (4 bytes)": _min_rows(
                gpu, precision, k, n, bytes_per=2 if precision == "tf32" else None
            ),
            "the printed peak, which assumes 2:4 sparsity": _min_rows(
                gpu, precision, k, n, peak=gpu.printed_tflops[precision]
            ),
            "one FLOP per multiply-add instead of two": _min_rows(gpu, precision, k, n, flops_per_fma=1),
            "leaving out the result matrix (m x n) from the bytes": _min_rows(
                gpu, precision, k, n, output=False
            ),
            "counting only the weight's bytes (k x n)": _min_rows(
                gpu, precision, k, n, output=False, inputs=False
            ),
            "rounded down: with that many rows the intensity is still below the balance point": _min_rows(
                gpu, precision, k, n, rounding=math.floor
            ),
        }
        named = [
            name for name, value in mistakes.items() if value is not None and value != want and got == value
        ]
        if named:  # some mistakes give the same number (a doubled peak and a halved FLOP count): name each
            fail(
                label,
                f"for {case} your answer, {got}, matches a common mistake: {'; or '.join(named)}.",
                hint,
            )
        if got != want:
            fail(label, f"for {case} your answer, {got} rows, is not right.", hint)
