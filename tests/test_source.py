"""mpcourse.show_source: the chapters show the code that ran, read from the package itself."""

from __future__ import annotations

import inspect

import pytest

import mpcourse
from mpcourse import source, train
from mpcourse.fp8 import linear


def test_the_source_is_the_code_that_runs_headed_by_where_it_lives() -> None:
    text = source.source(train.train_step)
    first_line = inspect.getsourcelines(train.train_step)[1]
    assert (
        text.splitlines()[0]
        == f"# mpcourse.train.step.train_step  (mpcourse/train/step.py, line {first_line})"
    )
    assert inspect.getsource(train.train_step) in text


def test_docstrings_can_be_left_out_and_comments_stay() -> None:
    text = source.source(train.train_step, docstrings=False)
    assert '"""' not in text and "Raises:" not in text
    assert "# divide by S first: clipping must see the true gradients" in text
    compile(text, "<listing>", "exec")  # still Python
    methods = source.source(linear.FP8LinearFunction, docstrings=False)
    assert "straight-through estimator" not in methods and "def backward" in methods
    assert "class FP8LinearFunction(torch.autograd.Function):\n    @staticmethod" in methods


def test_a_body_that_is_only_a_docstring_keeps_it() -> None:
    assert (
        source._without_docstrings('def f():\n    """Only this."""\n') == 'def f():\n    """Only this."""\n'
    )


def test_outside_ipython_it_prints(capsys: pytest.CaptureFixture[str]) -> None:
    mpcourse.show_source(train.train_step)
    assert capsys.readouterr().out.startswith("# mpcourse.train.step.train_step")


def test_in_ipython_it_displays_a_highlighted_block(monkeypatch: pytest.MonkeyPatch) -> None:
    import IPython
    import IPython.display

    shown: list[object] = []
    monkeypatch.setattr(IPython, "get_ipython", lambda: object())
    monkeypatch.setattr(IPython.display, "display", shown.append)
    mpcourse.show_source(train.train_step, docstrings=False)
    (code,) = shown
    assert isinstance(code, IPython.display.Code)
    html = code._repr_html_()
    assert "<style" in html and "train_step" in html  # static HTML: renders on the website without a kernel


@pytest.mark.parametrize("bad", [1, len, None, "train_step"])
def test_objects_without_python_source_are_refused_clearly(bad) -> None:
    with pytest.raises(
        TypeError, match="show_source needs a function, method, class or module written in Python"
    ):
        source.source(bad)
