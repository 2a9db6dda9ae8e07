"""How well a custom label does on recordings it never saw, as the daemon meets them.

Each clip is streamed through the daemon's own :class:`detector.pipeline.Pipeline`
(front end, model with the custom heads attached, energy gate, smoothing,
thresholds, min duration, cooldown) after ``lead_seconds`` of quiet room noise
(seeded white noise at ``noise_dbfs``) and followed by ``tail_seconds`` of it,
so a clip shorter than a model window is heard as it would be in a stream.
A clip *fires* a label when the pipeline emits a start event for it.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from detector.publish.sink import Sink

LEAD_SECONDS = 3.0
TAIL_SECONDS = 1.5
NOISE_DBFS = -60.0


class _Collect(Sink):
    def __init__(self):
        self.starts: list[str] = []

    def event(self, event) -> None:
        if event["type"] == "start":
            self.starts.append(event["label"])


def fired_labels(classifier, path: str | Path, config=None, seed: int = 0,
                 lead_seconds: float = LEAD_SECONDS, tail_seconds: float = TAIL_SECONDS,
                 noise_dbfs: float = NOISE_DBFS) -> list[str]:
    """Labels that start an event while ``path`` is streamed (in quiet room noise)."""
    from detector.config import Config
    from detector.cli.custom_fit import ArraySource, read_audio
    from detector.pipeline import Pipeline

    rate = classifier.model_metadata.features.sample_rate
    clip = read_audio(path, rate)
    rng = np.random.default_rng(seed)
    lead, tail = int(lead_seconds * rate), int(tail_seconds * rate)
    stream = (rng.standard_normal(lead + clip.size + tail) * 10 ** (noise_dbfs / 20)
              ).astype(np.float32)
    stream[lead:lead + clip.size] += clip
    sink = _Collect()
    Pipeline(config or Config(), ArraySource(np.clip(stream, -1, 1), rate), classifier,
             [sink], node="eval").run()
    return sink.starts


def dcase_kind(path: Path) -> str:
    """``dev_1_ebr_-6_nec_1_poly_0_knock_10.flac`` -> ``knock``."""
    match = re.search(r"_([a-z]+)_\d+\.flac$", path.name)
    return match.group(1) if match else "office"


def dcase_clips(data: Path) -> list[tuple[Path, str]]:
    folder = Path(data) / "negatives" / "dcase2016_office"
    return [(p, dcase_kind(p)) for p in sorted(folder.glob("*.flac"))]


def esc50_clips(data: Path, category: str) -> list[Path]:
    folder = Path(data) / "negatives" / "esc50"
    with open(folder / "esc50.csv", newline="") as fh:
        return sorted(folder / row["filename"] for row in csv.DictReader(fh)
                      if row["category"] == category)


def evaluate(classifier, label: str, positives, negatives, config=None) -> dict:
    """Share of ``positives`` that fire ``label`` and of ``negatives`` (``(path, kind)``)
    that fire it, overall and per kind."""
    fired_pos = [label in fired_labels(classifier, p, config, seed=i)
                 for i, p in enumerate(positives)]
    per_kind: dict[str, list[bool]] = {}
    for i, (path, kind) in enumerate(negatives):
        per_kind.setdefault(kind, []).append(
            label in fired_labels(classifier, path, config, seed=10_000 + i))
    all_neg = [x for v in per_kind.values() for x in v]
    return {"positives": len(fired_pos), "recall": float(np.mean(fired_pos)) if fired_pos else 0.0,
            "negatives": len(all_neg),
            "false_alarms": float(np.mean(all_neg)) if all_neg else 0.0,
            "false_alarms_by_kind": {k: float(np.mean(v)) for k, v in sorted(per_kind.items())}}
