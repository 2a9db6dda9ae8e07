"""Prometheus endpoint: scraped over real HTTP, parsed line by line."""

from __future__ import annotations

import socket
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import free_port
from detector.config import MetricsConfig
from detector.errors import ConfigError
from detector.publish.metrics import TIME_BUCKETS, MetricsSink, Registry


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    return samples


DAEMON_METRICS = (
    "sound_detector_windows_total", "sound_detector_events_total",
    "sound_detector_inference_seconds", "sound_detector_features_seconds",
    "sound_detector_input_overflows_total", "sound_detector_audio_queue_blocks",
    "sound_detector_level_dbfs", "sound_detector_device_connected",
    "sound_detector_mqtt_connected", "sound_detector_mqtt_problems_total",
    "sound_detector_mqtt_unacked_seconds", "sound_detector_outbox_messages",
    "sound_detector_outbox_dropped_total", "sound_detector_outbox_undeliverable_total",
    "sound_detector_events_lost_total", "sound_detector_outbox_lost_total",
    "sound_detector_outbox_held_messages", "sound_detector_start_time_seconds")
"""The names docs/service.md promises (their meaning is checked below)."""


class FakeOutbox:
    def __init__(self, depth=7):
        self.depth, self.dropped, self.set_aside_count = depth, 3, 2
        self.events_lost, self.lost, self.held = 1, 4, 5

    def __len__(self):
        return self.depth


class FakeMqtt:
    """What the metrics read from an MQTT sink (MqttSink has these; test_mqtt_faults
    checks the real values)."""

    def __init__(self):
        self.connected, self.unacked_seconds = True, 1.5
        self.problems = {"auth": 2, "unreachable": 1}
        self.outbox = FakeOutbox()


@pytest.fixture
def sink():
    registry = Registry()
    s = MetricsSink(MetricsConfig(enabled=True, host="127.0.0.1", port=free_port()), registry)
    yield s
    s.close()


def test_metrics_follow_the_pipeline(sink):
    sink.start(["siren", "dog_bark"], "v1")
    for i in range(5):
        sink.window({"siren": 0.1}, -30.0 - i, 100.0 + i,
                    {"features_ms": 0.05, "inference_ms": 1.5 + i, "queue_depth": 3,
                     "overflows": i})
    # a gated quiet window skips the model: counted as a window, not as an inference
    sink.window({"siren": 0.0}, -34.0, 106.0, {"features_ms": 0.05, "inference_ms": 0.0,
                                              "model_skipped": 1.0})
    sink.event({"type": "start", "label": "siren"})
    sink.event({"type": "end", "label": "siren"})
    sink.event({"type": "start", "label": "siren"})
    sink.status("device", "lost")
    mqtt = FakeMqtt()
    sink.watch_mqtt(mqtt)
    m = scrape(sink.port)
    assert m["sound_detector_windows_total"] == 6
    assert m['sound_detector_events_total{label="siren",type="start"}'] == 2
    assert m['sound_detector_events_total{label="siren",type="end"}'] == 1
    assert m['sound_detector_events_total{label="dog_bark",type="start"}'] == 0
    assert m["sound_detector_inference_seconds_count"] == 5
    assert m['sound_detector_inference_seconds_bucket{le="0.002"}'] == 1  # 1.5 ms only
    assert m['sound_detector_inference_seconds_bucket{le="0.005"}'] == 4
    assert m['sound_detector_inference_seconds_bucket{le="+Inf"}'] == 5
    assert m["sound_detector_inference_seconds_sum"] == pytest.approx(0.0175)
    assert m['sound_detector_features_seconds_bucket{le="0.0005"}'] == 6
    assert m["sound_detector_input_overflows_total"] == 4
    assert m["sound_detector_audio_queue_blocks"] == 3
    assert m["sound_detector_level_dbfs"] == -34
    assert m["sound_detector_device_connected"] == 0
    assert m["sound_detector_mqtt_connected"] == 1
    assert m["sound_detector_outbox_messages"] == 7
    assert m['sound_detector_mqtt_problems_total{reason="auth"}'] == 2
    assert m['sound_detector_mqtt_problems_total{reason="unreachable"}'] == 1
    assert m["sound_detector_mqtt_unacked_seconds"] == 1.5
    assert (m["sound_detector_outbox_dropped_total"], m["sound_detector_outbox_undeliverable_total"],
            m["sound_detector_events_lost_total"], m["sound_detector_outbox_lost_total"],
            m["sound_detector_outbox_held_messages"]) == (3, 2, 1, 4, 5)
    assert abs(m["sound_detector_start_time_seconds"] - time.time()) < 600
    sink.status("device", "connected")
    mqtt.connected, mqtt.outbox.depth, mqtt.problems = False, 0, {"auth": 3}
    m = scrape(sink.port)
    assert m["sound_detector_device_connected"] == 1
    assert m["sound_detector_mqtt_connected"] == 0 and m["sound_detector_outbox_messages"] == 0
    assert m['sound_detector_mqtt_problems_total{reason="auth"}'] == 3
    # overflows mirror the capture's total: never counted twice, never backwards
    sink.window({}, -30.0, 107.0, {"overflows": 2})
    sink.window({}, -30.0, 108.0, {"overflows": 6})
    assert scrape(sink.port)["sound_detector_input_overflows_total"] == 6


def test_every_documented_name_and_the_process_metrics_are_served(sink):
    sink.start(["siren"], "v1")
    sink.window({"siren": 0.1}, -30.0, 1.0, {"features_ms": 0.05, "inference_ms": 1.0,
                                              "queue_depth": 0, "overflows": 0})
    sink.watch_mqtt(FakeMqtt())
    with urllib.request.urlopen(f"http://127.0.0.1:{sink.port}/metrics", timeout=10) as r:
        text = r.read().decode()
    m = scrape(sink.port)
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert set(DAEMON_METRICS) <= families, sorted(set(DAEMON_METRICS) - families)
    # the documented names with _total are counters, the rest as before
    types = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE"))
    assert all(types[n] == "counter" for n in DAEMON_METRICS if n.endswith("_total"))
    assert types["sound_detector_inference_seconds"] == "histogram"
    # the bucket bounds stay the same
    bounds = [k.split('le="')[1].rstrip('"}') for k in m
              if k.startswith("sound_detector_inference_seconds_bucket")]
    assert [float(b) for b in bounds] == [*TIME_BUCKETS, float("inf")]
    # no _created series beside the counters (docs/service.md says so)
    assert not [k for k in m if k.endswith("_created")]
    # what a fleet dashboard expects of any process: CPU, memory, open files, start time
    if sys.platform.startswith("linux"):
        assert m["process_resident_memory_bytes"] > 1e6
        assert m["process_cpu_seconds_total"] > 0
        assert m["process_open_fds"] > 0 and m["process_max_fds"] > 0
        assert abs(m["process_start_time_seconds"] - time.time()) < 86400 * 365
    assert any(k.startswith("python_info{") for k in m)


def test_the_root_page_links_the_metrics(sink):
    with urllib.request.urlopen(f"http://127.0.0.1:{sink.port}/", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/html")
        assert b'href="/metrics"' in r.read()


def test_failing_read_does_not_break_a_scrape(sink, caplog):
    class Broken:
        connected, problems = True, {"auth": 1}
        outbox = None  # len(None), None.dropped ... all fail

        @property
        def unacked_seconds(self):
            raise RuntimeError("gone")

    sink.watch_mqtt(Broken())
    with caplog.at_level("WARNING", logger="detector.publish.metrics"):
        m = scrape(sink.port)
    assert "sound_detector_outbox_messages" not in m
    assert "sound_detector_mqtt_unacked_seconds" not in m
    assert "sound_detector_windows_total" in m and m["sound_detector_mqtt_connected"] == 1
    assert "process_cpu_seconds_total" in m or not sys.platform.startswith("linux")
    assert not [r for r in caplog.records if r.exc_info], "one line, not a traceback"


def test_unknown_path_is_404(sink):
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{sink.port}/nope", timeout=10)
    assert info.value.code == 404


def test_port_in_use_is_one_line():
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        with pytest.raises(ConfigError) as info:
            MetricsSink(MetricsConfig(enabled=True, port=port), Registry())
    assert f"127.0.0.1:{port}" in str(info.value) and "\n" not in str(info.value)


def test_clients_that_hang_up_early_never_print_a_traceback(capfd):
    import struct
    import time

    sink = MetricsSink(MetricsConfig(enabled=True, port=0), registry=Registry())
    try:
        for _ in range(50):  # request, then a reset (SO_LINGER 0) before the answer is read
            client = socket.create_connection(("127.0.0.1", sink.port))
            client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
        time.sleep(0.5)
        # still serving
        with urllib.request.urlopen(f"http://127.0.0.1:{sink.port}/metrics", timeout=5) as r:
            assert r.status == 200
    finally:
        sink.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err[:2000]


def test_the_daemon_wiring_serves_a_real_mqtt_sinks_state(mosquitto):
    """build_sinks hands the MQTT sink to the metrics: its state, read at scrape time."""
    import uuid
    from dataclasses import replace

    from detector.config import Config, MqttConfig
    from detector.pipeline import build_sinks

    config = replace(Config(), metrics=MetricsConfig(enabled=True, host="127.0.0.1", port=0),
                     mqtt=MqttConfig(enabled=True, host="127.0.0.1", port=mosquitto.port,
                                     node_id=f"node-{uuid.uuid4().hex[:6]}"))
    sinks = build_sinks(config, 16000, stdout=False)
    try:
        metrics = next(s for s in sinks if type(s).__name__ == "MetricsSink")
        mqtt = next(s for s in sinks if type(s).__name__ == "MqttSink")
        for s in sinks:
            s.start(["siren"], "v1")
        deadline = time.monotonic() + 20
        while not mqtt.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        m = scrape(metrics.port)
        assert m["sound_detector_mqtt_connected"] == 1
        assert m["sound_detector_mqtt_unacked_seconds"] >= 0
        assert m["sound_detector_outbox_dropped_total"] == 0
        mqtt.problems["unreachable"] += 2  # what a lost broker adds
        assert scrape(metrics.port)['sound_detector_mqtt_problems_total{reason="unreachable"}'] == 2
    finally:
        for s in sinks:
            s.close()
