"""Sound onsets from the audio level alone, to decide more often while a sound begins.

The model decides on a 1 s window every hop (0.25 s): a sound that begins just after a
window waits a whole hop for the next, and the smoothing of the event tracker another.
An onset here is a sudden rise of the level: the power of the last
:data:`SHORT_FRAMES` frames (10 ms each, on the absolute sample grid) at least ``rise_db``
above the mean power of the second before it, and louder than ``floor_dbfs``. For
``span`` seconds after an onset the pipeline also classifies the windows that end on
the finer ``onset_hop`` grid (see :class:`detector.pipeline.Pipeline`); in steady sound
and in quiet there are no onsets and the model runs at its usual hop.

The detector is fed whole blocks; each 10 ms frame is judged in order with the same
running sums whatever the block boundaries, so its onsets - and therefore the windows -
are the same for any block size.
"""

from __future__ import annotations

import collections
import math

import numpy as np

SHORT_FRAMES = 3
"""Frames (30 ms) whose power is compared with the second before them (``feed`` sums
these three by name)."""
CONTEXT_FRAMES = 100
"""Frames (1 s) of the level an onset must rise above."""
RING = 128
"""Frame powers kept (at least SHORT_FRAMES + CONTEXT_FRAMES)."""


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
        self._partial = np.zeros(0, dtype=np.float32)
        self._ring = [0.0] * RING  # mean powers of the last frames, by frame index % RING
        self._context = 0.0  # sum of the CONTEXT_FRAMES powers before the short frames
        self._frames = 0  # frames completed so far

    def feed(self, block: np.ndarray) -> list[int]:
        """Onsets among the frames that ``block`` completes."""
        x = np.asarray(block, dtype=np.float32).reshape(-1)
        if self._partial.shape[0]:
            x = np.concatenate([self._partial, x])
        n = x.shape[0] // self.frame
        self._partial = x[n * self.frame:]
        if n == 0:
            return []
        framed = x[:n * self.frame].reshape(n, self.frame).astype(np.float64)
        powers = (np.einsum("ij,ij->i", framed, framed) / self.frame).tolist()
        ring, ratio, floor, frame = self._ring, self.ratio, self.floor, self.frame
        need = CONTEXT_FRAMES + SHORT_FRAMES - 1
        context = self._context
        out = []
        i = self._frames
        for p in powers:
            ring[i % RING] = p
            if i >= SHORT_FRAMES:  # frame i - SHORT_FRAMES joins the context ...
                context += ring[(i - SHORT_FRAMES) % RING]
                if i >= SHORT_FRAMES + CONTEXT_FRAMES:  # ... and the oldest one leaves it
                    context -= ring[(i - SHORT_FRAMES - CONTEXT_FRAMES) % RING]
            if i % CONTEXT_FRAMES == 0 and i >= need:  # exact again now and then (no drift)
                context = math.fsum(ring[(i - SHORT_FRAMES - k) % RING]
                                    for k in range(CONTEXT_FRAMES))
            if i >= need:
                short = p + ring[(i - 1) % RING] + ring[(i - 2) % RING]
                if (short >= SHORT_FRAMES * floor
                        and short * CONTEXT_FRAMES >= ratio * SHORT_FRAMES * max(context, 1e-18)):
                    out.append((i + 1) * frame)
            i += 1
        self._frames, self._context = i, context
        return out


class OnsetSpans:
    """The sample spans ``[onset, onset + span]`` of the onsets seen so far (pruned)."""

    def __init__(self, span: int):
        self.span = int(span)
        self._onsets: collections.deque = collections.deque()

    def add(self, positions) -> None:
        self._onsets.extend(positions)

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
