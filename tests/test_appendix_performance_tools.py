"""The examples of book/performance_tools.md run, write what the page says they write, and the commands
for GPU-only tools use names that exist.

On a CPU the GPU branches of memory.py and nvtx.py are not taken; the functions they call are checked
to exist with the arguments used, and the nsys options against NVIDIA's own command lines (stored
in book/snippets/performance_tools/sources/). The TensorBoard example needs the ``tensorboard``
package (the frameworks extra: ``make test-frameworks``).
"""

from __future__ import annotations

import inspect
import json
import re
import runpy
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT

SNIPPETS = ROOT / "book" / "snippets" / "performance_tools"
PAGE = ROOT / "book" / "performance_tools.md"


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """Run a snippet as a script in an empty folder (where it writes its files); return what it printed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(SNIPPETS))  # the examples import the shared step from step.py
    monkeypatch.delitem(sys.modules, "step", raising=False)

    def go(name: str) -> str:
        runpy.run_path(str(SNIPPETS / name), run_name="__main__")
        return capsys.readouterr().out

    yield go
    sys.modules.pop("step", None)


def test_every_example_is_on_the_page() -> None:
    page = PAGE.read_text(encoding="utf-8")
    shown = set(re.findall(r"snippets/performance_tools/(\w+\.py)", page))
    assert shown == {p.name for p in SNIPPETS.glob("*.py")}, shown


def test_profiler_table_and_chrome_trace(run, tmp_path: Path) -> None:
    out = run("profiler_table.py")
    assert "Self CPU" in out and re.search(r"aten::(add)?mm", out), out[:2000]
    assert "Input Shapes" in out  # record_shapes=True, grouped by shape
    trace = json.loads((tmp_path / "step_trace.json").read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert "train_step" in names  # the record_function range
    assert any(str(n).startswith("aten::") for n in names)


def test_profiler_schedule_writes_one_trace_of_the_active_steps(run, tmp_path: Path) -> None:
    run("profiler_schedule.py")
    traces = list((tmp_path / "profiles").glob("worker0.*.pt.trace.json"))
    assert len(traces) == 1, traces
    names = {e.get("name") for e in json.loads(traces[0].read_text())["traceEvents"]}
    assert {"ProfilerStep#2", "ProfilerStep#3", "ProfilerStep#4"} <= names, sorted(
        n for n in names if "Step" in str(n)
    )


def test_memory_example_on_a_cpu_and_the_gpu_calls_it_makes(run) -> None:
    if torch.cuda.is_available():
        pytest.skip("the CPU branch is what this machine can check")
    out = run("memory.py")
    assert "CPU Mem" in out and "Self CPU Mem" in out
    record = inspect.signature(torch.cuda.memory._record_memory_history).parameters
    assert {"enabled", "max_entries"} <= set(record) and record["enabled"].default == "all"
    assert "filename" in inspect.signature(torch.cuda.memory._dump_snapshot).parameters
    import torch.cuda._memory_viz as viz

    source = inspect.getsource(viz)
    assert '"trace_plot"' in source and '"-o"' in source  # python -m torch.cuda._memory_viz trace_plot X -o Y


def test_nvtx_example_and_its_calls(run) -> None:
    if torch.cuda.is_available():
        pytest.skip("the CPU branch is what this machine can check")
    assert "need a CUDA GPU" in run("nvtx.py")
    for function in (torch.cuda.nvtx.range, torch.cuda.profiler.start, torch.cuda.profiler.stop):
        assert callable(function)
    assert callable(torch.autograd.profiler.emit_nvtx)


def test_nsys_command_uses_options_of_nvidias_own_command_lines() -> None:
    page = PAGE.read_text(encoding="utf-8")
    excerpt = (SNIPPETS / "sources" / "nsight_systems.txt").read_text(encoding="utf-8")
    commands = re.findall(r"^nsys profile .*$", page, flags=re.MULTILINE)
    assert commands, "the page gives no nsys command"
    for command in commands:
        for option in re.findall(r"(--[\w-]+)", command.split(" python ")[0]):
            assert option in excerpt, f"{option} is not in the stored nsys command lines"
        trace = re.search(r"--trace=(\S+)", command).group(1).split(",")
        assert set(trace) <= {"cuda", "nvtx", "cublas", "cudnn"}


def test_tensorboard_scalars_are_written_and_read_back(run, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard: make test-frameworks")
    from tensorboard import program
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run("tensorboard_scalars.py")
    (folder,) = (tmp_path / "runs").iterdir()
    events = EventAccumulator(str(folder))
    events.Reload()
    assert {"train/loss", "train/lr", "amp/loss_scale", "eval/accuracy"} <= set(events.Tags()["scalars"])
    loss = [e.value for e in events.Scalars("train/loss")]
    accuracy = [e.value for e in events.Scalars("eval/accuracy")]
    assert len(loss) == 200 and len(accuracy) == 4
    assert sum(loss[-20:]) / 20 < sum(loss[:20]) / 20 / 2 and accuracy[-1] > 0.8, (loss[::20], accuracy)
    board = program.TensorBoard()
    board.configure(argv=[None, "--logdir", str(tmp_path / "runs")])  # the page's command, parsed
    assert board.flags.logdir == str(tmp_path / "runs")
