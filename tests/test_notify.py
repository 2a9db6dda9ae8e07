"""sd_notify protocol against a real AF_UNIX datagram socket, as systemd creates it."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from detector.publish.notify import NotifySink


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request, tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        path = str(tmp_path / "notify.sock")
        sock.bind(path)
        env_value = path
    else:
        name = f"sound-detector-test-{uuid.uuid4().hex}"
        sock.bind(b"\0" + name.encode())
        env_value = "@" + name
    sock.settimeout(5)
    yield sock, env_value
    sock.close()


def receive_all(sock) -> list[str]:
    sock.settimeout(0.2)
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except socket.timeout:
            return out


def test_ready_watchdog_stopping(notify_socket):
    sock, address = notify_socket
    clock = FakeClock()
    sink = NotifySink({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "30000000"}, clock=clock)
    assert sink.ping_interval == 15.0
    sink.start(["siren", "dog_bark"], "v3")
    first = sock.recv(4096).decode().split("\n")
    assert first[0] == "READY=1" and first[1].startswith("STATUS=listening for 2 labels")
    assert sock.recv(4096) == b"WATCHDOG=1"
    # 100 windows within 10 s of clock time: no ping (rate limit = WatchdogSec / 2)
    for _ in range(100):
        clock.t += 0.1
        sink.window({}, -30.0, 0.0, {})
    assert receive_all(sock) == []
    clock.t += 5.0  # 15 s since the last ping
    sink.window({}, -30.0, 0.0, {})
    sink.window({}, -30.0, 0.0, {})
    assert receive_all(sock) == ["WATCHDOG=1"]
    sink.close()
    assert receive_all(sock) == ["STOPPING=1\nSTATUS=stopping"]


def test_stalled_loop_stops_pinging(notify_socket):
    """No window() calls = no WATCHDOG=1, however much time passes: systemd restarts us."""
    sock, address = notify_socket
    clock = FakeClock()
    sink = NotifySink({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"}, clock=clock)
    sink.start(["siren"], "v1")
    receive_all(sock)
    clock.t += 3600
    assert receive_all(sock) == []
    sink.window({}, -30.0, 0.0, {})
    assert receive_all(sock) == ["WATCHDOG=1"]
    sink.close()


def test_device_loss_keeps_the_watchdog_fed(notify_socket):
    sock, address = notify_socket
    # real clock: WATCHDOG_USEC=0.2 s -> ping at most every 0.1 s from the keeper thread
    sink = NotifySink({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"})
    sink.start(["siren"], "v1")
    receive_all(sock)
    sink.status("device", "lost")
    assert sock.recv(4096) == b"STATUS=audio device lost; retrying"
    sock.settimeout(5)
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert sock.recv(4096) == b"WATCHDOG=1", "keeps pinging while the device is lost"
    sink.status("device", "connected")
    sink.close()
    assert sink._keeper is not None and not sink._keeper.is_alive()


def test_status_tells_the_truth_about_the_device(notify_socket):
    """Audio arriving after a normal start changes nothing (no "device back" without a
    loss); a device missing at start is "waiting for audio device …" with the watchdog
    fed; its arrival, and a later loss and return, say what happened."""
    sock, address = notify_socket
    sink = NotifySink({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"}, device="USB mic")
    sink.start(["siren"], "v1")
    receive_all(sock)
    sink.status("device", "connected")
    assert [m for m in receive_all(sock) if m != "WATCHDOG=1"] == []
    sink.status("device", "waiting")
    assert sock.recv(4096) == b"STATUS=waiting for audio device 'USB mic'; retrying"
    sock.settimeout(5)
    assert sock.recv(4096) == b"WATCHDOG=1" and sock.recv(4096) == b"WATCHDOG=1"
    sink.status("device", "connected")
    assert [m for m in receive_all(sock) if m != "WATCHDOG=1"] == \
        ["STATUS=listening for 1 labels (model v1)"]
    sink.status("device", "lost")
    sink.status("device", "connected")
    assert [m for m in receive_all(sock) if m != "WATCHDOG=1"] == \
        ["STATUS=audio device lost; retrying",
         "STATUS=listening for 1 labels (model v1); audio device back"]
    sink.close()
    default = NotifySink({"NOTIFY_SOCKET": address})
    default.start(["siren"], "v1")
    receive_all(sock)
    default.status("device", "waiting")
    assert sock.recv(4096) == b"STATUS=waiting for audio device (the default input); retrying"
    default.close()


def test_watchdog_pid_of_another_process_is_ignored(notify_socket):
    sock, address = notify_socket
    sink = NotifySink({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000",
                       "WATCHDOG_PID": str(os.getpid() + 1)})
    assert sink.ping_interval is None
    sink.start(["siren"], "v1")
    assert [m for m in receive_all(sock) if "WATCHDOG" in m] == []
    sink.close()


def test_without_notify_socket_everything_is_a_noop():
    sink = NotifySink({})
    sink.start(["siren"], "v1")
    sink.window({}, -30.0, 0.0, {})
    sink.status("device", "lost")
    sink.close()
    assert not sink.notifier.enabled


def test_vanished_socket_is_one_warning(tmp_path, caplog):
    path = tmp_path / "gone.sock"
    sink = NotifySink({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000"})
    sink.start(["siren"], "v1")
    for _ in range(5):
        sink.window({}, -30.0, 0.0, {})
    sink.close()
    warnings = [r for r in caplog.records if "sd_notify" in r.getMessage()]
    assert len(warnings) == 1
