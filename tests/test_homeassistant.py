"""Home Assistant discovery: payloads, and re-sending when HA comes online."""

from __future__ import annotations

import json
import time
import uuid

from detector.config import MqttConfig
from detector.publish.homeassistant import (discovery_messages, event_entity_payload, topic_names,
                                    topic_safe)
from detector.publish.mqtt import MqttSink
from mqtt_helpers import Recorder, make_event


def test_topic_names_are_safe_and_unique():
    assert topic_safe("Dog Bark") == "dog_bark"
    assert topic_safe("car-horn/2#+") == "car-horn_2"
    assert topic_safe("???") == "_"
    names = topic_names(["Dog Bark", "dog_bark", "dog bark", "siren"])
    assert names == {"Dog Bark": "dog_bark", "dog_bark": "dog_bark_2",
                     "dog bark": "dog_bark_3", "siren": "siren"}


def test_discovery_payloads():
    messages = dict(discovery_messages("sound-detector/Garden Pi", "Garden Pi",
                                       ["siren", "Dog Bark"], "us8k-3", "0.1.0"))
    node = "garden_pi"
    assert set(messages) == {
        f"homeassistant/binary_sensor/{node}/siren/config",
        f"homeassistant/event/{node}/siren_event/config",
        f"homeassistant/binary_sensor/{node}/dog_bark/config",
        f"homeassistant/event/{node}/dog_bark_event/config",
        f"homeassistant/sensor/{node}/level/config"}
    configs = {t: json.loads(p) for t, p in messages.items()}
    devices = {json.dumps(c["device"], sort_keys=True) for c in configs.values()}
    assert len(devices) == 1, "every entity belongs to the same device"
    device = next(iter(configs.values()))["device"]
    assert device["identifiers"] == [f"sound-detector_{node}"]
    assert device["sw_version"] == "0.1.0" and "us8k-3" in device["model"]
    unique_ids = [c["unique_id"] for c in configs.values()]
    assert len(set(unique_ids)) == len(unique_ids)
    for c in configs.values():
        assert c["availability_topic"] == "sound-detector/Garden Pi/status"
        assert (c["payload_available"], c["payload_not_available"]) == ("online", "offline")

    bark = configs[f"homeassistant/binary_sensor/{node}/dog_bark/config"]
    assert bark["device_class"] == "sound"
    assert bark["state_topic"] == "sound-detector/Garden Pi/dog_bark/state"
    assert (bark["payload_on"], bark["payload_off"]) == ("ON", "OFF")
    assert bark["name"] == "Dog bark"
    event = configs[f"homeassistant/event/{node}/dog_bark_event/config"]
    assert event["event_types"] == ["start", "end"]
    assert event["state_topic"] == "sound-detector/Garden Pi/dog_bark/event"
    level = configs[f"homeassistant/sensor/{node}/level/config"]
    assert level["unit_of_measurement"] == "dB" and level["state_class"] == "measurement"
    assert level["value_template"] == "{{ value_json.leq_dbfs }}"


def test_event_entity_payload_has_event_type_first():
    event = make_event(0, "siren", "end")
    payload = json.loads(event_entity_payload(event))
    assert payload["event_type"] == "end"
    assert {k: v for k, v in payload.items() if k != "event_type"} == event


def test_discovery_resent_when_home_assistant_comes_online(mosquitto):
    node = f"ha-{uuid.uuid4().hex[:6]}"
    disc = f"disc-{uuid.uuid4().hex[:6]}"
    settings = MqttConfig(enabled=True, host="127.0.0.1", port=mosquitto.port, node_id=node,
                          discovery_prefix=disc)
    rec = Recorder(mosquitto.port, [f"{disc}/+/{node}/+/config"])
    sink = MqttSink(settings)
    sink.start(["siren"], "v1")
    try:
        first = rec.wait_count(f"{disc}/binary_sensor/{node}/siren/config", 1)
        sensor = json.loads(first[0])
        assert sensor["state_topic"] == f"sound-detector/{node}/siren/state"
        rec.wait_count(f"{disc}/sensor/{node}/level/config", 1)
        # Home Assistant restarts and announces itself: discovery comes again
        rec.client.publish(f"{disc}/status", "offline", qos=1)
        rec.client.publish(f"{disc}/status", "online", qos=1)
        again = rec.wait_count(f"{disc}/binary_sensor/{node}/siren/config", 2)
        assert again[0] == again[1]
        rec.wait_count(f"{disc}/event/{node}/siren_event/config", 2)
        rec.wait_count(f"{disc}/sensor/{node}/level/config", 2)
    finally:
        sink.close()
        rec.close()


def test_discovery_can_be_switched_off(mosquitto):
    node = f"noha-{uuid.uuid4().hex[:6]}"
    settings = MqttConfig(enabled=True, host="127.0.0.1", port=mosquitto.port, node_id=node,
                          homeassistant_discovery=False, discovery_prefix="noha")
    rec = Recorder(mosquitto.port, ["noha/#", f"sound-detector/{node}/status"])
    controls = []
    sink = MqttSink(settings, on_control=controls.append)
    sink.start(["siren"], "v1")
    try:
        rec.wait_count(f"sound-detector/{node}/status", 1)
        rec.client.publish("noha/status", "online", qos=1)
        # a control command sent after it proves the "online" was handled (in order)
        rec.client.publish(f"sound-detector/{node}/set", b'{"labels": {"siren": {"enabled": true}}}',
                           qos=1)
        rec.wait_for(lambda m: controls, what="control after the HA online message")
    finally:
        sink.close()
    assert not [t for t, _, _ in rec.messages if t.startswith("noha/") and t != "noha/status"]
    rec.close()


def test_a_flood_of_online_messages_resends_discovery_at_a_bounded_rate(mosquitto, caplog,
                                                                        monkeypatch):
    import logging

    import detector.publish.mqtt as mqtt_module

    monkeypatch.setattr(mqtt_module, "DISCOVERY_RESEND_SECONDS", 2.0)
    node = f"flood-{uuid.uuid4().hex[:6]}"
    disc = f"disc-{uuid.uuid4().hex[:6]}"
    topic = f"{disc}/binary_sensor/{node}/siren/config"
    settings = MqttConfig(enabled=True, host="127.0.0.1", port=mosquitto.port, node_id=node,
                          discovery_prefix=disc)
    rec = Recorder(mosquitto.port, [f"{disc}/+/{node}/+/config"])
    sink = MqttSink(settings)
    with caplog.at_level(logging.INFO, logger="detector.publish.mqtt"):
        sink.start(["siren"], "v1")
        try:
            rec.wait_count(topic, 1)  # at connect
            for _ in range(1000):
                rec.client.publish(f"{disc}/status", "online", qos=1)
            # the flood is answered at once and once more at the end of the interval
            rec.wait_count(topic, 3, timeout=20)
            time.sleep(2.5)
        finally:
            sink.close()
    sends = len(rec.payloads(topic))
    resent = [r for r in caplog.records if "re-sending discovery" in r.getMessage()]
    rec.close()
    # at connect, then at most one per 2 s interval while the 1000 messages arrive
    assert 3 <= sends <= 5, sends
    assert len(resent) == sends - 1
