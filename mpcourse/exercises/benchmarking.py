"""Checks for the exercises of chapter ``benchmarking``.

No check times anything real: a verdict must not depend on the machine's speed or load. The
timing exercises run the learner's code on *simulated* devices whose clocks advance by a model of
the device (launch costs, a queue, one-off set-up, roofline-limited kernels), never by real time;
the prediction exercises compare with :mod:`mpcourse.bench.roofline` and the datasheet table.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

import numpy as np

from ..bench import datasheets, roofline
from . import ExerciseFailed, NotDoneYet, call, expect_close, fail, plural, register


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


# ---- benchmarking-mfu -------------------------------------------------------------------------

#: (parameters, tokens per step, steady step seconds, datasheet key, precision, seed) of the runs.
_MFU_RUNS: tuple[tuple[float, int, float, str, str, int], ...] = (
    (124e6, 8 * 1024, 0.05, "h100-sxm", "bf16", 1),
    (1.3e9, 16 * 1024, 2.0, "a100-sxm-80gb", "tf32", 3),
    (350e6, 4096, 0.4, "h100-sxm", "fp32", 6),
    (124e6, 2048, 0.04, "l4", "bf16", 8),
    (7e9, 4 * 4096, 0.6, "h200-sxm", "fp8", 9),
    (124e6, 8 * 1024, 0.5, "v100-sxm2-32gb", "bf16", 2),
)
# The seeds of the runs with a peak are chosen so that every step of the log, the steady ones included, is
# more than 4% away from the median in at least one of them: any single step's time fails somewhere.

#: How much slower than a steady step the first three steps of a run are (set-up, allocation, kernel choice).
_WARMUP = (40.0, 6.0, 2.0)
#: Step-to-step variation of the steady steps (standard deviation, as a fraction; cut off at three of them).
_JITTER = 0.05
#: The run saves a checkpoint every this many steps, and a step that saves takes this many times longer.
_CHECKPOINT_EVERY, _CHECKPOINT_COST = 30, 20.0


def step_log(steady: float, steps: int = 60, seed: int = 0) -> list[float]:
    """A run's step times (seeded): three slow warm-up steps, then steady steps that vary by about 5% from one
    to the next; every 30th step (the last of a 60-step run among them) also saves a checkpoint, which makes it
    twenty times slower."""
    noise = np.random.default_rng(seed).normal(0.0, _JITTER, steps).clip(-3 * _JITTER, 3 * _JITTER)
    times = steady * (1 + noise)
    times[: len(_WARMUP)] *= _WARMUP
    times[_CHECKPOINT_EVERY - 1 :: _CHECKPOINT_EVERY] *= _CHECKPOINT_COST
    return [float(t) for t in times]


def checkpoint_steps(steps: int = 60) -> list[int]:
    """The (0-based) indices of the steps of :func:`step_log` that save a checkpoint."""
    return list(range(_CHECKPOINT_EVERY - 1, steps, _CHECKPOINT_EVERY))


@register(
    "benchmarking-mfu",
    hints=(
        "MFU has three ingredients: the model FLOPs of one step, the time of a typical step, and a peak. Check "
        "each against the chapter: which FLOPs count, which steps are typical, which peak.",
        "Plot or print the step times: the first steps of a run are not typical, and not every later one is. "
        "Summarise them the way the chapter's recipe table does.",
        "The peak is the datasheet's dense figure for the precision the products ran in; a GPU with no units "
        "for that precision has no such figure, and then there is no MFU to report.",
    ),
)
def check_mfu(mfu: Any) -> None:
    """``mfu(step_seconds, n_params, tokens_per_step, gpu, precision)``: the run's model FLOPs utilisation
    as a fraction, or None where ``gpu`` has no peak for ``precision``."""
    label = "benchmarking-mfu"
    for n_params, tokens, steady, key, precision, seed in _MFU_RUNS:
        gpu = datasheets.DATASHEETS[key]
        steps = step_log(steady, seed=seed)
        size = f"{n_params / 1e9:g}B" if n_params >= 1e9 else f"{n_params / 1e6:g}M"
        saves = ", ".join(str(i + 1) for i in checkpoint_steps(len(steps)))
        case = (
            f"a {precision} run of a {size}-parameter transformer, {tokens} tokens per step, on the "
            f"{gpu.name} (steps {steps[0]:.3g} s, {steps[1]:.3g} s, {steps[2]:.3g} s, then about {steady:g} s "
            f"give or take {_JITTER:.0%}, steps {saves} saving a checkpoint):"
        )
        peak = gpu.peak_tflops(precision)
        try:
            got = call(label, mfu, list(steps), n_params, tokens, gpu, precision)
        except NotDoneYet:
            raise
        except ExerciseFailed as exc:
            if peak is not None:
                raise
            fail(
                label,
                f"for {case} {str(exc).removeprefix(label + ': ')}. The {gpu.name} has no {precision} units, so "
                "its datasheet has no figure for that precision.",
                "decide what MFU means when the GPU has no peak for the precision, and return that.",
            )
        if peak is None:
            if got is not None:
                fail(
                    label,
                    f"for {case} you returned {got!r}; the {gpu.name} has no {precision} units (its datasheet has no "
                    f"{precision} figure), so there is no peak to compare with: expected None.",
                    "an MFU against another precision's peak measures something else; the answer is then None.",
                )
            continue
        value = _number(label, got, case)
        model_flops = 6 * n_params * tokens
        typical = statistics.median(steps)
        want = model_flops / typical / (peak * 1e12)
        printed = gpu.printed_tflops[precision]

        def at(seconds: float) -> float:  # the MFU of a step of this many seconds
            return model_flops / seconds / (peak * 1e12)

        warm = len(_WARMUP)
        mistakes = {
            "the mean of every step, the slow first steps and the checkpoint saves included": at(
                statistics.fmean(steps)
            ),
            "the mean of the steps after the first, two slow warm-up steps and the checkpoint saves still "
            "included": at(statistics.fmean(steps[1:])),
            "the mean of the steps after the warm-up, the slow steps that save a checkpoint still included": at(
                statistics.fmean(steps[warm:])
            ),
            "the time of the whole run instead of one step": at(sum(steps)),
            f"the datasheet's printed {precision} figure, which assumes 2:4 sparsity: dense products get half of it": (
                model_flops / typical / (printed * 1e12)
            ),
            f"the fp32 peak, not the {precision} peak the products ran at": model_flops
            / typical
            / (gpu.dense_tflops["fp32"] * 1e12),
            "counting only the forward pass (2 FLOPs per parameter per token)": want / 3,
            "a percentage instead of a fraction": want * 100,
            "the peak left in TFLOP/s while the FLOPs are plain FLOPs": want * 1e12,
        }
        # Mistakes with many close candidates, named only on an exact match. Any one step's time: every step
        # of the log is far enough from a typical one in at least one of the check's seeded runs to be named
        # there (tests/test_exercises_benchmarking.py makes sure).
        exact = {
            "the first step's time, which pays the run's one-off set-up": at(steps[0]),
            "the fastest step's time: steady steps vary by a few percent, and the minimum picks the luckiest "
            "of them, not a typical one": at(min(steps)),
            "the last step's time: the run ends by saving a checkpoint, so its last step is one of the slowest": at(
                steps[-1]
            ),
        }
        exact |= {
            f"the time of a single step, step {i + 1} of the log ({seconds:.4g} s): steady steps vary by about "
            f"{_JITTER:.0%} from one to the next, so one step is not a typical step": at(seconds)
            for i, seconds in enumerate(steps)
        }
        for k in range(2, len(steps) // 2):  # the warm-up dropped, by any count, but not the checkpoint saves
            dropped = "the warm-up" if k == warm else f"the first {k}"
            warm_left = "a slow warm-up step and " if k < warm else ""
            exact[
                f"the mean of the steps after {dropped}, {warm_left}the slow steps that save a checkpoint still "
                "included"
            ] = at(statistics.fmean(steps[k:]))
        _judge(
            label,
            value,
            want,
            mistakes,
            case,
            "check each of the three ingredients: the FLOPs of a step, a typical step's time, and the peak.",
            rel=0.03,
            exact=exact,
        )
