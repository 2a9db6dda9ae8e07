"""Sound onset -> event message at an MQTT subscriber, in real time; MQTT delivery alone.

    python -m bench latency --real siren gun_shot dog_bark car_horn --onsets 5
    python -m bench latency --sound horn --onsets 20
    python -m bench latency --outage 2 5 10 20 30 --repeats 3
    python -m bench latency --delivery 200

A stimulus with known onsets is replayed *in real time* (``FileSource(realtime=True)``, the
pipeline's live clock) through the daemon's pipeline and MQTT sink to a real local
Mosquitto; a separate paho subscriber records when each ``start`` event arrives. Each
sound comes after ``--gap`` seconds of quiet noise (-60 dBFS). ``--sound horn|siren``: a
segment of the bundled demo clip (the horn starts at 7.0 s with a 12 ms attack; the siren
at 1.0 s, far away at first). ``--real LABEL...``: real recordings (``--data``, default the
shared data: SESA ``siren/`` and ``gunshot/``, UrbanSound8K ``dog_bark`` and ``car_horn``
slices, ``--onsets`` clips of each in a fixed order, kinds interleaved); a clip's onset is
its first 10 ms frame within 20 dB of its loudest, a hit the first ``start`` of its own
label. The clips may be in the model's training data: this measures delay, not accuracy.

latency = arrival at the subscriber - wall time of the onset sample (the stream clock is
anchored to the wall clock at the first sample): the window filling, the gate's wait,
smoothing and the broker round trip. Missed onsets are counted, not hidden.

``--outage S...``: the broker stopped for each S seconds while the MQTT sink queues 5
events, then started again: seconds from it listening again to every queued message
acknowledged (the outbox empty). ``--delivery N``: N events handed to the MQTT sink 50 ms
apart, time until the subscriber has each, with the memory and the SQLite outbox.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from bench._common import SHARED_DATA, Broker, begin, demo_audio, finish, percentiles, stamp_line

SR = 16000
SOUNDS = {"horn": (6.3, 9.5, 7.0), "siren": (0.0, 6.0, 1.0)}
"""Segment start, end and onset time in the demo clip, seconds."""


def stimulus(onsets: int, gap: float, sound: str = "horn", seed: int = 0
             ) -> tuple[np.ndarray, list[float], float]:
    """(audio, onset times in the stimulus, cycle length)."""
    rng = np.random.default_rng(seed)
    start, end, onset = SOUNDS[sound]
    demo = demo_audio(SR)[int(start * SR):int(end * SR)]
    parts, times, t = [], [], 0.0
    for _ in range(onsets):
        quiet = (10 ** (-60 / 20)) * rng.standard_normal(int(gap * SR)).astype(np.float32)
        parts += [quiet, demo]
        times.append(t + gap + onset - start)
        t += gap + len(demo) / SR
    parts.append(np.zeros(int(2.0 * SR), np.float32))  # let the last event end
    return np.concatenate(parts), times, t / max(1, onsets) if onsets else 0.0


REAL = {"siren": ("sesa", "siren"), "gun_shot": ("sesa", "gunshot"),
        "dog_bark": ("urbansound8k", "dog_bark"), "car_horn": ("urbansound8k", "car_horn")}
"""Label -> (dataset, SESA folder or UrbanSound8K class) of the real recordings."""
ONSET_DB_BELOW_PEAK = 20.0


def real_clips(data: Path, label: str, count: int) -> list[Path]:
    """``count`` recordings of ``label`` in a fixed order, spread over the folder / folds."""
    import csv

    dataset, name = REAL[label]
    if dataset == "sesa":
        files = sorted((data / "sesa" / name).glob("*.flac"))
    else:
        files = []
        with open(data / "urbansound8k" / "metadata" / "UrbanSound8K.csv", newline="") as f:
            for row in csv.DictReader(f):
                path = data / "urbansound8k" / "audio" / f"fold{row['fold']}" / row["slice_file_name"]
                if row["class_name"] == name and row["salience"] == "1" and path.exists():
                    files.append(path)
        files.sort()
    if not files:
        raise SystemExit(f"latency: no {label} recordings under {data} (see its README)")
    step = max(1, len(files) // max(1, count))
    return [files[(i * step) % len(files)] for i in range(count)]


def clip_onset(y: np.ndarray) -> float:
    """Seconds to the first 10 ms frame within ONSET_DB_BELOW_PEAK dB of the loudest one."""
    frame = SR // 100
    n = len(y) // frame
    if n == 0:
        return 0.0
    power = np.mean(y[:n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1)
    level = 10 * np.log10(np.maximum(power, 1e-12))
    return float(np.argmax(level >= level.max() - ONSET_DB_BELOW_PEAK)) * frame / SR


def real_stimulus(data: Path, labels: list[str], per_label: int, gap: float, seed: int = 0
                  ) -> tuple[np.ndarray, list[tuple[float, str, str]]]:
    """(audio, [(onset time, label, clip name)]): the kinds interleaved, each after ``gap``
    seconds of -60 dBFS noise."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    clips = {label: real_clips(data, label, per_label) for label in labels}
    parts, onsets, t = [], [], 0.0
    for i in range(per_label):
        for label in labels:
            path = clips[label][i]
            y, rate = sf.read(str(path), dtype="float32", always_2d=True)
            if rate != SR:
                raise SystemExit(f"latency: {path.name}: {rate} Hz, expected {SR}")
            y = y.mean(axis=1)
            quiet = (10 ** (-60 / 20)) * rng.standard_normal(int(gap * SR)).astype(np.float32)
            parts += [quiet, y]
            onsets.append((t + gap + clip_onset(y), label, path.name))
            t += gap + len(y) / SR
    parts.append(np.zeros(int(2.0 * SR), np.float32))  # let the last event end
    return np.concatenate(parts), onsets



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onsets", type=int, default=20, help="sounds (of each --real label)")
    parser.add_argument("--gap", type=float, default=4.0, help="quiet seconds before each sound")
    parser.add_argument("--sound", choices=sorted(SOUNDS), default="horn")
    parser.add_argument("--real", nargs="+", choices=sorted(REAL), default=None,
                        help="real recordings of these labels instead of the demo clip")
    parser.add_argument("--data", default=None, help="real data folder (default: the shared data)")
    parser.add_argument("--smoothing", type=int, default=None, help="events.smoothing_windows")
    parser.add_argument("--onset-hop", type=float, default=None, help="model.onset_hop_seconds")
    parser.add_argument("--model", default=None, help="ONNX model (default: the shipped one)")
    parser.add_argument("--outage", type=float, nargs="+", metavar="SECONDS", default=None,
                        help="measure delivery after broker outages of these lengths instead")
    parser.add_argument("--repeats", type=int, default=2, help="with --outage: per outage")
    parser.add_argument("--delivery", type=int, default=None, metavar="EVENTS",
                        help="measure sink -> subscriber delivery of this many events instead")
    parser.add_argument("--name", default=None,
                        help="results name (default latency, mqtt_reconnect or mqtt_delivery)")


def subscriber(port: int, topic: str, on_event):
    """A paho client subscribed (QoS 1) to ``topic``, calling ``on_event(arrival, event)``."""
    import paho.mqtt.client as mqtt

    subscribed = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:8]}")
    sub.on_connect = lambda c, u, f, r, p: c.subscribe(topic, qos=1)
    sub.on_subscribe = lambda c, u, m, r, p: subscribed.set()
    sub.on_message = lambda c, u, msg: on_event(time.time(), json.loads(msg.payload))
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    if not subscribed.wait(10):
        raise SystemExit("latency: the subscriber could not subscribe")
    return sub


def onsets(args, result: dict) -> None:
    import soundfile as sf

    from detector.audio.capture import FileSource
    from detector.config import config_from_dict
    from detector.model.classifier import Classifier
    from detector.pipeline import Pipeline, build_sinks

    if args.real:
        data = Path(args.data) if args.data else SHARED_DATA
        if not (data / "sesa").is_dir() and not (data / "urbansound8k").is_dir():
            raise SystemExit(f"latency: no real recordings at {data}; pass --data or use --sound")
        audio, marked = real_stimulus(data, args.real, args.onsets, args.gap)
    else:
        audio, times, _ = stimulus(args.onsets, args.gap, args.sound)
        marked = [(t, args.sound, None) for t in times]
    arrivals, lock = [], threading.Lock()

    def on_event(t, e):
        with lock:
            arrivals.append((t, e))

    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp, Broker() as broker:
        wav = Path(tmp) / "stimulus.wav"
        sf.write(str(wav), audio, SR, subtype="PCM_16")
        sub = subscriber(broker.port, "sound-detector/bench/events", on_event)
        config = config_from_dict({
            "model": {"intra_op_threads": 1, **({} if args.onset_hop is None else
                                                 {"onset_hop_seconds": args.onset_hop})},
            "events": {} if args.smoothing is None else {"smoothing_windows": args.smoothing},
            "mqtt": {"enabled": True, "host": "127.0.0.1", "port": broker.port,
                     "node_id": "bench", "homeassistant_discovery": False},
            "output": {"stdout_json": False, "log_level": "warning"}})
        classifier = Classifier(args.model, config.model.providers, 1)
        source = FileSource(wav, SR, realtime=True, block_seconds=config.audio.block_seconds)
        pipeline = Pipeline(config, source, classifier,
                            build_sinks(config, SR, stdout=False), live=True, node="bench")
        print(f"replaying {len(audio) / SR:.0f} s in real time ({len(marked)} onsets)...",
              flush=True)
        pipeline.run()
        time.sleep(0.5)
        sub.loop_stop()
        sub.disconnect()
        if pipeline.error is not None:
            raise pipeline.error
        origin = pipeline.started_at
    starts = sorted((t, e) for t, e in arrivals if e.get("type") == "start")
    # a start belongs to an onset from 0.5 s before it until 0.5 s before the next one
    spans = [(origin + t, origin + (marked[i + 1][0] if i + 1 < len(marked)
                                    else len(audio) / SR) - 0.5)
             for i, (t, _, _) in enumerate(marked)]
    rows = {}
    for (wall, until), (_, want, _) in zip(spans, marked):
        hits = [(t, e) for t, e in starts if wall - 0.5 <= t < until]
        own = [t for t, e in hits if not args.real or e["label"] == want]
        row = rows.setdefault(want, {"clips": 0, "missed": 0, "other_label_first": 0,
                                     "all_latencies_ms": []})
        row["clips"] += 1
        if own:
            row["all_latencies_ms"].append(round(1000 * (own[0] - wall), 1))
        else:
            row["missed"] += 1
        if hits and args.real and hits[0][1]["label"] != want:
            row["other_label_first"] += 1
    for row in rows.values():
        ms = row["all_latencies_ms"]
        row["detected"] = len(ms)
        row["latency_ms"] = {k: None if v is None else round(v, 1)
                             for k, v in percentiles(ms, (50, 95)).items()}
        row["latency_ms"].update(min=min(ms) if ms else None, max=max(ms) if ms else None)
    every = [x for row in rows.values() for x in row["all_latencies_ms"]]
    result.update({
        "mode": "onset", "model": classifier.metadata.model_version,
        "stimulus": "real recordings" if args.real else f"demo clip ({args.sound})",
        "gap_seconds": args.gap, "onsets": len(marked),
        "smoothing_windows": config.events.smoothing_windows,
        "onset_hop_seconds": config.model.onset_hop_seconds,
        "start_events_outside_sounds": sum(1 for t, _ in starts
                                          if not any(w - 0.5 <= t < u for w, u in spans)),
        "labels": rows, "all": {"clips": len(marked), "detected": len(every),
                                **{k: None if v is None else round(v, 1)
                                   for k, v in percentiles(every, (50, 95)).items()}},
        "clips": [name for _, _, name in marked if name]})


def make_event(i: int) -> dict:
    """A contract-shaped event (keys of the MQTT contract)."""
    kind = "start" if i % 2 == 0 else "end"
    return {"id": str(uuid.uuid4()), "type": kind, "label": "siren", "score": 0.9,
            "peak_score": 0.95, "start": "2026-01-01T00:00:00.000Z",
            "end": None if kind == "start" else "2026-01-01T00:00:01.000Z",
            "duration_s": None if kind == "start" else 1.0, "level_dbfs": -20.0,
            "node": "bench", "model": "bench", "seq": i}


def _sink(port: int, queue_path: str | None = None):
    from detector.config import MqttConfig
    from detector.publish.mqtt import MqttSink

    sink = MqttSink(MqttConfig(enabled=True, host="127.0.0.1", port=port, node_id="bench",
                               homeassistant_discovery=False, queue_path=queue_path))
    sink.start(["siren"], "bench")
    deadline = time.monotonic() + 10
    while not sink.connected and time.monotonic() < deadline:
        time.sleep(0.01)
    return sink


def outages(args, result: dict) -> None:
    from detector.publish.mqtt import RECONNECT_MAX_SECONDS, RECONNECT_MIN_SECONDS

    rows = []
    with Broker() as broker:
        for seconds in [s for s in args.outage for _ in range(args.repeats)]:
            sink = _sink(broker.port)
            try:
                broker.stop()
                for i in range(5):
                    time.sleep(seconds / 5)
                    sink.event(make_event(i))
                queued = len(sink.outbox)
                broker.start()
                back = time.monotonic()
                while len(sink.outbox) and time.monotonic() < back + 60:
                    time.sleep(0.005)
                rows.append({"outage_s": seconds, "queued_messages": queued,
                             "delivered_after_s": round(time.monotonic() - back, 3),
                             "all_delivered": len(sink.outbox) == 0})
            finally:
                sink.close()
    result.update({"mode": "outage", "target_s": 5.0, "rows": rows,
                   "reconnect_backoff_s": {"min": RECONNECT_MIN_SECONDS,
                                           "max": RECONNECT_MAX_SECONDS},
                   "max_delivered_after_s": max(r["delivered_after_s"] for r in rows)})


def delivery(args, result: dict) -> None:
    rows = {}
    with Broker() as broker, tempfile.TemporaryDirectory(prefix="bench-outbox-") as tmp:
        for name, path in (("memory", None), ("SQLite", str(Path(tmp) / "outbox.sqlite"))):
            sink, sent, got = _sink(broker.port, path), {}, []
            sub = subscriber(broker.port, "sound-detector/bench/events",
                             lambda t, e: got.append(time.perf_counter() - sent[e["id"]]))
            for i in range(args.delivery):
                event = make_event(i)
                sent[event["id"]] = time.perf_counter()
                sink.event(event)
                time.sleep(0.05)  # events are sparse in practice; not a burst
            deadline = time.monotonic() + 30
            while len(got) < args.delivery and time.monotonic() < deadline:
                time.sleep(0.05)
            sink.close()
            sub.loop_stop()
            sub.disconnect()
            ms = [1000 * x for x in got]
            rows[name] = {"events": len(ms), **{k: round(v, 1) for k, v in
                                                percentiles(ms, (50, 95)).items()},
                          "max": round(max(ms), 1)}
    result.update({"mode": "delivery", "outbox": rows})


def run(args, argv) -> int:
    result = begin("latency", argv)
    if args.outage:
        outages(args, result)
    elif args.delivery:
        delivery(args, result)
    else:
        onsets(args, result)
    name = args.name or {"onset": "latency", "outage": "mqtt_reconnect",
                         "delivery": "mqtt_delivery"}[result["mode"]]
    finish(result, name, args.out, markdown)
    return 0


def _ms(v) -> str:
    return "-" if v is None else f"{v:g} ms"


def markdown(r: dict) -> str:
    if r["mode"] == "outage":
        lines = ["| outage | queued messages | delivered after the broker's return |",
                 "|---|---|---|"]
        lines += [f"| {x['outage_s']:g} s | {x['queued_messages']} | {x['delivered_after_s']:.2f} s"
                  f"{'' if x['all_delivered'] else ' (not all)'} |" for x in r["rows"]]
        lines += ["", f"Longest: **{r['max_delivered_after_s']:.2f} s** (target "
                  f"{r['target_s']:g} s). Reconnect backoff {r['reconnect_backoff_s']['min']:g} s "
                  f"doubling to {r['reconnect_backoff_s']['max']:g} s, jittered."]
    elif r["mode"] == "delivery":
        lines = ["| outbox | events | p50 | p95 | max |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['events']} | {_ms(v['p50'])} | {_ms(v['p95'])} | {_ms(v['max'])} |"
                  for k, v in r["outbox"].items()]
        lines += ["", "From the pipeline handing an event to the MQTT sink until a subscriber "
                  "on a local Mosquitto has it, events 50 ms apart."]
    else:
        lines = ["| sound | clips | detected | other label first | p50 | p95 | min | max |",
                 "|---|---|---|---|---|---|---|---|"]
        for label, row in r["labels"].items():
            lat = row["latency_ms"]
            lines.append(f"| {label} | {row['clips']} | {row['detected']} | "
                         f"{row['other_label_first']} | {_ms(lat['p50'])} | {_ms(lat['p95'])} | "
                         f"{_ms(lat['min'])} | {_ms(lat['max'])} |")
        a = r["all"]
        lines += [f"| **all** | {a['clips']} | {a['detected']} | | **{_ms(a['p50'])}** | "
                  f"**{_ms(a['p95'])}** | | |", "",
                  f"Model {r['model']}, default settings (smoothing {r['smoothing_windows']}, "
                  f"onset windows {r['onset_hop_seconds'] or 'off'}); {r['stimulus']}, each "
                  f"after {r['gap_seconds']:g} s of -60 dBFS noise, replayed in real time "
                  "through the pipeline to a real Mosquitto and a subscriber; onset = "
                  + ("the sound's first 10 ms within 20 dB of its loudest" if r["clips"] else
                     "the demo clip's known onset") + ". Start events outside any sound: "
                  f"{r['start_events_outside_sounds']}."]
    return "\n".join(lines + ["", stamp_line(r)]) + "\n"
