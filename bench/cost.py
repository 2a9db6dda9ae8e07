"""What the daemon costs: whole-process CPU and peak RSS per second of audio, startup
included, and the model's time per window.

    python -m bench cost --seconds 600 --repeats 3 [--before REV] [--mqtt off on]

``--seconds`` of real recordings (``real_scene``: UrbanSound8K, SESA and everyday clips back
to back; the tiled demo clip without the shared data) and the first second of the same
scene are written as 16-bit WAVs; each repeat runs fresh ``python -m detector replay FILE
--stats`` processes (shipped model, default config, compiled bytecode as an installed
package has it) on both, with MQTT off and on (a real local Mosquitto):

* **startup** = CPU of the 1 s run (interpreter, imports, model load, sinks, shutdown);
* **whole process** = CPU of the long run per second of audio (what the targets judge);
* **steady** = (long - short) / (audio - 1 s); **peak RSS** = the child's VmHWM (``--stats``);
* **model per window** = the replay's own mean (``--stats``), and p50 / p95 of ``--runs``
  timed calls on one thread here (CPU time of the call).

CPU is user + system of each child from ``wait4`` (all its threads). With ``--before REV``
the same runs alternate with a ``git archive`` copy of REV and the events of the long
replays are compared (type, label, scores, duration, level, offset).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench._common import (REPO, Broker, begin, child_env, export_revision, finish, head,
                           percentiles, run_child, stamp_line, write_scene_in_child)

STATS = re.compile(r"stats: (?P<audio>[\d.]+) s of audio, (?P<windows>\d+) windows, "
                   r"(?P<events>\d+) events.*?model (?P<model>[\d.]+) ms per window.*"
                   r"peak (?P<peak>[\d.]+) MB")
EVENT_KEYS = ("type", "label", "score", "peak_score", "duration_s", "level_dbfs", "offset_s")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=600.0, help="audio of the long replay")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", type=int, default=500, help="timed model calls per window")
    parser.add_argument("--mqtt", nargs="+", choices=("off", "on"), default=["off", "on"])
    parser.add_argument("--before", default=None, help="git revision to compare against")
    parser.add_argument("--capture", action="store_true",
                        help="audio input instead: live capture and file decoding (bench/capture.py)")
    parser.add_argument("--name", default=None, help="results name (default cost, capture_cost)")


def event_digest(stdout: str) -> tuple[int, str]:
    """Number of events and a digest of what they say (not their ids or wall times)."""
    rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    text = json.dumps([[e.get(k) for k in EVENT_KEYS] for e in rows])
    return len(rows), hashlib.sha256(text.encode()).hexdigest()[:12]


def replay(tree: Path, audio: Path, config: Path, pycache: Path) -> dict:
    """One fresh ``replay --stats`` process, measured."""
    run = run_child([sys.executable, "-m", "detector", "replay", str(audio), "--stats",
                     "--config", str(config)], child_env(tree, pycache), cwd=tree).check("cost")
    match = STATS.search(run.stderr)
    if match is None:
        raise SystemExit(f"cost: no --stats line from {tree}: {run.last_line()}")
    count, digest = event_digest(run.stdout)
    return {"audio_seconds": float(match["audio"]), "cpu_seconds": round(run.cpu_seconds, 4),
            "wall_seconds": round(run.wall_seconds, 3), "peak_rss_mb": float(match["peak"]),
            "windows": int(match["windows"]), "model_ms_per_window": float(match["model"]),
            "events": count, "events_digest": digest,
            "load_avg_1min": round(os.getloadavg()[0], 2)}


def summarize(runs: list[dict]) -> dict:
    """Medians over the repeats of one (tree, MQTT) row."""
    med = statistics.median
    short, long = [r["short"] for r in runs], [r["long"] for r in runs]
    audio, audio_short = long[0]["audio_seconds"], short[0]["audio_seconds"]
    return {"startup_cpu_seconds": round(med(r["cpu_seconds"] for r in short), 3),
            "steady_ms_per_audio_second": round(med(
                1000 * (lr["cpu_seconds"] - sr["cpu_seconds"]) / (audio - audio_short)
                for sr, lr in zip(short, long)), 3),
            "whole_ms_per_audio_second": round(med(1000 * r["cpu_seconds"] / audio
                                                   for r in long), 3),
            "peak_rss_mb": round(med(r["peak_rss_mb"] for r in long), 1),
            "model_ms_per_window": round(med(r["model_ms_per_window"] for r in long), 3),
            "windows": long[0]["windows"], "events": long[0]["events"],
            "events_digests": sorted({r["events_digest"] for r in long})}


def model_time(runs: int) -> dict:
    """CPU ms per call of the shipped model on one thread, on windows of the demo clip."""
    from bench._common import demo_audio
    from detector.audio.features import logmel
    from detector.model.classifier import Classifier

    clf = Classifier(None, ("CPUExecutionProvider",), 1)
    meta = clf.metadata
    y = demo_audio(meta.features.sample_rate)
    step = max(1, (len(y) - meta.window_samples) // 16)
    windows = [logmel(y[s:s + meta.window_samples], meta.features)
               for s in range(0, len(y) - meta.window_samples, step)]
    for w in windows[:5]:
        clf.predict(w)
    times = []
    for i in range(runs):
        t0 = time.process_time()
        clf.predict(windows[i % len(windows)])
        times.append(1000 * (time.process_time() - t0))
    return {"model": meta.model_version, "runs": runs, **percentiles(times, (50, 95))}


def run(args, argv) -> int:
    if args.capture:
        from bench import capture

        args.name = args.name or "capture_cost"
        return capture.run(args, argv)
    args.name = args.name or "cost"
    if args.seconds <= 1.0 or args.repeats < 1:
        raise SystemExit(f"cost: --seconds {args.seconds:g} must be above 1 and --repeats "
                         f"{args.repeats} at least 1")
    result = begin("cost", argv)
    with tempfile.TemporaryDirectory(prefix="bench-cost-") as tmp, Broker() as broker:
        tmp = Path(tmp)
        trees, before = {"after": REPO}, None
        if args.before:
            trees = {"before": tmp / "before", "after": REPO}
            trees["before"].mkdir()
            before = export_revision(args.before, trees["before"])
        long_wav, short_wav = tmp / "long.wav", tmp / "short.wav"
        what, samples = write_scene_in_child(args.seconds, [long_wav])
        write_scene_in_child(1.0, [short_wav])
        configs = {}
        for row in args.mqtt:
            configs[f"mqtt_{row}"] = tmp / f"{row}.toml"
            mqtt = (f'enabled = true\nhost = "127.0.0.1"\nport = {broker.port}\n'
                    'node_id = "bench"\n') if row == "on" else "enabled = false\n"
            configs[f"mqtt_{row}"].write_text(f'[mqtt]\n{mqtt}[output]\nlog_level = "warning"\n')
        for label, tree in trees.items():  # compile the bytecode once, unmeasured
            replay(tree, short_wav, next(iter(configs.values())), tmp / f"pycache-{label}")
        runs = {f"{label}/{row}": [] for label in trees for row in configs}
        for i in range(args.repeats):
            for row, config in configs.items():
                for label, tree in trees.items():
                    pycache = tmp / f"pycache-{label}"
                    r = {"short": replay(tree, short_wav, config, pycache),
                         "long": replay(tree, long_wav, config, pycache)}
                    runs[f"{label}/{row}"].append(r)
                    print(f"repeat {i + 1} {label} {row}: startup {r['short']['cpu_seconds']} s,"
                          f" long {r['long']['cpu_seconds']} s, load {r['long']['load_avg_1min']}",
                          file=sys.stderr)
    median = {key: summarize(rs) for key, rs in runs.items()}
    same = None
    if args.before:
        same = {row: median[f"before/{row}"]["events_digests"]
                == median[f"after/{row}"]["events_digests"] for row in configs}
    result.update({"audio": what, "seconds": samples / 16000, "repeats": args.repeats,
                   "before": before, "after": "working tree at " + head(), "same_events": same,
                   "median": median, "model_call_ms": model_time(args.runs), "runs": runs})
    finish(result, args.name, args.out, markdown)
    return 0


def markdown(r: dict) -> str:
    if r.get("mode") == "capture":
        from bench.capture import markdown as capture_markdown
        return capture_markdown(r)
    lines = ["| median of the repeats | whole process per second of audio (startup included) "
             "| steady per second of audio | startup CPU | peak RSS | model per window "
             "(mean in the replay) | windows / events |", "|---|---|---|---|---|---|---|"]
    for key, s in r["median"].items():
        tree, row = key.split("/")
        name = row.replace("_", " ") + ("" if r["before"] is None else f" ({tree})")
        lines.append(f"| {name} | **{s['whole_ms_per_audio_second']:.2f} ms** | "
                     f"{s['steady_ms_per_audio_second']:.2f} ms | "
                     f"{1000 * s['startup_cpu_seconds']:.0f} ms | {s['peak_rss_mb']:.1f} MB | "
                     f"{s['model_ms_per_window']:.2f} ms | {s['windows']} / {s['events']} |")
    m = r["model_call_ms"]
    lines += ["", f"Model {m['model']} alone, one thread: {m['p50']:.2f} ms per window at the "
              f"median, {m['p95']:.2f} ms at p95 ({m['runs']} calls, CPU time). Audio: "
              f"{r['seconds']:g} s of {r['audio']}; each row a fresh `sound-detector replay "
              f"--stats` process, {r['repeats']} repeats."]
    if r["same_events"] is not None:
        lines.append(f"Before = {r['before']}, after = {r['after']}; events of the long "
                     "replays: " + ", ".join(f"{k} {'identical' if v else 'DIFFERENT'}"
                                             for k, v in r["same_events"].items()) + ".")
    return "\n".join(lines + ["", stamp_line(r)]) + "\n"


def pi_markdown(r: dict) -> str:
    """The Raspberry Pi estimate (``pi_estimate.json``: published Pi timings of standard
    networks over the same networks timed here, times the daemon's CPU of that run)."""
    d = r["estimate"]["daemon"]
    lines = ["| Pi estimate (onnxruntime, MQTT off) | CPU per second of audio, central (range) "
             "| headroom on one core |", "|---|---|---|"]
    for pi in ("pi4", "pi5"):
        e = d["mqtt_off"]["onnxruntime"][pi]
        low, high = e["ms_per_audio_second_range"]
        lines.append(f"| {pi.replace('pi', 'Raspberry Pi ')} | {e['ms_per_audio_second_central']} ms "
                     f"({low} - {high} ms) | {e['headroom_central']}x |")
    m = r["machine"]
    lines += ["", f"Scaled from {d['mqtt_off']['daemon_ms_per_audio_second_here']} ms per "
              f"second of audio measured here then ({r['daemon']['source']}); ratio "
              f"{d['mqtt_off']['onnxruntime']['pi4']['ratio_central']}x Pi 4 core / that "
              f"machine. {m['date']}, {m['cpu']}, by `{r['command']}` (a settled experiment: "
              "the script left the tree, its results stay)."]
    return "\n".join(lines) + "\n"
