"""StreamResampler: streaming equals one-shot for any block size, nothing dropped,
tones keep their frequency, aliasing is filtered out."""

from __future__ import annotations

import numpy as np
import pytest

from detector.audio.resample import StreamResampler, resample


def stream(x: np.ndarray, in_rate: int, out_rate: int, sizes) -> np.ndarray:
    rs = StreamResampler(in_rate, out_rate)
    out, i, k = [], 0, 0
    while i < len(x):
        n = sizes[k % len(sizes)]
        out.append(rs.process(x[i:i + n]))
        i += n
        k += 1
    out.append(rs.flush())
    return np.concatenate(out)


@pytest.fixture(scope="module")
def noise() -> np.ndarray:
    return (0.3 * np.random.default_rng(1).standard_normal(44100 * 2)).astype(np.float32)


@pytest.mark.parametrize("rates", [(44100, 16000), (48000, 16000), (8000, 16000), (22050, 16000)])
@pytest.mark.parametrize("sizes", [[1], [160], [441, 1000, 7], [4096], [100000]])
def test_streaming_equals_one_shot(noise, rates, sizes):
    in_rate, out_rate = rates
    x = noise[: in_rate]  # one second
    whole = resample(x, in_rate, out_rate)
    streamed = stream(x, in_rate, out_rate, sizes)
    assert streamed.dtype == np.float32
    assert len(streamed) == len(whole) == round(len(x) * out_rate / in_rate)
    np.testing.assert_array_equal(streamed, whole)


def test_random_block_sizes(noise):
    sizes = list(np.random.default_rng(7).integers(1, 3000, size=50))
    np.testing.assert_array_equal(stream(noise, 44100, 16000, sizes),
                                  resample(noise, 44100, 16000))


def test_tone_keeps_frequency_and_level():
    sr_in, sr_out = 44100, 16000
    t = np.arange(sr_in) / sr_in
    x = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    y = stream(x, sr_in, sr_out, [2205])
    seg = y[1000:-1000]
    peak = np.argmax(np.abs(np.fft.rfft(seg * np.hanning(len(seg))))) * sr_out / len(seg)
    assert abs(peak - 1000) < 2
    assert np.sqrt(np.mean(seg ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=1e-3)


def test_above_nyquist_is_filtered_not_aliased():
    # 11 kHz at 48 kHz cannot exist at 16 kHz; decimation by dropping samples would
    # fold it to 5 kHz at full level. A real resampler removes it.
    sr_in = 48000
    t = np.arange(sr_in) / sr_in
    x = (0.5 * np.sin(2 * np.pi * 11000 * t)).astype(np.float32)
    y = resample(x, sr_in, 16000)[500:-500]
    assert np.sqrt(np.mean(y ** 2)) < 1e-3
    dropped = x[::3][500:-500]
    assert np.sqrt(np.mean(dropped ** 2)) > 0.3


def test_passthrough_and_reset():
    x = np.linspace(-1, 1, 1000, dtype=np.float32)
    rs = StreamResampler(16000, 16000)
    assert rs.passthrough
    np.testing.assert_array_equal(rs.process(x), x)
    assert rs.flush().size == 0

    rs = StreamResampler(48000, 16000)
    first = np.concatenate([rs.process(x), rs.flush()])
    rs.reset()
    second = np.concatenate([rs.process(x), rs.flush()])
    np.testing.assert_array_equal(first, second)  # no state leaks across a reset
    with pytest.raises(RuntimeError):
        rs.process(x)  # after flush() without reset()


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        StreamResampler(0, 16000)
    with pytest.raises(ValueError):
        StreamResampler(48000, 16000).process(np.zeros((10, 2), np.float32))
