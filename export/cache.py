"""On-disk cache of whole-clip features computed with the daemon's own front end.

One ``.npy`` per audio file under ``cache_dir``, named by a hash of the feature
parameters, the resolved file path, its modification time and size: changing
the front end or touching the file computes a fresh entry (stale ones are
simply never read again; delete the folder to reclaim space).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from detector.audio.features import FeatureParams, FrontEnd, LogMel

from .audio import load_audio

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path(".cache") / "features"
CACHE_VERSION = 1
"""Bump when the stored content changes meaning (e.g. a different padding rule)."""


def _frontend(params: FeatureParams | FrontEnd) -> FrontEnd:
    """``params`` as a front end: a :class:`FeatureParams` means ``logmel_db``."""
    return params if isinstance(params, FrontEnd) else LogMel(params)


def _describe(params: FeatureParams | FrontEnd) -> dict:
    """What the cache key records of the front end (``logmel_db`` keys as before)."""
    if isinstance(params, FeatureParams):
        return {"params": params.as_dict()}
    described = {"params": params.params.as_dict()}
    if params.kind != "logmel_db":
        described["kind"] = params.kind
        described["feature_params"] = params.mn.as_dict()
    return described


def cache_key(path: str | Path, params: FeatureParams | FrontEnd) -> str:
    """Hex digest identifying the features of ``path`` under ``params`` (a
    :class:`FeatureParams` for ``logmel_db`` or any front end from ``make_frontend``)."""
    path = Path(path).resolve()
    stat = path.stat()
    blob = json.dumps({"v": CACHE_VERSION, **_describe(params), "path": str(path),
                       "mtime_ns": stat.st_mtime_ns, "size": stat.st_size}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def clip_logmel(path: str | Path, params: FeatureParams | FrontEnd,
                cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
                _logmel: FrontEnd | None = None) -> np.ndarray:
    """``[frames, n_mels]`` float32 log-mel of the whole file, from the cache if valid."""
    target = None
    if cache_dir is not None:
        from detector.errors import AudioError
        try:
            key = cache_key(path, params)
        except OSError:
            raise AudioError(f"audio file {path} does not exist; check the dataset path") from None
        target = Path(cache_dir) / f"{key}.npy"
        if target.is_file():
            try:
                return np.load(target)
            except (OSError, ValueError):
                logger.warning("cache entry %s is unreadable; recomputing", target)
    frontend = _logmel or _frontend(params)
    framing = frontend.params
    audio = load_audio(path, framing.sample_rate)
    if audio.shape[0] < framing.n_fft:  # shorter than one FFT frame: pad with silence
        audio = np.pad(audio, (0, framing.n_fft - audio.shape[0]))
    features = frontend(audio)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, features)
        os.replace(tmp, target)  # atomic: a crash never leaves a half-written entry
    return features


def load_features(clips, params: FeatureParams | FrontEnd,
                  cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
                  progress: bool = True) -> list[np.ndarray]:
    """Log-mels of every clip (same order), computed or read from the cache.

    Every file is read before training starts, so a missing or corrupt file stops
    the run here with one :class:`~detector.errors.AudioError` line naming it.
    """
    clips = list(clips)
    iterator = clips
    if progress:
        from tqdm import tqdm
        iterator = tqdm(clips, desc="log-mel features", unit="clip")
    logmel = _frontend(params)
    return [clip_logmel(clip.path, params, cache_dir, logmel) for clip in iterator]
