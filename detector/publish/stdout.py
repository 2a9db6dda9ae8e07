"""Terminal outputs: JSON lines of events on stdout, and a live top-k scores view.

stdout carries only event JSON (one object per line, flushed at once, so
``sound-detector replay clip.flac | jq`` works); logs and the scores view go
to stderr.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Mapping, Sequence

from detector.publish.sink import Sink

logger = logging.getLogger(__name__)


class StdoutSink(Sink):
    """One JSON object per start/end event on stdout."""

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream
        self.closed_by_reader = False

    def event(self, event: Mapping) -> None:
        if self.closed_by_reader:
            return
        stream = self.stream or sys.stdout
        try:
            stream.write(json.dumps(dict(event), separators=(", ", ": ")) + "\n")
            stream.flush()
        except BrokenPipeError:  # `replay | head -1`: the reader left; keep running quietly
            self.closed_by_reader = True
            logger.warning("stdout was closed by its reader; no more events are printed")


class ScoresView(Sink):
    """``--show-scores``: one line per window with the top-k smoothed scores.

    Each line starts with the window's time: the local wall-clock time
    (``HH:MM:SS.s``) for a live stream, or with ``sample_rate`` given (``replay``)
    the window's end as seconds from the file's first sample, the same position
    as the events' ``offset_s``.

    On a terminal the line is redrawn in place; otherwise (a pipe, journald)
    one line is written per window.
    """

    def __init__(self, top_k: int = 5, stream: IO[str] | None = None,
                 sample_rate: int | None = None):
        self.top_k = top_k
        self.stream = stream
        self.sample_rate = sample_rate
        """Replay: the stream's sample rate, so windows are stamped with their position."""
        self._origin: float | None = None
        self._labels: Sequence[str] = ()
        self.audioset_top = None
        """``(now, n) -> [(AudioSet class, probability)]`` of a model with a gate, else None."""

    def start(self, labels: Sequence[str], model_version: str) -> None:
        self._labels = tuple(labels)

    def audio(self, block, now: float) -> None:
        if self.sample_rate and self._origin is None:
            # the clock time of the stream's first sample; a window's position is
            # its end time minus this
            self._origin = now - block.shape[0] / self.sample_rate

    def stamp(self, now: float) -> str:
        """The time a window's line starts with."""
        if self.sample_rate:
            return f"{max(0.0, now - (self._origin if self._origin is not None else now)):8.2f} s"
        tenths = int(round(now * 10))  # round once, so 59.96 s shows as the next minute
        clock = time.strftime("%H:%M:%S", time.localtime(tenths // 10))
        return f"{clock}.{tenths % 10}"

    def window(self, scores: Mapping[str, float], level_dbfs: float, now: float,
               timing: Mapping[str, float]) -> None:
        stream = self.stream or sys.stderr
        ranked = sorted(((s, l) for l, s in scores.items() if not self._labels or l in self._labels),
                        reverse=True)[: self.top_k]
        text = (f"{self.stamp(now)}  {level_dbfs:6.1f} dBFS  "
                + "  ".join(f"{label} {score:.2f}" for score, label in ranked)
                + f"  [{timing.get('inference_ms', 0.0):.1f} ms]")
        if self.audioset_top is not None:
            top = self.audioset_top(now, 3)
            if top:
                text += "  | AudioSet: " + ", ".join(f"{name} {p:.2f}" for name, p in top)
        if stream.isatty():
            stream.write("\r\x1b[2K" + text)
        else:
            stream.write(text + "\n")
        stream.flush()

    def event(self, event: Mapping) -> None:
        stream = self.stream or sys.stderr
        if stream.isatty():  # keep events readable between the redrawn lines
            stream.write("\r\x1b[2K")
            stream.flush()

    def close(self) -> None:
        stream = self.stream or sys.stderr
        if stream.isatty():
            stream.write("\n")
            stream.flush()
