"""Wiring: source -> front end -> window grid -> classifier -> decisions -> sinks.

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

import copy
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

from detector.audio.features import make_frontend
from detector.audio.level import LEVEL_FLOOR_DBFS, LevelMeter, SampleRing, dbfs
from detector.audio.windows import WindowGrid
from detector.errors import ConfigError, DetectorError
from detector.events import Decisions, EventTracker
from detector.model.gate import build_gate
from detector.publish.sink import Sink, SinkSet

if TYPE_CHECKING:  # pragma: no cover
    from detector.audio.capture import AudioSource
    from detector.config import Config
    from detector.model.classifier import Classifier

logger = logging.getLogger(__name__)

REANCHOR_SECONDS = 0.5
"""Live clock: re-anchor the stream clock when it is this far from wall time."""


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
        self.sinks = SinkSet(sinks)
        node = node if node is not None else config.mqtt.resolved_node_id
        self.tracker = EventTracker(meta.labels, config.events, meta.thresholds,
                                    background_labels=meta.background_labels,
                                    node=node, model=meta.model_version)
        audioset_labels = getattr(classifier, "audioset_labels", None)
        self.gate = build_gate(meta, config.events,
                               always=audioset_labels.labels if audioset_labels else ())
        """The AudioSet gate between the tracker and the outputs (None: the model has none)."""
        # file_offsets (replay): every event also carries ``offset_s``, its start in seconds
        # from the first sample of the stream (the position in the file, whatever the clock)
        self.decisions = Decisions(self.tracker, self.gate, file_offsets=file_offsets,
                                   record_candidates=record_scores)
        self.frames = meta.frames
        hop_seconds = config.model.window_hop_seconds or meta.window_hop_seconds or 0.25
        if meta.is_streaming:  # a streaming model steps once per chunk, whatever the config
            hop_seconds = meta.window_hop_seconds
        hop_columns = max(1, int(round(hop_seconds * self.params.sample_rate
                                       / self.params.hop_length)))
        self.hop_seconds = hop_columns * self.params.hop_length / self.params.sample_rate
        self.window_span = self.params.samples_for(self.frames)
        self.grid = WindowGrid(
            self.frames, self.params.n_mels, self.params.n_fft, self.params.hop_length,
            self.params.sample_rate, hop_columns,
            onset_hop_seconds=None if meta.is_streaming else config.model.onset_hop_seconds,
            onset_rise_db=config.model.onset_rise_db,
            onset_seconds=config.model.onset_seconds, gate_dbfs=config.events.gate_dbfs)
        """The log-mel columns and the schedule of due windows (regular and onset)."""
        # the classifier's own front end (built once), else the one its metadata names
        self.frontend = getattr(classifier, "frontend", None) or make_frontend(meta)
        self.logmel = self.frontend.stream()  # the model's front end, streaming
        self._zero_scores = np.zeros(len(meta.labels), dtype=np.float32)
        self._ring = SampleRing(self.window_span, self.window_span + 4 * self.params.sample_rate)
        self._stop = threading.Event()
        self._controls: queue.SimpleQueue = queue.SimpleQueue()
        self._statuses: queue.SimpleQueue = queue.SimpleQueue()
        self._reset_features = threading.Event()
        self._thread: threading.Thread | None = None
        self._anchor: float | None = None
        self._levels = LevelMeter(config.mqtt.level_interval_seconds)
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
        self.embedding_rows: list[np.ndarray] = []
        """With ``record_scores`` and a model with an embedding: every window's embedding."""
        self.audioset_rows: list[np.ndarray] = []
        """With ``record_scores`` and a model with an audioset output: every window's
        AudioSet logits."""

    @property
    def started_at(self) -> float | None:
        """Time of the first sample (the stream clock's origin; None before it)."""
        return self.decisions.started_at

    @property
    def hop_columns(self) -> int:
        return self.grid.hop_columns

    @property
    def onset_columns(self) -> int:
        """Columns between onset windows (== ``hop_columns`` when they are off)."""
        return self.grid.onset_columns

    @property
    def onset_windows(self) -> int:
        """Windows classified only because they followed an onset (off the regular hop)."""
        return self.grid.onset_windows

    @property
    def candidates(self) -> list[dict]:
        """With ``record_scores`` and a gate: copies of the tracker's events before the gate
        (exactly what ``events.audioset_gate = false`` publishes)."""
        return self.decisions.candidates

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
            self.decisions.position = self.samples_in / self.params.sample_rate
            self._flush(end_time)
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
                self._flush(when)
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
            self.decisions.reset()  # nor the AudioSet evidence
            self.grid.restart(self.samples_in)
        wall = time.time()
        first_block = self._anchor is None
        if first_block:
            self._anchor = wall - block.shape[0] / rate if self.live else wall
            self.decisions.started_at = self._anchor
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

        # The samples are buffered and transformed once the next window is due (one
        # transform per model hop instead of one per block; same columns).
        t0 = time.perf_counter()
        self.grid.feed(block)
        self.logmel.append(block)
        columns = None
        if self.logmel.ready_columns >= self.grid.columns_to_next_window():
            columns = self.logmel.flush()
        self._features_s += time.perf_counter() - t0
        if columns is not None:
            self._add_columns(columns, block_end)
        for leq, when in self._levels.add(block64, block_end, self.started_at):
            self.sinks.call("level", self._last_level, leq, when)
        return block_end

    def _add_columns(self, columns: np.ndarray, block_end: float) -> None:
        """Append a block's new columns; classify every window that became due."""
        for col_end, window, regular in self.grid.add(columns):
            self._classify(col_end, window, block_end, regular)

    def _classify(self, col_end: int, window: np.ndarray, block_end: float,
                  regular: bool = True) -> None:
        """Model, level and decisions for the window ending just before sample ``col_end``."""
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
        self.decisions.window(now, col_end / self.params.sample_rate)
        events = self.decisions.update(scores, level, now)
        self.windows += 1
        if self.record_scores:
            self._record(col_end, scores, level)
        for event in events:
            self._emit(event)
        if self.sinks.wants("window"):
            timing = {"features_ms": self._features_s * 1000.0, "inference_ms": inference_ms,
                      "model_skipped": 1.0 if skipped else 0.0,
                      "queue_depth": float(self.source.queue_depth),
                      "overflows": float(self.source.overflows)}
            self.sinks.call("window", dict(self.tracker.smoothed), level, now, timing)
        self._features_s = 0.0

    def _record(self, col_end: int, scores: np.ndarray, level: float) -> None:
        """``record_scores``: keep what the analysis plots and evaluations read."""
        # the window's position in the stream (sample-exact, like offset_s)
        self.score_times.append(col_end / self.params.sample_rate)
        self.score_rows.append(np.array(scores, dtype=np.float32))
        smoothed = self.tracker.smoothed
        self.smoothed_rows.append(np.array([smoothed.get(label, 0.0)
                                            for label in self.meta.labels], dtype=np.float32))
        self.level_rows.append(level)
        embedding = getattr(self.classifier, "embedding", None)
        if embedding is not None:
            self.embedding_rows.append(embedding.copy())
        audioset = getattr(self.classifier, "audioset", None)
        if audioset is not None:
            self.audioset_rows.append(audioset.copy())

    def _flush(self, now: float) -> None:
        """End every open event (end of stream, lost device)."""
        for event in self.decisions.flush(now):
            self._emit(event)

    def _emit(self, event: dict) -> None:
        self.decisions.stamp(event)
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
    notify = metrics = None
    if config.clips.enabled:
        ClipSink = _import("detector.publish.clips", "ClipSink", "clips.enabled")
        sinks.append(ClipSink(config.clips, sample_rate))
    if config.metrics.enabled:
        MetricsSink = _import("detector.publish.metrics", "MetricsSink", "metrics.enabled")
        metrics = MetricsSink(config.metrics)
        sinks.append(metrics)
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
        mqtt = MqttSink(config.mqtt, on_control=on_control,
                        on_state=notify.mqtt_state if notify is not None else None)
        sinks.append(mqtt)
        if metrics is not None:  # the MQTT sink never imports metrics: they read it
            metrics.watch_mqtt(mqtt)
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
