"""The checks of chapter why_mixed_precision: correct answers pass, realistic mistakes fail with a hint."""

from __future__ import annotations

import math

import pytest

from mpcourse.exercises import ExerciseFailed, check

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
def test_memory_accepts_correct_answers(answer, capsys: pytest.CaptureFixture[str]) -> None:
    check("why_mixed_precision-memory", answer)
    assert "correct" in capsys.readouterr().out


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
        (lambda n, m, a, r: step_bytes(n, m, a, r) / 1e9, "not right"),  # gigabytes instead of bytes
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


# --- why_mixed_precision-bound -------------------------------------------------------------------


def bound(flops, nbytes, peak_tflops, bandwidth_gb_s):
    return "compute" if flops / nbytes > peak_tflops * 1e12 / (bandwidth_gb_s * 1e9) else "memory"


def bound_by_time(flops, nbytes, peak_tflops, bandwidth_gb_s):
    """Another correct solution: compare the two lower bounds on the time."""
    return "compute" if flops / (peak_tflops * 1e12) > nbytes / (bandwidth_gb_s * 1e9) else "memory"


@pytest.mark.parametrize("answer", [bound, bound_by_time])
def test_bound_accepts_correct_answers(answer) -> None:
    check("why_mixed_precision-bound", answer)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda f, b, p, bw: "compute" if f > b else "memory", "without the device's balance point"),
        (lambda f, b, p, bw: "compute" if f / b > p / bw else "memory", "mixing units"),
        (lambda f, b, p, bw: "memory" if bound(f, b, p, bw) == "compute" else "compute", "swapping"),
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


def step_speedup(f, s):
    return 1 / ((1 - f) + f / s)


def step_speedup_from_times(f, s, old_step=1.0):
    """Another correct solution: with times instead of fractions."""
    new_step = old_step * (1 - f) + old_step * f / s
    return old_step / new_step


@pytest.mark.parametrize("answer", [step_speedup, step_speedup_from_times])
def test_step_speedup_accepts_correct_answers(answer) -> None:
    check("why_mixed_precision-step-speedup", answer)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda f, s: (1 - f) + f / s, "fraction of the old"),
        (lambda f, s: f * s + (1 - f), "averaging the speed-ups"),
        (lambda f, s: s, "matmul speed-up alone"),
        (lambda f, s: 1 / (1 - f) if f < 1 else math.inf, "infinitely fast"),
        (lambda f, s: 1 / (f + (1 - f) / s), "not matrix products"),
        (lambda f, s: 1 / ((1 - f) + f * s), "not right"),  # multiplies instead of dividing
    ],
)
def test_step_speedup_rejects_realistic_mistakes(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("why_mixed_precision-step-speedup", wrong)


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


@pytest.mark.parametrize("answer", [breakeven, breakeven_by_search])
def test_energy_accepts_correct_answers(answer) -> None:
    check("why_mixed_precision-energy", answer)


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
            lambda d_in, d_out, b, ef, eb: breakeven(d_in, d_out, b, ef, eb) * 1e-12,
            "not right",
        ),  # joules mixed in
    ],
)
def test_energy_rejects_realistic_mistakes(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("why_mixed_precision-energy", wrong)
