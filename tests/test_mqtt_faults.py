"""MqttSink when things go wrong, against a real Mosquitto: retained control,
flooding, undeliverable messages, refused / silent / TLS-mismatched brokers."""

from __future__ import annotations

import logging
import uuid

import pytest

from detector.config import MqttConfig
from detector.publish.mqtt import MqttSink
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


def _warnings(caplog, logger="detector.publish.mqtt"):
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
    with caplog.at_level(logging.WARNING, logger="detector.publish.mqtt"):
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
    with caplog.at_level(logging.DEBUG, logger="detector.publish.mqtt"):
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
    from mqtt_helpers import make_event

    path = str(tmp_path / "outbox.sqlite") if queue == "sqlite" else None
    s = settings(mosquitto.port, queue_path=path)
    prefix = f"sound-detector/{s.node_id}"
    long_label = "x" * 70_000  # <prefix>/<label>/state exceeds MQTT's 65,535-byte topic limit
    rec = Recorder(mosquitto.port, [f"{prefix}/#"])
    sink = MqttSink(s)
    sinks.append(sink)
    with caplog.at_level(logging.WARNING, logger="detector.publish.mqtt"):
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
    # the long label's event and its ON state can never go out (its initial OFF state is
    # not queued: every connect publishes the latest states, and skips that one with a line)
    assert sink.outbox.set_aside_count == 2
    assert sink.outbox.undeliverable == 2
    # what the metrics serve as sound_detector_outbox_undeliverable_total
    from detector.publish.metrics import Registry
    registry = Registry(process=False)
    registry.watch_mqtt(sink)
    assert 'sound_detector_outbox_undeliverable_total 2.0' in registry.render().splitlines()
    aside = [w for w in _warnings(caplog) if "can never be delivered" in w]
    assert len(aside) == 2 and all("too long" in w for w in aside)
    assert all(len(w) < 400 for w in _warnings(caplog)), "a 70 kB topic is not logged whole"
    assert not [r for r in caplog.records if r.exc_info]
    assert sink.connected, "paho's network thread survived the unpublishable state topic"
    if path:
        import sqlite3
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT topic, reason FROM undeliverable").fetchall()
        assert len(rows) == 2 and all(len(t) > 65_535 and "too long" in r for t, r in rows)
    rec.close()


# -- connection state --------------------------------------------------------------

import getpass  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

from conftest import Mosquitto, free_port, mosquitto_binary, wait_port  # noqa: E402
import detector.publish.mqtt as mqtt_module  # noqa: E402


def _wait(predicate, seconds=20.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


@pytest.fixture(scope="module")
def tls_brokers(tmp_path_factory):
    """One Mosquitto, two TLS listeners (server cert for DNS:localhost): ``tls`` without
    and ``mtls`` with a required client certificate; and a client certificate."""
    d = tmp_path_factory.mktemp("tls-faults")

    def ssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost\n")
    for name in ("server", "client"):
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout",
            f"{name}.key", "-out", f"{name}.csr")
        ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", f"{name}.pem")
    tls, mtls = free_port(), free_port()
    tls_files = (f"cafile {d / 'ca.pem'}\ncertfile {d / 'server.pem'}\n"
                 f"keyfile {d / 'server.key'}\n")
    conf = d / "tls.conf"
    conf.write_text(f"user {getpass.getuser()}\nallow_anonymous true\npersistence false\n"
                    f"listener {tls} 127.0.0.1\n{tls_files}"
                    f"listener {mtls} 127.0.0.1\n{tls_files}require_certificate true\n")
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=(d / "broker.log").open("wb"))
    wait_port(tls)
    wait_port(mtls)
    yield {"tls": tls, "mtls": mtls, "ca": str(d / "ca.pem"), "cert": str(d / "client.pem"),
           "key": str(d / "client.key")}
    proc.terminate()
    proc.wait(5)


def _problem_lines(caplog, fragment):
    return [w for w in _warnings(caplog) if fragment in w]


def test_plain_client_against_a_tls_listener_says_so(tls_brokers, sinks, caplog):
    states = []
    with caplog.at_level(logging.WARNING, logger="detector.publish.mqtt"):
        sink = MqttSink(settings(tls_brokers["tls"]), on_state=states.append)
        sinks.append(sink)
        sink.start(["siren"], "v1")
        assert _wait(lambda: sink.problems["closed"] >= 2, 20)
    lines = _problem_lines(caplog, "closed the connection before accepting it")
    assert len(lines) == 1, _warnings(caplog)  # once, not per retry
    assert "TLS listener" in lines[0] and "mqtt.tls = true" in lines[0]
    assert not sink.connected and sink.problem and "TLS listener" in sink.problem
    assert states and "TLS listener" in states[0]


def test_mtls_broker_without_a_client_certificate_says_so(tls_brokers, sinks, caplog):
    common = dict(host="localhost", tls=True, ca_file=tls_brokers["ca"])
    with caplog.at_level(logging.WARNING, logger="detector.publish.mqtt"):
        sink = MqttSink(settings(tls_brokers["mtls"], **common))
        sinks.append(sink)
        sink.start(["siren"], "v1")
        assert _wait(lambda: _problem_lines(caplog, "client certificate"), 20), _warnings(caplog)
        assert not sink.connected
        time.sleep(2.5)  # a few retries more
    assert len(_problem_lines(caplog, "client certificate")) == 1, _warnings(caplog)
    # the same broker with the client certificate connects: the check can tell them apart
    good = MqttSink(settings(tls_brokers["mtls"], cert_file=tls_brokers["cert"],
                             key_file=tls_brokers["key"], **common))
    sinks.append(good)
    good.start(["siren"], "v1")
    assert _wait(lambda: good.connected, 20) and good.problem is None


def test_wrong_host_name_is_a_tls_certificate_line(tls_brokers, sinks, caplog):
    with caplog.at_level(logging.WARNING, logger="detector.publish.mqtt"):
        sink = MqttSink(settings(tls_brokers["tls"], tls=True, ca_file=tls_brokers["ca"]))
        sinks.append(sink)
        sink.start(["siren"], "v1")  # 127.0.0.1 is not in the certificate
        assert _wait(lambda: _problem_lines(caplog, "certificate check failed"), 20)
    line = _problem_lines(caplog, "certificate check failed")[0]
    assert "mqtt.host" in line and "\n" not in line


def test_refused_authentication_is_logged_once_then_at_a_bounded_rate(tmp_path, sinks, caplog,
                                                                      monkeypatch):
    monkeypatch.setattr(mqtt_module, "PROBLEM_REPEAT_SECONDS", 2.5)
    pwfile = tmp_path / "passwd"
    subprocess.run([mosquitto_binary("mosquitto_passwd"), "-b", "-c", str(pwfile),
                    "alice", "right-one"],
                   check=True, capture_output=True)
    port = free_port()
    conf = tmp_path / "auth.conf"
    conf.write_text(f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\n"
                    f"allow_anonymous false\npassword_file {pwfile}\npersistence false\n")
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        with caplog.at_level(logging.WARNING, logger="detector.publish.mqtt"):
            sink = MqttSink(settings(port, username="alice"), password="wrong-one")
            sinks.append(sink)
            sink.start(["siren"], "v1")
            # paho retries after 1, 2, 4 s: attempts at ~0, 1, 3, 7 s
            assert _wait(lambda: sink.problems["auth"] >= 4, 30)
        attempts = sink.problems["auth"]
        lines = _problem_lines(caplog, "refused the connection")
        assert lines[0].startswith("MQTT: broker") and "mqtt.username" in lines[0]
        assert "wrong-one" not in caplog.text
        still = [w for w in lines if w.startswith("MQTT: still:")]
        assert still, "a persisting problem is repeated"
        assert len(lines) < attempts, "not one line per retry"
    finally:
        proc.terminate()
        proc.wait(5)


def test_unreachable_broker_then_recovery_in_notify_status(tmp_path, sinks, caplog):
    from detector.publish.notify import NotifySink

    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(20)
    notify = NotifySink({"NOTIFY_SOCKET": address})
    port = free_port()
    with caplog.at_level(logging.INFO, logger="detector.publish.mqtt"):
        sink = MqttSink(settings(port), on_state=notify.mqtt_state)
        sinks.append(sink)
        notify.start(["siren"], "v1")
        assert sock.recv(4096).decode().startswith("READY=1\nSTATUS=listening for 1 labels")
        sink.start(["siren"], "v1")
        status = sock.recv(4096).decode()
        assert status.startswith("STATUS=listening for 1 labels (model v1); MQTT: broker "
                                 f"127.0.0.1:{port} is unreachable (TCP connection refused"), status
        broker = Mosquitto(tmp_path, port=port)
        try:
            assert sock.recv(4096).decode() == "STATUS=listening for 1 labels (model v1)"
            assert sink.connected and sink.problem is None
        finally:
            sink.close()
            sinks.remove(sink)
            broker.stop()
    assert len(_problem_lines(caplog, "is unreachable (TCP connection refused")) == 1
    assert any("connection to 127.0.0.1:%d works again after" % port in r.getMessage()
               and "failed attempt(s)" in r.getMessage()
               for r in caplog.records)
    notify.close()
    sock.close()


def test_silent_broker_is_reported_and_clears(fresh_mosquitto, sinks, caplog, monkeypatch):
    from mqtt_helpers import make_event

    monkeypatch.setattr(mqtt_module, "ACK_TIMEOUT_SECONDS", 1.0)
    states = []
    s = settings(fresh_mosquitto.port, keepalive_seconds=60)
    sink = MqttSink(s, on_state=states.append)
    sinks.append(sink)
    sink.start(["siren"], "v1")
    assert _wait(lambda: sink.connected and len(sink.outbox) == 0, 20)
    assert sink.problems["no_puback"] == 0
    os.kill(fresh_mosquitto.proc.pid, signal.SIGSTOP)
    try:
        with caplog.at_level(logging.INFO, logger="detector.publish.mqtt"):
            sink.event(make_event(0))
            assert _wait(lambda: _problem_lines(caplog, "has not acknowledged"), 15)
            assert sink.unacked_seconds >= 1.0
            time.sleep(1.5)  # still silent: no second line, one incident counted
            assert len(_problem_lines(caplog, "has not acknowledged")) == 1
            assert sink.problems["no_puback"] == 1
            assert "has not acknowledged" in (sink.problem or "")
        os.kill(fresh_mosquitto.proc.pid, signal.SIGCONT)
        with caplog.at_level(logging.INFO, logger="detector.publish.mqtt"):
            assert _wait(lambda: len(sink.outbox) == 0, 20), "delivered once the broker wakes"
        assert sink.problem is None and states[-1] == "connected"
        assert sink.unacked_seconds == 0.0
        assert any("acknowledges again" in r.getMessage() for r in caplog.records)
    finally:
        os.kill(fresh_mosquitto.proc.pid, signal.SIGCONT)


def test_a_broker_hung_before_connack_is_not_called_a_tls_listener(fresh_mosquitto, sinks,
                                                                    caplog):
    os.kill(fresh_mosquitto.proc.pid, signal.SIGSTOP)  # TCP still accepted by the kernel
    try:
        with caplog.at_level(logging.WARNING, logger="detector.publish.mqtt"):
            sink = MqttSink(settings(fresh_mosquitto.port, keepalive_seconds=5))
            sinks.append(sink)
            sink.start(["siren"], "v1")
            assert _wait(lambda: _problem_lines(caplog, "did not answer the MQTT CONNECT"), 30), \
                _warnings(caplog)
        assert not any("TLS" in line for line in _warnings(caplog)), _warnings(caplog)
    finally:
        os.kill(fresh_mosquitto.proc.pid, signal.SIGCONT)


def test_a_tls_client_on_a_plain_port_is_told_so(fresh_mosquitto, sinks, caplog, tmp_path):
    ca = tmp_path / "ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=test-ca", "-keyout", str(tmp_path / "ca.key"), "-out", str(ca)],
                   check=True, capture_output=True)
    with caplog.at_level(logging.WARNING, logger="detector.publish.mqtt"):
        sink = MqttSink(settings(fresh_mosquitto.port, tls=True, ca_file=str(ca)))
        sinks.append(sink)
        sink.start(["siren"], "v1")
        assert _wait(lambda: _problem_lines(caplog, "plain listener"), 20), _warnings(caplog)
    assert "mqtt.tls = false" in _problem_lines(caplog, "plain listener")[0]
