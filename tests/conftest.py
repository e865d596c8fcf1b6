"""Shared fixtures: the repository root, and the website built once per test session."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
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
