"""Terminal outputs: JSON lines of events on stdout, and a live top-k scores view.

stdout carries only event JSON (one object per line, flushed at once, so
``sound-detector replay clip.flac | jq`` works); logs and the scores view go
to stderr.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import IO, Mapping, Sequence

from .sink import Sink

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
    """``run --show-scores``: one line per window with the top-k smoothed scores.

    On a terminal the line is redrawn in place; otherwise (a pipe, journald)
    one line is written per window.
    """

    def __init__(self, top_k: int = 5, stream: IO[str] | None = None):
        self.top_k = top_k
        self.stream = stream
        self._labels: Sequence[str] = ()
        self.audioset_top = None
        """``(now, n) -> [(AudioSet class, probability)]`` of a model with a gate, else None."""

    def start(self, labels: Sequence[str], model_version: str) -> None:
        self._labels = tuple(labels)

    def window(self, scores: Mapping[str, float], level_dbfs: float, now: float,
               timing: Mapping[str, float]) -> None:
        stream = self.stream or sys.stderr
        ranked = sorted(((s, l) for l, s in scores.items() if not self._labels or l in self._labels),
                        reverse=True)[: self.top_k]
        text = (f"{level_dbfs:6.1f} dBFS  "
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
