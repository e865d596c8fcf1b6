"""Automatic checks for the course's exercises, with hints that come one step at a time.

Every exercise has a label (the sphinx-exercise label in the chapter, ``<chapter slug>-<name>``)
and a check registered under it, with a ladder of hints. A chapter's check cell reads::

    check("getting_started-tflops", matmul_tflops)

and does one of three things:

- a correct answer prints a short confirmation;
- a wrong one raises :class:`ExerciseFailed`, an ``AssertionError`` subclass, so that graders
  (nbgrader, pytest, nbval) see a failure. Its message says what was wrong and on which input,
  with a first hint that points at the mistake without giving the answer;
- an unanswered one (the learner's function still raises ``NotImplementedError``, the stub of
  student notebooks) prints a "not done yet" note on standard error and returns, so that "Run all"
  goes through the whole chapter and the learner can come back to the exercises. nbgrader gives
  no points to a test cell that wrote to standard error, so a grader still sees the failure; with
  ``MPCOURSE_GRADING=1`` in the environment the note is raised instead, as :class:`NotDoneYet`,
  for graders that only count exceptions.

``hint(label)`` shows the next step of the exercise's ladder: the first steps say where to look,
the last ones come close to the method, none is the answer. An instructor switches hints off
for graded work with ``MPCOURSE_HINTS=off``: failures then say only what was wrong.

The checks for chapter ``slug`` live in ``mpcourse.exercises.<slug>`` and are imported on first use:
``check(label, ...)`` finds any chapter's check without that module having been imported before.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Check = Callable[..., None]

GRADING_ENV = "MPCOURSE_GRADING"
HINTS_ENV = "MPCOURSE_HINTS"


@dataclass(frozen=True)
class Exercise:
    """A registered exercise: its check and its hints, from the gentlest to the most specific."""

    label: str
    check: Check
    hints: tuple[str, ...]


_REGISTRY: dict[str, Exercise] = {}
_HINTS_SHOWN: dict[str, int] = {}


class ExerciseFailed(AssertionError):
    """An answer was checked and is wrong; the message explains what was checked and gives a hint."""


class NotDoneYet(ExerciseFailed):
    """The answer still raises ``NotImplementedError``: the exercise has not been attempted."""


def register(label: str, *, hints: Sequence[str] = ()) -> Callable[[Check], Check]:
    """Register ``fn`` as the check of exercise ``label`` (``<chapter slug>-<name>``).

    ``hints`` is the ladder :func:`hint` walks down, one step per call: start with where to look
    and what to compare, end with the method, and never write the solution itself.
    """
    _split_label(label)
    if isinstance(hints, str):
        raise TypeError(f"hints for {label!r} must be a sequence of strings, not one string")

    def decorator(fn: Check) -> Check:
        if label in _REGISTRY:
            raise ValueError(f"a check for exercise {label!r} is already registered")
        _REGISTRY[label] = Exercise(label, fn, tuple(hints))
        return fn

    return decorator


def _split_label(label: str) -> tuple[str, str]:
    slug, sep, name = label.partition("-")
    if not sep or not slug or not name:
        raise ValueError(
            f"exercise label {label!r} must look like '<chapter slug>-<name>', e.g. 'bf16-kahan'"
        )
    return slug, name


def labels(slug: str | None = None) -> list[str]:
    """The labels of every exercise of chapter ``slug`` (of every chapter, without one), loading their checks."""
    if slug is None:
        for module in pkgutil.iter_modules(__path__):
            _load(module.name)
        return sorted(_REGISTRY)
    _load(slug)
    return sorted(label for label in _REGISTRY if label.startswith(slug + "-"))


def _load(slug: str) -> None:
    try:
        importlib.import_module(f"{__name__}.{slug}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{slug}":
            raise
        raise KeyError(f"no checks exist for chapter {slug!r} (no module {__name__}.{slug})") from None


def _exercise(label: str) -> Exercise:
    slug, _ = _split_label(label)
    if label not in _REGISTRY:
        _load(slug)
    if label not in _REGISTRY:
        known = ", ".join(labels(slug)) or "none"
        raise KeyError(f"no check is registered for exercise {label!r}; chapter {slug!r} has: {known}")
    return _REGISTRY[label]


def grading() -> bool:
    """Whether an unanswered exercise raises :class:`NotDoneYet` (``MPCOURSE_GRADING=1``) rather than noting it."""
    return _flag(GRADING_ENV, default=False)


def hints_on() -> bool:
    """Whether failures carry hints and :func:`hint` gives them (``MPCOURSE_HINTS=off`` switches them off)."""
    return _flag(HINTS_ENV, default=True)


def _flag(name: str, *, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in {"1", "on", "true", "yes"}:
        return True
    if value in {"0", "off", "false", "no"}:
        return False
    raise ValueError(f"{name}={os.environ[name]!r} is not understood; use {name}=1 (on) or {name}=0 (off)")


def check(label: str, answer: Any, **context: Any) -> None:
    """Check ``answer`` for exercise ``label``: confirm it, reject it, or note that it is not done yet.

    Raises:
        ExerciseFailed: the answer is wrong.
        NotDoneYet: the answer is a stub and :func:`grading` is on (otherwise a note goes to stderr).
        KeyError: no exercise has this label.
    """
    exercise = _exercise(label)
    try:
        exercise.check(answer, **context)
    except NotDoneYet as not_done:
        if grading():
            raise
        print(f"\u25cb {not_done}", file=sys.stderr)
        return
    print(f"\u2714 {label}: correct.")


def hint(label: str) -> None:
    """Print the next hint of exercise ``label``; each call goes one step further down its ladder."""
    exercise = _exercise(label)
    if not hints_on():
        print(f"{label}: hints are switched off for this assignment ({HINTS_ENV}=off).")
        return
    if not exercise.hints:
        print(f"{label}: this exercise has no further hints; the failure message says what to look at.")
        return
    shown = _HINTS_SHOWN.get(label, 0)
    step = min(shown, len(exercise.hints) - 1)
    _HINTS_SHOWN[label] = step + 1
    total = len(exercise.hints)
    last = " (the last one)" if step == total - 1 else f'; hint("{label}") again for the next'
    # Wrapped to the width of a notebook cell, so the hint reads without scrolling sideways.
    print(f"{label}, hint {step + 1} of {total}{last}:\n{textwrap.fill(exercise.hints[step], width=88)}")


def hints(label: str) -> tuple[str, ...]:
    """Every hint of exercise ``label``, in order (for instructors and tests)."""
    return _exercise(label).hints


def call(label: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the learner's ``fn``; turn a stub's ``NotImplementedError`` into :class:`NotDoneYet`."""
    if not callable(fn):
        raise ExerciseFailed(f"{label}: expected a function, got {type(fn).__name__}: {fn!r}")
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise NotDoneYet(
            f"{label}: not done yet. Replace the `raise NotImplementedError()` line with your "
            "solution, run that cell, then run this check again."
        ) from None
    except Exception as exc:  # the learner's code failed: say so, keep the traceback
        raise ExerciseFailed(f"{label}: your function raised {type(exc).__name__}: {exc}") from exc


def fail(label: str, what: str, hint: str) -> None:
    """Reject an answer: ``what`` says what was wrong and on which input, ``hint`` where to look.

    The hint is the first rung of the exercise's ladder, tied to the mistake the check recognised;
    it must not contain the answer. With hints off (``MPCOURSE_HINTS=off``) only ``what`` is shown.
    """
    message = f"{label}: {what}"
    if hints_on():
        message += f"\nHint: {hint[:1].upper()}{hint[1:]}"
        if label in _REGISTRY and _REGISTRY[label].hints:
            message += f'\nMore help, one step at a time: hint("{label}").'
    raise ExerciseFailed(message)


def expect_close(
    label: str, got: Any, want: Any, *, rtol: float, atol: float = 0.0, case: str, hint: str
) -> None:
    """Reject unless ``got`` equals ``want`` within tolerances (same shape; NaN matches NaN)."""
    try:
        got_a = np.asarray(_to_numpy(got), dtype=np.float64)
    except (TypeError, ValueError):
        fail(label, f"for {case} your answer {got!r} is not a number or array of numbers.", hint)
    want_a = np.asarray(_to_numpy(want), dtype=np.float64)
    if got_a.shape != want_a.shape:
        fail(label, f"for {case} the answer has shape {got_a.shape}, expected {want_a.shape}.", hint)
    if not np.allclose(got_a, want_a, rtol=rtol, atol=atol, equal_nan=True):
        shown = (
            got_a.item()
            if got_a.size == 1
            else _places(int((~np.isclose(got_a, want_a, rtol=rtol, atol=atol, equal_nan=True)).sum()))
        )
        fail(label, f"for {case} your answer is {shown}, which is not right.", hint)


def _places(count: int) -> str:
    return f"an array differing at {count} {'place' if count == 1 else 'places'}"


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``"1 parameter"``, ``"3 parameters"``: for messages that count things."""
    return f"{count} {noun if count == 1 else (plural_form or noun + 's')}"


def is_tensor_pair(result: Any) -> bool:
    """True for a tuple of exactly two tensors: what the exercises that return (new value, state) give."""
    import torch

    return isinstance(result, tuple) and len(result) == 2 and all(isinstance(t, torch.Tensor) for t in result)


def _to_numpy(x: Any) -> Any:
    if hasattr(x, "detach"):  # a torch tensor, in any dtype (bf16 has no numpy equivalent)
        return x.detach().cpu().double().numpy()
    return x
