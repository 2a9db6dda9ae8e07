"""Sound level: dBFS of exact sample spans, and the level reports the sinks get.

The pipeline measures every window's level over exactly the samples the window
hears (:class:`SampleRing`), and reports the equivalent level (Leq) of every
``mqtt.level_interval_seconds`` of audio (:class:`LevelMeter`).
"""

from __future__ import annotations

import math

import numpy as np

LEVEL_FLOOR_DBFS = -120.0
"""Level reported for digital silence."""


def dbfs(sum_squares: float, count: int) -> float:
    """RMS level in dB re full scale (a full-scale square wave is 0 dBFS, a sine -3)."""
    if count <= 0 or sum_squares <= 0:
        return LEVEL_FLOOR_DBFS
    return max(LEVEL_FLOOR_DBFS, 10.0 * math.log10(sum_squares / count))


class SampleRing:
    """The most recent samples, to measure the level of an exact sample span.

    Holds at least ``keep`` samples before the start of the newest block, growing
    when a block is larger than the free space.
    """

    def __init__(self, keep: int, capacity: int):
        self.keep = keep
        # float64: each sample converted once on the way in (exactly), not per window
        self.buf = np.zeros(max(capacity, 2 * keep), dtype=np.float64)
        self.total = 0

    def write(self, block: np.ndarray) -> np.ndarray | None:
        """Append ``block``; returns its float64 copy in the ring when it was written in
        one piece (a view, valid until the next write), else None."""
        n = block.shape[0]
        cap = self.buf.shape[0]
        if n + self.keep > cap:
            held = min(self.total, cap)
            old = self.buf[np.arange(self.total - held, self.total) % cap]
            cap = 2 * (n + self.keep)
            self.buf = np.zeros(cap, dtype=np.float64)
            self.buf[np.arange(self.total - held, self.total) % cap] = old
        start = self.total % cap
        first = min(n, cap - start)
        self.buf[start:start + first] = block[:first]
        self.total += n
        if first == n:
            return self.buf[start:start + n]
        self.buf[:n - first] = block[first:]
        return None

    def sum_squares(self, start: int, end: int) -> tuple[float, int]:
        """Sum of squares of absolute samples [start, end) that are still held."""
        cap = self.buf.shape[0]
        start = max(start, self.total - cap, 0)
        if end <= start:
            return 0.0, 0
        a, b = start % cap, end % cap
        parts = (self.buf[a:b],) if a < b else (self.buf[a:], self.buf[:b])
        total = 0.0
        for part in parts:
            total += float(np.dot(part, part))
        return total, end - start


class LevelMeter:
    """Equivalent level (Leq) of every ``interval`` seconds of the stream.

    :meth:`add` takes each block (its float64 samples) and the stream time of its
    last sample, and returns the reports that became due: ``(leq_dbfs, time)``.
    """

    def __init__(self, interval: float):
        self.interval = interval
        self._sum = 0.0
        self._count = 0
        self._next: float | None = None

    def add(self, samples: np.ndarray, block_end: float, started_at: float
            ) -> list[tuple[float, float]]:
        self._sum += float(np.dot(samples, samples))
        self._count += samples.shape[0]
        if self._next is None:
            self._next = started_at + self.interval
        due = []
        while block_end >= self._next:
            due.append((dbfs(self._sum, self._count), self._next))
            self._sum, self._count = 0.0, 0
            self._next += self.interval
        return due
