"""The mpcourse command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT
from mpcourse.course.cli import main


def test_doctor_reports_device_and_packages(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for word in ("torch", "bf16", "fp8", "profile", "plotly", "ipywidgets"):
        assert word in out


def test_student_writes_one_notebook_per_chapter(tmp_path, capsys) -> None:
    assert main(["student", str(tmp_path), "--source", str(ROOT / "notebooks")]) == 0
    written = sorted(p.name for p in tmp_path.glob("*.ipynb"))
    assert written == sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))


def test_student_without_chapters_says_where_to_run(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="course repository's root"):
        main(["student", str(tmp_path / "out"), "--source", str(tmp_path)])


def test_student_refuses_to_overwrite_the_chapters() -> None:
    with pytest.raises(ValueError, match="must differ"):
        main(["student", str(ROOT / "notebooks"), "--source", str(ROOT / "notebooks")])


def test_help_lists_the_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "mpcourse.course.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "student" in out.stdout and "doctor" in out.stdout


def test_every_benchmark_topic_resolves() -> None:
    import importlib

    from mpcourse.course.cli import BENCHES

    for topic, target in BENCHES.items():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), topic


def test_unknown_benchmark_topic_is_rejected(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "no-such-topic"])
    assert "invalid choice" in capsys.readouterr().err


def test_verify_records_a_chapter_run(tmp_path, capsys) -> None:
    import json

    import nbformat

    chapter = nbformat.v4.new_notebook()
    chapter.cells = [nbformat.v4.new_code_cell("from mpcourse import sizes\nprint('running', sizes.current())")]
    nb = tmp_path / "tiny.ipynb"
    nbformat.write(chapter, nb)
    out = tmp_path / "records.json"
    assert main(["verify", str(nb), "--profile", "full", "--out", str(out), "--executed", str(tmp_path / "ran")]) == 0
    (record,) = json.loads(out.read_text())
    assert record["chapter"] == "tiny" and record["status"] == "passed" and record["profile"] == "full"
    for key in ("device", "torch", "python", "date", "mpcourse"):
        assert record[key], key
    assert "running full" in (tmp_path / "ran" / "tiny.ipynb").read_text()


def test_verify_reports_a_failing_chapter(tmp_path) -> None:
    import json

    import nbformat

    broken = nbformat.v4.new_notebook()
    broken.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise ValueError('planted')")]
    path = tmp_path / "broken.ipynb"
    nbformat.write(broken, path)
    assert main(["verify", str(path), "--profile", "ci", "--out", str(tmp_path / "r.json")]) == 1
    (record,) = json.loads((tmp_path / "r.json").read_text())
    assert record["status"] == "failed" and "planted" in record["error"]


def test_verify_needs_a_positive_number_of_jobs(tmp_path) -> None:
    from mpcourse.course.verify import verify

    with pytest.raises(ValueError, match="positive number"):
        verify([tmp_path / "x.ipynb"], "ci", jobs=0)


def _git(*args: str, cwd) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=cwd,
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def other_repository(tmp_path):
    """A git repository that is not the course's, with one commit of its own."""
    _git("init", "-q", cwd=tmp_path)
    (tmp_path / "f.txt").write_text("x")
    _git("add", "f.txt", cwd=tmp_path)
    _git("commit", "-q", "-m", "other", cwd=tmp_path)
    return tmp_path


def test_the_commit_is_the_packages_not_the_current_directorys(other_repository, monkeypatch) -> None:
    from mpcourse import provenance

    if not (ROOT / ".git").exists():
        pytest.skip("the course is not a git checkout here")
    monkeypatch.chdir(other_repository)
    other = _git("rev-parse", "--short", "HEAD", cwd=other_repository)
    ours = _git("rev-parse", "--short", "HEAD", cwd=ROOT)
    assert provenance.PACKAGE_PARENT == ROOT.resolve()
    assert provenance.commit() == ours != other
    assert provenance.environment()["commit"] == ours


def test_a_package_folder_inside_someone_elses_repository_has_no_commit(other_repository, tmp_path_factory) -> None:
    from mpcourse import provenance

    site_packages = other_repository / "venv" / "lib" / "site-packages"
    site_packages.mkdir(parents=True)
    assert provenance.commit(site_packages) is None  # not the top of a repository: the other repo's commit is not ours
    assert provenance.commit(other_repository) == _git("rev-parse", "--short", "HEAD", cwd=other_repository)
    assert provenance.commit(tmp_path_factory.mktemp("plain")) is None  # no repository at all


def test_stored_verification_records_cover_every_chapter() -> None:
    from mpcourse import reference
    from mpcourse.course import authoring, verify

    records = reference.records("verified")
    assert records, f"no records in {reference.folder('verified')}"
    chapters = {md.stem for md in authoring.chapters()}
    for file in sorted(reference.folder("verified").glob("*.json")):
        stored = json.loads(file.read_text())
        assert {r["chapter"] for r in stored} <= chapters, f"{file.name} names chapters that do not exist"
        for r in stored:
            assert r["status"] in {"passed", "failed"} and r["seconds"] > 0 and r["device"] and r["date"]
    table = verify.summary(records)
    assert set(table.index) <= chapters and table.notna().all().all()


def test_verification_summary_orders_profiles_by_size() -> None:
    from mpcourse.course import verify

    def run(profile: str, chapter: str = "fp8") -> dict:
        return {"chapter": chapter, "device": "cpu: x", "profile": profile, "commit": "abc", "status": "passed",
                "seconds": 1.0, "error": None}

    table = verify.summary([run("full"), run("ci"), run("small"), run("ci", "bf16")])
    assert [c[1] for c in table.columns] == ["ci", "small", "full"]
    assert table.loc["bf16", ("cpu: x", "full", "abc")] == "not in this run"
