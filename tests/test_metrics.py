"""Prometheus endpoint: scraped over real HTTP, parsed line by line."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from conftest import free_port
from detector.config import MetricsConfig
from detector.errors import ConfigError
from detector.publish.metrics import Registry, MetricsSink


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
    sink.registry.mqtt_connected.set_function(lambda: 1)
    sink.registry.outbox.set_function(lambda: 7)
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
    sink.status("device", "connected")
    assert scrape(sink.port)["sound_detector_device_connected"] == 1


def test_failing_callback_does_not_break_a_scrape(sink):
    sink.registry.outbox.set_function(lambda: 1 / 0)
    m = scrape(sink.port)
    assert "sound_detector_outbox_messages" not in m
    assert "sound_detector_windows_total" in m


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
