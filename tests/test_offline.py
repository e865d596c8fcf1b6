"""The test run is offline by construction (tests/conftest.py): hub libraries are told so, and a test that
opens a connection to another machine fails, while loopback (Jupyter kernels, local servers) stays open."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from conftest import OFFLINE_VARIABLES, ROOT, NetworkAccessError, NetworkGuard, is_loopback

PLANT = "MPCOURSE_TEST_PLANT_CONNECTION"


def test_the_hub_libraries_are_offline_here_and_in_child_processes() -> None:
    assert all(os.environ[name] == "1" for name in OFFLINE_VARIABLES)
    code = f"import os; print(' '.join(os.environ.get(n, '-') for n in {OFFLINE_VARIABLES!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1"] * len(OFFLINE_VARIABLES)  # what nbval's kernels and the book build inherit


def test_the_hub_loader_gives_up_at_once() -> None:
    from mpcourse import data

    with pytest.raises(ConnectionError, match="HF_HUB_OFFLINE"):
        data._hub("ylecun/mnist", None, "train")


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("fe80::1%eth0", False),
        ("192.0.2.1", False),
        ("2001:db8::1", False),
        ("huggingface.co", False),
        (b"127.0.0.1", True),
    ],
)
def test_loopback_is_told_from_other_machines(host: object, local: bool) -> None:
    assert is_loopback(host) is local


@pytest.mark.parametrize(
    "opener",
    [
        lambda: socket.create_connection(("192.0.2.1", 80), timeout=0.5),  # TEST-NET-1: documentation only
        lambda: socket.create_connection(
            ("huggingface.co", 443), timeout=0.5
        ),  # refused before the name is looked up
        lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect(("198.51.100.7", 443)),
        lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect_ex(("203.0.113.9", 80)),
    ],
    ids=["create_connection", "by-name", "connect", "connect_ex"],
)
def test_a_connection_to_another_machine_is_refused_and_recorded(opener, network_guard: NetworkGuard) -> None:
    before = len(network_guard.attempts)
    with pytest.raises(NetworkAccessError, match="offline"):
        opener()
    assert len(network_guard.attempts) == before + 1
    with pytest.raises(pytest.fail.Exception, match="tried to open network connections"):
        network_guard.fail_if_opened(before)
    del network_guard.attempts[before:]  # planted here on purpose: not this test's failure


def test_loopback_connections_still_work() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            conn, _ = server.accept()
            conn.close()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
            client.connect(("localhost", port))
            server.accept()[0].close()


@pytest.mark.skipif(
    os.environ.get(PLANT) != "1", reason=f"run by the test below, in a pytest of its own ({PLANT}=1)"
)
def test_planted_connection_whose_refusal_the_code_swallows() -> None:
    try:
        socket.create_connection(("192.0.2.1", 80), timeout=0.5)
    except OSError:
        pass  # as code that falls back when the network is missing would


def test_a_test_that_swallows_the_refusal_still_fails() -> None:
    """End to end, in a separate pytest run: the planted test above fails at teardown."""
    env = {**os.environ, PLANT: "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"{__file__}::test_planted_connection_whose_refusal_the_code_swallows",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stdout[-3000:]
    assert "tried to open network connections" in result.stdout and "192.0.2.1" in result.stdout
