"""The checks of chapter training_performance: reference solutions and valid alternatives pass, realistic
mistakes fail."""

from __future__ import annotations

import statistics

import pytest

from mpcourse.bench import datasheets
from mpcourse.exercises import ExerciseFailed, check, hints, labels
from mpcourse.exercises.training_performance import PRODUCT_OPS, checkpoint_steps, kernel_tables, step_log


def test_the_chapter_has_these_exercises() -> None:
    assert labels("training_performance") == [
        "training_performance-bf16-products",
        "training_performance-hfu",
        "training_performance-mfu",
        "training_performance-step-flops",
    ]
    for label in labels("training_performance"):
        assert 2 <= len(hints(label)) <= 4, label


# --- training_performance-mfu -------------------------------------------------------------------------


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
    check("training_performance-mfu", answer)
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
        check("training_performance-mfu", wrong)


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
        check("training_performance-mfu", _with_step(lambda s: s[index]))


# --- training_performance-step-flops --------------------------------------------------------------


def step_flops(n_params, layers, width, seq_len, tokens):
    return (6 * n_params + 12 * layers * width * seq_len) * tokens


def step_flops_by_parts(n_params, layers, width, seq_len, tokens):
    forward = 2 * n_params + layers * 2 * (2 * seq_len * width)  # weights, then QK^T and the weighted sum
    return 3 * forward * tokens  # the backward pass costs twice the forward


def step_flops_per_layer(n_params, layers, width, seq_len, tokens):
    total = 6.0 * n_params * tokens
    for _ in range(layers):
        for _product in ("scores", "weighted sum"):
            total += 3 * 2 * seq_len * width * tokens
    return total


@pytest.mark.parametrize("answer", [step_flops, step_flops_by_parts, step_flops_per_layer])
def test_step_flops_accepts_valid_counts(answer, capsys: pytest.CaptureFixture[str]) -> None:
    check("training_performance-step-flops", answer)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda n, nl, d, t, tok: 6 * n * tok, "6NT alone"),
        (lambda n, nl, d, t, tok: (6 * n + 4 * nl * d * t) * tok, "forward pass only"),
        (lambda n, nl, d, t, tok: (6 * n + 6 * nl * d * t) * tok, "half the attention term"),
        (lambda n, nl, d, t, tok: (6 * n + 24 * nl * d * t) * tok, "attention twice over"),
        (lambda n, nl, d, t, tok: (6 * n + 12 * nl * d * t * t) * tok, "square of the sequence length"),
        (lambda n, nl, d, t, tok: 6 * n * tok + 12 * nl * d * tok, "once per sequence"),
        (lambda n, nl, d, t, tok: (2 * n + 4 * nl * d * t) * tok, "the forward pass only"),
        (lambda n, nl, d, t, tok: 6 * n + 12 * nl * d * t, "per token instead of per step"),
        (lambda n, nl, d, t, tok: (3 * n + 6 * nl * d * t) * tok, "multiply-adds"),
        (lambda n, nl, d, t, tok: (6 * n + 12 * nl * d * t) * tok * 1.1, "not right|not close"),
        (lambda n, nl, d, t, tok: "6NT", "expected one number"),
    ],
)
def test_step_flops_rejects_realistic_mistakes(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("training_performance-step-flops", wrong)


# --- training_performance-hfu ---------------------------------------------------------------------


def mfu_hfu(n_params, layers, width, seq_len, tokens, step_seconds, gpu, precision, recompute):
    weights, attention = 2 * n_params * tokens, 4 * layers * width * seq_len * tokens  # forward FLOPs
    model = 3 * (weights + attention)
    rerun = {"none": 0, "selective": attention, "full": weights + attention}[recompute]
    peak = gpu.dense_tflops[precision] * 1e12
    return model / step_seconds / peak, (model + rerun) / step_seconds / peak


def mfu_hfu_by_ratio(n_params, layers, width, seq_len, tokens, step_seconds, gpu, precision, recompute):
    per_token = 6 * n_params + 12 * layers * width * seq_len
    extra = {"none": 0.0, "selective": 4 * layers * width * seq_len}.get(recompute, per_token / 3)
    mfu = per_token * tokens / step_seconds / (gpu.peak_tflops(precision) * 1e12)
    return [mfu, mfu * (per_token + extra) / per_token]


@pytest.mark.parametrize("answer", [mfu_hfu, mfu_hfu_by_ratio])
def test_hfu_accepts_valid_answers(answer, capsys: pytest.CaptureFixture[str]) -> None:
    check("training_performance-hfu", answer)
    assert capsys.readouterr().err == ""


def _changed(mfu_factor=1.0, hfu_factor=1.0, rerun=None, swap=False, peak=None):
    """The reference answer with one realistic change."""

    def answer(n, nl, d, t, tok, s, gpu, p, recompute):
        weights, attention = 2 * n * tok, 4 * nl * d * t * tok
        model = 3 * (weights + attention)
        reference = {"none": 0, "selective": attention, "full": weights + attention}[recompute]
        extra = rerun(recompute, weights, attention) if rerun else reference
        top = (peak(gpu, p) if peak else gpu.dense_tflops[p]) * 1e12
        pair = (model / s / top * mfu_factor, (model + extra) / s / top * hfu_factor)
        return pair[::-1] if swap else pair

    return answer


@pytest.mark.parametrize(
    "wrong, message",
    [
        (_changed(rerun=lambda r, w, a: 0), "HFU equal to the MFU"),
        (_changed(rerun=lambda r, w, a: 0 if r == "none" else 3 * (w + a)), "whole extra step"),
        (_changed(rerun=lambda r, w, a: 0 if r == "none" else w), "rerun attention forgotten"),
        (
            _changed(rerun=lambda r, w, a: 0 if r == "none" else w + a),
            "selective recomputation counted as full",
        ),
        (_changed(rerun=lambda r, w, a: 0 if r == "none" else a), "full recomputation counted as selective"),
        (_changed(rerun=lambda r, w, a: w + a), "recompute is 'none'"),
        (_changed(swap=True), "recomputed FLOPs counted in the MFU"),
        (_changed(mfu_factor=100, hfu_factor=100), "percentage"),
        (_changed(mfu_factor=1e12, hfu_factor=1e12), "TFLOP/s"),
        (_changed(peak=lambda gpu, p: gpu.printed_tflops[p]), "2:4 sparsity"),
        (lambda *args: 0.5, "expected a pair"),
        (lambda *args: ("40%", "45%"), "expected one number"),
    ],
)
def test_hfu_rejects_realistic_mistakes(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("training_performance-hfu", wrong)


def test_the_hfu_runs_are_plausible() -> None:
    from mpcourse.exercises import training_performance as tp

    for index, seconds, key, precision, recompute in tp._HFU_RUNS:
        model = tp._MODELS[index]
        peak = datasheets.DATASHEETS[key].dense_tflops[precision] * 1e12
        assert (
            0
            < tp.model_step_flops(*model) / seconds / peak
            <= tp.hardware_step_flops(*model, recompute) / seconds / peak
            < 1
        )
    assert {run[4] for run in tp._HFU_RUNS} == {"none", "selective", "full"}


# --- training_performance-bf16-products -------------------------------------------------------------


def bf16_product_share(table):
    is_product = table["op"].isin(PRODUCT_OPS)
    in_bf16 = table["dtypes"].map(lambda d: set(d.split()) == {"bf16"})
    return table.loc[is_product & in_bf16, "ms"].sum() / table["ms"].sum()


def bf16_product_share_by_rows(table):
    total = chosen = 0.0
    for row in table.itertuples(index=False):
        total += row.ms
        if row.op in ("aten::mm", "aten::addmm", "aten::bmm") and all(
            d == "bf16" for d in row.dtypes.split()
        ):
            chosen += row.ms
    return chosen / total


def bf16_product_share_no_fp32(table):  # a product none of whose inputs is fp32 (the tables have no fp16)
    mask = table["op"].str.endswith(("::mm", "::addmm", "::bmm")) & ~table["dtypes"].str.contains("fp32")
    return float(table.loc[mask, "ms"].sum() / table["ms"].sum())


@pytest.mark.parametrize(
    "answer", [bf16_product_share, bf16_product_share_by_rows, bf16_product_share_no_fp32]
)
def test_bf16_products_accepts_valid_answers(answer, capsys: pytest.CaptureFixture[str]) -> None:
    check("training_performance-bf16-products", answer)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "wrong, message",
    [
        (
            lambda t: (
                t.loc[
                    t["op"].isin(PRODUCT_OPS) & (t["dtypes"].str.split().map(set) == {"bf16"}), "calls"
                ].sum()
                / t["calls"].sum()
            ),
            "calls, not time",
        ),
        (lambda t: t.loc[t["name"].str.contains("bf16"), "ms"].sum() / t["ms"].sum(), "in their name"),
        (
            lambda t: t.loc[t["dtypes"].str.contains("bf16"), "ms"].sum() / t["ms"].sum(),
            "casts and elementwise",
        ),
        (lambda t: t.loc[t["op"].isin(PRODUCT_OPS), "ms"].sum() / t["ms"].sum(), "whatever its dtype"),
        (
            lambda t: bf16_product_share(t) * t["ms"].sum() / t.loc[t["op"].isin(PRODUCT_OPS), "ms"].sum(),
            "products' time",
        ),
        (lambda t: 100 * bf16_product_share(t), "percentage"),
        (lambda t: bf16_product_share(t) * 0.9, "not close|not right"),
        (lambda t: "68%", "expected one number"),
    ],
)
def test_bf16_products_rejects_realistic_mistakes(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("training_performance-bf16-products", wrong)


def test_the_kernel_tables_have_the_profilers_columns() -> None:
    for table in kernel_tables().values():
        assert list(table.columns) == ["name", "op", "dtypes", "calls", "ms"]
