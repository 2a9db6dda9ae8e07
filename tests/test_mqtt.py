"""MqttSink against a real Mosquitto: the topic contract, reconnects, control, auth."""

from __future__ import annotations

import getpass
import json
import logging
import os
import time
import signal
import subprocess
import sys
import textwrap
import uuid

import pytest

from conftest import REPO, Mosquitto, free_port, mosquitto_binary, wait_port
from detector.config import MqttConfig
from detector.errors import ConfigError
from detector.publish.mqtt import MqttSink
from mqtt_helpers import Recorder, make_event, retained


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


def test_topic_contract(mosquitto, sinks):
    s = settings(mosquitto.port, level_interval_seconds=1.0, debug_scores=True)
    prefix = f"sound-detector/{s.node_id}"
    rec = Recorder(mosquitto.port, [f"{prefix}/#", f"{s.discovery_prefix}/#"])
    controls = []
    sink = MqttSink(s, on_control=controls.append)
    sinks.append(sink)
    sink.start(["siren", "Dog Bark"], "v7")
    rec.wait_count(f"{prefix}/status", 1)
    assert rec.last(f"{prefix}/status") == b"online"
    assert rec.wait_count(f"{prefix}/siren/state", 1)[0] == b"OFF"
    assert rec.wait_count(f"{prefix}/dog_bark/state", 1)[0] == b"OFF"

    start, end = make_event(0, "Dog Bark", "start"), make_event(1, "Dog Bark", "end")
    sink.event(start)
    sink.event(end)
    events = [json.loads(p) for p in rec.wait_count(f"{prefix}/events", 2)]
    assert events == [start, end]
    # OFF (startup; once from the outbox, once from the on-connect snapshot), ON, OFF
    rec.wait_for(lambda m: rec.payloads(f"{prefix}/dog_bark/state")[-2:] == [b"ON", b"OFF"],
                 what="ON then OFF")
    assert set(rec.payloads(f"{prefix}/dog_bark/state")[:-2]) == {b"OFF"}
    ha_events = [json.loads(p) for p in rec.wait_count(f"{prefix}/dog_bark/event", 2)]
    assert [e["event_type"] for e in ha_events] == ["start", "end"]
    assert ha_events[0]["id"] == start["id"]

    sink.status("device", "lost")
    assert rec.wait_count(f"{prefix}/device", 1)[-1] == b"lost"

    # level: Leq over the interval from window() calls (energy mean, not dB mean)
    sink.window({"siren": 0.2, "Dog Bark": 0.7}, -20.0, 1000.0, {})
    sink.window({"siren": 0.1, "Dog Bark": 0.8}, -40.0, 1000.5, {})
    sink.window({"siren": 0.1, "Dog Bark": 0.8}, -40.0, 1001.0, {})
    level = json.loads(rec.wait_count(f"{prefix}/level", 1)[0])
    assert level["dbfs"] == -40.0 and level["interval_s"] == 1.0
    assert level["leq_dbfs"] == pytest.approx(10 * __import__("math").log10(
        (10 ** -2 + 2 * 10 ** -4) / 3), abs=0.01)
    assert level["time"].endswith("Z")
    scores = json.loads(rec.wait_count(f"{prefix}/scores", 3)[0])
    assert list(scores["scores"]) == ["Dog Bark", "siren"] and scores["level_dbfs"] == -20.0

    # retained values as a late subscriber sees them
    assert retained(mosquitto.port, f"{prefix}/status") == b"online"
    assert retained(mosquitto.port, f"{prefix}/dog_bark/state") == b"OFF"
    assert retained(mosquitto.port, f"{prefix}/device") == b"lost"
    assert retained(mosquitto.port, f"{prefix}/events") is None, "events are not retained"

    sink.close()
    sinks.remove(sink)
    rec.wait_for(lambda m: rec.last(f"{prefix}/status") == b"offline", what="offline at close")
    assert retained(mosquitto.port, f"{prefix}/status") == b"offline"
    rec.close()


def test_daemon_started_before_the_broker(tmp_path, sinks, caplog):
    """The first connect fails; paho keeps retrying; queued events arrive in order."""
    port = free_port()
    s = settings(port)
    prefix = f"sound-detector/{s.node_id}"
    sink = MqttSink(s)
    sinks.append(sink)
    with caplog.at_level(logging.WARNING, logger="detector.publish.mqtt"):
        sink.start(["siren"], "v1")
        sent = [make_event(i, kind="start" if i % 2 == 0 else "end") for i in range(6)]
        for e in sent:
            sink.event(e)
        assert not sink.connected
        broker = Mosquitto(tmp_path, port=port)
    try:
        rec = Recorder(port, [f"{prefix}/#"])
        got = [json.loads(p)["id"] for p in rec.wait_count(f"{prefix}/events", 6, timeout=60)]
        assert got == [e["id"] for e in sent]
        assert retained(port, f"{prefix}/status") == b"online"
        assert retained(port, f"{prefix}/siren/state") == b"OFF"
        # warnings only: the INFO line "connected again after … (unreachable)" may or may
        # not have been logged by now, and is not a repeat of the problem
        unreachable = [r for r in caplog.records if r.levelno >= logging.WARNING
                       and "unreachable" in r.getMessage()]
        assert len(unreachable) == 1, "one warning per distinct problem, not one per retry"
        rec.close()
    finally:
        sink.close()
        sinks.remove(sink)
        broker.stop()


def test_broker_restart_keeps_order_and_republishes_retained(fresh_mosquitto, sinks):
    s = settings(fresh_mosquitto.port)
    prefix = f"sound-detector/{s.node_id}"
    sink = MqttSink(s)
    sinks.append(sink)
    sink.start(["siren"], "v1")
    sink.status("device", "connected")
    rec = Recorder(fresh_mosquitto.port, [f"{prefix}/events"])
    sent = [make_event(0)]
    sink.event(sent[0])
    rec.wait_count(f"{prefix}/events", 1)
    rec.close()
    fresh_mosquitto.stop()  # persistence false: the broker forgets every retained message
    sent += [make_event(i, kind="start" if i % 2 else "end") for i in range(1, 5)]
    for e in sent[1:]:
        sink.event(e)
    fresh_mosquitto.start()
    rec = Recorder(fresh_mosquitto.port, [f"{prefix}/events"])
    got = [json.loads(p)["id"] for p in rec.wait_count(f"{prefix}/events", 4, timeout=60)]
    assert got == [e["id"] for e in sent[1:]]
    assert retained(fresh_mosquitto.port, f"{prefix}/status") == b"online"
    assert retained(fresh_mosquitto.port, f"{prefix}/device") == b"connected"
    assert retained(fresh_mosquitto.port, f"{prefix}/siren/state") == b"OFF"
    rec.close()


def test_sqlite_outbox_delivers_after_daemon_restart(tmp_path, sinks):
    port = free_port()  # no broker yet
    queue = tmp_path / "state" / "outbox.sqlite"
    s = settings(port, queue_path=str(queue))
    prefix = f"sound-detector/{s.node_id}"
    first = MqttSink(s)
    first.start(["siren"], "v1")
    sent = [make_event(i) for i in range(3)]
    for e in sent:
        first.event(e)
    first.close()  # broker never came: everything stays on disk
    assert queue.exists()
    broker = Mosquitto(tmp_path, port=port)
    try:
        rec = Recorder(port, [f"{prefix}/events"])
        second = MqttSink(s)
        sinks.append(second)
        second.start(["siren"], "v1")
        got = [json.loads(p)["id"] for p in rec.wait_count(f"{prefix}/events", 3)]
        assert got == [e["id"] for e in sent]
        rec.wait_for(lambda m: len(second.outbox) == 0, what="empty outbox")
        rec.close()
    finally:
        broker.stop()


def test_runtime_control(mosquitto, sinks, caplog):
    s = settings(mosquitto.port)
    prefix = f"sound-detector/{s.node_id}"
    controls = []
    sink = MqttSink(s, on_control=controls.append)
    sinks.append(sink)
    sink.start(["siren", "dog_bark"], "v1")
    rec = Recorder(mosquitto.port, [f"{prefix}/status"])
    # "online" follows the sink's SUBSCRIBE on its connection, so the broker has processed
    # the subscription once it is seen (sink.connected alone does not say so: a …/set sent
    # at once could reach the broker first on a loaded machine)
    rec.wait_for(lambda m: sink.connected and rec.last(f"{prefix}/status") == b"online",
                 what="sink connected and subscribed")
    with caplog.at_level(logging.WARNING, logger="detector.publish.mqtt"):
        rec.client.publish(f"{prefix}/set", b'{"labels": {"cat": {"enabled": false}}}', qos=1)
        rec.client.publish(f"{prefix}/set", b"\xff not json", qos=1)
        rec.client.publish(f"{prefix}/set",
                           b'{"labels": {"siren": {"enabled": false, "threshold_on": 0.8}}}',
                           qos=1)
        rec.wait_for(lambda m: controls, what="a control command")
    assert controls == [{"labels": {"siren": {"enabled": False, "threshold_on": 0.8}}}]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("unknown label 'cat'" in w for w in warnings)
    assert any("not UTF-8" in w for w in warnings)
    assert all("\n" not in w for w in warnings)
    rec.close()


def test_control_rejected_by_the_pipeline_is_a_warning(mosquitto, sinks, caplog):
    s = settings(mosquitto.port)
    prefix = f"sound-detector/{s.node_id}"
    calls = []

    def on_control(cmd):
        calls.append(cmd)
        raise ConfigError("threshold_off=0.9 must be <= threshold_on=0.5")

    sink = MqttSink(s, on_control=on_control)
    sinks.append(sink)
    sink.start(["siren"], "v1")
    rec = Recorder(mosquitto.port, [f"{prefix}/status"])
    # "online" follows the sink's SUBSCRIBE on its connection, so the broker has processed
    # the subscription once it is seen (sink.connected alone does not say so: a …/set sent
    # at once could reach the broker first on a loaded machine)
    rec.wait_for(lambda m: sink.connected and rec.last(f"{prefix}/status") == b"online",
                 what="sink connected and subscribed")
    with caplog.at_level(logging.WARNING, logger="detector.publish.mqtt"):
        rec.client.publish(f"{prefix}/set", b'{"labels": {"siren": {"threshold_off": 0.9}}}')
        rec.wait_for(lambda m: calls, what="control call")
        rec.wait_for(lambda m: any("must be <=" in r.getMessage() for r in caplog.records),
                     what="warning")
    assert sink.connected, "a rejected command must not disturb the connection"
    rec.close()


LAST_WILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from detector.config import MqttConfig
    from detector.publish.mqtt import MqttSink
    sink = MqttSink(MqttConfig(enabled=True, host="127.0.0.1", port=int(sys.argv[1]),
                               node_id=sys.argv[2], homeassistant_discovery=False))
    sink.start(["siren"], "v1")
    while not sink.connected:
        time.sleep(0.05)
    print("connected", flush=True)
    time.sleep(600)
""")


def test_last_will_after_kill_9(mosquitto):
    node = f"will-{uuid.uuid4().hex[:6]}"
    prefix = f"sound-detector/{node}"
    proc = subprocess.Popen([sys.executable, "-c", LAST_WILL_SCRIPT, str(mosquitto.port), node],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "connected"
        assert retained(mosquitto.port, f"{prefix}/status") == b"online"
        rec = Recorder(mosquitto.port, [f"{prefix}/status"])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        rec.wait_for(lambda m: rec.last(f"{prefix}/status") == b"offline", timeout=60,
                     what="last will")  # the broker notices the closed socket
        assert retained(mosquitto.port, f"{prefix}/status") == b"offline"
        rec.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def auth_broker(tmp_path):
    pwfile = tmp_path / "passwd"
    subprocess.run([mosquitto_binary("mosquitto_passwd"), "-b", "-c", str(pwfile),
                    "alice", "s3cret-Pa55"],
                   check=True, capture_output=True)
    port = free_port()
    conf = tmp_path / "auth.conf"
    # as root, mosquitto drops to user "mosquitto", which cannot read pytest's tmp dir
    conf.write_text(f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\n"
                    "allow_anonymous false\n"
                    f"password_file {pwfile}\npersistence false\n")
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=(tmp_path / "auth.log").open("wb"))
    wait_port(port)
    yield port
    proc.terminate()
    proc.wait(5)


def test_authentication_and_secrets_never_logged(auth_broker, caplog):
    secret = "wrong-Pa55-XYZ"
    with caplog.at_level(logging.DEBUG):
        bad = MqttSink(settings(auth_broker, username="alice", password=secret))
        bad.start(["siren"], "v1")
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not any(
                    "refused" in r.getMessage() for r in caplog.records):
                time.sleep(0.1)
        finally:
            bad.close()
        refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert refused and "mqtt.username" in refused[0]
        assert not bad.connected

        good = MqttSink(settings(auth_broker, username="alice", password="s3cret-Pa55"))
        good.start(["siren"], "v1")
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not good.connected:
                time.sleep(0.05)
            assert good.connected
        finally:
            good.close()
    text = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    assert secret not in text and "s3cret-Pa55" not in text
    assert "s3cret" not in repr(good.settings)


def test_bad_tls_files_are_one_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        MqttSink(settings(1883, tls=True, ca_file=str(tmp_path / "missing.pem")))
    assert "mqtt.ca_file" in str(info.value) and "\n" not in str(info.value)
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigError, match="TLS setup failed"):
        MqttSink(settings(1883, tls=True, ca_file=str(garbage)))


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    """Mosquitto with a TLS listener; server certificate for DNS:localhost only."""
    d = tmp_path_factory.mktemp("tls")

    def ssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout",
        "server.key", "-out", "server.csr")
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem")
    port = free_port()
    conf = d / "tls.conf"
    conf.write_text(f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\n"
                    "allow_anonymous true\npersistence false\n"
                    f"cafile {d / 'ca.pem'}\ncertfile {d / 'server.pem'}\n"
                    f"keyfile {d / 'server.key'}\n")
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=(d / "broker.log").open("wb"))
    wait_port(port)
    yield port, d / "ca.pem"
    proc.terminate()
    proc.wait(5)


def _wait_connected(sink, seconds=20.0):
    import time
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not sink.connected:
        time.sleep(0.05)
    return sink.connected


def test_tls_verifies_the_broker_host_name(tls_broker, caplog):
    port, ca = tls_broker
    good = MqttSink(settings(port, host="localhost", tls=True, ca_file=str(ca)))
    good.start(["siren"], "v1")
    try:
        assert _wait_connected(good), "TLS with the right CA and host name connects"
    finally:
        good.close()
    # 127.0.0.1 is not in the certificate: hostname verification must refuse it
    with caplog.at_level(logging.WARNING, logger="detector.publish.mqtt"):
        wrong = MqttSink(settings(port, host="127.0.0.1", tls=True, ca_file=str(ca)))
        wrong.start(["siren"], "v1")
        try:
            assert not _wait_connected(wrong, 4.0)
        finally:
            wrong.close()
    assert any("TLS handshake" in r.getMessage() for r in caplog.records)
    # without the CA the self-signed chain is refused too
    untrusted = MqttSink(settings(port, host="localhost", tls=True))
    untrusted.start(["siren"], "v1")
    try:
        assert not _wait_connected(untrusted, 4.0)
    finally:
        untrusted.close()
    # tls_insecure skips the host name check only (the chain is still verified)
    insecure = MqttSink(settings(port, host="127.0.0.1", tls=True, ca_file=str(ca),
                                 tls_insecure=True))
    insecure.start(["siren"], "v1")
    try:
        assert _wait_connected(insecure)
    finally:
        insecure.close()


def test_full_queue_keeps_the_newest_events(tmp_path, caplog):
    port = free_port()  # broker absent while 5 events happen; room for 2
    s = settings(port, queue_max_events=2, homeassistant_discovery=False)
    prefix = f"sound-detector/{s.node_id}"
    sink = MqttSink(s)
    sink.start(["siren"], "v1")
    sent = [make_event(i, kind="start" if i % 2 == 0 else "end") for i in range(5)]
    with caplog.at_level(logging.WARNING, logger="detector.publish.outbox"):
        for e in sent:
            sink.event(e)
    assert len(sink.outbox) == 6
    assert any("dropped" in r.getMessage() for r in caplog.records)
    broker = Mosquitto(tmp_path, port=port)
    try:
        rec = Recorder(port, [f"{prefix}/events"])
        got = [json.loads(p)["id"] for p in rec.wait_count(f"{prefix}/events", 2)]
        rec.wait_for(lambda m: len(sink.outbox) == 0, what="outbox drained")
        assert got == [e["id"] for e in sent[-2:]]
        assert len(rec.payloads(f"{prefix}/events")) == 2
        rec.close()
    finally:
        sink.close()
        broker.stop()
