"""The interface every output (stdout, MQTT, clips, metrics) implements.

The pipeline calls these from its worker thread; a sink must never block it for
long (MQTT queues and delivers from its own thread) and must never raise for a
transient outage (it logs and keeps the data).

An *event* is a dict with exactly the keys of the MQTT events contract
(DESIGN.md / README "MQTT topics"):
``id, type ("start"|"end"), label, score, peak_score, start, end, duration_s,
level_dbfs, node, model`` (an end event may add ``clip`` when clips are saved).

Sinks are called in a fixed order (clips, metrics, systemd, MQTT, stdout) with the
same mutable event dict, so a clip writer can add ``clip`` before it is published.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:
    import numpy as np


class Sink:
    """Base class with no-op hooks; subclasses override what they need."""

    def start(self, labels: Sequence[str], model_version: str) -> None:
        """Called once before audio flows, with the labels that can fire."""

    def labels_enabled(self, labels: Sequence[str]) -> None:
        """The labels that may fire now (a subset of ``start``'s): called right before
        ``start`` and whenever runtime control enables or disables a label."""

    def event(self, event: Mapping) -> None:
        """A start or end event (contract payload)."""

    def level(self, dbfs: float, leq_dbfs: float, now: float) -> None:
        """Periodic sound level: last window's dBFS and Leq over the interval."""

    def audio(self, block: "np.ndarray", now: float) -> None:
        """Every mono float32 block at the model rate, as it enters the pipeline
        (clip writers keep a pre-roll from it). ``now`` is the wall-clock time
        (``time.time()``) of the block's last sample."""

    def window(self, scores: Mapping[str, float], level_dbfs: float, now: float,
               timing: Mapping[str, float]) -> None:
        """After every model window: smoothed per-label scores, the window's level,
        and ``timing`` with at least ``features_ms``, ``inference_ms``,
        ``queue_depth`` and ``overflows`` (metrics, watchdog pings, score views)."""

    def status(self, key: str, value: str) -> None:
        """State changes worth telling subscribers, e.g. ``("device", "lost")``."""

    def close(self) -> None:
        """Flush and release resources; called once at shutdown."""
