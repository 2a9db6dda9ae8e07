"""The gate stage: a label fires only when the network's AudioSet vocabulary agrees.

Between the event tracker and the outputs. The tracker turns per-window label scores into
*candidate* start/end events; this stage publishes a candidate only when one of the
AudioSet classes that support its label (the label's *support set*, from the model's
metadata) ranks among the top ``k`` of all 527 classes in the evidence pooled over the
last ``context_seconds`` of sound, with at least ``floor`` probability. The whole
AudioSet vocabulary is the background: clapping that the label head takes for a gun shot
is "Clapping" to the AudioSet classifier, which outranks every gun-shot class, so no
event is published.

Timing: the gate is asked at the candidate's start and at every window after it, for at
most ``max_wait_seconds``; the first window that passes publishes the start event (its
``start`` stays the sound's onset), with the supporting classes in ``evidence``. A
candidate whose wait runs out without support is dropped with its end event, so
subscribers never see half an event. An end event of a candidate still waiting is held
until its start is decided.

Pure like :class:`~detector.events.EventTracker`: :meth:`EventGate.add` and
:meth:`EventGate.filter` take the clock as an argument.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateRule:
    """How one label is gated."""

    support: tuple[int, ...]
    """AudioSet class indices whose evidence supports the label."""
    top_k: int = 5
    """A supporting class must rank among the top ``top_k`` of all classes."""
    floor: float = 0.0
    """... with at least this pooled probability."""
    context_seconds: float = 3.0
    """Seconds of sound the evidence is pooled over (ending at the deciding window)."""
    max_wait_seconds: float = 2.0
    """How long after its start a candidate may wait for support before it is dropped."""


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float32)))


class Evidence:
    """Per-window AudioSet probabilities of the last seconds, pooled by their mean.

    ``window_seconds`` is the length of audio one window hears: the windows pooled for
    a context of C seconds ending at ``now`` are those that end after
    ``now - (C - window_seconds)``, so together they hear C seconds.
    """

    def __init__(self, window_seconds: float, max_context_seconds: float):
        self.window_seconds = float(window_seconds)
        self.max_context = float(max_context_seconds)
        self._items: collections.deque = collections.deque()
        self._cache: dict[float, np.ndarray] = {}
        self._cache_at: float | None = None

    def reset(self) -> None:
        self._items.clear()
        self._cache.clear()
        self._cache_at = None

    def add(self, now: float, probs: np.ndarray) -> None:
        self._items.append((float(now), np.asarray(probs, dtype=np.float32)))
        horizon = now - max(0.0, self.max_context - self.window_seconds) - 1e-6
        while self._items and self._items[0][0] < horizon:
            self._items.popleft()
        self._cache.clear()
        self._cache_at = now

    def pooled(self, now: float, context_seconds: float,
               since: float | None = None) -> np.ndarray | None:
        """Mean probability of every class over the context ending at ``now``, and only
        over windows ending at ``since`` or later when given (the sound's onset window on:
        the room before a sound does not dilute its evidence). None: no window heard."""
        key = (context_seconds, since)
        if self._cache_at == now and key in self._cache:
            return self._cache[key]
        horizon = now - max(0.0, context_seconds - self.window_seconds) - 1e-6
        if since is not None:
            horizon = max(horizon, since - 1e-3)
        rows = [p for t, p in self._items if horizon <= t <= now + 1e-6]
        if not rows:
            return None
        pooled = rows[0] if len(rows) == 1 else np.mean(rows, axis=0)
        if self._cache_at == now:
            self._cache[key] = pooled
        return pooled


def supporting(pooled: np.ndarray, rule: GateRule) -> list[int]:
    """Support classes of ``rule`` in the top ``k`` of ``pooled`` with at least its floor,
    best first (empty: the gate does not pass)."""
    if pooled is None or not rule.support:
        return []
    k = min(rule.top_k, pooled.shape[0])
    kth = np.partition(pooled, -k)[-k]
    idx = np.asarray(rule.support)
    values = pooled[idx]
    ok = (values >= kth) & (values >= rule.floor)
    return [int(i) for i in idx[ok][np.argsort(-values[ok], kind="stable")]]


@dataclass
class _Candidate:
    start: dict
    deadline: float
    onset: float | None = None
    """Stream time of the window where the label turned on (its evidence starts there)."""
    end: dict | None = None


def _stamp(iso: str) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except (AttributeError, ValueError):
        return None


class EventGate:
    """Holds, publishes or drops the tracker's events by their AudioSet support."""

    def __init__(self, rules: Mapping[str, GateRule], class_names: Sequence[str],
                 window_seconds: float, enabled: bool = True, always: Sequence[str] = ()):
        self.rules = dict(rules)
        self.always = frozenset(always)
        """Labels decided by their rule even with the gate disabled (AudioSet labels: the
        rank rule is what they are)."""
        self.class_names = tuple(class_names)
        self.enabled = enabled
        longest = max((r.context_seconds for r in self.rules.values()), default=window_seconds)
        self.evidence = Evidence(window_seconds, longest)
        self._waiting: dict[str, _Candidate] = {}
        self._published: dict[str, list[str]] = {}
        self.dropped = 0
        """Candidate events dropped because their label had no AudioSet support."""
        self.passed = 0
        """Candidate events published by the gate."""

    def gated(self, label: str) -> bool:
        return ((self.enabled or label in self.always) and label in self.rules
                and bool(self.rules[label].support))

    def add(self, now: float, audioset_logits: np.ndarray | None) -> None:
        """The window deciding at ``now`` heard this (None: it skipped the model)."""
        if audioset_logits is not None:
            self.evidence.add(now, sigmoid(audioset_logits))

    def reset(self) -> None:
        """A gap in the audio: forget the evidence (waiting candidates keep their deadline)."""
        self.evidence.reset()

    def check(self, label: str, now: float, since: float | None = None) -> list[str]:
        """Names of the classes supporting ``label`` now, on the evidence since ``since``
        (the candidate's onset) within its context (empty: not supported)."""
        rule = self.rules[label]
        pooled = self.evidence.pooled(now, rule.context_seconds, since)
        return [self.class_names[i] for i in supporting(pooled, rule)]

    def top(self, now: float, n: int = 5, context_seconds: float | None = None
            ) -> list[tuple[str, float]]:
        """The ``n`` highest AudioSet classes of the pooled evidence (for ``--show-scores``)."""
        context = context_seconds or self.evidence.max_context
        pooled = self.evidence.pooled(now, context)
        if pooled is None:
            return []
        order = np.argsort(-pooled)[:n]
        return [(self.class_names[i], float(pooled[i])) for i in order]

    def filter(self, events: list[dict], now: float) -> list[dict]:
        """The events to publish now, from the tracker's ``events`` of this window and the
        candidates still waiting."""
        out: list[dict] = []
        for event in events:
            label = event["label"]
            if not self.gated(label):
                out.append(event)
                continue
            if event["type"] == "start":
                self._waiting[event["id"]] = _Candidate(
                    event, now + self.rules[label].max_wait_seconds, _stamp(event["start"]))
            elif event["id"] in self._waiting:
                self._waiting[event["id"]].end = event
            elif event["id"] in self._published:
                event["evidence"] = self._published.pop(event["id"])
                out.append(event)
            # an end whose start was dropped is dropped too
        for key in list(self._waiting):
            cand = self._waiting[key]
            names = self.check(cand.start["label"], now, cand.onset)
            if names:
                del self._waiting[key]
                out += self._publish(key, cand, names)
            elif now >= cand.deadline - 1e-9:
                del self._waiting[key]
                self.dropped += 1
                logger.debug("%s candidate at %s dropped: no AudioSet support within %g s",
                             cand.start["label"], cand.start["start"],
                             self.rules[cand.start["label"]].max_wait_seconds)
        return out

    def flush(self, now: float) -> list[dict]:
        """End of stream: decide every waiting candidate on the evidence there is."""
        out = []
        for key, cand in list(self._waiting.items()):
            names = self.check(cand.start["label"], now, cand.onset)
            if names:
                out += self._publish(key, cand, names)
            else:
                self.dropped += 1
        self._waiting.clear()
        return out

    def _publish(self, key: str, cand: _Candidate, names: list[str]) -> list[dict]:
        """A candidate that passed: its start (and its end, if the sound already ended)
        with the supporting classes; an end still to come gets them when it arrives."""
        self.passed += 1
        cand.start["evidence"] = names
        if cand.end is None:
            self._published[key] = names
            return [cand.start]
        cand.end["evidence"] = names
        return [cand.start, cand.end]


_CLASSES: tuple[str, ...] | None = None


def audioset_classes() -> tuple[str, ...]:
    """The 527 AudioSet class names in the order of a model's ``audioset`` output."""
    global _CLASSES
    if _CLASSES is None:
        import json
        from pathlib import Path

        path = Path(__file__).resolve().parents[1] / "data" / "audioset_classes.json"
        with open(path, encoding="utf-8") as fh:
            _CLASSES = tuple(json.load(fh))
    return _CLASSES


def build_gate(meta, events, always: Sequence[str] = ()) -> EventGate | None:
    """The gate of a model (its metadata ``gate``) with the ``[events]`` overrides, or
    None for a model without one. ``always``: labels gated even with
    ``events.audioset_gate = false``."""
    if not meta.gate:
        return None
    rules = {}
    for label, rule in meta.gate.items():
        rules[label] = GateRule(
            support=tuple(int(i) for i in rule["support"]),
            top_k=int(events.gate_top_k.get(label, rule["top_k"])),
            floor=float(events.gate_floor.get(label, rule["floor"])),
            context_seconds=max(meta.window_seconds,
                                float(events.gate_context_seconds.get(label,
                                                                      rule["context_seconds"]))),
            max_wait_seconds=float(events.gate_max_wait_seconds.get(label,
                                                                    rule["max_wait_seconds"])))
    return EventGate(rules, audioset_classes(), meta.window_seconds,
                     enabled=events.audioset_gate, always=always)
