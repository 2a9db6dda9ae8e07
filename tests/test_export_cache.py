"""Feature cache: same values as the daemon's front end, invalidated by params and file changes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from detector.errors import AudioError
from detector.audio.features import FeatureParams, logmel
from export.cache import cache_key, clip_logmel, load_features
from export.datasets import Clip


def write_tone(path, freq, seconds=0.5, sr=16000):
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, 0.3 * np.sin(2 * np.pi * freq * t), sr, subtype="PCM_16")


def test_cache_hit_equals_fresh_computation(tmp_path):
    wav = tmp_path / "a.wav"
    write_tone(wav, 1000)
    params = FeatureParams()
    cache = tmp_path / "cache"
    first = clip_logmel(wav, params, cache)
    entries = list(cache.glob("*.npy"))
    assert len(entries) == 1
    expected = logmel(sf.read(wav, dtype="float32")[0], params)
    np.testing.assert_allclose(first, expected, atol=1e-5)
    # Prove the second call reads the cache: overwrite the entry with a marker.
    np.save(entries[0], np.full_like(first, 7.0))
    assert np.all(clip_logmel(wav, params, cache) == 7.0)


def test_changed_params_or_file_invalidate(tmp_path):
    wav = tmp_path / "a.wav"
    write_tone(wav, 1000)
    cache = tmp_path / "cache"
    base = clip_logmel(wav, FeatureParams(), cache)
    other = clip_logmel(wav, FeatureParams(n_mels=40), cache)
    assert other.shape[1] == 40 and base.shape[1] == 64
    assert len(list(cache.glob("*.npy"))) == 2
    key = cache_key(wav, FeatureParams())
    write_tone(wav, 3000)  # rewrite the file: new content, size may match, mtime moves
    stat = os.stat(wav)
    os.utime(wav, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cache_key(wav, FeatureParams()) != key
    fresh = clip_logmel(wav, FeatureParams(), cache)
    peak_band = lambda x: int(np.argmax(x.mean(axis=0)))  # noqa: E731
    assert peak_band(fresh) > peak_band(base)


def test_load_features_names_missing_file(tmp_path):
    good = tmp_path / "good.wav"
    write_tone(good, 500)
    clips = [Clip(good, "a", None, "good"), Clip(tmp_path / "gone.wav", "a", None, "gone")]
    with pytest.raises(AudioError, match="gone.wav does not exist"):
        load_features(clips, FeatureParams(), tmp_path / "cache", progress=False)
    (feat,) = load_features(clips[:1], FeatureParams(), None, progress=False)
    assert feat.shape == (FeatureParams().frames_for(8000), 64)


def test_mn_logmel_front_end_is_cached_under_its_own_key(tmp_path):
    from dataclasses import replace

    from detector.audio.features import MN04_FEATURES, MN04_PARAMS, MnLogMel

    wav = tmp_path / "a.wav"
    write_tone(wav, 1000)
    cache = tmp_path / "cache"
    mn = MnLogMel(MN04_FEATURES, MN04_PARAMS)
    first = clip_logmel(wav, mn, cache)
    np.testing.assert_array_equal(first, mn(sf.read(wav, dtype="float32")[0]))
    np.testing.assert_array_equal(clip_logmel(wav, mn, cache), first)  # a hit
    other = MnLogMel(MN04_FEATURES, replace(MN04_PARAMS, preemphasis=0.0))
    keys = {cache_key(wav, mn), cache_key(wav, other), cache_key(wav, FeatureParams()),
            cache_key(wav, MN04_FEATURES)}
    assert len(keys) == 4
    assert not np.array_equal(clip_logmel(wav, other, cache), first)
    assert len(list(cache.glob("*.npy"))) == 2
