"""Benchmark (not a test): MQTT delivery latency of the events path.

Time from ``MqttSink.event()`` (the pipeline's hand-off) to a subscriber receiving
the event on a real local Mosquitto, with the in-memory and the SQLite outbox
(fsync per message). Run from the repository root::

    python bench/mqtt_delivery.py [--events 200]
    python bench/mqtt_delivery.py --outage 2 5 10 20 30

It starts its own broker on a free port (Debian's mosquitto must be installed).
With ``--outage``, the broker is instead stopped for each of those many seconds while
events are queued, then started again; the time from the broker listening again to the
broker having acknowledged every queued message (the outbox empty) is written to
bench/results/mqtt_reconnect.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import machine, save  # noqa: E402
from conftest import Mosquitto  # noqa: E402
from mqtt_helpers import Recorder, make_event  # noqa: E402

from detector.config import MqttConfig  # noqa: E402
from detector.publish.mqtt import RECONNECT_MAX_SECONDS, RECONNECT_MIN_SECONDS, MqttSink  # noqa: E402


def measure(port: int, queue_path: str | None, n: int) -> list[float]:
    sink = MqttSink(MqttConfig(enabled=True, host="127.0.0.1", port=port, node_id="bench",
                               homeassistant_discovery=False, queue_path=queue_path))
    sink.start(["siren"], "bench")
    rec = Recorder(port, ["sound-detector/bench/events"])
    while not sink.connected:
        time.sleep(0.01)
    sent: dict[str, float] = {}
    latencies: list[float] = []
    rec.client.on_message = lambda c, u, m: latencies.append(
        time.perf_counter() - sent[json.loads(m.payload)["id"]])
    for i in range(n):
        event = make_event(i, kind="start" if i % 2 == 0 else "end", node="bench")
        sent[event["id"]] = time.perf_counter()
        sink.event(event)
        time.sleep(0.05)  # events are sparse in practice; don't measure a burst
    deadline = time.monotonic() + 30
    while len(latencies) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    sink.close()
    rec.close()
    return sorted(latencies)


def after_outage(broker: Mosquitto, outage_s: float, events: int = 5) -> dict:
    """Stop the broker for ``outage_s``, queue ``events`` events meanwhile, start it
    again: seconds from its port listening until the outbox is empty (every queued
    message acknowledged by the broker)."""
    sink = MqttSink(MqttConfig(enabled=True, host="127.0.0.1", port=broker.port,
                               node_id="bench-outage", homeassistant_discovery=False))
    sink.start(["siren"], "bench")
    try:
        deadline = time.monotonic() + 10
        while not sink.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        broker.stop()
        for i in range(events):
            time.sleep(outage_s / events)
            sink.event(make_event(i, kind="start" if i % 2 == 0 else "end", node="bench"))
        queued = len(sink.outbox)
        broker.start()  # returns once the port listens
        back = time.monotonic()
        deadline = back + 60
        while len(sink.outbox) and time.monotonic() < deadline:
            time.sleep(0.005)
        return {"outage_s": outage_s, "queued_messages": queued,
                "delivered_after_s": round(time.monotonic() - back, 3),
                "all_delivered": len(sink.outbox) == 0}
    finally:
        sink.close()


def outage_sweep(outages: list[float], repeats: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="mqtt-outage-"))
    broker = Mosquitto(workdir)
    info = machine()
    try:
        rows = [after_outage(broker, s) for s in outages for _ in range(repeats)]
    finally:
        broker.stop()
    result = {"command": "python bench/mqtt_delivery.py --outage "
                         + " ".join(f"{s:g}" for s in outages) + f" --repeats {repeats}",
              "machine": info,
              "reconnect_backoff_s": {"min": RECONNECT_MIN_SECONDS,
                                      "max": RECONNECT_MAX_SECONDS},
              "target_s": 5.0, "rows": rows,
              "max_delivered_after_s": max(r["delivered_after_s"] for r in rows)}
    lines = [f"Written by `{result['command']}`: a local Mosquitto stopped for each outage "
             "while the MQTT sink queued 5 events (15 messages), then started again; the "
             "time from the broker listening again to the broker having acknowledged every "
             "queued message. Reconnect backoff 0.5 s doubling to "
             f"{RECONNECT_MAX_SECONDS:g} s, jittered; target 5 s. {info['cpu']}, "
             f"{info['cores']} cores, load {info['load_avg_1min_at_start']}, {info['date']}.",
             "", "| outage s | queued messages | delivered after s |", "|---|---|---|"]
    lines += [f"| {r['outage_s']:g} | {r['queued_messages']} | {r['delivered_after_s']:.2f}"
              f"{'' if r['all_delivered'] else ' (not all)'} |" for r in rows]
    lines.append(f"\nLongest: {result['max_delivered_after_s']:.2f} s.\n")
    print(save("mqtt_reconnect", result, "\n".join(lines), None).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--outage", type=float, nargs="+", metavar="SECONDS",
                        help="measure delivery after broker outages of these lengths")
    parser.add_argument("--repeats", type=int, default=2,
                        help="with --outage: how many times each outage is repeated")
    args = parser.parse_args()
    if args.outage:
        outage_sweep(args.outage, args.repeats)
        return
    workdir = Path(tempfile.mkdtemp(prefix="mqtt-bench-"))
    broker = Mosquitto(workdir)
    try:
        print(f"# {platform.processor() or platform.machine()}, Python "
              f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}")
        print("| outbox | events | p50 ms | p95 ms | max ms |\n|---|---|---|---|---|")
        for name, path in (("memory", None), ("SQLite", str(workdir / "outbox.sqlite"))):
            lat = measure(broker.port, path, args.events)
            print(f"| {name} | {len(lat)} | {lat[len(lat) // 2] * 1e3:.1f} | "
                  f"{lat[min(len(lat) - 1, int(len(lat) * 0.95))] * 1e3:.1f} | "
                  f"{lat[-1] * 1e3:.1f} |")
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
