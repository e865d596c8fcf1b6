"""mpcourse: the helper package of the course on mixed-precision training in PyTorch.

Chapters start with ``caps = mpcourse.setup()``, which reports what this machine can run and
prepares figures to render everywhere. The machinery the chapters share lives in submodules
(``device``, ``profile``, ``plots``, ``exercises``, ...), each documented on its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .device import Capabilities

__version__ = "0.1.0"

__all__ = ["__version__", "report", "setup"]


def report(caps: Capabilities | None = None) -> str:
    """A short, plain-text report: versions, profile, device, and how each precision runs here."""
    import platform

    import torch

    from . import device, sizes

    caps = caps or device.capabilities()
    support = device.precision_support(caps)
    lines = [
        f"mpcourse {__version__} | torch {torch.__version__} | Python {platform.python_version()}",
        sizes.explain(),
        f"device {caps.describe()}",
    ]
    width = max(len(p) for p in support)
    for name, s in support.items():
        lines.append(f"  {name:<{width}}  {s.status:<11}  {s.reason}")
    return "\n".join(lines)


def setup() -> Capabilities:
    """Prepare a chapter: print the environment report and make plotly figures render everywhere."""
    from . import device, plots

    caps = device.capabilities()
    plots.use_site_renderer()
    print(report(caps))
    return caps

