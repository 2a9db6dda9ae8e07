"""The broker fixture is real: a paho client round-trips a retained message."""

import re
import threading
from pathlib import Path

import paho.mqtt.client as mqtt

from conftest import REPO


def test_retained_roundtrip(mosquitto):
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fixture-pub")
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    pub.publish("t/x", b"hello", qos=1, retain=True).wait_for_publish(5)
    pub.loop_stop()
    pub.disconnect()

    got = threading.Event()
    seen = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fixture-sub")
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("t/#", qos=1)
    sub.on_message = lambda c, u, m: (seen.append((m.topic, m.payload, m.retain)), got.set())
    sub.connect("127.0.0.1", mosquitto.port)
    sub.loop_start()
    assert got.wait(5)
    sub.loop_stop()
    sub.disconnect()
    assert seen[0] == ("t/x", b"hello", True)


def test_broker_found_on_a_plain_users_path(tmp_path, monkeypatch):
    """Debian's default PATH for a non-root login has no /usr/sbin, where mosquitto is."""
    from conftest import Mosquitto, mosquitto_binary

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    exe = mosquitto_binary()
    assert Path(exe).name == "mosquitto" and Path(exe).is_file()
    broker = Mosquitto(tmp_path)
    try:
        assert broker.proc.poll() is None
    finally:
        broker.stop()


def test_no_test_or_benchmark_starts_a_bare_mosquitto():
    """Every broker program is started by its full path from the one lookup."""
    bare = re.compile(r"""\[\s*["']mosquitto(_passwd|_sub|_pub)?["']""")
    offenders = [f"{p.relative_to(REPO)}:{n}"
                 for folder in ("tests", "bench", "scripts")
                 for p in sorted((REPO / folder).rglob("*.py"))
                 for n, line in enumerate(p.read_text().splitlines(), 1)
                 if bare.search(line)]
    assert offenders == []
