"""Cross-validation by official UrbanSound8K folds: train on the others, test on one.

Never a random split of slices (recordings would leak between train and test).
Writes ``<out>/fold<k>/`` (a full training run each, incl. ``model.onnx`` for
``python -m export evaluate``), ``<out>/crossval.json`` with per-fold and
mean +- std clip/window accuracy, pooled per-class P/R/F1, false alarms on the
held-out negatives, and ``<out>/confusion.png`` (pooled over folds).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from detector.errors import ConfigError

logger = logging.getLogger(__name__)


def _finished(fold_dir: Path, fold_cfg) -> dict | None:
    """The rotation's report if it already ran with exactly this configuration."""
    path = fold_dir / "report.json"
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    stored = report.get("config") or {}
    wanted = json.loads(json.dumps(asdict(fold_cfg)))
    defaults = json.loads(json.dumps(asdict(type(fold_cfg)())))

    def same(have: dict, want: dict, default: dict) -> bool:
        # an option added after that run counts as matching while it has its default value
        for key, value in want.items():
            if isinstance(value, dict) and isinstance(have.get(key, {}), dict):
                if not same(have.get(key, {}), value, default.get(key, {})):
                    return False
            elif have.get(key, default.get(key)) != value:
                return False
        return True

    return report if same(stored, wanted, defaults) and "test_restricted" in report else None


def crossval(cfg, out_dir: str | Path, verbose: int = 2, rotations=None) -> dict | None:
    """Run every rotation of ``cfg.folds`` (or only ``rotations``, e.g. to spread them over
    processes) and aggregate once all are done; returns the summary dict, or None while
    rotations are missing. A rotation whose ``report.json`` has the same configuration is
    reused, so an interrupted cross-validation resumes where it stopped."""
    from .train import train

    folds = sorted(set(cfg.folds))
    if len(folds) < 2:
        raise ConfigError(f"crossval needs at least two folds, got {folds}")
    wanted = folds if not rotations else sorted(set(rotations))
    unknown = sorted(set(wanted) - set(folds))
    if unknown:
        raise ConfigError(f"rotations {unknown} are not among the folds {folds}")
    out_dir = Path(out_dir)
    per_fold = {}
    for test_fold in folds:
        fold_cfg = replace(cfg, folds=tuple(f for f in folds if f != test_fold),
                           test_folds=(test_fold,))
        report = _finished(out_dir / f"fold{test_fold}", fold_cfg)
        if report is not None:
            logger.info("fold %d: reusing the finished rotation in %s", test_fold,
                        out_dir / f"fold{test_fold}")
        elif test_fold in wanted:
            report = train(fold_cfg, out_dir / f"fold{test_fold}", verbose=verbose)
        else:
            continue
        per_fold[test_fold] = report
        (out_dir / "partial.json").write_text(json.dumps(
            {k: {"accuracy": r["test_restricted"]["accuracy"],
                 "window_accuracy": r["test_restricted"]["window_accuracy"]}
             for k, r in per_fold.items()}, indent=1))
    missing = [f for f in folds if f not in per_fold]
    if missing:
        logger.info("rotations %s not run yet: aggregate after they finish", missing)
        return None
    return aggregate(per_fold, out_dir)


def aggregate(per_fold: dict, out_dir: str | Path) -> dict:
    """Combine per-fold training reports into ``crossval.json`` + pooled ``confusion.png``."""
    from .train import per_class_metrics, plot_confusion

    out_dir = Path(out_dir)
    folds = sorted(per_fold)
    result: dict = {"folds": {}, "config": per_fold[folds[0]]["config"]}
    for key in ("test_restricted", "test_all_outputs"):
        accs = [per_fold[f][key]["accuracy"] for f in folds]
        waccs = [per_fold[f][key]["window_accuracy"] for f in folds]
        names = per_fold[folds[0]][key]["labels"]
        confusion = sum(np.array(per_fold[f][key]["confusion"]) for f in folds)
        result[key] = {
            "accuracy_mean": float(np.mean(accs)), "accuracy_std": float(np.std(accs)),
            "window_accuracy_mean": float(np.mean(waccs)),
            "window_accuracy_std": float(np.std(waccs)),
            "pooled_accuracy": float(np.trace(confusion) / confusion.sum()),
            "per_class": per_class_metrics(confusion, names), "labels": names,
            "confusion": confusion.tolist()}
    for f in folds:
        r = per_fold[f]
        result["folds"][f] = {
            "accuracy": r["test_restricted"]["accuracy"],
            "window_accuracy": r["test_restricted"]["window_accuracy"],
            "accuracy_all_outputs": r["test_all_outputs"]["accuracy"],
            "n": r["test_restricted"]["n"],
            "false_alarms_heldout": r.get("false_alarms_heldout"),
            "daemon_false_alarms": r.get("daemon_false_alarms"),
            "test_event_recall_at_thresholds": r.get("test_event_recall_at_thresholds"),
            "train_seconds": r["train_seconds"]}
    plot_confusion({"confusion": result["test_restricted"]["confusion"],
                    "labels": result["test_restricted"]["labels"]},
                   out_dir / "confusion.png",
                   f"pooled over test folds {folds}: mean clip accuracy "
                   f"{result['test_restricted']['accuracy_mean']:.3f}")
    r = result["test_restricted"]
    result["summary"] = (
        "clip accuracy " + " ".join(f"fold{f}={result['folds'][f]['accuracy']:.4f}" for f in folds)
        + f" mean={r['accuracy_mean']:.4f}+-{r['accuracy_std']:.4f}; window accuracy "
        f"mean={r['window_accuracy_mean']:.4f}+-{r['window_accuracy_std']:.4f}; all outputs "
        f"mean={result['test_all_outputs']['accuracy_mean']:.4f}")
    (out_dir / "crossval.json").write_text(json.dumps(result, indent=1))
    return result
