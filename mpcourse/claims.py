"""Claims: the sentences a chapter states about its own results, checked where they are made.

A chapter's text is a set of claims: "bf16 keeps fp32's exponent range", "the emulated bf16
product is tens of times slower than fp32", "this scaler skips every step". Each one is checked in
the cell that computes it, by :func:`claim`, so that a test run fails the moment a change to the
package, a library or a chapter makes a sentence untrue.

Some claims are about the machine, not the mathematics: speed depends on the instruction set, the
number of threads and whatever else the machine is doing; a GPU reduces in a different order than
a CPU; a new PyTorch release may change a kernel. On a learner's unusual machine such a claim can
legitimately fail, and stopping "Run all" halfway through a chapter would punish the learner for
it. So a claim has two behaviours:

- **strict** (``MPCOURSE_CLAIMS=strict``, which the course's tests set): a claim that does not hold
  raises :class:`ClaimFailed`, an ``AssertionError`` subclass (pytest, nbval and nbgrader all see
  a failure), whose message is the claim and why it may differ;
- **note** (``MPCOURSE_CLAIMS=note``, and the default when the variable is unset): it shows a
  visible note that this machine disagrees with the text, what the text says, and why that can
  happen (or, for a claim that should hold everywhere, that the course or a library changed and
  that it is worth reporting), and the chapter goes on.

:func:`claim` returns nothing, so a cell that ends with a claim shows no stray ``True`` on the page;
every note shown in this process is kept (:func:`disagreements`) for a summary to report.
"""

from __future__ import annotations

import html
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The environment variable that chooses how a claim that does not hold is reported.
ENV_VAR = "MPCOURSE_CLAIMS"

#: Its accepted values: ``strict`` raises, ``note`` shows a note and goes on (the default).
MODES: tuple[str, ...] = ("strict", "note")


class ClaimFailed(AssertionError):
    """A claim of the text does not hold on this run (raised in strict mode only)."""


@dataclass(frozen=True)
class Disagreement:
    """One claim that did not hold, as a note showed it."""

    statement: str
    may_differ: str | None


_NOTED: list[Disagreement] = []


def mode() -> str:
    """The active mode, read from ``MPCOURSE_CLAIMS`` at every call (``note`` when unset or empty).

    Raises:
        ValueError: for any other value, naming the accepted ones.
    """
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if not value:
        return "note"
    if value not in MODES:
        raise ValueError(f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not a mode; accepted: {', '.join(MODES)}")
    return value


def claim(holds: Any, statement: str, may_differ: str | None = None) -> None:
    """Check one sentence of the text; raise in strict mode, show a note otherwise.

    Args:
        holds: whether the claim holds here: a bool, a NumPy bool, or a one-element bool tensor or
            array (``(x > 0).all()`` is one). Anything else is refused, since its truth would be a
            guess: a number, a many-element tensor, a DataFrame.
        statement: the sentence the page asserts, in plain words, with the measured values in it
            (``f"bf16 takes {ratio:.1f}x fp32's time here, more than 10x"``).
        may_differ: why a machine may legitimately disagree (speed, instruction set, thread count,
            library version, GPU versus CPU). Leave it out for a claim that holds everywhere, such
            as an exact property of a format: a note then says the course or a library changed.

    Raises:
        ClaimFailed: in strict mode, if the claim does not hold.
        TypeError, ValueError: for a condition that is not a truth value, or an empty statement.
    """
    ok = _truth(holds)
    statement = _text(statement, "statement")
    if may_differ is not None:
        may_differ = _text(may_differ, "may_differ")
    if ok:
        return
    if mode() == "strict":
        raise ClaimFailed(_plain(statement, may_differ, heading="This claim of the text does not hold here"))
    _NOTED.append(Disagreement(statement, may_differ))
    _show(statement, may_differ)


def disagreements() -> list[Disagreement]:
    """Every claim that did not hold in this process and was shown as a note, oldest first."""
    return list(_NOTED)


def _truth(holds: Any) -> bool:
    if isinstance(holds, (bool, np.bool_)):
        return bool(holds)
    torch = sys.modules.get("torch")  # a tensor can only exist if torch is imported already
    is_tensor = torch is not None and isinstance(holds, torch.Tensor)
    if is_tensor or isinstance(holds, np.ndarray):
        if holds.dtype not in (np.bool_, getattr(torch, "bool", None)):
            raise TypeError(
                f"claim() needs a truth value, got a {type(holds).__name__} of dtype {holds.dtype}: "
                "compare it with something first, e.g. claim((x > 0).all(), ...)"
            )
        size = holds.numel() if is_tensor else holds.size
        if size != 1:
            raise ValueError(
                f"claim() needs one truth value, got a {type(holds).__name__} of {size} of them "
                f"(shape {tuple(holds.shape)}): say which you mean with .all() or .any()"
            )
        return bool(holds.item())
    raise TypeError(
        "claim() needs a truth value (a bool, a NumPy bool, or a one-element bool tensor or array), "
        f"got {type(holds).__name__} {holds!r:.60}: compare it with something first"
    )


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"claim()'s {name} must be a sentence (a str), got {type(value).__name__}")
    value = value.strip()
    if not value:
        raise ValueError(f"claim()'s {name} is empty: say in words what the text claims")
    return value


def _reason(may_differ: str | None) -> str:
    if may_differ is not None:
        return f"Why this can happen on some machines: {may_differ}"
    import torch

    from . import __version__

    return (
        "This should hold on every machine, so the course or a library it uses has changed "
        f"(mpcourse {__version__}, torch {torch.__version__}). Please report it to the course's "
        "maintainers, with this note."
    )


def _plain(statement: str, may_differ: str | None, heading: str) -> str:
    return f"{heading}.\nThe text claims: {statement}\n{_reason(may_differ)}"


def _show(statement: str, may_differ: str | None) -> None:
    """A boxed note in a notebook (HTML, with a plain-text fallback); plain text anywhere else."""
    heading = "This machine disagrees with the text"
    text = _plain(statement, may_differ, heading) + "\nThe chapter goes on."
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # no IPython: a plain Python script
        print(text)
        return
    if get_ipython() is None:
        print(text)
        return
    box = (
        '<div class="mpcourse-claim-note" style="border-left: 6px solid #d97706; background: #fff7ed; '
        'color: #1f2937; padding: 0.6em 1em; margin: 0.5em 0; border-radius: 4px;">'
        f"<p style='margin: 0 0 0.3em 0;'><strong>&#9888; {heading}</strong></p>"
        f"<p style='margin: 0 0 0.3em 0;'>The text claims: {html.escape(statement)}</p>"
        f"<p style='margin: 0;'>{html.escape(_reason(may_differ))} The chapter goes on.</p></div>"
    )
    display({"text/html": box, "text/plain": text}, raw=True)
