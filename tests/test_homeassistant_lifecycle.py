"""Home Assistant discovery over a device's life, against a real Mosquitto: entities
follow events.labels and runtime enable/disable, stale retained configs are removed
(an empty retained config is how Home Assistant deletes an entity), and
`sound-detector homeassistant --remove` clears a whole node and nothing else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from detector.config import MqttConfig
from detector.publish.homeassistant import discovery_messages
from detector.publish.mqtt import MqttSink
from mqtt_helpers import Recorder, retained_all
from onnx_models import make_band_model, write_tone_wav

REPO = Path(__file__).resolve().parents[1]


def _ids(node: str) -> tuple[str, str]:
    return f"{node}-{uuid.uuid4().hex[:6]}", f"disc{uuid.uuid4().hex[:6]}"


def _configs(port: int, disc: str, node: str) -> dict[str, dict]:
    return {topic.split("/")[1] + "/" + topic.split("/")[3]: json.loads(payload)
            for topic, payload in retained_all(port, f"{disc}/+/{node}/+/config").items()}


def _publish_retained(port: int, messages) -> None:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                         client_id=f"test-pub-{uuid.uuid4().hex[:8]}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    for topic, payload in messages:
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def _wait(predicate, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_entities_follow_enabled_labels_and_runtime_control(mosquitto):
    node, disc = _ids("follow")
    settings = MqttConfig(enabled=True, host="127.0.0.1", port=mosquitto.port, node_id=node,
                          discovery_prefix=disc)
    rec = Recorder(mosquitto.port, [f"{disc}/+/{node}/+/config"])
    sink = MqttSink(settings)
    sink.labels_enabled(["siren", "dog_bark"])          # events.labels = [siren, dog_bark]
    sink.start(["siren", "dog_bark", "drilling"], "v1")
    try:
        got = _wait(lambda: (lambda c: c if "sensor/level" in c else None)(
            _configs(mosquitto.port, disc, node)), "discovery")
        # drilling never had a config, not even for a moment (only its empty one)
        assert all(not p for t, p, _ in rec.messages if "drilling" in t)
        assert set(got) == {"binary_sensor/siren", "event/siren_event", "binary_sensor/dog_bark",
                            "event/dog_bark_event", "sensor/level"}
        sink.labels_enabled(["siren"])                   # …/set: dog_bark disabled
        _wait(lambda: set(_configs(mosquitto.port, disc, node)) ==
              {"binary_sensor/siren", "event/siren_event", "sensor/level"}, "dog_bark removed")
        sink.labels_enabled(["siren", "drilling"])       # …/set: drilling enabled
        _wait(lambda: set(_configs(mosquitto.port, disc, node)) ==
              {"binary_sensor/siren", "event/siren_event", "binary_sensor/drilling",
               "event/drilling_event", "sensor/level"}, "drilling added")
    finally:
        sink.close()
        rec.close()


def test_stale_configs_of_this_node_are_cleared_and_others_kept(mosquitto):
    node, disc = _ids("stale")
    prefix = f"sound-detector/{node}"
    # a previous run with another model: labels this one does not have
    old = discovery_messages(prefix, node, ["siren", "jackhammer"], "v0", "0.0.1", disc)
    other_node = discovery_messages("sound-detector/elsewhere", "elsewhere", ["siren"], "v0",
                                    "0.0.1", disc)
    foreign = (f"{disc}/switch/{node}/lamp/config", json.dumps({"unique_id": "not-ours"}))
    _publish_retained(mosquitto.port, [*old, *other_node, foreign])
    settings = MqttConfig(enabled=True, host="127.0.0.1", port=mosquitto.port, node_id=node,
                          discovery_prefix=disc)
    sink = MqttSink(settings)
    sink.labels_enabled(["siren", "dog_bark"])
    sink.start(["siren", "dog_bark"], "v1")
    try:
        _wait(lambda: set(_configs(mosquitto.port, disc, node)) ==
              {"binary_sensor/siren", "event/siren_event", "binary_sensor/dog_bark",
               "event/dog_bark_event", "sensor/level", "switch/lamp"}, "jackhammer cleared")
        current = _configs(mosquitto.port, disc, node)
        assert current["binary_sensor/siren"]["device"]["model"].endswith("(model v1)")
        assert current["switch/lamp"] == {"unique_id": "not-ours"}   # not ours: untouched
        assert len(retained_all(mosquitto.port, f"{disc}/+/elsewhere/+/config")) == 3
    finally:
        sink.close()


def test_discovery_turned_off_removes_what_an_earlier_run_published(mosquitto):
    node, disc = _ids("off")
    on = MqttConfig(enabled=True, host="127.0.0.1", port=mosquitto.port, node_id=node,
                    discovery_prefix=disc)
    sink = MqttSink(on)
    sink.start(["siren"], "v1")
    _wait(lambda: len(_configs(mosquitto.port, disc, node)) == 3, "discovery")
    sink.close()
    off = MqttConfig(enabled=True, host="127.0.0.1", port=mosquitto.port, node_id=node,
                     discovery_prefix=disc, homeassistant_discovery=False)
    sink = MqttSink(off)
    sink.start(["siren"], "v1")
    try:
        _wait(lambda: _configs(mosquitto.port, disc, node) == {}, "configs removed")
    finally:
        sink.close()


def test_a_label_gone_since_the_last_run_loses_its_retained_state_and_configs(mosquitto):
    """A custom label removed from the custom directory (or a model without a label):
    its retained …/<label>/state and discovery configs are cleared at the next start."""
    node, disc = _ids("gone")
    prefix = f"sound-detector/{node}"
    settings = MqttConfig(enabled=True, host="127.0.0.1", port=mosquitto.port, node_id=node,
                          discovery_prefix=disc)
    # another node's knock, and a retained topic of this node that is not a label state
    _publish_retained(mosquitto.port, [("sound-detector/elsewhere-gone/knock/state", "ON"),
                                       (f"{prefix}/knock/notes", "kept")])
    sink = MqttSink(settings)
    sink.start(["siren", "knock"], "v1")                 # with the custom label knock
    try:
        _wait(lambda: len(_configs(mosquitto.port, disc, node)) == 5, "first discovery")
        sink.event({"id": "1", "type": "start", "label": "knock", "score": 0.9})
        _wait(lambda: retained_all(mosquitto.port, f"{prefix}/knock/state") ==
              {f"{prefix}/knock/state": b"ON"}, "knock ON")
    finally:
        sink.close()
    sink = MqttSink(settings)
    sink.start(["siren"], "v1")                          # knock removed
    try:
        _wait(lambda: set(_configs(mosquitto.port, disc, node)) ==
              {"binary_sensor/siren", "event/siren_event", "sensor/level"}, "knock configs gone")
        _wait(lambda: set(retained_all(mosquitto.port, f"{prefix}/+/state")) ==
              {f"{prefix}/siren/state"}, "knock state gone")
        assert retained_all(mosquitto.port, f"{prefix}/knock/notes") == {
            f"{prefix}/knock/notes": b"kept"}
        assert retained_all(mosquitto.port, "sound-detector/elsewhere-gone/+/state") == {
            "sound-detector/elsewhere-gone/knock/state": b"ON"}
    finally:
        sink.close()


def test_state_off_is_published_once_per_connect(mosquitto):
    node, disc = _ids("once")
    rec = Recorder(mosquitto.port, [f"sound-detector/{node}/+/state",
                                    f"sound-detector/{node}/status"])
    sink = MqttSink(MqttConfig(enabled=True, host="127.0.0.1", port=mosquitto.port,
                               node_id=node, discovery_prefix=disc))
    sink.start(["siren", "dog_bark"], "v1")
    try:
        rec.wait_count(f"sound-detector/{node}/status", 1)
        rec.wait_count(f"sound-detector/{node}/dog_bark/state", 1)
        time.sleep(1.0)  # anything queued twice would have arrived by now
        assert rec.payloads(f"sound-detector/{node}/siren/state") == [b"OFF"]
        assert rec.payloads(f"sound-detector/{node}/dog_bark/state") == [b"OFF"]
    finally:
        sink.close()
        rec.close()


def _cli(*args, timeout=90):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "detector", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


@pytest.fixture(scope="module")
def band(tmp_path_factory):
    d = tmp_path_factory.mktemp("ha")
    return make_band_model(d / "band.onnx"), write_tone_wav(d / "tone.wav",
                                                             [(1.0, 2.5, 1000.0)], seconds=4.0)


def test_replay_follows_events_labels_and_remove_clears_the_node(mosquitto, band, tmp_path):
    model, tone = band
    node, disc = _ids("cli")
    conf = tmp_path / "c.toml"
    conf.write_text(f'[events]\nlabels = ["siren"]\n[mqtt]\nenabled = true\nhost = "127.0.0.1"\n'
                    f'port = {mosquitto.port}\nnode_id = "{node}"\ndiscovery_prefix = "{disc}"\n')
    other = discovery_messages("sound-detector/keep", "keep", ["siren"], "v0", "0.0.1", disc)
    _publish_retained(mosquitto.port, other)
    result = _cli("replay", tone, "--model", model, "--config", conf)
    assert result.returncode == 0, result.stderr
    # the band model has siren and dog_bark; events.labels keeps siren only
    assert set(_configs(mosquitto.port, disc, node)) == {"binary_sensor/siren",
                                                         "event/siren_event", "sensor/level"}
    assert retained_all(mosquitto.port, f"sound-detector/{node}/#")  # status, states
    removed = _cli("homeassistant", "--remove", "--config", conf)
    assert removed.returncode == 0, removed.stderr
    assert f"removed node {node}" in removed.stdout and "3 Home Assistant" in removed.stdout
    assert _configs(mosquitto.port, disc, node) == {}
    assert retained_all(mosquitto.port, f"sound-detector/{node}/#") == {}
    assert len(retained_all(mosquitto.port, f"{disc}/+/keep/+/config")) == 3  # other node kept


def test_a_set_message_republishes_only_the_configs_of_labels_it_switched(mosquitto, band,
                                                                          tmp_path):
    """`replay --realtime` with runtime control over a real broker: each …/set sends the
    discovery configs of the labels whose enabled state it changed, and nothing else."""
    import signal
    import threading

    model, _ = band
    quiet = write_tone_wav(tmp_path / "quiet.wav", [], seconds=30.0)
    node, disc = _ids("setdiff")
    prefix = f"sound-detector/{node}"
    conf = tmp_path / "c.toml"
    conf.write_text(f'[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {mosquitto.port}\n'
                    f'node_id = "{node}"\ndiscovery_prefix = "{disc}"\n')
    rec = Recorder(mosquitto.port, [f"{disc}/+/{node}/+/config"])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "detector", "replay", str(quiet), "--model",
                             str(model), "--config", str(conf), "--realtime"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()

    def control(payload: bytes, log: str) -> None:
        seen = sum(log in line for line in lines)
        rec.client.publish(f"{prefix}/set", payload, qos=1)
        _wait(lambda: sum(log in line for line in lines) > seen, log)

    try:
        level = f"{disc}/sensor/{node}/level/config"
        rec.wait_count(level, 1)  # the connect: every label's configs and the level sensor
        time.sleep(0.5)
        at_connect = len(rec.messages)
        assert at_connect == 5  # siren and dog_bark: a sensor and an event each; the level
        control(b'{"labels": {"siren": {"enabled": false}}}', "control: siren enabled=False")
        control(b'{"labels": {"siren": {"enabled": true}}}', "control: siren enabled=True")
        # enabled as it was, and a threshold: no entity changes, no config is sent
        control(b'{"labels": {"dog_bark": {"enabled": true, "threshold_on": 0.6}}}',
                "control: dog_bark enabled=True on=0.600")
        time.sleep(1.0)  # a config sent after the control line would have arrived by now
        after = [(t.split("/")[1] + "/" + t.split("/")[3], bool(p))
                 for t, p, _ in rec.messages[at_connect:]]
        assert after == [("binary_sensor/siren", False), ("event/siren_event", False),
                         ("binary_sensor/siren", True), ("event/siren_event", True)], after
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        reader.join(10)
        rec.close()
    assert proc.returncode == 0, "".join(lines)


def test_remove_with_an_unreachable_broker_is_one_line(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = 9\nnode_id = "x"\n')
    result = _cli("homeassistant", "--remove", "--config", conf)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [l for l in result.stderr.splitlines() if l.startswith("sound-detector: error:")]
    assert len(errors) == 1 and "unreachable" in errors[0], result.stderr
