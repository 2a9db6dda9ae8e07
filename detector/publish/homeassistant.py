"""Home Assistant MQTT discovery for one sound-detector node.

What appears in Home Assistant (one device per node, identified by
``sound-detector_<node_id>``):

- per event label ``L``: a ``binary_sensor`` "L" (device_class ``sound``) that is on
  while the sound lasts (state topic ``<prefix>/<L>/state``, ``ON``/``OFF``), and an
  ``event`` entity "L event" with event types ``start`` and ``end``, fed by
  ``<prefix>/<L>/event`` whose JSON payload carries ``event_type`` (what Home
  Assistant's MQTT event platform requires) plus every key of the event
  (id, score, peak_score, duration_s, clip, …) as attributes;
- one ``sensor`` "Sound level" in dB (state_class ``measurement``) from
  ``<prefix>/level`` (``value_json.leq_dbfs``);
- availability of every entity from ``<prefix>/status`` (``online``/``offline``).

A separate per-label event topic is used instead of a ``value_template`` that
filters the shared ``events`` topic by label: with the template, every event of
another label would reach every event entity and make Home Assistant log a
template/JSON error for it.

The config messages are retained and re-published whenever Home Assistant
announces ``online`` on ``<discovery_prefix>/status`` (it forgets non-retained
discovery when it restarts). Only the labels that may fire (``events.labels`` and
runtime control) get entities; a retained config of this node that is no longer
wanted (a label switched off or gone from the model, discovery turned off) is
removed with an empty retained message, which is how Home Assistant deletes an
entity (:func:`is_own_config` decides what is this node's).
"""

from __future__ import annotations

import json
import re
from typing import Iterable

_UNSAFE = re.compile(r"[^a-z0-9_-]+")


def topic_safe(name: str) -> str:
    """A name as it appears in topics and ids: lowercase, ``[a-z0-9_-]`` only."""
    safe = _UNSAFE.sub("_", str(name).strip().lower()).strip("_")
    return safe or "_"


def topic_names(labels: Iterable[str]) -> dict[str, str]:
    """``label -> topic part``, unique even when two labels sanitise alike."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for label in labels:
        base = topic_safe(label)
        name, n = base, 2
        while name in used:
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        out[label] = name
    return out


def _title(label: str) -> str:
    from detector.model.audioset import display_name

    name = display_name(str(label))  # an AudioSet label: its AudioSet name
    if name is not None:
        return name
    return str(label).replace("_", " ").strip().capitalize() or str(label)


def discovery_messages(prefix: str, node_id: str, labels: Iterable[str],
                       model_version: str, sw_version: str,
                       discovery_prefix: str = "homeassistant") -> list[tuple[str, str]]:
    """``(topic, JSON payload)`` of every retained discovery config for this node.

    ``prefix`` is ``<base_topic>/<node_id>``; ``labels`` are the event labels.
    """
    node = topic_safe(node_id)
    device = {
        "identifiers": [f"sound-detector_{node}"],
        "name": f"Sound detector {node_id}",
        "manufacturer": "sound-detector",
        "model": f"sound-detector (model {model_version})",
        "sw_version": sw_version,
    }
    availability = {"availability_topic": f"{prefix}/status",
                    "payload_available": "online", "payload_not_available": "offline"}
    origin = {"name": "sound-detector", "sw_version": sw_version}
    messages: list[tuple[str, str]] = []

    def add(component: str, object_id: str, config: dict) -> None:
        unique = f"sound-detector_{node}_{object_id}"
        config = {**config, "unique_id": unique,
                  "device": device, "origin": origin, **availability}
        topic = f"{discovery_prefix}/{component}/{node}/{object_id}/config"
        messages.append((topic, json.dumps(config, sort_keys=True)))

    for label, part in topic_names(labels).items():
        add("binary_sensor", part, {
            "name": _title(label),
            "device_class": "sound",
            "state_topic": f"{prefix}/{part}/state",
            "payload_on": "ON", "payload_off": "OFF",
            "qos": 1,
        })
        add("event", f"{part}_event", {
            "name": f"{_title(label)} event",
            "event_types": ["start", "end"],
            "state_topic": f"{prefix}/{part}/event",
            "qos": 1,
        })
    add("sensor", "level", {
        "name": "Sound level",
        "state_topic": f"{prefix}/level",
        "value_template": "{{ value_json.leq_dbfs }}",
        "unit_of_measurement": "dB",
        "state_class": "measurement",
        "json_attributes_topic": f"{prefix}/level",
        "icon": "mdi:waveform",
    })
    return messages


def event_entity_payload(event: dict) -> str:
    """Payload for ``<prefix>/<label>/event``: the event plus ``event_type``."""
    return json.dumps({"event_type": event["type"], **event}, default=str)


def node_config_filter(node_id: str, discovery_prefix: str = "homeassistant") -> str:
    """Subscription that matches every discovery config of this node, whatever its label."""
    return f"{discovery_prefix}/+/{topic_safe(node_id)}/+/config"


def is_own_config(topic: str, payload: bytes | str, node_id: str,
                  discovery_prefix: str = "homeassistant") -> bool:
    """True for a non-empty discovery config that this node published (its topic is
    under the node and its ``unique_id`` carries the node's prefix); anything else on
    the broker is never touched."""
    node = topic_safe(node_id)
    parts = topic.split("/")
    if (len(parts) != 5 or parts[0] != discovery_prefix or parts[2] != node
            or parts[4] != "config" or not payload):
        return False
    try:
        config = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return False
    unique = config.get("unique_id") if isinstance(config, dict) else None
    return isinstance(unique, str) and unique.startswith(f"sound-detector_{node}_")
