"""Model front ends in pure numpy, shared by the daemon and by training.

Two kinds, named by the model metadata's ``feature`` key (see
:func:`make_frontend`, the one factory the pipeline, replay, evaluation and
export use):

``logmel_db``
    Semantics of ``librosa.feature.melspectrogram(center=False, power=2.0,
    window="hann", htk=False, norm="slaney")`` followed by
    ``librosa.power_to_db(ref=1.0, amin=1e-10, top_db=None)``: a fixed dB
    reference, never a per-window maximum, so loudness information survives.

``mn_logmel``
    A 16 kHz equivalent of the EfficientAT (AudioSet MobileNet) front end, which
    is defined at 32 kHz: pre-emphasis 0.97, n_fft 1024, 800-sample symmetric
    Hann, hop 320, 128 Kaldi mel bands 0-15000 Hz, ``ln(mel + 1e-5)``. At 16 kHz
    with n_fft 512 the FFT bins are 31.25 Hz apart, as the 32 kHz grid's, so the
    32 kHz mel matrix applies bin for bin. The network hears 16 kHz audio
    upsampled by 2, and the upsampler's response is folded into that matrix too:
    its droop below 8 kHz and the mirror image it leaves above 8 kHz (so the
    bands up to ~9.5 kHz carry energy as they do for the network; the highest
    are near the floor). The window is the 800-point one sampled at every second
    point; pre-emphasis becomes its 32 kHz power response per bin and the 2x
    longer window at 2x the rate a power gain of 4, all folded into the matrix.
    Parameters: :class:`MnParams`.

Both compute ``center=False`` frames (``1 + (N - n_fft) // hop_length``).
:class:`StreamingFrontEnd` computes one column per hop as audio arrives and
carries the remainder between blocks, so every sample is transformed
``n_fft / hop_length`` times and the result equals the batch front end on the
whole signal for any block size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from detector.errors import ConfigError

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


FEATURE_KINDS = ("logmel_db", "mn_logmel")
"""Front ends a model's ``feature`` metadata may name."""


def _number(key: str, value: object, kind: type) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"feature_params.{key}={value!r} must be a number")
    try:
        if not math.isfinite(float(value)):
            raise OverflowError
    except OverflowError:  # inf from 1e999, or an integer beyond float range
        raise ConfigError(f"feature_params.{key}={str(value)[:40]} must be a finite number") \
            from None
    if kind is int:
        if float(value) != int(value):
            raise ConfigError(f"feature_params.{key}={value!r} must be a whole number")
        return int(value)
    return float(value)


@dataclass(frozen=True)
class MnParams:
    """Parameters of the ``mn_logmel`` front end (model metadata ``feature_params``).

    The network's front end is defined at 32 kHz; every value says at which rate
    it is defined, so the daemon computes the equivalent at its own
    ``sample_rate`` / ``n_fft`` / ``hop_length`` / ``win_length`` (the top-level
    keys). Defaults are EfficientAT mn04's front end for a 16 kHz model.
    """

    window: str = "hann_symmetric"
    """Window kind: ``hann_symmetric`` = ``0.5 - 0.5 cos(2 pi n / (L - 1))``, n = 0..L-1."""
    window_length: int = 800
    """Window length L in samples at ``window_rate``."""
    window_rate: int = 32000
    """Rate the window is defined at: k = window_rate / sample_rate, and every k-th
    point of it (from the first) is the ``win_length``-sample window used."""
    window_offset: int = 112
    """Index of the window's first sample inside the ``n_fft`` frame. 112 (the end
    of a 512 frame) lines its span up with the 32 kHz network's frames."""
    preemphasis: float = 0.97
    """Coefficient c of ``y[n] = x[n+1] - c x[n]``; 0 for none."""
    preemphasis_rate: int = 32000
    """Rate the pre-emphasis is defined at; applied as its power response
    ``|1 - c exp(-2 pi i f / preemphasis_rate)|^2`` on each FFT bin."""
    mel_scale: str = "kaldi"
    """``kaldi``: mel = 1127 ln(1 + f / 700), triangles in the mel domain, unnormalised."""
    mel_fmin: float = 0.0
    """Lowest mel band edge in Hz."""
    mel_fmax: float = 15000.0
    """Highest mel band edge in Hz (may exceed sample_rate / 2: those bands get only the
    upsampler's image, see ``upsample_taps``)."""
    mel_rate: int = 32000
    """Rate of the FFT grid the mel matrix is defined on."""
    mel_n_fft: int = 1024
    """FFT size of that grid (no weight on its Nyquist bin, as Kaldi); its bin
    spacing mel_rate / mel_n_fft must equal sample_rate / n_fft."""
    upsample_rate: int = 32000
    """Rate the network's audio was upsampled to from ``sample_rate`` (equal to it: none).
    A grid bin at f then holds the upsampler's |H(f)|^2 times the model's spectrum at f
    folded into 0..sample_rate/2 (the image of f above sample_rate / 2)."""
    upsample_taps: int = 41
    """Taps of the upsampler: a Kaiser-windowed sinc FIR cut at sample_rate / 2 with DC
    gain 1 (``scipy.signal.resample_poly``'s design: 41 taps for x2); 0 = ideal (no
    droop, no image: the bands above sample_rate / 2 sit at the floor)."""
    upsample_beta: float = 5.0
    """Kaiser window beta of that FIR (``resample_poly``: 5.0)."""
    power_scale: float = 4.0
    """Factor on the power spectrum: 4 = a 2x-upsampled signal under a 2x longer window."""
    log: str = "ln"
    """Logarithm of the mel energies: ``ln`` (natural)."""
    log_offset: float = 1e-5
    """Added before the logarithm: ``ln(mel + log_offset)``; silence sits at ln(log_offset)."""

    def __post_init__(self) -> None:
        checks = [
            (self.window in ("hann_symmetric",),
             f"feature_params.window={self.window!r} is not supported (expected 'hann_symmetric')"),
            (self.window_length >= 2, f"feature_params.window_length={self.window_length} must be >= 2"),
            (self.window_rate >= 1000, f"feature_params.window_rate={self.window_rate} must be >= 1000"),
            (self.window_offset >= 0, f"feature_params.window_offset={self.window_offset} must be >= 0"),
            (0.0 <= self.preemphasis <= 1.0,
             f"feature_params.preemphasis={self.preemphasis} must be in 0..1"),
            (self.preemphasis_rate >= 1000,
             f"feature_params.preemphasis_rate={self.preemphasis_rate} must be >= 1000"),
            (self.mel_scale in ("kaldi",),
             f"feature_params.mel_scale={self.mel_scale!r} is not supported (expected 'kaldi')"),
            (0.0 <= self.mel_fmin < self.mel_fmax,
             f"feature_params.mel_fmin={self.mel_fmin} must be >= 0 and < mel_fmax={self.mel_fmax}"),
            (self.mel_rate >= 1000, f"feature_params.mel_rate={self.mel_rate} must be >= 1000"),
            (self.mel_n_fft >= 16, f"feature_params.mel_n_fft={self.mel_n_fft} must be >= 16"),
            (self.mel_fmax <= self.mel_rate / 2,
             f"feature_params.mel_fmax={self.mel_fmax} must be <= mel_rate/2={self.mel_rate / 2}"),
            (self.upsample_rate >= 1000,
             f"feature_params.upsample_rate={self.upsample_rate} must be >= 1000"),
            (self.upsample_taps == 0 or (self.upsample_taps >= 3 and self.upsample_taps % 2 == 1),
             f"feature_params.upsample_taps={self.upsample_taps} must be 0 or an odd number >= 3"),
            (self.upsample_beta >= 0,
             f"feature_params.upsample_beta={self.upsample_beta} must be >= 0"),
            (self.power_scale > 0, f"feature_params.power_scale={self.power_scale} must be > 0"),
            (self.log in ("ln",), f"feature_params.log={self.log!r} is not supported (expected 'ln')"),
            (self.log_offset > 0, f"feature_params.log_offset={self.log_offset} must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def check_against(self, features: FeatureParams) -> None:
        """Refuse parameters that do not fit the top-level framing ``features``."""
        rate = features.sample_rate
        step = self.window_rate // rate
        checks = [
            (self.window_rate % rate == 0,
             f"feature_params.window_rate={self.window_rate} must be a multiple of "
             f"sample_rate={rate}"),
            (step >= 1 and -(-self.window_length // max(step, 1)) == features.win_length,
             f"feature_params.window_length={self.window_length} at window_rate="
             f"{self.window_rate} gives {-(-self.window_length // max(step, 1))} samples at "
             f"sample_rate={rate}, not win_length={features.win_length}"),
            (self.window_offset + features.win_length <= features.n_fft,
             f"feature_params.window_offset={self.window_offset} + win_length="
             f"{features.win_length} must be <= n_fft={features.n_fft}"),
            (self.upsample_rate % rate == 0,
             f"feature_params.upsample_rate={self.upsample_rate} must be a multiple of "
             f"sample_rate={rate}"),
            (self.mel_rate * features.n_fft == rate * self.mel_n_fft,
             f"feature_params.mel_rate/mel_n_fft={self.mel_rate}/{self.mel_n_fft} must give "
             f"the bin spacing of sample_rate/n_fft={rate}/{features.n_fft}"),
            (features.fmin == self.mel_fmin,
             f"fmin={features.fmin} must equal feature_params.mel_fmin={self.mel_fmin}"),
            (features.fmax == min(self.mel_fmax, rate / 2),
             f"fmax={features.fmax} must be the highest frequency the bands carry, "
             f"min(feature_params.mel_fmax, sample_rate/2)={min(self.mel_fmax, rate / 2)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: object) -> "MnParams":
        """Parse the ``feature_params`` JSON object: every key present, no others."""
        if not isinstance(values, dict):
            raise ConfigError(f"feature_params={values!r} must be a JSON object")
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"feature_params has unknown keys {unknown}")
        missing = [name for name in known if name not in values]
        if missing:
            raise ConfigError(f"feature_params lacks {missing}")
        parsed: dict = {}
        for name, kind in known.items():
            value = values[name]
            if kind in ("str", str):
                if not isinstance(value, str):
                    raise ConfigError(f"feature_params.{name}={value!r} must be a string")
                parsed[name] = value
            else:
                parsed[name] = _number(name, value, int if kind in ("int", int) else float)
        return cls(**parsed)


MN04_FEATURES = FeatureParams(sample_rate=16000, n_fft=512, hop_length=160, win_length=400,
                              n_mels=128, fmin=0.0, fmax=8000.0)
"""Top-level framing of an ``mn_logmel`` model at 16 kHz (EfficientAT mn04's bin grid)."""
MN04_PARAMS = MnParams()
"""``feature_params`` of EfficientAT mn04's front end, computed at 16 kHz."""
MN04_NORMALIZATION = {"mean": -4.5, "std": 5.0}
"""The network's input normalisation ``(ln(mel + 1e-5) + 4.5) / 5`` as metadata."""


def kaldi_mel(freq: np.ndarray | float) -> np.ndarray:
    """Kaldi / HTK mel scale: ``1127 ln(1 + f / 700)``."""
    return 1127.0 * np.log1p(np.asarray(freq, dtype=np.float64) / 700.0)


def kaldi_mel_filterbank(n_mels: int, n_fft: int, sample_rate: float, fmin: float,
                         fmax: float) -> np.ndarray:
    """Kaldi triangular filters, ``[n_mels, 1 + n_fft // 2]``, zero on the Nyquist bin.

    Band edges are equally spaced on the mel scale between ``fmin`` and ``fmax``;
    each weight is the triangle evaluated at the bin's mel value (not Hz), with
    no area normalisation (``torchaudio.compliance.kaldi.get_mel_banks``).
    """
    n_bins = n_fft // 2
    bin_mel = kaldi_mel(np.arange(n_bins) * (sample_rate / n_fft))
    low, high = float(kaldi_mel(fmin)), float(kaldi_mel(fmax))
    delta = (high - low) / (n_mels + 1)
    left = low + delta * np.arange(n_mels)[:, None]
    center, right = left + delta, left + 2 * delta
    up = (bin_mel[None, :] - left) / (center - left)
    down = (right - bin_mel[None, :]) / (right - center)
    weights = np.zeros((n_mels, n_bins + 1))
    weights[:, :n_bins] = np.maximum(0.0, np.minimum(up, down))
    return weights


def symmetric_hann(length: int) -> np.ndarray:
    """``0.5 - 0.5 cos(2 pi n / (length - 1))`` for n = 0..length-1."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / (length - 1))


def mn_window(features: FeatureParams, mn: MnParams) -> np.ndarray:
    """The ``mn_logmel`` analysis window at ``sample_rate``, placed in the ``n_fft`` frame."""
    step = mn.window_rate // features.sample_rate
    window = symmetric_hann(mn.window_length)[::step]
    padded = np.zeros(features.n_fft)
    padded[mn.window_offset:mn.window_offset + window.shape[0]] = window
    return padded


def upsampler_fir(mn: MnParams, sample_rate: int) -> np.ndarray:
    """Impulse response of the upsampler at ``upsample_rate`` (DC gain 1).

    A Kaiser-windowed sinc cut at ``sample_rate / 2``, as ``scipy.signal.firwin``
    builds it for ``resample_poly`` (before that scales it by the factor).
    """
    cutoff = sample_rate / mn.upsample_rate  # fraction of the upsampled Nyquist
    n = np.arange(mn.upsample_taps) - (mn.upsample_taps - 1) / 2
    fir = cutoff * np.sinc(cutoff * n) * np.kaiser(mn.upsample_taps, mn.upsample_beta)
    return fir / fir.sum()


def upsampler_power(mn: MnParams, sample_rate: int, freqs: np.ndarray) -> np.ndarray:
    """|H(f)|^2 of the upsampler at ``freqs`` (Hz); ideal (1 up to sample_rate / 2,
    0 above) without taps or without upsampling."""
    freqs = np.asarray(freqs, dtype=np.float64)
    if mn.upsample_taps == 0 or mn.upsample_rate == sample_rate:
        return (freqs <= sample_rate / 2).astype(np.float64)
    fir = upsampler_fir(mn, sample_rate)
    phase = np.exp(-2j * np.pi * np.outer(freqs / mn.upsample_rate, np.arange(fir.shape[0])))
    response = phase @ fir
    power = response.real ** 2 + response.imag ** 2
    return np.where(freqs <= mn.upsample_rate / 2, power, 0.0)


def mn_filterbank(features: FeatureParams, mn: MnParams) -> np.ndarray:
    """The network's bands on this model's bins, ``[n_mels, 1 + n_fft // 2]``.

    Each bin k of the network's grid (frequency f_k) is what the upsampler passes
    of the model's spectrum at f_k folded into 0..sample_rate/2, times |H(f_k)|^2,
    times the pre-emphasis power response at f_k and ``power_scale``; it adds its
    mel weights to that model bin. Below sample_rate / 2 a grid bin is the model
    bin itself (droop only); above, its mirror image.
    """
    rate = features.sample_rate
    grid = kaldi_mel_filterbank(features.n_mels, mn.mel_n_fft, mn.mel_rate,
                                mn.mel_fmin, mn.mel_fmax)
    spacing = mn.mel_rate / mn.mel_n_fft  # == rate / n_fft (checked)
    freqs = np.arange(grid.shape[1]) * spacing
    response = 1.0 - mn.preemphasis * np.exp(-2j * np.pi * freqs / mn.preemphasis_rate)
    gains = ((response.real ** 2 + response.imag ** 2) * mn.power_scale
             * upsampler_power(mn, rate, freqs))
    folded = np.abs(np.mod(freqs + rate / 2, rate) - rate / 2)  # alias into 0..rate/2
    source = np.rint(folded / spacing).astype(int)
    n_bins = features.n_fft // 2 + 1
    out = np.zeros((features.n_mels, n_bins))
    weighted = grid * gains[None, :]
    keep = (gains > 0) & (source < n_bins)
    np.add.at(out.T, source[keep], weighted[:, keep].T)
    return out


class FrontEnd:
    """Frames -> model features: window, power spectrum, mel matrix, logarithm.

    Subclasses set ``window`` (``[n_fft]``), ``weights`` (the mel matrix,
    ``[n_mels, bins]``), ``mel_t`` (the part of it that is multiplied, transposed:
    ``[bins, k]`` for the first k bands, the others having no weight) and ``floor``
    (the value of digital silence), and implement :meth:`_finish`, the in-place
    logarithm shared by the batch and the streaming path.
    """

    kind = ""
    params: FeatureParams
    window: np.ndarray
    weights: np.ndarray
    mel_t: np.ndarray
    floor: float

    def _finish(self, mel: np.ndarray, out: np.ndarray) -> None:
        """``mel`` ``[n, k]`` (float64, may be overwritten) -> ``out`` ``[n, n_mels]`` float32."""
        raise NotImplementedError

    def frames_to_features(self, frames: np.ndarray) -> np.ndarray:
        """``frames``: ``[n, n_fft]`` float -> ``[n, n_mels]`` float32."""
        spectrum = np.fft.rfft(frames * self.window, n=self.params.n_fft, axis=-1)
        power = spectrum.real ** 2 + spectrum.imag ** 2
        mel = power @ self.mel_t
        out = np.empty((mel.shape[0], self.params.n_mels), dtype=np.float32)
        self._finish(mel, out)
        return out

    frames_to_logmel = frames_to_features  # the name from before there were two kinds

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """Whole signal -> ``[frames, n_mels]`` (``center=False`` framing)."""
        audio = np.asarray(audio, dtype=np.float64)
        n_frames = self.params.frames_for(audio.shape[-1])
        if n_frames == 0:
            return np.zeros((0, self.params.n_mels), dtype=np.float32)
        frames = np.lib.stride_tricks.sliding_window_view(
            audio, self.params.n_fft)[::self.params.hop_length][:n_frames]
        return self.frames_to_features(frames)

    def stream(self) -> "StreamingFrontEnd":
        """A new streaming instance of this front end (own buffers, same tables)."""
        return StreamingFrontEnd(self)


class LogMel(FrontEnd):
    """``logmel_db``: Hann, slaney mel, ``10 log10(max(mel, AMIN))``."""

    kind = "logmel_db"
    floor = 10.0 * float(np.log10(AMIN))

    def __init__(self, params: FeatureParams):
        self.params = params
        self.window = hann_window(params)
        self.weights = mel_filterbank(params)
        # Transposed once so each call is a single [frames, bins] @ [bins, mels] product.
        self.mel_t = np.ascontiguousarray(self.weights.T)

    def _finish(self, mel: np.ndarray, out: np.ndarray) -> None:
        np.maximum(mel, AMIN, out=mel)
        np.log10(mel, out=mel)
        np.multiply(mel, 10.0, out=out, casting="same_kind")


class MnLogMel(FrontEnd):
    """``mn_logmel``: the EfficientAT front end's equivalent at ``params.sample_rate``.

    Output is ``ln(mel + log_offset)``; the network's ``(x + 4.5) / 5`` is the
    model's ``normalization`` metadata, applied by the classifier like any other.
    """

    kind = "mn_logmel"

    def __init__(self, params: FeatureParams, mn: MnParams = MN04_PARAMS):
        mn.check_against(params)
        self.params = params
        self.mn = mn
        self.window = mn_window(params, mn)
        # pre-emphasis, power scale and the upsampler are per-bin factors, in the matrix
        self.weights = mn_filterbank(params, mn)
        # Bands that get no weight (above sample_rate / 2 without an upsampler image,
        # the last ones) are the floor for any input: only the first k are multiplied.
        used = np.flatnonzero(self.weights.any(axis=1))
        k = int(used[-1]) + 1 if used.size else 0
        self.mel_t = np.ascontiguousarray(self.weights[:k].T)
        self.floor = float(np.log(mn.log_offset))
        self._offset = float(mn.log_offset)
        self._k = k

    def _finish(self, mel: np.ndarray, out: np.ndarray) -> None:
        k = self._k
        np.add(mel, self._offset, out=mel)
        np.log(mel, out=out[:, :k], casting="same_kind")
        out[:, k:] = self.floor


def make_frontend(meta) -> FrontEnd:
    """The front end a model was trained on, from its metadata (a
    :class:`~detector.model.metadata.ModelMetadata` or anything with ``feature``,
    ``features`` and ``feature_params``). Batch: ``fe(audio)``; streaming: ``fe.stream()``.
    """
    return build_frontend(meta.feature, meta.features, getattr(meta, "feature_params", None))


def build_frontend(kind: str, features: FeatureParams,
                   feature_params: MnParams | None = None) -> FrontEnd:
    """:func:`make_frontend` from its parts; an unknown kind is a :class:`ConfigError`."""
    if kind == "logmel_db":
        return LogMel(features)
    if kind == "mn_logmel":
        return MnLogMel(features, feature_params if feature_params is not None else MN04_PARAMS)
    raise ConfigError(f"feature={kind!r} is not supported (expected one of {FEATURE_KINDS})")


def logmel(audio: np.ndarray, params: FeatureParams) -> np.ndarray:
    """Batch log-mel of a mono float signal in [-1, 1]: ``[frames, n_mels]`` float32 dB."""
    return LogMel(params)(audio)


class StreamingFrontEnd:
    """Incremental front end: push blocks of any size, get the new columns.

    Keeps at most ``n_fft - 1 + hop_length`` pending samples; each call
    transforms only the frames that became complete, so the cost per sample is
    constant and the output equals the batch front end on the concatenated input.

    The per-block work runs in preallocated buffers (pending samples, windowed
    frames, spectrum, power, mel) that grow only when a larger block arrives, so
    a steady stream of equal blocks allocates nothing but the returned columns.
    The arithmetic is the same as :meth:`FrontEnd.frames_to_features` (same
    operations in the same order and precision, the same ``_finish``), so the
    columns are bit-identical to it on the same frames.
    """

    def __init__(self, frontend: FrontEnd):
        params = frontend.params
        self.params = params
        self.frontend = frontend
        self._window = frontend.window
        self._mel_t = frontend.mel_t
        self._finish = frontend._finish
        self._n_bins = params.n_fft // 2 + 1
        self._empty = np.zeros((0, params.n_mels), dtype=np.float32)
        self._buf = np.zeros(0, dtype=np.float64)
        self._n = 0  # valid samples at the start of ``_buf``
        self._rows = 0  # frames the per-frame buffers hold
        self.columns_out = 0
        self._ensure(params.n_fft - 1 + params.hop_length + params.sample_rate // 10)

    @property
    def floor(self) -> float:
        """Feature value of digital silence."""
        return self.frontend.floor

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
            self._mel = np.empty((rows, self._mel_t.shape[1]), dtype=np.float64)

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
        out = np.empty((n_frames, p.n_mels), dtype=np.float32)
        self._finish(mel, out)
        consumed = n_frames * hop
        rest = end - consumed
        self._buf[:rest] = self._buf[consumed:end]
        self._n = rest
        self.columns_out += n_frames
        return out


class StreamingLogMel(StreamingFrontEnd):
    """Streaming ``logmel_db`` (:class:`StreamingFrontEnd` of :class:`LogMel`)."""

    def __init__(self, params: FeatureParams):
        super().__init__(LogMel(params))


def _rfft_out(frames: np.ndarray, n_fft: int, out: np.ndarray) -> np.ndarray:
    return np.fft.rfft(frames, n=n_fft, axis=-1, out=out)


def _rfft_alloc(frames: np.ndarray, n_fft: int, out: np.ndarray) -> np.ndarray:
    return np.fft.rfft(frames, n=n_fft, axis=-1)


try:  # numpy >= 2.0 writes the FFT into a preallocated array
    np.fft.rfft(np.zeros((1, 16)), n=16, axis=-1, out=np.empty((1, 9), dtype=np.complex128))
    _rfft = _rfft_out
except TypeError:  # pragma: no cover - numpy 1.x
    _rfft = _rfft_alloc
