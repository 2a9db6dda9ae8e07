"""MQTT sink: the topic contract of README "MQTT topics" with paho-mqtt 2.x.

Connection handling (Frigate's pattern minus its bug): ``connect_async`` +
``loop_start`` so a daemon started before the broker keeps retrying (paho's
thread retries the first connection too) with a bounded, jittered backoff
(:func:`reconnect_delay`: 0.5 s doubling up to 4 s, each wait drawn from its upper
half), so a broker that comes back is reached within 4 s however long it was away;
a retained last will ``offline`` on ``<prefix>/status``; ``on_connect`` returns
early on a failure reason code instead of marking the client connected.

Nothing lost: events and per-label state changes go into an :mod:`outbox`
(memory or SQLite). One delivery thread publishes the oldest message, waits for
its PUBACK (paho re-sends an unacknowledged QoS-1 message after a reconnect) and
only then removes it, so messages arrive in order and, from the daemon's side,
once. Retained "latest value" topics (status, device, per-label state,
discovery) are published again after every (re)connect, since a broker without
persistence forgets them when it restarts.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import random
import socket
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import paho.mqtt.client as paho

from detector import __version__
from detector.publish.control import parse_control
from detector.errors import ConfigError, DetectorError
from detector.events import iso_utc
from detector.publish.homeassistant import (discovery_messages, event_entity_payload, is_own_config,
                            node_config_filter, topic_names, topic_safe)
from detector.publish.outbox import open_outbox
from detector.ratelimit import RateLimitedLog
from detector.publish.sink import Sink

logger = logging.getLogger(__name__)


def reconnect_delay(attempt: int, uniform: Callable[[float, float], float] = random.uniform
                    ) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (0 = the first after a loss).

    The ceiling doubles from :data:`RECONNECT_MIN_SECONDS` to :data:`RECONNECT_MAX_SECONDS`;
    the wait is drawn from the ceiling's upper half ("equal jitter"), so many daemons that
    lost the same broker do not all knock at once when it returns.
    """
    ceiling = min(RECONNECT_MAX_SECONDS, RECONNECT_MIN_SECONDS * 2.0 ** min(attempt, 16))
    return uniform(ceiling / 2.0, ceiling)

SCORES_TOP_K = 5
"""How many labels the debug ``scores`` topic carries per window."""
MESSAGES_PER_EVENT = 3
"""Outbox messages per event: ``events``, ``<label>/event`` and ``<label>/state``."""
FLUSH_SECONDS = 5.0
"""At shutdown, how long to wait for queued messages to reach a connected broker."""
PROBLEM_REPEAT_SECONDS = 300.0
"""A connection problem that persists is logged again at most this often."""
ACK_TIMEOUT_SECONDS = 10.0
"""A connected broker that has not acknowledged a message for this long is reported."""
RECONNECT_MIN_SECONDS = 0.5
"""The first wait before reconnecting after a lost connection or a failed attempt."""
RECONNECT_MAX_SECONDS = 4.0
"""The longest wait between reconnect attempts: queued events reach a broker that comes
back within this (plus a connection's round trip), however long it was away."""
DISCOVERY_RESEND_SECONDS = 30.0
"""``online`` on ``homeassistant/status`` re-sends discovery at most this often; requests
in between are answered once, at the end of the interval."""
CONTROL_LOG_PERIOD_SECONDS, CONTROL_LOG_BURST = 60.0, 5
"""Rejected ``…/set`` messages: at most this many warning lines per period."""


def _connect_failure(exc: BaseException | None, tls: bool) -> tuple[str, str]:
    """``(kind, reason)`` of a failed connection attempt, for one log line."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "tls", (f"failed the TLS handshake: certificate check failed "
                       f"({exc.verify_message or exc}); "
                       "check mqtt.ca_file, and that mqtt.host matches the broker certificate")
    if tls and isinstance(exc, (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError,
                                BrokenPipeError)):
        # a plain MQTT listener reads the TLS ClientHello as garbage and hangs up
        return "tls", (f"closed the connection during the TLS handshake "
                       f"({getattr(exc, 'strerror', None) or exc}); is it a plain listener? "
                       "(set mqtt.tls = false, or use the broker's TLS port, often 8883)")
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        return "tls", (f"failed the TLS handshake ({reason}); is it a TLS listener, and does "
                       "it want a client certificate (mqtt.cert_file, mqtt.key_file)?")
    if isinstance(exc, ConnectionRefusedError):
        return "unreachable", "is unreachable (TCP connection refused: nothing listens there?)"
    if isinstance(exc, socket.gaierror):
        return "unreachable", f"cannot be resolved ({exc.strerror or exc}); check mqtt.host"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "unreachable", "did not answer (connection timed out)"
    if isinstance(exc, OSError):
        return "unreachable", f"is unreachable ({exc.strerror or exc})"
    why = "is unreachable"
    if tls:
        why += " or rejected the TLS handshake (check mqtt.ca_file, and that mqtt.host matches " \
               "the broker certificate)"
    return "unreachable", why


def _short_topic(topic: str, limit: int = 80) -> str:
    return repr(topic if len(topic) <= limit else topic[:limit] + f"... ({len(topic)} chars)")


def _check_file(name: str, path: str | None) -> None:
    if path and not Path(path).is_file():
        raise ConfigError(f"mqtt.{name}={path!r} does not exist or is not a file")


class MqttSink(Sink):
    """Publishes events, state, level and discovery; receives runtime control."""

    def __init__(self, settings, on_control: Callable[[dict], None] | None = None,
                 password: str | None = None, on_state: Callable[[str], None] | None = None):
        self.settings = settings
        self.on_control = on_control
        self.on_state = on_state
        """Called (from paho's thread) with ``"connected"`` or the current problem."""
        # validated by MqttConfig (no '/', '+', '#'); Home Assistant ids use topic_safe()
        self.node_id = (settings.node_id or getattr(settings, "resolved_node_id", None)
                        or "sound-detector")
        self.prefix = f"{settings.base_topic}/{self.node_id}"
        self.labels: tuple[str, ...] = ()
        self.enabled_labels: tuple[str, ...] | None = None
        """Labels with Home Assistant entities (None = all of ``labels``); may be set
        before :meth:`start`, so the first discovery already follows it."""
        self._wanted_discovery: set[str] = set()
        self.model_version = ""
        self._topics: dict[str, str] = {}
        self._states: dict[str, str] = {}
        self._device: str | None = None
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._started = False
        self._ever_connected = False
        self._problem: str | None = None  # the current connection problem, None when fine
        self._problem_kind = ""
        self._problem_key = ""
        self._problem_since = 0.0
        self._problem_logged = 0.0
        self._problem_repeats = 0
        self._problem_lock = threading.Lock()
        self.problems: collections.Counter[str] = collections.Counter()
        """Failed connection attempts and silent-broker incidents by reason (metrics read it)."""
        self._last_paho_error = ""
        self._refused = False
        self._unacked_since: float | None = None
        self._acked: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._ack_cond = threading.Condition()
        self._retained_lock = threading.Lock()
        self._level_external = False
        self._level_sum = 0.0
        self._level_n = 0
        self._level_since: float | None = None
        self._last_level = math.nan
        self._delivery: threading.Thread | None = None
        self._latest_log = RateLimitedLog(logger, CONTROL_LOG_PERIOD_SECONDS, CONTROL_LOG_BURST)
        self._aside_log = RateLimitedLog(logger, CONTROL_LOG_PERIOD_SECONDS, CONTROL_LOG_BURST)
        self._control_log = RateLimitedLog(logger, CONTROL_LOG_PERIOD_SECONDS, CONTROL_LOG_BURST)
        self.delivered = 0
        """Outbox messages acknowledged by the broker (since start)."""
        self._discovery_at: float | None = None  # last re-send asked by Home Assistant
        self._discovery_timer: threading.Timer | None = None
        self._discovery_waiting = 0
        self._discovery_lock = threading.Lock()

        if password is None:
            password = settings.password
        if password and not settings.username:
            raise ConfigError("mqtt: a password is set but mqtt.username is not; set both")
        if settings.tls:
            for name in ("ca_file", "cert_file", "key_file"):
                _check_file(name, getattr(settings, name))

        # queue_max_events counts events; each event is MESSAGES_PER_EVENT messages
        self.outbox = open_outbox(settings.queue_max_events * MESSAGES_PER_EVENT,
                                  settings.queue_path)
        client_id = settings.client_id or f"sound-detector-{self.node_id}"
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=True, protocol=paho.MQTTv311)
        if logger.isEnabledFor(logging.DEBUG):  # paho's own lines only with --debug: it
            # logs routine shutdowns at ERROR; our callbacks report what matters
            self.client.enable_logger(logging.getLogger(__name__ + ".paho"))
        self._reconnect_attempt = 0
        self._schedule_reconnect(reset=True)
        self.client.max_inflight_messages_set(20)
        if settings.username:
            self.client.username_pw_set(settings.username, password or None)
        if settings.tls:
            try:
                self.client.tls_set(ca_certs=settings.ca_file, certfile=settings.cert_file,
                                    keyfile=settings.key_file, cert_reqs=ssl.CERT_REQUIRED,
                                    tls_version=ssl.PROTOCOL_TLS_CLIENT)
            except (ssl.SSLError, OSError, ValueError) as exc:
                # the message of ssl errors names files, never the password
                raise ConfigError(f"mqtt: TLS setup failed ({type(exc).__name__}: "
                                  f"{getattr(exc, 'reason', None) or exc}); check mqtt.ca_file, "
                                  "cert_file and key_file") from None
            self.client.tls_insecure_set(bool(settings.tls_insecure))
            if settings.tls_insecure:
                logger.warning("mqtt.tls_insecure=true: the broker's host name is NOT verified")
        self.client.will_set(self._t("status"), "offline", qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.on_log = self._on_log
        self._diagnostic: str | None = None
        self.outbox.losses.on_report = self._report_loss
        self._client_lock = self._lock_client_id(client_id)

    def _lock_client_id(self, client_id: str) -> str | None:
        """One daemon per client id and broker on this machine: a second one would knock
        the first off the broker at every reconnect (the broker keeps one session per id)
        and deliver messages twice. Refused in one line."""
        import hashlib

        from detector.private import lock_file, runtime_dir

        where = f"{self.settings.host}:{self.settings.port}"
        digest = hashlib.sha256(f"{where}/{client_id}".encode()).hexdigest()[:16]
        key, ok = lock_file(runtime_dir() / f"sound-detector-mqtt-{digest}.lock")
        if not ok:
            self.outbox.close()
            raise ConfigError(f"MQTT client id {client_id!r} on {where} is in use by another "
                              f"running sound-detector on this machine (pid {key}); the broker "
                              "keeps one connection per id: stop the other one, or give this "
                              "one its own mqtt.client_id (or mqtt.node_id)")
        return key

    # -- topics -------------------------------------------------------------
    def _t(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def events_lost(self) -> int:
        """Events the outbox lost since start (each also in an ERROR line and a metric)."""
        return self.outbox.events_lost

    def _report_loss(self, count: int, total: int, reason: str) -> None:
        """The outbox reported a loss: a retained diagnostic next to ``…/status``."""
        payload = json.dumps({"time": iso_utc(time.time()), "messages_lost": count,
                              "messages_lost_total": total,
                              "events_lost_total": self.outbox.events_lost,
                              "reason": reason})
        with self._retained_lock:
            self._diagnostic = payload
        if self._connected.is_set():  # otherwise the next (re)connect publishes it
            self.client.publish(self._t("diagnostic"), payload, qos=1, retain=True)

    # -- Sink hooks (pipeline thread) ----------------------------------------
    def start(self, labels: Sequence[str], model_version: str) -> None:
        self.labels = tuple(labels)
        self.model_version = str(model_version)
        self._topics = topic_names(self.labels)
        with self._retained_lock:  # published by every (re)connect, not queued: once each
            self._states = {label: "OFF" for label in self.labels}
        self._started = True
        self.client.connect_async(self.settings.host, self.settings.port,
                                  keepalive=self.settings.keepalive_seconds)
        self.client.loop_start()
        self._delivery = threading.Thread(target=self._deliver_loop, name="mqtt-delivery",
                                          daemon=True)
        self._delivery.start()
        logger.info("MQTT: publishing to %s:%d under %s/ (%s outbox)", self.settings.host,
                    self.settings.port, self.prefix,
                    "SQLite " + str(self.settings.queue_path) if self.settings.queue_path
                    else "in-memory")

    def labels_enabled(self, labels: Sequence[str]) -> None:
        with self._retained_lock:
            before = self._enabled()
            self.enabled_labels = tuple(labels)
            changed = before ^ self._enabled()
        # only the labels switched on or off (runtime control): their configs, or empty
        # ones; the others are on the broker already (every (re)connect sends them all)
        if changed and self._connected.is_set():
            self._publish_discovery(self.client, only=changed)

    def _enabled(self) -> set[str]:
        """The labels that have Home Assistant entities now (call with the lock held)."""
        if self.enabled_labels is None:
            return set(self.labels)
        return set(self.labels) & set(self.enabled_labels)

    def event(self, event: Mapping) -> None:
        label = event.get("label")
        payload = json.dumps(dict(event), default=str)
        self.outbox.put(self._t("events"), payload, qos=1, retain=False)
        if label in self._topics:
            part = self._topics[label]
            self.outbox.put(self._t(part, "event"), event_entity_payload(dict(event)), qos=1)
            state = "ON" if event.get("type") == "start" else "OFF"
            self._set_state(label, state)

    def _set_state(self, label: str, state: str) -> None:
        with self._retained_lock:
            self._states[label] = state
        self.outbox.put(self._t(self._topics[label], "state"), state, qos=1, retain=True)

    def level(self, dbfs: float, leq_dbfs: float, now: float) -> None:
        interval = self.settings.level_interval_seconds
        if self._level_external and self._level_since is not None:
            interval = max(0.0, now - self._level_since)
        self._level_external = True
        self._level_since = now
        self._publish_level(dbfs, leq_dbfs, interval, now)

    def _publish_level(self, dbfs: float, leq: float, interval: float, now: float) -> None:
        def num(x):
            return round(float(x), 2) if x is not None and math.isfinite(x) else None
        payload = {"dbfs": num(dbfs), "leq_dbfs": num(leq), "interval_s": round(interval, 3),
                   "time": iso_utc(now)}
        if self._connected.is_set():  # a periodic value: stale ones are not worth queueing
            self.client.publish(self._t("level"), json.dumps(payload), qos=0, retain=False)

    def window(self, scores: Mapping[str, float], level_dbfs: float, now: float,
               timing: Mapping[str, float]) -> None:
        if not self._level_external and level_dbfs is not None and math.isfinite(level_dbfs):
            if self._level_since is None:
                self._level_since = now
            self._level_sum += 10.0 ** (level_dbfs / 10.0)
            self._level_n += 1
            self._last_level = level_dbfs
            elapsed = now - self._level_since
            if elapsed >= self.settings.level_interval_seconds:
                leq = 10.0 * math.log10(max(self._level_sum / self._level_n, 1e-30))
                self._publish_level(level_dbfs, leq, elapsed, now)
                self._level_sum, self._level_n, self._level_since = 0.0, 0, now
        if self.settings.debug_scores and self._connected.is_set():
            top = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)[:SCORES_TOP_K]
            payload = {"time": iso_utc(now), "level_dbfs": None if level_dbfs is None
                       or not math.isfinite(level_dbfs) else round(float(level_dbfs), 2),
                       "scores": {label: round(float(s), 4) for label, s in top}}
            self.client.publish(self._t("scores"), json.dumps(payload), qos=0, retain=False)

    def status(self, key: str, value: str) -> None:
        if key != "device":
            logger.debug("MQTT: status %s=%s not published", key, value)
            return
        with self._retained_lock:
            self._device = str(value)
        if self._connected.is_set():  # otherwise the next (re)connect publishes it
            self.client.publish(self._t("device"), str(value), qos=1, retain=True)

    def close(self) -> None:
        from detector.private import unlock_file

        unlock_file(self._client_lock)
        self._client_lock = None
        if not self._started:
            self.outbox.close()
            return
        # flush: wait for a connected broker, for one that was there and may come back,
        # or for the first connection while no attempt has failed yet (a short replay
        # can end before it; messages queued by an earlier run must still go out)
        deadline = time.monotonic() + FLUSH_SECONDS
        while (len(self.outbox) and (self._connected.is_set() or self._ever_connected
                                     or self._problem is None)
               and time.monotonic() < deadline):
            time.sleep(0.05)
        self._stop.set()
        with self._discovery_lock:
            if self._discovery_timer is not None:
                self._discovery_timer.cancel()
        self.outbox.wake()
        with self._ack_cond:
            self._ack_cond.notify_all()
        if self._delivery:
            self._delivery.join(5)
        left = len(self.outbox) - self.outbox.held
        if left:
            where = (f"kept in {self.settings.queue_path} for the next run"
                     if self.settings.queue_path else "lost (set mqtt.queue_path to keep them)")
            logger.warning("MQTT: %d message(s) undelivered at shutdown: %s", left, where)
        if not self.settings.queue_path and left:
            events = sum(m.topic.endswith("/events") for m in self.outbox.queued())
            self.outbox.losses.add(left, events, "the broker was away at shutdown and the "
                                   "outbox is in memory (mqtt.queue_path unset)")
        self.outbox.losses.flush()  # say it before "offline", while the diagnostic can go out
        if self._connected.is_set():
            info = self.client.publish(self._t("status"), "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(2.0)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()
        self._connected.clear()
        self.outbox.close()

    # -- paho callbacks (network thread) -------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            # Frigate marks itself connected here anyway; we wait for the next try.
            reason = str(reason_code)
            auth = "authori" in reason.lower() or "password" in reason.lower()
            hint = " (check mqtt.username and the password)" if auth else ""
            self._refused = True  # the disconnect that follows is this refusal, not news
            self._report("auth" if auth else "refused",
                         f"broker {self._where()} refused the connection: {reason}{hint}")
            return
        self._ever_connected = True
        logger.info("MQTT: connected to %s:%d", self.settings.host, self.settings.port)
        client.subscribe([(self._t("set"), 1), (f"{self.settings.discovery_prefix}/status", 1),
                          (node_config_filter(self.node_id, self.settings.discovery_prefix), 1),
                          (self._t("+", "state"), 1)])  # stale states: _clear_stale_state
        client.publish(self._t("status"), "online", qos=1, retain=True)
        self._publish_retained(client)
        self._connected.set()
        self._clear_problem("connected")
        with self._ack_cond:
            self._ack_cond.notify_all()

    def _publish_retained(self, client) -> None:
        with self._retained_lock:
            device, states = self._device, dict(self._states)
            diagnostic = self._diagnostic
        if device is not None:
            client.publish(self._t("device"), device, qos=1, retain=True)
        if diagnostic is not None:
            client.publish(self._t("diagnostic"), diagnostic, qos=1, retain=True)
        for label, state in states.items():
            self._publish_latest(client, self._t(self._topics[label], "state"), state)
        self._publish_discovery(client)

    def _publish_discovery(self, client, only: set[str] | None = None) -> None:
        """Configs of the enabled labels; empty retained configs (Home Assistant deletes
        the entity) for the model's other labels. Older configs of this node that are
        not wanted any more arrive through the node's config subscription and are
        cleared in :meth:`_on_message`. With ``only`` (labels switched on or off), just
        those labels' configs are sent."""
        if not self.labels:
            return
        with self._retained_lock:
            if not self.settings.homeassistant_discovery:
                self._wanted_discovery = set()
                return
            enabled = self._enabled()
            messages = discovery_messages(self.prefix, self.node_id,
                                          [label for label in self.labels if label in enabled],
                                          self.model_version, __version__,
                                          self.settings.discovery_prefix)
            every = discovery_messages(self.prefix, self.node_id, self.labels,
                                       self.model_version, __version__,
                                       self.settings.discovery_prefix)
            self._wanted_discovery = wanted = {topic for topic, _ in messages}
            if only is not None:
                send = set().union(*(self._config_topics(label) for label in only))
                messages = [(topic, payload) for topic, payload in messages if topic in send]
                every = [(topic, payload) for topic, payload in every if topic in send]
        for topic, payload in messages:
            self._publish_latest(client, topic, payload)
        for topic, _ in every:
            if topic not in wanted:
                self._publish_latest(client, topic, b"")

    def _config_topics(self, label: str) -> set[str]:
        """The discovery config topics of one label (as :func:`discovery_messages`
        names them)."""
        part = self._topics.get(label)
        if part is None:
            return set()
        base, node = self.settings.discovery_prefix, topic_safe(self.node_id)
        return {f"{base}/binary_sensor/{node}/{part}/config",
                f"{base}/event/{node}/{part}_event/config"}

    def _clear_stale_config(self, client, topic: str, payload: bytes) -> None:
        """A retained config of this node that nothing publishes any more (a label
        switched off or gone from the model, or discovery turned off): delete it."""
        if not is_own_config(topic, payload, self.node_id, self.settings.discovery_prefix):
            return
        with self._retained_lock:
            if topic in self._wanted_discovery:
                return
        logger.info("MQTT: removing stale Home Assistant discovery %s", topic)
        self._publish_latest(client, topic, b"")

    def _clear_stale_state(self, client, topic: str) -> None:
        """A retained ``…/<label>/state`` this node published for a label it no longer
        has (a custom label removed, a model without it): delete it, as the label's
        discovery configs are (:meth:`_clear_stale_config`)."""
        with self._retained_lock:
            current = {self._t(part, "state") for part in self._topics.values()}
        if topic in current or not topic.startswith(self.prefix + "/"):
            return
        logger.info("MQTT: removing the retained state of a label this node no longer has: %s",
                    _short_topic(topic))
        self._publish_latest(client, topic, b"")

    def _publish_latest(self, client, topic: str, payload) -> None:
        """Publish a retained latest value; one paho refuses (a topic too long) is logged,
        not raised: an exception here would end paho's network thread."""
        try:
            client.publish(topic, payload, qos=1, retain=True)
        except (ValueError, TypeError) as exc:
            self._latest_log.log("MQTT: cannot publish to %s (%s); skipped",
                                _short_topic(topic), exc)

    def _where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    def _on_connect_fail(self, client, userdata) -> None:
        self._schedule_reconnect()
        # paho calls this inside its ``except OSError`` block: the exception is at hand
        exc = sys.exc_info()[1]
        kind, why = _connect_failure(exc, bool(self.settings.tls))
        self._report(kind, f"broker {self._where()} {why}", key=f"{kind}:{type(exc).__name__}")

    def _on_log(self, client, userdata, level, buf) -> None:
        if level in (paho.MQTT_LOG_ERR, paho.MQTT_LOG_WARNING):
            self._last_paho_error = str(buf)

    def _report(self, kind: str, message: str, count: bool = True,
                key: str | None = None) -> None:
        """A connection problem: logged when it starts or changes, then at most every
        :data:`PROBLEM_REPEAT_SECONDS`; counted in :attr:`problems`, passed to ``on_state``."""
        now = time.monotonic()
        key = key or message  # the same problem, even if its detail text varies
        with self._problem_lock:
            if count:
                self.problems[kind] += 1
            new = key != self._problem_key or self._problem is None
            self._problem = message
            if new:
                self._problem_key, self._problem_kind = key, kind
                self._problem_since = self._problem_logged = now
                self._problem_repeats = 0
                line = None
            else:
                self._problem_repeats += 1
                line = None
                if now - self._problem_logged >= PROBLEM_REPEAT_SECONDS:
                    self._problem_logged = now
                    line = (f"MQTT: still: {message} ({self._problem_repeats + 1} times in "
                            f"{now - self._problem_since:.0f} s); events are kept and retried")
        if new:
            logger.warning("MQTT: %s; retrying (events are kept meanwhile)", message)
            if self.on_state is not None:
                self.on_state(message)
        elif line:
            logger.warning("%s", line)
        else:
            logger.debug("MQTT: %s", message)

    def _clear_problem(self, state: str, kinds: tuple[str, ...] | None = None) -> None:
        with self._problem_lock:
            problem, since, tries = self._problem, self._problem_since, self._problem_repeats + 1
            if problem is None or (kinds is not None and self._problem_kind not in kinds):
                problem = None
            else:
                self._problem = None
                self._problem_kind = ""
        if problem is not None:
            if state == "acknowledged":
                logger.info("MQTT: broker %s acknowledges again after %.0f s",
                            self._where(), time.monotonic() - since)
            else:
                logger.info("MQTT: the connection to %s works again after %.0f s and %d "
                            "failed attempt(s)", self._where(), time.monotonic() - since, tries)
        if self.on_state is not None and (problem is not None or state == "connected"):
            self.on_state("connected")

    @property
    def problem(self) -> str | None:
        """The current connection problem (one line), None while all is well."""
        return self._problem

    @property
    def unacked_seconds(self) -> float:
        """Age of the message waiting for the broker's PUBACK (0 when none)."""
        since = self._unacked_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    def _schedule_reconnect(self, reset: bool = False) -> None:
        """Set paho's next reconnect wait from :func:`reconnect_delay`. paho calls
        ``on_disconnect`` / ``on_connect_fail`` before it waits, and a wait whose minimum
        and maximum are equal is exactly that long."""
        if reset:
            self._reconnect_attempt = 0
        delay = reconnect_delay(self._reconnect_attempt)
        self._reconnect_attempt += 1
        self.client.reconnect_delay_set(delay, delay)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._schedule_reconnect(reset=was)
        if self._stop.is_set():
            return
        if was:
            logger.warning("MQTT: disconnected from %s:%d (%s); reconnecting",
                           self.settings.host, self.settings.port, reason_code)
            return
        if self._refused:
            self._refused = False
            return
        detail, self._last_paho_error = self._last_paho_error, ""
        if getattr(reason_code, "getName", lambda: "")() == "Keep alive timeout":
            # the TCP connection was accepted, then no CONNACK: a hung broker, not TLS
            self._report("hung", f"broker {self._where()} accepted the TCP connection but did "
                         f"not answer the MQTT CONNECT within the keepalive "
                         f"({self.settings.keepalive_seconds} s); hung or overloaded?",
                         key="hung:connect")
            return
        # closed before CONNACK: a TLS/plain mismatch or a refused client certificate
        detail = f" ({detail})" if detail else ""
        if self.settings.tls:
            hint = ("does it require a client certificate (mqtt.cert_file, mqtt.key_file), "
                    "or is it a plain listener (mqtt.tls = false)?")
            kind = "tls"
        else:
            hint = "is it a TLS listener (set mqtt.tls = true and mqtt.ca_file)?"
            kind = "closed"
        self._report(kind, f"broker {self._where()} closed the connection before "
                           f"accepting it{detail}; {hint}", key=f"{kind}:closed")

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._ack_cond:
            self._acked[mid] = None
            while len(self._acked) > 1000:
                self._acked.popitem(last=False)
            self._ack_cond.notify_all()

    def _on_message(self, client, userdata, message) -> None:
        try:
            if message.topic == f"{self.settings.discovery_prefix}/status":
                # a retained "online" arrives with every (re)connect, which has just
                # published discovery: only a live one asks for it again
                if message.payload.strip().lower() == b"online" and not message.retain:
                    self._discovery_requested(client)
                return
            if message.topic.endswith("/config"):
                self._clear_stale_config(client, message.topic, message.payload)
                return
            if message.topic.endswith("/state"):
                if message.retain and message.payload:
                    self._clear_stale_state(client, message.topic)
                return
            if message.topic == self._t("set"):
                if message.retain:
                    self._clear_retained_control(client)
                elif message.payload:  # empty: the broker relaying our own clearing
                    self._handle_control(message.payload)
        except Exception:  # never let a callback kill paho's network thread
            logger.exception("MQTT: error while handling a message on %s", message.topic)

    def _discovery_requested(self, client) -> None:
        """Home Assistant came online: re-send discovery now, or, within
        :data:`DISCOVERY_RESEND_SECONDS` of the last re-send, once at its end."""
        now = time.monotonic()
        with self._discovery_lock:
            last = self._discovery_at
            if last is None or now - last >= DISCOVERY_RESEND_SECONDS:
                self._discovery_at = now
                send = True
            else:
                send = False
                self._discovery_waiting += 1
                if self._discovery_timer is None and not self._stop.is_set():
                    self._discovery_timer = threading.Timer(
                        DISCOVERY_RESEND_SECONDS - (now - last), self._discovery_later, (client,))
                    self._discovery_timer.daemon = True
                    self._discovery_timer.start()
        if send:
            logger.info("MQTT: Home Assistant is online; re-sending discovery")
            self._publish_discovery(client)
        else:
            logger.debug("MQTT: Home Assistant is online again; discovery re-sent within %.0f s, "
                         "answered at its end", DISCOVERY_RESEND_SECONDS)

    def _discovery_later(self, client) -> None:
        with self._discovery_lock:
            self._discovery_timer = None
            waiting, self._discovery_waiting = self._discovery_waiting, 0
            self._discovery_at = time.monotonic()
        if self._stop.is_set() or not self._connected.is_set():
            return  # the next connect publishes it anyway
        logger.info("MQTT: Home Assistant said online %d more time(s); re-sending discovery "
                    "once (at most every %.0f s)", waiting, DISCOVERY_RESEND_SECONDS)
        try:
            self._publish_discovery(client)
        except Exception:  # a timer thread: one line, never a traceback flood
            logger.exception("MQTT: re-sending discovery failed")

    def _clear_retained_control(self, client) -> None:
        """A retained ``…/set`` would be applied again at every start, over the config:
        runtime control is not persisted, so it is ignored and deleted from the broker."""
        logger.warning("MQTT: ignored a retained message on %s (runtime control is not "
                       "persisted; the config applies at every start) and cleared it from "
                       "the broker; publish control commands without -r / retain",
                       self._t("set"))
        client.publish(self._t("set"), b"", qos=1, retain=True)

    def _handle_control(self, payload: bytes) -> None:
        try:
            command = parse_control(payload, self.labels)
        except ConfigError as exc:
            self._control_log.log("MQTT: ignored %s: %s", self._t("set"), exc)
            return
        if self.on_control is None:
            self._control_log.log("MQTT: ignored %s: runtime control is not available",
                                  self._t("set"))
            return
        try:
            self.on_control(command)
        except DetectorError as exc:
            self._control_log.log("MQTT: ignored %s: %s", self._t("set"), exc)
            return
        # the pipeline logs whether it applied it ("control: ..." or "control command ignored")
        logger.debug("MQTT: runtime control %s handed to the pipeline",
                     json.dumps(command, sort_keys=True))

    # -- delivery thread ------------------------------------------------------
    def _deliver_loop(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._connected.wait(0.5):
                    continue
                message = self.outbox.peek(timeout=0.5)
                if message is None or self._stop.is_set():
                    continue
                try:
                    info = self.client.publish(message.topic, message.payload, qos=message.qos,
                                               retain=message.retain)
                except (ValueError, TypeError) as exc:  # paho refuses it: no retry can help
                    self._set_aside(message, str(exc))
                    continue
                if info.rc == paho.MQTT_ERR_QUEUE_SIZE:  # not configured; defensive
                    time.sleep(0.5)
                    continue
                # rc NO_CONN still leaves the message in paho's queue: it is sent on reconnect
                if self._wait_ack(info.mid, message.qos):
                    self.outbox.remove(message)
                    self.delivered += 1
            except Exception:
                logger.exception("MQTT: delivery loop error; retrying in 1 s")
                self._stop.wait(1.0)

    def _set_aside(self, message, reason: str) -> None:
        self.outbox.set_aside(message, reason)
        where = (f"kept in the 'undeliverable' table of {self.settings.queue_path}"
                 if self.settings.queue_path else "kept in memory")
        self._aside_log.log("MQTT: a message to %s can never be delivered (%s); moved it aside "
                            "(%s, %d so far) so the queue flows on", _short_topic(message.topic),
                            reason, where, self.outbox.set_aside_count)

    def _wait_ack(self, mid: int, qos: int) -> bool:
        self._unacked_since = started = time.monotonic()
        silent = False
        try:
            with self._ack_cond:
                while not self._stop.is_set():
                    if mid in self._acked:
                        del self._acked[mid]
                        if silent:
                            self._clear_problem("acknowledged", kinds=("no_puback",))
                        return True
                    self._ack_cond.wait(0.5)
                    waited = time.monotonic() - started
                    if waited >= ACK_TIMEOUT_SECONDS and self._connected.is_set():
                        # paho re-sends after a reconnect; until then: say so, keep waiting
                        self._report("no_puback", f"broker {self._where()} has not "
                                     f"acknowledged a message for {ACK_TIMEOUT_SECONDS:.0f} s "
                                     "(hung or overloaded?)", count=not silent)
                        silent = True
            return False
        finally:
            self._unacked_since = None
