"""The exercise-check machinery, every chapter's stubs reported as not done, and the checks of getting_started."""

from __future__ import annotations

import pytest
import torch

from mpcourse import exercises
from mpcourse.course.authoring import chapters
from mpcourse.exercises import (
    GRADING_ENV,
    HINTS_ENV,
    ExerciseFailed,
    NotDoneYet,
    check,
    expect_close,
    hint,
    hints,
    labels,
    plural,
    register,
)


def test_failures_are_assertion_errors() -> None:
    assert issubclass(ExerciseFailed, AssertionError)
    assert issubclass(NotDoneYet, ExerciseFailed)


def test_labels_must_name_the_chapter() -> None:
    with pytest.raises(ValueError, match="<chapter slug>-<name>"):
        register("nochapter")


def test_unknown_label_lists_the_chapter_exercises() -> None:
    with pytest.raises(KeyError, match="getting_started-tflops"):
        check("getting_started-nonexistent", lambda: None)


def test_unknown_chapter() -> None:
    with pytest.raises(KeyError, match="no checks exist for chapter 'nochapter'"):
        check("nochapter-x", lambda: None)


def test_a_non_function_answer_is_rejected_clearly() -> None:
    with pytest.raises(ExerciseFailed, match="expected a function"):
        check("getting_started-tflops", 42.0)


def test_errors_in_the_learners_code_are_reported_as_failures() -> None:
    with pytest.raises(ExerciseFailed, match="ZeroDivisionError"):
        check("getting_started-tflops", lambda m, n, k, s: 1 / 0)


class _StubScaler:
    """The student version of loss_scaling's scaler: the constructor works, every method is a stub."""

    def __init__(self, init_scale: float = 2.0**16, **_: float) -> None:
        self.s = init_scale

    def scale(self, *args):
        raise NotImplementedError()

    unscale_ = step = update = scale

    def get_scale(self) -> float:
        return self.s


def _stub(*args, **kwargs):
    raise NotImplementedError()


# The answer each exercise's check receives in a student notebook whose solution is still a stub.
STUBS = {"loss_scaling-dynamic-scaler": _StubScaler}
EVERY_LABEL = [label for md in chapters() for label in labels(md.stem)]


def test_every_chapter_has_checks() -> None:
    assert {label.partition("-")[0] for label in EVERY_LABEL} == {md.stem for md in chapters()}


@pytest.mark.parametrize("label", EVERY_LABEL)
def test_a_stub_is_noted_not_done_and_the_notebook_goes_on(
    label: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(GRADING_ENV, raising=False)
    check(label, STUBS.get(label, _stub))  # no exception: "Run all" reaches the next cell
    out, err = capsys.readouterr()
    assert "not done yet" in err and label in err and "correct" not in out


@pytest.mark.parametrize("label", EVERY_LABEL)
def test_a_stub_fails_when_grading(label: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(GRADING_ENV, "1")
    with pytest.raises(NotDoneYet, match="not done yet"):
        check(label, STUBS.get(label, _stub))


def test_grading_and_hint_switches_reject_what_they_do_not_understand(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(GRADING_ENV, "maybe")
    with pytest.raises(ValueError, match="MPCOURSE_GRADING='maybe' is not understood"):
        check("getting_started-tflops", _stub)


# --- hints: a ladder per exercise, never the answer -------------------------------------------------


@pytest.mark.parametrize("label", EVERY_LABEL)
def test_every_exercise_has_a_ladder_of_hints(label: str) -> None:
    ladder = hints(label)
    assert 2 <= len(ladder) <= 4, f"{label} has {len(ladder)} hints; give 2 to 4, gentlest first"
    assert len(set(ladder)) == len(ladder) and all(len(step) > 20 for step in ladder)


def _solution_code() -> dict[str, list[str]]:
    """Each label's reference-solution lines that carry content (at least 12 characters once stripped)."""
    import nbformat

    from mpcourse.course.student import solution_lines

    found: dict[str, list[str]] = {}
    for md in chapters():
        nb = nbformat.read(md.with_suffix(".ipynb"), as_version=4)
        label = None
        for cell in nb.cells:
            if cell.cell_type == "markdown" and ":label:" in cell.source:
                label = cell.source.split(":label:")[1].split()[0]
            elif cell.cell_type == "code" and label:
                lines = [line.strip() for line in solution_lines(cell.source)]
                found.setdefault(label, []).extend(
                    line for line in lines if len(line) >= 12 and not line.startswith("#")
                )
    return found


SOLUTION_CODE = _solution_code()


@pytest.mark.parametrize("label", EVERY_LABEL)
def test_no_hint_contains_a_line_of_the_solution(label: str) -> None:
    def squash(text: str) -> str:
        return "".join(text.split())

    text = squash(" ".join(hints(label)))
    leaked = [line for line in SOLUTION_CODE.get(label, []) if squash(line) in text]
    assert not leaked, f"the hints of {label} contain solution code: {leaked}"


def test_hint_walks_down_the_ladder_and_stops_at_the_last(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(HINTS_ENV, raising=False)
    monkeypatch.setattr(exercises, "_HINTS_SHOWN", {})
    label = "getting_started-relative-error"
    ladder = hints(label)
    for step in [*ladder, ladder[-1]]:
        hint(label)
        out = capsys.readouterr().out
        assert " ".join(step.split()) in " ".join(out.split())
        assert max(len(line) for line in out.splitlines()[1:]) <= 88
    monkeypatch.setenv(HINTS_ENV, "off")
    hint(label)
    assert "switched off" in capsys.readouterr().out


def test_hints_off_leaves_only_what_was_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    def half(m, n, k, s):
        return m * n * k / s / 1e12

    with pytest.raises(ExerciseFailed) as with_hints:
        check("getting_started-tflops", half)
    assert "Hint:" in str(with_hints.value) and 'hint("getting_started-tflops")' in str(with_hints.value)
    monkeypatch.setenv(HINTS_ENV, "off")
    with pytest.raises(ExerciseFailed, match="half the right value") as without:
        check("getting_started-tflops", half)
    assert "Hint" not in str(without.value) and "hint(" not in str(without.value)


def test_counts_in_messages_are_plural_only_when_more_than_one() -> None:
    assert plural(1, "parameter") == "1 parameter" and plural(3, "parameter") == "3 parameters"
    assert plural(2, "entry", "entries") == "2 entries"
    with pytest.raises(ExerciseFailed, match="differing at 1 place,"):
        expect_close("getting_started-x", [1.0, 2.0], [1.0, 3.0], rtol=0, case="a case", hint="h")


def test_a_registered_ladder_must_be_several_strings() -> None:
    with pytest.raises(TypeError, match="sequence of strings"):
        register("getting_started-one-string", hints="a single string")


# --- getting_started-tflops -------------------------------------------------------------------


def tflops_reference(m, n, k, seconds):
    return 2 * m * n * k / seconds / 1e12


def test_tflops_accepts_the_reference_and_other_ways_to_write_it(capsys: pytest.CaptureFixture[str]) -> None:
    check("getting_started-tflops", tflops_reference)
    check("getting_started-tflops", lambda m, n, k, s: 2.0 * m * n * k / (s * 1e12))
    check(
        "getting_started-tflops",
        lambda m, n, k, s: torch.tensor(2 * m * n * k, dtype=torch.float64) / s * 1e-12,
    )
    out = capsys.readouterr()
    assert out.out.count("correct") == 3 and out.err == ""


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda m, n, k, s: m * n * k / s / 1e12, "half the right value"),
        (lambda m, n, k, s: m * n * (2 * k - 1) / s / 1e12, r"m\*n\*\(2k-1\)"),
        (lambda m, n, k, s: 2 * m * n * k / s / 1e9, "GFLOP/s"),
        (lambda m, n, k, s: 2 * m * n * k / (s * 1e3) / 1e12, "1000 times too low"),
        (lambda m, n, k, s: 2 * m * n * k / s / 2**40, "2\\^40"),
        (lambda m, n, k, s: 2 * n**3 / s / 1e12, "assumed square matrices"),
        (lambda m, n, k, s: 2 * m * n * k * s / 1e12, "multiplied by the time"),
        (lambda m, n, k, s: 2 * m * n / s / 1e12, "left out the inner dimension"),
        (lambda m, n, k, s: 2 * m * n * k // s // 10**12, "not right"),  # floor division
        (lambda m, n, k, s: f"{2 * m * n * k / s / 1e12:.3f} TFLOP/s", "not a number"),
    ],
)
def test_tflops_rejects_realistic_mistakes(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("getting_started-tflops", wrong)


# --- getting_started-relative-error -----------------------------------------------------------


def relative_error_reference(result, reference):
    result, reference = result.double(), reference.double()
    return (torch.linalg.norm(result - reference) / torch.linalg.norm(reference)).item()


def relative_error_in_numpy(result, reference):
    import numpy as np

    r, f = result.double().numpy(), reference.double().numpy()
    return float(np.sqrt(((r - f) ** 2).sum() / (f**2).sum()))


def test_relative_error_accepts_the_reference_and_other_methods(capsys: pytest.CaptureFixture[str]) -> None:
    check("getting_started-relative-error", relative_error_reference)
    check(
        "getting_started-relative-error",
        lambda r, f: torch.linalg.norm(r.double() - f.double()) / torch.linalg.norm(f.double()),
    )
    check("getting_started-relative-error", relative_error_in_numpy)
    check(
        "getting_started-relative-error",
        lambda r, f: (torch.dist(r.double(), f.double()) / f.double().norm()).item(),
    )
    out = capsys.readouterr()
    assert out.out.count("correct") == 4 and out.err == ""


def _no_conversion(r, f):
    return (torch.linalg.norm(r - f) / torch.linalg.norm(f)).item()


@pytest.mark.parametrize(
    "wrong, message",
    [
        (
            lambda r, f: (torch.linalg.norm(r.double() - f.double()) / torch.linalg.norm(r.double())).item(),
            "norm of the result",
        ),
        (
            lambda r, f: ((r.double() - f.double()).abs() / f.double().abs()).mean().item(),
            "mean of element-wise",
        ),
        (
            lambda r, f: ((r.double() - f.double()).abs() / f.double().abs()).max().item(),
            "largest element-wise",
        ),
        (
            lambda r, f: (
                torch.linalg.norm((r - f.to(r.dtype)).float()) / torch.linalg.norm(f.float())
            ).item(),
            "difference computed in bfloat16",
        ),
        (  # float32 instead of float64: caught on the fp32 product
            lambda r, f: (torch.linalg.norm(r.float() - f.float()) / torch.linalg.norm(f.float())).item(),
            "fp32 product .* difference computed in float32",
        ),
        (lambda r, f: torch.linalg.norm(r.double() - f.double()).item(), "absolute"),
        (
            lambda r, f: (((r.double() - f.double()) ** 2).sum() / (f.double() ** 2).sum()).item(),
            "squared norms",
        ),
        (_no_conversion, "bf16 reference .* norms computed in bfloat16"),
        (
            lambda r, f: (
                torch.linalg.norm(r.double() - f.double(), ord=2).item()
                / torch.linalg.norm(f.double(), ord=2).item()
            ),
            "not right",
        ),
        (lambda r, f: torch.ones(2), "shape"),
    ],
)
def test_relative_error_rejects_realistic_mistakes(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("getting_started-relative-error", wrong)


def test_relative_error_catches_a_norm_that_overflows_in_fp16() -> None:
    """Without conversion, the fp16 reference's norm (about 2.4e5) overflows to inf: the answer is 0."""

    def no_conversion_except_bf16(r, f):
        if r.dtype == torch.bfloat16:
            return relative_error_reference(r, f)
        return _no_conversion(r, f)

    with pytest.raises(ExerciseFailed, match="fp16 activations .* norms computed in float16.*overflows"):
        check("getting_started-relative-error", no_conversion_except_bf16)
