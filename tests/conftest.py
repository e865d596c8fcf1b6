"""Shared fixtures: the repository root, and the website built once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpcourse.course import authoring

ROOT = Path(__file__).resolve().parent.parent

# Under the tests every claim a chapter makes is checked strictly: a claim that fails raises, here and in
# every kernel nbval or the website build starts (they inherit this environment). A learner's run only notes it.
os.environ["MPCOURSE_CLAIMS"] = "strict"
SITE = ROOT / "_build" / "html"


@pytest.fixture(scope="session")
def built_site() -> Path:
    """Build the website exactly as `make book` does (with -W: any warning or cell error fails)."""
    env = dict(os.environ, MPCOURSE_PROFILE=os.environ.get("MPCOURSE_PROFILE", "ci"))
    authoring.refresh_execution_cache(ROOT, env["MPCOURSE_PROFILE"])
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    result = subprocess.run(
        [str(jupyter_book), "build", ".", "--toc", "book/_toc.yml", "-W", "-n", "--keep-going"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.fail(f"the website build failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}")
    return SITE
