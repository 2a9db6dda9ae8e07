"""Classic baselines on UrbanSound8K, by the same official-fold protocol as the shipped model.

``python -m export baselines --data ../shared/data --out runs/baselines``

1. **feature-MLP**: the GTZAN-style feature table of ``sound-detector analyze``
   (chroma, RMS, spectral centroid/bandwidth/roll-off, ZCR, MFCC 1-20 means and
   variances; computed on each slice's true extent at 16 kHz), standardised on
   the training folds only, Dense 256-128-64 (the classic GTZAN tutorial).
2. **log-mel CNN**: a small Conv2D network on 1 s windows of the daemon's own
   log-mel front end (``detector.audio.features``); a clip's prediction is the mean of
   its window probabilities, as in the CNN+LSTM evaluation.
3. **CNN+LSTM from scratch**: the project's 0.3.0 model (Conv2D blocks pooling mostly
   along frequency -> bidirectional LSTM over time -> mean + max pooling), on the same
   windows as the CNN; the shipped model starts from a pretrained trunk instead
   (``python -m export train``).

Every available official fold is held out once (train on the others). The same
MLP and CNN are also trained on a random split of slices (clips shuffled across
folds, same sizes): slices of one recording then sit on both sides, which is
why random-split numbers in blog posts are too good.

Writes ``<out>/baselines.json`` and, with ``--results-dir`` (default
``bench/results``), ``baselines.json``, ``baselines.md`` and ``baselines.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from detector.errors import DetectorError
from detector.audio.features import AMIN, FeatureParams

from .datasets import URBANSOUND8K_LABELS, Clip, load_urbansound8k

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 1.0
"""CNN window length (the shipped model's window)."""
FLOOR_DB = float(10 * np.log10(AMIN))
"""Log-mel value of digital silence, used to pad slices shorter than a window."""


# ----------------------------------------------------------------------------- data

def find_us8k(data: Path) -> Path:
    """``data`` itself or ``data/urbansound8k``, whichever holds the official layout."""
    for root in (data, data / "urbansound8k"):
        if (root / "metadata" / "UrbanSound8K.csv").is_file():
            return root
    raise DetectorError(f"no UrbanSound8K found at {data} or {data / 'urbansound8k'} "
                        "(expected metadata/UrbanSound8K.csv); pass --data")


def _true_audio(clip: Clip, sr: int) -> np.ndarray:
    from .audio import load_audio

    y = load_audio(clip.path, sr)
    if clip.true_duration is not None:  # files were filled to 4 s by repeating content
        y = y[:max(2048, int(round(clip.true_duration * sr)))]
    return y


def feature_table(clips: list[Clip], cache_csv: Path, sr: int = 16000) -> tuple[np.ndarray, list[str], float]:
    """``(X [n, d], columns, seconds_per_clip)``; rows cached in ``cache_csv`` by file name."""
    from tqdm import tqdm

    from detector.cli import analysis

    columns = [c for c in analysis.NUMERIC_COLUMNS
               if not c.startswith(("harmony", "perceptr", "tempo"))]
    cached: dict[str, list[float]] = {}
    if cache_csv.is_file():
        with cache_csv.open(newline="") as fh:
            for row in csv.DictReader(fh):
                cached[row["filename"]] = [float(row[c]) for c in columns]
    rows, spent, computed = [], 0.0, 0
    for clip in tqdm(clips, desc="feature table", unit="clip"):
        key = clip.path.name
        if key not in cached:
            y = _true_audio(clip, sr)
            t0 = time.process_time()
            row = analysis.feature_row(analysis.analyze_signal(y, sr, extras=False), key)
            spent += time.process_time() - t0
            computed += 1
            cached[key] = [row[c] for c in columns]
        rows.append(cached[key])
    if computed:
        cache_csv.parent.mkdir(parents=True, exist_ok=True)
        with cache_csv.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["filename", *columns])
            for name, values in sorted(cached.items()):
                writer.writerow([name, *(f"{v:.8g}" for v in values)])
    return np.array(rows, dtype=np.float64), columns, (spent / computed if computed else math.nan)


def logmel_windows(clips: list[Clip], params: FeatureParams, cache_dir, hop_frames: int,
                   frames: int) -> list[np.ndarray]:
    """Per clip ``[n_windows, frames, n_mels]`` windows over the slice's true extent."""
    from .cache import load_features

    out = []
    for clip, feats in zip(clips, load_features(clips, params, cache_dir)):
        valid = feats.shape[0]
        if clip.true_duration is not None:
            valid = max(1, min(valid, params.frames_for(
                max(params.n_fft, int(round(clip.true_duration * params.sample_rate))))))
        feats = feats[:valid]
        if valid < frames:  # centre a short slice in silence
            padded = np.full((frames, feats.shape[1]), FLOOR_DB, dtype=np.float32)
            left = (frames - valid) // 2
            padded[left:left + valid] = feats
            out.append(padded[None])
            continue
        starts = list(range(0, valid - frames + 1, hop_frames))
        if starts[-1] != valid - frames:
            starts.append(valid - frames)
        out.append(np.stack([feats[s:s + frames] for s in starts]))
    return out


# ----------------------------------------------------------------------------- models

def build_mlp(n_features: int, n_classes: int):
    import keras
    from keras import layers

    inputs = keras.Input(shape=(n_features,), name="features")
    x = inputs
    for units in (256, 128, 64):
        x = layers.Dense(units, activation="relu")(x)
        x = layers.Dropout(0.3)(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name="feature_mlp")


def build_cnn(frames: int, n_mels: int, n_classes: int, mean: float, std: float):
    import keras
    from keras import layers

    inputs = keras.Input(shape=(frames, n_mels, 1), name="logmel")
    x = layers.Normalization(mean=mean, variance=std ** 2)(inputs)
    for n_filters in (8, 16, 32, 32):
        x = layers.Conv2D(n_filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3)(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name="logmel_cnn")


def build_crnn(frames: int, n_mels: int, n_classes: int, mean: float, std: float):
    """The from-scratch CNN+LSTM of model 0.3.0 (about 400 k parameters)."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(frames, n_mels, 1), name="logmel")
    x = layers.Normalization(mean=mean, variance=std ** 2)(inputs)
    for n_filters, pool in zip((24, 48, 96, 128), ((2, 2), (2, 2), (1, 2), (1, 2))):
        x = layers.Conv2D(n_filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D(pool)(x)
    x = layers.Reshape((x.shape[1], x.shape[2] * x.shape[3]))(x)
    x = layers.Dropout(0.3)(layers.ReLU()(layers.Dense(128)(x)))
    x = layers.Bidirectional(layers.LSTM(64, return_sequences=True))(x)
    x = layers.Concatenate()([layers.GlobalAveragePooling1D()(x), layers.GlobalMaxPooling1D()(x)])
    outputs = layers.Dense(n_classes, activation="softmax", name="classes")(layers.Dropout(0.3)(x))
    return keras.Model(inputs, outputs, name="crnn")


def _compile(model, learning_rate: float):
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def train_mlp(X, y, train_idx, test_idx, n_classes, epochs, seed, verbose):
    import keras

    keras.utils.set_random_seed(seed)
    mean = X[train_idx].mean(axis=0)
    std = X[train_idx].std(axis=0)
    std[std == 0] = 1.0  # constant on the training folds: leave it centred only
    Xs = ((X - mean) / std).astype(np.float32)
    model = _compile(build_mlp(X.shape[1], n_classes), 1e-3)
    model.fit(Xs[train_idx], y[train_idx], epochs=epochs, batch_size=64, verbose=verbose)
    probs = model.predict(Xs[test_idx], batch_size=512, verbose=0)
    return float(np.mean(np.argmax(probs, axis=1) == y[test_idx])), model


def train_cnn(windows, y, train_idx, test_idx, n_classes, epochs, seed, verbose,
              build=build_cnn):
    import keras

    keras.utils.set_random_seed(seed)
    Xtr = np.concatenate([windows[i] for i in train_idx])[..., None]
    ytr = np.concatenate([np.full(len(windows[i]), y[i]) for i in train_idx])
    model = _compile(build(Xtr.shape[1], Xtr.shape[2], n_classes,
                               float(Xtr.mean()), float(Xtr.std())), 2e-3)
    model.fit(Xtr, ytr, epochs=epochs, batch_size=64, shuffle=True, verbose=verbose)
    Xte = np.concatenate([windows[i] for i in test_idx])[..., None]
    probs = model.predict(Xte, batch_size=256, verbose=0)
    bounds = np.cumsum([0] + [len(windows[i]) for i in test_idx])
    clip_pred = [int(np.argmax(probs[bounds[k]:bounds[k + 1]].mean(axis=0)))
                 for k in range(len(test_idx))]
    win_truth = np.concatenate([np.full(len(windows[i]), y[i]) for i in test_idx])
    return (float(np.mean(np.array(clip_pred) == y[test_idx])),
            float(np.mean(np.argmax(probs, axis=1) == win_truth)), model)


def onnx_cost(model, input_shape: tuple[int, ...], path: Path, repeats: int = 200) -> dict:
    """Export ``model`` with tf2onnx; size, parameters and per-window onnxruntime time (1 thread)."""
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, *input_shape), tf.float32, name="input"),)
    model.output_names = ["scores"]
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(proto.SerializeToString())
    return {"params": int(model.count_params()), **session_cost(path, repeats)}


def session_cost(path: Path, repeats: int = 200) -> dict:
    """ONNX file size and per-window (batch 1) inference time with 1 onnxruntime thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    shape = [1 if not isinstance(d, int) else d for d in inp.shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(10):
        session.run(None, {inp.name: x})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, {inp.name: x})
        times.append((time.perf_counter() - t0) * 1000)
    return {"onnx_bytes": path.stat().st_size, "window_ms_p50": float(np.percentile(times, 50)),
            "window_ms_p95": float(np.percentile(times, 95))}


def onnx_params(path: Path) -> int:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return int(sum(numpy_helper.to_array(t).size for t in model.graph.initializer))


# ----------------------------------------------------------------------------- protocol

def official_splits(folds: np.ndarray):
    for f in sorted(set(folds.tolist())):
        yield f"fold{f}", np.flatnonzero(folds != f), np.flatnonzero(folds == f)


def random_splits(folds: np.ndarray, seed: int, rotations: int):
    """Same test sizes as the official folds, but clips shuffled across folds."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(folds))
    sizes = [int(np.sum(folds == f)) for f in sorted(set(folds.tolist()))]
    bounds = np.cumsum([0] + sizes)
    for k in range(min(rotations, len(sizes))):
        test = np.sort(order[bounds[k]:bounds[k + 1]])
        train = np.setdiff1d(np.arange(len(folds)), test)
        yield f"random{k + 1}", train, test


def summarise(per_split: dict) -> dict:
    values = list(per_split.values())
    return {"per_split": per_split, "mean": float(np.mean(values)),
            "std": float(np.std(values)), "n_splits": len(values)}


# ----------------------------------------------------------------------------- report

def write_report(result: dict, results_dir: Path) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "baselines.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"UrbanSound8K subset (folds {result['folds']}, {result['n_clips']} clips), "
        f"clip accuracy over 10 classes; {result['machine']}, {result['date']}.",
        f"Command: `{result['command']}`", "",
        "| model | split | " + " | ".join(f"test set {k + 1}" for k in
                                            range(len(result["split_names"])))
        + " | mean ± std | params "
        "| ONNX | ms/window (1 thread, p50) |",
        "|---|---|" + "---|" * len(result["split_names"]) + "---|---|---|---|",
    ]
    for name, entry in result["models"].items():
        cost = entry.get("cost", {})
        for split in ("official", "random"):
            if split not in entry:
                continue
            s = entry[split]
            if split == "official":  # align by fold name (a row may lack a fold)
                values = [s["per_split"].get(k) for k in result["split_names"]]
            else:
                values = list(s["per_split"].values())
                values += [None] * (len(result["split_names"]) - len(values))
            cells = [f"{100 * v:.1f}" if v is not None else "–" for v in values]
            lines.append(
                f"| {name} | {split} | " + " | ".join(cells) +
                f" | {100 * s['mean']:.1f} ± {100 * s['std']:.1f} | "
                f"{cost.get('params', '–')} | "
                + (f"{cost['onnx_bytes'] / 1024:.0f} KB" if "onnx_bytes" in cost else "–")
                + " | " + (f"{cost['window_ms_p50']:.2f}" if "window_ms_p50" in cost else "–")
                + " |")
    lines += ["", f"Test set k: official split = fold {', '.join(map(str, result['folds']))} "
              "held out in turn (train on the others); random split = part k of the same "
              "clips shuffled across folds (same sizes), so slices of one recording land on "
              "both sides."]
    for name, entry in result["models"].items():
        if "note" in entry:
            lines.append(f"- {name}: {entry['note']}")
    (results_dir / "baselines.md").write_text("\n".join(lines) + "\n")
    plot_bars(result, results_dir / "baselines.png")


def plot_bars(result: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    names = list(result["models"])
    fig = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    ax = fig.subplots()
    width = 0.38
    x = np.arange(len(names))
    for offset, split, colour in ((-width / 2, "official", "tab:blue"),
                                  (width / 2, "random", "tab:orange")):
        means = [result["models"][n].get(split, {}).get("mean", np.nan) * 100 for n in names]
        stds = [result["models"][n].get(split, {}).get("std", 0.0) * 100 for n in names]
        bars = ax.bar(x + offset, means, width, yerr=stds, capsize=4, color=colour,
                      label="official folds (honest)" if split == "official"
                      else "random split of slices (leaks)")
        for bar, m, sd in zip(bars, means, stds):
            if np.isfinite(m):
                ax.annotate(f"{m:.1f}", (bar.get_x() + bar.get_width() / 2, m + sd),
                            xytext=(0, 3), textcoords="offset points", ha="center", fontsize=8)
    ticks = []
    for n in names:
        k = result["models"][n].get("official", {}).get("n_splits", len(result["folds"]))
        ticks.append(n if k == len(result["folds"]) else f"{n}\n({k} of {len(result['folds'])} folds)")
    ax.set_xticks(x, ticks)
    ax.set_ylabel("Clip accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"UrbanSound8K folds {result['folds']}: train on the others, test one "
                 "(mean ± std)", fontsize=10)
    ax.legend(loc="upper right", fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path)


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def run(args) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    root = find_us8k(Path(args.data))
    clips = load_urbansound8k(root)
    if args.limit:  # tiny mode for tests: the first N clips of every fold
        by_fold: dict = {}
        for c in clips:
            by_fold.setdefault(c.fold, []).append(c)
        clips = [c for fold in sorted(by_fold) for c in by_fold[fold][:args.limit]]
    folds = np.array([c.fold for c in clips])
    if len(set(folds.tolist())) < 2:
        raise DetectorError(f"{root} has clips in fold(s) {sorted(set(folds.tolist()))}: "
                            "the fold protocol needs at least two")
    labels = list(URBANSOUND8K_LABELS)
    y = np.array([labels.index(c.label) for c in clips])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    verbose = 2 if args.verbose else 0
    params = FeatureParams()
    frames = params.frames_for(int(WINDOW_SECONDS * params.sample_rate))
    splits = list(official_splits(folds))
    randoms = list(random_splits(folds, args.seed, len(splits)))
    result: dict = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(), "command": " ".join(["python -m export baselines", *args.argv]),
        "folds": sorted(set(folds.tolist())), "n_clips": len(clips),
        "split_names": [name for name, *_ in splits], "models": {}}

    X, columns, feat_seconds = feature_table(clips, out / "features.csv")
    mlp: dict = {"official": {}, "random": {}}
    for kind, split_list in (("official", splits), ("random", randoms)):
        for name, tr, te in split_list:
            acc, model = train_mlp(X, y, tr, te, len(labels), args.mlp_epochs, args.seed, verbose)
            mlp[kind][name] = acc
            print(f"feature-MLP {name}: {100 * acc:.1f} %", flush=True)
            if kind == "official" and "cost" not in mlp:
                mlp["cost"] = onnx_cost(model, (X.shape[1],), out / "feature_mlp.onnx")
    mlp["official"], mlp["random"] = summarise(mlp["official"]), summarise(mlp["random"])
    mlp["note"] = (f"{len(columns)} features (analyze's table without harmony/percussive/tempo); "
                   f"feature extraction {1000 * feat_seconds:.0f} ms CPU per clip"
                   if math.isfinite(feat_seconds) else f"{len(columns)} features (cached)")
    result["models"]["feature-MLP"] = mlp

    windows = logmel_windows(clips, params, args.cache_dir, args.cnn_hop_frames, frames)
    cnn: dict = {"official": {}, "random": {}, "official_window": {}}
    for kind, split_list in (("official", splits), ("random", randoms[:args.cnn_random])):
        for name, tr, te in split_list:
            acc, wacc, model = train_cnn(windows, y, tr, te, len(labels), args.cnn_epochs,
                                         args.seed, verbose)
            cnn[kind][name] = acc
            if kind == "official":
                cnn["official_window"][name] = wacc
            print(f"log-mel CNN {name}: {100 * acc:.1f} % (windows {100 * wacc:.1f} %)",
                  flush=True)
            if kind == "official" and "cost" not in cnn:
                cnn["cost"] = onnx_cost(model, (frames, params.n_mels, 1),
                                        out / "logmel_cnn.onnx")
    cnn["official"], cnn["random"] = summarise(cnn["official"]), summarise(cnn["random"])
    cnn["note"] = (f"1 s windows ({frames} x {params.n_mels} log-mel), training windows every "
                   f"{args.cnn_hop_frames * params.hop_length / params.sample_rate:.2f} s, "
                   f"{args.cnn_epochs} epochs; clip = mean of window probabilities; "
                   f"random split: {len(cnn['random']['per_split'])} rotation(s)")
    result["models"]["log-mel CNN"] = cnn

    if args.crnn_epochs:
        crnn: dict = {"official": {}}
        for name, tr, te in splits:
            acc, _, model = train_cnn(windows, y, tr, te, len(labels), args.crnn_epochs,
                                      args.seed, verbose, build=build_crnn)
            crnn["official"][name] = acc
            print(f"CNN+LSTM {name}: {100 * acc:.1f} %", flush=True)
            if "cost" not in crnn:
                crnn["cost"] = onnx_cost(model, (frames, params.n_mels, 1), out / "crnn.onnx")
        crnn["official"] = summarise(crnn["official"])
        crnn["note"] = f"from scratch, the CNN's windows, {args.crnn_epochs} epochs"
        result["models"]["CNN+LSTM"] = crnn
    (out / "baselines.json").write_text(json.dumps(result, indent=1) + "\n")
    if args.results_dir:
        write_report(result, Path(args.results_dir))
        print(f"results -> {Path(args.results_dir) / 'baselines.md'}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m export baselines",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder holding urbansound8k/ (or its root)")
    parser.add_argument("--out", required=True, help="work folder (feature table, ONNX files)")
    parser.add_argument("--results-dir", default="bench/results",
                        help="where baselines.md/json/png go ('' = only --out)")
    parser.add_argument("--mlp-epochs", type=int, default=150)
    parser.add_argument("--cnn-epochs", type=int, default=12)
    parser.add_argument("--cnn-hop-frames", type=int, default=50,
                        help="hop between training/test windows in log-mel frames (50 = 0.5 s)")
    parser.add_argument("--crnn-epochs", type=int, default=12,
                        help="epochs of the from-scratch CNN+LSTM (0 = skip it)")
    parser.add_argument("--cnn-random", type=int, default=1,
                        help="random-split rotations for the CNN (CPU is scarce)")
    parser.add_argument("--cache-dir", default=".cache/features", help="log-mel cache (export.cache)")
    parser.add_argument("--limit", type=int, default=0, help="first N clips per fold (smoke test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="Keras progress bars")
    args = parser.parse_args(argv)
    args.argv = argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        return run(args)
    except DetectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
