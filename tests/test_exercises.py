"""The exercise-check machinery, every chapter's stubs reported as not done, and the checks of getting_started."""

from __future__ import annotations

import pytest
import torch

from mpcourse.course.authoring import chapters
from mpcourse.exercises import ExerciseFailed, NotDoneYet, check, labels, register


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
def test_a_stub_is_not_done_yet(label: str) -> None:
    with pytest.raises(NotDoneYet, match="not done yet"):
        check(label, STUBS.get(label, _stub))


# --- getting_started-tflops -------------------------------------------------------------------


def tflops_reference(m, n, k, seconds):
    return 2 * m * n * k / seconds / 1e12


def test_tflops_accepts_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    check("getting_started-tflops", tflops_reference)
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda m, n, k, s: m * n * k / s / 1e12, "half the right value"),
        (lambda m, n, k, s: 2 * m * n * k / s / 1e9, "factor of 1000"),
        (lambda m, n, k, s: 2 * n**3 / s / 1e12, "not right"),  # assumes square matrices
        (lambda m, n, k, s: 2 * m * n * k * s / 1e12, "not right"),  # multiplies by the time
        (lambda m, n, k, s: 2 * m * n / s / 1e12, "not right"),  # forgets the inner dimension
    ],
)
def test_tflops_rejects_realistic_mistakes(wrong, message: str) -> None:
    with pytest.raises(ExerciseFailed, match=message):
        check("getting_started-tflops", wrong)


# --- getting_started-relative-error -----------------------------------------------------------


def relative_error_reference(result, reference):
    result, reference = result.double(), reference.double()
    return (torch.linalg.norm(result - reference) / torch.linalg.norm(reference)).item()


def test_relative_error_accepts_the_reference_and_a_tensor_result() -> None:
    check("getting_started-relative-error", relative_error_reference)
    check(
        "getting_started-relative-error",
        lambda r, f: torch.linalg.norm(r.double() - f.double()) / torch.linalg.norm(f.double()),
    )


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
            "low precision",
        ),
        (lambda r, f: torch.linalg.norm(r.double() - f.double()).item(), "absolute"),
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
