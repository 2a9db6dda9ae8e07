"""A real paho subscriber for tests: records every message, waits for conditions."""

from __future__ import annotations

import json
import threading
import time
import uuid

import paho.mqtt.client as paho


class Recorder:
    """Subscribes to topic filters on a real broker and records (topic, payload, retain)."""

    def __init__(self, port: int, topics=("#",), host: str = "127.0.0.1",
                 username: str | None = None, password: str | None = None):
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                  client_id=f"test-recorder-{uuid.uuid4().hex[:8]}")
        self.topics = list(topics)
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect_async(host, port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(20):
            raise RuntimeError("test subscriber could not subscribe")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if not reason_code.is_failure:
            client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, client, userdata, message):
        with self._cond:
            self.messages.append((message.topic, message.payload, bool(message.retain)))
            self._cond.notify_all()

    def wait_for(self, predicate, timeout: float = 30.0, what: str = "condition"):
        """Wait until ``predicate(messages)`` is truthy; return its value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(list(self.messages))
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out waiting for {what}; got "
                                         f"{[(t, p[:80]) for t, p, _ in self.messages][-20:]}")
                self._cond.wait(min(remaining, 0.2))

    def payloads(self, topic: str) -> list[bytes]:
        with self._cond:
            return [p for t, p, _ in self.messages if t == topic]

    def json(self, topic: str) -> list[dict]:
        return [json.loads(p) for p in self.payloads(topic)]

    def wait_count(self, topic: str, n: int, timeout: float = 30.0) -> list[bytes]:
        self.wait_for(lambda msgs: sum(1 for t, _, _ in msgs if t == topic) >= n, timeout,
                      f"{n} message(s) on {topic}")
        return self.payloads(topic)

    def last(self, topic: str) -> bytes | None:
        found = self.payloads(topic)
        return found[-1] if found else None

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def retained(port: int, topic: str, timeout: float = 10.0) -> bytes | None:
    """The retained payload of ``topic`` as a new subscriber sees it (None = none)."""
    got: list[bytes] = []
    done = threading.Event()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                         client_id=f"test-retained-{uuid.uuid4().hex[:8]}")

    def on_connect(c, u, f, rc, p):
        c.subscribe(topic, 1)

    def on_subscribe(c, u, mid, rcs, p):
        # retained messages come right after SUBACK; give them a moment
        threading.Timer(0.5, done.set).start()

    def on_message(c, u, m):
        if m.retain:
            got.append(m.payload)
            done.set()

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    done.wait(timeout)
    client.disconnect()
    client.loop_stop()
    return got[-1] if got else None


def make_event(i: int, label: str = "siren", kind: str = "start", node: str = "n") -> dict:
    """A contract-shaped event dict (keys of README "MQTT topics")."""
    return {"id": f"{uuid.uuid4()}", "type": kind, "label": label, "score": 0.9,
            "peak_score": 0.95, "start": "2026-01-01T00:00:00.000Z",
            "end": None if kind == "start" else "2026-01-01T00:00:01.000Z",
            "duration_s": None if kind == "start" else 1.0, "level_dbfs": -20.0,
            "node": node, "model": "test", "seq": i}


def retained_all(port: int, topic_filter: str, settle: float = 0.7) -> dict[str, bytes]:
    """Every non-empty retained message under ``topic_filter`` as a new subscriber sees
    it: ``{topic: payload}`` (the broker sends them right after the SUBACK)."""
    got: dict[str, bytes] = {}
    subscribed = threading.Event()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                         client_id=f"test-retained-{uuid.uuid4().hex[:8]}")
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic_filter, 1)
    client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()

    def on_message(c, u, m):
        if m.retain and m.payload:
            got[m.topic] = m.payload

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not subscribed.wait(10):
        raise RuntimeError("retained_all: could not subscribe")
    time.sleep(settle)
    client.disconnect()
    client.loop_stop()
    return got
