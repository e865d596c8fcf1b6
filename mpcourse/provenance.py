"""Where a result came from: the device, the software versions and the commit of the course code.

Every stored result (benchmark records, ``mpcourse verify`` records) carries this, so that a figure
measured on a GPU can always say which GPU, which PyTorch and which version of the course made it.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

from . import __version__, device


def environment() -> dict[str, object]:
    """The device and software a run happened on."""
    import torch

    caps = device.capabilities()
    return {
        "device": caps.describe(),
        "device_name": caps.name,
        "kind": caps.kind,
        "compute_capability": caps.sm,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "mpcourse": __version__,
        "commit": commit(),
    }


#: The folder holding the ``mpcourse`` package: the repository root in a source checkout.
PACKAGE_PARENT = Path(__file__).resolve().parents[1]


def commit(where: Path | None = None) -> str | None:
    """The commit of the course code that ran, or None when it is not a git checkout.

    Git runs in the folder holding the package (``where``, default :data:`PACKAGE_PARENT`), not
    in the current directory: ``mpcourse bench`` or ``verify`` started from another repository
    must not record that repository's commit. The folder must be the top of its repository,
    so an installed package (in ``site-packages``, perhaps inside a virtual environment that
    itself lies in some repository) records None rather than a commit it did not come from.
    """
    folder = Path(where or PACKAGE_PARENT).resolve()
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel", "--short", "HEAD"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    if out.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != folder:
        return None
    return lines[1]
