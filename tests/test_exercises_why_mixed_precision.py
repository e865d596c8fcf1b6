"""The checks of chapter why_mixed_precision: correct answers pass, realistic mistakes fail with a hint."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from mpcourse import gpus
from mpcourse.exercises import ExerciseFailed, check, hints
from mpcourse.exercises.why_mixed_precision import stored_step_profiles

# --- why_mixed_precision-memory ------------------------------------------------------------------

PARAM_BYTES = {"fp32": 4, "amp": 4, "pure_bf16": 2}
ACT_BYTES = {"fp32": 4, "amp": 2, "pure_bf16": 2}


def step_bytes(n, n_mm, acts, recipe):
    copies = 2 * n_mm if recipe == "amp" else 0
    return n * PARAM_BYTES[recipe] * 4 + copies + acts * ACT_BYTES[recipe]


def step_bytes_by_component(n, n_mm, acts, recipe):
    """Another correct solution: component by component, as a float."""
    p = PARAM_BYTES[recipe]
    parts = {
        "weights": n * p,
        "gradients": n * p,
        "moments": 2 * n * p,
        "copies": n_mm * (2 if recipe == "amp" else 0),
        "activations": acts * ACT_BYTES[recipe],
    }
    return float(sum(parts.values()))


@pytest.mark.parametrize("answer", [step_bytes, step_bytes_by_component])
@pytest.mark.filterwarnings("error")  # a correct answer writes nothing to stderr, warnings included
def test_memory_accepts_correct_answers(answer, capsys: pytest.CaptureFixture[str]) -> None:
    check("why_mixed_precision-memory", answer)
    out, err = capsys.readouterr()
    assert "correct" in out and err == ""


def amp_like_pure_bf16(n, n_mm, acts, recipe):
    """The classic mistake: AMP's state counted in 16 bits, as if the parameters were bf16."""
    if recipe == "amp":
        return step_bytes(n, n_mm, acts, "pure_bf16") + 2 * n_mm
    return step_bytes(n, n_mm, acts, recipe)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (amp_like_pure_bf16, "treating AMP like pure bf16"),
        (lambda n, m, a, r: step_bytes(n, m, a, r) - (2 * m if r == "amp" else 0), "16-bit copy"),
        (
            lambda n, m, a, r: step_bytes(n, m, a, r) + ((2 * n - 2 * m) if r == "amp" else 0),
            "every parameter",
        ),
        (lambda n, m, a, r: step_bytes(n, m, a, r) + a * (4 - ACT_BYTES[r]), "activations at 4 bytes"),
        (lambda n, m, a, r: step_bytes(n, m, a, r) - 2 * n * PARAM_BYTES[r], "AdamW's state"),
        (lambda n, m, a, r: step_bytes(n, m, a, r) - n * PARAM_BYTES[r], "one AdamW moment"),
        (lambda n, m, a, r: step_bytes(n, m, a, r) - a * ACT_BYTES[r], "leaving out the activations"),
        (lambda n, m, a, r: step_bytes(n, m, a, r) / 1e9, "in gigabytes"),
        (lambda n, m, a, r: step_bytes(n, m, a, r) / 2**30, "in GiB"),
        (lambda n, m, a, r: step_bytes(n, m, a, r) + (2 * m if r == "pure_bf16" else 0), "under pure bf16"),
        (lambda n, m, a, r: step_bytes(n, m, a, r) - (2 * a if r == "fp32" else 0), "activations in 16 bits"),
        (lambda n, m, a, r: step_bytes(n, m, a, r) - n * PARAM_BYTES[r], "one AdamW moment"),
        (lambda n, m, a, r: str(step_bytes(n, m, a, r)), "expected one number"),
    ],
)
def test_memory_rejects_realistic_mistakes(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("why_mixed_precision-memory", wrong)


def test_memory_hint_teaches_without_giving_the_answer() -> None:
    with pytest.raises(ExerciseFailed) as err:
        check("why_mixed_precision-memory", amp_like_pure_bf16)
    text = str(err.value)
    assert "Hint:" in text and "What dtype are the parameters under AMP?" in text
    assert "16 bytes" not in text  # the hint asks; it does not state the per-parameter total
    assert not any("16 bytes" in step or "* 4" in step for step in hints("why_mixed_precision-memory"))


# --- why_mixed_precision-bound -------------------------------------------------------------------


def bound(flops, nbytes, peak_tflops, bandwidth_gb_s):
    return "compute" if flops / nbytes > peak_tflops * 1e12 / (bandwidth_gb_s * 1e9) else "memory"


def bound_by_time(flops, nbytes, peak_tflops, bandwidth_gb_s):
    """Another correct solution: compare the two lower bounds on the time."""
    return "compute" if flops / (peak_tflops * 1e12) > nbytes / (bandwidth_gb_s * 1e9) else "memory"


@pytest.mark.parametrize("answer", [bound, bound_by_time])
@pytest.mark.filterwarnings("error")
def test_bound_accepts_correct_answers(answer, capsys) -> None:
    check("why_mixed_precision-bound", answer)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda f, b, p, bw: "compute" if f > b else "memory", "without the device's balance point"),
        (lambda f, b, p, bw: "compute" if f / b > p / bw else "memory", "mixing units"),
        (lambda f, b, p, bw: "memory" if bound(f, b, p, bw) == "compute" else "compute", "swapping"),
        (lambda f, b, p, bw: "compute" if f / b > p * 1e12 / (bw * 2**30) else "memory", "GiB/s"),
        (lambda f, b, p, bw: "compute" if b / f > p * 1e12 / (bw * 1e9) else "memory", "upside down"),
        (lambda f, b, p, bw: "compute", "not right"),  # everything on a GPU is compute-bound
        (
            lambda f, b, p, bw: "compute-bound" if bound(f, b, p, bw) == "compute" else "memory-bound",
            "one of the strings",
        ),
    ],
)
def test_bound_rejects_realistic_mistakes(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("why_mixed_precision-bound", wrong)


# --- why_mixed_precision-step-speedup --------------------------------------------------------------

PRODUCTS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm"}


def predict_step_speedup(fp32, bf16):
    step = (fp32["ms"] / fp32["share"]).iloc[0]
    old = fp32.loc[fp32["op"].isin(PRODUCTS), "ms"].sum()
    new = bf16.loc[bf16["op"].isin(PRODUCTS), "ms"].sum()
    return step / (step - old + new)


def predict_with_amdahl(fp32, bf16):
    """Another correct solution: Amdahl's law from the share column, rows matched by name in a loop."""
    share = sum(row.share for row in fp32.itertuples() if row.op.endswith("mm"))
    old = sum(row.ms for row in fp32.itertuples() if row.op.endswith("mm"))
    new = sum(row.ms for row in bf16.itertuples() if row.op.endswith("mm"))
    return 1 / ((1 - share) + share * new / old)


@pytest.mark.parametrize("answer", [predict_step_speedup, predict_with_amdahl])
@pytest.mark.filterwarnings("error")  # a correct answer writes nothing to stderr, warnings included
def test_step_speedup_accepts_correct_answers(answer, capsys) -> None:
    check("why_mixed_precision-step-speedup", answer)
    assert capsys.readouterr().err == ""


def _wrong_prediction(variant):
    def fn(fp32, bf16):
        products = {"aten::mm"} if variant == "only-mm" else set(PRODUCTS)
        if variant == "attention":
            products |= {op for op in set(fp32["op"]) | set(bf16["op"]) if "attention" in op}
        step = fp32["ms"].sum() if variant == "listed" else (fp32["ms"] / fp32["share"]).iloc[0]
        old = fp32.loc[fp32["op"].isin(products), "ms"].sum()
        rows = bf16[bf16["op"].isin(products)]
        if variant == "bf16-rows-only":
            rows = rows[rows["dtypes"] == "bf16"]
        new = rows["ms"].sum()
        share, k = old / step, old / new
        bf16_step = (bf16["ms"] / bf16["share"]).iloc[0]
        return {
            "profile-ratio": step / bf16_step,
            "bf16-share": 1 / ((1 - new / bf16_step) + (new / bf16_step) / k),
            "fraction": (step - old + new) / step,
            "weighted": share * k + (1 - share),
            "k-alone": k,
            "k-inverted": 1 / ((1 - share) + share * k),
            "rest": 1 / (share + (1 - share) / k),
        }.get(variant, step / (step - old + new))

    return fn


@pytest.mark.parametrize(
    "variant, message",
    [
        ("listed", "sum of the rows shown"),
        ("only-mm", "counting only aten::mm"),
        ("attention", "counting attention"),
        ("bf16-rows-only", "fp32 aten::mm row"),
        ("profile-ratio", "ratio of the two profiled steps"),
        ("bf16-share", "share of the bf16 step"),
        ("fraction", "fraction of the old"),
        ("weighted", "averaging the speed-ups"),
        ("k-alone", "speed-up alone"),
        ("k-inverted", "upside down"),
        ("rest", "not matrix products"),
    ],
)
def test_step_speedup_rejects_realistic_mistakes(variant, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("why_mixed_precision-step-speedup", _wrong_prediction(variant))


def test_step_speedup_is_no_longer_amdahl_plugged_in() -> None:
    """Issue 15: the old exercise took (share, speed-up) and asked for Amdahl's formula; the new one takes
    the two profiles, and an answer with the old signature is rejected."""
    with pytest.raises(ExerciseFailed, match="raised"):
        check("why_mixed_precision-step-speedup", lambda f, s: 1 / ((1 - f) + f / s))


def test_step_speedup_prose_numbers_hold_for_the_stored_records() -> None:
    """The solution prose quotes the stored machines' numbers and the H100 bound: they are these."""
    by_status = {p["bf16_status"]: p for p in stored_step_profiles()}
    amx, avx2 = by_status["native"], by_status["emulated"]
    for stored in (amx, avx2):
        assert (
            abs(predict_step_speedup(stored["fp32_kernels"], stored["bf16_kernels"]) / stored["measured"] - 1)
            < 0.1
        )

    def share_and_k(stored):
        fp32, bf16 = stored["fp32_kernels"], stored["bf16_kernels"]
        step = (fp32["ms"] / fp32["share"]).iloc[0]
        old = fp32.loc[fp32["op"].isin(PRODUCTS), "ms"].sum()
        return old / step, old / bf16.loc[bf16["op"].isin(PRODUCTS), "ms"].sum()

    share, k = share_and_k(amx)
    assert round(share, 2) == 0.68 and round(k, 2) == 1.93
    assert (
        round(predict_step_speedup(amx["fp32_kernels"], amx["bf16_kernels"]), 2) == 1.49
        and round(amx["measured"], 2) == 1.42
    )
    _, k = share_and_k(avx2)
    assert abs(1 / k - 40) < 1 and round(1 / avx2["measured"]) == 28
    assert round(predict_step_speedup(avx2["fp32_kernels"], avx2["bf16_kernels"]), 3) == 0.034
    assert round(avx2["measured"], 3) == 0.036
    h100 = next(g for g in gpus.GPUS if g.preset == "h100")
    ratio = h100.dense_tflops["bf16"] / h100.dense_tflops["fp32"]
    assert round(ratio) == 15 and round(1 / (0.25 + 0.75 / ratio), 1) == 3.3


def test_step_speedup_tables_are_what_the_profiler_gives() -> None:
    """The check's profiles have the profiler's columns, and their shares are of the whole step."""
    fp32 = stored_step_profiles()[0]["fp32_kernels"]
    assert {"op", "ms", "share"} <= set(fp32.columns) and isinstance(fp32, pd.DataFrame)
    assert fp32["share"].sum() < 1  # only the longest rows are kept


# --- why_mixed_precision-energy --------------------------------------------------------------------


def breakeven(d_in, d_out, b, e_fma, e_byte):
    gain = d_in * d_out * e_fma - (d_in + d_out) * b * e_byte
    return d_in * d_out * b * e_byte / gain if gain > 0 else math.inf


def breakeven_by_search(d_in, d_out, b, e_fma, e_byte):
    """Another correct solution: bisect on m for the point where the two energies are equal."""

    def excess(m):  # arithmetic minus memory energy
        return m * d_in * d_out * e_fma - (m * d_in + d_in * d_out + m * d_out) * b * e_byte

    if excess(1e15) <= 0:
        return math.inf
    lo, hi = 0.0, 1e15
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if excess(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


def _without_y(d_in, d_out, b, e_fma, e_byte):
    gain = d_in * d_out * e_fma - d_in * b * e_byte
    return d_in * d_out * b * e_byte / gain if gain > 0 else math.inf


@pytest.mark.parametrize("answer", [breakeven, breakeven_by_search])
@pytest.mark.filterwarnings("error")
def test_energy_accepts_correct_answers(answer, capsys) -> None:
    check("why_mixed_precision-energy", answer)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda d_in, d_out, b, ef, eb: breakeven(d_in, d_out, b, 2 * ef, eb), "2 \\* m \\* d_in \\* d_out"),
        (lambda d_in, d_out, b, ef, eb: breakeven(d_in, d_out, 8 * b, ef, eb), "bits instead of bytes"),
        (lambda d_in, d_out, b, ef, eb: b * eb / ef, "only the weights"),
        (lambda d_in, d_out, b, ef, eb: 0.0, "only the activations"),
        (
            lambda d_in, d_out, b, ef, eb: (
                d_in * d_out * b * eb / (d_in * d_out * ef - (d_in + d_out) * b * eb)
            ),
            "negative",
        ),
        (
            lambda d_in, d_out, b, ef, eb: (
                float(math.ceil(breakeven(d_in, d_out, b, ef, eb)))
                if math.isfinite(breakeven(d_in, d_out, b, ef, eb))
                else math.inf
            ),
            "whole number of rows",
        ),
        (lambda d_in, d_out, b, ef, eb: _without_y(d_in, d_out, b, ef, eb), "leaving out the output y"),
        (lambda d_in, d_out, b, ef, eb: math.inf, "reading W once per row"),
        (
            lambda d_in, d_out, b, ef, eb: breakeven(d_in, d_out, b, ef, eb) * 1e-12,
            "not right",
        ),  # joules mixed in
    ],
)
def test_energy_rejects_realistic_mistakes(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("why_mixed_precision-energy", wrong)


# --- hints: ladders that teach without the answer (issue 15) ------------------------------------------


@pytest.mark.parametrize(
    "label, leaks",
    [
        ("why_mixed_precision-memory", ["* 4", "16 bytes"]),
        ("why_mixed_precision-bound", ["flops / nbytes >", "peak_tflops * 1e12 / (bandwidth_gb_s * 1e9)"]),
        ("why_mixed_precision-step-speedup", ["1 / ((1 - ", "step / (step - old + new)"]),
        ("why_mixed_precision-energy", ["d_in * d_out * pj_per_fma - ", "/ per_row_gain"]),
    ],
)
def test_hint_ladders_do_not_contain_the_formula(label, leaks) -> None:
    ladder = hints(label)
    assert 2 <= len(ladder) <= 4
    assert not [leak for leak in leaks for step in ladder if leak in step]
