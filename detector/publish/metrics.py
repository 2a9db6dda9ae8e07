"""Prometheus metrics through ``prometheus_client``, served on a local port.

This module is imported only when ``[metrics] enabled = true``: importing
``prometheus_client`` costs tens of milliseconds and several megabytes of memory,
which a Raspberry Pi that publishes over MQTT without metrics should not pay
(bench/results/metrics_cost.json). Each :class:`MetricsSink` has its own
:class:`Registry`: the daemon's counters and histograms, the values read at scrape
time (audio level, queue depth, the MQTT sink's state through :meth:`Registry.watch_mqtt`)
and the ``process_*`` and ``python_info`` metrics of the client's own collectors.
Other sinks never import this module; the metrics side reads them.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Callable, Iterator

try:
    import prometheus_client
except ImportError as exc:  # a runtime dependency; a broken install says what to do
    raise ImportError(f"{exc}: [metrics] needs it, pip install 'prometheus_client>=0.18'"
                      ) from None
from prometheus_client import (CollectorRegistry, Counter, Histogram, PlatformCollector,
                               ProcessCollector, generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from detector.errors import ConfigError
from detector.ratelimit import RateLimitedLog
from detector.publish.sink import Sink

logger = logging.getLogger(__name__)
_error_log = RateLimitedLog(logger, 60.0, 5)

# No ``*_created`` sample beside every counter and histogram: the exposition stays the
# series it always was (the process-wide switch of the client; this module is loaded
# only by a daemon that serves metrics).
prometheus_client.disable_created_metrics()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The text format ``generate_latest`` writes (the client's CONTENT_TYPE_LATEST names a
newer version in recent releases; our names need nothing beyond 0.0.4)."""
TIME_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
"""Histogram buckets (seconds) for per-window feature and inference time."""

Read = Callable[[], Any]


class _Readings:
    """A collector of values read at scrape time: gauges, and totals kept elsewhere.

    A read that returns None or NaN (not known yet) or raises leaves that one metric
    out of the scrape; the others are served. A failing read is logged at most five
    times a minute.
    """

    def __init__(self) -> None:
        self._specs: list[tuple[str, str, str, tuple[str, ...], Read]] = []
        self._lock = threading.Lock()

    def add(self, name: str, kind: str, help_text: str, read: Read,
            labelnames: tuple[str, ...] = ()) -> None:
        """``read()`` returns a number, or with ``labelnames`` a mapping from a label
        value (one label) to a number."""
        with self._lock:
            self._specs.append((name, kind, help_text, labelnames, read))

    def collect(self) -> Iterator:
        with self._lock:
            specs = list(self._specs)
        for name, kind, help_text, labelnames, read in specs:
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            try:
                value = read()
                if labelnames:
                    metric = family(name, help_text, labels=labelnames)
                    for label, v in sorted(dict(value).items()):
                        metric.add_metric([str(label)], float(v))
                    yield metric
                    continue
                if value is None or math.isnan(float(value)):
                    continue
                metric = family(name, help_text, value=float(value))
            except Exception as exc:  # a scrape must never fail for one value
                _error_log.log("metrics: reading %s failed (%s: %s)", name,
                               type(exc).__name__, exc)
                continue
            yield metric


class Registry:
    """Every metric of one daemon: its own ``CollectorRegistry``, in a fixed order."""

    def __init__(self, process: bool = True):
        self.collectors = CollectorRegistry()
        r = self.collectors
        self.windows = Counter("sound_detector_windows_total", "Model windows processed.",
                               registry=r)
        self.inference_seconds = Histogram("sound_detector_inference_seconds",
                                           "onnxruntime time per model window.",
                                           buckets=TIME_BUCKETS, registry=r)
        self.features_seconds = Histogram("sound_detector_features_seconds",
                                          "Log-mel feature time per model window.",
                                          buckets=TIME_BUCKETS, registry=r)
        self.events = Counter("sound_detector_events_total",
                              "Events by label and type (start/end).", ("label", "type"),
                              registry=r)
        self.overflows = Counter("sound_detector_input_overflows_total",
                                 "Audio blocks lost because processing fell behind.",
                                 registry=r)
        self._overflows_seen = 0.0
        # values that are unknown until the pipeline (or a sink) says them
        self.audio_queue: float | None = None
        self.level: float | None = None
        self.device_connected: float | None = None
        self.start_time = time.time()
        self.readings = _Readings()
        self.readings.add("sound_detector_audio_queue_blocks", "gauge",
                          "Audio blocks waiting between capture and processing.",
                          lambda: self.audio_queue)
        self.readings.add("sound_detector_level_dbfs", "gauge",
                          "Level of the last window in dBFS.", lambda: self.level)
        self.readings.add("sound_detector_device_connected", "gauge",
                          "1 while the audio input is open, 0 while it is lost.",
                          lambda: self.device_connected)
        self.readings.add("sound_detector_start_time_seconds", "gauge",
                          "Unix time the daemon started.", lambda: self.start_time)
        r.register(self.readings)
        if process:  # process_* (CPU seconds, resident memory, open fds, start time)
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)  # python_info{version,implementation}

    def set_overflows(self, total: float) -> None:
        """Mirror the capture's overflow total (a counter kept by the audio source)."""
        if total > self._overflows_seen:
            self.overflows.inc(total - self._overflows_seen)
            self._overflows_seen = float(total)

    def watch_mqtt(self, mqtt: Any) -> None:
        """Serve the state of an MQTT sink, read at every scrape.

        ``mqtt`` needs ``connected``, ``unacked_seconds``, ``problems`` (a mapping
        reason -> count) and ``outbox`` (``len()``, ``dropped``, ``set_aside_count``,
        ``events_lost``, ``lost``, ``held``): :class:`detector.publish.mqtt.MqttSink`.
        """
        add = self.readings.add
        add("sound_detector_mqtt_connected", "gauge", "1 while connected to the MQTT broker.",
            lambda: 1.0 if mqtt.connected else 0.0)
        add("sound_detector_mqtt_problems_total", "counter",
            "Failed MQTT connection attempts and silent-broker incidents, by reason "
            "(unreachable, tls, closed, hung, refused, auth, no_puback).",
            lambda: mqtt.problems, labelnames=("reason",))
        add("sound_detector_mqtt_unacked_seconds", "gauge",
            "Age of the message waiting for the broker's PUBACK (0 when none).",
            lambda: mqtt.unacked_seconds)
        add("sound_detector_outbox_messages", "gauge",
            "MQTT messages waiting for delivery (events and state).",
            lambda: len(mqtt.outbox))
        add("sound_detector_outbox_dropped_total", "counter",
            "MQTT messages dropped because the outbox was full.",
            lambda: mqtt.outbox.dropped)
        add("sound_detector_outbox_undeliverable_total", "counter",
            "MQTT messages that can never be delivered (e.g. a topic over 65,535 bytes), "
            "moved aside so the rest flow.", lambda: mqtt.outbox.set_aside_count)
        add("sound_detector_events_lost_total", "counter",
            "Events (messages on …/events) the MQTT outbox lost: dropped when full, or "
            "refused by a full disk beyond what it holds in memory.",
            lambda: mqtt.outbox.events_lost)
        add("sound_detector_outbox_lost_total", "counter",
            "MQTT outbox messages lost (events, per-label copies and state).",
            lambda: mqtt.outbox.lost)
        add("sound_detector_outbox_held_messages", "gauge",
            "MQTT outbox messages held in memory because the SQLite file refuses writes.",
            lambda: mqtt.outbox.held)

    def render(self) -> str:
        """The text exposition (what ``/metrics`` serves)."""
        return generate_latest(self.collectors).decode()


class MetricsSink(Sink):
    """Counts windows, timings and events; serves ``/metrics`` on host:port."""

    def __init__(self, settings, registry: Registry | None = None):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.registry = registry or Registry()
        self.settings = settings
        registry_ = self.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server API)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, status, ctype = (generate_latest(registry_.collectors), 200,
                                           CONTENT_TYPE)
                elif path == "/":
                    body, status, ctype = (b'<a href="/metrics">metrics</a>\n', 200,
                                           "text/html; charset=utf-8")
                else:
                    body, status, ctype = b"not found\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt, *args):  # scrapes are not worth a log line
                logger.debug("metrics %s " + fmt, self.address_string(), *args)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # noqa: ARG002
                # a scraper that hangs up early (broken pipe, reset) is its own business:
                # never a traceback on stderr; anything else one rate-limited line
                import sys

                exc = sys.exc_info()[1]
                if isinstance(exc, (ConnectionError, TimeoutError)):
                    logger.debug("metrics: client %s went away (%s)", client_address[0], exc)
                else:
                    _error_log.log("metrics: request from %s failed (%s: %s)",
                                   client_address[0], type(exc).__name__, exc)

        try:
            self._server = Server((settings.host, settings.port), Handler)
        except OSError as exc:
            raise ConfigError(f"metrics: cannot listen on {settings.host}:{settings.port} "
                              f"({exc.strerror or exc}); choose another metrics.port or "
                              "disable [metrics]") from None
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="metrics-http", daemon=True)
        self._thread.start()
        logger.info("Prometheus metrics on http://%s:%d/metrics", settings.host, self.port)

    def watch_mqtt(self, mqtt: Any) -> None:
        """Serve an MQTT sink's connection and outbox state (see :meth:`Registry.watch_mqtt`)."""
        self.registry.watch_mqtt(mqtt)

    def start(self, labels, model_version):
        for label in labels:  # every label shows up with 0, so rate() works from the start
            for kind in ("start", "end"):
                self.registry.events.labels(label=label, type=kind)
        self.registry.device_connected = 1.0

    def event(self, event):
        self.registry.events.labels(label=str(event.get("label")),
                                    type=str(event.get("type"))).inc()

    def window(self, scores, level_dbfs, now, timing):
        r = self.registry
        r.windows.inc()
        if "inference_ms" in timing and not timing.get("model_skipped"):
            r.inference_seconds.observe(float(timing["inference_ms"]) / 1000.0)
        if "features_ms" in timing:
            r.features_seconds.observe(float(timing["features_ms"]) / 1000.0)
        if "overflows" in timing:
            r.set_overflows(float(timing["overflows"]))
        if "queue_depth" in timing:
            r.audio_queue = float(timing["queue_depth"])
        if level_dbfs is not None and math.isfinite(level_dbfs):
            r.level = float(level_dbfs)

    def status(self, key, value):
        if key == "device":
            self.registry.device_connected = 1.0 if value == "connected" else 0.0

    def close(self):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
