"""``python -m export train|crossval|export|evaluate|download|quantize|optimize|...``.

``evaluate``, ``download`` and ``quantize`` live in their own modules
(:mod:`export.evaluate`, :mod:`export.datasets_download`, :mod:`export.quantize`)
and are imported only when chosen, so ``--help`` and those commands never load
TensorFlow. A :class:`~detector.errors.DetectorError` prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from detector.errors import ConfigError, DetectorError
from export._cli import LOG_FORMAT, run_command

DELEGATED = {
    "evaluate": ("export.evaluate", "evaluate an ONNX model on a dataset (no TensorFlow needed)"),
    "download": ("export.datasets_download", "download UrbanSound8K / ESC-50 (resumable, checked)"),
    "quantize": ("export.quantize", "static int8 quantization of an ONNX model"),
    "optimize": ("export.onnx_optimize", "rewrite an ONNX model into fewer fused nodes "
                 "(same arithmetic, metadata kept)"),
    "false-alarms": ("export.negatives", "false-alarm rate on negative clips through the "
                     "daemon's own event logic"),
    "background-embeddings": ("export.background", "background embeddings of everyday sounds "
                              "for custom labels (detector/models/background-<version>.npz)"),
    "pretrained": ("export.pretrained_cli", "the shipped recipe: AudioSet-pretrained mn04 trunk "
                   "+ recurrent head, cross-validation by fold and kind groups, final model"),
    "streaming": ("export.streaming_cli", "the streaming recipe: mn04 trunk on 0.25 s chunks + "
                  "an LSTM that carries its state; rotations, final step model"),
    "card": ("export.card", "the model card of a pretrained-recipe model, from its measurements"),
    "stream-eval": ("export.stream_eval", "held-out clips in one long stream through the "
                    "daemon's pipeline: event recall, wrong labels, delay, false alarms per hour"),
}
SHIPPED = Path(__file__).resolve().parents[1] / "detector" / "models" / "default.onnx"


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--urbansound8k", metavar="DIR",
                        help="UrbanSound8K root (metadata/UrbanSound8K.csv + audio/foldN/)")
    parser.add_argument("--sesa", metavar="DIR",
                        help="SESA folder-per-class set: casual -> background, gunshot -> "
                             "gun_shot, siren -> siren, explosion -> explosion")
    parser.add_argument("--folder", metavar="DIR", action="append", default=[],
                        help="your own folder-per-class data (<DIR>/<label>/*.wav); a folder "
                             "named 'background' holds negatives (repeatable)")
    parser.add_argument("--teacher", metavar="NPZ",
                        help="teacher logits (shared/data/teacher/mn04_logits.npz) for "
                             "distillation; omit to train without")
    parser.add_argument("--teacher-weight", type=float, default=5.0,
                        help="weight of the teacher loss (default: %(default)s)")
    parser.add_argument("--probe-weight", type=float, default=0.0,
                        help="share of the class target taken from a cross-fitted logistic "
                             "probe on the teacher logits (needs --teacher; default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=40, help="epochs (default: %(default)s)")
    parser.add_argument("--crops-per-clip", type=int, default=1,
                        help="random window crops per training clip per epoch (default: %(default)s)")
    parser.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                        help="mixup of windows and targets with Beta(ALPHA, ALPHA); 0 = off "
                             "(default: %(default)s)")
    parser.add_argument("--ema", type=float, default=0.0, metavar="MOMENTUM",
                        help="keep an exponential moving average of the weights as the final "
                             "model, e.g. 0.998; 0 = off (default: %(default)s)")
    parser.add_argument("--mix-prob", type=float, default=0.5,
                        help="probability of mixing a negative/other clip/noise into a window "
                             "(default: %(default)s)")
    parser.add_argument("--specaugment-prob", type=float, default=0.8,
                        help="probability of SpecAugment masks on a window (default: %(default)s)")
    parser.add_argument("--warp-prob", type=float, default=0.0,
                        help="probability of a time stretch (0.85-1.18) and mel-band shift "
                             "(+-2) of a window (default: %(default)s)")
    parser.add_argument("--onset-prob", type=float, default=0.0,
                        help="probability of an onset crop (the sound's start at the end of the "
                             "window) for faster live detection (default: %(default)s)")
    parser.add_argument("--background-boost", type=float, default=1.0,
                        help="multiply the background (negatives) share of the training crops "
                             "(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default: %(default)s)")
    parser.add_argument("--learning-rate", type=float, default=2e-3,
                        help="peak learning rate (default: %(default)s)")
    parser.add_argument("--window-seconds", type=float, default=1.0,
                        help="model window in seconds (default: %(default)s)")
    parser.add_argument("--window-hop-seconds", type=float, default=0.25,
                        help="hop between windows in the daemon (default: %(default)s)")
    parser.add_argument("--width", type=int, default=1, help="channel multiplier (default: 1)")
    parser.add_argument("--holdout-every", type=int, default=3,
                        help="hold out every n-th background file for threshold calibration "
                             "and the false-alarm check; 0 = none (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--cache-dir", default=".cache/features",
                        help="log-mel cache folder (default: %(default)s); 'none' disables")
    parser.add_argument("--model-version", default="dev", help="version written into the model")
    parser.add_argument("--threads", type=int, default=0,
                        help="TensorFlow CPU threads (default: 0 = all cores)")
    parser.add_argument("--quiet", action="store_true",
                        help="one line per epoch instead of the Keras progress bar")


def _set_threads(threads: int) -> None:
    if threads > 0:
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def _config(args, folds, test_folds):
    from .augment import AugmentConfig
    from .train import SESA_MAP, TrainConfig

    _set_threads(args.threads)

    folders, label_map = [], {}
    if args.sesa:
        folders.append(args.sesa)
        label_map.update(SESA_MAP)
    folders += args.folder
    if not args.urbansound8k and not folders:
        raise ConfigError("no data: pass --urbansound8k DIR and/or --sesa DIR / --folder DIR")
    if args.epochs < 1:
        raise ConfigError(f"--epochs={args.epochs} must be >= 1")
    checks = [(args.crops_per_clip >= 1, f"--crops-per-clip={args.crops_per_clip} must be >= 1"),
              (args.mixup >= 0, f"--mixup={args.mixup} must be >= 0"),
              (0 <= args.ema < 1, f"--ema={args.ema} must be in [0, 1)"),
              (0 <= args.mix_prob <= 1, f"--mix-prob={args.mix_prob} must be in [0, 1]"),
              (args.background_boost > 0,
               f"--background-boost={args.background_boost} must be > 0"),
              (0 <= args.warp_prob <= 1, f"--warp-prob={args.warp_prob} must be in [0, 1]"),
              (0 <= args.onset_prob <= 1, f"--onset-prob={args.onset_prob} must be in [0, 1]"),
              (0 <= args.specaugment_prob <= 1,
               f"--specaugment-prob={args.specaugment_prob} must be in [0, 1]")]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    return TrainConfig(
        urbansound8k=args.urbansound8k, folds=tuple(folds), test_folds=tuple(test_folds),
        folders=tuple(folders), label_map=label_map, holdout_every=args.holdout_every,
        window_seconds=args.window_seconds, window_hop_seconds=args.window_hop_seconds,
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        seed=args.seed, teacher=args.teacher, teacher_weight=args.teacher_weight,
        probe_weight=args.probe_weight, crops_per_clip=args.crops_per_clip,
        mixup_alpha=args.mixup, ema_momentum=args.ema, background_boost=args.background_boost,
        augment=AugmentConfig(mix_prob=args.mix_prob, specaugment_prob=args.specaugment_prob,
                              onset_prob=args.onset_prob, warp_prob=args.warp_prob),
        width=args.width, cache_dir=None if args.cache_dir == "none" else args.cache_dir,
        model_version=args.model_version)


def _run_train(args) -> int:
    from .train import train

    cfg = _config(args, args.folds if args.urbansound8k else (), args.test_folds or ())
    report = train(cfg, args.out, verbose=2 if args.quiet or not sys.stdout.isatty() else 1, onnx_path=args.onnx)
    summary = {k: report[k] for k in ("train_seconds", "onnx_bytes", "ms_per_window_1thread",
                                      "parity_max_abs_diff") if k in report}
    if "test_restricted" in report:
        summary["test_accuracy"] = round(report["test_restricted"]["accuracy"], 4)
        summary["test_window_accuracy"] = round(report["test_restricted"]["window_accuracy"], 4)
    if "daemon_false_alarms" in report:  # leave-one-out through the daemon: the shipped policy
        summary["false_alarm_rate"] = round(report["daemon_false_alarms"]["rate"], 4)
    elif "false_alarms_heldout" in report:
        summary["false_alarm_rate"] = report["false_alarms_heldout"]["rate"]
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    print(f"model: {args.onnx or Path(args.out) / 'model.onnx'}  report: {Path(args.out) / 'report.json'}")
    return 0


def _run_crossval(args) -> int:
    from .crossval import crossval

    if not args.urbansound8k:
        raise ConfigError("crossval needs --urbansound8k DIR (it rotates the official folds)")
    cfg = _config(args, args.folds, ())
    result = crossval(cfg, args.out, verbose=2 if args.quiet or not sys.stdout.isatty() else 1,
                      rotations=args.rotations)
    if result is None:
        print(f"rotations {args.rotations} done; run again without --rotations (finished "
              "rotations are reused) to aggregate")
        return 0
    print(result["summary"])
    return 0


def _run_reexport(args) -> int:
    """Re-export a run's Keras model with the metadata of its ONNX file (e.g. new version)."""
    import json

    import keras
    import onnx

    from detector.metadata import ModelMetadata
    from .onnx_export import export_onnx

    run = Path(args.run)
    keras_path, onnx_in = run / "model.keras", run / "model.onnx"
    for path in (keras_path, onnx_in):
        if not path.is_file():
            raise ConfigError(f"{path} not found: --run must be a folder written by "
                              "`python -m export train`")
    model = keras.models.load_model(keras_path, compile=False)
    props = {p.key: p.value for p in onnx.load(str(onnx_in)).metadata_props}
    if args.model_version:
        props["model_version"] = json.dumps(args.model_version)
    metadata = ModelMetadata.from_props(props, source=str(onnx_in))
    import numpy as np
    rng = np.random.default_rng(0)
    windows = rng.normal(-45, 15, (8, metadata.frames, metadata.features.n_mels, 1)).astype(np.float32)
    diff = export_onnx(model, metadata, args.out, windows)
    print(f"wrote {args.out} (parity max abs diff {diff:.2e})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Train, cross-validate, export and evaluate the sound-event model.")
    parser.add_argument("--debug", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model and export it to ONNX",
                       description="Train the CNN+LSTM on random window crops with augmentation "
                                   "(and optional teacher distillation), calibrate thresholds on "
                                   "held-out negatives, export ONNX with the metadata contract.")
    _add_data_arguments(p)
    p.add_argument("--folds", type=int, nargs="+", default=[1, 2, 3],
                   help="UrbanSound8K folds to train on (default: 1 2 3)")
    p.add_argument("--test-folds", type=int, nargs="*", default=[],
                   help="UrbanSound8K folds to evaluate on after training (never trained on)")
    p.add_argument("--out", default="runs/train", help="run folder (default: %(default)s)")
    p.add_argument("--onnx", help="also the ONNX path to write (default: <out>/model.onnx), "
                                  "e.g. detector/models/default.onnx")
    p.set_defaults(func=_run_train)

    p = sub.add_parser("crossval", help="cross-validate by official folds",
                       description="For each fold in --folds: train on the others, test on it; "
                                   "report clip and window accuracy per fold, mean +- std, "
                                   "per-class P/R/F1, confusion PNG.")
    _add_data_arguments(p)
    p.add_argument("--folds", type=int, nargs="+", default=[1, 2, 3],
                   help="UrbanSound8K folds to rotate over (default: 1 2 3)")
    p.add_argument("--rotations", type=int, nargs="+", metavar="FOLD",
                   help="run only these test folds now (e.g. one per process); rotations "
                        "already finished in --out with the same settings are always reused")
    p.add_argument("--out", default="runs/crossval", help="output folder (default: %(default)s)")
    p.set_defaults(func=_run_crossval)

    p = sub.add_parser("export", help="re-export a trained run to ONNX",
                       description="Load <run>/model.keras, take the metadata of <run>/model.onnx "
                                   "(optionally a new --model-version), write ONNX, check parity.")
    p.add_argument("--run", required=True, help="folder written by `python -m export train`")
    p.add_argument("--out", default=str(SHIPPED), help="ONNX path (default: the shipped model)")
    p.add_argument("--model-version", help="new model_version for the metadata")
    p.set_defaults(func=_run_reexport)

    for name, (module, summary) in DELEGATED.items():
        p = sub.add_parser(name, help=summary, description=summary, add_help=False)
        p.set_defaults(module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        module_name = DELEGATED[argv[0]][0]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            print(f"python -m export {argv[0]}: {module_name} is unavailable ({exc})",
                  file=sys.stderr)
            return 2
        return run_command(module, f"python -m export {argv[0]}", argv[1:],
                           description=DELEGATED[argv[0]][1])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format=LOG_FORMAT)
    try:
        return int(args.func(args))
    except DetectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ImportError as exc:
        print(f"error: {exc}; install the training extra: pip install -e '.[train]'",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
