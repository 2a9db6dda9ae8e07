"""Evaluate an ONNX model on labelled clips exactly as the daemon would hear them.

``python -m export evaluate --model M.onnx --dataset DIR [--folds 3] --json OUT.json``

No TensorFlow: audio is read with :func:`export.audio.load_audio` at the
model's sample rate, log-mels come from :func:`detector.features.make_frontend` (the
daemon's own front end, of the kind the model's metadata names) and scores from onnxruntime. For every clip:

1. the audio is cropped to its true extent (``end - start`` from the
   UrbanSound8K metadata: copies padded to 4 s by repetition are cut back; the
   original dataset already has the true length), and zero-padded to one model
   window if shorter (the daemon would hear silence around a short sound);
2. the model runs on sliding windows of ``frames`` columns every
   ``window_hop_seconds`` (the model's suggestion unless ``--window-hop``);
3. the clip score is the mean of the window scores; the prediction is the
   argmax over the labels the model and the dataset share (a model's
   ``background`` output cannot win against dataset classes). The argmax over
   all outputs is reported too, as ``accuracy_all_outputs``.

Results: JSON (accuracy, per-class precision/recall/F1, confusion, window
accuracy, per-fold accuracy, per-clip predictions) and a confusion-matrix PNG.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.errors import AudioError, ConfigError, DetectorError, ModelError
from detector.features import make_frontend
from detector.metadata import ModelMetadata

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- model

class OnnxScorer:
    """An onnxruntime session plus the metadata contract: windows in, scores out."""

    def __init__(self, path: str | Path, threads: int = 1,
                 providers: tuple[str, ...] = ("CPUExecutionProvider",)):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"model file {self.path} does not exist")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelError(f"cannot load model {self.path}: {reason}") from None
        props = self.session.get_modelmeta().custom_metadata_map
        self.meta = ModelMetadata.from_props(props, source=str(self.path))
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = inp.shape
        if len(shape) != 4:
            raise ModelError(f"model {self.path} input {inp.name} has shape {shape}; "
                             "expected [batch, frames, n_mels, 1]")
        frames, n_mels = shape[1], shape[2]
        if isinstance(frames, int) and frames != self.meta.frames:
            raise ModelError(f"model {self.path} input has {frames} frames but its metadata "
                             f"window_seconds={self.meta.window_seconds} means {self.meta.frames}")
        if isinstance(n_mels, int) and n_mels != self.meta.features.n_mels:
            raise ModelError(f"model {self.path} input has {n_mels} mel bands but its metadata "
                             f"says n_mels={self.meta.features.n_mels}")
        self.batch_fixed = isinstance(shape[0], int)
        self.logmel = make_frontend(self.meta)  # the front end the model names
        norm = self.meta.normalization
        self._mean = float(norm["mean"]) if norm else 0.0
        self._std = float(norm["std"]) if norm else 1.0

    def hop_frames(self, window_hop_seconds: float | None = None) -> int:
        """Log-mel columns between successive windows."""
        hop_s = window_hop_seconds if window_hop_seconds is not None \
            else self.meta.window_hop_seconds
        if not hop_s > 0:
            raise ConfigError(f"window hop {hop_s} s must be > 0")
        p = self.meta.features
        return max(1, int(round(hop_s * p.sample_rate / p.hop_length)))

    def windows(self, audio: np.ndarray, hop_frames: int) -> np.ndarray:
        """Mono audio at the model rate -> ``[n, frames, n_mels]`` log-mel windows.

        Audio shorter than one window is zero-padded (silence) to one window.
        """
        need = self.meta.window_samples
        if audio.shape[0] < need:
            audio = np.concatenate([audio, np.zeros(need - audio.shape[0], audio.dtype)])
        mel = self.logmel(audio)
        frames = self.meta.frames
        starts = range(0, mel.shape[0] - frames + 1, hop_frames)
        return np.stack([mel[s:s + frames] for s in starts])

    def scores(self, windows: np.ndarray, batch: int = 64) -> np.ndarray:
        """``[n, frames, n_mels]`` log-mel -> ``[n, n_classes]`` scores."""
        x = ((windows - self._mean) / self._std).astype(np.float32)[..., None]
        step = 1 if self.batch_fixed else batch
        out = [self.session.run(None, {self.input_name: x[i:i + step]})[0]
               for i in range(0, x.shape[0], step)]
        return np.concatenate(out, axis=0)


# --------------------------------------------------------------------------- data

def load_clips(dataset: str | Path, folds=None):
    """UrbanSound8K layout (``metadata/UrbanSound8K.csv``) or folder-per-class."""
    from export.datasets import load_folder_dataset, load_urbansound8k

    dataset = Path(dataset)
    if not dataset.is_dir():
        raise ConfigError(f"--dataset {dataset} is not a directory")
    if (dataset / "metadata" / "UrbanSound8K.csv").is_file():
        return load_urbansound8k(dataset, folds=folds)
    if folds:
        raise ConfigError(f"--folds needs the UrbanSound8K layout, but {dataset} has no "
                          "metadata/UrbanSound8K.csv (it is read as folder-per-class)")
    return load_folder_dataset(dataset)


def clip_audio(clip, sample_rate: int) -> np.ndarray:
    """The clip's real audio at ``sample_rate``, cropped to ``end - start`` if known."""
    from export.audio import load_audio

    audio = load_audio(clip.path, sample_rate)
    duration = getattr(clip, "true_duration", None)
    if duration is None and clip.start is not None and clip.end is not None:
        duration = max(0.0, clip.end - clip.start)
    if duration:
        audio = audio[:max(1, int(round(duration * sample_rate)))]
    return audio


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="clip", file=sys.stderr, disable=None)


# --------------------------------------------------------------------------- metrics

def classification_report(y_true: list[int], y_pred: list[int], labels: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/support, confusion (rows = truth)."""
    k = len(labels)
    confusion = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(y_true, y_pred):
        confusion[t, p] += 1
    n = int(confusion.sum())
    per_class = {}
    for i, label in enumerate(labels):
        tp = int(confusion[i, i])
        support = int(confusion[i].sum())
        predicted = int(confusion[:, i].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1,
                            "support": support}
    present = [label for label in labels if per_class[label]["support"]]
    return {
        "accuracy": float(np.trace(confusion) / n) if n else 0.0,
        "balanced_accuracy": float(np.mean([per_class[c]["recall"] for c in present]))
        if present else 0.0,
        "macro_f1": float(np.mean([per_class[c]["f1"] for c in present])) if present else 0.0,
        "per_class": per_class,
        "confusion": {"order": list(labels), "matrix": confusion.tolist(),
                      "rows": "true label", "columns": "predicted label"},
    }


# --------------------------------------------------------------------------- evaluate

@dataclass
class ClipResult:
    clip: object
    scores: np.ndarray          # mean over windows, all outputs
    window_correct: int
    n_windows: int


def evaluate(model_path: str | Path, dataset: str | Path | None = None, *, folds=None,
             clips=None, window_hop_seconds: float | None = None, skip_bad: bool = False,
             threads: int = 1, progress: bool = True, scorer: OnnxScorer | None = None) -> dict:
    """Evaluate ``model_path`` on ``dataset`` (or on ``clips``); return the result dict."""
    scorer = scorer or OnnxScorer(model_path, threads=threads)
    meta = scorer.meta
    if clips is None:
        if dataset is None:
            raise ConfigError("evaluate needs a dataset directory or a list of clips")
        clips = load_clips(dataset, folds)
    clips = list(clips)
    if not clips:
        raise ConfigError(f"no clips to evaluate in {dataset}")
    data_labels = sorted({c.label for c in clips})
    unknown = [label for label in data_labels if label not in meta.labels]
    if unknown:
        raise ConfigError(f"dataset labels {unknown} are not outputs of model {scorer.path} "
                          f"(it knows {list(meta.labels)}); evaluate on a dataset with the "
                          "model's classes or drop those folders")
    # Restricted labels in model output order.
    labels = [label for label in meta.labels if label in data_labels]
    restrict = np.array([meta.labels.index(label) for label in labels])
    hop = scorer.hop_frames(window_hop_seconds)
    sr = meta.features.sample_rate

    results: list[ClipResult] = []
    skipped: list[dict] = []
    for clip in _progress(clips, len(clips), "evaluate", progress):
        try:
            audio = clip_audio(clip, sr)
        except AudioError as exc:
            if not skip_bad:
                raise AudioError(f"{exc} (or pass --skip-bad to count it and continue)") \
                    from None
            logger.warning("skipping %s", exc)
            skipped.append({"path": _rel(clip.path, dataset), "error": str(exc)})
            continue
        window_scores = scorer.scores(scorer.windows(audio, hop))
        truth = labels.index(clip.label)
        win_pred = np.argmax(window_scores[:, restrict], axis=1)
        results.append(ClipResult(clip, window_scores.mean(axis=0),
                                  int(np.sum(win_pred == truth)), int(window_scores.shape[0])))
    if not results:
        raise AudioError(f"none of the {len(clips)} clips could be read")

    y_true = [labels.index(r.clip.label) for r in results]
    y_pred = [int(np.argmax(r.scores[restrict])) for r in results]
    all_pred = [meta.labels[int(np.argmax(r.scores))] for r in results]
    report = classification_report(y_true, y_pred, labels)
    n_windows = sum(r.n_windows for r in results)
    fold_ids = sorted({r.clip.fold for r in results if r.clip.fold is not None})
    by_fold = {}
    for fold in fold_ids:
        idx = [i for i, r in enumerate(results) if r.clip.fold == fold]
        by_fold[str(fold)] = {"n": len(idx), "accuracy":
                              float(np.mean([y_true[i] == y_pred[i] for i in idx]))}
    hop_s = hop * meta.features.hop_length / sr
    return {
        "accuracy": report["accuracy"],
        "accuracy_all_outputs": float(np.mean([p == r.clip.label
                                               for p, r in zip(all_pred, results)])),
        "balanced_accuracy": report["balanced_accuracy"],
        "macro_f1": report["macro_f1"],
        "n": len(results),
        "labels": labels,
        "per_class": report["per_class"],
        "confusion": report["confusion"],
        "window_accuracy": float(sum(r.window_correct for r in results) / n_windows),
        "n_windows": n_windows,
        "folds": fold_ids or None,
        "accuracy_by_fold": by_fold,
        "skipped": skipped,
        "n_skipped": len(skipped),
        "model": {"path": str(model_path), "version": meta.model_version,
                  "trained_on": meta.trained_on, "labels": list(meta.labels)},
        "dataset": str(dataset) if dataset is not None else None,
        "protocol": {
            "clip_score": "mean of window scores",
            "prediction": "argmax over the labels shared by model and dataset",
            "window_seconds": meta.window_seconds,
            "window_hop_seconds": hop_s,
            "crop": "true extent end-start from metadata when known",
            "short_clips": "zero-padded to one window",
        },
        "predictions": [{"path": _rel(r.clip.path, dataset), "label": r.clip.label,
                         "fold": r.clip.fold, "predicted": labels[p],
                         "score": round(float(r.scores[restrict][p]), 5)}
                        for r, p in zip(results, y_pred)],
    }


def _rel(path, root) -> str:
    try:
        return str(Path(path).relative_to(root)) if root is not None else Path(path).name
    except ValueError:
        return Path(path).name


def plot_confusion(result: dict, path: str | Path, title: str | None = None) -> Path:
    """Write the row-normalised confusion matrix (counts in the cells) as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = result["confusion"]["order"]
    matrix = np.asarray(result["confusion"]["matrix"], dtype=float)
    rows = matrix.sum(axis=1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = 2.5 + 0.6 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            if matrix[i, j]:
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    folds = result.get("folds")
    ax.set_title(title or (f"{result['model']['version']}: accuracy {result['accuracy']:.3f} "
                           f"(n={result['n']}{', folds ' + str(folds) if folds else ''})"),
                 fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def format_summary(result: dict) -> str:
    lines = [f"accuracy {result['accuracy']:.4f} on {result['n']} clips"
             f" (all outputs {result['accuracy_all_outputs']:.4f}, windows "
             f"{result['window_accuracy']:.4f}, macro F1 {result['macro_f1']:.4f})"]
    for fold, r in result["accuracy_by_fold"].items():
        lines.append(f"  fold {fold}: {r['accuracy']:.4f} (n={r['n']})")
    width = max(len(label) for label in result["labels"])
    lines.append(f"  {'label':<{width}}  precision recall    f1  support")
    for label, m in result["per_class"].items():
        lines.append(f"  {label:<{width}}  {m['precision']:9.3f} {m['recall']:6.3f} "
                     f"{m['f1']:5.3f} {m['support']:8d}")
    if result["n_skipped"]:
        lines.append(f"  skipped {result['n_skipped']} unreadable clips")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Evaluate an ONNX model on labelled clips through the daemon's own "
                          "log-mel code and sliding windows (no TensorFlow needed).")
    parser.add_argument("--model", required=True, type=Path, help="the .onnx model to evaluate")
    parser.add_argument("--dataset", required=True, type=Path,
                        help="UrbanSound8K folder (metadata/UrbanSound8K.csv + audio/foldN/) "
                             "or a folder per class")
    parser.add_argument("--folds", type=int, nargs="+",
                        help="official UrbanSound8K folds to evaluate (default: all present)")
    parser.add_argument("--json", type=Path, help="write the full result as JSON here")
    parser.add_argument("--png", type=Path, help="write the confusion matrix as PNG here "
                        "(default: next to --json)")
    parser.add_argument("--window-hop", type=float, default=None, metavar="SECONDS",
                        help="hop between model windows (default: the model's "
                             "window_hop_seconds)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="count unreadable clips in the JSON and continue instead of "
                             "stopping at the first one")
    parser.add_argument("--threads", type=int, default=1,
                        help="onnxruntime intra-op threads (default 1)")


def run(args: argparse.Namespace) -> int:
    try:
        result = evaluate(args.model, args.dataset, folds=args.folds,
                          window_hop_seconds=args.window_hop, skip_bad=args.skip_bad,
                          threads=args.threads)
        print(format_summary(result))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1) + "\n")
            print(f"wrote {args.json}")
        png = args.png or (args.json.with_suffix(".png") if args.json else None)
        if png:
            plot_confusion(result, png)
            print(f"wrote {png}")
    except DetectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    from export._cli import run_command

    return run_command(sys.modules[__name__], "python -m export.evaluate", argv)


if __name__ == "__main__":
    sys.exit(main())
