"""Whole-process cost of ``sound-detector replay FILE``: startup, steady CPU, peak RSS.

    python bench/process_cost.py --seconds 600 --repeats 3 [--before REV]

Writes ``--seconds`` of real recordings (``bench._common.real_scene``: UrbanSound8K, SESA
and everyday clips back to back; the tiled demo clip without ../shared/data) and the first
second of the same scene as 16-bit WAVs, then per repeat runs, each a fresh process with the
shipped model and the default config (stdout JSON captured, log level warning):

* ``python -m detector replay FILE --stats`` on the 1 s file: the **startup** CPU
  (interpreter, imports, config, model load, sinks, one window, shutdown);
* the same on the long file: **whole-process** CPU per second of audio, startup included;

both with MQTT off and with MQTT on (a real local Mosquitto). CPU is user + system of the
child from its own rusage (``wait4``), all threads. **Steady** CPU per second of audio is
(long - short) / (long audio - 1 s). Peak RSS is what the child's ``--stats`` reports
(its own VmHWM); ``ru_maxrss`` from ``wait4`` is shown beside it (Linux carries the parent's
RSS at the fork into it). Children load compiled bytecode from a cache in a temporary
folder (one unmeasured warm-up run per tree), as an installed package does.

With ``--before REV`` the same runs alternate with a ``git archive`` copy of REV, and the
events of the long replays (type, label, scores, duration, level, offset; not ids or wall
times) are compared between the two trees.

Results: ``bench/results/<name>.json`` and ``<name>.md``.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (REPO, Broker, child_env, export_revision, head,  # noqa: E402
                           machine, rss_mb, run_child, save, write_scene_in_child)

STATS = re.compile(r"stats: (?P<audio>[\d.]+) s of audio, (?P<windows>\d+) windows, "
                   r"(?P<events>\d+) events(?: \([^)]*\))?;.*peak (?P<peak>[\d.]+) MB")
EVENT_KEYS = ("type", "label", "score", "peak_score", "duration_s", "level_dbfs", "offset_s")


def event_digest(stdout: str) -> tuple[int, str]:
    """Number of events and a digest of what they say (not their ids or wall times)."""
    rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    text = json.dumps([[e.get(k) for k in EVENT_KEYS] for e in rows])
    return len(rows), hashlib.sha256(text.encode()).hexdigest()[:12]


def replay(tree: Path, audio: Path, config: Path, pycache: Path, model: Path | None = None) -> dict:
    """One fresh ``replay --stats`` process (``model``: another model file than the shipped one)."""
    extra = ["--model", str(model)] if model is not None else []
    run = run_child([sys.executable, "-m", "detector", "replay", str(audio), "--stats",
                     "--config", str(config), *extra], child_env(tree, pycache), cwd=tree)
    run.check("process_cost")
    match = STATS.search(run.stderr)
    if match is None:
        raise SystemExit(f"process_cost: no --stats line from {tree}: {run.last_line()}")
    count, digest = event_digest(run.stdout)
    return {"audio_seconds": float(match["audio"]), "cpu_seconds": round(run.cpu_seconds, 4),
            "wall_seconds": round(run.wall_seconds, 3), "peak_rss_mb": float(match["peak"]),
            "ru_maxrss_mb": round(run.maxrss_mb, 1), "events": count, "events_digest": digest,
            "load_avg_1min": round(os.getloadavg()[0], 2)}


def summarize(runs: list[dict]) -> dict:
    """Medians over repeats of one (tree, MQTT) row."""
    short = [r["short"] for r in runs]
    long = [r["long"] for r in runs]
    audio_long = long[0]["audio_seconds"]
    audio_short = short[0]["audio_seconds"]
    steady = [1000 * (lr["cpu_seconds"] - sr["cpu_seconds"]) / (audio_long - audio_short)
              for sr, lr in zip(short, long)]
    med = statistics.median
    return {"startup_cpu_seconds": round(med(r["cpu_seconds"] for r in short), 3),
            "steady_ms_per_audio_second": round(med(steady), 3),
            "whole_ms_per_audio_second": round(med(1000 * r["cpu_seconds"] / audio_long
                                                   for r in long), 3),
            "startup_share_of_whole": round(med(sr["cpu_seconds"] / lr["cpu_seconds"]
                                                for sr, lr in zip(short, long)), 3),
            "peak_rss_mb": round(med(r["peak_rss_mb"] for r in long), 1),
            "startup_peak_rss_mb": round(med(r["peak_rss_mb"] for r in short), 1),
            "ru_maxrss_mb": round(med(r["ru_maxrss_mb"] for r in long), 1),
            "wall_seconds": round(med(r["wall_seconds"] for r in long), 2),
            "events": long[0]["events"],
            "events_digests": sorted({r["events_digest"] for r in long})}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0,
                        help="audio of the long replay (default 600)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", default=None, help="git revision to compare against")
    parser.add_argument("--name", default="process_cost", help="results file name")
    parser.add_argument("--out", default=None, help="results folder (default bench/results)")
    args = parser.parse_args(argv)
    if args.seconds <= 1.0:
        raise SystemExit(f"process_cost: --seconds {args.seconds:g} must be above 1")
    if args.repeats < 1:
        raise SystemExit(f"process_cost: --repeats {args.repeats} must be >= 1")

    info = machine()
    with tempfile.TemporaryDirectory(prefix="process-cost-") as tmp, Broker() as broker:
        tmp = Path(tmp)
        trees = {"after": REPO}
        before_sha = None
        if args.before:
            trees = {"before": tmp / "before", "after": REPO}
            trees["before"].mkdir()
            before_sha = export_revision(args.before, trees["before"])
        long_wav, short_wav = tmp / "long.wav", tmp / "short.wav"
        what, samples = write_scene_in_child(args.seconds, [long_wav])
        write_scene_in_child(1.0, [short_wav])
        configs = {"mqtt_off": tmp / "off.toml", "mqtt_on": tmp / "on.toml"}
        configs["mqtt_off"].write_text("[mqtt]\nenabled = false\n[output]\n"
                                       "log_level = \"warning\"\n")
        configs["mqtt_on"].write_text(f"[mqtt]\nenabled = true\nhost = \"127.0.0.1\"\n"
                                      f"port = {broker.port}\nnode_id = \"bench\"\n"
                                      "[output]\nlog_level = \"warning\"\n")
        parent_rss = round(rss_mb(), 1)
        for label, tree in trees.items():  # compile the bytecode once, unmeasured
            replay(tree, short_wav, configs["mqtt_off"], tmp / f"pycache-{label}")
        runs = {f"{label}/{row}": [] for label in trees for row in configs}
        for i in range(args.repeats):
            for row, config in configs.items():
                for label, tree in trees.items():
                    pycache = tmp / f"pycache-{label}"
                    r = {"short": replay(tree, short_wav, config, pycache),
                         "long": replay(tree, long_wav, config, pycache)}
                    runs[f"{label}/{row}"].append(r)
                    print(f"repeat {i + 1} {label} {row}: startup {r['short']['cpu_seconds']} s, "
                          f"long {r['long']['cpu_seconds']} s, {r['long']['events']} events, "
                          f"load {r['long']['load_avg_1min']}", file=sys.stderr)
    summary = {key: summarize(rs) for key, rs in runs.items()}
    same_events = None
    if args.before:
        same_events = {row: summary[f"before/{row}"]["events_digests"]
                       == summary[f"after/{row}"]["events_digests"] for row in configs}
        if not all(same_events.values()):
            print(f"warning: the events differ before/after: {same_events}", file=sys.stderr)
    result = {"machine": info, "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
              "command": "python bench/process_cost.py " + " ".join(
                  sys.argv[1:] if argv is None else argv),
              "audio": what, "seconds": samples / 16000, "repeats": args.repeats,
              "before": before_sha, "after": "working tree at " + head(),
              "bench_rss_mb_while_measuring": parent_rss, "same_events": same_events,
              "median": summary, "runs": runs}
    md = markdown(result)
    path = save(args.name, result, md, args.out)
    print(md)
    print(f"-> {path}")
    return 0


def markdown(r: dict) -> str:
    m = r["machine"]
    trees = (f"before = {r['before']}, after = {r['after']}, alternated" if r["before"]
             else f"tree: {r['after']}")
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; {m['date']}; "
        f"load average {m['load_avg_1min_at_start']} at start, {r['load_avg_1min_at_end']} at "
        "end (shared machine).",
        f"Command: `{r['command']}` — {r['repeats']} repeats; each a fresh "
        "`python -m detector replay FILE --stats` process (shipped model, default config, "
        f"compiled bytecode) on the first 1 s and on all {r['seconds']:g} s of {r['audio']}; "
        f"{trees}. CPU: user + system of the child (wait4 rusage, all threads). Steady = "
        "(long - 1 s run) / (audio - 1 s). Peak RSS: the child's own VmHWM from `--stats` "
        f"(ru_maxrss beside it; the bench process held {r['bench_rss_mb_while_measuring']} MB).",
        "",
        "| median over repeats | startup CPU (1 s file) | steady CPU per s of audio | "
        "whole process per s of audio (startup included) | startup share | peak RSS "
        "(ru_maxrss) | events |", "|---|---|---|---|---|---|---|",
    ]
    for key, s in r["median"].items():
        tree, row = key.split("/")
        lines.append(f"| {tree}, {row.replace('_', ' ')} | {1000 * s['startup_cpu_seconds']:.0f} ms"
                     f" | {s['steady_ms_per_audio_second']:.2f} ms | "
                     f"**{s['whole_ms_per_audio_second']:.2f} ms** | "
                     f"{100 * s['startup_share_of_whole']:.0f}% | {s['peak_rss_mb']:.1f} MB "
                     f"({s['ru_maxrss_mb']:.1f}) | {s['events']} |")
    if r["same_events"] is not None:
        lines += ["", "Events of the long replays before/after (type, label, scores, duration, "
                  "level, offset): " + ", ".join(
                      f"{row.replace('_', ' ')} {'identical' if same else 'DIFFERENT'}"
                      for row, same in r["same_events"].items()) + "."]
    lines += ["", "| run | " + " | ".join(f"{k} startup / long CPU s (load)" for k in r["runs"])
              + " |", "|---|" + "---|" * len(r["runs"])]
    for i in range(r["repeats"]):
        cells = [f"{v[i]['short']['cpu_seconds']:.3f} / {v[i]['long']['cpu_seconds']:.2f} "
                 f"({v[i]['long']['load_avg_1min']})" for v in r["runs"].values()]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
