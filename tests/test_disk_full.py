"""A full disk under the SQLite outbox: nothing is lost quietly.

Real parts only: a 200 kB tmpfs (mounting needs root; skipped otherwise) filled by a
real file, ``python -m detector replay`` as a subprocess, a real Mosquitto that is
away and comes back, a real paho subscriber with a persistent session.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from conftest import Mosquitto
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
    from detector.outbox import SqliteOutbox

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


def test_disk_full_then_the_broker_comes_back_delivers_every_event(small_fs, tmp_path):
    broker = Mosquitto(tmp_path)
    broker.stop()  # keep sessions across restarts: the subscriber misses nothing
    broker.conf.write_text(f"listener {broker.port} 127.0.0.1\nallow_anonymous true\n"
                           f"persistence true\npersistence_location {tmp_path}/\n")
    broker.start()
    node = f"back-{uuid.uuid4().hex[:6]}"
    prefix = f"sound-detector/{node}"
    got: list[dict] = []
    subscribed = threading.Event()
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"sub-{node}",
                      clean_session=False)
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{prefix}/events", 1)
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_message = lambda c, u, m: got.append(json.loads(m.payload))
    sub.reconnect_delay_set(0.2, 1)
    sub.connect_async("127.0.0.1", broker.port)
    sub.loop_start()
    proc = None
    try:
        assert subscribed.wait(20)
        broker.stop()  # the broker goes away (the subscription is saved)
        model = make_band_model(tmp_path / "tiny.onnx")
        queue = small_fs / "state" / "outbox.sqlite"
        conf = write_config(tmp_path / "c.toml", broker.port, node, f"ha-{node}",
                            mqtt__queue_path=f'"{queue}"')
        tones = [(1.0 + 2 * i, 2.0 + 2 * i, SIREN) for i in range(6)]
        wav = write_tone_wav(tmp_path / "tones.wav", tones, seconds=16.0)
        proc = daemon("replay", wav, "--realtime", "--model", model, "--config", conf)
        out, err = Lines(proc.stdout), Lines(proc.stderr)
        err.wait(lambda lines: any("MQTT: publishing to" in line for line in lines), 60,
                 "the MQTT sink to start")
        fill(small_fs)
        out.wait(lambda lines: len(lines) >= 4, 60, "four events printed")
        broker.start()  # the broker comes back while the disk is still full
        proc.wait(120)
        printed = [json.loads(line) for line in out.join()]
        errlines = err.join()
        assert proc.returncode == 0, "\n".join(errlines)
        assert not any("Traceback" in line for line in errlines)
        assert any("refuses writes" in line for line in errlines)  # the disk said so
        assert not any("LOST" in line for line in errlines)
        deadline = time.monotonic() + 30
        while len(got) < len(printed) and time.monotonic() < deadline:
            time.sleep(0.1)
        ids = [(e["id"], e["type"]) for e in got]
        assert len(printed) == 12
        assert list(dict.fromkeys(ids)) == [(e["id"], e["type"]) for e in printed]
        assert stored_events(queue) == []  # delivered from memory: nothing left behind
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        sub.loop_stop()
        broker.stop()
