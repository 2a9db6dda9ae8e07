"""Detection delay and event recall on REAL recordings, through the daemon's own logic.

    python bench/event_delay.py --urbansound8k ../shared/data/urbansound8k --folds 1 \
        --model runs/cv/fold1/model.onnx --name event_delay_fold1

Every UrbanSound8K slice of the chosen folds (its true extent, ``start``..``end``
from the metadata) is placed after ``--gap`` seconds of quiet room noise (-60 dBFS)
and replayed, as fast as possible on the stream clock, through
``detector.pipeline.Pipeline`` (streaming log-mel, the model with its calibrated
thresholds, ``EventTracker`` with the default ``[events]``). For each slice:

* hit = a ``start`` event of the slice's own label after its onset;
* delay = stream time of that event - onset (the 1 s window filling, the 0.25 s
  hop and the smoothing are all in it; the MQTT round trip, 5-15 ms p95, is not);
* wrong = any other label's ``start`` event.

Use a model that never trained on those folds (a cross-validation fold model) for
an honest number. Writes ``bench/results/<name>.json``, ``.md`` and a ``.png``
(delay histogram, recall per class).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from bench._common import machine, percentiles, save  # noqa: E402

SR = 16000


def epoch_seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def replay(model_path, audio: np.ndarray, tmp: Path) -> tuple[list[dict], float]:
    """Start events of ``audio`` through the daemon's pipeline, and the stream-clock origin."""
    import soundfile as sf

    from detector.audio.capture import FileSource
    from detector.config import config_from_dict
    from detector.model.classifier import Classifier
    from detector.pipeline import Pipeline

    wav = tmp / "stimulus.wav"
    sf.write(str(wav), audio, SR, subtype="PCM_16")
    config = config_from_dict({"model": {"intra_op_threads": 1},
                               "output": {"stdout_json": False, "log_level": "warning"}})
    classifier = replay.cache.get(str(model_path))
    if classifier is None:
        classifier = replay.cache[str(model_path)] = Classifier(model_path, ("CPUExecutionProvider",), 1)
    source = FileSource(wav, SR, realtime=False, block_seconds=config.audio.block_seconds)
    pipeline = Pipeline(config, source, classifier, [], live=False, record_scores=True,
                        node="bench")
    pipeline.run()
    if pipeline.error is not None:
        raise pipeline.error
    return [e for e in pipeline.events if e["type"] == "start"], pipeline.started_at or 0.0


replay.cache = {}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urbansound8k", required=True, metavar="DIR")
    parser.add_argument("--folds", type=int, nargs="+", required=True)
    parser.add_argument("--model", default=None, help="ONNX model (default: the shipped one)")
    parser.add_argument("--gap", type=float, default=1.5, help="quiet seconds before the sound")
    parser.add_argument("--limit", type=int, default=0, help="at most N slices per class (0 = all)")
    parser.add_argument("--name", default="event_delay")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import soundfile as sf
    from tqdm import tqdm

    from detector.model.classifier import default_model_path
    from export.datasets import load_urbansound8k

    model = Path(args.model) if args.model else default_model_path()
    clips = load_urbansound8k(args.urbansound8k, folds=args.folds)
    if args.limit:
        per: dict[str, int] = {}
        kept = []
        for clip in clips:
            if per.get(clip.label, 0) < args.limit:
                per[clip.label] = per.get(clip.label, 0) + 1
                kept.append(clip)
        clips = kept
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-delay-") as tmp:
        for clip in tqdm(clips, desc="replaying", unit="clip"):
            audio, sr = sf.read(str(clip.path), dtype="float32", always_2d=True)
            if sr != SR:
                raise SystemExit(f"{clip.path}: {sr} Hz, expected {SR} (the shared data layout)")
            audio = audio.mean(axis=1)
            if clip.true_duration:
                audio = audio[:max(1, int(round(clip.true_duration * SR)))]
            quiet = (10 ** (-60 / 20)) * rng.standard_normal(int(args.gap * SR)).astype(np.float32)
            tail = (10 ** (-60 / 20)) * rng.standard_normal(SR).astype(np.float32)
            events, origin = replay(model, np.concatenate([quiet, audio, tail]), Path(tmp))
            times = [(e["label"], epoch_seconds(e["start"]) - origin - args.gap) for e in events]
            own = [t for label, t in times if label == clip.label and t >= -0.25]
            rows.append({"file": clip.path.name, "label": clip.label,
                         "seconds": round(len(audio) / SR, 3),
                         "delay_s": round(min(own), 3) if own else None,
                         "other_labels": sorted({label for label, _ in times
                                                 if label != clip.label})})
    labels = sorted({r["label"] for r in rows})
    delays = [r["delay_s"] for r in rows if r["delay_s"] is not None]
    per_class = {}
    for label in labels:
        mine = [r for r in rows if r["label"] == label]
        hits = [r["delay_s"] for r in mine if r["delay_s"] is not None]
        per_class[label] = {"clips": len(mine), "recall": round(len(hits) / len(mine), 4),
                            "delay_p50_s": round(float(np.median(hits)), 3) if hits else None,
                            "wrong_label_clips": sum(bool(r["other_labels"]) for r in mine)}
    result = {"machine": machine(), "model": str(model), "folds": args.folds, "gap_s": args.gap,
              "clips": len(rows), "recall": round(len(delays) / max(1, len(rows)), 4),
              "wrong_label_rate": round(sum(bool(r["other_labels"]) for r in rows)
                                        / max(1, len(rows)), 4),
              "delay_s": percentiles(delays) if delays else None,
              "within_0.4_s": round(sum(d <= 0.4 for d in delays) / max(1, len(rows)), 4),
              "per_class": per_class, "rows": rows}
    md = [f"# Detection delay on real UrbanSound8K slices (folds {args.folds})", "",
          f"Model `{model.name}`; {len(rows)} slices after {args.gap} s of -60 dBFS noise, "
          "replayed through the daemon's pipeline with the model's thresholds and default "
          f"`[events]`. Machine: {result['machine']}.", "",
          f"- own label fires (event recall): **{100 * result['recall']:.1f}%**; within 0.4 s "
          f"of the onset: {100 * result['within_0.4_s']:.1f}% of all slices",
          f"- delay of those events: " + (", ".join(f"{k} {v:.2f} s" for k, v in
                                                    result["delay_s"].items())
                                          if delays else "none"),
          f"- slices where another label fired: {100 * result['wrong_label_rate']:.1f}%", "",
          "| class | slices | recall | median delay | other label fired |", "|---|---|---|---|---|"]
    for label, c in per_class.items():
        md.append(f"| {label} | {c['clips']} | {100 * c['recall']:.0f}% | "
                  + (f"{c['delay_p50_s']:.2f} s" if c["delay_p50_s"] is not None else "-")
                  + f" | {c['wrong_label_clips']} |")
    out_dir = Path(args.out) if args.out else None
    path = save(args.name, result, "\n".join(md) + "\n", out_dir)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG (pip install -e '.[analysis]')")
    else:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        axes[0].hist(delays, bins=np.arange(-0.25, 4.01, 0.125), color="tab:blue")
        axes[0].axvline(0.4, color="tab:red", ls="--", label="0.4 s")
        axes[0].set_xlabel("onset -> start event (s, stream clock)")
        axes[0].set_ylabel("slices")
        axes[0].legend()
        axes[0].set_title(f"delay of detected events (n={len(delays)})", fontsize=9)
        axes[1].bar(range(len(labels)), [per_class[x]["recall"] for x in labels])
        axes[1].set_xticks(range(len(labels)), labels, rotation=50, ha="right", fontsize=7)
        axes[1].set_ylim(0, 1)
        axes[1].set_title(f"event recall per class (all: {100 * result['recall']:.1f}%)",
                          fontsize=9)
        fig.tight_layout()
        fig.savefig(path.with_suffix(".png"), dpi=80)
        plt.close(fig)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
