"""Seeing a library do an exercise's work, for the checks that refuse such shortcuts.

A check compares the learner's answer with a reference, and often the reference *is* a library: torch's
casts, :mod:`mpcourse.formats`'s rounding, the course's own fp8 recipes, loss scalers or memory
calculator. An answer that hands the work to that library gives the right numbers without the exercise
(and, where the library is the reference, is checked against itself). So while the learner's function
runs, these checks watch what it calls, and name it in their message:

- :func:`watch` replaces functions, methods or classes on their owner (a module or a class, so that the
  library's own internal calls and a class built under another name are seen) by wrappers that record a
  name, and either call the original or, with ``refuse``, raise; given the learner's function, it also
  notes the targets that function refers to directly (a ``from ... import`` made before the check,
  which replacing the module's attribute cannot reach);
- :func:`torch_calls` and :func:`conversions` install a :class:`~torch.overrides.TorchFunctionMode`
  that sees every torch call, for what a dtype conversion does (round to a format);
- :func:`names_in` and :func:`scope_of` read which names a function's code uses and what they are.

Everything replaced is restored on leaving the block, whether the learner's code returned or raised.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

#: How a watched call is named: a fixed name, or a function of the call's arguments that returns the
#: name, or None for a call not to record.
Shown = str | Callable[..., str | None]

#: What :func:`watch` replaces: ``(owner, attribute, shown)``.
Target = tuple[Any, str, Shown]

__all__ = ["Shown", "Target", "conversions", "names_in", "scope_of", "torch_calls", "watch"]

_MISSING = object()


def names_in(fn: Any) -> set[str]:
    """Every global, free and attribute name ``fn``'s code (and the code of functions defined inside it) uses."""
    code = getattr(fn, "__code__", None)
    names: set[str] = set()
    stack = [code] if code is not None else []
    while stack:
        c = stack.pop()
        names.update(c.co_names, c.co_freevars)
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    return names


def scope_of(fn: Any) -> dict[str, Any]:
    """What the names ``fn`` can refer to are bound to: its globals, and its closure's cells over them."""
    scope = dict(getattr(fn, "__globals__", {}))
    freevars = getattr(getattr(fn, "__code__", None), "co_freevars", ())
    for name, cell in zip(freevars, getattr(fn, "__closure__", None) or ()):
        with contextlib.suppress(ValueError):  # a cell not filled yet
            scope[name] = cell.cell_contents
    return scope


def _wrapper(original: Any, shown: Shown, found: list[str], refuse: bool) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        name = shown if isinstance(shown, str) else shown(*args, **kwargs)
        if name is not None:
            found.append(name)
        if refuse:
            raise RuntimeError(f"{name} is switched off while this exercise is checked")
        return original(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def watch(
    targets: Iterable[Target],
    *,
    refuse: bool = False,
    fn: Any = None,
    found: list[str] | None = None,
) -> Iterator[list[str]]:
    """Replace each ``owner.attribute`` by a wrapper that records ``shown`` meanwhile; yield the records.

    ``shown`` is the name recorded, or a function given the call's arguments (``self`` first, for a
    method) that returns it, or None not to record that call. The wrapper then calls the original, or,
    with ``refuse``, raises a RuntimeError saying that ``shown`` is switched off. Given ``fn``, each
    target with a fixed name that ``fn`` refers to directly (imported before the block) is recorded on
    entry. Records go to ``found`` when given (to share one list, in order, with other watchers).
    Every original is restored on leaving, even when the block raises.
    """
    found = [] if found is None else found
    targets = list(targets)
    replaced: list[tuple[Any, str, Any]] = []  # (owner, attribute, what its own namespace held)
    try:
        if fn is not None:
            scope = scope_of(fn)
            for name in names_in(fn):
                for owner, attribute, shown in targets:
                    if isinstance(shown, str) and scope.get(name, _MISSING) is getattr(owner, attribute):
                        found.append(shown)
                        break
        for owner, attribute, shown in targets:
            original = getattr(owner, attribute)
            namespace = getattr(owner, "__dict__", None)
            held = namespace.get(attribute, _MISSING) if namespace is not None else original
            replacement: Any = _wrapper(original, shown, found, refuse)
            if isinstance(held, (staticmethod, classmethod)):  # call the bound original, without self
                replacement = staticmethod(replacement)
            setattr(owner, attribute, replacement)
            replaced.append((owner, attribute, held))
        yield found
    finally:
        for owner, attribute, held in reversed(replaced):
            if held is _MISSING:  # inherited (or found on the class): uncover it again
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, held)


@contextlib.contextmanager
def torch_calls(
    note: Callable[[Any, tuple[Any, ...], dict[str, Any], Any], str | None],
    *,
    found: list[str] | None = None,
) -> Iterator[list[str]]:
    """Call ``note(func, args, kwargs, result)`` after every torch call meanwhile (functions, methods and
    operators that reach torch's function dispatch); record what it returns unless None; yield the records."""
    from torch.overrides import TorchFunctionMode

    found = [] if found is None else found

    class Spy(TorchFunctionMode):
        def __torch_function__(self, func, types_, args=(), kwargs=None):
            kwargs = kwargs or {}
            result = func(*args, **kwargs)
            seen = note(func, args, kwargs, result)
            if seen is not None:
                found.append(seen)
            return result

    with Spy():
        yield found


@contextlib.contextmanager
def conversions(
    dtypes: Iterable[Any],
    *,
    methods: Iterable[str] = (),
    found: list[str] | None = None,
) -> Iterator[list[str]]:
    """Record every torch call given one of ``dtypes`` (``.to(dtype)``, ``.type(dtype)``,
    ``torch.tensor(..., dtype=...)``, ``torch.zeros(..., dtype=...)``, ...) or named in ``methods``
    (``.bfloat16()``, ``.half()``) meanwhile, as ``torch (to(...) with torch.bfloat16)`` or
    ``torch (.half())``; yield the records. A ``.view`` reinterprets bits, converts nothing, and is allowed."""
    import torch

    wanted, named = tuple(dtypes), set(methods)

    def note(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> str | None:
        name = getattr(func, "__name__", str(func))
        given = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.dtype) and a in wanted]
        if name == "view" or not (name in named or given):
            return None
        return f"torch ({name}(...) with {given[0]})" if given else f"torch (.{name}())"

    with torch_calls(note, found=found) as seen:
        yield seen
