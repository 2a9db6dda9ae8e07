"""The picture of a results file: ``<name>.png`` beside ``<name>.json`` and ``<name>.md``.

Drawn from the JSON alone (like the table), so ``python -m bench plot FILE.json...`` redraws
a committed result without measuring again. matplotlib comes with the ``[dev]`` and
``[analysis]`` extras; without it the harness still writes the JSON and the table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ON, OFF, GREY = "#1f77b4", "#ff7f0e", "#7f7f7f"


def _stamp(fig, r: dict) -> None:
    import textwrap

    m = r["machine"]
    text = (f"{r['command']} - {m['date']}, {m['cpu']} ({m['cores']} cores, "
            f"load {m['load_avg_1min_at_start']}-{r.get('load_avg_1min_at_end')})")
    fig.text(0.01, 0.005, textwrap.fill(text, int(fig.get_figwidth() * 15)), fontsize=7,
             color=GREY, va="bottom")


def _bars(ax, names, values, color, fmt="{:.1f}"):
    bars = ax.bar(range(len(names)), values, color=color)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    for bar, v in zip(bars, values):
        ax.annotate(fmt.format(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)


def _cost(r, plt):
    rows = list(r["median"].items())
    names = [k.replace("/", "\n") for k, _ in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    _bars(a, names, [v["whole_ms_per_audio_second"] for _, v in rows], ON, "{:.2f}")
    a.set_ylabel("ms of CPU per second of audio")
    a.set_title("whole process, startup included")
    _bars(b, names, [v["peak_rss_mb"] for _, v in rows], OFF)
    b.set_ylabel("MB")
    b.set_title("peak RSS")
    if r.get("same_events") is not None:
        fig.suptitle("events before and after: "
                     + ("identical" if all(r["same_events"].values()) else "DIFFERENT"))
    return fig


def _latency(r, plt):
    if r["mode"] == "outage":
        fig, ax = plt.subplots(figsize=(7, 4))
        xs = [row["outage_s"] for row in r["rows"]]
        ys = [row["delivered_after_s"] for row in r["rows"]]
        ax.scatter(xs, ys, color=ON, label="queued events delivered, after the broker's return")
        ax.axhline(r["target_s"], color="red", ls="--", label=f"target {r['target_s']} s")
        ax.set_xlabel("broker away (s)")
        ax.set_ylabel("s after the broker is back")
        ax.set_ylim(0, max(ys + [r["target_s"]]) * 1.2)
        ax.legend(fontsize=8)
        return fig
    if r["mode"] == "delivery":
        fig, ax = plt.subplots(figsize=(7, 4))
        names = list(r["outbox"])
        for k, key in enumerate(("p50", "p95", "max")):
            ax.bar([i + 0.27 * (k - 1) for i in range(len(names))],
                   [r["outbox"][n][key] for n in names], width=0.27, label=key)
        ax.set_xticks(range(len(names)), [f"{n} outbox" for n in names])
        ax.set_ylabel("ms from publish to the subscriber")
        ax.legend(fontsize=8)
        return fig
    labels = list(r["labels"])
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, label in enumerate(labels):
        ms = r["labels"][label]["all_latencies_ms"]
        ax.scatter([i] * len(ms), ms, color=ON, alpha=0.7)
        missed = r["labels"][label]["missed"]
        if missed:
            ax.annotate(f"{missed} missed", (i, 0), ha="center", va="bottom", color="red",
                        fontsize=8)
    ax.set_xticks(range(len(labels)), labels)
    ax.axhline(r["all"]["p50"], color=GREY, ls=":", label=f"p50 {r['all']['p50']:.0f} ms")
    ax.axhline(r["all"]["p95"], color=GREY, ls="--", label=f"p95 {r['all']['p95']:.0f} ms")
    ax.set_ylabel("sound onset -> event on the broker (ms)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    return fig


def _quality(r, plt):
    on, off = r["gate_on"], r["gate_off"]
    classes = list(on["per_class_recall"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 1.4]})
    x = range(len(classes))
    a.bar([i - 0.2 for i in x], [off["per_class_recall"][c] for c in classes], 0.4,
          color=OFF, label="gate off")
    a.bar([i + 0.2 for i in x], [on["per_class_recall"][c] for c in classes], 0.4,
          color=ON, label="AudioSet gate on (shipped)")
    a.set_xticks(list(x), classes, rotation=35, ha="right", fontsize=8)
    a.set_ylabel("event recall")
    a.set_ylim(0, 1)
    a.legend(fontsize=8)
    keys = (("recall", "recall"), ("wrong_label", "wrong label"),
            ("everyday_firing", "everyday\nclips firing"))
    for k, (key, name) in enumerate(keys):
        b.bar(k - 0.2, off[key], 0.4, color=OFF)
        b.bar(k + 0.2, on[key], 0.4, color=ON)
    b.set_xticks(range(len(keys)), [n for _, n in keys], fontsize=8)
    b.set_ylim(0, 1)
    b.set_title(f"false alarms per hour: {off['false_alarms_per_hour']:.0f} off, "
                f"{on['false_alarms_per_hour']:.0f} on", fontsize=9)
    fig.suptitle(f"model {r['model']}, {r['rotations']} held-out rotations through the daemon")
    return fig


def _peer(r, plt):
    rows = list(r["median"].items())
    fig, ax = plt.subplots(figsize=(7, 4))
    _bars(ax, [k.replace("_", "\n") for k, _ in rows],
          [v["cpu_ms_per_audio_second"] for _, v in rows], [ON] + [OFF] * (len(rows) - 1),
          "{:.2f}")
    ax.set_ylabel("ms of CPU per second of audio (whole process)")
    return fig


def _scale(r, plt):
    fleets = r["fleets"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    names = [f"{f['nodes']} nodes" for f in fleets]
    _bars(a, names, [f["events_delivered"] / max(1, f["events_produced"]) * 100 for f in fleets],
          ON, "{:.1f}%")
    a.set_ylabel("events delivered (% of produced)")
    a.set_ylim(0, 110)
    _bars(b, names, [f["behind_real_time_s"] for f in fleets], OFF)
    b.set_ylabel("s behind real time at the end")
    return fig


DRAW = {"cost": _cost, "latency": _latency, "quality": _quality, "peer": _peer, "scale": _scale}


def write(result: dict, path: Path) -> Path | None:
    """Draw ``result`` to ``path``; None (with a line on stderr) without matplotlib."""
    draw = DRAW.get(result.get("bench"))
    if draw is None:
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG (pip install -e '.[dev]')", file=sys.stderr)
        return None
    fig = draw(result, plt)
    _stamp(fig, result)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str]) -> int:
    """``python -m bench plot FILE.json...``: redraw committed results."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m bench plot RESULTS.json...   (writes RESULTS.png beside each)")
        return 0 if argv else 2
    for name in argv:
        path = Path(name)
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            print(f"python -m bench plot: {name}: {exc}", file=sys.stderr)
            return 2
        out = write(result, path.with_suffix(".png"))
        if out is None:
            print(f"python -m bench plot: {name}: no picture for this file", file=sys.stderr)
            return 2
        print(f"-> {out}")
    return 0
