"""How often the shipped model is right and wrong, from its evaluation's result file.

    python -m bench quality [--card bench/results/model_card.json]
    python -m bench quality --labels audioset|custom [their options]

The stream evaluation (every held-out clip after seconds of quiet room noise, replayed
through the daemon's own pipeline by the training recipe's evaluator, per rotation) is
hours of work and already written to ``--card``; this reads it, pools the rotations clip by
clip and writes what a user decides on, always together: event recall, wrong labels, the
share of held-out everyday clips firing anything, false alarms per hour of everyday sound,
and the onset -> event delay, with the AudioSet gate on (as shipped) and off.

``--labels audioset`` measures AudioSet labels zero-shot (``bench/labels_audioset.py``),
``--labels custom`` custom labels with and without their AudioSet evidence
(``bench/labels_custom.py``); both need the shared data and write their own results.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench._common import REPO, begin, finish, stamp_line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--card", default=str(REPO / "bench" / "results" / "model_card.json"),
                        help="the evaluation's results (the model card's data)")
    parser.add_argument("--labels", choices=("audioset", "custom"), default=None,
                        help="measure AudioSet or custom labels instead (their own options follow)")
    parser.add_argument("--name", default="quality")


def pooled(rotations: dict, key: str) -> dict | None:
    """The rotations' stream rows pooled clip by clip (as the model card pools them)."""
    lab = [r for e in rotations.values() if e.get(key) for r in e[key]["labelled"]["rows"]]
    every = [r for e in rotations.values() if e.get(key) for r in e[key]["everyday"]["rows"]]
    if not lab:
        return None
    delays = [r["delay_s"] for r in lab if r.get("delay_s") is not None]
    per_class = {}
    for label in sorted({r["label"] for r in lab}):
        mine = [r for r in lab if r["label"] == label]
        per_class[label] = round(sum(r.get("delay_s") is not None for r in mine) / len(mine), 4)
    return {"labelled_clips": len(lab), "recall": round(len(delays) / len(lab), 4),
            "wrong_label": round(sum(bool(r.get("other_labels")) for r in lab) / len(lab), 4),
            "everyday_clips": len(every),
            "everyday_firing": round(sum(bool(r.get("fired")) for r in every) / len(every), 4),
            "false_alarms_per_hour": round(sum(r["events"] for r in every)
                                           / (sum(r["seconds"] for r in every) / 3600), 1),
            "delay_s": {p: round(float(np.percentile(delays, int(p[1:]))), 2)
                        for p in ("p50", "p95")},
            "clip_accuracy_mean": round(float(np.mean([e["clip_accuracy"]
                                                       for e in rotations.values()])), 4),
            "per_class_recall": per_class}


def run(args, argv) -> int:
    if args.labels:
        import importlib

        rest = list(argv or [])
        i = rest.index("--labels")
        del rest[i:i + 2]
        return importlib.import_module(f"bench.labels_{args.labels}").main(rest)
    card = json.loads(Path(args.card).read_text())
    result = begin("quality", argv)
    from detector.model.classifier import Classifier

    result.update({"source": Path(args.card).name, "evaluated_by": card["command"],
                   "evaluated_on": card["date"],
                   "model": Classifier(None).metadata.model_version,
                   "rotations": len(card["rotations"]),
                   "gate_on": pooled(card["rotations"], "stream"),
                   "gate_off": pooled(card["rotations"], "stream_nogate")})
    finish(result, args.name, args.out, markdown)
    return 0


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def markdown(r: dict) -> str:
    lines = ["| model " + r["model"] + " | event recall | wrong label | everyday clips firing "
             "anything | false alarms per hour of everyday sound | onset -> event p50 / p95 |",
             "|---|---|---|---|---|---|"]
    for key, name in (("gate_on", "as shipped (AudioSet gate on)"), ("gate_off", "gate off")):
        p = r.get(key)
        if p:
            lines.append(f"| {name} | **{_pct(p['recall'])}** of {p['labelled_clips']} | "
                         f"{_pct(p['wrong_label'])} | **{_pct(p['everyday_firing'])}** of "
                         f"{p['everyday_clips']} | **{p['false_alarms_per_hour']:.1f}** | "
                         f"{p['delay_s']['p50']:.2f} / {p['delay_s']['p95']:.2f} s |")
    on = r["gate_on"]
    worst = min(on["per_class_recall"].items(), key=lambda kv: kv[1])
    best = max(on["per_class_recall"].items(), key=lambda kv: kv[1])
    lines += ["", f"Pooled over {r['rotations']} rotations, each model replaying clips and "
              "everyday kinds it never trained on; per class from "
              f"{worst[0]} {_pct(worst[1])} to {best[0]} {_pct(best[1])}; clip accuracy "
              f"{_pct(on['clip_accuracy_mean'])} (mean of rotations). Evaluated "
              f"{r['evaluated_on']} by `{r['evaluated_by'].split(' --')[0]} ...` "
              f"(`{r['source']}`); delay in stream time, without the MQTT hop.", "",
              stamp_line(r)]
    return "\n".join(lines) + "\n"
