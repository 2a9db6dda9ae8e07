"""MqttSink when things go wrong, against a real Mosquitto: retained control,
flooding, undeliverable messages, refused / silent / TLS-mismatched brokers."""

from __future__ import annotations

import logging
import uuid

import pytest

from detector.config import MqttConfig
from detector.mqtt import MqttSink
from mqtt_helpers import Recorder, retained


def settings(port, **kw):
    kw.setdefault("node_id", f"node-{uuid.uuid4().hex[:6]}")
    kw.setdefault("discovery_prefix", f"ha-{uuid.uuid4().hex[:6]}")
    kw.setdefault("host", "127.0.0.1")
    return MqttConfig(enabled=True, port=port, **kw)


@pytest.fixture
def sinks():
    made = []
    yield made
    for sink in made:
        sink.close()


def _warnings(caplog, logger="detector.mqtt"):
    return [r.getMessage() for r in caplog.records
            if r.name == logger and r.levelno >= logging.WARNING]


def test_retained_control_is_ignored_and_cleared(mosquitto, sinks, caplog):
    s = settings(mosquitto.port)
    topic = f"sound-detector/{s.node_id}/set"
    pub = Recorder(mosquitto.port, [f"sound-detector/{s.node_id}/status"])
    pub.client.publish(topic, b'{"labels": {"siren": {"enabled": false}}}', qos=1,
                       retain=True).wait_for_publish(5)
    assert retained(mosquitto.port, topic) is not None
    controls = []
    with caplog.at_level(logging.WARNING, logger="detector.mqtt"):
        sink = MqttSink(s, on_control=controls.append)
        sinks.append(sink)
        sink.start(["siren"], "v1")
        pub.wait_for(lambda m: any("retained" in w for w in _warnings(caplog)), 20,
                     "the retained-control warning")
    pub.wait_for(lambda m: retained(mosquitto.port, topic) is None, 10, "retained set cleared")
    assert controls == [], "a retained command must not be applied"
    lines = [w for w in _warnings(caplog) if "retained" in w]
    assert len(lines) == 1 and topic in lines[0] and "cleared" in lines[0]
    # a live command still works, and the empty clearing message is not a warning
    pub.client.publish(topic, b'{"labels": {"siren": {"enabled": false}}}', qos=1)
    pub.wait_for(lambda m: controls, 20, "the live command")
    assert controls == [{"labels": {"siren": {"enabled": False}}}]
    assert not [w for w in _warnings(caplog) if "not valid JSON" in w or "not UTF-8" in w]
    pub.close()


def test_a_flood_of_bad_control_is_rate_limited(mosquitto, sinks, caplog):
    s = settings(mosquitto.port)
    topic = f"sound-detector/{s.node_id}/set"
    controls = []
    sink = MqttSink(s, on_control=controls.append)
    sinks.append(sink)
    sink.start(["siren"], "v1")
    pub = Recorder(mosquitto.port, [f"sound-detector/{s.node_id}/status"])
    pub.wait_for(lambda m: sink.connected, 20, "sink connected")
    big = b'{"labels": {"siren": {"threshold_on": ' + b"9" * 3000 + b"}}}"
    with caplog.at_level(logging.DEBUG, logger="detector.mqtt"):
        for _ in range(200):
            pub.client.publish(topic, b"not json", qos=1)
        pub.client.publish(topic, big, qos=1)
        pub.client.publish(topic, b'{"labels": {"siren": {"enabled": true}}}', qos=1)
        pub.wait_for(lambda m: controls, 30, "the good command after the flood")
    warnings = _warnings(caplog)
    assert 1 <= len(warnings) <= 5, warnings
    assert all("\n" not in w for w in warnings)
    # every rejected message was still seen (at debug level), none applied
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG and "ignored" in r.getMessage()]
    assert len(warnings) + len(debug) == 201
    assert not [r for r in caplog.records if r.exc_info], "no traceback for a huge number"
    assert controls == [{"labels": {"siren": {"enabled": True}}}]
    pub.close()


@pytest.mark.parametrize("queue", ["memory", "sqlite"])
def test_an_undeliverable_message_is_set_aside_and_the_rest_flow(mosquitto, sinks, caplog,
                                                                 tmp_path, queue):
    from detector.metrics import REGISTRY
    from mqtt_helpers import make_event

    path = str(tmp_path / "outbox.sqlite") if queue == "sqlite" else None
    s = settings(mosquitto.port, queue_path=path)
    prefix = f"sound-detector/{s.node_id}"
    long_label = "x" * 70_000  # <prefix>/<label>/state exceeds MQTT's 65,535-byte topic limit
    rec = Recorder(mosquitto.port, [f"{prefix}/#"])
    sink = MqttSink(s)
    sinks.append(sink)
    with caplog.at_level(logging.WARNING, logger="detector.mqtt"):
        sink.start(["siren", long_label], "v1")
        sent = [make_event(0, label=long_label), make_event(1, label="siren"),
                make_event(2, label="siren", kind="end")]
        for event in sent:
            sink.event(event)
        got = rec.wait_count(f"{prefix}/events", 3, 30)
        rec.wait_count(f"{prefix}/siren/event", 2, 30)
        rec.wait_for(lambda m: len(sink.outbox) == 0, 30, "outbox drained")
    import json
    assert [json.loads(p)["id"] for p in got] == [e["id"] for e in sent]
    # the long label's initial OFF state, its event and its ON state can never go out
    assert sink.outbox.set_aside_count == 3
    assert sink.outbox.undeliverable == 3
    assert REGISTRY.outbox_undeliverable.value() == 3.0
    aside = [w for w in _warnings(caplog) if "can never be delivered" in w]
    assert len(aside) == 3 and all("too long" in w for w in aside)
    assert all(len(w) < 400 for w in _warnings(caplog)), "a 70 kB topic is not logged whole"
    assert not [r for r in caplog.records if r.exc_info]
    assert sink.connected, "paho's network thread survived the unpublishable state topic"
    if path:
        import sqlite3
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT topic, reason FROM undeliverable").fetchall()
        assert len(rows) == 3 and all(len(t) > 65_535 and "too long" in r for t, r in rows)
    rec.close()
