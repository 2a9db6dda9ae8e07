"""Decision hop and smoothing vs delay and false alarms, through the daemon's event logic.

    python bench/decision_policy.py --model runs/pretrained/rot0/model.onnx --group 0 \
        --name decision_rot0

The held-out stream of a rotation (the clips of :data:`export.pretrained.FOLD_GROUPS` /
``KIND_GROUPS`` group ``--group``, each after 5 s of -60 dBFS room noise, exactly as
``python -m export stream-eval`` lays them) is replayed once through
:class:`detector.pipeline.Pipeline` with a fine window hop (``--base-hop``, default 0.05 s)
and every window's raw scores and level are kept. Each policy then feeds every n-th
window (its decision hop, at every phase of the fine grid) to the daemon's own
:class:`detector.events.EventTracker` with that policy's ``[events]`` settings, and the
start events are judged like ``stream-eval`` does (``export.stream_eval.judge``): own-label
recall, another label fired, delay from the clip's sound onset (its first 10 ms frame within
20 dB of its loudest: ``bench/latency.py``'s ``clip_onset``), everyday clips firing, false alarms
per hour. The model runs once; only the decision logic differs between rows.

A policy is ``hop:smoothing[:extra]``; see ``--policy``. Results:
``bench/results/<name>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from bench._common import machine, save  # noqa: E402
from bench.latency import clip_onset as sound_onset  # noqa: E402  (same onset rule)

def held_out_stream(data: Path, group: int, limit: int) -> dict:
    """The stream-eval stream of a rotation: samples, audio, clip spans and sound onsets."""
    from export.pretrained import SR, collect, limit_per_kind
    from export.stream_eval import build_stream

    samples = limit_per_kind([s for s in collect(data) if s.group == group], limit)
    audio, spans = build_stream(samples, 5.0)
    onsets = [start + sound_onset(audio[int(round(start * SR)):int(round(end * SR))])
              for start, end in spans]
    return {"samples": samples, "spans": spans, "onsets": onsets, "audio": audio,
            "stream_seconds": len(audio) / SR}


def fine_scores(model: str, data: Path, group: int, base_hop: float, limit: int):
    """Raw scores, levels and times of every ``base_hop`` window of the held-out stream."""
    import tempfile

    import soundfile as sf

    from detector.audio.capture import FileSource
    from detector.config import config_from_dict
    from detector.model.classifier import Classifier
    from detector.pipeline import Pipeline
    from export.pretrained import SR

    stream = held_out_stream(data, group, limit)
    config = config_from_dict({"model": {"intra_op_threads": 1,
                                         "window_hop_seconds": base_hop},
                               "output": {"stdout_json": False, "log_level": "warning"}})
    classifier = Classifier(model, ("CPUExecutionProvider",), 1)
    with tempfile.TemporaryDirectory(prefix="decision-") as tmp:
        wav = Path(tmp) / "stream.wav"
        sf.write(str(wav), stream["audio"], SR, subtype="FLOAT")
        source = FileSource(wav, SR, realtime=False, block_seconds=1.0)
        pipeline = Pipeline(config, source, classifier, [], live=False, record_scores=True,
                            node="bench")
        t0 = time.perf_counter()
        pipeline.run()
        if pipeline.error is not None:
            raise pipeline.error
        seconds = time.perf_counter() - t0
    return {**stream, "times": np.asarray(pipeline.score_times),
            "scores": np.stack(pipeline.score_rows), "levels": np.asarray(pipeline.level_rows),
            "meta": classifier.metadata, "hop": pipeline.hop_seconds, "model_seconds": seconds,
            "model": str(model)}


def save_scores(run: dict, path: Path) -> None:
    np.savez_compressed(path, times=run["times"], scores=run["scores"], levels=run["levels"],
                        hop=run["hop"], model_seconds=run["model_seconds"],
                        model=str(run["model"]))


def load_scores(path: Path, data: Path, group: int, limit: int) -> dict:
    """A run of :func:`fine_scores` from its saved scores (the stream is rebuilt, not rescored)."""
    from detector.model.classifier import Classifier

    with np.load(path) as d:
        saved = {k: d[k] for k in d.files}
    meta = Classifier(str(saved["model"]), ("CPUExecutionProvider",), 1).metadata
    return {**held_out_stream(data, group, limit),
            "times": saved["times"], "scores": saved["scores"], "levels": saved["levels"],
            "meta": meta, "hop": float(saved["hop"]), "model": str(saved["model"]),
            "model_seconds": float(saved["model_seconds"])}


def parse_policy(text: str) -> dict:
    """``"0.25:2"`` -> hop 0.25 s, smoothing 2; ``"0.25:3:onset=0.05:span=0.5"`` -> onset
    windows every 0.05 s for 0.5 s; also ``rise=DB``, ``thr=X`` / ``cap=X`` (every on-threshold at
    least / at most X) and the ``[events]`` keys ``min=`` / ``cooldown=``."""
    parts = text.split(":")
    policy = {"name": text, "hop": float(parts[0]), "smoothing": int(parts[1]),
              "onset_hop": None, "onset_seconds": 1.0, "onset_rise_db": 10.0, "events": {}}
    for extra in parts[2:]:
        key, value = extra.split("=")
        if key == "onset":
            policy["onset_hop"] = float(value)
        elif key == "span":
            policy["onset_seconds"] = float(value)
        elif key == "rise":
            policy["onset_rise_db"] = float(value)
        elif key == "thr":  # every on-threshold at least this
            policy["threshold_at_least"] = float(value)
        elif key == "cap":  # every on-threshold at most this
            policy["threshold_at_most"] = float(value)
        elif key == "min":
            policy["events"]["min_duration_seconds"] = float(value)
        elif key == "cooldown":
            policy["events"]["cooldown_seconds"] = float(value)
        else:
            raise SystemExit(f"decision_policy: unknown policy option {key!r} in {text!r}")
    return policy


def steps(run: dict, policy: dict) -> tuple[int, int]:
    """(regular, onset) decision hops in fine windows."""
    out = []
    for hop in (policy["hop"], policy["onset_hop"] or policy["hop"]):
        step = int(round(hop / run["hop"]))
        if step < 1 or abs(step * run["hop"] - hop) > 1e-6:
            raise SystemExit(f"decision_policy: hop {hop} is not a multiple of the "
                             f"fine hop {run['hop']}")
        out.append(step)
    if out[0] % out[1]:
        raise SystemExit(f"decision_policy: {policy['name']}: the onset hop must divide the hop")
    return out[0], out[1]


def onset_positions(run: dict, policy: dict) -> np.ndarray:
    """Onsets of the whole stream (sample positions) by the daemon's detector."""
    from detector.config import EventsConfig
    from detector.audio.onset import OnsetDetector

    key = ("onsets", policy["onset_rise_db"])
    if key not in run:  # as the pipeline builds it: the frame is a column hop, floor the gate
        detector = OnsetDetector(run["meta"].features.hop_length, policy["onset_rise_db"],
                                 EventsConfig().gate_dbfs)
        run[key] = np.asarray(detector.feed(run["audio"]), dtype=np.int64)
    return run[key]


def chosen_windows(run: dict, policy: dict, phase: int) -> np.ndarray:
    """Fine-window indices the daemon would classify with this policy and grid phase."""
    step, onset_step = steps(run, policy)
    n = len(run["times"])
    regular = np.arange(phase, n, step)
    if onset_step == step:
        return regular
    candidates = np.arange(phase % onset_step, n, onset_step)
    sr = run["meta"].features.sample_rate
    ends = np.round(run["times"][candidates] * sr).astype(np.int64)
    onsets = onset_positions(run, policy)
    span = int(round(policy["onset_seconds"] * sr))
    k = np.searchsorted(onsets, ends, side="right") - 1  # latest onset at or before the end
    covered = (k >= 0) & (ends - onsets[np.maximum(k, 0)] <= span)
    return np.union1d(regular, candidates[covered])


def decide(run: dict, policy: dict, phase: int) -> list[tuple[str, float, float]]:
    """Start events of the tracker fed the policy's windows at grid ``phase``."""
    from detector.config import config_from_dict
    from detector.events import EventTracker

    meta = run["meta"]
    events_cfg = config_from_dict({"events": {"smoothing_windows": policy["smoothing"],
                                              **policy["events"]}}).events
    thresholds = dict(meta.thresholds)
    if policy.get("threshold_at_least"):
        thresholds = {k: max(v, policy["threshold_at_least"]) for k, v in thresholds.items()}
    if policy.get("threshold_at_most"):
        thresholds = {k: min(v, policy["threshold_at_most"]) for k, v in thresholds.items()}
    tracker = EventTracker(meta.labels, events_cfg, thresholds,
                           background_labels=meta.background_labels)
    out = []
    times, scores, levels = run["times"], run["scores"], run["levels"]
    chosen = chosen_windows(run, policy, phase)
    run.setdefault("windows", {})[(policy["name"], phase)] = len(chosen)
    for i in chosen:
        for ev in tracker.update(scores[i], float(levels[i]), float(times[i])):
            if ev["type"] == "start":
                out.append((ev["label"], float(times[i]), float(times[i]), ev["score"]))
    return out


def judge_policy(run: dict, policy: dict) -> dict:
    from export.stream_eval import attribute, judge

    step, _ = steps(run, policy)
    rows = []
    for phase in range(step):
        events = decide(run, policy, phase)
        owners = attribute(events, run["spans"])
        result = judge(run["samples"], run["spans"], events, owners, 5.0)
        hits = [(row["label"], row["delay_s"] + start - onset)
                for row, onset, (start, _) in zip(result["rows"], run["onsets"], run["spans"])
                if row["label"] != "background" and row.get("delay_s") is not None]
        rows.append((result, hits))
    delays = [d for _, hits in rows for _, d in hits]
    lab = [r["labelled"] for r, _ in rows]
    day = [r["everyday"] for r, _ in rows]
    per_class = {}
    for label in lab[0]["per_class"]:
        mine = [d for _, hits in rows for name, d in hits if name == label]
        per_class[label] = {
            "recall": float(np.mean([r["per_class"][label]["recall"] for r in lab])),
            "wrong_label": float(np.mean([r["per_class"][label]["wrong_label"] for r in lab])),
            "delay_p50": float(np.percentile(mine, 50)) if mine else None,
            "delay_p95": float(np.percentile(mine, 95)) if mine else None}
    windows = np.mean([run["windows"][(policy["name"], p)] for p in range(step)])
    return {"policy": policy["name"], "phases": step,
            "windows_per_second": float(windows / run["stream_seconds"]),
            "recall": float(np.mean([x["recall"] for x in lab])),
            "wrong_label": float(np.mean([x["wrong_label"] for x in lab])),
            "delay_p50": float(np.percentile(delays, 50)) if delays else None,
            "delay_p95": float(np.percentile(delays, 95)) if delays else None,
            "everyday_fired": float(np.mean([x["fired"] for x in day])),
            "false_alarms_per_hour": float(np.mean([x["false_alarms_per_hour"] or 0 for x in day])),
            "room_noise_events": float(np.mean([r["room_noise"]["events"] for r, _ in rows])),
            "per_class": per_class}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores; {result['date']}.",
             f"Command: `{result['command']}` — held-out stream of group {result['group']} "
             f"({result['stream_seconds']:.0f} s, {result['clips']} clips), model "
             f"{result['model_version']} scored once every {result['base_hop']} s; each row "
             "feeds the daemon's EventTracker every n-th window (all phases averaged). Delay: "
             "start event time - the clip's sound onset.", "",
             "| policy (hop s : smoothing) | windows / s | recall | wrong label | delay p50 "
             "| delay p95 | everyday clips firing | false alarms / h |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["policies"]:
        p50 = "-" if r["delay_p50"] is None else f"{r['delay_p50']:.2f} s"
        p95 = "-" if r["delay_p95"] is None else f"{r['delay_p95']:.2f} s"
        lines.append(f"| {r['policy']} | {r['windows_per_second']:.2f} | {r['recall']:.1%} | {r['wrong_label']:.1%} | {p50} "
                     f"| {p95} | {r['everyday_fired']:.1%} | {r['false_alarms_per_hour']:.0f} |")
    labels = list(result["policies"][0]["per_class"])
    lines += ["", "Per class: recall · delay p50 / p95 (s)", "",
              "| policy | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for r in result["policies"]:
        cells = []
        for label in labels:
            c = r["per_class"][label]
            p50 = "-" if c["delay_p50"] is None else f"{c['delay_p50']:.2f}"
            p95 = "-" if c["delay_p95"] is None else f"{c['delay_p95']:.2f}"
            cells.append(f"{c['recall']:.0%} · {p50} / {p95}")
        lines.append(f"| {r['policy']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for r in result["policies"]:
        axes[0].scatter(r["delay_p50"] or np.nan, r["recall"], label=r["policy"])
        axes[1].scatter(r["false_alarms_per_hour"], r["recall"], label=r["policy"])
    axes[0].set_xlabel("delay p50, sound onset -> start event (s)")
    axes[1].set_xlabel("false alarms per hour of everyday sound")
    for ax in axes:
        ax.set_ylabel("event recall")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"decision policies, group {result['group']}, model {result['model_version']}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def group_weights(data: Path, group: int) -> tuple[int, float]:
    """(labelled clips, hours of everyday clips) of a rotation's held-out stream."""
    import soundfile as sf

    from export.pretrained import BACKGROUND, collect

    samples = [s for s in collect(data) if s.group == group]
    labelled = sum(1 for s in samples if s.label != BACKGROUND)
    hours = sum(sf.info(str(s.path)).duration for s in samples if s.label == BACKGROUND) / 3600
    return labelled, hours


def combine(paths: list[str], data: Path) -> dict:
    """Pool per-rotation results: recall and wrong label weighted by labelled clips, false
    alarms per hour by hours of everyday sound, windows per second by stream length; delays
    as the clip-weighted mean of the rotations' percentiles (an approximation, marked so)."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    names = [r["policy"] for r in runs[0]["policies"]]
    for r in runs[1:]:
        missing = [n for n in names if n not in [x["policy"] for x in r["policies"]]]
        names = [n for n in names if n not in missing]
    weights = {r["group"]: ((r["labelled_clips"], r["everyday_hours"]) if "labelled_clips" in r
                            else group_weights(data, r["group"])) for r in runs}
    pooled = []
    for name in names:
        rows = [(r, next(x for x in r["policies"] if x["policy"] == name)) for r in runs]
        clips = np.array([weights[r["group"]][0] for r, _ in rows], dtype=float)
        hours = np.array([weights[r["group"]][1] for r, _ in rows])
        secs = np.array([r["stream_seconds"] for r, _ in rows])

        def avg(key, w):
            values = [x[key] for _, x in rows]
            if any(v is None for v in values):
                return None
            return float(np.dot(values, w) / w.sum())
        entry = {"policy": name, "windows_per_second": avg("windows_per_second", secs),
                 "recall": avg("recall", clips), "wrong_label": avg("wrong_label", clips),
                 "delay_p50": avg("delay_p50", clips), "delay_p95": avg("delay_p95", clips),
                 "everyday_fired": avg("everyday_fired", hours),
                 "false_alarms_per_hour": avg("false_alarms_per_hour", hours), "per_class": {}}
        for label in rows[0][1]["per_class"]:
            cells = [x["per_class"].get(label) for _, x in rows]
            keep = [(c, w) for c, w in zip(cells, clips) if c is not None]
            entry["per_class"][label] = {
                key: (None if any(c[key] is None for c, _ in keep) else
                      float(sum(c[key] * w for c, w in keep) / sum(w for _, w in keep)))
                for key in ("recall", "wrong_label", "delay_p50", "delay_p95")}
        pooled.append(entry)
    return {"machine": runs[0]["machine"], "date": runs[0]["date"],
            "command": "python bench/decision_policy.py --combine " + " ".join(
                Path(p).name for p in paths),
            "group": "+".join(str(r["group"]) for r in runs),
            "model_version": ", ".join(r["model_version"] for r in runs),
            "base_hop": runs[0]["base_hop"],
            "stream_seconds": float(sum(r["stream_seconds"] for r in runs)),
            "clips": int(sum(r["clips"] for r in runs)), "policies": pooled,
            "pooled": {str(g): {"labelled_clips": w[0], "everyday_hours": round(w[1], 3)}
                       for g, w in weights.items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="ONNX model (a rotation model for --group)")
    parser.add_argument("--group", type=int, help="held-out rotation group 0-3")
    parser.add_argument("--combine", nargs="+", default=None, metavar="JSON",
                        help="pool the results of several rotations instead of running one")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--scores", default=None, metavar="NPZ",
                        help="keep the fine-grid scores here and reuse them when present")
    parser.add_argument("--base-hop", type=float, default=0.05)
    parser.add_argument("--limit", type=int, default=0, help="at most N clips per kind (0 = all)")
    parser.add_argument("--policy", nargs="+",
                        default=["0.25:2", "0.25:3", "0.1:2", "0.05:2", "0.25:2:onset=0.05",
                                 "0.25:3:onset=0.05", "0.25:4:onset=0.05",
                                 "0.25:3:onset=0.05:span=0.5"])
    parser.add_argument("--name", default="decision_policy")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results"
    if args.combine:
        result = combine(args.combine, Path(args.data))
        save(args.name, result, markdown(result), out)
        plot(result, out / f"{args.name}.png")
        print(markdown(result))
        return 0
    if not args.model or args.group is None:
        parser.error("--model and --group are needed (or --combine)")
    cache = Path(args.scores) if args.scores else None
    if cache is not None and cache.exists():
        run = load_scores(cache, Path(args.data), args.group, args.limit)
    else:
        run = fine_scores(args.model, Path(args.data), args.group, args.base_hop, args.limit)
        if cache is not None:
            save_scores(run, cache)
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": "python bench/decision_policy.py " + " ".join(argv or sys.argv[1:]),
              "group": args.group, "model": args.model,
              "model_version": run["meta"].model_version, "base_hop": run["hop"],
              "stream_seconds": run["stream_seconds"], "clips": len(run["samples"]),
              "model_seconds": round(run["model_seconds"], 1),
              "labelled_clips": sum(1 for s in run["samples"] if s.label != "background"),
              "everyday_hours": sum(b - a for s, (a, b) in zip(run["samples"], run["spans"])
                                    if s.label == "background") / 3600, "policies": []}
    for text in args.policy:
        r = judge_policy(run, parse_policy(text))
        result["policies"].append(r)
        print(f"{text:>22}: recall {r['recall']:.3f} wrong {r['wrong_label']:.3f} "
              f"delay p50 {r['delay_p50']} p95 {r['delay_p95']} everyday "
              f"{r['everyday_fired']:.3f} FA/h {r['false_alarms_per_hour']:.0f}", flush=True)
    save(args.name, result, markdown(result), out)
    plot(result, out / f"{args.name}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
