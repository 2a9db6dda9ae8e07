"""Sound onsets from the audio level alone, to decide more often while a sound begins.

The model decides on a 1 s window every hop (0.25 s): a sound that begins just after a
window waits a whole hop for the next, and the smoothing of the event tracker another.
An onset here is a sudden rise of the level: the power of the last
:data:`SHORT_FRAMES` frames (10 ms each, on the absolute sample grid) at least ``rise_db``
above the mean power of the second before it, and louder than ``floor_dbfs``. For
``span`` seconds after an onset the pipeline also classifies the windows that end on
the finer ``onset_hop`` grid (see :class:`detector.pipeline.Pipeline`); in steady sound
and in quiet there are no onsets and the model runs at its usual hop.

The detector is fed whole blocks and judges every frame of them at once (numpy), so
its onsets - and therefore the windows - are the same for any block size.
"""

from __future__ import annotations

import collections

import numpy as np

SHORT_FRAMES = 3
"""Frames (30 ms) whose power is compared with the second before them."""
CONTEXT_FRAMES = 100
"""Frames (1 s) of the level an onset must rise above."""


class OnsetDetector:
    """``feed(block) -> onset sample positions``; positions count from the first sample fed
    (or from the last :meth:`reset`), each the end of the frame that rose."""

    def __init__(self, frame: int, rise_db: float = 10.0, floor_dbfs: float = -70.0):
        if frame < 1:
            raise ValueError(f"frame={frame} must be >= 1 sample")
        self.frame = int(frame)
        self.ratio = 10.0 ** (rise_db / 10.0)
        self.floor = 10.0 ** (floor_dbfs / 10.0)
        self.reset()

    def reset(self) -> None:
        """Forget the audio so far (after a gap: the next sample is position 0)."""
        self._partial = np.zeros(0, dtype=np.float64)
        self._powers = np.zeros(0, dtype=np.float64)  # the last frames' mean powers
        self._frames = 0  # frames completed so far

    def feed(self, block: np.ndarray) -> list[int]:
        """Onsets among the frames that ``block`` completes."""
        x = np.concatenate([self._partial, np.asarray(block, dtype=np.float64).reshape(-1)])
        n = x.shape[0] // self.frame
        self._partial = x[n * self.frame:]
        if n == 0:
            return []
        powers = np.mean(x[:n * self.frame].reshape(n, self.frame) ** 2, axis=1)
        history = np.concatenate([self._powers, powers])
        first = self._frames  # absolute index of powers[0]
        offset = first - (history.shape[0] - n)  # absolute index of history[0]
        self._frames += n
        self._powers = history[-(CONTEXT_FRAMES + SHORT_FRAMES):]
        cum = np.concatenate([[0.0], np.cumsum(history)])
        # frame j of history (absolute offset + j) is judged when it has a full context
        js = np.arange(history.shape[0] - n, history.shape[0])
        ok = js >= CONTEXT_FRAMES + SHORT_FRAMES - 1
        js = js[ok]
        if js.size == 0:
            return []
        short = (cum[js + 1] - cum[js + 1 - SHORT_FRAMES]) / SHORT_FRAMES
        ctx_end = js + 1 - SHORT_FRAMES
        context = (cum[ctx_end] - cum[ctx_end - CONTEXT_FRAMES]) / CONTEXT_FRAMES
        rose = (short >= self.ratio * np.maximum(context, 1e-20)) & (short >= self.floor)
        return [int((offset + j + 1) * self.frame) for j in js[rose]]


class OnsetSpans:
    """The sample spans ``[onset, onset + span]`` of the onsets seen so far (pruned)."""

    def __init__(self, span: int):
        self.span = int(span)
        self._onsets: collections.deque = collections.deque()

    def add(self, positions) -> None:
        self._onsets.extend(positions)

    def clear(self) -> None:
        self._onsets.clear()

    def covers(self, position: int) -> bool:
        """Whether ``position`` lies in some onset's span (spans ending before it are dropped)."""
        onsets = self._onsets
        while onsets and onsets[0] + self.span < position:
            onsets.popleft()
        return bool(onsets) and onsets[0] <= position

    @property
    def open_until(self) -> int | None:
        """End of the latest span, if any onset is remembered."""
        return self._onsets[-1] + self.span if self._onsets else None
