"""The helper the exercise checks use to see a library do the work: it records, refuses and restores."""

from __future__ import annotations

import types

import pytest
import torch

from mpcourse.exercises import shortcuts


def _module() -> types.ModuleType:
    module = types.ModuleType("lib")
    module.double = lambda x: 2 * x
    module.triple = lambda x: 3 * x
    return module


class _Base:
    def scale(self, x: float) -> float:
        return 2 * x


class _Child(_Base):
    @staticmethod
    def unit() -> float:
        return 1.0


def test_watch_records_names_and_calls_the_original() -> None:
    lib = _module()
    with shortcuts.watch([(lib, "double", "lib.double"), (lib, "triple", "lib.triple")]) as used:
        assert lib.double(4) == 8
        assert lib.triple(1) == 3
        assert lib.double(1) == 2
    assert used == ["lib.double", "lib.triple", "lib.double"]


def test_watch_records_nothing_when_nothing_is_called() -> None:
    lib = _module()
    with shortcuts.watch([(lib, "double", "lib.double")]) as used:
        assert 2 * 4 == 8
    assert used == []


def test_watch_restores_every_original_when_the_block_raises() -> None:
    lib = _module()
    double, triple = lib.double, lib.triple
    with pytest.raises(ZeroDivisionError), shortcuts.watch([(lib, "double", "d"), (lib, "triple", "t")]):
        assert lib.double is not double
        lib.triple(1) / 0
    assert lib.double is double and lib.triple is triple


def test_refuse_raises_and_records() -> None:
    lib = _module()
    double = lib.double
    with shortcuts.watch([(lib, "double", "lib.double")], refuse=True) as used:
        with pytest.raises(
            RuntimeError, match=r"^lib\.double is switched off while this exercise is checked$"
        ):
            lib.double(3)
    assert used == ["lib.double"]
    assert lib.double is double


def test_a_name_computed_from_the_call_and_none_not_recorded() -> None:
    def shown(obj: _Base, x: float) -> str | None:
        return f"{type(obj).__name__}.scale({x})" if x > 0 else None

    with shortcuts.watch([(_Base, "scale", shown)]) as used:
        assert _Child().scale(3) == 6
        assert _Base().scale(-1) == -2
    assert used == ["_Child.scale(3)"]


def test_inherited_and_static_attributes_are_restored_as_they_were() -> None:
    with shortcuts.watch([(_Child, "scale", "scale"), (_Child, "unit", "unit")]) as used:
        assert _Child().scale(1) == 2
        assert _Child.unit() == 1.0 and _Child().unit() == 1.0
    assert used == ["scale", "unit", "unit"]
    assert "scale" not in vars(_Child)  # still inherited from _Base
    assert isinstance(vars(_Child)["unit"], staticmethod)


def test_watch_sees_a_name_imported_before_the_block() -> None:
    lib = _module()
    double = lib.double  # as `from lib import double` would bind it

    def learner(x: float) -> float:
        return double(x)

    def honest(x: float) -> float:
        return x + x

    with shortcuts.watch([(lib, "double", "lib.double")], fn=learner) as used:
        assert learner(2) == 4  # the bound name escapes the replacement, but was seen on entry
    assert used == ["lib.double"]
    with shortcuts.watch([(lib, "double", "lib.double")], fn=honest) as used:
        assert honest(2) == 4
    assert used == []


def test_names_in_and_scope_of_read_nested_code_and_closures() -> None:
    outer = 5

    def fn() -> int:
        def inner() -> int:
            return math_floor(outer)

        return inner()

    math_floor = int
    assert {"math_floor", "outer"} <= shortcuts.names_in(fn)
    scope = shortcuts.scope_of(fn)
    assert scope["pytest"] is pytest  # globals
    assert shortcuts.names_in(len) == set()  # no code: nothing


@pytest.mark.parametrize(
    "convert, seen",
    [
        (lambda x: x.to(torch.bfloat16), "torch (to(...) with torch.bfloat16)"),
        (lambda x: x.to(dtype=torch.bfloat16), "torch (to(...) with torch.bfloat16)"),
        (lambda x: x.type(torch.bfloat16), "torch (type(...) with torch.bfloat16)"),
        (lambda x: x.bfloat16(), "torch (.bfloat16())"),
        (lambda x: torch.tensor([1.0], dtype=torch.bfloat16), "torch (tensor(...) with torch.bfloat16)"),
    ],
)
def test_conversions_seen(convert, seen) -> None:
    x = torch.linspace(0, 1, 7)
    with shortcuts.conversions((torch.bfloat16,), methods=("bfloat16",)) as found:
        convert(x)
    assert found and found[0] == seen


def test_conversions_not_seen() -> None:
    x = torch.linspace(0, 1, 7)
    with shortcuts.conversions((torch.bfloat16,), methods=("bfloat16",)) as found:
        x.to(torch.float64)
        x.half()  # another format than the one watched
        x.view(torch.int32)  # reinterprets bits
        (x * 2 + 1).sum()
    assert found == []
    x.bfloat16()  # outside the block
    assert found == []


def test_torch_calls_sees_results_and_shares_a_list_in_order() -> None:
    lib, found = _module(), []

    def note(func, args, kwargs, result):
        return f"{func.__name__} -> {result.dtype}" if isinstance(result, torch.Tensor) else None

    with (
        shortcuts.watch([(lib, "double", "lib.double")], found=found),
        shortcuts.torch_calls(note, found=found),
    ):
        lib.double(1)
        torch.ones(2).half()
    assert found == ["lib.double", "ones -> torch.float32", "half -> torch.float16"]
