"""From per-window scores to start/end events: a pure state machine, clock passed in.

For every window the pipeline calls ``update(scores, level_dbfs, now)``:

1. **Energy gate** - if the window is quieter than ``gate_dbfs`` every score
   counts as 0 (a model must not hear sirens in digital silence).
2. **Smoothing** - each label's score is the mean of its last
   ``smoothing_windows`` (gated) scores.
3. **Hysteresis** - a label turns *on* when its smoothed score reaches its
   on-threshold and *off* when it drops below its off-threshold (lower, so a
   score hovering at the threshold does not flap). On-thresholds come from
   ``events.thresholds``, else the model's calibrated ``thresholds``, else
   ``events.threshold_on``; off-thresholds from ``events.thresholds_off``, else
   ``off_ratio x on``.
4. **Minimum duration** - a label that turned on is only *confirmed* after it
   stayed on for ``min_duration_seconds``; then the start event is emitted,
   back-dated to the window where it turned on. A label that falls off before
   that produces no event at all.
5. **Cooldown** - after an end, the label cannot turn on again for
   ``cooldown_seconds``.

Background labels never fire; several labels may be active at once. Times are
those of the deciding windows (the time of a window's last sample), so starts
lag the true onset by up to a window hop plus the time the model needs to
hear enough of the sound.

Event dicts carry exactly the MQTT contract keys:
``id`` (uuid4 of the event: its start and its end carry the same id, so a
subscriber pairs them by id and de-duplicates redeliveries by ``(id, type)``), ``type`` (``start``/``end``), ``label``,
``score`` (start: the smoothed score at confirmation; end: the mean smoothed
score over the event), ``peak_score`` (highest smoothed score so far),
``start`` / ``end`` (ISO-8601 UTC with milliseconds and ``Z``; ``end`` is null in
a start event), ``duration_s`` (start: time from onset to confirmation, 0 when
``min_duration_seconds = 0``; end: the event's duration), ``level_dbfs``
(loudest window of the event so far), ``node``, ``model``.
"""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Mapping, Sequence

import numpy as np

from detector.config import EventsConfig
from detector.errors import ConfigError

EVENT_KEYS = ("id", "type", "label", "score", "peak_score", "start", "end",
              "duration_s", "level_dbfs", "node", "model")
"""Keys of every event dict, in the order they are published."""


def iso_utc(timestamp: float) -> str:
    """``1700000000.5`` -> ``"2023-11-14T22:13:20.500Z"`` (UTC, milliseconds)."""
    stamp = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class _LabelState:
    on: float
    off: float
    off_explicit: bool
    enabled: bool = True
    history: deque = field(default_factory=deque)
    phase: str = "idle"  # idle | pending | active
    onset: float = 0.0
    peak: float = 0.0
    score_sum: float = 0.0
    windows: int = 0
    level: float = -200.0
    cooldown_until: float = float("-inf")
    event_id: str = ""


class EventTracker:
    """Pure decision logic: ``update(scores, level_dbfs, now) -> [event dicts]``.

    ``labels`` are the model outputs in order (``scores`` follow it);
    ``thresholds`` the model's calibrated on-thresholds (metadata); labels in
    ``background_labels`` never fire; ``node`` / ``model`` go into every event.
    """

    def __init__(self, labels: Sequence[str], settings: EventsConfig,
                 thresholds: Mapping[str, float] | None = None, *,
                 background_labels: Sequence[str] = (), node: str = "",
                 model: str = ""):
        self.labels = tuple(labels)
        self.settings = settings
        self.node = node
        self.model = model
        self.background = frozenset(background_labels)
        model_thresholds = dict(thresholds or {})
        enabled = set(self.event_labels if settings.labels is None else settings.labels)
        for name in (*settings.thresholds, *settings.thresholds_off, *enabled):
            self._check_label(name)
        self._states: dict[str, _LabelState] = {}
        for label in self.event_labels:
            on = settings.thresholds.get(label, model_thresholds.get(label,
                                                                     settings.threshold_on))
            explicit = label in settings.thresholds_off
            off = settings.thresholds_off[label] if explicit else on * settings.off_ratio
            if off > on:
                raise ConfigError(f"off-threshold {off} of {label!r} must be <= its "
                                  f"on-threshold {on}")
            self._states[label] = _LabelState(
                on=on, off=off, off_explicit=explicit, enabled=label in enabled,
                history=deque(maxlen=settings.smoothing_windows))
        self._pending_out: list[dict] = []
        self._last_now: float | None = None
        self.smoothed: dict[str, float] = {label: 0.0 for label in self.labels}
        """Smoothed (gated) score of every label after the last update."""

    @property
    def event_labels(self) -> tuple[str, ...]:
        """Labels that can produce events (model outputs minus background)."""
        return tuple(label for label in self.labels if label not in self.background)

    def onset_of(self, label: str) -> float:
        """Time of the window where ``label``'s current (or last) event turned on."""
        return self._states[self._check_label(label)].onset

    @property
    def enabled_labels(self) -> tuple[str, ...]:
        """Event labels that may fire now (``events.labels`` and runtime control)."""
        return tuple(label for label, st in self._states.items() if st.enabled)

    @property
    def active(self) -> tuple[str, ...]:
        """Labels with a confirmed, open event."""
        return tuple(label for label, st in self._states.items() if st.phase == "active")

    def thresholds(self, label: str) -> tuple[float, float]:
        """``(on, off)`` thresholds currently in force for ``label``."""
        st = self._states[self._check_label(label)]
        return st.on, st.off

    def is_enabled(self, label: str) -> bool:
        return self._states[self._check_label(label)].enabled

    def _check_label(self, label: str) -> str:
        if label not in self.labels:
            raise ConfigError(f"unknown label {label!r}; labels: {', '.join(self.event_labels)}")
        if label in self.background:
            raise ConfigError(f"{label!r} is a background label and never fires events; "
                              f"labels: {', '.join(self.event_labels)}")
        return label

    def set_label(self, label: str, enabled: bool | None = None,
                  threshold_on: float | None = None, threshold_off: float | None = None) -> None:
        """Runtime control: enable/disable a label or change its thresholds.

        Validates everything before changing anything (one-line :class:`ConfigError`).
        Disabling a label with an open event ends it at the last update's time;
        the end event comes out of the next :meth:`update` or :meth:`flush`.
        """
        st = self._states[self._check_label(label)]
        for name, value in (("threshold_on", threshold_on), ("threshold_off", threshold_off)):
            if value is not None and not (isinstance(value, (int, float))
                                          and not isinstance(value, bool) and 0 <= value <= 1):
                raise ConfigError(f"{name}={value!r} for {label!r} must be a number in 0..1")
        if threshold_on is not None and threshold_on <= 0:
            raise ConfigError(f"threshold_on={threshold_on} for {label!r} must be > 0")
        on = st.on if threshold_on is None else float(threshold_on)
        if threshold_off is not None:
            off, explicit = float(threshold_off), True
        elif st.off_explicit:
            off, explicit = st.off, True
        else:
            off, explicit = on * self.settings.off_ratio, False
        if off > on:
            raise ConfigError(f"threshold_off={off} for {label!r} must be <= threshold_on={on}")
        st.on, st.off, st.off_explicit = on, off, explicit
        if enabled is not None:
            if not enabled and st.enabled and st.phase == "active" and self._last_now is not None:
                self._pending_out.append(self._end(label, st, self._last_now))
            if not enabled:
                st.phase = "idle"
            st.enabled = bool(enabled)

    def update(self, scores: Sequence[float] | np.ndarray | Mapping[str, float],
               level_dbfs: float, now: float) -> list[dict]:
        """Feed one window's raw scores; return the events it decides (often none)."""
        if isinstance(scores, np.ndarray):  # the pipeline's case; exactly float(x) each
            raw = (scores.tolist() if scores.ndim == 1 and scores.dtype.kind == "f"
                   else [float(x) for x in scores])
            if len(raw) != len(self.labels):
                raise ValueError(f"{len(raw)} scores for {len(self.labels)} labels")
        elif isinstance(scores, Mapping):
            raw = [float(scores.get(label, 0.0)) for label in self.labels]
        else:
            raw = [float(x) for x in scores]
            if len(raw) != len(self.labels):
                raise ValueError(f"{len(raw)} scores for {len(self.labels)} labels")
        gated = level_dbfs < self.settings.gate_dbfs
        out, self._pending_out = self._pending_out, []
        self._last_now = now
        for label, score in zip(self.labels, raw):
            st = self._states.get(label)
            if st is None:  # background output: report it, never decide on it
                self.smoothed[label] = 0.0 if gated else score
                continue
            st.history.append(0.0 if gated else score)
            smooth = sum(st.history) / len(st.history)
            self.smoothed[label] = smooth
            if not st.enabled:
                continue
            if st.phase == "idle":
                if smooth >= st.on and now >= st.cooldown_until:
                    st.phase, st.onset, st.peak = "pending", now, smooth
                    st.score_sum, st.windows, st.level = 0.0, 0, level_dbfs
            elif st.phase in ("pending", "active") and smooth < st.off:
                if st.phase == "active":
                    out.append(self._end(label, st, now))
                st.phase = "idle"
                continue
            if st.phase in ("pending", "active"):
                st.peak = max(st.peak, smooth)
                st.score_sum += smooth
                st.windows += 1
                st.level = max(st.level, level_dbfs)
            if st.phase == "pending" and now - st.onset >= self.settings.min_duration_seconds:
                st.phase, st.event_id = "active", str(uuid.uuid4())
                out.append(self._event("start", label, st, smooth, now, end=None))
        return out

    def flush(self, now: float) -> list[dict]:
        """End every open event at ``now`` (end of stream / shutdown).

        Unconfirmed (pending) onsets are dropped: they never became events.
        """
        out, self._pending_out = self._pending_out, []
        for label, st in self._states.items():
            if st.phase == "active":
                out.append(self._end(label, st, now))
            st.phase = "idle"
        return out

    def _end(self, label: str, st: _LabelState, now: float) -> dict:
        st.cooldown_until = now + self.settings.cooldown_seconds
        mean = st.score_sum / st.windows if st.windows else st.peak
        st.phase = "idle"
        return self._event("end", label, st, mean, now, end=now)

    def _event(self, kind: str, label: str, st: _LabelState, score: float,
               now: float, end: float | None) -> dict:
        return {
            "id": st.event_id,
            "type": kind,
            "label": label,
            "score": round(float(score), 4),
            "peak_score": round(float(st.peak), 4),
            "start": iso_utc(st.onset),
            "end": None if end is None else iso_utc(end),
            "duration_s": round(max(0.0, now - st.onset), 3),
            "level_dbfs": round(float(st.level), 1),
            "node": self.node,
            "model": self.model,
        }


class Decisions:
    """The decision stage: the tracker's candidate events through the AudioSet gate.

    ``gate`` is the model's :class:`~detector.model.gate.Gate` (None: the model has
    none, every candidate is published). With ``file_offsets`` (replay) every event
    carries ``offset_s``, its onset window's position in the stream (sample-exact),
    and ``published_offset_s``, the stream position when it was published. With
    ``record_candidates`` and a gate, :attr:`candidates` keeps copies of the tracker's
    events before the gate (exactly what ``events.audioset_gate = false`` publishes).
    """

    def __init__(self, tracker: EventTracker, gate=None, *, file_offsets: bool = False,
                 record_candidates: bool = False):
        self.tracker = tracker
        self.gate = gate
        self.file_offsets = file_offsets
        self.record_candidates = record_candidates
        self.candidates: list[dict] = []
        self.started_at: float | None = None
        """Stream clock of the first sample (set by the pipeline)."""
        self.position = 0.0
        """Stream position (s) of the window being decided."""
        self._window_positions: deque = deque(maxlen=4096)
        self._offsets: dict[str, float] = {}

    def window(self, now: float, position: float) -> None:
        """The window ending at stream ``position`` (s) is decided at clock ``now``."""
        if self.file_offsets:
            self._window_positions.append((now, position))
        self.position = position

    def update(self, scores, level: float, now: float) -> list[dict]:
        """One window's scores: the events to publish now."""
        return self._decide(self.tracker.update(scores, level, now), now)

    def flush(self, now: float) -> list[dict]:
        """End every open event (end of stream, lost device): what to publish now."""
        return self._decide(self.tracker.flush(now), now, final=True)

    def stamp(self, event: dict) -> dict:
        """The event as published (replay: with ``published_offset_s``)."""
        if self.file_offsets:
            event["published_offset_s"] = round(self.position, 3)
        return event

    def reset(self) -> None:
        """Audio resumed after a gap: the gate's evidence must not span it."""
        if self.gate is not None:
            self.gate.reset()

    def _offset_of(self, event: dict) -> float:
        """Seconds from the stream's first sample to the event's onset window."""
        if event["type"] == "start" or event["id"] not in self._offsets:
            onset = self.tracker.onset_of(event["label"])
            position = next((pos for when, pos in reversed(self._window_positions)
                             if when == onset), None)
            if position is None:  # older than the remembered windows: the stream clock
                position = onset - (self.started_at or onset)
            self._offsets[event["id"]] = round(max(0.0, position), 3)
        if event["type"] == "end":
            return self._offsets.pop(event["id"])
        return self._offsets[event["id"]]

    def _decide(self, events: list[dict], now: float, final: bool = False) -> list[dict]:
        if self.file_offsets:
            for event in events:
                event["offset_s"] = self._offset_of(event)
        if self.gate is None:
            return events
        if self.record_candidates:  # what the daemon would publish with the gate off
            for event in events:
                self.candidates.append({**event, "published_offset_s": round(self.position, 3)}
                                       if self.file_offsets else dict(event))
        out = self.gate.filter(events, now)
        if final:
            out += self.gate.flush(now)
        return out
