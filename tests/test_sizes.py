"""mpcourse.sizes: one switch for problem sizes."""

from __future__ import annotations

import pytest
import torch

from mpcourse import sizes


def test_default_depends_on_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MPCOURSE_PROFILE", raising=False)
    assert sizes.current() == ("full" if torch.cuda.is_available() else "small")


@pytest.mark.parametrize("name, value", [("ci", 1), ("small", 2), ("full", 3), (" FULL ", 3)])
def test_pick_follows_the_environment(monkeypatch: pytest.MonkeyPatch, name: str, value: int) -> None:
    monkeypatch.setenv("MPCOURSE_PROFILE", name)
    assert sizes.pick(ci=1, small=2, full=3) == value


def test_unknown_profile_is_an_error_listing_the_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPCOURSE_PROFILE", "huge")
    with pytest.raises(ValueError, match="accepted: ci, small, full"):
        sizes.current()


def test_pick_needs_every_profile() -> None:
    with pytest.raises(TypeError):
        sizes.pick(ci=1, small=2)  # type: ignore[call-arg]


def test_explain_says_where_the_profile_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPCOURSE_PROFILE", "ci")
    assert "set by MPCOURSE_PROFILE" in sizes.explain()
