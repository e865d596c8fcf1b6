"""The checks of chapter benchmarking: reference solutions and valid alternatives pass, realistic mistakes fail."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from mpcourse.bench import datasheets, roofline
from mpcourse.exercises import ExerciseFailed, check, hints, labels
from mpcourse.exercises.benchmarking import _MIN_ROWS_CASES, _matmul_devices, _min_rows, simulated_matmul_gpu


def test_the_chapter_has_these_exercises() -> None:
    assert labels("benchmarking") == [
        "benchmarking-fair-speedup",
        "benchmarking-min-rows",
        "benchmarking-speedup",
        "benchmarking-timing",
    ]
    for label in labels("benchmarking"):
        assert 2 <= len(hints(label)) <= 4, label


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


def time_per_call_best_of(fn, sync, clock):  # the minimum of synchronised single calls, after one warm-up
    fn()
    best = float("inf")
    for _ in range(5):
        sync()
        start = clock()
        fn()
        sync()
        best = min(best, clock() - start)
    return best


@pytest.mark.parametrize("answer", [time_per_call, time_per_call_blocked, time_per_call_best_of])
def test_timing_accepts_correct_designs(answer, capsys: pytest.CaptureFixture[str]) -> None:
    check("benchmarking-timing", answer)
    assert capsys.readouterr().err == ""


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
        (broken, "wait for the device before reading the clock at the end"),
        (no_final_sync, "wait for the device before reading the clock at the end"),
        (no_warmup, "one-off costs"),
        (no_initial_sync, "wait for the device before starting"),
        (mean_with_first_call, "one-off costs"),
        (total_not_per_call, "ms per call"),
        (wall_clock, r"read clock\(\) 0 times"),
        (lambda fn, sync, clock: 0.002, "never called fn"),
        (lambda fn, sync, clock: "2 ms", "expected one number"),
    ],
)
def test_timing_rejects_the_classic_bugs(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("benchmarking-timing", wrong)


# --- benchmarking-fair-speedup ------------------------------------------------------------------


def seconds_per_call(run, sync, clock, n, precision, repeats=5):
    run(n, precision)
    sync()
    start = clock()
    for _ in range(repeats):
        run(n, precision)
    sync()
    return (clock() - start) / repeats


def bf16_speedup(run, sync, clock, max_n):
    n, previous = 256, None
    while n <= max_n:
        ratio = seconds_per_call(run, sync, clock, n, "fp32") / seconds_per_call(run, sync, clock, n, "bf16")
        if previous is not None and abs(ratio - previous) < 0.02 * ratio:
            return ratio
        previous, n = ratio, 2 * n
    return previous


def largest_that_fits(run, sync, clock, max_n):  # no search: the largest product, warmed up, median of calls
    def median_call(precision):
        run(max_n, precision)
        times = []
        for _ in range(3):
            sync()
            start = clock()
            run(max_n, precision)
            sync()
            times.append(clock() - start)
        return statistics.median(times)

    return median_call("fp32") / median_call("bf16")


def interleaved(run, sync, clock, max_n):  # alternate the precisions at a large size, as timing.compare does
    n = max_n // 2
    totals = {"fp32": 0.0, "bf16": 0.0}
    for p in totals:
        run(n, p)
    for _ in range(4):
        for p in totals:
            sync()
            start = clock()
            run(n, p)
            sync()
            totals[p] += clock() - start
    return totals["fp32"] / totals["bf16"]


def _timed_with_unsynced_lap_readings(run, sync, clock, n, precision, repeats=5, warmup=True):
    """Reads the clock around every call without waiting (laps it never uses); the result comes only from
    readings taken after sync()."""
    if warmup:
        run(n, precision)
    sync()
    start = clock()
    laps = []
    for _ in range(repeats):
        before = clock()
        run(n, precision)
        laps.append(clock() - before)  # the device is busy here: a launch time, unused
    sync()
    return (clock() - start) / repeats


def lap_readings_at_max_n(run, sync, clock, max_n):
    t32 = _timed_with_unsynced_lap_readings(run, sync, clock, max_n, "fp32")
    return t32 / _timed_with_unsynced_lap_readings(run, sync, clock, max_n, "bf16")


@pytest.mark.parametrize("answer", [bf16_speedup, largest_that_fits, interleaved, lap_readings_at_max_n])
def test_fair_speedup_accepts_valid_measurements(answer, capsys: pytest.CaptureFixture[str]) -> None:
    check("benchmarking-fair-speedup", answer)
    assert capsys.readouterr().err == ""


def flawed_speedup(run, sync, clock, max_n):  # the chapter's flawed benchmark
    start = clock()
    run(256, "fp32")
    sync()
    t32 = clock() - start
    start = clock()
    run(256, "bf16")
    sync()
    t16 = clock() - start
    return t32 / t16


def warm_but_small(run, sync, clock, max_n):
    return seconds_per_call(run, sync, clock, 1024, "fp32") / seconds_per_call(run, sync, clock, 1024, "bf16")


def large_but_cold(run, sync, clock, max_n):
    start = clock()
    run(max_n, "fp32")
    sync()
    t32 = clock() - start
    start = clock()
    run(max_n, "bf16")
    sync()
    return t32 / (clock() - start)


def never_synchronised(run, sync, clock, max_n):
    def total(p):
        start = clock()
        for _ in range(10):
            run(max_n, p)
        return clock() - start

    return total("fp32") / total("bf16")


def no_final_sync_sweep(run, sync, clock, max_n):
    def per_call(p):
        run(max_n, p)
        sync()
        start = clock()
        for _ in range(10):
            run(max_n, p)
        return (clock() - start) / 10

    return per_call("fp32") / per_call("bf16")


def different_shapes(
    run, sync, clock, max_n
):  # bf16 "needs less memory", so a bigger... or a smaller product
    return seconds_per_call(run, sync, clock, max_n, "fp32") / seconds_per_call(
        run, sync, clock, max_n // 2, "bf16"
    )


def inverted(run, sync, clock, max_n):
    return 1 / largest_that_fits(run, sync, clock, max_n)


def runs_out_of_memory(run, sync, clock, max_n):
    n = 256
    while True:
        seconds_per_call(run, sync, clock, n, "fp32")
        n *= 2


@pytest.mark.parametrize(
    "wrong, message",
    [
        (
            flawed_speedup,
            r"device A your answer is 1.00; the largest product you timed in both precisions is n = 256.*"
            r"and you ran fp32 and bf16 at n = 256 only once",
        ),
        (
            warm_but_small,
            r"largest product you timed in both precisions is n = 1024, where the launch is 70%",
        ),
        (large_but_cold, r"ran fp32 and bf16 at n = 16384 only once.*one-off set-up"),
        (never_synchronised, "never synchronised"),
        (no_final_sync_sweep, r"readings of the clock came while the device was still busy"),
        (different_shapes, r"fp32 products of n = \[16384\] and bf16 products of n = \[8192\]"),
        (inverted, "inverse of a speed-up"),
        (runs_out_of_memory, "out of memory"),
        (lambda run, sync, clock, max_n: seconds_per_call(run, sync, clock, max_n, "bf16"), "only in bf16"),
        (lambda run, sync, clock, max_n: 14.8, "never called run"),
    ],
)
def test_fair_speedup_rejects_flawed_benchmarks(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("benchmarking-fair-speedup", wrong)


def lap_readings_small(run, sync, clock, max_n):
    t32 = _timed_with_unsynced_lap_readings(run, sync, clock, 1024, "fp32")
    return t32 / _timed_with_unsynced_lap_readings(run, sync, clock, 1024, "bf16")


def lap_readings_cold(run, sync, clock, max_n):
    t32 = _timed_with_unsynced_lap_readings(run, sync, clock, max_n, "fp32", repeats=1, warmup=False)
    return t32 / _timed_with_unsynced_lap_readings(run, sync, clock, max_n, "bf16", repeats=1, warmup=False)


def lap_readings_used(run, sync, clock, max_n):  # the median of the unsynchronised laps: launch times
    def laps(p):
        run(max_n, p)
        sync()
        times = []
        for _ in range(5):
            before = clock()
            run(max_n, p)
            times.append(clock() - before)
        sync()
        return statistics.median(times)

    return laps("fp32") / laps("bf16")


@pytest.mark.parametrize(
    "wrong, message",
    [  # used to get "readings ... busy", which did not enter the result, instead of the real flaw
        (lap_readings_small, r"n = 1024, where the launch is 70%.*ratio still grows with n"),
        (lap_readings_cold, r"ran fp32 and bf16 at n = 16384 only once.*one-off set-up"),
    ],
)
def test_fair_speedup_ignores_busy_readings_that_do_not_enter_the_result(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message) as failure:
        check("benchmarking-fair-speedup", wrong)
    assert "busy" not in str(failure.value)


def test_fair_speedup_still_names_busy_readings_that_enter_the_result() -> None:
    with pytest.raises(ExerciseFailed, match=r"readings of the clock came while the device was still busy"):
        check("benchmarking-fair-speedup", lap_readings_used)


def test_a_hard_coded_answer_fails_on_another_device() -> None:
    with pytest.raises(ExerciseFailed, match="device B"):
        check(
            "benchmarking-fair-speedup",
            lambda run, sync, clock, max_n: 14.8 + 0 * bf16_speedup(run, sync, clock, max_n),
        )


def test_the_simulated_devices_settle_within_the_tolerance_at_max_n() -> None:
    for gpu in _matmul_devices():
        assert abs(gpu.ratio(gpu.max_n) / gpu.truth() - 1) < 0.01
        assert abs(gpu.ratio(256) / gpu.truth() - 1) > 0.05  # a small product does not give the answer
    demo = simulated_matmul_gpu()
    assert abs(flawed_speedup(demo.run, demo.sync, demo.clock, demo.max_n) - 1) < 0.05


# --- benchmarking-speedup ---------------------------------------------------------------------

BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2}


def make_predictor(
    bytes_per=None,
    write_c=True,
    flops_per_fma=2,
    peaks="dense_tflops",
    gb=1e9,
    combine=max,
    layer_norm_flops=5,
):
    """The roofline prediction written out by hand, with switches for the usual mistakes."""
    bytes_per = bytes_per or BYTES

    def predicted_speedup(op, gpu, precision):
        def seconds(p):
            b = bytes_per[p]
            if op["op"] == "matmul":
                m, n, k = op["m"], op["n"], op["k"]
                flops, nbytes = flops_per_fma * m * n * k, (m * k + k * n + (m * n if write_c else 0)) * b
            elif op["op"] == "add":
                flops, nbytes = op["elements"], 3 * op["elements"] * b
            else:
                elements = op["rows"] * op["cols"]
                flops, nbytes = layer_norm_flops * elements, (2 * elements + 2 * op["cols"]) * b
            return combine(flops / (getattr(gpu, peaks)[p] * 1e12), nbytes / (gpu.bandwidth_gb_s * gb))

        return seconds("fp32") / seconds(precision)

    return predicted_speedup


def with_the_course_roofline(op, gpu, precision):
    costs = {}
    for p in ("fp32", precision):
        if op["op"] == "matmul":
            costs[p] = roofline.matmul_cost(op["m"], op["n"], op["k"], p)
        elif op["op"] == "add":
            costs[p] = roofline.elementwise_cost(op["elements"], p)
        else:  # a layer norm: one input, one output, a couple of dozen FLOPs per element
            costs[p] = roofline.elementwise_cost(op["rows"] * op["cols"], p, inputs=1, flops_per_element=24)
    return roofline.predicted_speedup(costs, roofline.Roofs.from_datasheet(gpu), "fp32", precision)


@pytest.mark.parametrize(
    "answer",
    [make_predictor(), make_predictor(layer_norm_flops=30), with_the_course_roofline],
    ids=["by-hand", "layer-norm-with-30-flops-and-its-weights", "course-roofline"],
)
def test_speedup_accepts_valid_predictions(answer, capsys: pytest.CaptureFixture[str]) -> None:
    check("benchmarking-speedup", answer)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "wrong, message",
    [
        (make_predictor(gb=2**30), "GiB/s"),  # used to pass: no case crossed a regime boundary
        (make_predictor(bytes_per=dict(BYTES, tf32=2)), "TF32 stored in 2 bytes"),
        (make_predictor(peaks="printed_tflops"), "2:4 sparsity"),
        (make_predictor(write_c=False), "leaving out the result matrix"),
        (make_predictor(flops_per_fma=1), "one FLOP per multiply-add"),
        (make_predictor(combine=lambda a, b: a + b), "adding the compute time and the memory time"),
        (make_predictor(combine=min), "ratio of the bytes|smaller of the compute and memory times"),
        (lambda op, gpu, p: gpu.dense_tflops[p] / gpu.dense_tflops["fp32"], "ratio of the peaks"),
        (lambda op, gpu, p: 4 / BYTES[p], "ratio of the bytes"),
        (lambda op, gpu, p: 1 / make_predictor()(op, gpu, p), "inverse ratio"),
        (make_predictor(gb=1e12), "not right"),  # GB/s read as TB/s
        (lambda op, gpu, p: "2x", "expected one number"),
    ],
)
def test_speedup_rejects_realistic_mistakes(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("benchmarking-speedup", wrong)


def test_the_gib_mistake_fails_on_the_case_that_crosses_a_regime() -> None:
    with pytest.raises(
        ExerciseFailed, match=r"128 rows times an 8192 x 8192 matrix.*in bf16 on the NVIDIA H100"
    ):
        check("benchmarking-speedup", make_predictor(gb=2**30))


# --- benchmarking-min-rows --------------------------------------------------------------------


def min_rows(gpu, precision, k, n):
    b = roofline.BYTES[precision]
    balance = gpu.dense_tflops[precision] * 1e12 / (gpu.bandwidth_gb_s * 1e9)
    per_row = 2 * k * n - balance * b * (k + n)
    if per_row <= 0:
        return None  # the intensity tends to 2kn / ((k + n) b) as m grows: never compute-bound
    return math.ceil(balance * b * k * n / per_row)


def min_rows_by_search(gpu, precision, k, n):
    balance = gpu.balance_point[precision]
    if 2 * k * n / ((k + n) * roofline.BYTES[precision]) <= balance:
        return None
    m = 1
    while np.divide(*roofline.matmul_cost(m, n, k, precision)) < balance:
        m += 1
    return m


def min_rows_by_bisection(gpu, precision, k, n):
    def bound(m):
        flops, nbytes = roofline.matmul_cost(m, n, k, precision)
        return flops / nbytes >= gpu.dense_tflops[precision] * 1e3 / gpu.bandwidth_gb_s

    if not bound(2**40):
        return None
    lo, hi = 1, 2**40
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if bound(mid) else (mid + 1, hi)
    return np.int64(lo)


@pytest.mark.parametrize("answer", [min_rows, min_rows_by_search, min_rows_by_bisection])
def test_min_rows_accepts_valid_answers(answer, capsys: pytest.CaptureFixture[str]) -> None:
    check("benchmarking-min-rows", answer)
    assert capsys.readouterr().err == ""


def _min_rows_with(**switches):
    return lambda gpu, precision, k, n: _min_rows(gpu, precision, k, n, **switches)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda g, p, k, n: _min_rows(g, p, k, n, bandwidth=g.bandwidth_gb_s * 2**30 / 1e9), "GiB/s"),
        (lambda g, p, k, n: _min_rows(g, p, k, n, bytes_per=2 if p == "tf32" else None), "TF32 stored in 2"),
        (lambda g, p, k, n: _min_rows(g, p, k, n, peak=g.printed_tflops[p]), "2:4 sparsity"),
        (_min_rows_with(flops_per_fma=1), "one FLOP per multiply-add"),
        (_min_rows_with(output=False), "leaving out the result matrix"),
        (_min_rows_with(output=False, inputs=False), "only the weight's bytes"),
        (_min_rows_with(rounding=math.floor), "rounded down"),
        (
            lambda g, p, k, n: min_rows(g, p, k, n) - 0.5 if min_rows(g, p, k, n) else None,
            "whole number of rows",
        ),
        (lambda g, p, k, n: min_rows(g, p, k, n) or 0, "expected None"),
        (lambda g, p, k, n: min_rows(g, p, k, n) + 5 if min_rows(g, p, k, n) else None, "is not right"),
        (lambda g, p, k, n: 1, "is not right|matches a common mistake"),
    ],
)
def test_min_rows_rejects_realistic_mistakes(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("benchmarking-min-rows", wrong)


def test_min_rows_cases_sit_away_from_integer_boundaries() -> None:
    from fractions import Fraction

    for key, precision, k, n in _MIN_ROWS_CASES:
        gpu = datasheets.DATASHEETS[key]
        balance = Fraction(gpu.dense_tflops[precision]) * 10**12 / (Fraction(gpu.bandwidth_gb_s) * 10**9)
        per_row = 2 * k * n - balance * roofline.BYTES[precision] * (k + n)
        if per_row > 0:
            exact = balance * roofline.BYTES[precision] * k * n / per_row
            assert 0.01 < exact - int(exact) < 0.99, (key, precision, k, n)
