"""mpcourse.course.record: machine names, where files go, and a recording that survives a failed step."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import nbformat
import pytest

from mpcourse import device, reference
from mpcourse.bench import results
from mpcourse.course import cli, record


@pytest.mark.parametrize(
    ("preset", "slug"),
    [("h200", "h200"), ("h100", "h100-80gb-hbm3"), ("a100", "a100-sxm4-80gb"), ("t4", "t4"), ("l4", "l4")],
)
def test_gpu_slugs_drop_the_vendor(preset: str, slug: str) -> None:
    assert record.machine_slug(device.PRESETS[preset]) == slug


def test_cpu_slugs_name_the_best_instruction_set_and_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(record.os, "cpu_count", lambda: 8)
    assert record.machine_slug(device.PRESETS["cpu"]) == "cpu-avx2-8core"
    assert record.machine_slug(device.PRESETS["cpu_amx"]) == "cpu-amx-8core"
    avx512 = device.Capabilities(
        kind="cpu", name="x", cpu_flags=frozenset({"avx2", "avx512f", "avx512_bf16"})
    )
    assert record.machine_slug(avx512) == "cpu-avx512bf16-8core"
    monkeypatch.setattr(record.platform, "machine", lambda: "arm64")
    assert record.machine_slug(device.Capabilities(kind="cpu", name="Apple M2")) == "cpu-arm64-8core"


def test_the_stored_references_follow_the_naming() -> None:
    """The files committed so far are named as machine_slug names them, in the folders destination() gives."""
    stored = {
        p.relative_to(record.PACKAGE_DIR).as_posix()
        for p in record.PACKAGE_DIR.rglob("*.json")
        if "reference" in p.parts
    }
    assert (
        record.destination("matmul", "cpu-amx-2core", "full").relative_to(record.PACKAGE_DIR).as_posix()
        in stored
    )
    assert (
        record.destination("train", "cpu-avx2-2core", "full").relative_to(record.PACKAGE_DIR).as_posix()
        in stored
    )
    assert (
        record.destination("verify", "cpu-amx-2core", "ci").relative_to(record.PACKAGE_DIR).as_posix()
        in stored
    )


def test_files_go_where_the_chapters_read_them() -> None:
    assert record.destination("matmul", "h200", "full").parent == reference.folder("matmul")
    assert record.destination("train", "h200", "full").parent == reference.folder("train")
    assert record.destination("fp8", "h200", "full").parent == reference.folder("fp8")
    assert (
        record.destination("fp8_recipes", "h200", "full")
        == reference.folder("fp8_recipes") / "h200-full.json"
    )
    assert record.destination("verify", "h200", "full") == reference.folder("verified") / "h200-full.json"
    with pytest.raises(ValueError, match="accepted: matmul, train, fp8, fp8_recipes, verify"):
        record.destination("roofline", "h200", "full")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": ["matmul", "speed"]}, "accepted: matmul, train, fp8, fp8_recipes, verify"),
        ({"steps": []}, "accepted: matmul"),
        ({"profile_name": "huge"}, "accepted: ci, small, full"),
        ({"jobs": 0}, "positive number"),
    ],
)
def test_nonsense_is_refused_before_anything_runs(kwargs: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        record.record(**{"steps": ["matmul"], **kwargs}, out=tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.fixture
def fake_benches(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Benchmarks that run instantly: matmul raises, train writes a valid record; calls are logged."""
    calls: list[str] = []
    module = types.ModuleType("fake_benches")

    def broken(save: Path | None, quick: bool, force: bool = False) -> int:
        calls.append("matmul")
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def fine(save: Path | None, quick: bool, force: bool = False) -> int:
        calls.append(f"train quick={quick}")
        results.save(
            results.make_record("train", {"recipes": [{"recipe": "fp32"}]}, command="test"),
            save,
            overwrite=force,
        )
        return 0

    module.broken, module.fine = broken, fine
    monkeypatch.setitem(sys.modules, "fake_benches", module)
    monkeypatch.setitem(cli.BENCHES, "matmul", "fake_benches:broken")
    monkeypatch.setitem(cli.BENCHES, "train", "fake_benches:fine")
    return calls


def test_a_failed_step_does_not_cost_the_others(
    fake_benches: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        record.devices, "capabilities", lambda *args, **kwargs: device.PRESETS["t4"]
    )  # no fp8 units
    done = record.record(["train", "matmul", "fp8"], out=tmp_path, quick=True, profile_name="ci")
    assert [r.step for r in done] == ["matmul", "train", "fp8"]  # always in the documented order
    matmul, train, fp8 = done
    assert matmul.status == "failed" and "illegal memory access" in matmul.note and matmul.path is None
    assert (
        train.status == "written" and train.path == tmp_path / f"reference/train/{record.machine_slug()}.json"
    )
    assert results.load(train.path)["profile"] == "ci"  # the step ran under the requested profile
    assert fp8.status == "skipped" and "fp8 tensor cores" in fp8.note and "Tesla T4" in fp8.note
    assert fake_benches == ["matmul", "train quick=True"]
    assert "illegal memory access" in record.summary(done)


def test_stored_results_are_kept_unless_forced(fake_benches: list[str], tmp_path: Path) -> None:
    first = record.record(["train"], out=tmp_path)
    assert first[0].status == "written"
    first[0].path.write_text("a stored result\n")
    again = record.record(["train"], out=tmp_path)
    assert again[0].status == "skipped" and "exists" in again[0].note and "--force" in again[0].note
    assert first[0].path.read_text() == "a stored result\n"  # not run, not touched
    forced = record.record(["train"], out=tmp_path, force=True)
    assert forced[0].status == "written" and fake_benches == ["train quick=False"] * 2
    assert results.load(forced[0].path)["topic"] == "train"  # the forced run replaced it


def test_a_file_that_appears_during_a_step_is_not_replaced(
    fake_benches: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check before a step is not the only one: the step's own save refuses too, unless forced."""

    def racy(save: Path, quick: bool, force: bool = False) -> int:
        save.parent.mkdir(parents=True, exist_ok=True)
        save.write_text("written by another run meanwhile\n")  # while this one was measuring
        results.save(
            results.make_record("train", {"recipes": [{"recipe": "fp32"}]}, command="test"),
            save,
            overwrite=force,
        )
        return 0

    sys.modules["fake_benches"].racy = racy
    monkeypatch.setitem(cli.BENCHES, "train", "fake_benches:racy")
    (step,) = record.record(["train"], out=tmp_path, profile_name="ci")
    target = record.destination("train", record.machine_slug(), "ci", tmp_path)
    assert step.status == "failed" and "already exists" in step.note and step.path is None
    assert target.read_text() == "written by another run meanwhile\n"


def test_arguments_are_checked_before_anything_runs(fake_benches: list[str], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such notebook"):
        record.record(["train", "verify"], out=tmp_path, notebooks=[tmp_path / "missing.ipynb"])
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="--out takes a folder"):
        record.record(["train"], out=tmp_path / "file")
    assert fake_benches == []


@pytest.mark.notebooks
def test_verify_step_records_each_chapter(tmp_path: Path) -> None:
    """The verify step runs real notebooks in a kernel and stores one record per chapter, failures included."""
    chapters = tmp_path / "nbs"
    chapters.mkdir()
    for name, code in (
        ("good", "x = 1 + 1\nassert x == 2"),
        ("bad", "assert 1 == 2, 'a claim that does not hold'"),
    ):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, chapters / f"{name}.ipynb")
    done = record.record(
        ["verify"], out=tmp_path / "out", notebooks=sorted(chapters.glob("*.ipynb")), profile_name="ci"
    )
    (step,) = done
    assert (
        step.status == "failed"
        and step.path == tmp_path / f"out/reference/verified/{record.machine_slug()}-ci.json"
    )
    stored = {r["chapter"]: r for r in json.loads(step.path.read_text())}
    assert stored["good"]["status"] == "passed" and stored["good"]["profile"] == "ci"
    assert stored["bad"]["status"] == "failed" and "a claim that does not hold" in stored["bad"]["error"]


def test_cli_exit_status_says_whether_a_step_failed(fake_benches: list[str], tmp_path: Path) -> None:
    assert cli.main(["record", "--steps", "train", "--out", str(tmp_path), "--profile", "ci"]) == 0
    assert cli.main(["record", "--steps", "matmul", "--out", str(tmp_path), "--profile", "ci"]) == 1
