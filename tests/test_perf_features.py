"""StreamingLogMel's preallocated fast path computes exactly what LogMel computes.

The streaming front end reuses its buffers instead of allocating per block; these
tests pin that it stays bit-identical to :meth:`LogMel.frames_to_logmel` (the batch
arithmetic the model was trained on) on the same frames, for any block sizes,
input dtypes, buffer growth and resets.
"""

import numpy as np
import pytest

from detector.audio.features import FeatureParams, LogMel, StreamingLogMel

PARAMS = FeatureParams()


class Reference:
    """The straightforward streaming algorithm: concatenate, frame, transform."""

    def __init__(self, params):
        self.params = params
        self.logmel = LogMel(params)
        self.pending = np.zeros(0, dtype=np.float64)

    def reset(self):
        self.pending = np.zeros(0, dtype=np.float64)

    def push(self, block):
        p = self.params
        buf = np.concatenate((self.pending, np.asarray(block, dtype=np.float64).reshape(-1)))
        n = p.frames_for(buf.shape[0])
        if n == 0:
            self.pending = buf
            return np.zeros((0, p.n_mels), dtype=np.float32)
        frames = np.lib.stride_tricks.sliding_window_view(buf, p.n_fft)[::p.hop_length][:n]
        self.pending = buf[n * p.hop_length:].copy()
        return self.logmel.frames_to_logmel(frames)


def signal(seconds, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    y = 0.1 * rng.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * 1000 * t)
    y[y.size // 3: y.size // 2] = 0.0  # digital silence hits the AMIN floor
    return y.astype(np.float32)


@pytest.mark.parametrize("block", [1, 159, 160, 512, 800, 4096, 40_000, "random"])
def test_stream_is_bit_identical_to_frames_to_logmel(block):
    y = signal(4.0)
    rng = np.random.default_rng(5)
    ours, ref = StreamingLogMel(PARAMS), Reference(PARAMS)
    i = 0
    while i < y.size:
        n = int(rng.integers(0, 6000)) if block == "random" else block
        a, b = ours.push(y[i:i + n]), ref.push(y[i:i + n])
        assert a.dtype == np.float32 and a.shape == b.shape
        assert np.array_equal(a, b)
        i += n
    assert ours.columns_out == PARAMS.frames_for(y.size)


def test_returned_columns_are_not_reused_buffers():
    y = signal(1.0)
    stream = StreamingLogMel(PARAMS)
    first = stream.push(y[:8000])
    kept = first.copy()
    stream.push(y[8000:])
    assert np.array_equal(first, kept)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_input_dtypes_convert_like_asarray_float64(dtype):
    y = signal(1.5, seed=2)
    data = (y * 20000).astype(dtype) if dtype == np.int16 else y.astype(dtype)
    ours, ref = StreamingLogMel(PARAMS), Reference(PARAMS)
    for i in range(0, data.size, 777):
        assert np.array_equal(ours.push(data[i:i + 777]), ref.push(data[i:i + 777]))


def test_reset_forgets_pending_samples():
    y = signal(2.0, seed=3)
    ours, ref = StreamingLogMel(PARAMS), Reference(PARAMS)
    for i, start in enumerate(range(0, y.size, 1000)):
        if i % 7 == 3:
            ours.reset()
            ref.reset()
        assert np.array_equal(ours.push(y[start:start + 1000]), ref.push(y[start:start + 1000]))


def test_other_parameters():
    params = FeatureParams(sample_rate=22050, n_fft=1024, hop_length=256, win_length=800,
                           n_mels=128, fmin=0.0, fmax=11025.0)
    y = signal(2.0, seed=4)
    ours, ref = StreamingLogMel(params), Reference(params)
    for i in range(0, y.size, 3001):
        assert np.array_equal(ours.push(y[i:i + 3001]), ref.push(y[i:i + 3001]))
