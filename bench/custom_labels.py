"""Custom labels: recall on unseen recordings and false alarms vs number of enrolment clips.

    python bench/custom_labels.py [--model M.onnx] [--tag NAME] [--draws 5]

Two scenarios, real audio from ../shared/data:

* ``knock``: enrol ``knock`` from n ESC-50 door knocks (n = 1, 3, 5, 8 = all),
  recall on the 27 DCASE 2016 office knocks (another collection: office noise,
  -6/0/+6 dB event-to-background), false alarms on the 270 other DCASE clips.
* ``dcase``: for each of the 11 DCASE office kinds, enrol n of its 27 clips
  (n = 1, 3, 5, 10), recall on the 17+ others of that kind, false alarms on the
  clips of the 10 other kinds.

The background set is made like ``python -m export background-embeddings`` from
ESC-50 (without the door knocks) and SESA casual only, so no DCASE kind is ever
background: every false alarm is on a kind the head has never seen. Each scenario
also runs "+ room": one clip of each other office kind given as the user's
``--background`` (what a recording of one's own office would hold); those 10
clips are then not counted as negatives. n clips are drawn ``--draws`` times
(seeded); the numbers are means over draws.

Each test clip is streamed once through the daemon's pipeline after 3 s of
-60 dBFS noise (export.custom_eval), keeping every window's level and
embedding; a head *fires* on a clip when the tracker's view (gated, smoothed over
``events.smoothing_windows``) reaches the head's calibrated threshold. One
configuration (knock, 5 clips) is also replayed through the real pipeline with
the head attached (events counted) to check that this is what the daemon does.
Also measured: enrolment CPU (5 clips, embeddings + fit + calibration, median
of the draws) and the run-time cost of scoring custom heads per window.
Writes bench/results/custom_labels_<tag>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import timeit
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench._common import machine  # noqa: E402
from detector.model import custom  # noqa: E402
from detector.cli import custom_fit
from detector.config import Config  # noqa: E402
from detector.model.classifier import Classifier, default_model_path  # noqa: E402
from export import custom_eval  # noqa: E402
from export.background import background_files, build  # noqa: E402

DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "bench" / "results"


def stream_windows(classifier, path, seed, config):
    """The windows the daemon sees when ``path`` plays after 3 s of -60 dBFS noise."""
    rate = classifier.model_metadata.features.sample_rate
    clip = custom_fit.read_audio(path, rate)
    rng = np.random.default_rng(seed)
    lead = int(custom_eval.LEAD_SECONDS * rate)
    tail = int(custom_eval.TAIL_SECONDS * rate)
    stream = (rng.standard_normal(lead + clip.size + tail)
              * 10 ** (custom_eval.NOISE_DBFS / 20)).astype(np.float32)
    stream[lead:lead + clip.size] += clip
    return custom_fit.embed_samples(classifier, np.clip(stream, -1, 1), config, name=path.name,
                                pad_seconds=0.0, min_floor_dbfs=None, onset_windows=True)


def fires(head: custom.CustomHead, win, gate: float, smoothing: int) -> bool:
    scores = custom.CustomHeads([head]).scores
    s = np.array([scores(e)[0] for e in win.embeddings]) if len(win.embeddings) else np.zeros(0)
    s = np.where(win.levels >= gate, s, 0.0)
    return custom_fit.smoothed_max(s, smoothing) >= head.threshold


def enrol(classifier, label, paths, background, config, seed):
    t0 = time.process_time()
    rate = classifier.model_metadata.features.sample_rate
    clips = [custom_fit.embed_clip(classifier, custom_fit.read_audio(p, rate), config, name=p.name,
                               seed=seed * 100 + k) for k, p in enumerate(paths)]
    result = custom_fit.enroll(label, clips, background.embeddings, background.files,
                           classifier.model_metadata.model_version, config.events.gate_dbfs,
                           config.events.smoothing_windows, background_groups=background.groups())
    return result, time.process_time() - t0


def with_room(background, room, gate):
    """The background set plus the user's own recordings (``--background``): every
    window above the gate of the ``room`` clips, one file id per clip."""
    embeddings, files = [background.embeddings], [background.files]
    next_id = len(background.kinds)
    for k, (_, win) in enumerate(room):
        keep = win.levels >= gate
        embeddings.append(win.embeddings[keep])
        files.append(np.full(int(keep.sum()), next_id + k))
    origins = (np.arange(len(background.kinds)) if background.origins is None
               else background.origins)
    return custom_fit.BackgroundSet(np.vstack(embeddings), np.concatenate(files),
                                background.kinds + ["room"] * len(room),
                                background.model_version,
                                np.concatenate((origins, next_id + np.arange(len(room)))))


def run_scenario(name, classifier, background, config, enrol_pool, positives, negatives,
                 ns, draws, label, room=()):
    """``room``: clips given as the user's ``--background`` (not counted as negatives)."""
    gate, smoothing = config.events.gate_dbfs, config.events.smoothing_windows
    if room:
        background = with_room(background, room, gate)
        used = {p for p, _ in room}
        negatives = [(p, w) for p, w in negatives if p not in used]
    rows = []
    for n in ns:
        recalls, fas, cpus, thresholds, estimates = [], [], [], [], []
        for d in range(draws if n < len(enrol_pool) else 1):
            rng = np.random.default_rng(1000 * n + d)
            pick = rng.choice(len(enrol_pool), size=n, replace=False)
            result, cpu = enrol(classifier, label, [enrol_pool[i][0] for i in sorted(pick)],
                                background, config, d)
            chosen = {enrol_pool[i][0] for i in pick}
            pos = [w for p, w in positives if p not in chosen]
            recalls.append(np.mean([fires(result.head, w, gate, smoothing) for w in pos]))
            fas.append(np.mean([fires(result.head, w, gate, smoothing) for _, w in negatives]))
            cpus.append(cpu)
            thresholds.append(result.head.threshold)
            estimates.append(result.recall)
        rows.append({"scenario": name, "label": label, "clips": n, "draws": len(recalls),
                     "recall": float(np.mean(recalls)), "false_alarms": float(np.mean(fas)),
                     "threshold": float(np.mean(thresholds)),
                     "estimated_recall": (None if any(e is None for e in estimates)
                                          else float(np.mean(estimates))),
                     "enrol_cpu_s": float(np.median(cpus)),
                     "unseen_positives": len(positives) - n if positives else 0,
                     "negatives": len(negatives)})
        logging.info("%s %s n=%d: recall %.2f, false alarms %.3f", name, label, n,
                     rows[-1]["recall"], rows[-1]["false_alarms"])
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model with an embedding output (default: the shipped "
                        "model, or model 0.3.0 with its pooled LSTM output exposed)")
    parser.add_argument("--tag", help="results file tag (default: the model version)")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--skip-dcase", action="store_true", help="only the knock scenario")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("detector.pipeline").setLevel(logging.WARNING)
    data = Path(args.data)
    if not (data / "negatives").is_dir():
        raise SystemExit(f"real data not found at {data}")
    work = Path("/tmp") / "custom-labels-bench"
    work.mkdir(exist_ok=True)
    model = args.model
    stand_in = False
    if model is None:
        if Classifier(default_model_path()).embedding_name is not None:
            model = default_model_path()
        else:
            from onnx_models import SHIPPED_030_EMBEDDING, expose_embedding
            model = expose_embedding(default_model_path(), work / "030-embedding.onnx",
                                     SHIPPED_030_EMBEDDING, 256)
            stand_in = True
    classifier = Classifier(model)
    version = classifier.model_metadata.model_version
    tag = args.tag or version
    config = Config()

    t0 = time.process_time()
    files = background_files(data, ("esc50", "casual"), ["door_wood_knock"])
    background = build(model, files, progress=False, min_floor_dbfs=custom_fit.ROOM_FLOOR_DBFS)
    background_cpu = time.process_time() - t0
    logging.info("background: %d windows from %d files (%.0f s CPU)",
                 background.embeddings.shape[0], len(files), background_cpu)

    dcase = custom_eval.dcase_clips(data)
    t0 = time.process_time()
    streamed = [(p, k, stream_windows(classifier, p, i, config)) for i, (p, k) in enumerate(dcase)]
    knocks = custom_eval.esc50_clips(data, "door_wood_knock")
    logging.info("streamed %d DCASE clips (%.0f s CPU)", len(streamed), time.process_time() - t0)

    rows = run_scenario("knock: ESC-50 -> DCASE", classifier, background, config,
                        [(p, None) for p in knocks],
                        [(p, w) for p, k, w in streamed if k == "knock"],
                        [(p, w) for p, k, w in streamed if k != "knock"],
                        (1, 3, 5, 8), args.draws, "knock")
    # the same head through the real pipeline (events), as a check of the benchmark's own scoring above
    pick = sorted(np.random.default_rng(1000 * 5).choice(len(knocks), size=5, replace=False))
    result, _ = enrol(classifier, "knock", [knocks[i] for i in pick], background, config, 0)
    check = Classifier(model)
    check.attach_custom(custom.CustomHeads([result.head]))
    real = custom_eval.evaluate(check, "knock", [p for p, k in dcase if k == "knock"],
                                [(p, k) for p, k in dcase if k != "knock"], config)
    replica_pos = np.mean([fires(result.head, w, config.events.gate_dbfs,
                                 config.events.smoothing_windows)
                           for p, k, w in streamed if k == "knock"])
    replica_neg = np.mean([fires(result.head, w, config.events.gate_dbfs,
                                 config.events.smoothing_windows)
                           for p, k, w in streamed if k != "knock"])
    pipeline_check = {"clips": 5, "draw": 0, "pipeline_recall": real["recall"],
                      "pipeline_false_alarms": real["false_alarms"],
                      "replica_recall": float(replica_pos),
                      "replica_false_alarms": float(replica_neg),
                      "false_alarms_by_kind": real["false_alarms_by_kind"]}

    def room_for(kind):
        """One clip of each other office kind (the last of each): the user's --background."""
        out = []
        for other in sorted({k for _, k, _ in streamed} - {kind}):
            out.append([(p, w) for p, k, w in streamed if k == other][-1])
        return out

    rows += run_scenario("knock + room: ESC-50 -> DCASE, --background office", classifier,
                         background, config, [(p, None) for p in knocks],
                         [(p, w) for p, k, w in streamed if k == "knock"],
                         [(p, w) for p, k, w in streamed if k != "knock"],
                         (1, 3, 5, 8), args.draws, "knock", room=room_for("knock"))
    if not args.skip_dcase:
        for kind in sorted({k for _, k, _ in streamed}):
            pool = [(p, w) for p, k, w in streamed if k == kind]
            others = [(p, w) for p, k, w in streamed if k != kind]
            rows += run_scenario("dcase: within DCASE", classifier, background, config, pool,
                                 pool, others, (1, 3, 5, 10), args.draws, kind)
            rows += run_scenario("dcase + room: within DCASE, --background office", classifier,
                                 background, config, pool, pool, others, (1, 3, 5, 10),
                                 args.draws, kind, room=room_for(kind))

    # run-time cost of the heads: one embedding, K heads
    dim = classifier.embedding_dim
    emb = np.random.default_rng(0).standard_normal(dim).astype(np.float32)
    cost = {}
    for k in (1, 5, 20):
        heads = custom.CustomHeads([custom.CustomHead(f"l{i}", version,
                                                      np.ones(dim, np.float32), 0.0, 0.5)
                                    for i in range(k)])
        n = 20000
        cost[k] = min(timeit.repeat(lambda: heads.scores(emb), number=n, repeat=5)) / n * 1e6

    out = {"model": version, "model_path": Path(model).name if not stand_in else
           "detector/models/default.onnx (0.3.0) + pooled LSTM output exposed",
           "stand_in": stand_in, "machine": machine(), "rows": rows,
           "pipeline_check": pipeline_check, "head_us_per_window": cost,
           "background": {"windows": int(background.embeddings.shape[0]), "files": len(files),
                          "sources": "ESC-50 (no door_wood_knock) + SESA casual",
                          "cpu_s": background_cpu},
           "policy": {"floor": custom_fit.FLOOR, "budget": custom_fit.FALSE_ALARM_BUDGET,
                      "margin": custom_fit.MARGIN, "l2": custom_fit.L2,
                      "room_floor_dbfs": custom_fit.ROOM_FLOOR_DBFS}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    base = RESULTS / f"custom_labels_{tag}"
    base.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    base.with_suffix(".md").write_text(markdown(out) + "\n")
    plot(out, base.with_suffix(".png"))
    print(markdown(out))
    return 0


def _summary(rows, scenario):
    by_n: dict[int, list[dict]] = {}
    for r in rows:
        if r["scenario"] == scenario:
            by_n.setdefault(r["clips"], []).append(r)
    return {n: (float(np.mean([r["recall"] for r in rs])),
                float(np.mean([r["false_alarms"] for r in rs])),
                float(np.median([r["enrol_cpu_s"] for r in rs])),
                float(max(r["false_alarms"] for r in rs))) for n, rs in sorted(by_n.items())}


def markdown(out) -> str:
    m = out["machine"]
    lines = [f"# Custom labels, model {out['model']}" + (" (stand-in embedding)"
                                                          if out["stand_in"] else ""),
             "", f"Model: {out['model_path']}. Machine: {m.get('cpu', '?')}, "
             f"{m.get('cores', '?')} cores, {m.get('date', '?')}. Background: "
             f"{out['background']['windows']} windows of {out['background']['files']} files "
             f"({out['background']['sources']}); no DCASE kind is background.", "",
             "## knock: enrolled from ESC-50 door knocks, tested on DCASE office clips", "",
             "\"everyday set\": only the background set named above (everyday sounds, like "
             "the set shipped with the model but without DCASE office sounds). "
             "\"+ room\": with one clip of each other office kind given as `--background` "
             "(10 clips, not counted in the false alarms, which are then on 260 clips).", "",
             "| background | clips | draws | recall (27 DCASE knocks) | false alarms (other DCASE) "
             "| threshold | leave-one-clip-out estimate | enrol CPU |",
             "|---|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        if r["scenario"].startswith("knock"):
            est = "n/a" if r["estimated_recall"] is None else f"{100 * r['estimated_recall']:.0f}%"
            where = "+ room" if "room" in r["scenario"] else "everyday set"
            lines.append(f"| {where} | {r['clips']} | {r['draws']} | {100 * r['recall']:.0f}% | "
                         f"{100 * r['false_alarms']:.1f}% | {r['threshold']:.2f} | {est} | "
                         f"{r['enrol_cpu_s']:.2f} s |")
    c = out["pipeline_check"]
    lines += ["", f"Check through the real pipeline (5 clips, one draw, events counted): "
              f"recall {100 * c['pipeline_recall']:.0f}% / false alarms "
              f"{100 * c['pipeline_false_alarms']:.1f}% vs "
              f"{100 * c['replica_recall']:.0f}% / {100 * c['replica_false_alarms']:.1f}% for the "
              "same head scored window by window, as in the tables above."]
    summaries = [(name, _summary(out["rows"], name)) for name in
                 ("dcase: within DCASE", "dcase + room: within DCASE, --background office")]
    if summaries[0][1]:
        lines += ["", "## Each DCASE office kind enrolled from n of its clips (mean of 11 kinds)",
                  "", "| background | clips | recall (other clips of the kind) | false alarms "
                  "(other kinds) | worst kind's false alarms | enrol CPU |",
                  "|---|---|---|---|---|---|"]
        for name, summary in summaries:
            where = "+ room" if "room" in name else "everyday set"
            for n, (rec, fa, cpu, worst) in summary.items():
                lines.append(f"| {where} | {n} | {100 * rec:.0f}% | {100 * fa:.1f}% | "
                             f"{100 * worst:.1f}% | {cpu:.2f} s |")
        name, summary = summaries[1]
        lines += ["", "Per kind, + room: recall / false alarms", "",
                  "| kind | " + " | ".join(f"{n} clips" for n in summary) + " |",
                  "|---|" + "---|" * len(summary)]
        kinds = sorted({r["label"] for r in out["rows"] if r["scenario"] == name})
        for kind in kinds:
            cells = []
            for n in summary:
                r = [x for x in out["rows"] if x["label"] == kind and x["clips"] == n
                     and x["scenario"] == name][0]
                cells.append(f"{100 * r['recall']:.0f}% / {100 * r['false_alarms']:.1f}%")
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    cost = out["head_us_per_window"]
    lines += ["", "Run-time cost of the heads (numpy, one window): "
              + ", ".join(f"{k} label(s) {v:.1f} µs" for k, v in cost.items()) + "."]
    return "\n".join(lines)


def plot(out, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for scenario, marker in (("knock: ESC-50 -> DCASE", "o"),
                             ("knock + room: ESC-50 -> DCASE, --background office", "v"),
                             ("dcase: within DCASE", "s"),
                             ("dcase + room: within DCASE, --background office", "D")):
        summary = _summary(out["rows"], scenario)
        if not summary:
            continue
        ns = list(summary)
        axes[0].plot(ns, [100 * summary[n][0] for n in ns], marker=marker, label=scenario)
        axes[1].plot(ns, [100 * summary[n][1] for n in ns], marker=marker, label=scenario)
    axes[0].axhline(80, color="grey", ls="--", lw=1)
    axes[1].axhline(3, color="grey", ls="--", lw=1)
    axes[0].set(xlabel="enrolment clips", ylabel="recall on unseen clips (%)", ylim=(0, 100))
    axes[1].set(xlabel="enrolment clips", ylabel="clips of other kinds that fire (%)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Custom labels, model {out['model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
