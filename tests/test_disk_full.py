"""A full disk under the SQLite outbox: nothing is lost quietly.

Real parts only: a 200 kB tmpfs (mounting needs root; skipped otherwise) filled by a
real file, ``python -m detector replay`` as a subprocess, a real Mosquitto that is
away and comes back, a real paho subscriber with a persistent session.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from conftest import Mosquitto, free_port
from mqtt_helpers import Recorder
from onnx_models import make_band_model, write_tone_wav
from test_e2e_mqtt import SIREN, daemon, write_config

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="mounting a small tmpfs (a full disk) needs root")


@pytest.fixture
def small_fs(tmp_path):
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` to the last byte with one file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def stored_events(path: Path) -> list[dict]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT topic, payload FROM outbox ORDER BY seq").fetchall()
    return [json.loads(p) for t, p in rows if t.endswith("/events")]


class Lines:
    """Reads a pipe's lines in a thread (stdout and stderr both, without deadlock)."""

    def __init__(self, pipe):
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe):
        for line in pipe:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.lines):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}: {self.lines[-10:]}")
                self._cond.wait(min(left, 0.2))

    def join(self):
        self._thread.join(10)
        return self.lines


def test_unit_outbox_holds_in_memory_and_writes_when_space_returns(small_fs, caplog):
    from detector.publish.outbox import SqliteOutbox

    box = SqliteOutbox(small_fs / "q" / "outbox.sqlite", 100)
    filler = fill(small_fs)
    for i in range(150):
        box.put("n/events", json.dumps({"id": i, "pad": "x" * 200}))
    assert box.held == 100 and box.events_lost == 50  # the hold is bounded, losses counted
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2  # "refuses writes" and the first loss, not one line per message
    assert "refuses writes" in errors[0] and "LOST 1 message(s)" in errors[1]
    # a held message is delivered straight from memory while the disk stays full
    first = box.peek()
    assert first.held and json.loads(first.payload)["id"] == 50
    box.remove(first)
    filler.unlink()  # space comes back: the next put writes the held ones first, in order
    box.put("n/events", json.dumps({"id": 150}))
    assert box.held == 0
    seen = []
    while (message := box.peek()) is not None:
        seen.append(json.loads(message.payload)["id"])
        box.remove(message)
    assert seen == list(range(51, 151))
    box.close()
    assert box.events_lost == 50


def test_disk_full_replay_with_the_broker_away_exits_non_zero_and_counts(small_fs, tmp_path):
    port_owner = Mosquitto(tmp_path)  # a port nothing listens on: the broker is away
    port = port_owner.port
    port_owner.stop()
    model = make_band_model(tmp_path / "tiny.onnx")
    node = f"full-{uuid.uuid4().hex[:6]}"
    queue = small_fs / "state" / "outbox.sqlite"
    conf = write_config(tmp_path / "c.toml", port, node, f"ha-{node}",
                        mqtt__queue_path=f'"{queue}"', mqtt__queue_max_events="5")
    tones = [(1.0 + 2 * i, 2.0 + 2 * i, SIREN) for i in range(8)]
    wav = write_tone_wav(tmp_path / "tones.wav", tones, seconds=18.0)
    proc = daemon("replay", wav, "--realtime", "--model", model, "--config", conf)
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    err.wait(lambda lines: any("MQTT: publishing to" in line for line in lines), 60,
             "the MQTT sink to start")
    fill(small_fs)  # from here on, the outbox file refuses every write
    proc.wait(120)
    printed = [json.loads(line) for line in out.join()]
    errlines = err.join()
    assert proc.returncode == 3, errlines
    assert not any("Traceback" in line for line in errlines)
    stored = stored_events(queue)
    reported = [line for line in errlines if "MQTT outbox: LOST" in line]
    lost_total = int(re.search(r"\((\d+) event\(s\)\) lost since start", reported[-1])[1])
    # every printed event is on disk or counted as lost: nothing vanished without a word
    assert len(printed) == 16
    assert len(printed) == len(stored) + lost_total and lost_total > 0
    assert len(reported) <= 3  # the first loss, at most one interval line, shutdown
    assert errlines[-1] == (f"sound-detector: error: {lost_total} event(s) were lost on the way "
                            "to MQTT (see the ERROR lines above and "
                            "sound_detector_events_lost_total)")


class Gate:
    """The broker's way in for the daemon: nothing listens on ``port`` until
    :meth:`open`, then every connection is relayed to the real broker. The test's
    subscriber talks to the broker directly, subscribed before the daemon can reach it."""

    def __init__(self, target: int):
        self.port, self.target = free_port(), target
        self._server: socket.socket | None = None
        self._sockets: list[socket.socket] = []

    def open(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        for sock in [self._server, *self._sockets]:
            if sock is not None:
                sock.close()


def test_disk_full_then_the_broker_comes_back_delivers_every_event(small_fs, tmp_path,
                                                                   mosquitto):
    node = f"back-{uuid.uuid4().hex[:6]}"
    prefix = f"sound-detector/{node}"
    rec = Recorder(mosquitto.port, [f"{prefix}/events"])
    gate = Gate(mosquitto.port)  # the broker is away for the daemon until the gate opens
    proc = None
    try:
        model = make_band_model(tmp_path / "tiny.onnx")
        queue = small_fs / "state" / "outbox.sqlite"
        conf = write_config(tmp_path / "c.toml", gate.port, node, f"ha-{node}",
                            mqtt__queue_path=f'"{queue}"')
        tones = [(1.0 + 2 * i, 2.0 + 2 * i, SIREN) for i in range(6)]
        wav = write_tone_wav(tmp_path / "tones.wav", tones, seconds=16.0)
        proc = daemon("replay", wav, "--realtime", "--model", model, "--config", conf)
        out, err = Lines(proc.stdout), Lines(proc.stderr)
        err.wait(lambda lines: any("MQTT: publishing to" in line for line in lines), 60,
                 "the MQTT sink to start")
        fill(small_fs)
        out.wait(lambda lines: len(lines) >= 4, 60, "four events printed")
        gate.open()  # the broker comes back while the disk is still full
        proc.wait(120)
        printed = [json.loads(line) for line in out.join()]
        errlines = err.join()
        assert proc.returncode == 0, "\n".join(errlines)
        assert not any("Traceback" in line for line in errlines)
        assert any("refuses writes" in line for line in errlines)  # the disk said so
        assert not any("LOST" in line for line in errlines)
        assert len(printed) == 12
        got = rec.wait_count(f"{prefix}/events", len(printed))
        ids = [(e["id"], e["type"]) for e in map(json.loads, got)]
        assert list(dict.fromkeys(ids)) == [(e["id"], e["type"]) for e in printed]
        assert stored_events(queue) == []  # delivered from memory: nothing left behind
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        rec.close()
        gate.close()
