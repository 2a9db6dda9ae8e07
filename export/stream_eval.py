"""``python -m export eval``: judge a model as users meet it, in one long stream through
the daemon's pipeline.

    python -m export eval --model runs/cv/rot0/model.onnx --data ../shared/data \
        --group 0 --out runs/cv/rot0 --name stream_rot0

The held-out clips of a rotation (:data:`export.pretrained.FOLD_GROUPS` for the labelled
UrbanSound8K folds and SESA clips, :data:`export.pretrained.KIND_GROUPS` for whole kinds
of everyday sound) are laid one after another into a single long file, each after
``--gap`` seconds of -60 dBFS room noise, and replayed (fast, on the stream clock)
through :class:`detector.pipeline.Pipeline` with the model's thresholds and the default
``[events]``. A start event belongs to the clip whose span (onset .. end + 1 s) holds it;
others fell in room noise. Reported:

* labelled clips: own-label event recall (overall, per class), the share where another
  label fired, onset -> event delay p50/p95 (event time minus the clip's onset), and clip
  accuracy (argmax of the mean raw score of the windows hearing the clip);
* everyday clips: the share that fire anything, and false alarms per hour of them;
* room noise: events in the gaps.

Writes ``<name>.json``, ``<name>.md`` and ``<name>.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="ONNX model to judge")
    parser.add_argument("--data", help="the shared data root (urbansound8k/, sesa/, negatives/)")
    parser.add_argument("--folder", metavar="DIR", action="append", default=[],
                        help="your own folder-per-class data, as for train (repeatable)")
    parser.add_argument("--group", type=int, action="append", required=True,
                        help="rotation whose held-out clips are replayed (repeatable)")
    parser.add_argument("--gap", type=float, default=5.0,
                        help="seconds of -60 dBFS room noise before each clip (default: 5)")
    parser.add_argument("--limit", type=int, default=0,
                        help="at most N clips per class / kind (0 = all)")
    parser.add_argument("--smoothing", type=int, default=0,
                        help="events.smoothing_windows for the replay (default: the daemon's)")
    parser.add_argument("--model-config", metavar="TOML",
                        help="a config file whose [model] and [events] tables apply to the "
                             "replay (e.g. onset windows off: [model] onset_hop_seconds = 0)")
    parser.add_argument("--no-gate", action="store_true",
                        help="replay with events.audioset_gate = false")
    parser.add_argument("--out", default=".", help="output folder")
    parser.add_argument("--name", default="stream_eval")


def build_stream(samples, gap: float, seed: int = 0):
    """One long signal: every sample after ``gap`` s of room noise; and each clip's span."""
    from .pretrained import SR, read

    rng = np.random.default_rng(seed)
    parts, spans, t = [], [], 0
    for sample in samples:
        audio = read(sample)
        quiet = (10 ** (-60 / 20)) * rng.standard_normal(int(gap * SR)).astype(np.float32)
        parts += [quiet, audio]
        onset = t + len(quiet)
        spans.append((onset / SR, (onset + len(audio)) / SR))
        t = onset + len(audio)
    parts.append((10 ** (-60 / 20)) * rng.standard_normal(int(gap * SR)).astype(np.float32))
    return np.concatenate(parts).astype(np.float32), spans


def replay_stream(model_path, audio: np.ndarray, config=None):
    """Start events of ``audio`` through ``Pipeline``: ``(label, onset_s, published_s,
    score)`` with the stream positions of the event's onset window (``offset_s``) and of
    the window that published it (``published_offset_s``: after the gate's wait); the
    model's metadata; and for a model with a gate the start events the same replay gives
    with the gate off (the tracker's events before the gate), else None."""
    import soundfile as sf

    from detector.audio.capture import FileSource
    from detector.config import config_from_dict
    from detector.model.classifier import Classifier
    from detector.pipeline import Pipeline

    from .pretrained import SR

    config = config or config_from_dict({"model": {"intra_op_threads": 1},
                                         "output": {"stdout_json": False, "log_level": "warning"}})
    classifier = Classifier(model_path, ("CPUExecutionProvider",), 1)
    with tempfile.TemporaryDirectory(prefix="stream-eval-") as tmp:
        wav = Path(tmp) / "stream.wav"
        sf.write(str(wav), audio, SR, subtype="FLOAT")
        source = FileSource(wav, SR, realtime=False, block_seconds=config.audio.block_seconds)
        pipeline = Pipeline(config, source, classifier, [], live=False, record_scores=True,
                            node="eval", file_offsets=True)
        pipeline.run()
        if pipeline.error is not None:
            raise pipeline.error
    def starts(events):
        return [(e["label"], float(e["offset_s"]), float(e["published_offset_s"]),
                 float(e.get("score") or 0.0)) for e in events if e["type"] == "start"]

    candidates = starts(pipeline.candidates) if pipeline.gate is not None else None
    scores = (np.asarray(pipeline.score_times), np.asarray(pipeline.score_rows))
    return starts(pipeline.events), classifier.metadata, candidates, scores


def clip_accuracy(samples, spans, scores, labels) -> float | None:
    """Labelled clips: the label with the highest mean raw score over the windows that hear
    at least 0.25 s of the clip (background excluded), right or wrong."""
    from .pretrained import BACKGROUND

    times, rows = scores
    cols = [j for j, label in enumerate(labels) if label != BACKGROUND]
    hits = []
    for sample, (onset, end) in zip(samples, spans):
        inside = (times > onset + 0.25) & (times <= end + 0.75)
        if sample.label == BACKGROUND or not inside.any():
            continue
        mean = rows[inside][:, cols].mean(axis=0)
        hits.append(labels[cols[int(mean.argmax())]] == sample.label)
    return round(float(np.mean(hits)), 4) if hits else None


def attribute(events, spans, tail: float = 1.0):
    """Index of the clip whose span (onset - 0.25 s .. end + tail) holds each event, or -1."""
    onsets = np.array([s for s, _ in spans])
    out = []
    for _, t, _, _ in events:
        i = int(np.searchsorted(onsets, t + 0.25, side="right")) - 1
        out.append(i if i >= 0 and t <= spans[i][1] + tail else -1)
    return out


def percentiles(values) -> dict | None:
    if not values:
        return None
    v = np.asarray(values)
    return {"p50": round(float(np.percentile(v, 50)), 3), "p95": round(float(np.percentile(v, 95)), 3)}


def judge(samples, spans, events, owners, gap: float) -> dict:
    from .pretrained import BACKGROUND

    per_clip: dict[int, list] = {}
    for (label, _, published, score), owner in zip(events, owners):
        per_clip.setdefault(owner, []).append((label, published, score))
    rows = []
    for i, (sample, (onset, end)) in enumerate(zip(samples, spans)):
        evs = per_clip.get(i, [])
        if sample.label == BACKGROUND:
            rows.append({"file": sample.path.name, "kind": sample.kind, "label": BACKGROUND,
                         "seconds": round(end - onset, 3), "fired": sorted({e[0] for e in evs}),
                         "events": len(evs)})
        else:
            own = [t - onset for label, t, _ in evs if label == sample.label]
            rows.append({"file": sample.path.name, "kind": sample.kind, "label": sample.label,
                         "seconds": round(end - onset, 3),
                         "delay_s": round(min(own), 3) if own else None,
                         "other_labels": sorted({e[0] for e in evs if e[0] != sample.label})})
    labelled = [r for r in rows if r["label"] != BACKGROUND]
    everyday = [r for r in rows if r["label"] == BACKGROUND]
    delays = [r["delay_s"] for r in labelled if r["delay_s"] is not None]
    per_class = {}
    for label in sorted({r["label"] for r in labelled}):
        mine = [r for r in labelled if r["label"] == label]
        hits = [r["delay_s"] for r in mine if r["delay_s"] is not None]
        per_class[label] = {"clips": len(mine), "recall": round(len(hits) / len(mine), 4),
                            "wrong_label": round(sum(bool(r["other_labels"]) for r in mine)
                                                 / len(mine), 4),
                            "delay_s": percentiles(hits)}
    per_kind = {}
    for kind in sorted({r["kind"] for r in everyday}):
        mine = [r for r in everyday if r["kind"] == kind]
        per_kind[kind] = {"clips": len(mine),
                          "fired": round(sum(bool(r["fired"]) for r in mine) / len(mine), 4)}
    hours = sum(r["seconds"] for r in everyday) / 3600.0
    fa_labels: dict[str, int] = {}
    for r in everyday:
        for label in r["fired"]:
            fa_labels[label] = fa_labels.get(label, 0) + 1
    gap_events = sum(1 for o in owners if o < 0)
    return {
        "labelled": {"clips": len(labelled),
                     "recall": round(len(delays) / len(labelled), 4) if labelled else None,
                     "wrong_label": round(sum(bool(r["other_labels"]) for r in labelled)
                                          / len(labelled), 4) if labelled else None,
                     "delay_s": percentiles(delays), "per_class": per_class},
        "everyday": {"clips": len(everyday),
                     "fired": round(sum(bool(r["fired"]) for r in everyday) / len(everyday), 4)
                     if everyday else None,
                     "false_alarms": sum(r["events"] for r in everyday),
                     "hours": round(hours, 4),
                     "false_alarms_per_hour": round(sum(r["events"] for r in everyday)
                                                    / hours, 1) if hours else None,
                     "labels": dict(sorted(fa_labels.items(), key=lambda kv: -kv[1])),
                     "per_kind": per_kind},
        "room_noise": {"events": gap_events, "seconds": round(gap * (len(rows) + 1), 1)},
        "rows": rows,
    }


def markdown(result: dict) -> str:
    lab, ev = result["labelled"], result["everyday"]
    lines = [f"# Stream evaluation of `{result['model_version']}` on held-out rotations "
             f"{result['groups']}", "",
             f"{lab['clips'] + ev['clips']} held-out clips in one stream, each after "
             f"{result['gap_s']} s of -60 dBFS room noise, replayed through the daemon's "
             f"pipeline with the model's thresholds and default `[events]` "
             f"({result['date']}, {result['machine']}).", ""]
    if lab["clips"]:
        d = lab["delay_s"] or {}
        acc = lab.get("clip_accuracy")
        lines += [f"- labelled clips: own label fires on **{100 * lab['recall']:.1f}%**, "
                  f"another label on {100 * lab['wrong_label']:.1f}%; onset -> event delay "
                  f"p50 {d.get('p50', float('nan')):.2f} s, p95 {d.get('p95', float('nan')):.2f} s"
                  + (f"; clip accuracy {100 * acc:.1f}%" if acc is not None else ""),
                  "", "| class | clips | recall | wrong label | delay p50 | delay p95 |",
                  "|---|---|---|---|---|---|"]
        for label, c in lab["per_class"].items():
            dd = c["delay_s"] or {}
            lines.append(f"| {label} | {c['clips']} | {100 * c['recall']:.1f}% | "
                         f"{100 * c['wrong_label']:.1f}% | {dd.get('p50', '-')} | {dd.get('p95', '-')} |")
        lines.append("")
    if ev["clips"]:
        lines += [f"- everyday sounds of held-out kinds: **{100 * ev['fired']:.1f}%** of "
                  f"{ev['clips']} clips fire anything; {ev['false_alarms']} false alarms in "
                  f"{ev['hours'] * 60:.1f} min = {ev['false_alarms_per_hour']} per hour "
                  f"(labels: {ev['labels'] or 'none'})", "",
                  "| kind | clips | fired |", "|---|---|---|"]
        for kind, c in ev["per_kind"].items():
            lines.append(f"| {kind} | {c['clips']} | {100 * c['fired']:.1f}% |")
        lines.append("")
    off = result.get("gate_off")
    if off and off["labelled"]["clips"]:
        lines += [f"- the same replay with `events.audioset_gate = false`: own label "
                  f"{100 * off['labelled']['recall']:.1f}%, another label "
                  f"{100 * off['labelled']['wrong_label']:.1f}%"
                  + (f"; everyday clips firing {100 * off['everyday']['fired']:.1f}%, "
                     f"{off['everyday']['false_alarms_per_hour']} false alarms per hour"
                     if off["everyday"]["clips"] else ""), ""]
    lines.append(f"- room noise between clips: {result['room_noise']['events']} events in "
                 f"{result['room_noise']['seconds'] / 60:.1f} min")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lab, ev = result["labelled"], result["everyday"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    classes = list(lab["per_class"])
    axes[0].bar(range(len(classes)), [lab["per_class"][c]["recall"] for c in classes])
    axes[0].bar(range(len(classes)), [lab["per_class"][c]["wrong_label"] for c in classes],
                color="tab:red", alpha=0.7, label="another label fired")
    axes[0].set_xticks(range(len(classes)), classes, rotation=50, ha="right", fontsize=7)
    axes[0].set_ylim(0, 1)
    axes[0].axhline(0.85, color="grey", ls="--", lw=1)
    axes[0].legend(fontsize=7)
    axes[0].set_title(f"event recall per class (all {100 * (lab['recall'] or 0):.1f}%)", fontsize=9)
    delays = [r["delay_s"] for r in result["rows"] if r.get("delay_s") is not None]
    axes[1].hist(delays, bins=np.arange(-0.25, 4.01, 0.125))
    axes[1].axvline(0.4, color="tab:red", ls="--", lw=1)
    axes[1].set_xlabel("onset -> start event (s)")
    axes[1].set_title(f"delay (n={len(delays)})", fontsize=9)
    kinds = list(ev["per_kind"])
    axes[2].barh(kinds[::-1], [100 * ev["per_kind"][k]["fired"] for k in kinds][::-1],
                 color="tab:red")
    axes[2].axvline(5, color="grey", ls="--", lw=1)
    axes[2].tick_params(axis="y", labelsize=7)
    axes[2].set_xlabel("% of clips that fire anything")
    axes[2].set_title(f"held-out everyday kinds ({100 * (ev['fired'] or 0):.1f}% fire, "
                      f"{ev['false_alarms_per_hour']}/h)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def evaluate(model_path, data_root, groups, gap: float = 5.0, limit: int = 0,
             event_config: dict | None = None, model_config: dict | None = None,
             folders=()) -> dict:
    """The stream evaluation of ``model_path`` on the held-out clips of ``groups``;
    ``event_config`` / ``model_config`` override keys of the ``[events]`` / ``[model]``
    config (default: the daemon's). For a model with the gate (and the gate on) the result
    also holds ``gate_off``: the same replay judged on the events before the gate."""
    from .pretrained import collect, limit_per_kind

    samples = limit_per_kind([s for s in collect(data_root, folders=folders)
                              if s.group in set(groups)], limit)
    audio, spans = build_stream(samples, gap)
    config = None
    if event_config or model_config:
        from detector.config import config_from_dict
        config = config_from_dict({"model": {**(model_config or {}), "intra_op_threads": 1},
                                   "events": dict(event_config or {}),
                                   "output": {"stdout_json": False, "log_level": "warning"}})
    events, meta, candidates, scores = replay_stream(model_path, audio, config)
    owners = attribute(events, spans)
    result = judge(samples, spans, events, owners, gap)
    result["labelled"]["clip_accuracy"] = clip_accuracy(samples, spans, scores, meta.labels)
    if candidates is not None and (event_config or {}).get("audioset_gate", True):
        # the same replay with the gate off: the tracker's events before the gate
        result["gate_off"] = judge(samples, spans, candidates, attribute(candidates, spans), gap)
    import platform
    result.update({"model": str(model_path), "model_version": meta.model_version,
                   "groups": list(groups), "gap_s": gap, "events_config": event_config or {},
                   "model_config": model_config or {},
                   "stream_seconds": round(len(audio) / 16000, 1),
                   "date": datetime.now().strftime("%Y-%m-%d"),
                   "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
                   "machine": f"{platform.machine()} {os.cpu_count()} cores"})
    return result


def run(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    events = {"smoothing_windows": args.smoothing} if args.smoothing else {}
    model = {}
    if args.model_config:
        from detector.config import tomllib

        from detector.errors import ConfigError
        try:
            with open(args.model_config, "rb") as fh:
                table = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"--model-config {args.model_config}: {exc}") from None
        model, events = dict(table.get("model", {})), {**table.get("events", {}), **events}
    if args.no_gate:
        events["audioset_gate"] = False
    if not args.data and not args.folder:
        from detector.errors import ConfigError
        raise ConfigError("no data: pass --data DIR and/or --folder DIR")
    result = evaluate(args.model, args.data, args.group, args.gap, args.limit, events or None,
                      model or None, args.folder)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    (out / f"{args.name}.md").write_text(markdown(result))
    plot(result, out / f"{args.name}.png")
    print(markdown(result))
    return 0


def main(argv=None) -> int:
    import sys

    from ._cli import run_command
    return run_command(sys.modules[__name__], "python -m export eval", argv)


if __name__ == "__main__":
    raise SystemExit(main())
