"""One switch for problem sizes: ``ci``, ``small`` or ``full``.

The same chapter runs in CI (2 CPU cores, a minute per chapter), on a laptop, and on a Colab or
datacenter GPU. Chapters never hard-code a size; they ask for one per profile::

    n = sizes.pick(ci=256, small=1024, full=8192)

The profile comes from the environment variable ``MPCOURSE_PROFILE``; without it, ``full`` on a
machine with a GPU and ``small`` otherwise. CI sets ``ci``.
"""

from __future__ import annotations

import os
from typing import TypeVar

import torch

PROFILES: tuple[str, ...] = ("ci", "small", "full")
ENV_VAR = "MPCOURSE_PROFILE"

T = TypeVar("T")


def current() -> str:
    """The active profile name.

    Raises:
        ValueError: if ``MPCOURSE_PROFILE`` holds a name that is not a profile.
    """
    name = os.environ.get(ENV_VAR, "").strip().lower()
    if not name:
        return "full" if torch.cuda.is_available() else "small"
    if name not in PROFILES:
        raise ValueError(f"{ENV_VAR}={name!r} is not a profile; accepted: {', '.join(PROFILES)}")
    return name


def pick(*, ci: T, small: T, full: T) -> T:
    """The value given for the active profile (all three must be given)."""
    return {"ci": ci, "small": small, "full": full}[current()]


def explain() -> str:
    """One line saying which profile is active, why, and how to change it."""
    name = current()
    source = (
        f"set by {ENV_VAR}"
        if os.environ.get(ENV_VAR)
        else ("default on a GPU" if name == "full" else "default without a GPU")
    )
    return f"profile '{name}' ({source}; set {ENV_VAR} to one of {', '.join(PROFILES)} to change it)"
