"""The checks of chapter benchmarking: reference solutions pass, realistic mistakes fail."""

from __future__ import annotations

import statistics

import pytest

from mpcourse.exercises import ExerciseFailed, check

# --- benchmarking-intensity -------------------------------------------------------------------


def intensity(m, n, k, b):
    return 2 * m * n * k / (b * (m * k + k * n + m * n))


def test_intensity_accepts_the_reference() -> None:
    check("benchmarking-intensity", intensity)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda m, n, k, b: m * n * k / (b * (m * k + k * n + m * n)), "one FLOP per multiply-add"),
        (lambda m, n, k, b: 2 * m * n * k / (b * (m * k + k * n)), "result matrix C"),
        (lambda m, n, k, b: 2 * m * n * k / (8 * b * (m * k + k * n + m * n)), "bits instead of bytes"),
        (lambda m, n, k, b: 2 * n / (3 * b), "square matrices"),
        (lambda m, n, k, b: 2 * m * n * k / (m * k + k * n + m * n), "elements instead of bytes"),
        (lambda m, n, k, b: 2 * m * n * k / (b * (m + n + k)), "not right"),
        (lambda m, n, k, b: "high", "one number"),
    ],
)
def test_intensity_rejects_realistic_mistakes(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("benchmarking-intensity", wrong)


# --- benchmarking-speedup ---------------------------------------------------------------------


def speedup(flops, bytes_high, bytes_low, peak_high, peak_low, bandwidth):
    high = max(flops / (peak_high * 1e12), bytes_high / (bandwidth * 1e9))
    low = max(flops / (peak_low * 1e12), bytes_low / (bandwidth * 1e9))
    return high / low


def test_speedup_accepts_the_reference() -> None:
    check("benchmarking-speedup", speedup)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda f, bh, bl, ph, pl, bw: pl / ph, "ratio of the peaks"),
        (lambda f, bh, bl, ph, pl, bw: bh / bl, "ratio of the bytes"),
        (
            lambda f, bh, bl, ph, pl, bw: (f / ph / 1e12 + bh / bw / 1e9) / (f / pl / 1e12 + bl / bw / 1e9),
            "adding",
        ),
        (
            lambda f, bh, bl, ph, pl, bw: (
                min(f / ph / 1e12, bh / bw / 1e9) / min(f / pl / 1e12, bl / bw / 1e9)
            ),
            "ratio of the (peaks|bytes)|smaller",
        ),
        (lambda *a: 1 / speedup(*a), "inverse"),
        (
            lambda f, bh, bl, ph, pl, bw: max(f / ph, bh / bw) / max(f / pl, bl / bw),
            "not right",
        ),  # units mixed up
    ],
)
def test_speedup_rejects_realistic_mistakes(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("benchmarking-speedup", wrong)


# --- benchmarking-timing ----------------------------------------------------------------------


def time_per_call(fn, sync, clock, warmup=3, repeats=10):
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        sync()
        start = clock()
        fn()
        sync()
        samples.append(clock() - start)
    return statistics.median(samples)


def time_per_call_blocked(fn, sync, clock, warmup=3, repeats=50):
    for _ in range(warmup):
        fn()
    sync()
    start = clock()
    for _ in range(repeats):
        fn()
    sync()
    return (clock() - start) / repeats


def test_timing_accepts_both_correct_designs() -> None:
    check("benchmarking-timing", time_per_call)
    check("benchmarking-timing", time_per_call_blocked)


def broken(fn, sync, clock, warmup=3, repeats=10):  # the loop shown in the chapter
    start = clock()
    for _ in range(repeats):
        fn()
    return (clock() - start) / repeats


def no_final_sync(fn, sync, clock, warmup=3, repeats=10):
    for _ in range(warmup):
        fn()
    sync()
    start = clock()
    for _ in range(repeats):
        fn()
    return (clock() - start) / repeats


def no_warmup(fn, sync, clock, repeats=10):
    sync()
    start = clock()
    for _ in range(repeats):
        fn()
    sync()
    return (clock() - start) / repeats


def no_initial_sync(fn, sync, clock, warmup=3, repeats=10):
    for _ in range(warmup):
        fn()
    start = clock()
    for _ in range(repeats):
        fn()
    sync()
    return (clock() - start) / repeats


def mean_with_first_call(fn, sync, clock, repeats=10):
    samples = []
    for _ in range(repeats):
        sync()
        start = clock()
        fn()
        sync()
        samples.append(clock() - start)
    return sum(samples) / len(samples)


def total_not_per_call(fn, sync, clock, warmup=3, repeats=10):
    return time_per_call_blocked(fn, sync, clock, warmup, repeats) * repeats


def wall_clock(fn, sync, clock, warmup=3, repeats=10):
    import time

    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


@pytest.mark.parametrize(
    "wrong, message",
    [
        (broken, "sync\\(\\) before reading the clock at the end"),
        (no_final_sync, "sync\\(\\) before reading the clock at the end"),
        (no_warmup, "one-off costs"),
        (no_initial_sync, "sync\\(\\) before starting"),
        (mean_with_first_call, "one-off costs"),
        (total_not_per_call, "ms per call"),
        (wall_clock, "clock\\(\\) you are given"),
        (lambda fn, sync, clock: 0.002, "never called fn"),
    ],
)
def test_timing_rejects_the_classic_bugs(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("benchmarking-timing", wrong)


# --- benchmarking-mfu -------------------------------------------------------------------------


def mfu(n_params, tokens, seconds, peak_tflops):
    return 6 * n_params * tokens / seconds / (peak_tflops * 1e12)


def test_mfu_accepts_the_reference() -> None:
    check("benchmarking-mfu", mfu)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda n, t, s, p: 2 * n * t / s / (p * 1e12), "only the forward"),
        (lambda n, t, s, p: 100 * mfu(n, t, s, p), "percentage"),
        (lambda n, t, s, p: 6 * n * t / s / p, "TFLOP/s"),
        (lambda n, t, s, p: 6 * n * t * s / (p * 1e12), "multiplying by the step time"),
        (lambda n, t, s, p: 4 * n * t / s / (p * 1e12), "not right"),
    ],
)
def test_mfu_rejects_realistic_mistakes(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("benchmarking-mfu", wrong)
