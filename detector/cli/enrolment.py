"""``sound-detector enroll`` and ``sound-detector custom list|remove``.

``enroll LABEL FILE...`` reads the clips (files or folders, anything ``replay``
reads) or records takes from the configured microphone (``--record SECONDS``),
runs them through the daemon's own pipeline for their embeddings, fits a custom
head (:mod:`detector.model.custom`) against the background set, prints what to
expect, and saves ``<custom dir>/<label>.npz``. numpy only.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from detector.model import custom
from detector.cli import custom_fit
from detector.errors import AudioError, ConfigError, ModelError

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".au", ".mp3")
BACKGROUND_WINDOWS_PER_FILE = 200
"""Windows kept from each ``--background`` recording (evenly spread)."""
TAKE_PAUSE_SECONDS = 3.0
"""``enroll --record``: the countdown before each take (time to get to the door)."""


def add_enroll_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("label", metavar="LABEL",
                        help="name of the new label (a-z, 0-9, '_', '-'), e.g. doorbell")
    parser.add_argument("files", nargs="*", metavar="FILE",
                        help="clips of the sound (files or folders; any rate, channels, format "
                        "that replay reads)")
    parser.add_argument("--background", nargs="+", default=[], metavar="FILE",
                        help="recordings of your place without the sound (files or folders), "
                        "learned as background besides the shipped set")
    parser.add_argument("--background-set", metavar="NPZ",
                        help="background embeddings to use instead of the set shipped for the "
                        "model (made by `python -m export background-embeddings`)")
    parser.add_argument("--no-shipped-background", action="store_true",
                        help="use only --background recordings")
    parser.add_argument("--exclude-kind", action="append", default=[], metavar="KIND",
                        help="leave this kind out of the background set (kinds that name "
                        "LABEL are left out anyway)")
    parser.add_argument("--record", type=float, metavar="SECONDS",
                        help="record takes of SECONDS each from the configured microphone")
    parser.add_argument("--takes", type=int, default=5, metavar="N",
                        help="takes to record with --record (default: %(default)s)")
    parser.add_argument("--pause", type=float, default=TAKE_PAUSE_SECONDS, metavar="SECONDS",
                        help="countdown before each --record take, 0 for none "
                        "(default: %(default)g)")
    parser.add_argument("--device", metavar="NAME|INDEX",
                        help="input device for --record (overrides audio.device)")


def _audio_files(items: Sequence[str], what: str) -> list[Path]:
    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file()
                           and p.suffix.lower() in AUDIO_EXTENSIONS)
            if not found:
                raise AudioError(f"{what} folder {path} holds no audio files "
                                 f"({', '.join(AUDIO_EXTENSIONS)})")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise AudioError(f"{what} {path} does not exist")
    return out


def record_takes(config, seconds: float, takes: int, out_dir: Path, label: str,
                 rate: int, pause: float = TAKE_PAUSE_SECONDS, sleep=time.sleep,
                 source=None) -> list[Path]:
    """Record ``takes`` clips of ``seconds`` from the configured microphone into
    ``out_dir`` as FLAC; prompts go to stderr.

    Each take follows a countdown of ``pause`` seconds (``sleep`` waits, injected
    by tests); what the microphone heard during the countdown is dropped, so a
    take holds only the audio after its "make the sound now" prompt."""
    import soundfile as sf

    from detector.audio.capture import MicSource

    if not 0.5 <= seconds <= 120:
        raise ConfigError(f"--record {seconds:g} must be 0.5..120 seconds")
    if not 1 <= takes <= 50:
        raise ConfigError(f"--takes {takes} must be 1..50")
    if not 0 <= pause <= 30:
        raise ConfigError(f"--pause {pause:g} must be 0..30 seconds")
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    paths = []
    source = source if source is not None else MicSource(config.audio, rate)
    source.start()
    try:
        for take in range(1, takes + 1):
            if pause > 0:
                _countdown(take, takes, pause, sleep)
                while source.read(timeout=0) is not None:
                    pass  # the countdown's audio is not part of the take
            print(f"take {take}/{takes}: make the sound now ({seconds:g} s) ...",
                  file=sys.stderr, flush=True)
            need = int(round(seconds * rate))
            got: list[np.ndarray] = []
            have = 0
            deadline = time.monotonic() + seconds + 10.0
            while have < need:
                if time.monotonic() > deadline:
                    raise AudioError(f"the microphone delivered {have / rate:.1f} s of "
                                     f"{seconds:g} s; check audio.device (`sound-detector "
                                     "devices`)")
                block = source.read(timeout=0.5)
                if block is None:
                    continue
                got.append(block)
                have += block.shape[0]
            audio = np.concatenate(got)[:need]
            path = out_dir / f"{label}-{stamp}-{take}.flac"
            sf.write(str(path), audio, rate, subtype="PCM_16")
            paths.append(path)
            print(f"take {take}/{takes}: saved {path}", file=sys.stderr, flush=True)
    finally:
        source.stop()
    return paths


def _countdown(take: int, takes: int, pause: float, sleep) -> None:
    """``take 2/5 in 3... 2... 1...`` on stderr, one number a second (the first
    waits out any fraction of a second)."""
    print(f"take {take}/{takes} in", end="", file=sys.stderr, flush=True)
    for shown in range(math.ceil(pause - 1e-9), 0, -1):
        print(f" {shown}...", end="", file=sys.stderr, flush=True)
        # whole seconds, the first shortened to the fraction: 2.5 s is 0.5 s, 1 s, 1 s
        sleep(pause - (shown - 1) if shown == math.ceil(pause - 1e-9) else 1.0)
    print("", file=sys.stderr, flush=True)


def _background(args, config, classifier, label: str
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], np.ndarray | None]:
    """Background embeddings, file ids and recording groups (a file and its quieter
    copies): the shipped (or given) set, minus the kinds that are this label, plus the
    user's own recordings."""
    meta = classifier.model_metadata
    lines: list[str] = []
    embeddings, files, groups, probs = [], [], [], []
    next_id = 0
    if not args.no_shipped_background:
        path = (Path(args.background_set) if args.background_set
                else custom_fit.shipped_background_path(meta.model_version))
        if path.is_file():
            bg = custom_fit.BackgroundSet.load(path)
            if bg.model_version != meta.model_version:
                raise ModelError(f"background set {path} was made with model "
                                 f"{bg.model_version}, this model is {meta.model_version}")
            if bg.embeddings.shape[1] != classifier.embedding_dim:
                raise ModelError(f"background set {path} is {bg.embeddings.shape[1]} wide, "
                                 f"the model's embedding {classifier.embedding_dim}")
            drop = sorted(set(custom_fit.matching_kinds(label, bg.kinds)) | set(args.exclude_kind))
            unknown = sorted(set(args.exclude_kind) - set(bg.kinds))
            if unknown:
                raise ConfigError(f"--exclude-kind {', '.join(unknown)}: not in the "
                                  f"background set; its kinds: {', '.join(sorted(set(bg.kinds)))}")
            if drop:
                bg = bg.without_kinds(drop)
                lines.append(f"background kinds left out (they are the sound or you asked): "
                             f"{', '.join(drop)}")
            embeddings.append(bg.embeddings)
            probs.append(bg.audioset)
            files.append(bg.files)
            groups.append(bg.groups())
            next_id = len(bg.kinds)
            n_files, n_recordings = len(np.unique(bg.files)), len(np.unique(groups[-1]))
            copies = (f" ({n_recordings} recordings, each also heard quieter)"
                      if n_recordings < n_files else "")
            lines.append(f"background set: {n_files} files{copies}, "
                         f"{bg.embeddings.shape[0]} windows ({path.name})")
        elif args.background_set:
            raise ConfigError(f"--background-set {path} does not exist")
        elif not args.background:
            raise ModelError(f"no background set ships for model {meta.model_version} "
                             f"({path.name}); pass --background FILE... (recordings of your "
                             "place without the sound) or --background-set NPZ")
    user = _audio_files(args.background, "--background")
    rate = meta.features.sample_rate
    gate = config.events.gate_dbfs
    for k, path in enumerate(user):
        win = custom_fit.embed_samples(classifier, custom_fit.read_audio(path, rate), config,
                                   name=path.name, seed=1000 + k)
        keep = custom_fit.spread(np.flatnonzero(win.levels >= gate), BACKGROUND_WINDOWS_PER_FILE)
        if keep.size == 0:
            lines.append(f"--background {path}: every window is below the energy gate; "
                         "not used")
            continue
        # a long recording counts as several files (of ~10 s) for the held-out folds
        ids = next_id + (keep // 40)
        next_id = int(ids.max()) + 1
        embeddings.append(win.embeddings[keep])
        probs.append(None if win.audioset is None else win.audioset[keep])
        files.append(ids)
        groups.append(ids)
    if user:
        lines.append(f"your background: {len(user)} recording(s)")
    if not embeddings:
        raise ConfigError("no background windows: pass --background recordings above the "
                          "energy gate")
    audioset = (np.vstack(probs) if probs and all(p is not None for p in probs) else None)
    return (np.vstack(embeddings), np.concatenate(files), np.concatenate(groups), lines,
            audioset)


def cmd_enroll(args: argparse.Namespace, load) -> int:
    """``enroll``: ``load(args, custom=False)`` gives ``(config, classifier)``."""
    from dataclasses import replace

    cpu0 = time.process_time()
    label = custom.check_label(args.label)
    config, classifier = load(args, custom=False)
    if not args.debug:  # one pipeline run per clip: its start/stop lines are noise here
        logging.getLogger("detector.pipeline").setLevel(logging.WARNING)
    if getattr(args, "device", None) is not None:
        device = int(args.device) if str(args.device).isdigit() else args.device
        config = replace(config, audio=replace(config.audio, device=device))
    meta = classifier.model_metadata
    if classifier.embedding_name is None:
        raise ModelError(f"model {meta.model_version} has no embedding output; custom labels "
                         "need a model that exports one (embedding_output in its metadata)")
    if label in meta.labels:
        raise ConfigError(f"{label!r} is one of the model's own labels; choose another name")
    directory, _ = custom.resolve_custom_dir(args.custom, config)
    if directory is None:
        raise ConfigError("where should the label go? pass --custom DIR (or set "
                          "model.custom_dir; the service uses its state directory)")
    paths = _audio_files(args.files, "clip")
    if args.record:
        paths += record_takes(config, args.record, args.takes, directory / "recordings", label,
                              meta.features.sample_rate, pause=args.pause)
    if not paths:
        raise ConfigError("no clips: pass FILE... or --record SECONDS")
    rate = meta.features.sample_rate
    clips = [custom_fit.embed_clip(classifier, custom_fit.read_audio(p, rate), config,
                               name=p.name, seed=k) for k, p in enumerate(paths)]
    background, files, groups, lines, bg_audioset = _background(args, config, classifier,
                                                                 label)
    hop = config.model.window_hop_seconds or meta.window_hop_seconds or 0.25
    context = max(1, 1 + int(round((custom_fit.GATE_CONTEXT_SECONDS - meta.window_seconds) / hop)))
    result = custom_fit.enroll(label, clips, background, files, meta.model_version,
                           config.events.gate_dbfs, config.events.smoothing_windows,
                           background_groups=groups, background_audioset=bg_audioset,
                           context_windows=context,
                           wait_windows=int(round(custom_fit.GATE_MAX_WAIT_SECONDS / hop)))
    replaced = (directory / f"{label}.npz").exists()
    path = result.head.save(directory)
    cpu = time.process_time() - cpu0
    head = result.head
    for line in lines:
        print(line)
    used = len(head.info["clips"])
    print(f"enrolled {label!r} from {used} clip(s), {head.info['windows']} windows of the "
          f"sound, against {background.shape[0]} background windows "
          f"({result.background_files} files); threshold {head.threshold:.2f}")
    recall = ("n/a (one clip: nothing to hold out)" if result.recall is None
              else f"{100 * result.recall:.0f}% of your clips fire when held out "
                   f"(leave-one-clip-out, {len(result.clip_scores)} clips)")
    print(f"expect without the AudioSet gate: {recall}; {100 * result.false_alarms:.1f}% of "
          "held-out background files fire")
    if result.gate is not None:
        names = ", ".join(f'"{n}"' for n in custom_fit.support_names(result.gate["support"]))
        print(f"AudioSet evidence: {names} (an event of {label!r} needs one of them in the "
              f"top {result.gate['top_k']} of 527 over {result.gate['context_seconds']:g} s, "
              f"waiting up to {result.gate['max_wait_seconds']:g} s)")
        g_recall = ("n/a" if result.gated_recall is None
                    else f"{100 * result.gated_recall:.0f}% of your clips fire when held out")
        g_fa = ("n/a (the background set holds no AudioSet evidence)"
                if result.gated_false_alarms is None
                else f"{100 * result.gated_false_alarms:.1f}% of held-out background files fire")
        print(f"expect with the AudioSet gate: {g_recall}; {g_fa}")
    elif classifier.audioset_name is None:
        print(f"model {meta.model_version} has no audioset output: the label is not gated")
    for note in result.warnings:
        print(f"warning: {note}")
    print(f"{'replaced' if replaced else 'saved'} {path} ({cpu:.1f} s CPU); the daemon "
          f"runs it from its next start (--custom {directory})")
    return 0


def cmd_custom(args: argparse.Namespace, load_config_only) -> int:
    config = load_config_only(args)
    directory, explicit = custom.resolve_custom_dir(args.custom, config)
    if directory is None:
        raise ConfigError("no custom label directory: pass --custom DIR (or set "
                          "model.custom_dir)")
    if args.action == "remove":
        label = custom.check_label(args.label)
        path = directory / f"{label}.npz"
        if not path.is_file():
            have = ", ".join(p.stem for p in custom.head_files(directory)) \
                if directory.is_dir() else ""
            raise ConfigError(f"no custom label {label!r} in {directory}"
                              + (f"; it has: {have}" if have else ""))
        path.unlink()
        print(f"removed {label!r} ({path}); restart the daemon to drop it")
        return 0
    if not directory.is_dir():
        if explicit:
            raise ConfigError(f"custom label directory {directory} does not exist")
        print(f"no custom labels ({directory} does not exist)")
        return 0
    files = custom.head_files(directory)
    if not files:
        print(f"no custom labels in {directory}")
        return 0
    print(f"custom labels in {directory}:")
    for path in files:
        try:
            head = custom.CustomHead.load(path)
        except ModelError as exc:
            print(f"  {path.stem}: unreadable ({exc})")
            continue
        info = head.info
        recall = info.get("estimated_recall")
        fa = info.get("estimated_false_alarms")
        print(f"  {head.label}: model {head.model_version}, threshold {head.threshold:.2f}, "
              f"{len(info.get('clips', []))} clips, estimated recall "
              f"{'n/a' if recall is None else f'{100 * recall:.0f}%'}, false alarms "
              f"{'n/a' if fa is None else f'{100 * fa:.1f}%'}, enrolled {info.get('created', '?')}")
    return 0
