"""``sound-detector homeassistant --remove``: delete a node from the broker.

Connects with the node's MQTT settings, collects the retained messages of the node —
its Home Assistant discovery configs (``<discovery_prefix>/+/<node>/+/config`` whose
``unique_id`` is this node's) and its retained topics under ``<base_topic>/<node_id>/``
(status, device, per-label state) — and publishes an empty retained message on each,
which deletes it from the broker; Home Assistant then removes the entities and the
device. Other nodes and other programs' topics are never touched.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

from detector.errors import DetectorError
from detector.publish.homeassistant import is_own_config, node_config_filter

logger = logging.getLogger(__name__)

COLLECT_SECONDS = 1.5
"""How long to wait for retained messages after subscribing (the broker sends them at once)."""
CONNECT_TIMEOUT_SECONDS = 10.0


class BrokerUnavailable(DetectorError):
    """The broker could not be reached or refused the connection."""


def remove_node(settings, node_id: str | None = None,
                collect_seconds: float = COLLECT_SECONDS) -> dict[str, int]:
    """Clear the node's retained discovery and topics; ``{"discovery": n, "topics": m}``."""
    from detector.publish.mqtt import MqttSink  # the same client set-up (TLS, user, password) as the daemon

    node = node_id or settings.node_id or getattr(settings, "resolved_node_id", None)
    if not node:
        raise DetectorError("homeassistant --remove: no node id; set mqtt.node_id or pass --node-id")
    # an in-memory outbox: this helper queues nothing, and must never open (or create)
    # the service's SQLite queue
    sink = MqttSink(dataclasses.replace(settings, queue_path=None))
    if node_id:
        sink.node_id, sink.prefix = node_id, f"{settings.base_topic}/{node_id}"
    client = sink.client
    client.will_clear()  # never leave an "offline" behind when this helper disconnects
    client.reconnect_delay_set(1, 1)
    config_filter = node_config_filter(node, settings.discovery_prefix)
    node_filter = f"{sink.prefix}/#"
    found: dict[str, str] = {}
    lock = threading.Lock()
    subscribed = threading.Event()
    refused: list[str] = []

    def on_connect(c, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            refused.append(str(reason_code))
            return
        c.subscribe([(config_filter, 1), (node_filter, 1)])

    def on_subscribe(c, userdata, mid, reason_codes, properties):
        subscribed.set()

    def on_message(c, userdata, message):
        if not message.retain or not message.payload:
            return
        if message.topic.startswith(sink.prefix + "/"):
            kind = "topics"
        elif is_own_config(message.topic, message.payload, node, settings.discovery_prefix):
            kind = "discovery"
        else:
            return
        with lock:
            found[message.topic] = kind

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.on_disconnect = client.on_connect_fail = None
    where = f"{settings.host}:{settings.port}"
    try:
        client.connect_async(settings.host, settings.port, keepalive=settings.keepalive_seconds)
        client.loop_start()
        deadline = time.monotonic() + CONNECT_TIMEOUT_SECONDS
        while not subscribed.is_set() and time.monotonic() < deadline and not refused:
            time.sleep(0.05)
        if refused:
            raise BrokerUnavailable(f"broker {where} refused the connection ({refused[0]}); "
                                    "check mqtt.username and the password")
        if not subscribed.is_set():
            raise BrokerUnavailable(f"broker {where} is unreachable; nothing was removed "
                                    "(check mqtt.host / mqtt.port)")
        time.sleep(collect_seconds)
        with lock:
            topics = dict(found)
        infos = [client.publish(topic, b"", qos=1, retain=True) for topic in sorted(topics)]
        for info in infos:
            info.wait_for_publish(5.0)
        for topic in sorted(topics):
            logger.info("removed %s", topic)
    finally:
        client.disconnect()
        client.loop_stop()
        sink.outbox.close()
    counts = {"discovery": 0, "topics": 0}
    for kind in topics.values():
        counts[kind] += 1
    return counts
