"""The checks of chapter benchmarking: reference solutions and valid alternatives pass, realistic mistakes fail."""

from __future__ import annotations

import statistics

import pytest

from mpcourse.bench import roofline
from mpcourse.exercises import ExerciseFailed, check, hints, labels
from mpcourse.exercises.benchmarking import _matmul_devices, checkpoint_steps, simulated_matmul_gpu, step_log


def test_the_chapter_has_these_exercises() -> None:
    assert labels("benchmarking") == [
        "benchmarking-fair-speedup",
        "benchmarking-mfu",
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


# --- benchmarking-mfu -------------------------------------------------------------------------


def mfu(step_seconds, n_params, tokens_per_step, gpu, precision):
    peak = gpu.dense_tflops.get(precision)
    if peak is None:
        return None
    return 6 * n_params * tokens_per_step / statistics.median(step_seconds) / (peak * 1e12)


def mfu_trimmed_mean(step_seconds, n_params, tokens_per_step, gpu, precision):
    if gpu.peak_tflops(precision) is None:
        return None
    ordered = sorted(step_seconds)
    cut = len(ordered) // 10  # a tenth off each end: the warm-up and the checkpoint saves go
    steady = ordered[cut : len(ordered) - cut]
    flops_per_s = 6 * n_params * tokens_per_step * len(steady) / sum(steady)
    return flops_per_s / (gpu.peak_tflops(precision) * 1e12)


def mfu_mean_without_outliers(step_seconds, n_params, tokens_per_step, gpu, precision):
    if precision not in gpu.dense_tflops:
        return None
    median = statistics.median(step_seconds)
    steady = [t for t in step_seconds if abs(t / median - 1) < 0.3]
    return 6 * n_params * tokens_per_step / statistics.fmean(steady) / gpu.dense_tflops[precision] / 1e12


def mfu_median_low_after_warmup(step_seconds, n_params, tokens_per_step, gpu, precision):
    if (
        precision not in gpu.dense_tflops
    ):  # median_low is one step's time, the middle one: that one is typical
        return None
    typical = statistics.median_low(step_seconds[5:])
    return 6 * n_params * tokens_per_step / typical / gpu.dense_tflops[precision] / 1e12


@pytest.mark.parametrize(
    "answer", [mfu, mfu_trimmed_mean, mfu_mean_without_outliers, mfu_median_low_after_warmup]
)
def test_mfu_accepts_valid_answers(answer, capsys: pytest.CaptureFixture[str]) -> None:
    check("benchmarking-mfu", answer)
    assert capsys.readouterr().err == ""


def _with_step(summary):
    def answer(step_seconds, n_params, tokens_per_step, gpu, precision):
        if precision not in gpu.dense_tflops:
            return None
        return 6 * n_params * tokens_per_step / summary(step_seconds) / (gpu.dense_tflops[precision] * 1e12)

    return answer


def _with_peak(peak_of):
    def answer(step_seconds, n_params, tokens_per_step, gpu, precision):
        if precision not in gpu.dense_tflops:
            return None
        return (
            6
            * n_params
            * tokens_per_step
            / statistics.median(step_seconds)
            / (peak_of(gpu, precision) * 1e12)
        )

    return answer


@pytest.mark.parametrize(
    "wrong, message",
    [
        (_with_step(statistics.fmean), "mean of every step"),
        (_with_step(lambda s: statistics.fmean(s[1:])), "mean of the steps after the first"),
        # used to pass: the log had +-1% jitter and no slow step after the warm-up
        (_with_step(min), "fastest step's time: steady steps vary by a few percent"),
        (_with_step(lambda s: s[-1]), "last step's time: the run ends by saving a checkpoint"),
        (_with_step(lambda s: s[10]), r"the time of a single step, step 11 of the log"),
        (_with_step(lambda s: min(s[5:])), "fastest step's time"),
        (
            _with_step(lambda s: statistics.fmean(s[3:])),
            "after the warm-up, the slow steps that save a checkpoint",
        ),
        (
            _with_step(lambda s: statistics.fmean(s[10:])),
            r"after the first 10, the slow steps that save a checkpoint",
        ),
        (_with_step(lambda s: s[0]), "first step's time"),
        (_with_step(sum), "whole run"),
        (_with_peak(lambda gpu, p: gpu.printed_tflops[p]), "2:4 sparsity"),
        (_with_peak(lambda gpu, p: gpu.dense_tflops["fp32"]), "the fp32 peak"),
        (
            lambda s, n, t, g, p: mfu(s, n, t, g, p) / 3 if p in g.dense_tflops else None,
            "only the forward pass",
        ),
        (lambda s, n, t, g, p: mfu(s, n, t, g, p) * 100 if p in g.dense_tflops else None, "percentage"),
        (
            lambda s, n, t, g, p: 6 * n * t / statistics.median(s) / (g.dense_tflops[p] * 1e12),
            r"KeyError: 'bf16'. The NVIDIA V100",
        ),
        (lambda s, n, t, g, p: mfu(s, n, t, g, p) or 0.0, r"V100 SXM2 32GB has no bf16 units.*expected None"),
        (lambda s, n, t, g, p: "12%", "expected one number"),
    ],
)
def test_mfu_rejects_realistic_mistakes(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("benchmarking-mfu", wrong)


def test_step_logs_are_reproducible_and_start_slow() -> None:
    assert step_log(0.05, seed=1) == step_log(0.05, seed=1)
    log = step_log(0.05, seed=1)
    assert log[0] > 10 * statistics.median(log) and abs(statistics.median(log) / 0.05 - 1) < 0.01


def test_step_logs_jitter_and_save_checkpoints() -> None:
    log = step_log(0.05, seed=1)
    assert checkpoint_steps(60) == [29, 59]  # the last step saves one
    steady = [t for i, t in enumerate(log[3:], 3) if i not in checkpoint_steps(60)]
    assert all(log[i] > 5 * max(steady) for i in checkpoint_steps(60))
    assert min(steady) < 0.92 * statistics.median(log) and max(steady) > 1.08 * statistics.median(log)


@pytest.mark.parametrize("index", range(60))
def test_mfu_rejects_any_single_step(index: int) -> None:
    with pytest.raises(ExerciseFailed, match="single step|fastest step's|first step's|last step's"):
        check("benchmarking-mfu", _with_step(lambda s: s[index]))
