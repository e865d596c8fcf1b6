"""Shared fixtures: the repository root, and the website built once per test session."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mpcourse.course import authoring

ROOT = Path(__file__).resolve().parent.parent

# Under the tests every claim a chapter makes is checked strictly: a claim that fails raises, here and in
# every kernel nbval or the website build starts (they inherit this environment). A learner's run only notes it.
os.environ["MPCOURSE_CLAIMS"] = "strict"
# Offline by construction: the hub libraries do not try the network, here and in every kernel or build this
# run starts (they inherit the environment); see NetworkGuard for connections opened in this process.
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
os.environ.update(dict.fromkeys(OFFLINE_VARIABLES, "1"))
SITE = ROOT / "_build" / "html"


#: One nbgrader cycle over every chapter, in a process of its own (the course's nbgrader_config.py sets
#: environment variables): alice hands in every chapter with the reference solutions, bob hands in
#: getting_started with one wrong answer and one left unanswered. tests/test_nbgrader.py checks the grades.
CYCLE = textwrap.dedent(
    """
    import json, sys
    from dataclasses import asdict
    from mpcourse.course.grading import round_trip

    def bob(nb):
        for cell in nb.cells:
            grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
            if grade_id == "getting_started-tflops-answer":  # counts a multiply-add as one FLOP
                cell.source = "def matmul_tflops(m, n, k, seconds):\\n    return m * n * k / seconds / 1e12\\n"
            elif grade_id == "getting_started-relative-error-answer":  # left as released: unanswered
                cell.source = cell.source.split("### BEGIN SOLUTION")[0] + "    raise NotImplementedError()\\n"
        return nb

    chapters = sys.argv[2].split(",")
    grades = round_trip(sys.argv[1], {"alice": dict.fromkeys(chapters), "bob": {"getting_started": bob}})
    print("GRADES=" + json.dumps([asdict(g) for g in grades]))
    """
)


@dataclass
class GradedCourse:
    """The nbgrader cycle's course folder and grades (None, with the log, when the cycle failed)."""

    course: Path
    grades: dict[tuple[str, str], dict] | None
    log: str

    def executed(self, student: str = "alice") -> dict[str, Path]:
        """The autograded, executed notebook of each chapter ``student`` handed in."""
        folder = self.course / "autograded" / student
        return {nb.parent.name: nb for nb in sorted(folder.glob("*/*.ipynb")) if nb.stem == nb.parent.name}


@pytest.fixture(scope="session")
def graded_course(tmp_path_factory: pytest.TempPathFactory) -> GradedCourse:
    """Every chapter executed and graded once, for the grading tests and the website build."""
    from mpcourse.course.student import write_nbgrader_course

    course = tmp_path_factory.mktemp("course")
    write_nbgrader_course(course, ROOT / "notebooks")
    slugs = [md.stem for md in authoring.chapters()]
    env = dict(os.environ, MPCOURSE_PROFILE=os.environ.get("MPCOURSE_PROFILE", "ci"))
    env.pop("MPCOURSE_GRADING", None)  # the course's nbgrader_config.py sets it
    result = subprocess.run(
        [sys.executable, "-c", CYCLE, str(course), ",".join(slugs)],
        cwd=course,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    found = [line for line in result.stdout.splitlines() if line.startswith("GRADES=")]
    if result.returncode != 0 or not found:
        return GradedCourse(course, None, f"{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    grades = {(g["student"], g["assignment"]): g for g in json.loads(found[0].removeprefix("GRADES="))}
    return GradedCourse(course, grades, "")


@pytest.fixture(scope="session")
def built_site(graded_course: GradedCourse) -> Path:
    """Build the website exactly as `make book` does (with -W: any warning or cell error fails).

    The chapters' outputs come from the graded run where it executed them cleanly (the same code
    cells, in the same profile: `authoring.prime_execution_cache`); the build executes the rest.
    """
    env = dict(os.environ, MPCOURSE_PROFILE=os.environ.get("MPCOURSE_PROFILE", "ci"))
    authoring.refresh_execution_cache(ROOT, env["MPCOURSE_PROFILE"])
    # prime_execution_cache itself leaves out a chapter whose code changed or whose cells raised.
    authoring.prime_execution_cache(graded_course.executed(), ROOT)
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


def is_loopback(host: object) -> bool:
    """Whether ``host`` (of a socket address) is this machine: ``localhost``, 127.0.0.0/8 or ::1."""
    host = host.decode() if isinstance(host, bytes) else str(host)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:  # any other host name: resolving it is already network traffic
        return False


class NetworkAccessError(ConnectionError):
    """A test opened a connection to another machine (the test run is offline)."""


class NetworkGuard:
    """Refuses, and records, every IP connection this test process opens to another machine.

    Installed for the whole session on ``socket.socket.connect``/``connect_ex`` and
    ``socket.create_connection`` (which it checks before resolving the name); loopback stays
    open, for the Jupyter kernels' and the browser test's local servers. A test that tries fails at
    teardown even if the code under test catches the refusal (as a hub loader falling back to local
    data does). It cannot reach other processes: the kernels nbval and nbclient start and the
    website build are covered by the environment variables in OFFLINE_VARIABLES instead.
    Installing packages happens before the tests (``make``), never during them.
    """

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def refuse(self, address: object) -> None:
        self.attempts.append(repr(address))
        raise NetworkAccessError(
            f"the test run is offline: a connection to {address!r} was refused (tests/conftest.py)"
        )

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        connect, connect_ex, create_connection = (
            socket.socket.connect,
            socket.socket.connect_ex,
            socket.create_connection,
        )

        def remote(sock: socket.socket, address: object) -> bool:
            return sock.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(address[0])  # type: ignore[index]

        def guarded_connect(sock: socket.socket, address: object) -> None:
            if remote(sock, address):
                self.refuse(address)
            return connect(sock, address)

        def guarded_connect_ex(sock: socket.socket, address: object) -> int:
            if remote(sock, address):
                self.refuse(address)
            return connect_ex(sock, address)

        def guarded_create_connection(
            address: tuple[str, int], *args: object, **kwargs: object
        ) -> socket.socket:
            if not is_loopback(address[0]):
                self.refuse(address)
            return create_connection(address, *args, **kwargs)

        monkeypatch.setattr(socket.socket, "connect", guarded_connect)
        monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
        monkeypatch.setattr(socket, "create_connection", guarded_create_connection)

    def fail_if_opened(self, since: int) -> None:
        """Fail the current test if it tried to open a connection (attempts after index ``since``)."""
        opened = self.attempts[since:]
        if opened:
            pytest.fail(
                f"the test tried to open network connections (the test run is offline): {', '.join(opened)}"
            )


@pytest.fixture(scope="session", autouse=True)
def network_guard() -> Iterator[NetworkGuard]:
    guard = NetworkGuard()
    with pytest.MonkeyPatch.context() as patch:
        guard.install(patch)
        yield guard


@pytest.fixture(autouse=True)
def _offline(network_guard: NetworkGuard) -> Iterator[None]:
    since = len(network_guard.attempts)
    yield
    network_guard.fail_if_opened(since)
