"""``python -m export streaming``: the streaming model (chunk trunk + stateful LSTM), one command.

    python -m export streaming --data ../shared/data --run runs/streaming \
        --crossval --out detector/models/default.onnx --model-version 2.0.0

1. ``<run>/chunk_trunk.onnx`` and ``<run>/chunks*.npz``: every clip (clean + augmented) cut
   into 0.25 s chunks through the frozen trunk, once (reused when the settings match).
2. ``--crossval``: the four rotations of :mod:`export.pretrained` (a fold group *and* whole
   everyday kinds held out); per rotation the head is trained on the rest, thresholds come
   from the rotation's training negatives, the step model is exported and judged by
   ``stream-eval`` through the daemon's pipeline (``<run>/rot<k>/``).
3. The final head on everything, thresholds from all negatives, the step model with its
   stream parity check, written to ``--out``; ``<run>/summary.json`` for the model card.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from .pretrained_cli import build_or_load_cache

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="shared data root (urbansound8k/, sesa/, "
                        "negatives/, pretrained/mn04_as.npz)")
    parser.add_argument("--weights", help="mn04_as.npz (default: <data>/pretrained/mn04_as.npz)")
    parser.add_argument("--run", required=True, help="run folder (cache, rotations, summary)")
    parser.add_argument("--workers", type=int, default=2, help="processes for the chunk cache")
    parser.add_argument("--variants", type=int, default=3,
                        help="versions of every clip: clean + augmented (default: 3)")
    parser.add_argument("--synthetic", type=int, default=150,
                        help="synthetic noise clips as extra background (default: 150)")
    parser.add_argument("--folds", type=int, nargs="+", default=None)
    parser.add_argument("--limit", type=int, default=0,
                        help="at most N clips per kind (0 = all; for quick runs)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lstm-units", type=int, default=128)
    parser.add_argument("--seq-length", type=int, default=64,
                        help="chunks per training sequence (default: 64 = 16 s)")
    parser.add_argument("--passes", type=float, default=2.0,
                        help="times each training chunk is seen per epoch (default: 2)")
    parser.add_argument("--background-weight", type=float, default=1.0)
    parser.add_argument("--floor", type=float, default=0.7, help="lowest on-threshold")
    parser.add_argument("--margin", type=float, default=0.05,
                        help="on-threshold = highest smoothed negative score + margin")
    parser.add_argument("--crossval", action="store_true", help="run the rotations")
    parser.add_argument("--rotations", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--no-stream-eval", action="store_true",
                        help="skip the daemon replay of each rotation (offline numbers only)")
    parser.add_argument("--summary", default="summary.json",
                        help="summary file name inside --run (parallel runs: one each)")
    parser.add_argument("--out", help="write the final model here (skip: no final model)")
    parser.add_argument("--model-version", default="2.0.0")
    parser.add_argument("--seed", type=int, default=0)


def fit(args, cache, samples, rows, seed):
    from . import pretrained as P
    from . import streaming as S

    cfg = S.StreamHeadConfig(epochs=args.epochs, lstm_units=args.lstm_units,
                             seq_length=args.seq_length, passes=args.passes,
                             background_weight=args.background_weight, seed=seed)
    head, history = S.train_stream_head(cache, rows, cfg, verbose=2)
    is_bg = np.array([samples[i].label == P.BACKGROUND if i >= 0 else True
                      for i in cache.sample[rows]])
    thr = S.thresholds(head, cache, rows[is_bg], args.floor, args.margin)
    return head, thr, history


def run(args) -> int:
    from . import pretrained as P
    from . import streaming as S
    from .mn04 import load_weights

    data = Path(args.data)
    weights = load_weights(args.weights or data / "pretrained" / "mn04_as.npz")
    samples = P.collect(data, folds=args.folds, limit=args.limit)
    cache = build_or_load_cache(args, weights, "export.streaming")
    group = np.array([samples[i].group if i >= 0 else -1 for i in cache.sample])
    run_dir = Path(args.run)
    summary_path = run_dir / args.summary
    summary: dict = {"settings": {k: v for k, v in vars(args).items() if k != "func"},
                     "recipe": "streaming", "rotations": {}}
    if args.crossval:
        from .stream_eval import evaluate, markdown, plot
        for rot in args.rotations:
            t0 = time.time()
            train = np.where(group != rot)[0]
            head, thr, _ = fit(args, cache, samples, train, args.seed)
            test = np.where((group == rot) & (cache.variant == 0))[0]
            offline = S.offline_report(samples, head, cache, test, thr)
            entry = {"clip_accuracy": offline["clip_accuracy"], "offline": offline,
                     "thresholds": thr, "train_seconds": round(time.time() - t0, 1),
                     "held_out_folds": list(P.FOLD_GROUPS[rot]),
                     "held_out_kinds": list(P.KIND_GROUPS[rot])}
            logger.info("rotation %d: clip accuracy %.3f, offline recall %.3f, negatives "
                        "firing %.3f", rot, offline["clip_accuracy"] or float("nan"),
                        offline["recall"] or float("nan"), offline["neg_fire"] or float("nan"))
            if not args.no_stream_eval:
                out = run_dir / f"rot{rot}"
                meta = S.metadata(f"{args.model_version}-rot{rot}",
                                  f"rotation {rot} of {run_dir.name}", thr)
                path, _ = S.export_step_model(weights, head, meta, out / "model.onnx")
                head.save(out / "head.keras")  # for re-deciding thresholds without retraining
                result = evaluate(path, data, [rot], limit=args.limit)
                (out / "stream.json").write_text(json.dumps(result, indent=1))
                (out / "stream.md").write_text(markdown(result))
                plot(result, out / "stream.png")
                entry["stream"] = {k: result[k] for k in ("labelled", "everyday", "room_noise")}
            summary["rotations"][str(rot)] = entry
            summary_path.write_text(json.dumps(summary, indent=1, default=str))
    if args.out:
        t0 = time.time()
        rows = np.arange(len(cache.label))
        head, thr, history = fit(args, cache, samples, rows, args.seed)
        folds = sorted({s.path.parent.name.replace("fold", "") for s in samples
                        if s.kind.startswith("us8k:")}, key=int)
        trained_on = (f"UrbanSound8K folds {','.join(folds)} "
                      f"(incl. metadata/rebuilt.txt), SESA, negatives/ (DCASE 2016 office, "
                      f"ESC-50 kinds), synthetic noise; {len(samples)} clips")
        meta = S.metadata(args.model_version, trained_on, thr)
        frontend = P.model_frontend()
        step = max(1, len(samples) // 8)
        check = np.concatenate([frontend(P.read(samples[i])) for i in range(0, len(samples), step)])
        path, diff = S.export_step_model(weights, head, meta, args.out, check)
        head.save(run_dir / "final_head.keras")
        summary["final"] = {"thresholds": thr, "train_seconds": round(time.time() - t0, 1),
                            "onnx_stream_parity": diff,
                            "history": {k: [float(x) for x in v] for k, v in history.items()},
                            "chunks": int(len(rows)), "clips": len(samples), "path": str(path)}
        summary_path.write_text(json.dumps(summary, indent=1, default=str))
        logger.info("model %s written to %s", args.model_version, path)
    return 0


def main(argv=None) -> int:
    import sys

    from ._cli import run_command
    return run_command(sys.modules[__name__], "python -m export streaming", argv)


if __name__ == "__main__":
    raise SystemExit(main())
