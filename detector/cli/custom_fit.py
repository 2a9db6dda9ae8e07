"""Teaching a custom label: embed the user's takes through the daemon's own pipeline, fit a
head on them against background embeddings, calibrate its threshold and choose its AudioSet
support (the runtime side, the heads themselves, is :mod:`detector.model.custom`).

Used by ``sound-detector enroll``; it runs a whole :class:`~detector.pipeline.Pipeline` over
each take, so it sits above the pipeline, beside the other commands.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from detector.audio.capture import AudioSource
from detector.errors import AudioError, ConfigError, ModelError
from detector.model.custom import CustomHead, check_label

if TYPE_CHECKING:  # pragma: no cover
    from detector.config import Config
    from detector.model.classifier import Classifier

logger = logging.getLogger(__name__)

ROOM_FLOOR_DBFS = -60.0
"""Noise floor of a quiet room: clips (and background files) whose quiet parts are
quieter, e.g. digital silence around an edited sound, are embedded with white noise
at this level added, since the daemon never hears digital silence between sounds."""
FARTHER_DB = (-20.0, -40.0)
"""Enrolment also hears every take this much quieter (the sound further from the
microphone, in a room at :data:`ROOM_FLOOR_DBFS`): users record a take close by, the
daemon hears the sound from across the room. Without it, knocks enrolled from 5 ESC-50
clips (loudest window -18 dBFS) fired on 8% of the DCASE office knocks (-52 dBFS); with it
and :data:`BACKGROUND_FARTHER_DB`, 54% (bench/results/custom_labels_model100.md, model 1.0.0, before onset
windows; 65% with the daemon's onset windows)."""
BACKGROUND_FARTHER_DB = (-20.0,)
"""The background set holds its files this much quieter too, so that "quiet" alone
is not what the head learns as the sound."""


# --------------------------------------------------------------------------- windows
class ArraySource(AudioSource):
    """Mono float32 samples in memory, served in blocks (for enrolment)."""

    def __init__(self, samples: np.ndarray, sample_rate: int, block: int = 4096):
        self.samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self.sample_rate = int(sample_rate)
        self.block = block
        self._pos = 0

    def read(self, timeout: float = 0.5) -> np.ndarray:
        if self._pos >= self.samples.shape[0]:
            raise EOFError("end of samples")
        out = self.samples[self._pos:self._pos + self.block]
        self._pos += self.block
        return out


def read_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """A whole file as mono float32 at ``sample_rate``, read like ``replay`` reads it."""
    from detector.audio.capture import FileSource

    source = FileSource(path, sample_rate, block_seconds=1.0)
    blocks = []
    try:
        while True:
            blocks.append(source.read())
    except EOFError:
        pass
    finally:
        source.stop()
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)


@dataclass
class ClipWindows:
    """The windows the daemon cuts from one clip: their level, embedding and scores."""

    name: str
    levels: np.ndarray
    """dBFS of every window."""
    embeddings: np.ndarray
    """``[windows, embedding_dim]`` float32."""
    seconds: float
    """Length of the clip (without padding)."""
    floor_dbfs: float
    """The clip's noise floor (10th percentile of 20 ms frame levels)."""
    farther: tuple["ClipWindows", ...] = ()
    """The same take heard quieter (:data:`FARTHER_DB`), window for window."""
    audioset: np.ndarray | None = None
    """``[windows, 527]`` AudioSet probabilities of every window (None: the model has no
    audioset output)."""


def frame_levels(samples: np.ndarray, sample_rate: int, frame_seconds: float = 0.02) -> np.ndarray:
    n = max(1, int(frame_seconds * sample_rate))
    usable = samples[:samples.shape[0] // n * n].astype(np.float64)
    if usable.size == 0:
        usable = np.pad(samples.astype(np.float64), (0, n - samples.shape[0]))
    power = np.mean(usable.reshape(-1, n) ** 2, axis=1)
    return 10.0 * np.log10(np.maximum(power, 1e-12))


def embed_samples(classifier: "Classifier", samples: np.ndarray, config: "Config | None" = None,
                  name: str = "", pad_seconds: float | None = None, seed: int = 0,
                  min_floor_dbfs: float | None = ROOM_FLOOR_DBFS,
                  onset_windows: bool = False) -> ClipWindows:
    """Run ``samples`` through the daemon's own pipeline (front end, windowing, model)
    and keep every window's level and embedding.

    The windows are those of the regular hop: the extra windows after an onset
    (``model.onset_hop_seconds``) are left out unless ``onset_windows``. A take and its
    quieter copies must give the same windows, window for window, and a copy below the
    onset detector's reach has no onset (with onset windows, the 40 dB quieter copy of 7
    of 8 ESC-50 door knocks had fewer windows and was dropped); the shipped background
    set is on the regular grid too. ``onset_windows=True`` replays a stream as the
    daemon scores it.

    The clip is padded on both sides with one window of seeded white noise at its
    own noise floor, so the windows in which the sound enters and leaves (what the
    daemon sees at an onset) are there too, and a clip shorter than a window still
    gives windows. A clip whose floor is below ``min_floor_dbfs`` (digital silence
    around an edited sound) gets white noise at that level added throughout: the
    daemon never hears digital silence, and an embedding learned in it does not
    carry over to a room (model 0.3.0, ESC-50 door knocks: held out and streamed
    in -60 dBFS noise, 0/3 fired a head learned in digital silence, 3/3 with it).
    """
    from detector.config import Config
    from detector.pipeline import Pipeline

    if classifier.embedding_name is None:
        raise ModelError(f"model {classifier.path.name} "
                         f"({classifier.model_metadata.model_version}) has no embedding "
                         "output; custom labels need a model that exports one")
    meta = classifier.model_metadata
    rate = meta.features.sample_rate
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    levels = frame_levels(samples, rate)
    floor = float(np.percentile(levels, 10)) if samples.size else -120.0
    floor = max(floor, -100.0)
    pad = meta.window_seconds if pad_seconds is None else pad_seconds
    n_pad = int(round(pad * rate))
    rng = np.random.default_rng(seed)
    noise = (rng.standard_normal(2 * n_pad) * 10 ** (floor / 20)).astype(np.float32)
    padded = np.concatenate((noise[:n_pad], samples, noise[n_pad:]))
    if min_floor_dbfs is not None and floor < min_floor_dbfs:
        # a clip quieter than a room (digital silence around the sound): heard in a room
        room = rng.standard_normal(padded.size) * 10 ** (min_floor_dbfs / 20)
        padded = np.clip(padded + room.astype(np.float32), -1.0, 1.0)
        floor = min_floor_dbfs
    config = config or Config()
    if not onset_windows and config.model.onset_hop_seconds:
        config = dataclasses.replace(
            config, model=dataclasses.replace(config.model, onset_hop_seconds=0.0))
    pipeline = Pipeline(config, ArraySource(padded, rate), classifier, (),
                        record_scores=True, node="enroll")
    pipeline.run()
    dim = classifier.embedding_dim
    emb = (np.vstack(pipeline.embedding_rows).astype(np.float32) if pipeline.embedding_rows
           else np.zeros((0, dim), dtype=np.float32))
    probs = (1.0 / (1.0 + np.exp(-np.clip(np.vstack(pipeline.audioset_rows), -30, 30)))
             ).astype(np.float32) if pipeline.audioset_rows else None
    return ClipWindows(name=name, levels=np.asarray(pipeline.level_rows, dtype=np.float64),
                       embeddings=emb, seconds=samples.size / rate, floor_dbfs=floor,
                       audioset=probs)


def embed_clip(classifier: "Classifier", samples: np.ndarray, config: "Config | None" = None,
               name: str = "", seed: int = 0,
               farther_db: Sequence[float] = FARTHER_DB) -> ClipWindows:
    """:func:`embed_samples` of one take, with the take also heard ``farther_db``
    quieter (same padding and length, so window ``i`` of a copy is window ``i`` of the
    take)."""
    clip = embed_samples(classifier, samples, config, name=name, seed=seed)
    copies = tuple(embed_samples(classifier, np.asarray(samples, np.float32) * 10 ** (g / 20),
                                 config, name=f"{name} ({g:+g} dB)", seed=seed)
                   for g in farther_db)
    return ClipWindows(clip.name, clip.levels, clip.embeddings, clip.seconds, clip.floor_dbfs,
                       farther=copies, audioset=clip.audioset)


def spread(indices: np.ndarray, at_most: int) -> np.ndarray:
    """At most ``at_most`` of ``indices``, evenly spread (first and last kept)."""
    if indices.size <= at_most:
        return indices
    return indices[np.linspace(0, indices.size - 1, at_most).round().astype(int)]


def positive_windows(clip: ClipWindows, gate_dbfs: float, below_peak_db: float = 6.0,
                     max_windows: int = 40) -> np.ndarray:
    """Indices of the windows where the sound is: within ``below_peak_db`` of the clip's
    loudest window and above the energy gate (silence is never learned); at most
    ``max_windows``, evenly spread, so a long clip does not outweigh the others."""
    if clip.levels.size == 0:
        return np.zeros(0, dtype=int)
    peak = float(clip.levels.max())
    return spread(np.flatnonzero((clip.levels >= peak - below_peak_db)
                                 & (clip.levels >= gate_dbfs)), max_windows)


# --------------------------------------------------------------------------- fitting
def fit_logistic(x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray, l2: float,
                 init: np.ndarray | None = None, iterations: int = 25,
                 tol: float = 1e-6) -> np.ndarray:
    """L2-regularised logistic regression by Newton's method: ``[w..., b]``.

    ``x`` ``[n, d]`` (already standardised), ``y`` in {0, 1}, weights summing to
    anything (the loss is the weighted mean). Deterministic: no random start.
    """
    n, d = x.shape
    xb = np.hstack((x, np.ones((n, 1))))
    theta = np.zeros(d + 1) if init is None else init.astype(np.float64).copy()
    sw = sample_weight / sample_weight.sum()
    reg = np.full(d + 1, l2)
    reg[-1] = 1e-8  # the bias is not shrunk
    for _ in range(iterations):
        z = np.clip(xb @ theta, -30, 30)
        p = 1.0 / (1.0 + np.exp(-z))
        grad = xb.T @ (sw * (p - y)) + reg * theta
        hess = (xb * (sw * p * (1 - p))[:, None]).T @ xb
        hess[np.diag_indices_from(hess)] += reg
        step = np.linalg.solve(hess, grad)
        theta -= step
        if float(np.max(np.abs(step))) < tol:
            break
    return theta


@dataclass
class Fit:
    """A fitted head in raw-embedding coordinates: ``sigmoid(x @ w + b)``."""

    w: np.ndarray
    b: float

    def scores(self, x: np.ndarray) -> np.ndarray:
        z = np.clip(x.astype(np.float64) @ self.w + self.b, -30, 30)
        return 1.0 / (1.0 + np.exp(-z))


L2 = 0.01
"""Ridge penalty of the head (on standardised embeddings; chosen on the knock benchmark)."""


def fit_head(pos: np.ndarray, pos_groups: np.ndarray, neg: np.ndarray,
             l2: float = L2, init: np.ndarray | None = None) -> tuple[Fit, np.ndarray]:
    """Fit positives against negatives: each clip weighs the same, the positives as a
    whole as much as the negatives. Returns the fit and its raw parameter vector."""
    mu = neg.mean(axis=0)
    sd = neg.std(axis=0) + 1e-3 * (neg.std() + 1e-6)
    x = (np.vstack((pos, neg)).astype(np.float64) - mu) / sd
    y = np.concatenate((np.ones(len(pos)), np.zeros(len(neg))))
    groups, counts = np.unique(pos_groups, return_inverse=False, return_counts=True)
    per_group = dict(zip(groups.tolist(), counts.tolist()))
    wpos = np.array([1.0 / (len(per_group) * per_group[g]) for g in pos_groups.tolist()])
    wneg = np.full(len(neg), 1.0 / len(neg))
    theta = fit_logistic(x, y, np.concatenate((wpos, wneg)), l2, init=init)
    w = theta[:-1] / sd
    b = float(theta[-1] - np.dot(theta[:-1], mu / sd))
    return Fit(w=w, b=b), theta


def smoothed_max(scores: np.ndarray, windows: int) -> float:
    """Highest mean of ``windows`` consecutive scores (the tracker's smoothing)."""
    if scores.size == 0:
        return 0.0
    k = max(1, min(windows, scores.size))
    kernel = np.convolve(scores, np.ones(k) / k, mode="valid")
    return float(kernel.max())


FLOOR = 0.5
"""Lowest threshold a custom label gets."""
CEILING = 0.98
"""Highest threshold a custom label gets."""
FALSE_ALARM_BUDGET = 0.01
"""Share of held-out background files allowed above the threshold."""
MARGIN = 0.05
"""Added above the background quantile."""


@dataclass
class Enrolment:
    """The outcome of :func:`enroll`: the head and what to expect from it."""

    head: CustomHead
    recall: float | None
    """Leave-one-clip-out share of the user's clips that fire (None with one clip)."""
    false_alarms: float
    """Out-of-fold share of background files that fire."""
    clip_scores: list[float]
    background_files: int
    warnings: list[str]
    gate: dict | None = None
    """The AudioSet rule stored with the head (None: no AudioSet evidence)."""
    gated_recall: float | None = None
    """:attr:`recall` with the AudioSet rule (None: not measurable)."""
    gated_false_alarms: float | None = None
    """:attr:`false_alarms` with the AudioSet rule (None: the background has no AudioSet
    evidence)."""


def calibrate(clip_scores: Sequence[float], background_scores: Sequence[float]) -> float:
    """Threshold: above all but :data:`FALSE_ALARM_BUDGET` of the held-out background
    files plus :data:`MARGIN`, within [:data:`FLOOR`, :data:`CEILING`]."""
    bg = np.sort(np.asarray(background_scores, dtype=np.float64))
    if bg.size:
        allowed = int(math.floor(FALSE_ALARM_BUDGET * bg.size))
        quantile = bg[bg.size - 1 - allowed]
    else:
        quantile = 0.0
    return float(min(CEILING, max(FLOOR, quantile + MARGIN)))


def enroll(label: str, clips: Sequence[ClipWindows], background: np.ndarray,
           background_files: np.ndarray, model_version: str, gate_dbfs: float,
           smoothing_windows: int = 2, l2: float = L2,
           background_groups: np.ndarray | None = None,
           background_audioset: np.ndarray | None = None,
           context_windows: int = 5, wait_windows: int = 4) -> Enrolment:
    """Fit and calibrate a custom head.

    ``clips``: the user's examples (their windows); ``background`` ``[n, d]``
    embeddings with ``background_files`` ``[n]`` naming the file each window
    comes from; ``background_groups`` ``[n]`` (default: the file) the recording it was
    made from, so a file and its quieter copy are held out together. Folds: fold ``k``
    holds out user clip ``k`` (with two or more clips, with its quieter copies) and
    every background group ``g`` with ``g % folds == k``; a model fitted
    on the rest scores them. The clip score is the tracker's view (smoothed max
    over all the clip's windows above the gate); a background file's score is the
    max over its windows (its windows are not consecutive).
    """
    check_label(label)
    notes: list[str] = []
    pos_list, groups = [], []
    for i, clip in enumerate(clips):
        keep = positive_windows(clip, gate_dbfs)
        if keep.size == 0:
            notes.append(f"{clip.name}: no window above the energy gate "
                         f"({gate_dbfs:g} dBFS); it is not used")
            continue
        pos_list.append(clip.embeddings[keep])
        groups.extend([i] * keep.size)
        for copy in clip.farther:  # the same windows of the take, heard from further away
            if copy.levels.size != clip.levels.size:
                continue
            near = keep[copy.levels[keep] >= gate_dbfs]
            pos_list.append(copy.embeddings[near])
            groups.extend([i] * near.size)
    if not pos_list:
        raise AudioError("no clip holds a sound above the energy gate; record louder "
                         "or closer to the source")
    pos = np.vstack(pos_list)
    pos_groups = np.asarray(groups)
    used = sorted(set(groups))
    background = np.asarray(background, dtype=np.float32)
    if background.shape[0] < 20:
        raise ConfigError(f"only {background.shape[0]} background windows; custom labels "
                          "need the shipped background set or --background recordings")
    full, theta = fit_head(pos, pos_groups, background, l2)

    folds = max(len(used), 5)
    file_ids = np.asarray(background_files)
    bg_groups = file_ids if background_groups is None else np.asarray(background_groups)
    if bg_groups.shape != file_ids.shape:
        raise ValueError("background_groups must name one group per background window")
    bg_fold = bg_groups % folds
    clip_scores: list[float] = []
    bg_scores: list[float] = []
    held_out_scores: dict[int, np.ndarray] = {}
    bg_window_scores = np.zeros(len(file_ids))
    for k in range(folds):
        held_clip = used[k] if len(used) >= 2 and k < len(used) else None
        pmask = pos_groups != held_clip
        nmask = bg_fold != k
        fit, _ = fit_head(pos[pmask], pos_groups[pmask], background[nmask], l2, init=theta)
        if held_clip is not None:
            clip = clips[held_clip]
            above = clip.levels >= gate_dbfs
            s = np.where(above, fit.scores(clip.embeddings), 0.0)
            clip_scores.append(smoothed_max(s, smoothing_windows))
            held_out_scores[held_clip] = s
        held = ~nmask
        if held.any():
            s = fit.scores(background[held])
            bg_window_scores[held] = s
            ids = file_ids[held]
            order = np.argsort(ids, kind="stable")
            ids, s = ids[order], s[order]
            starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
            bg_scores.extend(np.maximum.reduceat(s, starts).tolist())
    threshold = calibrate(clip_scores, bg_scores)
    recall = (float(np.mean(np.asarray(clip_scores) >= threshold)) if clip_scores else None)
    false_alarms = float(np.mean(np.asarray(bg_scores) >= threshold)) if bg_scores else 0.0
    notes.extend(_advice(clips, used))
    gate, gated_recall, gated_fa = None, None, None
    if all(clips[i].audioset is not None for i in used):
        profiles = {i: take_profile(clips[i], gate_dbfs) for i in used}
        for i in used:
            note = uninformative_take(clips[i].name, profiles[i])
            if note:
                notes.append(note)
        excluded = background_classes(background_audioset, file_ids)
        support = support_set([profiles[i] for i in used], excluded)
        if support:
            gate = gate_rule(support)
            passes = []
            for i, s in held_out_scores.items():  # each take judged on the others' set
                fold_support = support_set([profiles[j] for j in used if j != i], excluded)
                fired = smoothed_max(s, smoothing_windows) >= threshold
                passes.append(bool(fired and fold_support and clip_passes(
                    clips[i], s, threshold, smoothing_windows, gate_rule(fold_support),
                    context_windows, wait_windows)))
            gated_recall = float(np.mean(passes)) if passes else None
            if background_audioset is not None and len(bg_scores):
                gated_fa = background_gated_share(bg_window_scores, file_ids,
                                                  background_audioset, threshold, gate)
        else:
            notes.append("no AudioSet class ranks high in most takes (beyond silence, "
                         "speech and noise): the label is not gated; takes of the sound "
                         "alone, closer to it, give it AudioSet evidence")
    info = {"clips": [clips[i].name for i in used], "windows": int(pos.shape[0]),
            "estimated_recall": recall, "estimated_false_alarms": false_alarms,
            "background_files": int(len(np.unique(file_ids))),
            **({"gate": {**gate, "support_names": support_names(gate["support"]),
                         "estimated_recall": gated_recall,
                         "estimated_false_alarms": gated_fa}} if gate else {}),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    head = CustomHead(label=label, model_version=model_version,
                      weights=full.w.astype(np.float32), bias=full.b, threshold=threshold,
                      info=info)
    return Enrolment(head=head, recall=recall, false_alarms=false_alarms,
                     clip_scores=clip_scores, background_files=len(np.unique(file_ids)),
                     warnings=notes, gate=gate, gated_recall=gated_recall,
                     gated_false_alarms=gated_fa)


MIN_CLIPS = 3
"""Fewer clips than this: warn (4-5 are recommended)."""
MIN_SOUND_SECONDS = 0.3
"""A clip whose sound (windows within 6 dB of its peak) spans less: warn it is short."""
ALIKE_COSINE = 0.98
"""Two clips whose mean embeddings are this similar: warn they are alike."""


def _advice(clips: Sequence[ClipWindows], used: Sequence[int]) -> list[str]:
    out = []
    if len(used) < MIN_CLIPS:
        out.append(f"only {len(used)} usable clip(s): expect a lower recall than estimated; "
                   "4-5 clips of the sound in different takes are recommended")
    for i in used:
        clip = clips[i]
        if clip.seconds < MIN_SOUND_SECONDS:
            out.append(f"{clip.name}: {clip.seconds:.2f} s is very short; a longer take "
                       "(the whole sound, with a little quiet around it) learns better")
        if clip.levels.size and float(clip.levels.max()) - clip.floor_dbfs < 6.0:
            out.append(f"{clip.name}: the sound stands only "
                       f"{float(clip.levels.max()) - clip.floor_dbfs:.1f} dB above the clip's "
                       "quiet parts; is the sound in it, and close enough?")
    vectors = []
    for i in used:
        emb = clips[i].embeddings[positive_windows(clips[i], -1e9)]
        vectors.append(emb.mean(axis=0) if emb.size else None)
    for a in range(len(used)):
        for b in range(a + 1, len(used)):
            va, vb = vectors[a], vectors[b]
            if va is None or vb is None:
                continue
            va = va - va.mean()
            vb = vb - vb.mean()
            cos = float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb) + 1e-12))
            if cos >= ALIKE_COSINE:
                out.append(f"{clips[used[a]].name} and {clips[used[b]].name} are nearly "
                           f"the same (similarity {cos:.3f}); takes of the sound in different "
                           "conditions make a head that generalises")
    return out


# --------------------------------------------------------------------------- AudioSet evidence
from detector.model.audioset import (CONTEXT_SECONDS as GATE_CONTEXT_SECONDS,  # noqa: E402
                       FLOOR as GATE_FLOOR, MAX_WAIT_SECONDS as GATE_MAX_WAIT_SECONDS,
                       TOP_K as GATE_TOP_K)

# A custom label's rule is the AudioSet labels' rule with their calibrated defaults (a support
# class in the top 10 of 527 over 3 s, waiting up to 2 s). On the four labels of
# `python -m bench quality --labels custom` (model test-rot0, 71% recall and 12.0% of other kinds firing without
# a gate) it gives 43% and 7.4%; the top 5 over 2 s (floor 0.05, 1 s wait) 23% and 3.7%
# (bench/results/custom_gate_test-rot0-k10.md, -k5.md).
PROFILE_TOP = 5
"""A class is in a take's AudioSet profile when it ranks in the take's top this many."""
PROFILE_SHARE = 0.5
"""... and in the profiles of at least this share of the takes to support the label."""
SUPPORT_MAX = 6
"""At most this many support classes (the most probable ones)."""
BACKGROUND_SHARE = 0.1
"""A class in the top :data:`PROFILE_TOP` of more than this share of the background files
is what everything sounds like, not evidence for the label."""
UNINFORMATIVE = ("Silence", "Speech", "Noise", "White noise", "Pink noise",
                 "Environmental noise", "Static", "Hum", "Mains hum", "Inside, small room",
                 "Inside, large room or hall", "Inside, public space",
                 "Outside, urban or manmade", "Outside, rural or natural")
"""Classes that say where or how loud, not what: never a custom label's evidence."""
WARN_CLASSES = ("Silence", "Speech", "Noise", "White noise", "Pink noise",
                "Environmental noise", "Static", "Hum", "Mains hum")
"""A take whose top AudioSet class is one of these gets a warning."""


def _class_index() -> dict[str, int]:
    from detector.model.gate import audioset_classes

    return {name: i for i, name in enumerate(audioset_classes())}


def support_names(support: Sequence[int]) -> list[str]:
    from detector.model.gate import audioset_classes

    names = audioset_classes()
    return [names[i] for i in support]


def take_profile(clip: ClipWindows, gate_dbfs: float) -> np.ndarray:
    """Mean AudioSet probabilities over the windows where the take's sound is."""
    keep = positive_windows(clip, gate_dbfs)
    if keep.size == 0:
        keep = np.arange(clip.audioset.shape[0])
    return clip.audioset[keep].mean(axis=0)


def uninformative_take(name: str, profile: np.ndarray) -> str | None:
    """A warning when the take's AudioSet profile is mostly silence, speech or noise."""
    from detector.model.gate import audioset_classes

    top = int(np.argmax(profile))
    if audioset_classes()[top] in WARN_CLASSES:
        return (f"{name}: AudioSet hears mostly \"{audioset_classes()[top]}\" in it "
                f"({profile[top]:.2f}); record the sound itself, closer and with less "
                "talking or noise, or it learns the room")
    return None


def background_classes(probs: np.ndarray | None, files: np.ndarray) -> set[int]:
    """Classes in the top :data:`PROFILE_TOP` of more than :data:`BACKGROUND_SHARE` of the
    background files (their windows' mean), plus :data:`UNINFORMATIVE`."""
    index = _class_index()
    out = {index[n] for n in UNINFORMATIVE}
    if probs is None or probs.shape[0] == 0:
        return out
    files = np.asarray(files)
    ids = np.unique(files)
    counts = np.zeros(probs.shape[1])
    for f in ids:
        mean = probs[files == f].astype(np.float32).mean(axis=0)
        counts[np.argsort(-mean)[:PROFILE_TOP]] += 1
    return out | set(np.flatnonzero(counts > BACKGROUND_SHARE * len(ids)).tolist())


def support_set(profiles: Sequence[np.ndarray], excluded: set[int]) -> list[int]:
    """The classes ranking in the top :data:`PROFILE_TOP` of at least :data:`PROFILE_SHARE`
    of the takes' profiles, not excluded, most probable first (at most
    :data:`SUPPORT_MAX`)."""
    if not profiles:
        return []
    stack = np.vstack(profiles)
    counts = np.zeros(stack.shape[1])
    for p in stack:
        counts[np.argsort(-p)[:PROFILE_TOP]] += 1
    mean = stack.mean(axis=0)
    need = max(1, int(math.ceil(PROFILE_SHARE * len(profiles))))
    ok = [i for i in np.argsort(-mean) if counts[i] >= need and int(i) not in excluded]
    return [int(i) for i in ok[:SUPPORT_MAX]]


def gate_rule(support: Sequence[int]) -> dict:
    return {"support": [int(i) for i in support], "top_k": GATE_TOP_K, "floor": GATE_FLOOR,
            "context_seconds": GATE_CONTEXT_SECONDS, "max_wait_seconds": GATE_MAX_WAIT_SECONDS}


def clip_passes(clip: ClipWindows, scores: np.ndarray, threshold: float, smoothing: int,
                rule: dict, context_windows: int, wait_windows: int) -> bool:
    """Whether the take, scored ``scores`` per window, fires with the rule: a window whose
    smoothed score reaches ``threshold`` and, within ``wait_windows`` after it, the
    evidence pooled over ``context_windows`` ranks a support class as the rule says."""
    from detector.model.gate import GateRule, supporting

    g = GateRule(tuple(rule["support"]), rule["top_k"], rule["floor"])
    k = max(1, smoothing)
    smooth = np.convolve(scores, np.ones(k) / k)[:scores.size]
    for i in np.flatnonzero(smooth >= threshold):
        for j in range(i, min(scores.size, i + wait_windows + 1)):
            pooled = clip.audioset[max(0, j - context_windows + 1):j + 1].mean(axis=0)
            if supporting(pooled, g):
                return True
    return False


def background_gated_share(window_scores: np.ndarray, files: np.ndarray, probs: np.ndarray,
                           threshold: float, rule: dict) -> float:
    """Share of background files with a window above ``threshold`` (held-out scores) whose
    own AudioSet evidence passes the rule."""
    from detector.model.gate import GateRule, supporting

    g = GateRule(tuple(rule["support"]), rule["top_k"], rule["floor"])
    files = np.asarray(files)
    fired = set()
    for w in np.flatnonzero(window_scores >= threshold):
        if files[w] not in fired and supporting(probs[w].astype(np.float32), g):
            fired.add(files[w])
    return len(fired) / max(1, len(np.unique(files)))


# --------------------------------------------------------------------------- background set
def shipped_background_path(model_version: str) -> Path:
    """``detector/models/background-<model_version>.npz``: negatives of the shipped model."""
    return Path(__file__).resolve().parents[1] / "models" / f"background-{model_version}.npz"


@dataclass
class BackgroundSet:
    """Embeddings of everyday sounds, for one model, with the file and kind of each."""

    embeddings: np.ndarray
    files: np.ndarray
    """File index of each window."""
    kinds: list[str]
    """Kind of each file (by file index)."""
    model_version: str
    origins: np.ndarray | None = None
    """Per file index, the file it is a copy of (a quieter copy, :data:`BACKGROUND_FARTHER_DB`);
    None: every file is its own."""
    audioset: np.ndarray | None = None
    """``[windows, 527]`` AudioSet probabilities of the windows (None: made with a model
    without an audioset output, or before sets held them)."""

    def groups(self) -> np.ndarray:
        """Per window, the recording it comes from (a file and its copies are one)."""
        if self.origins is None:
            return self.files
        return np.asarray(self.origins, dtype=np.int64)[self.files]

    @classmethod
    def load(cls, path: str | Path) -> "BackgroundSet":
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                emb = np.asarray(data["embeddings"], dtype=np.float32)
                files = np.asarray(data["files"], dtype=np.int64)
                meta = json.loads(str(data["meta"]))
                probs = (np.asarray(data["audioset"], dtype=np.float32)
                         if "audioset" in data.files else None)
            kinds = [str(k) for k in meta["kinds"]]
            version = str(meta["model_version"])
            origins = (np.asarray(meta["origins"], dtype=np.int64)
                       if meta.get("origins") is not None else None)
        except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
            raise ModelError(f"background set {path} is unreadable ({type(exc).__name__}); "
                             "make it with `python -m export background-embeddings`") from None
        if emb.ndim != 2 or files.shape != (emb.shape[0],) or (
                files.size and (files.min() < 0 or files.max() >= len(kinds))) or (
                origins is not None and (origins.shape != (len(kinds),) or (
                    origins.size and (origins.min() < 0 or origins.max() >= len(kinds))))):
            raise ModelError(f"background set {path} is inconsistent; make it again")
        if probs is not None and probs.shape != (emb.shape[0], 527):
            raise ModelError(f"background set {path} has AudioSet evidence of the wrong "
                             "shape; make it again")
        return cls(emb, files, kinds, version, origins, probs)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"model_version": self.model_version, "kinds": self.kinds,
                "embedding_dim": int(self.embeddings.shape[1]),
                "origins": None if self.origins is None else [int(o) for o in self.origins]}
        with open(path, "wb") as out:
            extra = ({"audioset": self.audioset.astype(np.float16)}
                     if self.audioset is not None else {})
            np.savez_compressed(out, embeddings=self.embeddings.astype(np.float16),
                                files=self.files.astype(np.int32), meta=np.array(json.dumps(meta)),
                                **extra)
        return path

    def without_kinds(self, kinds: Iterable[str]) -> "BackgroundSet":
        drop = set(kinds)
        keep_files = np.array([k not in drop for k in self.kinds])
        mask = keep_files[self.files] if self.files.size else np.zeros(0, dtype=bool)
        return BackgroundSet(self.embeddings[mask], self.files[mask], self.kinds,
                             self.model_version, self.origins,
                             None if self.audioset is None else self.audioset[mask])


def matching_kinds(label: str, kinds: Iterable[str]) -> list[str]:
    """Background kinds that name the label (``knock`` matches ``door_wood_knock``):
    they are examples of the sound, not background, for this label."""
    words = set(re.split(r"[_\-\s]+", label.lower())) - {""}
    out = []
    for kind in sorted(set(kinds)):
        kind_words = set(re.split(r"[_\-\s]+", kind.lower()))
        if kind.lower() == label.lower() or (words and words <= kind_words):
            out.append(kind)
    return out
