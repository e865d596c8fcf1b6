"""mpcourse.claim: strict under the tests, a visible note for a learner, and refusals of bad input.

The acceptance test runs a real chapter on a pretended device that contradicts this CPU, so that the
chapter's speed prediction is wrong for the hardware: with notes the chapter completes and shows
the note; strictly it fails at that claim.
"""

from __future__ import annotations

import re

import jupytext
import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from mpcourse import claim, claims, device

NOTE_HEADING = "This machine disagrees with the text"


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no notes recorded and the mode it sets itself."""
    monkeypatch.setattr(claims, "_NOTED", [])
    monkeypatch.delenv(claims.ENV_VAR, raising=False)


def test_a_claim_that_holds_says_nothing(monkeypatch, capsys) -> None:
    for value in ("strict", "note"):
        monkeypatch.setenv(claims.ENV_VAR, value)
        assert claim(True, "one is one") is None  # nothing for a cell to display
        claim(torch.tensor(2.0) > 1, "two exceeds one")
    assert capsys.readouterr().out == ""
    assert claims.disagreements() == []


def test_strict_mode_raises_with_the_claim_and_the_reason(monkeypatch) -> None:
    monkeypatch.setenv(claims.ENV_VAR, "strict")
    ratio = 0.04
    with pytest.raises(claims.ClaimFailed) as err:
        claim(
            ratio > 1,
            f"bf16 runs faster than fp32 here (measured: {ratio:.2f}x as fast)",
            "no bf16 units on this CPU",
        )
    assert isinstance(err.value, AssertionError)  # pytest, nbval and nbgrader all count it as a failure
    message = str(err.value)
    assert "measured: 0.04x as fast" in message and "no bf16 units on this CPU" in message
    assert claims.disagreements() == []  # a raised claim is not a note


def test_note_mode_prints_the_note_and_goes_on(monkeypatch, capsys) -> None:
    monkeypatch.setenv(claims.ENV_VAR, "note")
    result = claim(
        np.float64(3.0) < 1, "three is less than one (measured 3)", "arithmetic differs by machine"
    )
    out = capsys.readouterr().out
    assert result is None
    assert NOTE_HEADING in out and "three is less than one (measured 3)" in out
    assert "arithmetic differs by machine" in out and "goes on" in out
    assert "assert" not in out.lower()
    assert claims.disagreements() == [
        claims.Disagreement("three is less than one (measured 3)", "arithmetic differs by machine")
    ]


def test_notes_are_the_default(capsys) -> None:
    assert claims.mode() == "note"
    claim(False, "a claim")
    assert NOTE_HEADING in capsys.readouterr().out


def test_a_claim_that_should_hold_everywhere_asks_to_be_reported(monkeypatch, capsys) -> None:
    monkeypatch.setenv(claims.ENV_VAR, "note")
    claim(65504.0 != 65504, "fp16's largest value is 65504")
    out = capsys.readouterr().out
    assert "should hold on every machine" in out and "report" in out and torch.__version__ in out


def test_in_a_notebook_the_note_is_a_box_with_a_plain_text_fallback(monkeypatch) -> None:
    import IPython
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython, "get_ipython", lambda: object())  # as inside a kernel
    monkeypatch.setattr(IPython.display, "display", lambda obj, raw=False: shown.append((obj, raw)))
    monkeypatch.setenv(claims.ENV_VAR, "note")
    claim(False, "x < 1 & y > 2 (measured x = 3)", "timings vary")
    ((bundle, raw),) = shown
    assert raw and set(bundle) == {"text/html", "text/plain"}
    assert 'class="mpcourse-claim-note"' in bundle["text/html"]
    assert "x &lt; 1 &amp; y &gt; 2 (measured x = 3)" in bundle["text/html"]  # escaped, never raw markup
    assert NOTE_HEADING in bundle["text/plain"] and "x < 1 & y > 2" in bundle["text/plain"]


@pytest.mark.parametrize(
    "holds",
    [
        True,
        np.bool_(False),
        torch.tensor(True),
        torch.tensor([False]),
        np.array([True]),
        torch.zeros(1, 1) == 0,
    ],
)
def test_bool_like_conditions_are_accepted(holds, monkeypatch) -> None:
    monkeypatch.setenv(claims.ENV_VAR, "note")
    claim(holds, "a truth value")
    assert len(claims.disagreements()) == (0 if bool(holds) else 1)  # a note exactly when it does not hold


@pytest.mark.parametrize(
    ("holds", "error", "says"),
    [
        (torch.tensor([True, False]), ValueError, "2 of them"),
        (np.array([True, True, False]), ValueError, ".all() or .any()"),
        (torch.tensor(0.5), TypeError, "dtype torch.float32"),
        (np.array([1.0]), TypeError, "dtype float64"),
        (1, TypeError, "got int"),
        (0.0, TypeError, "got float"),
        (None, TypeError, "got NoneType"),
        (pd.Series([True]), TypeError, "got Series"),
        ("yes", TypeError, "got str"),
    ],
)
def test_a_condition_that_is_not_one_truth_value_is_refused(holds, error, says) -> None:
    with pytest.raises(error, match=re.escape(says)):
        claim(holds, "a claim")


@pytest.mark.parametrize(
    ("statement", "may_differ", "error", "says"),
    [
        ("", None, ValueError, "statement is empty"),
        ("   ", None, ValueError, "statement is empty"),
        (None, None, TypeError, "statement must be a sentence"),
        ("a claim", "", ValueError, "may_differ is empty"),
        ("a claim", 3, TypeError, "may_differ must be a sentence"),
    ],
)
def test_empty_or_missing_words_are_refused(statement, may_differ, error, says, monkeypatch) -> None:
    monkeypatch.setenv(claims.ENV_VAR, "note")
    with pytest.raises(error, match=re.escape(says)):
        claim(True, statement, may_differ)  # refused even when the claim holds: the page must say something


def test_an_unknown_mode_is_refused_with_the_accepted_ones(monkeypatch) -> None:
    monkeypatch.setenv(claims.ENV_VAR, "loud")
    with pytest.raises(ValueError, match="accepted: strict, note"):
        claim(False, "a claim")


def _code_cells(path):
    return [c.source for c in jupytext.read(path).cells if c.cell_type == "code"]


PAGES = sorted((ROOT / "notebooks").glob("*.md")) + [
    p for p in sorted((ROOT / "book").glob("*.md")) if "{code-cell}" in p.read_text()
]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_pages_check_their_text_with_claims_not_asserts(page) -> None:
    """A learner's "Run all" must never stop at an assert: every check of the text is a claim."""
    found = [
        line.strip()
        for source in _code_cells(page)
        for line in source.splitlines()
        if re.match(r"\s*assert\b", line) or "AssertionError" in line
    ]
    assert found == [], f"{page.name} checks its text with assert instead of claim(): {found}"


@pytest.mark.notebooks
def test_a_chapter_on_a_disagreeing_machine_notes_the_claim_and_the_test_run_fails_at_it(monkeypatch) -> None:
    """Pretend to be the other kind of CPU: the chapter predicts the wrong speed and measures the right one."""
    monkeypatch.delenv("MPCOURSE_DEVICE_PRESET", raising=False)
    here = device.capabilities(kind="cpu")
    preset = "cpu" if here.bf16_native else "cpu_amx"  # the kind this CPU is not
    assert device.PRESETS[preset].bf16_native != here.bf16_native
    path = ROOT / "notebooks" / "getting_started.ipynb"
    base = {"MPCOURSE_PROFILE": "ci", "MPCOURSE_DEVICE_PRESET": preset}

    def execute(mode: str) -> nbformat.NotebookNode:
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=600, resources={"metadata": {"path": str(path.parent)}})
        monkeypatch.setenv(claims.ENV_VAR, mode)  # the kernel inherits this process's environment
        for name, value in base.items():
            monkeypatch.setenv(name, value)
        client.execute()
        return nb

    noted = execute("note")  # completes: no CellExecutionError
    notes = [
        (cell.source, output["data"])
        for cell in noted.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "display_data"
        and "mpcourse-claim-note" in output.get("data", {}).get("text/html", "")
    ]
    assert len(notes) == 1, f"expected one note, at the speed claim; got {len(notes)}"
    source, data = notes[0]
    assert "speedup" in source
    assert NOTE_HEADING in data["text/plain"] and re.search(
        r"so the bf16 product at n = \d+", data["text/plain"]
    )
    assert "MPCOURSE_DEVICE_PRESET" in data["text/plain"]  # the reason names the pretence

    with pytest.raises(CellExecutionError) as err:
        execute("strict")
    assert err.value.ename == "ClaimFailed"
    assert re.search(r"so the bf16 product at n = \d+ (runs faster|is slower) than fp32", err.value.evalue)
