"""Shared fixtures: real services started on free loopback ports."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

pytest_plugins = ["pulse"]  # PulseAudio FIFO virtual microphone fixtures (tests/pulse.py)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# The daemon's per-machine lock files (one daemon per MQTT client id and broker) go to
# RUNTIME_DIRECTORY: one of this test session's own, inherited by the daemons it starts,
# so two test sessions on one machine do not see each other's sinks as a second daemon.
os.environ["RUNTIME_DIRECTORY"] = tempfile.mkdtemp(prefix="sound-detector-test-run-")

# One lookup of the broker's programs for tests and benchmarks (bench/_common.py).
_spec = importlib.util.spec_from_file_location("bench_common", REPO / "bench" / "_common.py")
_bench_common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench_common)


def mosquitto_binary(name: str = "mosquitto") -> str:
    """The full path of ``mosquitto`` (in /usr/sbin on Debian, off a plain user's PATH)
    or ``mosquitto_passwd``; fails the test with the command that installs it."""
    exe = _bench_common.mosquitto_binary(name)
    if exe is None:
        pytest.fail(f"{name} is not installed: run scripts/setup-test-deps.sh")
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class Mosquitto:
    """A real Debian mosquitto on a free loopback port; restartable on the same port."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.exe = mosquitto_binary()
        self.port = port or free_port()
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.log = workdir / f"mosquitto-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)],
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory):
    """Session-wide broker. Do not stop it in a test; use ``fresh_mosquitto`` for that."""
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield broker
    broker.stop()


@pytest.fixture
def fresh_mosquitto(tmp_path):
    """A broker of the test's own, which the test may stop and restart."""
    broker = Mosquitto(tmp_path)
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data in ../shared/data; tests that need it skip when it is absent."""
    if not (SHARED_DATA / "urbansound8k").is_dir():
        pytest.skip(f"real data not found at ../shared/data (see README, 'Data')")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _no_leftover_cli_log_handler():
    """A test that runs ``detector.cli.main.main`` in-process leaves its stderr log handler on
    the root logger; without this, every later test's log lines would print through it."""
    yield
    import logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_sound_detector", False):
            root.removeHandler(handler)
