"""Sound onset -> MQTT message received by a subscriber: p50/p95 latency in real time.

    python bench/latency.py --onsets 20

A stimulus with known onsets is replayed *in real time* (``FileSource(realtime=True)``,
the pipeline's live clock) through the daemon's pipeline and MQTT sink to a real
local Mosquitto; a separate paho subscriber records when each ``start`` event
arrives. Each cycle is ``--gap`` seconds of quiet noise (-60 dBFS) followed by
a segment of the bundled demo clip with a known onset (``scripts/make_demo_clip.py``):
``--sound horn`` (default) = 6.3-9.5 s, the car horn starting 7.0 s (12 ms attack);
``--sound siren`` = 0-6 s, the passing siren starting 1.0 s (0.15 s fade-in, far away
at first, so it becomes audible later than its nominal onset).

With ``--real siren gun_shot dog_bark car_horn`` the sounds are real recordings instead
(``--data``, default ../shared/data: SESA ``siren/`` and ``gunshot/``, UrbanSound8K
``dog_bark`` and ``car_horn`` slices, ``--onsets`` clips of each in a fixed order, kinds
interleaved), each after ``--gap`` seconds of -60 dBFS noise. A real clip's onset is the
start of its first 10 ms frame within 20 dB of its loudest frame (the sound, not the
background it was recorded in); a hit is the first ``start`` of the clip's own label.
The clips may be among the model's training data: this measures delay, not accuracy.

latency = arrival time at the subscriber - wall time of the onset sample
(the stream clock is anchored to the wall clock at the first sample). It
includes the model window filling up (1 s window, 0.25 s hop), smoothing, and
the broker round trip. Missed onsets (no start event before the next cycle) are
counted, not hidden. Results: ``bench/results/<name>.json`` / ``.md``.
"""

from __future__ import annotations

import argparse
import os
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# As the CLI does: one BLAS thread (OpenBLAS workers spin and cost more than they save).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from bench._common import Broker, demo_audio, machine, percentiles, save  # noqa: E402

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


def real_clips(data: Path, label: str, count: int, group: int | None = None) -> list[Path]:
    """``count`` recordings of ``label`` in a fixed order, spread over the folder / folds;
    with ``group`` only those a rotation model of that group never had (its held-out
    UrbanSound8K folds, SESA files by the training recipe's hash of the name)."""
    import csv

    from export.pretrained import FOLD_GROUPS, _hash_group

    dataset, name = REAL[label]
    if dataset == "sesa":
        files = sorted(p for p in (data / "sesa" / name).glob("*.flac")
                       if group is None or _hash_group(p.name) == group)
    else:
        files = []
        with open(data / "urbansound8k" / "metadata" / "UrbanSound8K.csv", newline="") as f:
            for row in csv.DictReader(f):
                path = data / "urbansound8k" / "audio" / f"fold{row['fold']}" / row["slice_file_name"]
                if group is not None and int(row["fold"]) not in FOLD_GROUPS[group]:
                    continue
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


def real_stimulus(data: Path, labels: list[str], per_label: int, gap: float, seed: int = 0,
                  group: int | None = None) -> tuple[np.ndarray, list[tuple[float, str, str]]]:
    """(audio, [(onset time, label, clip name)]): the kinds interleaved, each after ``gap``
    seconds of -60 dBFS noise."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    clips = {label: real_clips(data, label, per_label, group) for label in labels}
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


def combine(paths: list[str], name: str, out: str | None) -> int:
    """Pool ``--real`` results (e.g. one per rotation) label by label: every latency of every
    file, the clips detected / missed / fired another label first."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    if any("real" not in r for r in runs):
        raise SystemExit("latency: --combine takes results of --real runs")
    labels = [label for label in runs[0]["real"] if all(label in r["labels"] for r in runs)]
    rows = {}
    for label in labels:
        parts = [r["labels"][label] for r in runs]
        ms = [x for p in parts for x in p["all_latencies_ms"]]
        pct = percentiles(ms, (50, 95))
        rows[label] = {"clips": sum(p["clips"] for p in parts),
                       "detected": sum(p["detected"] for p in parts),
                       "missed": sum(p["missed"] for p in parts),
                       "other_label_first": sum(p["other_label_first"] for p in parts),
                       "latency_ms": {k: None if pct[k] is None else round(pct[k], 1)
                                      for k in ("p50", "p95")},
                       "within_400_ms": sum(1 for x in ms if x <= 400.0),
                       "all_latencies_ms": ms}
    settings = {(r.get("onset_hop_seconds"), r["smoothing_windows"]) for r in runs}
    result = {"combined": [Path(p).name for p in paths], "models": [r["model"] for r in runs],
              "groups": [r.get("group") for r in runs], "machine": runs[0]["machine"],
              "settings": sorted(map(list, settings), key=str), "labels": rows}
    lines = [f"Pooled from {len(runs)} runs of `bench/latency.py --real` "
             f"({', '.join(result['combined'])}; models {', '.join(result['models'])}; "
             f"held-out groups {result['groups']}); machine {runs[0]['machine']['cpu']}, "
             f"{runs[0]['machine']['cores']} cores, {runs[0]['machine']['date']}. "
             "Onset windows / smoothing: "
             + ", ".join(f"{h or 'off'} / {n}" for h, n in sorted(settings, key=str)) + ".",
             "", "| sound | clips | detected | missed | other label first | p50 | p95 "
             "| within 400 ms |", "|---|---|---|---|---|---|---|---|"]
    for label, row in rows.items():
        lat = row["latency_ms"]
        fmt = (lambda v: "-" if v is None else f"{v} ms")
        lines.append(f"| {label} | {row['clips']} | {row['detected']} | {row['missed']} | "
                     f"{row['other_label_first']} | {fmt(lat['p50'])} | {fmt(lat['p95'])} | "
                     f"{row['within_400_ms']} of {row['clips']} |")
    md = "\n".join(lines) + "\n"
    path = save(name, result, md, out)
    print(md)
    print(f"-> {path}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onsets", type=int, default=20)
    parser.add_argument("--gap", type=float, default=4.0, help="quiet seconds before each sound")
    parser.add_argument("--sound", choices=sorted(SOUNDS), default="horn")
    parser.add_argument("--smoothing", type=int, default=None,
                        help="events.smoothing_windows (default: the daemon's default)")
    parser.add_argument("--onset-hop", type=float, default=None,
                        help="model.onset_hop_seconds (default: the daemon's default)")
    parser.add_argument("--real", nargs="+", choices=sorted(REAL), default=None,
                        help="real recordings of these labels instead of the demo clip")
    parser.add_argument("--group", type=int, choices=range(4), default=None,
                        help="with --real: only clips held out of this rotation (pair with "
                             "--model of that rotation)")
    parser.add_argument("--data", default=None,
                        help="real data folder (default ../shared/data beside the repository)")
    parser.add_argument("--model", default=None, help="ONNX model (default: the shipped one)")
    parser.add_argument("--name", default="latency")
    parser.add_argument("--out", default=None)
    parser.add_argument("--combine", nargs="+", default=None, metavar="JSON",
                        help="pool the results of several --real runs instead of running one")
    args = parser.parse_args(argv)
    if args.combine:
        return combine(args.combine, args.name, args.out)

    import paho.mqtt.client as mqtt
    import soundfile as sf

    from detector.audio.capture import FileSource
    from detector.config import config_from_dict
    from detector.model.classifier import Classifier
    from detector.pipeline import Pipeline, build_sinks

    info = machine()
    if args.real:
        from bench._common import SHARED_DATA

        data = Path(args.data) if args.data else SHARED_DATA
        if not (data / "sesa").is_dir() and not (data / "urbansound8k").is_dir():
            raise SystemExit(f"latency: no real recordings at {data}; pass --data or use --sound")
        audio, marked = real_stimulus(data, args.real, args.onsets, args.gap, group=args.group)
    else:
        audio, times, _ = stimulus(args.onsets, args.gap, args.sound)
        marked = [(t, None, None) for t in times]
    arrivals: list[tuple[float, dict]] = []
    lock = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp, Broker() as broker:
        wav = Path(tmp) / "stimulus.wav"
        sf.write(str(wav), audio, SR, subtype="PCM_16")
        subscribed = threading.Event()
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="latency-subscriber")

        def on_connect(client, userdata, flags, reason, properties):
            client.subscribe("sound-detector/bench/events", qos=1)

        def on_subscribe(client, userdata, mid, reasons, properties):
            subscribed.set()

        def on_message(client, userdata, msg):
            received = time.time()
            with lock:
                arrivals.append((received, json.loads(msg.payload)))

        sub.on_connect, sub.on_subscribe, sub.on_message = on_connect, on_subscribe, on_message
        sub.connect("127.0.0.1", broker.port)
        sub.loop_start()
        if not subscribed.wait(10):
            raise SystemExit("subscriber could not subscribe")
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
    per_onset = []  # (label wanted, latency s or None, first label that started)
    for (wall, until), (_, want, _) in zip(spans, marked):
        hits = [(t, e) for t, e in starts if wall - 0.5 <= t < until]
        own = [(t, e) for t, e in hits if want is None or e["label"] == want]
        per_onset.append((want, own[0][0] - wall if own else None,
                          hits[0][1]["label"] if hits else None))
    false_starts = sum(1 for t, _ in starts if not any(w - 0.5 <= t < u for w, u in spans))
    if args.real:
        return _real_report(args, argv, info, config, marked, per_onset, false_starts,
                            classifier.metadata.model_version)
    latencies = [lat for _, lat, _ in per_onset if lat is not None]
    labels = [first for _, lat, first in per_onset if lat is not None]
    missed = sum(1 for _, lat, _ in per_onset if lat is None)
    onsets = marked
    ms = [1000 * x for x in latencies]
    result = {"machine": info, "sound": args.sound, "command": "python bench/latency.py " + " ".join(
        sys.argv[1:] if argv is None else argv), "onsets": len(onsets), "detected": len(ms),
        "smoothing_windows": config.events.smoothing_windows, "missed": missed, "start_events_outside_cycles": false_starts,
        "labels": {x: labels.count(x) for x in sorted(set(labels))},
        "latency_ms": {**{k: (round(v, 1) if v is not None else None)
                                  for k, v in percentiles(ms, (50, 95)).items()},
                       "min": round(min(ms), 1) if ms else None,
                       "max": round(max(ms), 1) if ms else None},
        "all_latencies_ms": [round(x, 1) for x in ms]}
    lat = result["latency_ms"]
    md = (f"Machine: {info['cpu']}, {info['cores']} cores; {info['date']}; load average at start "
          f"{info['load_avg_1min_at_start']}.\nCommand: `{result['command']}` — real-time "
          "replay through the pipeline, MQTT via a real Mosquitto to a paho subscriber.\n\n"
          "| sound | smoothing | onsets | detected | missed | p50 | p95 | min | max |\n"
          "|---|---|---|---|---|---|---|---|---|\n"
          f"| {args.sound} | {config.events.smoothing_windows} | {len(onsets)} | {len(ms)} | {missed} | {lat['p50']} ms | {lat['p95']} ms | "
          f"{lat['min']} ms | {lat['max']} ms |\n")
    path = save(args.name, result, md, args.out)
    print(md)
    print(f"-> {path}")
    return 0


def _real_report(args, argv, info, config, marked, per_onset, false_starts, model) -> int:
    rows = {}
    for label in args.real:
        mine = [(lat, first) for want, lat, first in per_onset if want == label]
        ms = [1000 * lat for lat, _ in mine if lat is not None]
        pct = percentiles(ms, (50, 95))
        rows[label] = {
            "clips": len(mine), "detected": len(ms), "missed": len(mine) - len(ms),
            "other_label_first": sum(1 for lat, first in mine
                                     if first is not None and first != label),
            "latency_ms": {"p50": None if pct["p50"] is None else round(pct["p50"], 1),
                           "p95": None if pct["p95"] is None else round(pct["p95"], 1),
                           "min": round(min(ms), 1) if ms else None,
                           "max": round(max(ms), 1) if ms else None},
            "all_latencies_ms": [round(x, 1) for x in ms]}
    result = {"machine": info, "model": model, "real": args.real, "command": "python bench/latency.py " + " ".join(
        sys.argv[1:] if argv is None else argv), "onsets": len(marked),
        "smoothing_windows": config.events.smoothing_windows, "group": args.group,
        "onset_hop_seconds": config.model.onset_hop_seconds,
        "onset_rule": f"first 10 ms frame within {ONSET_DB_BELOW_PEAK:g} dB of the clip's loudest",
        "start_events_outside_cycles": false_starts, "labels": rows,
        "clips": [name for _, _, name in marked]}
    fmt = (lambda v: "-" if v is None else f"{v} ms")
    lines = [f"Machine: {info['cpu']}, {info['cores']} cores; {info['date']}; load average at "
             f"start {info['load_avg_1min_at_start']}.",
             f"Command: `{result['command']}` — real recordings (SESA sirens and gunshots, "
             "UrbanSound8K dog_bark and car_horn slices), each after "
             f"{args.gap:g} s of -60 dBFS noise, replayed in real time through the pipeline "
             f"(model {model}), "
             "MQTT via a real Mosquitto to a paho subscriber. Onset: the clip's first 10 ms "
             f"frame within {ONSET_DB_BELOW_PEAK:g} dB of its loudest; hit: the first start of "
             "the clip's own label. " + ("Clips may be in the model's training data." if args.group is None
                                  else f"Clips held out of rotation {args.group} (its model "
                                       "never had them)."), "",
             f"Onset windows: {config.model.onset_hop_seconds or 'off'}"
             + (f" s for {config.model.onset_seconds:g} s after a rise of "
                f"{config.model.onset_rise_db:g} dB" if config.model.onset_hop_seconds else "")
             + ".", "",
             "| sound | smoothing | clips | detected | missed | other label first | p50 | p95 "
             "| min | max |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label, row in rows.items():
        lat = row["latency_ms"]
        lines.append(f"| {label} | {config.events.smoothing_windows} | {row['clips']} | "
                     f"{row['detected']} | {row['missed']} | {row['other_label_first']} | "
                     f"{fmt(lat['p50'])} | {fmt(lat['p95'])} | {fmt(lat['min'])} | "
                     f"{fmt(lat['max'])} |")
    lines.append("")
    lines.append(f"Start events outside any clip's span: {false_starts}.")
    md = "\n".join(lines) + "\n"
    path = save(args.name, result, md, args.out)
    print(md)
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
