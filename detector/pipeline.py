"""Wiring: source -> streaming front end -> window ring -> classifier -> tracker -> sinks.

One worker thread does everything after capture (capture has its own PortAudio
thread and queue). It stops on :meth:`Pipeline.stop` (SIGTERM/SIGINT in the
CLI) or at the end of a file, then ends open events and closes the sinks.

Windows are cut on the column grid, not per block: a window is due when the
log-mel column count reaches ``frames``, then every ``hop`` columns, so the
windows, their times and therefore the events are the same for any block size.
Samples are buffered and transformed in the block that completes the next due
window's last column (one log-mel call per model hop, not one per 50 ms block).

Energy gate: a window quieter than ``events.gate_dbfs`` is not sent to the model,
because the event tracker counts every score of such a window as 0 anyway; the
events and the smoothed scores the sinks get are identical (tested); the window's
timing says ``inference_ms`` 0 and ``model_skipped`` 1. With ``record_scores`` (analysis plots of raw scores) every
window still runs the model.

Clock: for a file replayed as fast as possible the time of a sample is the wall
time at start plus its position in the stream, so event times and durations are
those of the recording. For live input (and ``--realtime`` replay) the same
stream clock is anchored to the wall clock and re-anchored whenever it drifts
more than :data:`REANCHOR_SECONDS` from it (dropped blocks, a lost device).
"""

from __future__ import annotations

import collections
import copy
import logging
import math
import queue
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

import numpy as np

from detector.errors import ConfigError, DetectorError
from detector.events import EventTracker
from detector.audio.features import make_frontend
from detector.model.gate import build_gate
from detector.audio.onset import OnsetDetector, OnsetSpans
from detector.publish.sink import Sink

if TYPE_CHECKING:  # pragma: no cover
    from detector.audio.capture import AudioSource
    from detector.config import Config
    from detector.model.classifier import Classifier

logger = logging.getLogger(__name__)

REANCHOR_SECONDS = 0.5
"""Live clock: re-anchor the stream clock when it is this far from wall time."""
LEVEL_FLOOR_DBFS = -120.0
"""Level reported for digital silence."""
COLUMN_BUFFER_ROWS = 1024
"""Spare rows of the log-mel column buffer beyond one window (see ``Pipeline``)."""


def dbfs(sum_squares: float, count: int) -> float:
    """RMS level in dB re full scale (a full-scale square wave is 0 dBFS, a sine -3)."""
    if count <= 0 or sum_squares <= 0:
        return LEVEL_FLOOR_DBFS
    return max(LEVEL_FLOOR_DBFS, 10.0 * math.log10(sum_squares / count))


class _SampleRing:
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


class Pipeline:
    """The streaming detector; :meth:`run` in the caller's thread or :meth:`start` a worker."""

    def __init__(self, config: "Config", source: "AudioSource", classifier: "Classifier",
                 sinks: Sequence[Sink] = (), *, live: bool = False,
                 record_scores: bool = False, node: str | None = None,
                 file_offsets: bool = False):
        meta = classifier.metadata
        self.config = config
        self.source = source
        self.classifier = classifier
        self._reset_model = getattr(classifier, "reset", None) or (lambda: None)
        """Forget the stream so far (a streaming model's state; a no-op for window models)."""
        self.meta = meta
        self.params = meta.features
        if source.sample_rate != self.params.sample_rate:
            raise ConfigError(f"audio source delivers {source.sample_rate} Hz but the model "
                              f"needs {self.params.sample_rate} Hz")
        self.live = live
        self.file_offsets = file_offsets
        """Replay: every event also carries ``offset_s``, its start in seconds from the
        first sample of the stream (the position in the file, whatever the clock)."""
        self._window_positions: collections.deque = collections.deque(maxlen=4096)
        self._offsets: dict[str, float] = {}
        self.sinks = SinkSet(sinks)
        node = node if node is not None else config.mqtt.resolved_node_id
        self.tracker = EventTracker(meta.labels, config.events, meta.thresholds,
                                    background_labels=meta.background_labels,
                                    node=node, model=meta.model_version)
        audioset_labels = getattr(classifier, "audioset_labels", None)
        self.gate = build_gate(meta, config.events,
                               always=audioset_labels.labels if audioset_labels else ())
        """The AudioSet gate between the tracker and the outputs (None: the model has none)."""
        self._position = 0.0  # stream position (s) of the window being decided
        self.frames = meta.frames
        hop_seconds = config.model.window_hop_seconds or meta.window_hop_seconds or 0.25
        if meta.is_streaming:  # a streaming model steps once per chunk, whatever the config
            hop_seconds = meta.window_hop_seconds
        self.hop_columns = max(1, int(round(hop_seconds * self.params.sample_rate
                                            / self.params.hop_length)))
        self.hop_seconds = self.hop_columns * self.params.hop_length / self.params.sample_rate
        self.window_span = self.params.samples_for(self.frames)
        # onset windows: after a sudden rise of the level, windows on a finer grid too
        self.onset_columns = self.hop_columns
        onset_hop = config.model.onset_hop_seconds
        if onset_hop and not meta.is_streaming:
            wanted = max(1, int(round(onset_hop * self.params.sample_rate
                                      / self.params.hop_length)))
            cols = max(d for d in range(1, min(wanted, self.hop_columns) + 1)
                       if self.hop_columns % d == 0)
            if cols != wanted:
                logger.info("model.onset_hop_seconds=%g does not divide the window hop (%d "
                            "columns): onset windows every %d columns (%g s)", onset_hop,
                            self.hop_columns, cols,
                            cols * self.params.hop_length / self.params.sample_rate)
            self.onset_columns = cols
        self._onsets = OnsetDetector(self.params.hop_length, config.model.onset_rise_db,
                                     config.events.gate_dbfs)
        self._onset_spans = OnsetSpans(int(round(config.model.onset_seconds
                                                 * self.params.sample_rate)))
        self.onset_windows = 0
        """Windows classified only because they followed an onset (off the regular hop)."""
        # the classifier's own front end (built once), else the one its metadata names
        self.frontend = getattr(classifier, "frontend", None) or make_frontend(meta)
        self.logmel = self.frontend.stream()  # the model's front end, streaming
        # Log-mel columns in a linear buffer: new columns are appended in one copy
        # and a window is a contiguous view of the last ``frames`` rows; when
        # the buffer is full its last ``frames`` rows move to the front (every
        # COLUMN_BUFFER_ROWS columns, ~10 s of audio).
        self._columns = np.zeros((self.frames + COLUMN_BUFFER_ROWS, self.params.n_mels),
                                 dtype=np.float32)
        self._fill = 0  # rows of ``_columns`` in use
        self._n_columns = 0
        self._zero_scores = np.zeros(len(meta.labels), dtype=np.float32)
        self._ring = _SampleRing(self.window_span, self.window_span + 4 * self.params.sample_rate)
        self._grid_start = 0  # absolute sample where log-mel framing (re)started
        self._grid_columns = 0  # columns before that restart
        self._stop = threading.Event()
        self._controls: queue.SimpleQueue = queue.SimpleQueue()
        self._statuses: queue.SimpleQueue = queue.SimpleQueue()
        self._reset_features = threading.Event()
        self._thread: threading.Thread | None = None
        self._anchor: float | None = None
        self._level_interval = config.mqtt.level_interval_seconds
        self._level_sum = 0.0
        self._level_count = 0
        self._next_level: float | None = None
        self._features_s = 0.0
        self._last_level = LEVEL_FLOOR_DBFS
        self.error: BaseException | None = None
        """What stopped the worker, if it did not end normally."""
        self.windows = 0
        """Model windows classified."""
        self.events_out = 0
        """Event messages emitted (a start and an end per event)."""
        self.events_started = 0
        """Events: start messages emitted (what the plot and the log lines count)."""
        self.samples_in = 0
        """Samples read from the source."""
        self.inference_s = 0.0
        """Wall time spent in the model, in seconds (all windows)."""
        self.inferences = 0
        """Windows the model actually ran on (gated quiet windows skip it)."""
        self.started_at: float | None = None
        """Time of the first sample (the stream clock's origin)."""
        self.record_scores = record_scores
        self.score_times: list[float] = []
        """With ``record_scores``: window times in seconds from the start."""
        self.score_rows: list[np.ndarray] = []
        """With ``record_scores``: the raw model scores of every window."""
        self.smoothed_rows: list[np.ndarray] = []
        """With ``record_scores``: the scores the event tracker decided on (gated and
        smoothed, in model label order) after every window."""
        self.events: list[dict] = []
        """With ``record_scores``: copies of every event emitted."""
        self.level_rows: list[float] = []
        """With ``record_scores``: the level (dBFS) of every window."""
        self.candidates: list[dict] = []
        """With ``record_scores`` and a gate: copies of the tracker's events before the gate
        (exactly what ``events.audioset_gate = false`` publishes)."""
        self.embedding_rows: list[np.ndarray] = []
        """With ``record_scores`` and a model with an embedding: every window's embedding."""
        self.audioset_rows: list[np.ndarray] = []
        """With ``record_scores`` and a model with an audioset output: every window's
        AudioSet logits."""

    # -- control from other threads

    def apply_control(self, cmd: Mapping) -> None:
        """Queue a validated control command (``detector.publish.control.parse_control`` form);
        the worker applies it before the next window."""
        self._controls.put(cmd)

    def on_device_status(self, status: str) -> None:
        """Capture's ``on_status`` callback (any thread): forwarded to the sinks."""
        self._statuses.put(status)
        if status == "connected":
            self._reset_features.set()

    def stop(self) -> None:
        """Ask the worker to stop (safe from a signal handler)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        """Run the pipeline in a worker thread."""
        self._thread = threading.Thread(target=self._run_guarded, name="pipeline", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker; True when it has finished."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run_guarded(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # reported by the CLI from the main thread
            self.error = exc

    # -- the loop

    def run(self) -> None:
        """Process audio until the source ends or :meth:`stop` is called."""
        logger.debug("pipeline: %d Hz, window %d columns (%.3f s), hop %d columns (%.3f s), "
                     "%s clock, outputs %s", self.params.sample_rate, self.frames,
                     self.window_span / self.params.sample_rate, self.hop_columns,
                     self.hop_seconds, "live" if self.live else "stream",
                     ", ".join(type(s).__name__ for s in self.sinks.sinks) or "none")
        # enabled labels first, so the first discovery a sink publishes already follows them
        self.sinks.call("labels_enabled", self.tracker.enabled_labels)
        self.sinks.call("start", self.tracker.event_labels, self.meta.model_version)
        now = time.time()
        try:
            self.source.start()
            while not self._stop.is_set():
                self._drain_controls()
                try:
                    block = self.source.read(timeout=0.5)
                except EOFError:
                    break
                if block is None:
                    continue
                now = self._process_block(block)
        except DetectorError:
            raise
        except Exception:
            logger.exception("the pipeline stopped on an unexpected error")
            raise
        finally:
            try:
                self.source.stop()
            except Exception:
                logger.exception("stopping the audio source failed")
            if self.live or self._anchor is None:
                end_time = time.time() if self.live else now
            else:
                end_time = self._clock_now()
            self._drain_controls()
            self._position = self.samples_in / self.params.sample_rate
            for event in self._decide(self.tracker.flush(end_time), end_time, final=True):
                self._emit(event)
            self.sinks.call("close")
            logger.info("pipeline stopped: %.1f s of audio, %d windows, %d event%s "
                        "(%d start/end messages)", self.samples_in / self.params.sample_rate,
                        self.windows, self.events_started,
                        "" if self.events_started == 1 else "s", self.events_out)

    def _clock_now(self) -> float:
        assert self._anchor is not None
        return self._anchor + self.samples_in / self.params.sample_rate

    def _drain_controls(self) -> None:
        if self._statuses.empty() and self._controls.empty():  # nearly always: no raise
            return
        while True:
            try:
                status = self._statuses.get_nowait()
            except queue.Empty:
                break
            self.sinks.call("status", "device", status)
            if status == "lost":
                # nothing is heard while the device is away: do not leave events open
                when = (time.time() if self.live else self._clock_now() if self._anchor
                        else time.time())
                for event in self._decide(self.tracker.flush(when), when, final=True):
                    self._emit(event)
        while True:
            try:
                cmd = self._controls.get_nowait()
            except queue.Empty:
                break
            self._apply(cmd)

    def _apply(self, cmd: Mapping) -> None:
        try:
            changes = dict(cmd.get("labels", {}))
            if not all(isinstance(change, Mapping) for change in changes.values()):
                raise ConfigError("each label's change must be an object")
            trial = copy.deepcopy(self.tracker)  # all or nothing: try on a copy first
            for label, change in changes.items():
                trial.set_label(label, enabled=change.get("enabled"),
                                threshold_on=change.get("threshold_on"),
                                threshold_off=change.get("threshold_off"))
            for label, change in changes.items():
                self.tracker.set_label(label, enabled=change.get("enabled"),
                                       threshold_on=change.get("threshold_on"),
                                       threshold_off=change.get("threshold_off"))
                on, off = self.tracker.thresholds(label)
                logger.info("control: %s enabled=%s on=%.3f off=%.3f", label,
                            self.tracker.is_enabled(label), on, off)
            if any("enabled" in change for change in changes.values()):
                self.sinks.call("labels_enabled", self.tracker.enabled_labels)
        except (DetectorError, AttributeError, TypeError, ValueError) as exc:
            logger.warning("control command ignored: %s", exc)

    def _process_block(self, block: np.ndarray) -> float:
        rate = self.params.sample_rate
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        if self._reset_features.is_set():  # audio resumed after a gap: restart framing
            self._reset_features.clear()
            # columns already complete before the gap (fewer than a window needs)
            self._add_columns(self.logmel.flush(),
                              self._clock_now() if self._anchor is not None else 0.0)
            self.logmel.reset()
            self._reset_model()  # a streaming model's state must not span the gap
            if self.gate is not None:
                self.gate.reset()  # nor the AudioSet evidence
            self._grid_start, self._grid_columns = self.samples_in, self._n_columns
            self._onsets.reset()
        wall = time.time()
        first_block = self._anchor is None
        if first_block:
            self._anchor = wall - block.shape[0] / rate if self.live else wall
            self.started_at = self._anchor
        self.samples_in += block.shape[0]
        if self.live and not first_block:
            drift = wall - self._clock_now()
            if abs(drift) > REANCHOR_SECONDS:
                logger.debug("live clock re-anchored by %.3f s", drift)
                self._anchor += drift
        block_end = self._clock_now()
        self.sinks.call("audio", block, block_end)
        block64 = self._ring.write(block)
        if block64 is None:  # wrapped around the ring's end
            block64 = block.astype(np.float64)
        self._level_sum += float(np.dot(block64, block64))
        self._level_count += block.shape[0]
        if self._next_level is None:
            self._next_level = self.started_at + self._level_interval

        # The samples are buffered and transformed once the next window is due (one
        # transform per model hop instead of one per block; same columns).
        t0 = time.perf_counter()
        if self.onset_columns != self.hop_columns:
            onsets = self._onsets.feed(block)
            if onsets:
                self._onset_spans.add([self._grid_start + p for p in onsets])
        self.logmel.append(block)
        columns = None
        if self.logmel.ready_columns >= self._columns_to_next_window():
            columns = self.logmel.flush()
        self._features_s += time.perf_counter() - t0
        if columns is not None:
            self._add_columns(columns, block_end)
        while block_end >= self._next_level:
            leq = dbfs(self._level_sum, self._level_count)
            self.sinks.call("level", self._last_level, leq, self._next_level)
            self._level_sum, self._level_count = 0.0, 0
            self._next_level += self._level_interval
        return block_end

    def _columns_to_next_window(self) -> int:
        """New columns needed until the next window is due (1..hop_columns once running)."""
        count = self._n_columns
        if count < self.frames:
            return self.frames - count
        step = self.hop_columns
        if self.onset_columns != step:
            open_until = self._onset_spans.open_until
            if open_until is not None and open_until >= self._column_end(count + 1):
                step = self.onset_columns  # an onset's span is open: finer grid
        return step - (count - self.frames) % step

    def _column_end(self, count: int) -> int:
        """Absolute sample index just past the last sample of column ``count`` (1-based)."""
        return (self._grid_start + self.params.n_fft
                + (count - 1 - self._grid_columns) * self.params.hop_length)

    def _add_columns(self, columns: np.ndarray, block_end: float) -> None:
        """Append a block's new columns; classify every window that became due.

        A window is due after the column whose 1-based count ``c`` satisfies
        ``c >= frames`` and ``(c - frames) % hop_columns == 0``.
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
        start_fill, start_count = self._fill, self._n_columns
        self._columns[start_fill:start_fill + k] = columns
        self._fill += k
        self._n_columns += k
        step = self.onset_columns  # == hop_columns without onset windows
        first = max(start_count + 1, frames)
        first += (-(first - frames)) % step
        for count in range(first, start_count + k + 1, step):
            regular = (count - frames) % self.hop_columns == 0
            if not regular and not self._onset_spans.covers(self._column_end(count)):
                continue
            end_row = start_fill + (count - start_count)
            self._classify(count, self._columns[end_row - frames:end_row], block_end, regular)
            self.onset_windows += not regular

    def _classify(self, count: int, window: np.ndarray, block_end: float,
                  regular: bool = True) -> None:
        """Model, level and event tracker for the window ending at column ``count``."""
        # absolute sample index just past this column's last sample (per StreamingFrontEnd)
        col_end = self._column_end(count)
        now = block_end - (self.samples_in - col_end) / self.params.sample_rate
        level = dbfs(*self._ring.sum_squares(col_end - self.window_span, col_end))
        skipped = level < self.tracker.settings.gate_dbfs and not self.record_scores
        if skipped:
            # The tracker's energy gate turns every score of this window into 0 whatever
            # the model says, so its events and smoothed scores are the same without
            # running the model (raw scores are only kept with ``record_scores``).
            scores = self._zero_scores
            inference_ms = 0.0
            self._reset_model()  # the model did not hear this window
        else:
            t0 = time.perf_counter()
            scores = self.classifier.predict(window)
            inference_ms = (time.perf_counter() - t0) * 1000.0
            self.inference_s += inference_ms / 1000.0
            self.inferences += 1
            if self.gate is not None and regular:
                # evidence is pooled over the regular grid only, so the finer onset
                # windows do not weigh a sound's first second more than the rest
                self.gate.add(now, getattr(self.classifier, "audioset", None))
        self._last_level = level
        self._drain_controls()
        if self.file_offsets:
            self._window_positions.append((now, col_end / self.params.sample_rate))
        self._position = col_end / self.params.sample_rate
        events = self._decide(self.tracker.update(scores, level, now), now)
        self.windows += 1
        if self.record_scores:
            # the window's position in the stream (sample-exact, like offset_s)
            self.score_times.append(col_end / self.params.sample_rate)
            self.score_rows.append(np.array(scores, dtype=np.float32))
            smoothed = self.tracker.smoothed
            self.smoothed_rows.append(np.array([smoothed.get(label, 0.0)
                                                for label in self.meta.labels],
                                               dtype=np.float32))
            self.level_rows.append(level)
            embedding = getattr(self.classifier, "embedding", None)
            if embedding is not None:
                self.embedding_rows.append(embedding.copy())
            audioset = getattr(self.classifier, "audioset", None)
            if audioset is not None:
                self.audioset_rows.append(audioset.copy())
        for event in events:
            self._emit(event)
        if self.sinks.wants("window"):
            timing = {"features_ms": self._features_s * 1000.0, "inference_ms": inference_ms,
                      "model_skipped": 1.0 if skipped else 0.0,
                      "queue_depth": float(self.source.queue_depth),
                      "overflows": float(self.source.overflows)}
            self.sinks.call("window", dict(self.tracker.smoothed), level, now, timing)
        self._features_s = 0.0

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
        """The tracker's candidate ``events`` through the gate (when the model has one):
        what to publish now. Replay positions are taken here, where the tracker knows
        each event's onset."""
        if self.file_offsets:
            for event in events:
                event["offset_s"] = self._offset_of(event)
        if self.gate is None:
            return events
        if self.record_scores:  # what the daemon would publish with the gate off
            for event in events:
                self.candidates.append({**event, "published_offset_s": round(self._position, 3)}
                                       if self.file_offsets else dict(event))
        out = self.gate.filter(events, now)
        if final:
            out += self.gate.flush(now)
        return out

    def _emit(self, event: dict) -> None:
        if self.file_offsets:
            event["published_offset_s"] = round(self._position, 3)
        logger.debug("%s %s (score %.2f, peak %.2f)", event["type"], event["label"],
                     event["score"], event["peak_score"])
        self.events_out += 1
        if event["type"] == "start":
            self.events_started += 1
        self.sinks.call("event", event)
        if self.record_scores:
            self.events.append(dict(event))


def build_sinks(config: "Config", sample_rate: int,
                on_control: Callable[[dict], None] | None = None,
                stdout: bool | None = None, extra: Sequence[Sink] = ()) -> list[Sink]:
    """Outputs in the contract order: clips, metrics, systemd notify, MQTT, stdout (+ extra).

    Optional outputs are imported only when enabled, so a minimal install never
    loads paho or an HTTP server it does not use.
    """
    sinks: list[Sink] = []
    notify = None
    if config.clips.enabled:
        ClipSink = _import("detector.publish.clips", "ClipSink", "clips.enabled")
        sinks.append(ClipSink(config.clips, sample_rate))
    if config.metrics.enabled:
        MetricsSink = _import("detector.publish.metrics", "MetricsSink", "metrics.enabled")
        sinks.append(MetricsSink(config.metrics))
    try:
        from detector.publish.notify import NotifySink
    except ImportError:
        import os
        if os.environ.get("NOTIFY_SOCKET"):
            logger.warning("NOTIFY_SOCKET is set but detector.publish.notify is missing; "
                           "systemd will not get READY=1")
    else:
        notify = NotifySink(device=config.audio.device)
        sinks.append(notify)
    if config.mqtt.enabled:
        MqttSink = _import("detector.publish.mqtt", "MqttSink", "mqtt.enabled")
        sinks.append(MqttSink(config.mqtt, on_control=on_control,
                              on_state=notify.mqtt_state if notify is not None else None))
    if config.output.stdout_json if stdout is None else stdout:
        from detector.publish.stdout import StdoutSink
        sinks.append(StdoutSink())
    sinks.extend(extra)
    return sinks


def _import(module: str, name: str, key: str):
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{key}=true but {module}.{name} cannot be loaded ({exc}); "
                          f"set {key} = false or reinstall the package") from None
