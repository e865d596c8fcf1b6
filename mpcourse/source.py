"""Show the exact code that ran: a function's or class's source, highlighted, from the package itself.

The chapters call helpers such as :func:`mpcourse.train.train_step`; :func:`show_source` puts their
code on the page, read from the installed package at run time, so the page can never show one
thing while the course runs another. In Jupyter it displays an ``IPython.display.Code`` block, which
is highlighted into HTML and so renders on the website without a kernel; elsewhere it prints.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from pathlib import Path
from typing import Any

__all__ = ["show_source", "source"]

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def source(obj: Any, *, docstrings: bool = True) -> str:
    """The source of ``obj`` (a function, method, class or module), dedented, headed by where it lives.

    ``docstrings=False`` leaves out the docstrings of ``obj`` and of the functions and classes it
    defines (the comments stay): the code as a listing, when the page explains it in prose.

    Raises:
        TypeError: for an object without Python source (a builtin, an instance, a number).
    """
    target = inspect.unwrap(obj.__func__ if isinstance(obj, (staticmethod, classmethod)) else obj)
    try:
        lines, first = inspect.getsourcelines(target)
        path = inspect.getsourcefile(target)
    except (TypeError, OSError) as err:
        raise TypeError(
            f"show_source needs a function, method, class or module written in Python, got "
            f"{type(obj).__name__} {obj!r:.60} ({err})"
        ) from None
    text = textwrap.dedent("".join(lines))
    if not docstrings:
        text = _without_docstrings(text)
    title = target.__name__ if inspect.ismodule(target) else f"{target.__module__}.{target.__qualname__}"
    where = _relative(path) + (f", line {first}" if first else "")  # a module's source starts at line 0
    return f"# {title}  ({where})\n{text}"


def show_source(obj: Any, *, docstrings: bool = True) -> None:
    """Display :func:`source` of ``obj``: highlighted in Jupyter (and on the website), printed elsewhere."""
    text = source(obj, docstrings=docstrings)
    try:
        from IPython import get_ipython
        from IPython.display import Code, display
    except ImportError:  # pragma: no cover - IPython is a dependency; without it, plain text
        print(text)
        return
    if get_ipython() is None:
        print(text)
    else:
        display(Code(text, language="python"))


def _relative(path: str | None) -> str:
    """``path`` relative to the folder holding the package (``mpcourse/train/step.py``), when it is inside."""
    if not path:
        return "unknown file"
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(_PACKAGE_ROOT).as_posix()
    except ValueError:
        return resolved.name


def _without_docstrings(text: str) -> str:
    """``text`` without the docstring lines of its functions and classes (and of the module)."""
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    drop: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
                and len(node.body) > 1  # a body that is only a docstring keeps it: it would not parse without
            ):
                end = first.end_lineno or first.lineno
                drop.update(range(first.lineno, end + 1))
                if end < len(lines) and not lines[end].strip():  # and the blank line after it
                    drop.add(end + 1)
    return "".join(line for i, line in enumerate(lines, 1) if i not in drop)
