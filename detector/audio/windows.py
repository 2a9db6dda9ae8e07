"""Model windows cut from the stream of log-mel columns, on a fixed column grid.

A window is due when the column count reaches ``frames``, then every
``hop_columns`` columns, so the windows (and their times) are the same for any
block size. After a sudden rise of the level (an onset, :mod:`detector.audio.onset`)
windows are also cut on a finer grid of ``onset_columns`` for a while: *onset
windows*, which hear a short sound's start sooner.

Columns live in a linear buffer: new columns are appended in one copy and a
window is a contiguous view of the last ``frames`` rows; when the buffer is full
its last ``frames`` rows move to the front (every :data:`COLUMN_BUFFER_ROWS`
columns, ~10 s of audio).
"""

from __future__ import annotations

import logging
from typing import Iterator

import numpy as np

from detector.audio.onset import OnsetDetector, OnsetSpans

logger = logging.getLogger(__name__)

COLUMN_BUFFER_ROWS = 1024
"""Spare rows of the log-mel column buffer beyond one window."""


class WindowGrid:
    """The column buffer and the schedule of due windows (regular and onset windows).

    ``n_fft``/``hop_length`` place each column in the stream: column ``c`` (1-based,
    counted since the framing last restarted at sample ``grid_start``) ends just
    before sample :meth:`column_end` ``(c)``.
    """

    def __init__(self, frames: int, n_mels: int, n_fft: int, hop_length: int, sample_rate: int,
                 hop_columns: int, onset_hop_seconds: float | None = None,
                 onset_rise_db: float = 0.0, onset_seconds: float = 0.0,
                 gate_dbfs: float = -120.0):
        self.frames = frames
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.hop_columns = hop_columns
        self.onset_columns = hop_columns
        """Columns between onset windows (== ``hop_columns`` when they are off)."""
        if onset_hop_seconds:
            wanted = max(1, int(round(onset_hop_seconds * sample_rate / hop_length)))
            cols = max(d for d in range(1, min(wanted, hop_columns) + 1)
                       if hop_columns % d == 0)
            if cols != wanted:
                logger.info("model.onset_hop_seconds=%g does not divide the window hop (%d "
                            "columns): onset windows every %d columns (%g s)",
                            onset_hop_seconds, hop_columns, cols,
                            cols * hop_length / sample_rate)
            self.onset_columns = cols
        self._onsets = OnsetDetector(hop_length, onset_rise_db, gate_dbfs)
        self._spans = OnsetSpans(int(round(onset_seconds * sample_rate)))
        self._columns = np.zeros((frames + COLUMN_BUFFER_ROWS, n_mels), dtype=np.float32)
        self._fill = 0  # rows of ``_columns`` in use
        self.count = 0
        """Columns appended so far."""
        self._grid_start = 0  # absolute sample where log-mel framing (re)started
        self._grid_columns = 0  # columns before that restart
        self.onset_windows = 0
        """Windows cut only because they followed an onset (off the regular hop)."""

    @property
    def onset_windows_on(self) -> bool:
        return self.onset_columns != self.hop_columns

    def feed(self, block: np.ndarray) -> None:
        """The block's samples, for the onset detector (before its columns are added)."""
        if self.onset_windows_on:
            onsets = self._onsets.feed(block)
            if onsets:
                self._spans.add([self._grid_start + p for p in onsets])

    def restart(self, samples_in: int) -> None:
        """The framing restarts at absolute sample ``samples_in`` (audio after a gap)."""
        self._grid_start, self._grid_columns = samples_in, self.count
        self._onsets.reset()

    def columns_to_next_window(self) -> int:
        """New columns needed until the next window is due (1..hop_columns once running)."""
        count = self.count
        if count < self.frames:
            return self.frames - count
        step = self.hop_columns
        if self.onset_windows_on:
            open_until = self._spans.open_until
            if open_until is not None and open_until >= self.column_end(count + 1):
                step = self.onset_columns  # an onset's span is open: finer grid
        return step - (count - self.frames) % step

    def column_end(self, count: int) -> int:
        """Absolute sample index just past the last sample of column ``count`` (1-based)."""
        return (self._grid_start + self.n_fft
                + (count - 1 - self._grid_columns) * self.hop_length)

    def add(self, columns: np.ndarray) -> Iterator[tuple[int, np.ndarray, bool]]:
        """Append a block's new columns; yields every window that became due, in order:
        ``(column_end, window [frames, n_mels], regular)``. A window is a view, valid
        until the next :meth:`add`.

        A window is due after the column whose 1-based count ``c`` satisfies
        ``c >= frames`` and ``(c - frames) % hop_columns == 0`` (regular), or on the
        onset grid while an onset's span covers it.
        """
        k = columns.shape[0]
        if k == 0:
            return
        frames = self.frames
        if self._fill + k > self._columns.shape[0]:
            keep = min(self._fill, frames)
            rows = max(self._columns.shape[0], keep + k)
            if rows > self._columns.shape[0]:
                grown = np.zeros((rows, self._columns.shape[1]), dtype=np.float32)
                grown[:keep] = self._columns[self._fill - keep:self._fill]
                self._columns = grown
            else:
                self._columns[:keep] = self._columns[self._fill - keep:self._fill]
            self._fill = keep
        start_fill, start_count = self._fill, self.count
        self._columns[start_fill:start_fill + k] = columns
        self._fill += k
        self.count += k
        step = self.onset_columns  # == hop_columns without onset windows
        first = max(start_count + 1, frames)
        first += (-(first - frames)) % step
        for count in range(first, start_count + k + 1, step):
            regular = (count - frames) % self.hop_columns == 0
            col_end = self.column_end(count)
            if not regular and not self._spans.covers(col_end):
                continue
            end_row = start_fill + (count - start_count)
            self.onset_windows += not regular
            yield col_end, self._columns[end_row - frames:end_row], regular
