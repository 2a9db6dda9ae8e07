"""AudioSet labels: any of the 527 classes the network's own AudioSet head names, no training.

``[events] audioset_labels = ["Smoke detector, smoke alarm", "Glass"]`` turns AudioSet
classes into labels like the model's own: the event label is the name's slug
(:func:`slug`: ``baby_cry_infant_cry``), its per-window score is the class's probability
from the model's ``audioset`` output (the same network pass, no second model), and it
is decided like a gated label: a candidate the event tracker starts on that score is
published only when the class ranks among the top ``k`` of all 527 classes in the
evidence pooled over the last seconds, with at least a floor (:mod:`detector.model.gate`). The
whole vocabulary is the background: "Knock" must beat "Door", "Tap" and everything else
the sound could be.

The defaults (:data:`THRESHOLD`, :data:`TOP_K`, :data:`FLOOR`, :data:`CONTEXT_SECONDS`,
:data:`MAX_WAIT_SECONDS`) were chosen on recordings and judged on other recordings by
``python -m bench quality --labels audioset``; every one can be set per label in ``[events]``
(``thresholds``, ``gate_top_k``, ``gate_floor``, ``gate_context_seconds``,
``gate_max_wait_seconds``).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from detector.errors import ConfigError
from detector.model.gate import GateRule, audioset_classes

THRESHOLD = 0.03
"""Default on-threshold of an AudioSet label's (smoothed) per-window probability: low, since
a 1 s window rarely gives a class much probability; the rank rule decides."""
TOP_K = 10
"""Default rank: the class must be among the top k of the 527 pooled probabilities."""
FLOOR = 0.0
"""Default least pooled probability of the class (the rank is what separates)."""
CONTEXT_SECONDS = 3.0
"""Default seconds of sound the evidence is pooled over."""
MAX_WAIT_SECONDS = 2.0
"""Default wait of a candidate for its rank before it is dropped."""
# Chosen by `python -m bench quality --labels audioset --sweep` (432 settings) on five calibration labels
# (Laughter, Typing, Sneeze, Keys jangling, Dishes) and half of the other clips, model
# test-rot0 (1 s windows): the best mean recall (34%) with at most 1.5% of the calibration
# negatives firing (0.9%). bench/results/audioset_labels_*.json holds the sweep.

_OTHER = re.compile(r"[^a-z0-9]+")


def slug(name: str) -> str:
    """The event label of an AudioSet class: lower case, every run of other characters
    ``_``, trimmed (``"Baby cry, infant cry"`` -> ``baby_cry_infant_cry``)."""
    return _OTHER.sub("_", str(name).lower()).strip("_")


_SLUGS: dict[str, str] | None = None


def slugs() -> dict[str, str]:
    """``slug -> AudioSet display name`` for all 527 classes."""
    global _SLUGS
    if _SLUGS is None:
        _SLUGS = {slug(name): name for name in audioset_classes()}
    return _SLUGS


def display_name(label: str) -> str | None:
    """The AudioSet name whose slug ``label`` is (None: not one)."""
    return slugs().get(label)


def closest(name: str, n: int = 3) -> list[str]:
    """AudioSet names most like ``name``: most words in common, then spelling."""
    words = set(slug(name).split("_")) - {""}
    low = str(name).lower()

    def score(x: str) -> tuple[int, float]:
        shared = len(words & set(slug(x).split("_")))
        return shared, difflib.SequenceMatcher(None, low, x.lower()).ratio()

    ranked = sorted(audioset_classes(), key=score, reverse=True)
    return [x for x in ranked[:n] if score(x)[0] or score(x)[1] >= 0.5]


def check_names(names: Iterable[str], key: str = "events.audioset_labels") -> tuple[str, ...]:
    """The names, each an exact AudioSet display name; a wrong one is one ConfigError line
    with the closest names."""
    known = set(audioset_classes())
    out: list[str] = []
    for name in names:
        if not isinstance(name, str) or name not in known:
            near = closest(str(name))
            hint = (f"; closest: {', '.join(repr(x) for x in near)}" if near
                    else "; `sound-detector labels --search WORD` lists the names")
            raise ConfigError(f"{key} names {name!r}, which is not an AudioSet class name"
                              f" (exact, case and commas included){hint}")
        if name in out:
            raise ConfigError(f"{key} names {name!r} twice")
        out.append(name)
    return tuple(out)


def search(word: str | None) -> list[tuple[int, str]]:
    """``(index, name)`` of the AudioSet classes whose name holds ``word`` (all: None)."""
    names = audioset_classes()
    if not word:
        return list(enumerate(names))
    w = word.lower()
    return [(i, x) for i, x in enumerate(names) if w in x.lower() or w in slug(x)]


@dataclass(frozen=True)
class AudioSetLabels:
    """The configured AudioSet classes as labels: their scores from the AudioSet logits."""

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        check_names(self.names)
        index = {name: i for i, name in enumerate(audioset_classes())}
        object.__setattr__(self, "indices", np.array([index[n] for n in self.names],
                                                     dtype=np.int64))

    def __len__(self) -> int:
        return len(self.names)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(slug(n) for n in self.names)

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """float32 probabilities of the configured classes (a few microseconds)."""
        z = np.clip(logits[self.indices], -30.0, 30.0)
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def gate_metadata(self) -> dict[str, dict]:
        """Each label's rule as a model-metadata ``gate`` entry (the defaults)."""
        return {label: {"support": [int(i)], "top_k": TOP_K, "floor": FLOOR,
                        "context_seconds": CONTEXT_SECONDS,
                        "max_wait_seconds": MAX_WAIT_SECONDS}
                for label, i in zip(self.labels, self.indices.tolist())}

    def rules(self) -> dict[str, GateRule]:
        return {label: GateRule(support=tuple(rule["support"]), top_k=rule["top_k"],
                                floor=rule["floor"], context_seconds=rule["context_seconds"],
                                max_wait_seconds=rule["max_wait_seconds"])
                for label, rule in self.gate_metadata().items()}


def label_rows(model_labels: Sequence[str], background: Sequence[str],
               custom: Sequence[str], word: str | None) -> list[tuple[str, str, str]]:
    """``(kind, label, name)`` rows of ``sound-detector labels``."""
    rows: list[tuple[str, str, str]] = []
    w = (word or "").lower()
    for label in model_labels:
        if label in background:
            continue
        if not w or w in label.lower():
            rows.append(("built-in", label, ""))
    for label in custom:
        if not w or w in label.lower():
            rows.append(("custom", label, ""))
    for _, name in search(word):
        rows.append(("audioset", slug(name), name))
    return rows
