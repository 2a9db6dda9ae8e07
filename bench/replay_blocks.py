"""Replay CPU before/after a code change, through the CLI: ``sound-detector replay --stats``.

    python bench/replay_blocks.py --before <rev> --repeats 4 --seconds 600

Writes ``--seconds`` of real recordings (``bench._common.real_scene``: UrbanSound8K, SESA and
everyday clips back to back; the tiled demo clip without ../shared/data) as a 16-bit WAV and
as FLAC, then for each format and repeat runs ``python -m detector replay FILE --stats``
(shipped model, default config with MQTT off, stdout JSON to /dev/null) once with the
``--before`` revision (a ``git archive`` copy) and once with the working tree, back to back,
so both see the same machine load. Per run it records the whole process's CPU (user + system
from the child's rusage: interpreter start, imports, model load and the replay) per second
of audio, the CPU the ``--stats`` line reports (the replay alone), peak RSS and the events.

Results: ``bench/results/<name>.json`` and ``<name>.md``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (REPO, child_env, export_revision, head, machine,  # noqa: E402
                           rss_mb, run_child, save, write_scene_in_child)

STATS = re.compile(r"stats: (?P<audio>[\d.]+) s of audio, (?P<windows>\d+) windows, "
                   r"(?P<events>\d+) events(?: \([^)]*\))?; "
                   r"CPU (?P<cpu>[\d.]+) s = (?P<per_s>[\d.]+) ms.*"
                   r"peak (?P<peak>[\d.]+) MB")


def run_once(tree: Path, audio: Path, config: Path, pycache: Path | None = None) -> dict:
    run = run_child([sys.executable, "-m", "detector", "replay", str(audio), "--stats",
                     "--config", str(config)], child_env(tree, pycache), cwd=tree)
    if run.returncode != 0:
        raise SystemExit(f"replay failed in {tree} ({run.returncode}): {run.stderr.strip()}")
    match = STATS.search(run.stderr)
    if match is None:
        raise SystemExit(f"no --stats line in: {run.stderr.strip()}")
    audio_s = float(match["audio"])
    return {"process_cpu_ms_per_audio_second": round(1000 * run.cpu_seconds / audio_s, 3),
            "stats_cpu_ms_per_audio_second": float(match["per_s"]),
            "peak_rss_mb": float(match["peak"]), "windows": int(match["windows"]),
            "events": int(match["events"])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision to compare against")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--formats", nargs="+", default=["wav", "flac"], choices=["wav", "flac"])
    parser.add_argument("--name", default="replay_blocks", help="results file name")
    parser.add_argument("--out", default=None, help="results folder (default bench/results)")
    args = parser.parse_args(argv)

    info = machine()
    runs: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="replay-blocks-") as tmp:
        tmp = Path(tmp)
        before_tree = tmp / "before"
        before_tree.mkdir()
        sha = export_revision(args.before, before_tree)
        config = tmp / "config.toml"
        config.write_text("[mqtt]\nenabled = false\n[output]\nlog_level = \"warning\"\n")
        files = {fmt: tmp / f"replay.{fmt}" for fmt in args.formats}
        what, _ = write_scene_in_child(args.seconds, files.values())
        parent_rss = round(rss_mb(), 1)
        for fmt, path in files.items():
            runs[fmt] = {"before": [], "after": []}
            for i in range(args.repeats):
                for label, tree in (("before", before_tree), ("after", REPO)):
                    r = run_once(tree, path, config, tmp / f"pycache-{label}")
                    r["load_avg_1min"] = round(os.getloadavg()[0], 2)
                    runs[fmt][label].append(r)
                    print(f"{fmt} repeat {i + 1} {label}: {r}", file=sys.stderr)
    for fmt in runs:
        b, a = runs[fmt]["before"], runs[fmt]["after"]
        if [r["events"] for r in b] != [r["events"] for r in a]:
            print(f"warning: {fmt}: event counts differ before/after", file=sys.stderr)
    result = {"machine": info, "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
              "command": "python bench/replay_blocks.py " + " ".join(
                  sys.argv[1:] if argv is None else argv),
              "before": sha, "after": "working tree at " + head(), "audio": what, "seconds": args.seconds,
              "repeats": args.repeats, "bench_rss_mb_while_measuring": parent_rss, "runs": runs,
              "median": {fmt: {label: {k: round(statistics.median(r[k] for r in rs), 3)
                                       for k in rs[0]} for label, rs in v.items()}
                         for fmt, v in runs.items()}}
    md = markdown(result)
    path = save(args.name, result, md, args.out)
    print(md)
    print(f"-> {path}")
    return 0


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; {m['date']}; "
        f"load average {m['load_avg_1min_at_start']} at start, {r['load_avg_1min_at_end']} at "
        "end (shared machine).",
        f"Command: `{r['command']}` — `python -m detector replay FILE --stats` (shipped model, "
        f"MQTT off, stdout to /dev/null), before = {r['before']}, after = {r['after']}, "
        f"alternated {r['repeats']} times per format on {r['seconds']:g} s of audio: {r['audio']}. "
        f"Peak RSS is what `--stats` reports (the bench process itself held "
        f"{r['bench_rss_mb_while_measuring']} MB, below every peak).",
        "",
        "| file | median of runs | before | after | after / before |", "|---|---|---|---|---|",
    ]
    names = {"process_cpu_ms_per_audio_second": "whole process CPU per second of audio "
                                                "(startup included)",
             "stats_cpu_ms_per_audio_second": "replay CPU per second of audio (`--stats`)",
             "peak_rss_mb": "peak RSS (MB)", "events": "events"}
    for fmt, med in r["median"].items():
        b, a = med["before"], med["after"]
        for key, name in names.items():
            ratio = f"{a[key] / b[key]:.2f}x" if b[key] else ""
            lines.append(f"| {fmt} | {name} | {b[key]:g} | {a[key]:g} | {ratio} |")
    lines += ["", "| file | run | before: process / `--stats` ms per s | after: process / "
              "`--stats` ms per s | load |", "|---|---|---|---|---|"]
    for fmt, v in r["runs"].items():
        for i, (x, y) in enumerate(zip(v["before"], v["after"]), 1):
            lines.append(f"| {fmt} | {i} | {x['process_cpu_ms_per_audio_second']:.2f} / "
                         f"{x['stats_cpu_ms_per_audio_second']:.2f} | "
                         f"{y['process_cpu_ms_per_audio_second']:.2f} / "
                         f"{y['stats_cpu_ms_per_audio_second']:.2f} | "
                         f"{x['load_avg_1min']}-{y['load_avg_1min']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
