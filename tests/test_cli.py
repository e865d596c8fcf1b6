"""The mpcourse command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``mpcourse argv``, which must fail as a user's error does: exit status 2 and one line on stderr."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mpcourse: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    return err


@pytest.fixture
def existing(tmp_path):
    """A file that a command must not replace without --force, and a chapter-like notebook."""
    import nbformat

    nb = tmp_path / "tiny.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]), nb)
    path = tmp_path / "precious.json"
    path.write_text("measured on a GPU rented for an hour\n")
    return {"file": str(path), "nb": str(nb), "dir": str(tmp_path)}


# Every subcommand with bad arguments: (argv, what the one line must say). {file}: an existing file,
# {nb}: a notebook, {dir}: a folder; {missing}: a path that does not exist.
BAD_ARGUMENTS = [
    ([], "arguments are required: command"),
    (["nonsense"], "invalid choice: 'nonsense'"),
    (["student"], "arguments are required: outdir"),
    (["student", "{missing}", "--source", "{dir}/no-chapters"], "course repository's root"),
    (["student", "{repo}/notebooks", "--source", "{repo}/notebooks"], "must differ"),
    (["student", "{file}", "--source", "{repo}/notebooks"], "is a file"),
    (["student", "out", "--nbgrader=yes"], "ignored explicit argument"),
    (["doctor", "--verbose"], "unrecognized arguments: --verbose"),
    (["verify", "{missing}"], "no such notebook"),
    (["verify", "{file}"], "notebooks (.ipynb)"),
    (["verify", "{nb}", "--profile", "huge"], "invalid choice: 'huge'"),
    (["verify", "{nb}", "--jobs", "0"], "positive whole number"),
    (["verify", "{nb}", "--jobs", "two"], "positive whole number, got 'two'"),
    (["verify", "{nb}", "--out", "{file}"], "--force"),
    (["verify", "{nb}", "--executed", "{file}"], "is a file"),
    (["verify", "{nb}", "--executed", "{dir}"], "would replace the chapter"),
    (["bench"], "arguments are required: topic"),
    (["bench", "speed"], "invalid choice: 'speed'"),
    (["bench", "formats", "--save", "{file}"], "precious.json already exists"),
    (["bench", "matmul", "--save", "{dir}"], "is a folder"),
    (["record", "--steps", "speed"], "invalid choice: 'speed'"),
    (["record", "--profile", "huge"], "invalid choice: 'huge'"),
    (["record", "--jobs", "-1", "--out", "{dir}"], "positive whole number"),
    (["record", "--out", "{file}"], "--out takes a folder"),
    (["record", "--steps", "verify", "--notebooks", "{missing}", "--out", "{dir}"], "no such notebook"),
]


@pytest.mark.parametrize(
    ("argv", "message"), BAD_ARGUMENTS, ids=lambda v: " ".join(v) if isinstance(v, list) else None
)
def test_bad_arguments_give_one_line_and_exit_status_2(argv, message, existing, tmp_path, capsys) -> None:
    names = {**existing, "missing": str(tmp_path / "missing.ipynb"), "repo": str(ROOT)}
    argv = [a.format(**names) for a in argv]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert message in _error(argv, capsys)
    assert {
        p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()
    } == before  # nothing written or replaced


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MPCOURSE_PROFILE", "huge", "is not a profile; accepted: ci, small, full"),
        ("MPCOURSE_DEVICE_PRESET", "tpu9", "unknown device preset 'tpu9'; accepted:"),
    ],
)
@pytest.mark.parametrize("command", [["doctor"], ["bench", "formats", "--quick"], ["verify", "x.ipynb"]])
def test_a_bad_environment_variable_is_named_before_anything_runs(
    variable, value, message, command, monkeypatch, capsys
) -> None:
    monkeypatch.setenv(variable, value)
    assert message in _error(command, capsys)


def test_outside_the_repository_student_says_where_to_run_without_a_traceback(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mpcourse.course.cli", "student", "OUTDIR"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        "mpcourse: error: no chapter notebooks (*.ipynb) in notebooks; run this from the course repository's root "
        "or pass --source with the folder that holds them"
    ]
    assert not (tmp_path / "OUTDIR").exists()


def test_help_lists_the_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mpcourse.course.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "student" in out.stdout and "doctor" in out.stdout
    assert main(["--help"]) == 0


def test_bench_save_replaces_a_file_only_with_force(existing, capsys) -> None:
    from mpcourse.bench import results

    assert main(["bench", "formats", "--quick", "--save", existing["file"]]) == 2  # refused before measuring
    assert "median" not in capsys.readouterr().out
    assert main(["bench", "formats", "--quick", "--save", existing["file"], "--force"]) == 0
    assert results.load(existing["file"])["topic"] == "formats"


@pytest.mark.parametrize("topic", ["matmul", "train"])
def test_bench_functions_refuse_an_existing_file_before_measuring(topic, existing, capsys) -> None:
    from mpcourse.bench import results
    from mpcourse.course.cli import bench_function

    before = Path(existing["file"]).read_text()
    with pytest.raises(results.OverwriteError, match="precious.json already exists"):
        bench_function(topic)(save=existing["file"], quick=True)
    assert (
        capsys.readouterr().out == "" and Path(existing["file"]).read_text() == before
    )  # nothing ran, nothing written


def test_every_benchmark_topic_resolves() -> None:
    import importlib

    from mpcourse.course.cli import BENCHES

    for topic, target in BENCHES.items():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), topic


def test_unknown_benchmark_topic_is_rejected(capsys) -> None:
    assert "invalid choice: 'no-such-topic'" in _error(["bench", "no-such-topic"], capsys)


def test_verify_records_a_chapter_run(tmp_path, capsys) -> None:
    import json

    import nbformat

    chapter = nbformat.v4.new_notebook()
    chapter.cells = [
        nbformat.v4.new_code_cell("from mpcourse import sizes\nprint('running', sizes.current())")
    ]
    nb = tmp_path / "tiny.ipynb"
    nbformat.write(chapter, nb)
    out = tmp_path / "records.json"
    argv = ["verify", str(nb), "--profile", "full", "--out", str(out), "--executed", str(tmp_path / "ran")]
    assert main(argv) == 0
    (record,) = json.loads(out.read_text())
    assert record["chapter"] == "tiny" and record["status"] == "passed" and record["profile"] == "full"
    for key in ("device", "torch", "python", "date", "mpcourse"):
        assert record[key], key
    assert "running full" in (tmp_path / "ran" / "tiny.ipynb").read_text()
    # Run again: the records and the executed notebook exist, and are replaced only with --force.
    stored = out.read_text()
    assert "records.json already exists" in _error(argv, capsys) and out.read_text() == stored
    assert "--force" in _error([*argv[:-4], "--executed", str(tmp_path / "ran")], capsys)
    assert main([*argv, "--force"]) == 0
    assert json.loads(out.read_text())[0]["date"] >= record["date"]


def test_verify_reports_a_failing_chapter(tmp_path) -> None:
    import json

    import nbformat

    broken = nbformat.v4.new_notebook()
    broken.cells = [
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("raise ValueError('planted')"),
    ]
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
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


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


def test_a_package_folder_inside_someone_elses_repository_has_no_commit(
    other_repository, tmp_path_factory
) -> None:
    from mpcourse import provenance

    site_packages = other_repository / "venv" / "lib" / "site-packages"
    site_packages.mkdir(parents=True)
    assert (
        provenance.commit(site_packages) is None
    )  # not the top of a repository: the other repo's commit is not ours
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
        return {
            "chapter": chapter,
            "device": "cpu: x",
            "profile": profile,
            "commit": "abc",
            "status": "passed",
            "seconds": 1.0,
            "error": None,
        }

    table = verify.summary([run("full"), run("ci"), run("small"), run("ci", "bf16")])
    assert [c[1] for c in table.columns] == ["ci", "small", "full"]
    assert table.loc["bf16", ("cpu: x", "full", "abc")] == "not in this run"
