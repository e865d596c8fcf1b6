"""The chapters' emulated-bf16 branch, run on a CPU that has bf16 units.

Chapters branch on what the CPU runs natively: with AVX512-BF16 or AMX they measure and assert a
bf16 speed-up, without them they measure and explain the slowdown. CI may land on either kind of
CPU, and the ordinary chapter runs exercise only the branch of the CPU they run on. On a CPU with
bf16 units this test runs the chapters again as an AVX2-only CPU would see them: mpcourse's
detection is shown no AVX-512/AMX flags (tests/avx2_cpu/sitecustomize.py) and oneDNN is limited to
AVX2, so bf16 products take PyTorch's slow generic kernel, as they do on such a CPU.
"""

from __future__ import annotations

import os

import nbformat
import pytest
from conftest import ROOT

from mpcourse import device
from mpcourse.course import authoring, verify

SIMULATION = ROOT / "tests" / "avx2_cpu"
# floating_point does not depend on the hardware; every other chapter reads precision_support.
CHAPTERS = [md.stem for md in authoring.chapters() if md.stem != "floating_point"]


@pytest.mark.notebooks
@pytest.mark.skipif(
    not device.capabilities(kind="cpu").bf16_native,
    reason="this CPU has no bf16 units: the ordinary chapter runs already take the emulated branch",
)
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_on_a_cpu_without_bf16_units(chapter: str, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SIMULATION), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv(
        "CUDA_VISIBLE_DEVICES", ""
    )  # on a machine with a GPU too, the chapters must see only the CPU
    monkeypatch.delenv("MPCOURSE_DEVICE_PRESET", raising=False)
    record = verify.run_chapter(ROOT / "notebooks" / f"{chapter}.ipynb", "ci", executed_dir=tmp_path)
    assert record["status"] == "passed", record["error"]
    executed = nbformat.read(tmp_path / f"{chapter}.ipynb", as_version=4)
    setup = next(c for c in executed.cells if authoring.SETUP_TAG in c.metadata.get("tags", []))
    report = "".join(o.get("text", "") for o in setup.outputs)
    assert "bf16  emulated" in report, report  # the kernel really saw a CPU without bf16 units
