"""Automatic checks for the course's exercises.

Every exercise has a label (the sphinx-exercise label in the chapter, ``<chapter slug>-<name>``)
and a check registered under it. A chapter's check cell reads::

    check("getting_started-tflops", matmul_tflops)

A check accepts a correct answer with a short confirmation and rejects a wrong one by raising
:class:`ExerciseFailed`, an ``AssertionError`` subclass, so that graders (nbgrader, pytest, nbval)
see a failure. Its message says what was wrong and gives a hint, never the answer. A function that
still raises ``NotImplementedError`` (the stub in student notebooks) gets :class:`NotDoneYet`,
whose message says the exercise is not done yet rather than wrong.

The checks for chapter ``slug`` live in ``mpcourse.exercises.<slug>`` and are imported on first use:
``check(label, ...)`` finds any chapter's check without that module having been imported before.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

import numpy as np

Check = Callable[..., None]

_REGISTRY: dict[str, Check] = {}


class ExerciseFailed(AssertionError):
    """An answer was checked and is wrong; the message explains what was checked and gives a hint."""


class NotDoneYet(ExerciseFailed):
    """The answer still raises ``NotImplementedError``: the exercise has not been attempted."""


def register(label: str) -> Callable[[Check], Check]:
    """Register ``fn`` as the check of exercise ``label`` (``<chapter slug>-<name>``)."""
    _split_label(label)

    def decorator(fn: Check) -> Check:
        if label in _REGISTRY:
            raise ValueError(f"a check for exercise {label!r} is already registered")
        _REGISTRY[label] = fn
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


def check(label: str, answer: Any, **context: Any) -> None:
    """Check ``answer`` for exercise ``label``; print a confirmation or raise :class:`ExerciseFailed`."""
    slug, _ = _split_label(label)
    if label not in _REGISTRY:
        _load(slug)
    if label not in _REGISTRY:
        known = ", ".join(labels(slug)) or "none"
        raise KeyError(f"no check is registered for exercise {label!r}; chapter {slug!r} has: {known}")
    _REGISTRY[label](answer, **context)
    print(f"\u2714 {label}: correct.")


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
    """Reject an answer: ``what`` says what was wrong, ``hint`` how to think about it."""
    raise ExerciseFailed(f"{label}: {what}\nHint: {hint}")


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
            else f"an array differing at {int((~np.isclose(got_a, want_a, rtol=rtol, atol=atol, equal_nan=True)).sum())} places"
        )
        fail(label, f"for {case} your answer is {shown}, which is not right.", hint)


def is_tensor_pair(result: Any) -> bool:
    """True for a tuple of exactly two tensors: what the exercises that return (new value, state) give."""
    import torch

    return isinstance(result, tuple) and len(result) == 2 and all(isinstance(t, torch.Tensor) for t in result)


def _to_numpy(x: Any) -> Any:
    if hasattr(x, "detach"):  # a torch tensor, in any dtype (bf16 has no numpy equivalent)
        return x.detach().cpu().double().numpy()
    return x
