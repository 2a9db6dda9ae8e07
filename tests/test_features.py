"""Log-mel front end: librosa parity, streaming parity, physical sanity."""

import numpy as np
import pytest

from detector.errors import ConfigError
from detector.audio.features import FeatureParams, StreamingLogMel, logmel, mel_filterbank

PARAMS = FeatureParams()


def tone(freq_hz, seconds=1.0, sr=16000, amp=0.5):
    t = np.arange(int(seconds * sr)) / sr
    return amp * np.sin(2 * np.pi * freq_hz * t)


def noise(seconds=2.0, sr=16000, seed=0):
    return np.random.default_rng(seed).normal(0, 0.1, int(seconds * sr))


@pytest.fixture(scope="module")
def librosa():
    return pytest.importorskip("librosa")


@pytest.mark.parametrize("params", [
    PARAMS,
    FeatureParams(sample_rate=22050, n_fft=1024, hop_length=256, win_length=800,
                  n_mels=128, fmin=0.0, fmax=11025.0),
])
def test_filterbank_matches_librosa(librosa, params):
    ref = librosa.filters.mel(sr=params.sample_rate, n_fft=params.n_fft, n_mels=params.n_mels,
                              fmin=params.fmin, fmax=params.fmax, htk=False, norm="slaney")
    np.testing.assert_allclose(mel_filterbank(params), ref, atol=1e-8, rtol=1e-5)


@pytest.mark.parametrize("params", [
    PARAMS,
    FeatureParams(n_fft=1024, hop_length=320, win_length=800, n_mels=40, fmin=0.0, fmax=8000.0),
])
def test_batch_matches_librosa(librosa, params):
    y = noise() + tone(440.0, 2.0)
    mel = librosa.feature.melspectrogram(
        y=y, sr=params.sample_rate, n_fft=params.n_fft, hop_length=params.hop_length,
        win_length=params.win_length, window="hann", center=False, power=2.0,
        n_mels=params.n_mels, fmin=params.fmin, fmax=params.fmax, htk=False, norm="slaney")
    ref = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None).T
    ours = logmel(y, params)
    assert ours.shape == ref.shape
    assert np.max(np.abs(ours - ref)) < 1e-4


@pytest.mark.parametrize("block", [160, 1000, 4096, 1, 511, 513])
def test_stream_equals_batch_fixed_blocks(block):
    y = noise(3.0, seed=1) + tone(1000.0, 3.0, amp=0.2)
    batch = logmel(y, PARAMS)
    stream = StreamingLogMel(PARAMS)
    cols = [stream.push(y[i:i + block]) for i in range(0, len(y), block)]
    out = np.concatenate(cols)
    assert out.shape == batch.shape
    assert np.max(np.abs(out - batch)) < 1e-4
    assert stream.columns_out == batch.shape[0]


def test_stream_equals_batch_random_blocks():
    rng = np.random.default_rng(7)
    y = noise(3.0, seed=2)
    stream = StreamingLogMel(PARAMS)
    out, i = [], 0
    while i < len(y):
        n = int(rng.integers(0, 3000))
        out.append(stream.push(y[i:i + n]))
        i += n
    np.testing.assert_allclose(np.concatenate(out), logmel(y, PARAMS), atol=1e-4)


def test_tone_peaks_in_its_band():
    mel = logmel(tone(1000.0), PARAMS).mean(axis=0)
    fb = mel_filterbank(PARAMS)
    bin_1k = int(round(1000.0 * PARAMS.n_fft / PARAMS.sample_rate))
    assert int(np.argmax(mel)) == int(np.argmax(fb[:, bin_1k]))


def test_silence_sits_at_floor_and_gain_shifts_level():
    assert np.allclose(logmel(np.zeros(16000), PARAMS), -100.0)
    y = noise(1.0)
    diff = logmel(y, PARAMS) - logmel(0.1 * y, PARAMS)
    assert np.allclose(diff, 20.0, atol=1e-3)  # fixed reference keeps loudness


def test_short_input_gives_no_columns():
    assert logmel(np.zeros(100), PARAMS).shape == (0, PARAMS.n_mels)
    s = StreamingLogMel(PARAMS)
    assert s.push(np.zeros(511)).shape == (0, PARAMS.n_mels)
    assert s.push(np.zeros(1)).shape == (1, PARAMS.n_mels)


@pytest.mark.parametrize("kwargs,needle", [
    ({"hop_length": 1024}, "hop_length=1024"),
    ({"fmax": 9000.0}, "fmax=9000.0"),
    ({"win_length": 0}, "win_length=0"),
])
def test_bad_params_name_the_value(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        FeatureParams(**kwargs)
