"""Replay files through the daemon's own pipeline (features, model, EventTracker).

Used to measure what a user sees, not just clip accuracy: the fraction of
held-out everyday-sound clips that produce any start event (false alarms) and
the fraction of labelled clips whose own label fires (event recall), with the
default ``[events]`` settings and the thresholds stored in the model.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .train import CEILING, FLOOR, MARGIN, calibrate_thresholds

logger = logging.getLogger(__name__)


def replay_events(model_path: str | Path, files, config=None, progress: bool = True) -> list[list[dict]]:
    """Start events of every file, replayed (fast, not real time) through ``Pipeline``."""
    from detector.capture import FileSource
    from detector.config import load_config
    from detector.model import Classifier
    from detector.pipeline import Pipeline

    config = config or load_config(None)
    classifier = Classifier(model_path)
    rate = classifier.metadata.features.sample_rate
    files = list(files)
    iterator = files
    if progress:
        from tqdm import tqdm
        iterator = tqdm(files, desc="replaying", unit="file", leave=False)
    out = []
    for path in iterator:
        source = FileSource(path, rate, realtime=False, block_seconds=config.audio.block_seconds)
        pipeline = Pipeline(config, source, classifier, [], live=False, record_scores=True, node="eval")
        pipeline.run()
        if pipeline.error is not None:
            raise pipeline.error
        out.append([e for e in pipeline.events if e["type"] == "start"])
    return out


def false_alarm_rate(model_path, files, config=None) -> dict:
    """Fraction of (negative) files with at least one start event, and which labels fired."""
    events = replay_events(model_path, files, config)
    fired = [bool(e) for e in events]
    labels: dict[str, int] = {}
    for evs in events:
        for e in evs:
            labels[e["label"]] = labels.get(e["label"], 0) + 1
    return {"clips": len(fired), "fired": int(sum(fired)),
            "rate": (sum(fired) / len(fired)) if fired else 0.0, "labels": labels}


def event_recall(model_path, clips, config=None) -> dict:
    """Fraction of labelled clips in which their own label starts an event."""
    events = replay_events(model_path, [c.path for c in clips], config)
    hits = [any(e["label"] == c.label for e in evs) for c, evs in zip(clips, events)]
    other = [any(e["label"] != c.label for e in evs) for c, evs in zip(clips, events)]
    return {"clips": len(hits), "recall": (sum(hits) / len(hits)) if hits else 0.0,
            "clips_with_other_label_events": (sum(other) / len(other)) if other else 0.0}


def daemon_window_scores(model_path, files, config=None) -> list:
    """Raw model scores ``[n_windows, n_labels]`` of every file, as the daemon computes them."""
    from detector.capture import FileSource
    from detector.config import load_config
    from detector.model import Classifier
    from detector.pipeline import Pipeline

    import numpy as np

    config = config or load_config(None)
    classifier = Classifier(model_path)
    out = []
    for path in files:
        source = FileSource(path, classifier.metadata.features.sample_rate, realtime=False,
                            block_seconds=config.audio.block_seconds)
        pipeline = Pipeline(config, source, classifier, [], live=False, record_scores=True,
                            node="eval")
        pipeline.run()
        if pipeline.error is not None:
            raise pipeline.error
        rows = np.array(pipeline.score_rows, dtype=np.float32).reshape(-1, len(classifier.labels))
        out.append(rows)
    return out


def _write_thresholds(model, thresholds: dict, out_path) -> None:
    """Save ``model`` (an onnx ModelProto) with new ``thresholds`` metadata, checked first."""
    import json

    import onnx

    from detector.metadata import ModelMetadata

    for entry in model.metadata_props:
        if entry.key == "thresholds":
            entry.value = json.dumps(thresholds)
    ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})  # still valid
    onnx.save(model, str(out_path))


def cross_calibrate(model_path, files, floor=FLOOR, ceiling=CEILING, margin=MARGIN,
                    smoothing=2) -> dict:
    """Thresholds from all held-out negatives, and a leave-one-out estimate of their
    false-alarm rate through the daemon: for every file, thresholds calibrated on all the
    OTHER files are written into a copy of the model and that file is replayed through the
    daemon's pipeline and event logic. That is the rate a new everyday sound would see with
    thresholds calibrated on n - 1 negatives, close to the shipped ones (all n)."""
    import tempfile

    import onnx

    from detector.metadata import ModelMetadata

    files = list(files)
    model = onnx.load(str(model_path))
    meta = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props},
                                    source=str(model_path))
    labels, events = list(meta.labels), list(meta.event_labels)
    scores = daemon_window_scores(model_path, files)

    def policy(rows) -> dict:
        return calibrate_thresholds([r for r in rows if len(r)], labels, events, floor=floor,
                                    ceiling=ceiling, margin=margin, smoothing=smoothing)

    fired_files: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trial = Path(tmp) / "leave_one_out.onnx"
        for i, path in enumerate(files):
            _write_thresholds(model, policy(scores[:i] + scores[i + 1:]), trial)
            started = replay_events(trial, [path], progress=False)[0]
            if started:
                fired_files[Path(path).name] = sorted({e["label"] for e in started})
                for e in started:
                    counts[e["label"]] = counts.get(e["label"], 0) + 1
    thresholds = policy(scores)
    _write_thresholds(model, thresholds, model_path)
    return {"thresholds": thresholds,
            "false_alarms": {"method": "leave-one-out", "clips": len(files),
                             "fired": len(fired_files),
                             "rate": len(fired_files) / len(files) if files else 0.0,
                             "labels": counts, "fired_files": fired_files,
                             "policy": {"floor": floor, "margin": margin, "ceiling": ceiling,
                                        "smoothing": smoothing}}}
