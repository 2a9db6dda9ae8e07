"""Custom labels with and without their AudioSet evidence: recall on other recordings of the
kind, other everyday kinds firing a custom label.

    python -m bench quality --labels custom [--model M.onnx] [--tag NAME] [--clips 4]

Real audio from ../shared/data. Four custom labels enrolled as a user would
(``custom_fit.embed_clip`` + ``custom_fit.enroll``, what ``sound-detector enroll`` runs) from
``--clips`` takes each: ``knock`` from ESC-50 door knocks, ``phone``, ``keys`` and
``cough`` from DCASE 2016 office clips of their kind at +6 dB event-to-background (takes
recorded close to the sound, as a user would). The background set is made
like ``python -m export background-embeddings`` from ESC-50 (no door knocks) and SESA
casual, with the AudioSet evidence of every window, so no DCASE kind is background.

Judged, all four heads attached at once, every clip streamed through the daemon's own
pipeline after 3 s of -60 dBFS room noise (export.custom_eval): recall = the held-out clips
of a kind (DCASE knocks for ``knock``; the kind's other DCASE clips) that fire their label;
other clips firing = DCASE clips of the seven other office kinds and the Speech Commands
background recordings that fire any custom label. "Without the gate" counts the tracker's
candidate events (what ``events.audioset_gate = false`` publishes), "with the gate" the
published ones, from the same pass.

Writes bench/results/custom_gate_<tag>.{json,md}.
"""

from __future__ import annotations

import argparse
import logging
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import finish, machine, run_line  # noqa: E402
from detector.model import custom  # noqa: E402
from detector.cli import custom_fit
from detector.config import Config  # noqa: E402
from detector.cli.custom_fit import read_audio  # noqa: E402
from detector.cli.custom_fit import ArraySource
from detector.model.classifier import Classifier, default_model_path  # noqa: E402
from detector.pipeline import Pipeline  # noqa: E402
from detector.publish.sink import Sink  # noqa: E402
from export import custom_eval  # noqa: E402
from export.background import background_files, build  # noqa: E402

DATA = REPO.parent / "shared" / "data"
ENROLLED = ("knock", "phone", "keys", "cough")


class _Starts(Sink):
    def __init__(self):
        self.labels: set[str] = set()

    def event(self, event) -> None:
        if event["type"] == "start":
            self.labels.add(event["label"])


def fired(classifier, config, path: Path, seed: int) -> tuple[set[str], set[str]]:
    """``(candidates, published)`` start labels of one streamed clip."""
    rate = classifier.model_metadata.features.sample_rate
    clip = read_audio(path, rate)
    rng = np.random.default_rng(seed)
    lead = int(custom_eval.LEAD_SECONDS * rate)
    tail = int(custom_eval.TAIL_SECONDS * rate)
    stream = (rng.standard_normal(lead + clip.size + tail)
              * 10 ** (custom_eval.NOISE_DBFS / 20)).astype(np.float32)
    stream[lead:lead + clip.size] += clip
    sink = _Starts()
    pipe = Pipeline(config, ArraySource(np.clip(stream, -1, 1), rate), classifier, [sink],
                    node="bench")
    candidates: set[str] = set()
    update = pipe.tracker.update

    def spy(scores, level, now):
        events = update(scores, level, now)
        candidates.update(e["label"] for e in events if e["type"] == "start")
        return events

    pipe.tracker.update = spy
    pipe.run()
    return candidates, sink.labels


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--tag")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--out")
    parser.add_argument("--background-cache", metavar="NPZ",
                        help="load the background set from NPZ if it exists, else build and "
                        "save it there (it takes most of the run)")
    parser.add_argument("--top-k", type=int, default=custom_fit.GATE_TOP_K,
                        help="the custom labels' rank (default: the package's)")
    parser.add_argument("--floor", type=float, default=custom_fit.GATE_FLOOR)
    parser.add_argument("--context", type=float, default=custom_fit.GATE_CONTEXT_SECONDS)
    parser.add_argument("--wait", type=float, default=custom_fit.GATE_MAX_WAIT_SECONDS)
    args = parser.parse_args(argv)
    custom_fit.GATE_TOP_K, custom_fit.GATE_FLOOR = args.top_k, args.floor
    custom_fit.GATE_CONTEXT_SECONDS, custom_fit.GATE_MAX_WAIT_SECONDS = args.context, args.wait
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("detector.pipeline").setLevel(logging.WARNING)
    command = "python -m bench quality --labels custom " + " ".join(  # file names only, no local paths
        shlex.quote(Path(a).name if "/" in a else a) for a in (argv or sys.argv[1:]))
    started = machine()
    model = Path(args.model) if args.model else default_model_path()
    classifier = Classifier(model)
    meta = classifier.model_metadata
    if classifier.audioset_name is None or classifier.embedding_name is None:
        raise SystemExit(f"custom_gate: model {meta.model_version} needs an embedding and an "
                         "audioset output")
    config = Config()
    t0 = time.process_time()
    files = background_files(DATA, ("esc50", "casual"), ["door_wood_knock"])
    cache = Path(args.background_cache) if args.background_cache else None
    if cache is not None and cache.is_file():
        background = custom_fit.BackgroundSet.load(cache)
    else:
        background = build(model, files, progress=False, min_floor_dbfs=custom_fit.ROOM_FLOOR_DBFS)
        if cache is not None:
            background.save(cache)
    logging.info("background: %d windows, %d files (%.0f s CPU)",
                 background.embeddings.shape[0], len(files), time.process_time() - t0)

    dcase = custom_eval.dcase_clips(DATA)
    by_kind: dict[str, list[Path]] = {}
    for p, k in dcase:
        by_kind.setdefault(k, []).append(p)
    pools = {"knock": custom_eval.esc50_clips(DATA, "door_wood_knock")[:args.clips]}
    for kind in ENROLLED[1:]:  # takes recorded close by: the +6 dB mixtures first
        by_kind[kind] = sorted(by_kind[kind], key=lambda p: "_ebr_6_" not in p.name)
        pools[kind] = by_kind[kind][:args.clips]
    heads, enrol_rows = [], {}
    hop = config.model.window_hop_seconds or meta.window_hop_seconds or 0.25
    context = max(1, 1 + int(round((custom_fit.GATE_CONTEXT_SECONDS - meta.window_seconds) / hop)))
    rate = meta.features.sample_rate
    for label, paths in pools.items():
        clips = [custom_fit.embed_clip(classifier, read_audio(p, rate), config, name=p.name, seed=k)
                 for k, p in enumerate(paths)]
        res = custom_fit.enroll(label, clips, background.embeddings, background.files,
                            meta.model_version, config.events.gate_dbfs,
                            config.events.smoothing_windows,
                            background_groups=background.groups(),
                            background_audioset=background.audioset, context_windows=context,
                            wait_windows=int(round(custom_fit.GATE_MAX_WAIT_SECONDS / hop)))
        heads.append(res.head)
        enrol_rows[label] = {
            "clips": [p.name for p in paths], "threshold": round(res.head.threshold, 3),
            "support": custom_fit.support_names(res.gate["support"]) if res.gate else [],
            "estimated_recall": res.recall, "estimated_false_alarms": res.false_alarms,
            "estimated_recall_gated": res.gated_recall,
            "estimated_false_alarms_gated": res.gated_false_alarms, "warnings": res.warnings}
        logging.info("%s: support %s", label, enrol_rows[label]["support"])
    classifier.attach_custom(custom.CustomHeads(heads))

    positives = {"knock": by_kind["knock"]}
    for kind in ENROLLED[1:]:
        positives[kind] = by_kind[kind][args.clips:]
    negatives = [(p, k) for p, k in dcase if k not in ENROLLED]
    negatives += [(p, re.sub(r"_\d+$", "", p.stem))
                  for p in sorted((DATA / "negatives" / "speech_commands_bg").glob("*.flac"))]
    cpu0 = time.process_time()
    rec = {label: {"clips": 0, "candidates": 0, "published": 0} for label in positives}
    seed = 0
    for label, paths in positives.items():
        for p in paths:
            seed += 1
            cand, pub = fired(classifier, config, p, seed)
            rec[label]["clips"] += 1
            rec[label]["candidates"] += label in cand
            rec[label]["published"] += label in pub
    neg_cand, neg_pub, by_kind_neg = {}, {}, {}
    for p, k in negatives:
        seed += 1
        cand, pub = fired(classifier, config, p, seed)
        cand &= set(ENROLLED)
        pub &= set(ENROLLED)
        row = by_kind_neg.setdefault(k, {"clips": 0, "candidates": 0, "published": 0})
        row["clips"] += 1
        row["candidates"] += bool(cand)
        row["published"] += bool(pub)
        if cand:
            neg_cand[f"{k}/{p.name}"] = sorted(cand)
        if pub:
            neg_pub[f"{k}/{p.name}"] = sorted(pub)
    judge_cpu = time.process_time() - cpu0
    n_neg = len(negatives)
    result = {
        "what": "custom labels enrolled from a few clips, with and without their AudioSet "
                "support set, streamed through the daemon's pipeline",
        "command": command, "machine": started,
        "model": {"file": model.name, "version": meta.model_version},
        "clips_per_label": args.clips, "enrolment": enrol_rows,
        "recall": {k: {**v, "recall_without_gate": round(v["candidates"] / v["clips"], 4),
                       "recall_with_gate": round(v["published"] / v["clips"], 4)}
                   for k, v in rec.items()},
        "mean_recall_without_gate": round(float(np.mean([v["candidates"] / v["clips"]
                                                          for v in rec.values()])), 4),
        "mean_recall_with_gate": round(float(np.mean([v["published"] / v["clips"]
                                                       for v in rec.values()])), 4),
        "other_clips": n_neg,
        "other_clips_firing_without_gate": round(len(neg_cand) / n_neg, 4),
        "other_clips_firing_with_gate": round(len(neg_pub) / n_neg, 4),
        "other_clips_by_kind": by_kind_neg, "fired_without_gate": neg_cand,
        "fired_with_gate": neg_pub, "judge_cpu_s": round(judge_cpu, 1),
        "gate_defaults": {"top_k": custom_fit.GATE_TOP_K, "floor": custom_fit.GATE_FLOOR,
                          "context_seconds": custom_fit.GATE_CONTEXT_SECONDS,
                          "max_wait_seconds": custom_fit.GATE_MAX_WAIT_SECONDS},
    }
    tag = args.tag or meta.model_version
    finish(result, f"custom_gate_{tag}", args.out, markdown)
    return 0


def markdown(r: dict) -> str:
    g = r["gate_defaults"]
    lines = [f"# Custom labels with their AudioSet evidence, model {r['model']['version']}", "",
             run_line(r), "",
             f"{r['clips_per_label']} enrolment clips per label; the gate: a support class in "
             f"the top {g['top_k']} of 527 with at least {g['floor']} over "
             f"{g['context_seconds']:g} s, waiting up to {g['max_wait_seconds']:g} s.", "",
             "| label | AudioSet evidence learned | held-out clips | recall without gate | "
             "recall with gate |", "|---|---|---|---|---|"]
    for label, v in r["recall"].items():
        support = ", ".join(r["enrolment"][label]["support"]) or "none"
        lines.append(f"| {label} | {support} | {v['clips']} | "
                     f"{100 * v['recall_without_gate']:.0f}% | {100 * v['recall_with_gate']:.0f}% |")
    lines += ["", f"Mean recall {100 * r['mean_recall_without_gate']:.1f}% without the gate, "
              f"{100 * r['mean_recall_with_gate']:.1f}% with it; "
              f"{r['other_clips']} clips of other everyday kinds fire a custom label: "
              f"{100 * r['other_clips_firing_without_gate']:.1f}% without the gate, "
              f"{100 * r['other_clips_firing_with_gate']:.1f}% with it."]
    if r["fired_with_gate"]:
        lines.append("With the gate: " + ", ".join(f"{k} → {', '.join(v)}"
                                                   for k, v in r["fired_with_gate"].items()) + ".")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
