"""Prometheus metrics: a tiny registry and a text endpoint on a local port.

No dependency: the Prometheus text exposition format (version 0.0.4) is a few
lines to write, and the Raspberry Pi install stays small. Other sinks update the
process-wide :data:`REGISTRY` (the MQTT sink exports its connection state and
outbox depth through gauge callbacks) whether or not the endpoint is enabled;
:class:`MetricsSink` serves it at ``http://<host>:<port>/metrics``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Callable, Mapping, Sequence

from detector.errors import ConfigError
from detector.ratelimit import RateLimitedLog
from detector.publish.sink import Sink

logger = logging.getLogger(__name__)
_error_log = RateLimitedLog(logger, 60.0, 5)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TIME_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
"""Histogram buckets (seconds) for per-window feature and inference time."""


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()):
        self.name, self.help, self.labelnames = name, help_text, tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: Mapping[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {sorted(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}",
                *self._samples()]

    def _samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    """Monotonic count; ``set_total`` mirrors a counter kept elsewhere (e.g. overflows)."""

    kind = "counter"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._values: dict[tuple[str, ...], float] = {} if self.labelnames else {(): 0.0}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def set_total(self, total: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = max(self._values.get(key, 0.0), float(total))

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def _samples(self):
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.labelnames, k)} {_fmt(v)}" for k, v in items]


class Gauge(_Metric):
    """A value that goes up and down, set directly or read from a callback."""

    kind = "gauge"

    def __init__(self, *args, kind: str = "gauge", **kwargs):
        super().__init__(*args, **kwargs)
        self.kind = kind  # "counter" for a monotonic total read from elsewhere
        self._value = math.nan
        self._fn: Callable[[], float] | None = None

    def set(self, value: float) -> None:
        with self._lock:
            self._value, self._fn = float(value), None

    def set_function(self, fn: Callable[[], float] | None) -> None:
        with self._lock:
            self._fn = fn

    def value(self) -> float:
        with self._lock:
            fn, value = self._fn, self._value
        if fn is None:
            return value
        try:
            return float(fn())
        except Exception:  # a scrape must never kill the daemon
            logger.exception("metric %s callback failed", self.name)
            return math.nan

    def _samples(self):
        value = self.value()
        return [] if math.isnan(value) else [f"{self.name} {_fmt(value)}"]


class Histogram(_Metric):
    """Cumulative buckets, sum and count (Prometheus histogram)."""

    kind = "histogram"

    def __init__(self, name, help_text, buckets: Sequence[float] = TIME_BUCKETS):
        super().__init__(name, help_text)
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        index = len(self.buckets)
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                index = i
                break
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    @property
    def count(self) -> int:
        with self._lock:
            return sum(self._counts)

    def _samples(self):
        with self._lock:
            counts, total = list(self._counts), self._sum
        lines, running = [], 0
        for bound, n in zip((*self.buckets, math.inf), counts):
            running += n
            lines.append(f'{self.name}_bucket{{le="{_fmt(bound)}"}} {running}')
        lines += [f"{self.name}_sum {_fmt(total)}", f"{self.name}_count {running}"]
        return lines


class Registry:
    """Every metric of the daemon, rendered in a fixed order."""

    def __init__(self):
        self.windows = Counter("sound_detector_windows_total", "Model windows processed.")
        self.inference_seconds = Histogram("sound_detector_inference_seconds",
                                           "onnxruntime time per model window.")
        self.features_seconds = Histogram("sound_detector_features_seconds",
                                          "Log-mel feature time per model window.")
        self.events = Counter("sound_detector_events_total",
                              "Events by label and type (start/end).", ("label", "type"))
        self.overflows = Counter("sound_detector_input_overflows_total",
                                 "Audio blocks lost because processing fell behind.")
        self.audio_queue = Gauge("sound_detector_audio_queue_blocks",
                                 "Audio blocks waiting between capture and processing.")
        self.level = Gauge("sound_detector_level_dbfs", "Level of the last window in dBFS.")
        self.device_connected = Gauge("sound_detector_device_connected",
                                      "1 while the audio input is open, 0 while it is lost.")
        self.mqtt_connected = Gauge("sound_detector_mqtt_connected",
                                    "1 while connected to the MQTT broker.")
        self.mqtt_problems = Counter(
            "sound_detector_mqtt_problems_total",
            "Failed MQTT connection attempts and silent-broker incidents, by reason "
            "(unreachable, tls, closed, hung, refused, auth, no_puback).", ("reason",))
        self.mqtt_unacked_seconds = Gauge(
            "sound_detector_mqtt_unacked_seconds",
            "Age of the message waiting for the broker's PUBACK (0 when none).")
        self.outbox = Gauge("sound_detector_outbox_messages",
                            "MQTT messages waiting for delivery (events and state).")
        self.outbox_dropped = Gauge("sound_detector_outbox_dropped_total",
                                    "MQTT messages dropped because the outbox was full.",
                                    kind="counter")
        self.outbox_undeliverable = Gauge(
            "sound_detector_outbox_undeliverable_total",
            "MQTT messages that can never be delivered (e.g. a topic over 65,535 bytes), "
            "moved aside so the rest flow.", kind="counter")
        self.events_lost = Gauge(
            "sound_detector_events_lost_total",
            "Events (messages on …/events) the MQTT outbox lost: dropped when full, or "
            "refused by a full disk beyond what it holds in memory.", kind="counter")
        self.outbox_lost = Gauge(
            "sound_detector_outbox_lost_total",
            "MQTT outbox messages lost (events, per-label copies and state).", kind="counter")
        self.outbox_held = Gauge(
            "sound_detector_outbox_held_messages",
            "MQTT outbox messages held in memory because the SQLite file refuses writes.")
        self.start_time = Gauge("sound_detector_start_time_seconds",
                                "Unix time the daemon started.")
        self.start_time.set(time.time())

    def metrics(self) -> list[_Metric]:
        return [value for value in vars(self).values() if isinstance(value, _Metric)]

    def render(self) -> str:
        lines: list[str] = []
        for metric in self.metrics():
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


REGISTRY = Registry()
"""The process-wide registry other sinks update."""


class MetricsSink(Sink):
    """Counts windows, timings and events; serves ``/metrics`` on host:port."""

    def __init__(self, settings, registry: Registry | None = None):
        # the HTTP server only when metrics are served (MQTT imports this module too)
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.registry = registry or REGISTRY
        self.settings = settings
        registry_ = self.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server API)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, status, ctype = registry_.render().encode(), 200, CONTENT_TYPE
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

    def start(self, labels, model_version):
        for label in labels:  # every label shows up with 0, so rate() works from the start
            for kind in ("start", "end"):
                self.registry.events.inc(0, label=label, type=kind)
        self.registry.device_connected.set(1)

    def event(self, event):
        self.registry.events.inc(1, label=str(event.get("label")), type=str(event.get("type")))

    def window(self, scores, level_dbfs, now, timing):
        r = self.registry
        r.windows.inc()
        if "inference_ms" in timing and not timing.get("model_skipped"):
            r.inference_seconds.observe(float(timing["inference_ms"]) / 1000.0)
        if "features_ms" in timing:
            r.features_seconds.observe(float(timing["features_ms"]) / 1000.0)
        if "overflows" in timing:
            r.overflows.set_total(float(timing["overflows"]))
        if "queue_depth" in timing:
            r.audio_queue.set(float(timing["queue_depth"]))
        if level_dbfs is not None and math.isfinite(level_dbfs):
            r.level.set(level_dbfs)

    def status(self, key, value):
        if key == "device":
            self.registry.device_connected.set(1 if value == "connected" else 0)

    def close(self):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
