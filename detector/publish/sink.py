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

import logging
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

if TYPE_CHECKING:
    import numpy as np


logger = logging.getLogger(__name__)


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


class SinkSet:
    """Calls every sink in order; a sink that raises is logged and skipped, never fatal.

    A sink that inherits a hook unchanged from :class:`Sink` (a no-op) is not called
    for it: the pipeline calls ``audio`` per block and ``window`` per window, and most
    sinks override neither (:meth:`wants` tells the caller whether to build the args).
    """

    def __init__(self, sinks: Iterable[Sink]):
        self.sinks = list(sinks)
        self._failures: dict[tuple[int, str], int] = {}
        self._hooks: dict[str, list[tuple[int, Sink]]] = {}

    def _receivers(self, method: str) -> list[tuple[int, Sink]]:
        found = self._hooks.get(method)
        if found is None:
            base = getattr(Sink, method, None)
            found = [(i, sink) for i, sink in enumerate(self.sinks)
                     if base is None or method in vars(sink)
                     or getattr(type(sink), method, None) is not base]
            self._hooks[method] = found
        return found

    def wants(self, method: str) -> bool:
        """Whether any sink does something in ``method`` (more than the base no-op)."""
        return bool(self._receivers(method))

    def call(self, method: str, *args) -> None:
        for i, sink in self._receivers(method):
            try:
                getattr(sink, method)(*args)
            except Exception:
                key = (i, method)
                count = self._failures.get(key, 0) + 1
                self._failures[key] = count
                if count == 1 or count % 1000 == 0:
                    logger.exception("output %s failed in %s() (failure %d; the pipeline "
                                     "continues)", type(sink).__name__, method, count)

    @property
    def failures(self) -> int:
        return sum(self._failures.values())
