"""Log-mel features in pure numpy, shared by the daemon and by training.

Semantics match ``librosa.feature.melspectrogram(center=False, power=2.0,
window="hann", htk=False, norm="slaney")`` followed by
``librosa.power_to_db(ref=1.0, amin=1e-10, top_db=None)``: a fixed dB reference,
never a per-window maximum, so loudness information survives.

:class:`StreamingLogMel` computes one STFT column per hop as audio arrives and
carries the remainder between blocks, so every sample is transformed
``n_fft / hop_length`` times and the result equals :func:`logmel` on the whole
signal for any block size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import ConfigError

AMIN = 1e-10
"""Power floor before the logarithm: silence sits at 10*log10(AMIN) = -100 dB."""


@dataclass(frozen=True)
class FeatureParams:
    """Parameters of the log-mel front end (all read from the model metadata)."""

    sample_rate: int = 16000
    """Sample rate in Hz the features are computed at."""
    n_fft: int = 512
    """FFT size in samples."""
    hop_length: int = 160
    """Samples between successive STFT columns."""
    win_length: int = 512
    """Hann window length in samples (<= n_fft, centred in the FFT frame)."""
    n_mels: int = 64
    """Number of mel bands."""
    fmin: float = 50.0
    """Lowest mel band edge in Hz."""
    fmax: float = 8000.0
    """Highest mel band edge in Hz (<= sample_rate / 2)."""

    def __post_init__(self) -> None:
        checks = [
            (self.sample_rate >= 1000, f"sample_rate={self.sample_rate} must be >= 1000"),
            (self.n_fft >= 16, f"n_fft={self.n_fft} must be >= 16"),
            (0 < self.hop_length <= self.n_fft,
             f"hop_length={self.hop_length} must be in 1..n_fft={self.n_fft}"),
            (0 < self.win_length <= self.n_fft,
             f"win_length={self.win_length} must be in 1..n_fft={self.n_fft}"),
            (1 <= self.n_mels <= 512, f"n_mels={self.n_mels} must be in 1..512"),
            (0 <= self.fmin < self.fmax, f"fmin={self.fmin} must be >= 0 and < fmax={self.fmax}"),
            (self.fmax <= self.sample_rate / 2,
             f"fmax={self.fmax} must be <= sample_rate/2={self.sample_rate / 2}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def frames_for(self, n_samples: int) -> int:
        """Number of STFT columns ``center=False`` framing yields for ``n_samples``."""
        if n_samples < self.n_fft:
            return 0
        return 1 + (n_samples - self.n_fft) // self.hop_length

    def samples_for(self, n_frames: int) -> int:
        """Samples spanned by ``n_frames`` consecutive columns."""
        return self.n_fft + (n_frames - 1) * self.hop_length

    def as_dict(self) -> dict:
        return asdict(self)


def hz_to_mel(freq: np.ndarray | float) -> np.ndarray:
    """Slaney mel scale (librosa ``htk=False``): linear below 1 kHz, log above."""
    freq = np.asarray(freq, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = freq / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(freq >= min_log_hz,
                    min_log_mel + np.log(np.maximum(freq, min_log_hz) / min_log_hz) / logstep,
                    mels)


def mel_to_hz(mels: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    mels = np.asarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(mels >= min_log_mel,
                    min_log_hz * np.exp(logstep * (mels - min_log_mel)),
                    f_sp * mels)


def mel_filterbank(params: FeatureParams) -> np.ndarray:
    """Slaney-normalised triangular filters, shape ``[n_mels, 1 + n_fft // 2]``.

    Same construction as ``librosa.filters.mel`` (``htk=False, norm="slaney"``).
    """
    fft_freqs = np.fft.rfftfreq(params.n_fft, d=1.0 / params.sample_rate)
    mel_edges = mel_to_hz(np.linspace(hz_to_mel(params.fmin), hz_to_mel(params.fmax),
                                      params.n_mels + 2))
    widths = np.diff(mel_edges)
    ramps = mel_edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_edges[2:] - mel_edges[:-2]))[:, None]
    return weights


def hann_window(params: FeatureParams) -> np.ndarray:
    """Periodic Hann window of ``win_length``, zero-padded to ``n_fft`` (centred)."""
    n = params.win_length
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
    left = (params.n_fft - n) // 2
    padded = np.zeros(params.n_fft)
    padded[left:left + n] = window
    return padded


class LogMel:
    """Frames -> log-mel dB. Holds the window and filterbank, computed once."""

    def __init__(self, params: FeatureParams):
        self.params = params
        self.window = hann_window(params)
        # Transposed once so each call is a single [frames, bins] @ [bins, mels] product.
        self.mel_t = np.ascontiguousarray(mel_filterbank(params).T)

    def frames_to_logmel(self, frames: np.ndarray) -> np.ndarray:
        """``frames``: ``[n, n_fft]`` float -> ``[n, n_mels]`` float32 dB."""
        spectrum = np.fft.rfft(frames * self.window, n=self.params.n_fft, axis=-1)
        power = spectrum.real ** 2 + spectrum.imag ** 2
        mel = power @ self.mel_t
        return (10.0 * np.log10(np.maximum(mel, AMIN))).astype(np.float32)

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """Whole signal -> ``[frames, n_mels]`` (``center=False`` framing)."""
        audio = np.asarray(audio, dtype=np.float64)
        n_frames = self.params.frames_for(audio.shape[-1])
        if n_frames == 0:
            return np.zeros((0, self.params.n_mels), dtype=np.float32)
        frames = np.lib.stride_tricks.sliding_window_view(
            audio, self.params.n_fft)[::self.params.hop_length][:n_frames]
        return self.frames_to_logmel(frames)


def logmel(audio: np.ndarray, params: FeatureParams) -> np.ndarray:
    """Batch log-mel of a mono float signal in [-1, 1]: ``[frames, n_mels]`` float32 dB."""
    return LogMel(params)(audio)


class StreamingLogMel:
    """Incremental log-mel: push blocks of any size, get the new columns.

    Keeps at most ``n_fft - 1 + hop_length`` pending samples; each call
    transforms only the frames that became complete, so the cost per sample is
    constant and the output equals :func:`logmel` of the concatenated input.

    The per-block work runs in preallocated buffers (pending samples, windowed
    frames, spectrum, power, mel) that grow only when a larger block arrives, so
    a steady stream of equal blocks allocates nothing but the returned columns.
    The arithmetic is the same as :meth:`LogMel.frames_to_logmel` (same
    operations in the same order and precision), so the columns are bit-identical
    to it on the same frames.
    """

    def __init__(self, params: FeatureParams):
        self.params = params
        self._logmel = LogMel(params)
        self._window = self._logmel.window
        self._mel_t = self._logmel.mel_t
        self._n_bins = params.n_fft // 2 + 1
        self._empty = np.zeros((0, params.n_mels), dtype=np.float32)
        self._buf = np.zeros(0, dtype=np.float64)
        self._n = 0  # valid samples at the start of ``_buf``
        self._rows = 0  # frames the per-frame buffers hold
        self.columns_out = 0
        self._ensure(params.n_fft - 1 + params.hop_length + params.sample_rate // 10)

    def _ensure(self, n_samples: int) -> None:
        """Room for ``n_samples`` pending samples and the frames they can complete."""
        p = self.params
        if n_samples > self._buf.shape[0]:
            buf = np.zeros(max(n_samples, 2 * self._buf.shape[0]), dtype=np.float64)
            buf[:self._n] = self._buf[:self._n]
            self._buf = buf
        rows = p.frames_for(self._buf.shape[0])
        if rows > self._rows:
            self._rows = rows
            self._frames = np.empty((rows, p.n_fft), dtype=np.float64)
            self._spec = np.empty((rows, self._n_bins), dtype=np.complex128)
            self._power = np.empty((rows, self._n_bins), dtype=np.float64)
            self._im2 = np.empty((rows, self._n_bins), dtype=np.float64)
            self._mel = np.empty((rows, p.n_mels), dtype=np.float64)

    def reset(self) -> None:
        """Forget buffered audio (e.g. after a device reconnect)."""
        self._n = 0

    @property
    def ready_columns(self) -> int:
        """Columns that the samples appended so far complete (what :meth:`flush` returns)."""
        return self.params.frames_for(self._n)

    def append(self, block: np.ndarray) -> None:
        """Buffer mono samples without transforming them (see :meth:`flush`)."""
        block = np.asarray(block).reshape(-1)
        end = self._n + block.shape[0]
        if end > self._buf.shape[0]:
            self._ensure(end)
        self._buf[self._n:end] = block  # float64, as np.asarray(block, float64)
        self._n = end

    def push(self, block: np.ndarray) -> np.ndarray:
        """Append mono samples; return ``[k, n_mels]`` for the k columns completed."""
        self.append(block)
        return self.flush()

    def flush(self) -> np.ndarray:
        """``[k, n_mels]`` for the k columns the buffered samples complete.

        ``append`` + ``flush`` once per model hop gives the same columns as ``push``
        per block, with one transform call instead of one per block.
        """
        p = self.params
        end = self._n
        n_frames = p.frames_for(end)
        if n_frames == 0:
            return self._empty.copy()
        hop = p.hop_length
        # [n_frames, n_fft] view of the buffer, one row per hop (no copy)
        frames = np.ndarray((n_frames, p.n_fft), dtype=np.float64, buffer=self._buf,
                            strides=(hop * 8, 8))
        windowed = np.multiply(frames, self._window, out=self._frames[:n_frames])
        spec = _rfft(windowed, p.n_fft, self._spec[:n_frames])
        power, im2 = self._power[:n_frames], self._im2[:n_frames]
        np.multiply(spec.real, spec.real, out=power)
        np.multiply(spec.imag, spec.imag, out=im2)
        np.add(power, im2, out=power)
        mel = np.matmul(power, self._mel_t, out=self._mel[:n_frames])
        np.maximum(mel, AMIN, out=mel)
        np.log10(mel, out=mel)
        out = np.empty((n_frames, p.n_mels), dtype=np.float32)
        np.multiply(mel, 10.0, out=out, casting="same_kind")
        consumed = n_frames * hop
        rest = end - consumed
        self._buf[:rest] = self._buf[consumed:end]
        self._n = rest
        self.columns_out += n_frames
        return out


def _rfft_out(frames: np.ndarray, n_fft: int, out: np.ndarray) -> np.ndarray:
    return np.fft.rfft(frames, n=n_fft, axis=-1, out=out)


def _rfft_alloc(frames: np.ndarray, n_fft: int, out: np.ndarray) -> np.ndarray:
    return np.fft.rfft(frames, n=n_fft, axis=-1)


try:  # numpy >= 2.0 writes the FFT into a preallocated array
    np.fft.rfft(np.zeros((1, 16)), n=16, axis=-1, out=np.empty((1, 9), dtype=np.complex128))
    _rfft = _rfft_out
except TypeError:  # pragma: no cover - numpy 1.x
    _rfft = _rfft_alloc
