"""mpcourse: the helper package of the course on mixed-precision training in PyTorch.

Chapters start with ``caps = mpcourse.setup()``, which reports what this machine can run and
prepares figures to render everywhere. The machinery the chapters share lives in submodules
(``device``, ``sizes``, ``plots``, ``exercises``, ...), each documented on its own.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .claims import claim
from .source import show_source

if TYPE_CHECKING:
    from .device import Capabilities

__version__ = "0.1.0"

# torch.utils.cpp_extension (imported by torch.utils.benchmark and the compiler) warns on import,
# on a machine that has a CUDA toolkit but no GPU, that it found no CUDA runtime. No chapter
# compiles a C++ extension, so the warning says nothing a learner needs, and on the website it
# sat in four chapters' outputs. Errors from that module still show.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

#: The oldest torch the chapters and tests are run with (``make versions-check``): the floor declared
#: in pyproject.toml. An older one may work, but nothing has shown it, so setup() says so.
OLDEST_TESTED_TORCH = "2.11"

__all__ = [
    "OLDEST_TESTED_TORCH",
    "__version__",
    "claim",
    "report",
    "setup",
    "show_source",
    "torch_version_warning",
]


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


def torch_version_warning(version: str | None = None) -> str | None:
    """One line of warning if torch ``version`` (default: the installed one) is older than
    :data:`OLDEST_TESTED_TORCH`, else None.

    Only the release numbers count: a pre-release or local build of a tested release
    (``2.11.0a0+git...``, as NVIDIA's containers name theirs) is that release.
    """
    import re

    import torch

    version = str(torch.__version__ if version is None else version)
    found = re.match(r"(\d+)\.(\d+)", version)
    oldest = tuple(int(part) for part in OLDEST_TESTED_TORCH.split("."))
    if found is None or tuple(int(part) for part in found.groups()) >= oldest:
        return None
    return (
        f"Warning: torch {version} is older than {OLDEST_TESTED_TORCH}, the oldest this course is tested with; "
        f"if a cell fails, upgrade torch (pip install 'torch>={OLDEST_TESTED_TORCH}')."
    )


def setup() -> Capabilities:
    """Prepare a chapter: print the environment report (and a warning for a torch older than
    tested) and make plotly figures render everywhere."""
    from . import device, plots

    caps = device.capabilities()
    plots.use_site_renderer()
    print(report(caps))
    warning = torch_version_warning()
    if warning:
        print(warning)
    return caps
