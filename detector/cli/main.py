"""Command line: ``sound-detector {run,replay,devices,validate-config,analyze,enroll,custom}``.

parse -> load config -> load model -> build sinks -> run the pipeline. Every
:class:`~detector.errors.DetectorError` becomes one line on stderr
(``sound-detector: error: ...``) and exit code 2, like an argparse usage error;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from detector import __version__
from detector.errors import AudioError, ConfigError, DataLossError, DetectorError
from detector.publish.sink import Sink

logger = logging.getLogger("detector")
PROG = "sound-detector"


# --------------------------------------------------------------------------- logging
def setup_logging(level: str = "info") -> None:
    """Logs on stderr; no timestamps when stderr goes to journald (it adds its own)."""
    # systemd sets JOURNAL_STREAM when it connects stdout/stderr to the journal; the
    # brief's rule is "set -> journald" (a stricter dev:inode match would also drop
    # timestamps less often for children that inherit the variable).
    journald = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = ("%(levelname)s %(name)s: %(message)s" if journald
           else "%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_sound_detector", False):
            root.removeHandler(handler)
    handler = _Handler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    handler._sound_detector = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))


_held: list[logging.LogRecord] | None = None
"""While a command starts: its log records, held so that a failing start prints its
error line alone (see :func:`hold_logs`)."""


class _Handler(logging.StreamHandler):
    """Writes to the ``sys.stderr`` of the moment (not the one at setup: a handler that
    outlives a redirected stderr must not write to a closed file)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it; sys.stderr rules
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if _held is not None:
            _held.append(record)
            return
        super().emit(record)


def hold_logs() -> None:
    """Hold log lines until :func:`release_logs`: a command that fails while starting
    (a bad config, a busy outbox) prints its one error line and nothing else."""
    global _held
    if _held is None:
        _held = []


def release_logs(failed: bool = False) -> None:
    """Print the held lines (those still at or above the log level), or after a failed
    start only its warnings and errors."""
    global _held
    records, _held = _held, None
    if not records:
        return
    root = logging.getLogger()
    handlers = [h for h in root.handlers if getattr(h, "_sound_detector", False)]
    for record in records:
        if record.levelno < root.level or (failed and record.levelno < logging.WARNING):
            continue
        for handler in handlers:
            handler.handle(record)


# --------------------------------------------------------------------------- parser
def _device(value: str) -> str | int:
    return int(value) if value.strip().isdigit() else value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Real-time sound-event detector: microphone or file -> "
        "log-mel -> ONNX classifier -> events on stdout / MQTT.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="debug logging")
    model_opts = argparse.ArgumentParser(add_help=False)
    model_opts.add_argument("--config", metavar="PATH",
                            help="TOML config (default: built-in defaults; "
                            "`sound-detector config` prints a commented example)")
    model_opts.add_argument("--model", metavar="PATH",
                            help="ONNX model (overrides model.path; default: the shipped model)")
    model_opts.add_argument("--custom", metavar="DIR",
                            help="directory of custom labels (overrides model.custom_dir; "
                            "default: custom/ in the service's state directory)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", parents=[common, model_opts],
                         help="the daemon: listen to the microphone until SIGTERM/SIGINT")
    run.add_argument("--device", type=_device, metavar="NAME|INDEX",
                     help="input device (overrides audio.device; see `devices`)")
    run.add_argument("--show-scores", action="store_true",
                     help="print a live line of the clock time and the top-5 scores on stderr "
                     "(for tuning)")

    replay = sub.add_parser("replay", parents=[common, model_opts],
                            help="run the same pipeline on an audio file; one JSON line "
                            "per start/end event on stdout")
    replay.add_argument("file", nargs="?", metavar="FILE",
                        help="WAV/FLAC/OGG file (default: the bundled demo clip)")
    replay.add_argument("--realtime", action="store_true",
                        help="pace the file like a microphone instead of as fast as possible")
    replay.add_argument("--plot", metavar="OUT.png",
                        help="also write a PNG of the scores over time with the events")
    replay.add_argument("--show-scores", action="store_true",
                        help="print the position in the file (s) and the top-5 scores of every "
                        "window on stderr")
    replay.add_argument("--stats", action="store_true",
                        help="print CPU time per second of audio and memory use on stderr")
    replay.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="play the file N times back to back as one stream "
                        "(soak tests: a 10 s clip x 8640 = 24 h)")

    sub.add_parser("devices", parents=[common], help="list audio input devices")

    ha = sub.add_parser("homeassistant", parents=[common],
                        help="Home Assistant: --remove deletes this node's discovery and "
                        "retained topics from the broker (the device disappears)")
    ha.add_argument("--remove", action="store_true", required=True,
                    help="clear the node's retained discovery configs and topics")
    ha.add_argument("--config", metavar="PATH",
                    help="TOML config with the [mqtt] settings (default: built-in defaults)")
    ha.add_argument("--node-id", metavar="ID",
                    help="the node to remove (default: mqtt.node_id, else the host name); "
                    "use the old id after renaming a node")

    sub.add_parser("config", parents=[common],
                   help="print a commented example config with every key "
                   "(sound-detector config > config.toml)")

    validate = sub.add_parser("validate-config", parents=[common],
                              help="check a config file (and the model it names); "
                              "print OK or the problem")
    validate.add_argument("path", metavar="PATH",
                          help="the TOML config to check (e.g. /etc/sound-detector/config.toml)")
    validate.add_argument("--model", metavar="PATH", help="check against this model")
    validate.add_argument("--custom", metavar="DIR",
                          help="custom labels the config may name (default: model.custom_dir, "
                          "else custom/ in $STATE_DIRECTORY, else the installed service's "
                          "/var/lib/sound-detector/custom when it exists: where the daemon "
                          "would load them)")
    validate.add_argument("--no-model", action="store_true",
                          help="check the file only, do not load the model")

    labels = sub.add_parser("labels", parents=[common, model_opts],
                            help="list the labels this node can detect: built-in, custom and "
                            "the 527 AudioSet classes (events.audioset_labels)")
    labels.add_argument("--search", metavar="WORD",
                        help="only labels and AudioSet names holding WORD (e.g. --search door)")

    from detector.cli.enrolment import add_enroll_arguments

    enroll = sub.add_parser("enroll", parents=[common, model_opts],
                            help="teach a custom label from a few clips of the sound "
                            "(or --record takes); saves <custom dir>/LABEL.npz")
    add_enroll_arguments(enroll)
    custom = sub.add_parser("custom", parents=[common],
                            help="custom labels: `custom list`, `custom remove LABEL`")
    custom_sub = custom.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (("list", "list the custom labels and what their enrolment measured"),
                       ("remove", "delete a custom label")):
        action = custom_sub.add_parser(name, help=text)
        if name == "remove":
            action.add_argument("label", metavar="LABEL")
        action.add_argument("--custom", metavar="DIR",
                            help="directory of custom labels (default: model.custom_dir, "
                            "else custom/ in the service's state directory)")
        action.add_argument("--config", metavar="PATH", help="TOML config")
        action.add_argument("--debug", action="store_true", help="debug logging")

    analyze = sub.add_parser("analyze", parents=[common],
                             help="plots and a feature table for audio files "
                             "(needs the [analysis] extra)")
    try:
        from detector.cli import analysis
    except Exception as exc:  # a broken optional module must not break the daemon
        analyze.set_defaults(analysis_error=str(exc))
        analyze.add_argument("rest", nargs=argparse.REMAINDER)
    else:
        analysis.add_arguments(analyze)
    return parser


# --------------------------------------------------------------------------- helpers
def _load(args: argparse.Namespace, custom: bool = True, runtime: bool = False):
    """Config and classifier; with ``custom`` the custom labels are attached; with
    ``runtime`` everything the daemon's outputs would refuse is checked first."""
    from detector.checks import check_runtime
    from detector.config import load_config
    from detector.model.classifier import Classifier, check_against_model

    config = load_config(args.config)
    if runtime:
        check_runtime(config)
    if getattr(args, "device", None) is not None:
        config = replace(config, audio=replace(config.audio, device=args.device))
    if not args.debug:
        setup_logging(config.output.log_level)
    model_path = args.model or config.model.path
    if model_path is not None and args.model is None and config.source:
        # a relative model.path is relative to the config file
        path = Path(model_path).expanduser()
        if not path.is_absolute():
            model_path = str(Path(config.source).resolve().parent / path)
    classifier = Classifier(model_path, config.model.providers, config.model.intra_op_threads)
    if custom:
        _attach_custom(args, config, classifier)
    _attach_audioset(config, classifier)
    check_against_model(config, classifier.metadata)
    return config, classifier


def _attach_audioset(config, classifier) -> None:
    """The ``events.audioset_labels`` as labels of the classifier (none: nothing)."""
    if config.events.audioset_labels:
        from detector.model.audioset import AudioSetLabels

        classifier.attach_audioset(AudioSetLabels(tuple(config.events.audioset_labels)))


def _attach_custom(args, config, classifier, service_fallback: bool = False) -> list[str]:
    """Attach the custom heads the daemon would load; returns their labels. With
    ``service_fallback`` (validate-config, run from a shell), the installed service's
    state directory stands in for $STATE_DIRECTORY."""
    from detector.model.custom import load_custom_dir, resolve_custom_dir, service_custom_dir

    directory, explicit = resolve_custom_dir(getattr(args, "custom", None), config)
    if directory is None and service_fallback:
        directory = service_custom_dir()
    if directory is None:
        return []
    heads = load_custom_dir(directory, explicit)
    if len(heads):
        classifier.attach_custom(heads)
        logger.info("custom labels from %s: %s", directory, ", ".join(heads.labels))
    return list(heads.labels)


def _install_signals(stop) -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    received: list[int] = []

    def handler(signum, frame):  # noqa: ARG001
        name = signal.Signals(signum).name
        received.append(signum)
        if len(received) > 1:  # a second signal: the user does not want to wait
            logger.warning("%s received again: exiting without a clean shutdown", name)
            os._exit(130)
        logger.info("%s received: stopping", name)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _run_pipeline(pipeline) -> None:
    _install_signals(pipeline.stop)
    release_logs()  # started: from here on lines go out as they come
    pipeline.start()
    while not pipeline.join(0.25):
        pass
    if pipeline.error is not None:
        raise pipeline.error


class _RssProbe(Sink):
    """``--stats``: log the resident memory once per hour of audio (soak curves)."""

    def __init__(self, every_seconds: float = 3600.0):
        self.every = every_seconds
        self.first: float | None = None
        self.next_at: float | None = None
        self.samples: list[tuple[float, float]] = []

    def window(self, scores, level_dbfs, now, timing) -> None:
        if self.first is None:
            self.first, self.next_at = now, now + self.every
        elif now >= self.next_at:
            self.next_at += self.every
            rss = _rss_mb()
            self.samples.append(((now - self.first) / 3600.0, rss))
            logger.info("stats: %.1f h of audio, RSS %.1f MB", (now - self.first) / 3600.0, rss)


def _build(config, classifier, source_factory, *, live: bool, stdout: bool | None,
           show_scores: bool, record: bool = False, extra_sinks=(), file_offsets: bool = False):
    from detector.pipeline import Pipeline, build_sinks
    from detector.publish.stdout import ScoresView

    holder: list = []

    def on_control(cmd: dict) -> None:
        if holder:
            holder[0].apply_control(cmd)

    def on_status(status: str) -> None:
        if holder:
            holder[0].on_device_status(status)

    sample_rate = classifier.metadata.features.sample_rate
    source = source_factory(sample_rate, on_status)
    # replay stamps each scores line with its position in the file, run with the clock
    view = (ScoresView(sample_rate=sample_rate if file_offsets else None)
            if show_scores else None)
    extra = ([view] if view is not None else []) + list(extra_sinks)
    sinks = build_sinks(config, sample_rate, on_control=on_control, stdout=stdout, extra=extra)
    pipeline = Pipeline(config, source, classifier, sinks, live=live, record_scores=record,
                        file_offsets=file_offsets)
    if view is not None and pipeline.gate is not None:
        view.audioset_top = pipeline.gate.top  # the AudioSet classes beside the label scores
    holder.append(pipeline)
    return pipeline


# --------------------------------------------------------------------------- commands
def cmd_run(args: argparse.Namespace) -> int:
    from detector.audio.capture import MicSource

    config, classifier = _load(args, runtime=True)

    def source(rate, on_status):
        return MicSource(config.audio, rate, on_status=on_status)

    pipeline = _build(config, classifier, source, live=True, stdout=None,
                      show_scores=args.show_scores)
    _run_pipeline(pipeline)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from detector.audio.capture import DEMO_CLIP, FileSource

    plot_scores = _plotter() if args.plot else None  # fail before a long replay, not after
    config, classifier = _load(args, runtime=True)
    path = Path(args.file) if args.file else DEMO_CLIP
    if args.file is None and not path.exists():
        raise ConfigError(f"the bundled demo clip {path.name} is missing; pass FILE")

    if args.repeat < 1:
        raise ConfigError(f"--repeat {args.repeat} must be >= 1")

    def source(rate, on_status):  # noqa: ARG001
        def open_file():
            return FileSource(path, rate, realtime=args.realtime,
                              block_seconds=config.audio.block_seconds)
        return _Repeat(open_file, args.repeat) if args.repeat > 1 else open_file()

    pipeline = _build(config, classifier, source, live=args.realtime, stdout=True,
                      show_scores=args.show_scores, record=bool(args.plot),
                      extra_sinks=[_RssProbe()] if args.stats else [], file_offsets=True)
    cpu0, wall0, rss0 = time.process_time(), time.perf_counter(), _rss_mb()
    _run_pipeline(pipeline)
    if pipeline.windows == 0:
        rate = pipeline.params.sample_rate
        raise AudioError(f"{path}: {pipeline.samples_in / rate:.2f} s of audio is shorter than "
                         f"one model window ({pipeline.window_span / rate:.2f} s): nothing was "
                         "processed")
    if args.stats:
        _print_stats(pipeline, time.process_time() - cpu0, time.perf_counter() - wall0, rss0)
    if plot_scores is not None:
        _plot(plot_scores, pipeline, classifier, args.plot)
    _check_losses(pipeline)
    return 0


def _check_losses(pipeline) -> None:
    """A run that lost events ends with an error (exit 3), after its ERROR lines."""
    lost = sum(int(getattr(sink, "events_lost", 0) or 0) for sink in pipeline.sinks.sinks)
    if lost:
        raise DataLossError(f"{lost} event(s) were lost on the way to MQTT (see the ERROR "
                            "lines above and sound_detector_events_lost_total)")


class _Repeat:
    """An audio source that plays a file source N times back to back (one stream)."""

    def __init__(self, make, times: int):
        self._make = make
        self._left = times
        self._src = make()
        self.sample_rate = self._src.sample_rate
        self.overflows = 0
        self.queue_depth = 0

    def start(self) -> None:
        self._src.start()

    def read(self, timeout: float = 0.5):
        while True:
            try:
                return self._src.read(timeout)
            except EOFError:
                self._left -= 1
                if self._left <= 0:
                    raise
                self._src.stop()
                self._src = self._make()
                self._src.start()

    def stop(self) -> None:
        self._src.stop()


def _proc_status_mb(field: str) -> float | None:
    """A ``kB`` field of /proc/self/status in MB (Linux); None elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def _rss_mb() -> float:
    """Current resident set size in MB (Linux /proc; 0 elsewhere)."""
    return _proc_status_mb("VmRSS") or 0.0


def _peak_rss_mb() -> float:
    """This process's own peak resident set size in MB: VmHWM of /proc/self/status (the
    high-water mark of this process's memory, never below the current RSS). Not
    ``ru_maxrss``: Linux starts a child's ``ru_maxrss`` from its parent's RSS at the fork
    and keeps it across exec, so a replay started by a large process would report the
    parent's peak. ``ru_maxrss`` only where /proc is missing."""
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return max(hwm, _rss_mb())
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _print_stats(pipeline, cpu_s: float, wall_s: float, rss_start_mb: float) -> None:
    audio_s = pipeline.samples_in / pipeline.params.sample_rate
    rss_end_mb = _rss_mb()
    rss_mb = _peak_rss_mb()
    per_s = 1000.0 * cpu_s / audio_s if audio_s else float("nan")
    runs = pipeline.inferences
    model_ms = 1000.0 * pipeline.inference_s / runs if runs else 0.0
    print(f"stats: {audio_s:.1f} s of audio, {pipeline.windows} windows, "
          f"{pipeline.events_out} events; CPU {cpu_s:.2f} s = {per_s:.2f} ms per second "
          f"of audio; wall {wall_s:.2f} s ({audio_s / wall_s if wall_s else 0:.0f}x real "
          f"time); model {model_ms:.2f} ms per window ({pipeline.windows - runs} quiet windows "
          f"skipped it, {pipeline.onset_windows} windows were onset windows); "
          f"RSS {rss_start_mb:.1f} MB at start, "
          f"{rss_end_mb:.1f} MB at end, peak {rss_mb:.1f} MB", file=sys.stderr)


def _plotter():
    try:
        from detector.cli.plotting import plot_scores
        import matplotlib  # noqa: F401  (plot_scores imports it lazily; check it now)
    except ImportError as exc:
        raise ConfigError(f"--plot needs the [analysis] extra ({exc}): "
                          "pip install 'sound-detector[analysis]'") from None
    return plot_scores


def plot_inputs(pipeline, classifier) -> dict:
    """What ``--plot`` draws: the scores the event tracker decided on (gated and smoothed,
    not the raw model output), the on-thresholds in force and the events, so a curve
    above its dashed line is a label that fired."""
    import numpy as np

    labels = list(classifier.labels)
    scores = (np.vstack(pipeline.smoothed_rows) if pipeline.smoothed_rows
              else np.zeros((0, len(labels)), dtype=np.float32))
    # every start has its end (the tracker closes open events at the end of the file),
    # and each message has its own id, so the end events alone carry the spans
    ends = [e for e in pipeline.events if e["type"] == "end"]
    tracker = pipeline.tracker
    thresholds = {label: tracker.thresholds(label) for label in tracker.enabled_labels}
    return {"times": np.asarray(pipeline.score_times), "scores": scores, "labels": labels,
            "events": ends, "thresholds": thresholds}


def _plot(plot_scores, pipeline, classifier, out_png: str) -> None:
    data = plot_inputs(pipeline, classifier)
    n = pipeline.tracker.settings.smoothing_windows
    name = Path(str(getattr(pipeline.source, "path", ""))).name or "replay"
    plot_scores(data["times"], data["scores"], data["labels"], data["events"], out_png,
                thresholds=data["thresholds"], stream_start=pipeline.started_at,
                title=f"{name} - model {classifier.metadata.model_version}: scores as the "
                      f"events were decided (gated, smoothed over {n} window"
                      f"{'s' if n != 1 else ''})")
    logger.info("scores plot written to %s", out_png)


def cmd_devices(args: argparse.Namespace) -> int:  # noqa: ARG001
    from detector.audio.capture import format_devices

    print(format_devices())
    return 0


def cmd_config(args: argparse.Namespace) -> int:  # noqa: ARG001
    from detector.config import example_config_text

    sys.stdout.write(example_config_text())
    return 0


def cmd_homeassistant(args: argparse.Namespace) -> int:
    from detector.config import load_config
    from detector.publish.ha_remove import remove_node

    config = load_config(args.config)
    if not args.debug:
        setup_logging(config.output.log_level)
    mqtt = config.mqtt
    node = args.node_id or mqtt.node_id or mqtt.resolved_node_id
    counts = remove_node(mqtt, node_id=node)
    print(f"removed node {node} from {mqtt.host}:{mqtt.port}: {counts['discovery']} Home "
          f"Assistant discovery config(s), {counts['topics']} retained topic(s)")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from detector.checks import check_runtime
    from detector.config import load_config

    config = load_config(args.path)
    check_runtime(config)  # the same checks as run and replay: they agree on every config
    detail = ""
    if not args.no_model:
        from detector.model.classifier import Classifier, check_against_model

        model_path = args.model or config.model.path
        if model_path is not None and args.model is None:
            path = Path(model_path).expanduser()
            if not path.is_absolute():
                model_path = str(Path(args.path).resolve().parent / path)
        classifier = Classifier(model_path, config.model.providers,
                                config.model.intra_op_threads)
        custom = _attach_custom(args, config, classifier, service_fallback=True)
        _attach_audioset(config, classifier)
        try:
            check_against_model(config, classifier.metadata)
        except ConfigError as exc:
            if custom or "does not have" not in str(exc):
                raise
            raise ConfigError(f"{exc}; if it is a custom label, name its directory with "
                              "--custom DIR or model.custom_dir") from None
        meta = classifier.metadata
        detail = f" (model {meta.model_version}: {len(meta.event_labels)} event labels"
        detail += f"; custom: {', '.join(custom)}" if custom else ""
        if classifier.audioset_labels is not None:
            detail += f"; AudioSet: {', '.join(classifier.audioset_labels.labels)}"
        detail += ")"
    print(f"OK: {args.path}{detail}")
    return 0


def cmd_labels(args: argparse.Namespace) -> int:
    from detector.model.audioset import label_rows

    _, classifier = _load(args)
    meta = classifier.metadata
    custom = classifier.custom.labels if classifier.custom is not None else ()
    chosen = (set(classifier.audioset_labels.labels) if classifier.audioset_labels is not None
              else set())
    rows = label_rows(classifier.model_metadata.labels, meta.background_labels, custom, args.search)
    if not rows:
        print(f"no label or AudioSet name holds {args.search!r}")
        return 1
    has_audioset = classifier.audioset_name is not None
    for kind, label, name in rows:
        if kind == "audioset":
            mark = " (in events.audioset_labels)" if label in chosen else ""
            print(f"audioset  {label:<40} \"{name}\"{mark}")
        else:
            print(f"{kind:<9} {label}")
    if not has_audioset:
        print(f"note: model {meta.model_version} has no audioset output, so AudioSet names "
              "cannot be used as labels with it")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    if getattr(args, "analysis_error", None):
        raise ConfigError(f"analyze is unavailable: {args.analysis_error}")
    from detector.cli import analysis

    return int(analysis.run(args) or 0)


def cmd_enroll(args: argparse.Namespace) -> int:
    from detector.cli.enrolment import cmd_enroll as enroll

    return enroll(args, _load)


def cmd_custom(args: argparse.Namespace) -> int:
    from detector.config import load_config
    from detector.cli.enrolment import cmd_custom as custom

    return custom(args, lambda a: load_config(a.config))


COMMANDS = {"run": cmd_run, "replay": cmd_replay, "devices": cmd_devices, "config": cmd_config,
            "homeassistant": cmd_homeassistant,
            "validate-config": cmd_validate, "analyze": cmd_analyze,
            "enroll": cmd_enroll, "custom": cmd_custom, "labels": cmd_labels}


HELD_START = ("run", "replay", "validate-config")
"""Commands whose start-up log lines are held until they are running (or printed
without their info lines when the start fails)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging("debug" if args.debug else "info")
    if args.command in HELD_START and not args.debug:
        hold_logs()
    try:
        code = COMMANDS[args.command](args)
        release_logs()
        return code
    except DetectorError as exc:
        release_logs(failed=True)
        message = " ".join(str(exc).split())  # one line, always
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `replay | head`: the reader went away
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    finally:
        release_logs()  # a no-op unless something unexpected ended the start
