"""Timing and peak memory, measured the way that survives asynchronous devices and caches.

Three things make a naive ``t0 = time.time(); f(); print(time.time() - t0)`` lie:

- **asynchronous kernels**: on a GPU, ``f()`` only *queues* work and returns; without a
  synchronisation before reading the clock you time the launch, not the work;
- **first-call overhead**: the first call pays for one-off work (library initialisation, kernel
  selection or JIT compilation, page faults on fresh memory, a caching allocator's first
  requests); it must be run, and discarded, before measuring;
- **noise**: one sample says little on a shared machine; report the median of many, with its spread.

:func:`benchmark` wraps ``torch.utils.benchmark.Timer.blocked_autorange``, which warms up, synchronises
the accelerator at the edges of each block of calls, and returns many samples. :func:`perf_counter`
(a plain clock loop with explicit synchronisation) and :func:`cuda_events` (the GPU's own clock) are
*independent* measurements of the same thing, used to check it. :func:`naive` and :func:`unsynchronised`
are the two classic mistakes, kept so a chapter can show how wrong they are on its own device.
:func:`cold_cache` times each call after evicting the caches, for the first call of a real
workload, whose operands were not just read by the previous repeat.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.utils.benchmark as torch_benchmark

__all__ = [
    "Timing",
    "benchmark",
    "cold_cache",
    "compare",
    "cuda_events",
    "independent",
    "last_level_cache_bytes",
    "naive",
    "paired",
    "paired_ratio",
    "peak_memory",
    "perf_counter",
    "synchronize",
    "unsynchronised",
]


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one measured function: the median of ``samples``, and their spread.

    ``samples`` are seconds per call of each measured block (a block may run the function several
    times, to keep the clock's own cost negligible); ``method`` says how they were taken.
    """

    samples: tuple[float, ...]
    method: str

    def __post_init__(self) -> None:
        if not self.samples:
            raise ValueError("a Timing needs at least one sample")

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def iqr(self) -> float:
        """Interquartile range of the samples (0 with fewer than 2 samples)."""
        if len(self.samples) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q3 - q1

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median: 0.05 means the middle half lies within 5%."""
        return self.iqr / self.median if self.median > 0 else float("nan")

    def __str__(self) -> str:
        return f"{_format_seconds(self.median)} median, IQR {self.spread:.1%}, {len(self.samples)} samples ({self.method})"


def _format_seconds(s: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def _kind(device: str | torch.device) -> str:
    try:
        kind = torch.device(device).type
    except RuntimeError:
        kind = str(device)
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {str(device)!r}; accepted: 'cpu', 'cuda' (or 'cuda:N'), 'mps'")
    return kind


def synchronize(device: str | torch.device) -> None:
    """Wait until every kernel queued on ``device`` has finished (a no-op on the CPU, which is synchronous)."""
    kind = _kind(device)
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


def _timer(
    fn: Callable[[], object], num_threads: int | None, clock: Callable[[], float] | None = None
) -> tuple[torch_benchmark.Timer, int]:
    if not callable(fn):
        raise TypeError(f"fn must be a callable taking no arguments, got {type(fn).__name__}")
    threads = num_threads or torch.get_num_threads()
    extra = {"timer": clock} if clock is not None else {}  # default: a wall clock that syncs the accelerator
    return torch_benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads, **extra), threads


def _timer_method(threads: int, how: str = "") -> str:
    """How a :class:`Timing` of ``torch.utils.benchmark`` blocks was taken, for its ``method``."""
    return f"torch.utils.benchmark, {how + ', ' if how else ''}{threads} thread{'s' * (threads > 1)}"


def _plan(
    timer: torch_benchmark.Timer, min_run_time: float, min_blocks: int, max_blocks: int
) -> tuple[int, int]:
    """Calls per block and number of blocks: at most ``max_blocks`` blocks, at least ``min_blocks``,
    about ``min_run_time`` seconds in all. The first ``timeit`` also warms up (two discarded calls).

    A cheap call is timed three times and the median planned with, so that one call that happened
    to be descheduled (on a busy machine, a whole scheduler time slice) does not shrink the plan to
    a handful of blocks.
    """
    if min_run_time <= 0 or not 1 <= min_blocks <= max_blocks:
        raise ValueError(
            f"need min_run_time > 0 and 1 <= min_blocks <= max_blocks; got {min_run_time}, {min_blocks}, {max_blocks}"
        )
    per_call = timer.timeit(1).median
    if per_call < 0.02 * min_run_time:
        per_call = statistics.median([per_call, timer.timeit(1).median, timer.timeit(1).median])
    number = max(1, math.ceil(min_run_time / (max_blocks * per_call)))
    blocks = max(min_blocks, min(max_blocks, math.ceil(min_run_time / (number * per_call))))
    return number, blocks


def benchmark(
    fn: Callable[[], object],
    *,
    min_run_time: float = 0.2,
    num_threads: int | None = None,
    min_blocks: int = 5,
    max_blocks: int = 50,
) -> Timing:
    """Time ``fn()`` with ``torch.utils.benchmark.Timer``: seconds per call, median of several blocks.

    Each ``Timer.timeit(number)`` block warms up, synchronises the accelerator (when one is present)
    before and after its ``number`` calls, and runs them in a tight compiled loop. Blocks are sized so
    that about ``min_run_time`` seconds give between ``min_blocks`` and ``max_blocks`` samples:
    enough for a median and a spread. (``Timer.blocked_autorange`` sizes blocks for a clock overhead
    below 0.01%, which for a call of a millisecond or more means one or two huge blocks and no
    usable spread.) Unlike the Timer's default of one thread (its choice for comparing algorithms),
    this uses every thread PyTorch would use: what the whole device does. Pass ``num_threads=1``
    for the Timer's default.
    """
    timer, threads = _timer(fn, num_threads)
    number, blocks = _plan(timer, min_run_time, min_blocks, max_blocks)
    samples = tuple(timer.timeit(number).median for _ in range(blocks))
    return Timing(samples, _timer_method(threads))


def paired(
    fn: Callable[[], object],
    *,
    device: str | torch.device,
    min_run_time: float = 0.2,
    num_threads: int | None = None,
    min_blocks: int = 5,
    max_blocks: int = 50,
    clock: Callable[[], float] | None = None,
) -> tuple[Timing, Timing]:
    """:func:`benchmark` and an independent measurement of the same blocks, taken alternately.

    The independent clock is CUDA events on a CUDA device, ``time.perf_counter`` with explicit
    synchronisation elsewhere. Its blocks are built like the Timer's (the same warm-up calls, the
    same number of timed calls), and the two take turns, in alternating order, so that a
    disturbance (another process, a clock change) hits both alike: a disagreement between the two
    medians then points at the measurement, not at the machine.

    ``clock`` (CPU only) replaces the wall clock in both, e.g. ``time.process_time``: with one
    thread, the CPU time of the calls, which other processes on a busy machine do not inflate.
    """
    if clock is not None and _kind(device) != "cpu":
        raise ValueError(
            "a custom clock is for CPU measurements; on an accelerator the clock must synchronise it"
        )
    timer, threads = _timer(fn, num_threads, clock)
    number, blocks = _plan(timer, min_run_time, min_blocks, max_blocks)
    cuda = _kind(device) == "cuda"
    ours, theirs = [], []

    def independent_block() -> float:
        for _ in range(max(number // 100, 2)):  # the same warm-up as each Timer.timeit block
            fn()
        return _cuda_event_block(fn, number) if cuda else _perf_counter_block(fn, number, device, clock)

    with torch_benchmark.utils.common.set_torch_threads(threads):
        for block in range(blocks):
            # Same structure for both, in alternating order: neither is systematically the one
            # that runs at the end of a scheduler time slice.
            if block % 2:
                theirs.append(independent_block())
                ours.append(timer.timeit(number).median)
            else:
                ours.append(timer.timeit(number).median)
                theirs.append(independent_block())
    method = (
        "CUDA events"
        if cuda
        else ("time.perf_counter, synchronised" if clock is None else f"{clock.__name__} loop")
    )
    return Timing(tuple(ours), _timer_method(threads)), Timing(tuple(theirs), method)


def paired_ratio(ours: Timing, theirs: Timing) -> float:
    """Median over block pairs of ``ours`` block / ``theirs`` block, for the two Timings of :func:`paired`.

    The two measurements of :func:`paired` take turns block by block, so block ``i`` of each ran
    within moments of the other, under the same load. Their ratio cancels a disturbance that lasts
    longer than a pair of blocks (another process taking a core for a while, a frequency change),
    which the ratio of the two overall medians does not: on a busy 2-core machine with every thread
    in use, single blocks jump by whole scheduler time slices, and two medians of the same work
    can differ by tens of percent while the pairwise ratios stay close to 1. A measurement that is
    wrong (a clock off by some factor, calls miscounted) moves every pairwise ratio, and so this one.
    """
    if len(ours.samples) != len(theirs.samples):
        raise ValueError(
            f"paired Timings have one sample per block each; got {len(ours.samples)} and {len(theirs.samples)}"
        )
    return statistics.median(a / b for a, b in zip(ours.samples, theirs.samples))


def compare(
    fns: dict[str, Callable[[], object]],
    *,
    min_run_time: float = 0.2,
    num_threads: int | None = None,
    min_blocks: int = 5,
) -> dict[str, Timing]:
    """Time several functions with :func:`benchmark`'s blocks, taking turns block by block.

    Measuring A fully and then B lets anything that changes in between (another process, the
    clock frequency, the temperature) pass for a difference between A and B; alternating spreads
    it over both. Each function gets about ``min_run_time`` seconds.
    """
    if not fns:
        raise ValueError("compare needs at least one function")
    threads = num_threads or torch.get_num_threads()
    plans = {}
    for name, fn in fns.items():
        timer, _ = _timer(fn, threads)
        plans[name] = (timer, *_plan(timer, min_run_time, min_blocks, 50))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    with torch_benchmark.utils.common.set_torch_threads(threads):
        for block in range(max(blocks for _, _, blocks in plans.values())):
            for name, (timer, number, blocks) in plans.items():
                if block < blocks:
                    samples[name].append(timer.timeit(number).median)
    method = _timer_method(threads, "alternating")
    return {name: Timing(tuple(s), method) for name, s in samples.items()}


def _perf_counter_block(
    fn: Callable[[], object],
    number: int,
    device: str | torch.device,
    clock: Callable[[], float] | None = None,
) -> float:
    clock = clock or time.perf_counter
    synchronize(device)
    start = clock()
    for _ in range(number):
        fn()
    synchronize(device)
    return (clock() - start) / number


def _cuda_event_block(fn: Callable[[], object], number: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(number):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / number


def perf_counter(
    fn: Callable[[], object], *, device: str | torch.device = "cpu", repeats: int = 20, warmup: int = 3
) -> Timing:
    """Time ``fn()`` with ``time.perf_counter``: warm up, then synchronise before and after every call.

    Shares no code with ``torch.utils.benchmark``: one call per sample, the device drained before
    the clock starts and before it stops. Each sample pays one synchronisation (microseconds on a
    GPU), so use it for calls that take at least a millisecond.
    """
    _check_counts(repeats, warmup)
    for _ in range(warmup):
        fn()
    return Timing(
        tuple(_perf_counter_block(fn, 1, device) for _ in range(repeats)), "time.perf_counter, synchronised"
    )


def cuda_events(fn: Callable[[], object], *, repeats: int = 20, warmup: int = 3) -> Timing:
    """Time ``fn()`` with CUDA events: timestamps the GPU itself records around each call.

    The events are queued with the work, so the GPU's own clock brackets exactly the kernels in
    between, with no host-side synchronisation inside the measured interval.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("cuda_events needs a CUDA device; use perf_counter on the CPU")
    _check_counts(repeats, warmup)
    for _ in range(warmup):
        fn()
    return Timing(tuple(_cuda_event_block(fn, 1) for _ in range(repeats)), "CUDA events")


def _check_counts(repeats: int, warmup: int) -> None:
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")


def independent(fn: Callable[[], object], *, device: str | torch.device, repeats: int = 20) -> Timing:
    """A measurement that shares no code with :func:`benchmark`: CUDA events on a CUDA device, a
    synchronised ``perf_counter`` loop elsewhere."""
    if _kind(device) == "cuda":
        return cuda_events(fn, repeats=repeats)
    return perf_counter(fn, device=device, repeats=repeats)


def naive(fn: Callable[[], object]) -> float:
    """The classic mistake: one call, no warm-up, no synchronisation. Returns seconds."""
    start = time.time()
    fn()
    return time.time() - start


def unsynchronised(fn: Callable[[], object], *, repeats: int = 20, warmup: int = 3) -> float:
    """The GPU mistake: warm, but the clock stops while kernels are still queued. Seconds per call.

    Measures how fast the CPU can *launch* the work. (It ends with a synchronisation so the
    queued work does not leak into whatever is timed next; that wait is not counted.)
    """
    for _ in range(warmup):
        fn()
    _sync_all()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    seconds = (time.perf_counter() - start) / repeats
    _sync_all()
    return seconds


def _sync_all() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory(fn: Callable[[], object], *, device: str | torch.device = "cpu") -> tuple[int, str]:
    """Bytes of memory ``fn()`` needs at its peak beyond what was in use before, and how it was measured.

    On CUDA: the caching allocator's own count of bytes held by tensors
    (``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``). It excludes memory the
    allocator keeps cached but unused, which ``nvidia-smi`` would show as in use.
    On the CPU, PyTorch keeps no such count, so this samples the process's resident memory
    (RSS) every half millisecond: a coarser measurement that can miss short peaks and
    undercount when freed memory is reused.
    """
    kind = _kind(device)
    if kind == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(
            device
        ) - before, "CUDA caching allocator (max_memory_allocated)"
    with _rss_sampler() as peak:
        fn()
        synchronize(device)
    return peak(), "process resident memory (RSS), sampled every 0.5 ms"


@contextmanager
def _rss_sampler(interval: float = 5e-4) -> Iterator[Callable[[], int]]:
    import psutil

    process = psutil.Process()
    baseline = process.memory_info().rss
    highest = [baseline]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            highest[0] = max(highest[0], process.memory_info().rss)
            stop.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield lambda: max(0, highest[0] - baseline)
    finally:
        stop.set()
        thread.join()
        highest[0] = max(highest[0], process.memory_info().rss)


#: What :func:`last_level_cache_bytes` assumes on a CPU whose cache sizes the system does not report.
FALLBACK_CACHE_BYTES = 64 * 2**20


def last_level_cache_bytes(device: str | torch.device = "cpu") -> int:
    """Bytes of the last-level cache that serves ``device``: a CUDA GPU's L2, or a CPU's largest cache.

    On CUDA this is ``torch.cuda.get_device_properties(device).L2_cache_size``. On a Linux CPU it is the
    largest ``size`` under ``/sys/devices/system/cpu/cpu0/cache/`` (the L3 shared by a socket, on most
    machines); where that is not readable, :data:`FALLBACK_CACHE_BYTES`, larger than the L3 of most
    desktop and laptop CPUs.
    """
    kind = _kind(device)
    if kind == "cuda":
        return int(torch.cuda.get_device_properties(device).L2_cache_size)
    from pathlib import Path

    largest = 0
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = entry.read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            largest = max(largest, int(digits) * scale)
    return largest or FALLBACK_CACHE_BYTES


def cold_cache(
    fn: Callable[[], object],
    *,
    device: str | torch.device = "cpu",
    repeats: int = 10,
    warmup: int = 1,
    flush_bytes: int | None = None,
) -> Timing:
    """Time ``fn()`` with the caches cold: before every call, write a buffer larger than the last-level cache.

    Back-to-back repeats of a small product find its operands still in cache (a GPU's L2, a CPU's L3)
    and so time a case a training step rarely sees: there, other layers' data passed through the cache
    in between. Writing ``flush_bytes`` (default: twice :func:`last_level_cache_bytes`) evicts them, so
    each call reads its operands from main memory. Only ``fn()`` is timed: the flush is finished (the
    device synchronised) before the clock starts. On a CUDA device the clock is a pair of CUDA events
    around each call; elsewhere ``time.perf_counter``. ``warmup`` calls (each after a flush too) pay
    the first-call costs and are not timed. This is the approach of Triton's ``do_bench``, which
    zeroes a buffer of 256 MiB between calls (``triton.testing.do_bench``).
    """
    _check_counts(repeats, warmup)
    if not callable(fn):
        raise TypeError(f"fn must be a callable taking no arguments, got {type(fn).__name__}")
    kind = _kind(device)
    nbytes = 2 * last_level_cache_bytes(device) if flush_bytes is None else flush_bytes
    if nbytes < 1:
        raise ValueError(f"flush_bytes must be a positive number of bytes, got {flush_bytes}")
    buffer = torch.empty(nbytes, dtype=torch.uint8, device=device)
    cuda = kind == "cuda"
    samples = []
    for i in range(warmup + repeats):
        buffer.fill_(i % 255 + 1)  # a write of every byte: the cache lines of fn's data are evicted
        synchronize(device)
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1e3
        else:
            begin = time.perf_counter()
            fn()
            synchronize(device)
            seconds = time.perf_counter() - begin
        if i >= warmup:
            samples.append(seconds)
    method = f"cold cache ({nbytes / 2**20:.0f} MiB written before each call), " + (
        "CUDA events" if cuda else "time.perf_counter, synchronised"
    )
    return Timing(tuple(samples), method)
