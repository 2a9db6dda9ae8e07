"""Fault injection: the daemon is killed (SIGKILL) after events were queued and sent,
before the broker acknowledged them; the next run delivers every one of them.

Real parts only: ``python -m detector replay --realtime`` with an SQLite outbox, a
real Mosquitto made silent with SIGSTOP (so no PUBACK can arrive), a real paho
subscriber. A message the broker read from the dead connection's socket after
SIGCONT may arrive twice (the documented QoS-1 duplicate; subscribers de-duplicate
by ``(id, type)``); none may be missing or out of order.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
import uuid

from mqtt_helpers import Recorder
from onnx_models import make_band_model, write_tone_wav
from test_e2e_mqtt import DOG, SIREN, daemon, write_config


def _queued_events(path) -> list[dict]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT topic, payload FROM outbox ORDER BY seq").fetchall()
    return [json.loads(p) for t, p in rows if t.endswith("/events")]


def test_daemon_killed_between_enqueue_and_puback_loses_nothing(fresh_mosquitto, tmp_path):
    model = make_band_model(tmp_path / "tiny.onnx")
    node = f"fault-{uuid.uuid4().hex[:6]}"
    prefix = f"sound-detector/{node}"
    queue = tmp_path / "state" / "outbox.sqlite"
    conf = write_config(tmp_path / "c.toml", fresh_mosquitto.port, node, f"ha-{node}",
                        mqtt__queue_path=f'"{queue}"')
    wav = write_tone_wav(tmp_path / "tones.wav", [(0.5, 1.5, SIREN), (2.5, 3.5, DOG)],
                         seconds=30.0)
    rec = Recorder(fresh_mosquitto.port, [f"{prefix}/events", f"{prefix}/status"])
    first = daemon("replay", wav, "--realtime", "--model", model, "--config", conf)
    stopped = False
    try:
        rec.wait_for(lambda m: rec.last(f"{prefix}/status") == b"online", 30, "daemon online")
        os.kill(fresh_mosquitto.proc.pid, signal.SIGSTOP)  # from here on: no PUBACK
        stopped = True
        printed = []
        while len(printed) < 4:
            line = first.stdout.readline()
            assert line, first.stderr.read()
            printed.append(json.loads(line))
        # stdout comes after the MQTT sink in the sink order: all four are queued by now
        deadline = time.monotonic() + 10
        while len(_queued_events(queue)) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        queued = _queued_events(queue)
        assert [e["id"] for e in queued] == [e["id"] for e in printed]
        first.kill()  # SIGKILL: no shutdown, no flush
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
        first.stdout.close()
        first.stderr.close()
        if stopped:
            os.kill(fresh_mosquitto.proc.pid, signal.SIGCONT)
    # at most the in-flight message got through, read by the broker after SIGCONT
    assert len(rec.payloads(f"{prefix}/events")) <= 1

    silence = write_tone_wav(tmp_path / "quiet.wav", [], seconds=1.0)
    second = daemon("replay", silence, "--model", model, "--config", conf)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert "Traceback" not in err
    assert "undelivered message(s) from a previous run" in err
    want = [(e["id"], e["type"]) for e in printed]
    rec.wait_for(lambda m: set(want) <= {(e["id"], e["type"])
                                        for e in rec.json(f"{prefix}/events")}, 30,
                 "every queued event after the restart: " + err[-3000:])
    got = [(e["id"], e["type"]) for e in rec.json(f"{prefix}/events")]
    first_seen = list(dict.fromkeys(got))
    assert first_seen == want, "in order"
    assert len(got) - len(first_seen) <= 1, "at most the one in-flight message twice"
    unique = list({(e["id"], e["type"]): e for e in rec.json(f"{prefix}/events")}.values())
    assert unique == printed, "what arrives is exactly what the killed run printed"
    with sqlite3.connect(queue) as db:
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    rec.close()


def test_a_second_daemon_with_the_same_config_is_refused_in_one_line(mosquitto, tmp_path):
    model = make_band_model(tmp_path / "tiny.onnx")
    node = f"twice-{uuid.uuid4().hex[:6]}"
    queue = tmp_path / "state" / "outbox.sqlite"
    conf = write_config(tmp_path / "c.toml", mosquitto.port, node, f"ha-{node}",
                        mqtt__queue_path=f'"{queue}"')
    wav = write_tone_wav(tmp_path / "tones.wav", [(0.5, 1.5, SIREN)], seconds=60.0)
    first = daemon("replay", wav, "--realtime", "--model", model, "--config", conf)
    try:
        deadline = time.monotonic() + 30
        while not (queue.parent / "outbox.sqlite.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        second = daemon("replay", wav, "--model", model, "--config", conf)
        out, err = second.communicate(timeout=60)
        assert second.returncode == 2
        assert out == ""
        assert err.splitlines() == [
            f"sound-detector: error: mqtt.queue_path={str(queue)!r} is in use by another "
            f"running sound-detector (pid {first.pid}, lock outbox.sqlite.lock); one outbox "
            "serves one daemon: stop the other one, or give this one its own queue_path and "
            "client_id"]
        assert first.poll() is None  # the first one is untouched
    finally:
        first.kill()
        first.communicate(timeout=10)
    # SIGKILL released the lock: the next daemon starts
    third = daemon("replay", wav, "--model", model, "--config", conf)
    third.communicate(timeout=120)
    assert third.returncode == 0


def test_a_second_daemon_with_the_same_client_id_is_refused_in_one_line(mosquitto, tmp_path):
    """Without an outbox file the client id is what two daemons share: the broker would
    keep only one connection, each reconnect knocking the other off."""
    model = make_band_model(tmp_path / "tiny.onnx")
    node = f"id-{uuid.uuid4().hex[:6]}"
    conf = write_config(tmp_path / "c.toml", mosquitto.port, node, f"ha-{node}")
    wav = write_tone_wav(tmp_path / "tones.wav", [(0.5, 1.5, SIREN)], seconds=60.0)
    rec = Recorder(mosquitto.port, [f"sound-detector/{node}/status"])
    first = daemon("replay", wav, "--realtime", "--model", model, "--config", conf)
    try:
        rec.wait_for(lambda msgs: any(p == b"online" for _, p, _ in msgs), 30, "online")
        second = daemon("replay", wav, "--model", model, "--config", conf)
        out, err = second.communicate(timeout=60)
        assert second.returncode == 2
        assert out == ""
        assert err.splitlines() == [
            f"sound-detector: error: MQTT client id 'sound-detector-{node}' on "
            f"127.0.0.1:{mosquitto.port} is in use by another running sound-detector on this "
            f"machine (pid {first.pid}); the broker keeps one connection per id: stop the "
            "other one, or give this one its own mqtt.client_id (or mqtt.node_id)"]
        assert first.poll() is None
        # a second daemon with its own node id runs beside it
        other = write_config(tmp_path / "d.toml", mosquitto.port, node + "b", f"ha-{node}b")
        third = daemon("replay", wav, "--model", model, "--config", other)
        third.communicate(timeout=120)
        assert third.returncode == 0
    finally:
        first.kill()
        first.communicate(timeout=10)
        rec.close()
    # SIGKILL released the lock
    fourth = daemon("replay", wav, "--model", model, "--config", conf)
    fourth.communicate(timeout=120)
    assert fourth.returncode == 0
