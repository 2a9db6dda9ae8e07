"""``python -m export train``: the shipped recipe, one command.

    python -m export train --data ../shared/data --run runs/pretrained \
        --crossval --out detector/models/default.onnx --model-version 1.1.0
    python -m export train --folder mydata --run runs/mine --out mymodel.onnx

``--data`` is the shared data layout (UrbanSound8K, SESA, negatives); ``--folder`` your
own folder-per-class data (``<dir>/<label>/*.wav``, a ``background`` folder for
negatives), alone or added to it. The labels are those the data holds.

1. ``<run>/trunk.onnx`` and ``<run>/cache*.npz``: every clip's windows (clean + augmented)
   through the frozen AudioSet trunk, once (reused when present).
2. ``--crossval``: four rotations, each holding out a fold group *and* a group of whole
   everyday kinds; per rotation the head is trained on the rest, thresholds are calibrated
   on the rotation's training negatives, the rotation model is exported to ONNX and judged
   by ``python -m export eval`` through the daemon's pipeline (``<run>/rot<k>/``), plus clip accuracy.
3. The final head on everything, thresholds from all negatives, ONNX with parity check,
   written to ``--out`` with ``<run>/summary.json`` for the model card.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="shared data root (urbansound8k/, sesa/, negatives/, "
                        "pretrained/mn04_as.npz, pretrained/audioset_ontology.json)")
    parser.add_argument("--folder", metavar="DIR", action="append", default=[],
                        help="your own folder-per-class data (<DIR>/<label>/*.wav); a folder "
                             "named 'background' holds negatives (repeatable)")
    parser.add_argument("--weights", help="mn04_as.npz (default: <data>/pretrained/mn04_as.npz "
                        "when it exists, else the copy shipped in export/data/)")
    parser.add_argument("--run", required=True, help="run folder (cache, rotations, summary)")
    parser.add_argument("--workers", type=int, default=2, help="processes for the trunk cache")
    parser.add_argument("--variants", type=int, default=3,
                        help="versions of every clip: clean + augmented (default: 3)")
    parser.add_argument("--synthetic", type=int, default=150,
                        help="synthetic noise clips as extra background (default: 150)")
    parser.add_argument("--folds", type=int, nargs="+", default=None,
                        help="UrbanSound8K folds to use (default: every fold present)")
    parser.add_argument("--limit", type=int, default=0,
                        help="at most N clips per kind (0 = all; for quick runs)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lstm-units", type=int, default=128)
    parser.add_argument("--background-weight", type=float, default=1.0)
    parser.add_argument("--floor", type=float, default=0.7,
                        help="lowest on-threshold (default: %(default)s)")
    parser.add_argument("--margin", type=float, default=0.05,
                        help="on-threshold = highest smoothed negative score + margin")
    parser.add_argument("--no-gate", action="store_true",
                        help="no AudioSet gate: thresholds from the training negatives alone")
    parser.add_argument("--gate-threshold", type=float, default=None,
                        help="on-threshold of every label with the gate "
                             "(default: export.pretrained.GATE_THRESHOLD)")
    parser.add_argument("--ontology", help="AudioSet ontology JSON (default: <data>/pretrained/"
                        "audioset_ontology.json when it exists, else the shipped copy)")
    parser.add_argument("--crossval", action="store_true", help="run the four rotations")
    parser.add_argument("--rotations", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--eval-only", action="store_true",
                        help="only judge the rotation models already in --run again (after a "
                             "change of the daemon's decisions): rot<k>/model.onnx through "
                             "python -m export eval, summary.json updated; no training")
    parser.add_argument("--no-stream-eval", action="store_true",
                        help="export each rotation model but skip its daemon replay (judge it "
                             "later, e.g. in another process, with --eval-only)")
    parser.add_argument("--out", help="write the final model here (skip: no final model)")
    parser.add_argument("--model-version", default="dev")
    parser.add_argument("--seed", type=int, default=0)


def _cache_part(job):
    data, folders, labels, run, part, nparts, variants, synthetic, seed, folds, limit = job
    from . import pretrained as P

    P.set_labels(labels)
    samples = P.collect(data, folds=folds, limit=limit, folders=folders)
    session = P.open_session(Path(run) / P.CACHE_TRUNK)
    pools: dict[int, list] = {}
    for s in samples:
        if s.label == P.BACKGROUND:
            pools.setdefault(s.group, []).append(P.read(s))
    indices = [i for i in range(len(samples)) if i % nparts == part]
    cache = P.build_cache(samples, indices, P.model_frontend(), session, variants,
                                    pools, seed=seed, n_synthetic=synthetic if part == 0 else 0,
                                    progress=part == 0)
    path = Path(run) / f"cache{part}.npz"
    cache.save(path)
    return str(path)


def build_or_load_cache(args, weights, labels) -> "object":
    """The frozen-trunk cache (:class:`export.pretrained.Cache`), built by ``--workers``
    processes, or reused when ``<run>/cache.json`` records the same settings."""
    from . import pretrained as P

    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    settings = {"variants": args.variants, "synthetic": args.synthetic, "seed": args.seed,
                "folds": args.folds, "limit": args.limit, "workers": args.workers,
                **P.cache_settings()}
    if args.folder:
        settings.update(folders=[str(Path(f).resolve()) for f in args.folder],
                        labels=list(labels))
    stamp = run / "cache.json"
    parts = [run / f"cache{i}.npz" for i in range(args.workers)]
    if (stamp.is_file() and json.loads(stamp.read_text()) == settings
            and all(p.is_file() for p in parts)):
        logger.info("reusing the cache cache*.npz in %s (same settings)", run)
    else:
        t0 = time.time()
        P.write_cache_trunk(weights, run / P.CACHE_TRUNK)
        jobs = [(args.data, args.folder, labels, str(run), i, args.workers, args.variants,
                 args.synthetic, args.seed, args.folds, args.limit) for i in range(args.workers)]
        if args.workers == 1:
            _cache_part(jobs[0])
        else:
            import multiprocessing as mp
            with mp.get_context("spawn").Pool(args.workers) as pool:
                pool.map(_cache_part, jobs)
        stamp.write_text(json.dumps(settings))
        logger.info("cache*.npz built in %.0f s", time.time() - t0)
    return P.load_cache(parts)


def policy_thresholds(P, cache, head, rows_neg, floor, margin):
    """On-thresholds from the smoothed peaks of the calibration negatives (all variants)."""
    scores = P.head_scores(head, cache, rows_neg)
    index = {r: k for k, r in enumerate(rows_neg)}
    keys = cache.sample[rows_neg] * 10 + cache.variant[rows_neg]
    peaks = []
    for key in np.unique(keys):
        rows = rows_neg[keys == key]
        peaks.append(P.smoothed_max(scores[[index[r] for r in rows]]))
    thr = P.thresholds_from_negatives(np.array(peaks), floor, margin)
    return {label: round(float(t), 3) for label, t in zip(P.LABELS, thr)
            if label != P.BACKGROUND}


def fit(args, P, cache, samples, rows, seed, ontology=None):
    """Head, on-thresholds, training history and gate rules ({} without a gate) from the
    cache ``rows``."""
    cfg = P.HeadConfig(epochs=args.epochs, lstm_units=args.lstm_units,
                       background_weight=args.background_weight, seed=seed)
    head, history = P.train_head(cache, rows, cfg, verbose=2)
    if ontology is not None:
        gate = P.fit_gate(samples, cache, rows, ontology)
        threshold = P.GATE_THRESHOLD if args.gate_threshold is None else args.gate_threshold
        return head, {label: threshold for label in gate}, history, gate
    is_bg = np.array([samples[i].label == P.BACKGROUND if i >= 0 else True
                      for i in cache.sample[rows]])
    thresholds = policy_thresholds(P, cache, head, rows[is_bg], args.floor, args.margin)
    return head, thresholds, history, {}


def judge_rotation(path: Path, data, rot: int, limit: int, out: Path, folders=()) -> dict:
    """Stream-evaluate one rotation model (gate on, and off from the same replay) into
    ``out``; the summary entries ``stream`` / ``stream_nogate``."""
    from .stream_eval import evaluate, markdown, plot

    # one replay judges the model as shipped and, from the events before the gate, as it
    # would be with events.audioset_gate = false
    result = evaluate(path, data, [rot], limit=limit, folders=folders)
    off = result.pop("gate_off", None)
    results = [("stream", result)] + ([("stream_nogate", {**result, **off})] if off else [])
    entry = {}
    for name, res in results:
        (out / f"{name}.json").write_text(json.dumps(res, indent=1))
        (out / f"{name}.md").write_text(markdown(res))
        plot(res, out / f"{name}.png")
        entry[name] = {k: res[k] for k in ("labelled", "everyday", "room_noise")}
    return entry


def update_summary(run_dir: Path, rot: int, entry: dict) -> None:
    """Merge ``entry`` into rotation ``rot`` of ``summary.json`` when the summary has that
    rotation (under a lock: several ``--eval-only`` processes may finish at once)."""
    import fcntl

    with open(run_dir / "summary.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = run_dir / "summary.json"
        summary = json.loads(path.read_text())
        if str(rot) not in summary.get("rotations", {}):
            return
        summary["rotations"][str(rot)].update(entry)
        path.write_text(json.dumps(summary, indent=1, default=str))


def reevaluate(args) -> int:
    from detector.errors import ConfigError

    run_dir = Path(args.run)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise ConfigError(f"--eval-only: {summary_path} does not exist; train with --crossval")
    for rot in args.rotations:
        model = run_dir / f"rot{rot}" / "model.onnx"
        if not model.is_file():
            raise ConfigError(f"--eval-only: rotation {rot} has no model in {run_dir}")
        t0 = time.time()
        update_summary(run_dir, rot, judge_rotation(model, args.data, rot, args.limit,
                                                    model.parent, args.folder))
        logger.info("rotation %d judged again in %.0f s", rot, time.time() - t0)
    return 0


SHIPPED = Path(__file__).resolve().parent / "data"
"""The released mn04 AudioSet weights (MIT) and the AudioSet ontology (CC BY-SA 4.0), shipped
so that training on your own folder needs nothing else (export/data/README.md)."""


def pretrained_file(given: str | None, data: Path | None, name: str) -> Path:
    """``given``, else ``<data>/pretrained/<name>`` when it exists, else the shipped copy."""
    if given:
        return Path(given)
    if data is not None and (data / "pretrained" / name).is_file():
        return data / "pretrained" / name
    return SHIPPED / name


def run(args) -> int:
    if args.eval_only:
        return reevaluate(args)
    from . import pretrained as P
    from .mn04 import load_weights

    from detector.errors import ConfigError

    if not args.data and not args.folder:
        raise ConfigError("no data: pass --data DIR (the shared data layout) and/or "
                          "--folder DIR (your own <DIR>/<label>/*.wav)")
    data = Path(args.data) if args.data else None
    weights = load_weights(pretrained_file(args.weights, data, "mn04_as.npz"))
    samples = P.collect(data, folds=args.folds, limit=args.limit, folders=args.folder)
    labels = P.labels_of(samples)
    if not labels:
        raise ConfigError("the data holds no labelled clips (only background)")
    P.set_labels(labels)
    ontology = None
    if not args.no_gate:
        from detector.model.gate import audioset_classes

        from .support import load_ontology, ontology_support
        path = pretrained_file(args.ontology, data, "audioset_ontology.json")
        try:
            nodes = load_ontology(path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"the AudioSet ontology {path} cannot be read ({exc}); pass "
                              "--ontology FILE, or --no-gate for a model without the gate"
                              ) from None
        ontology = ontology_support(nodes, audioset_classes())
    cache = build_or_load_cache(args, weights, labels)
    group = np.array([samples[i].group if i >= 0 else -1 for i in cache.sample])
    summary: dict = {"settings": {k: v for k, v in vars(args).items() if k != "func"},
                     "rotations": {}}
    run_dir = Path(args.run)
    note = P.LICENSE_NOTE if data is not None else P.OWN_DATA_NOTE
    if args.crossval:
        for rot in args.rotations:
            t0 = time.time()
            train = np.where(group != rot)[0]
            head, thresholds, _, gate = fit(args, P, cache, samples, train, args.seed,
                                            ontology)
            # clip accuracy on the regular grid only (comparable with earlier recipes)
            test = np.where((group == rot) & (cache.variant == 0) & ~cache.onset)[0]
            probs = P.head_scores(head, cache, test)
            groups = P.clip_groups(cache, test)
            index = {r: k for k, r in enumerate(test)}
            acc = P.clip_accuracy(samples, cache, groups, probs, index)
            entry = {"clip_accuracy": acc, "thresholds": thresholds, "gate": gate,
                     "train_seconds": round(time.time() - t0, 1),
                     "held_out_folds": list(P.FOLD_GROUPS[rot]),
                     "held_out_kinds": list(P.KIND_GROUPS[rot])}
            logger.info("rotation %d: clip accuracy %.3f", rot, acc)
            out = run_dir / f"rot{rot}"
            meta = P.metadata(f"{args.model_version}-rot{rot}",
                              f"rotation {rot} of {run_dir.name}", thresholds, gate, note)
            path, _ = P.export_model(weights, head, meta, out / "model.onnx")
            if not args.no_stream_eval:
                entry.update(judge_rotation(path, data, rot, args.limit, out, args.folder))
            summary["rotations"][str(rot)] = entry
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    if args.out:
        t0 = time.time()
        rows = np.arange(len(cache.label))
        head, thresholds, history, gate = fit(args, P, cache, samples, rows, args.seed,
                                              ontology)
        folds = sorted({s.path.parent.name.replace("fold", "") for s in samples
                        if s.kind.startswith("us8k:")}, key=int)
        parts = [f"{len(samples)} clips"]
        if data is not None:
            parts[:0] = [f"UrbanSound8K folds {','.join(folds)} (incl. metadata/rebuilt.txt), "
                         "SESA, negatives/ (" + ", ".join(sorted(
                             {s.kind.split(':')[0] for s in samples if s.label == P.BACKGROUND
                              and s.kind not in ('sesa:casual',) and not
                              s.kind.startswith('folder:')})) + "), synthetic noise"]
        if args.folder:
            parts.insert(-1, "own folders (" + ", ".join(Path(f).name for f in args.folder) + ")")
        trained_on = "; ".join(parts)
        meta = P.metadata(args.model_version, trained_on, thresholds, gate, note)
        frontend = P.model_frontend()
        step = max(1, len(samples) // 16)
        feats = [frontend(P.read(samples[i]))[:frontend.frames] for i in range(0, len(samples), step)]
        check = np.stack([f for f in feats if len(f) == frontend.frames])
        path, diff = P.export_model(weights, head, meta, args.out, check)
        summary["final"] = {"thresholds": thresholds, "gate": gate, "labels": list(P.LABELS),
                            "train_seconds": round(time.time() - t0, 1), "onnx_parity": diff,
                            "history": {k: [float(x) for x in v] for k, v in history.items()},
                            "windows": int(len(rows)), "clips": len(samples), "path": str(path)}
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        logger.info("model %s written to %s", args.model_version, path)
    return 0


def main(argv=None) -> int:
    import sys

    from ._cli import run_command
    return run_command(sys.modules[__name__], "python -m export train", argv)


if __name__ == "__main__":
    raise SystemExit(main())
