"""Feature-domain augmentation of log-mel windows (dB), cheap enough to run per batch.

All mixing happens in the power domain: two log-mels ``a`` and ``b`` (dB) of
signals that are added give ``10*log10(10**(a/10) + 10**(b/10))`` up to the
cross term, which averages out over a mel band. A gain of ``g`` dB on the audio
is ``+g`` on every bin. So crops, gain, mixing with negatives at a chosen SNR,
placing a short event into a quiet background, and SpecAugment masks all work
on the cached whole-clip log-mels without touching audio again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.features import FeatureParams, LogMel


def power_sum_db(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """dB of the summed powers of two dB arrays (numerically stable)."""
    hi = np.maximum(a, b)
    return (hi + 10.0 * np.log10(1.0 + 10.0 ** ((np.minimum(a, b) - hi) / 10.0))).astype(np.float32)


def noise_bank(params: FeatureParams, frames: int, count: int = 48, seed: int = 1234,
               levels_dbfs: tuple[float, float] = (-85.0, -50.0)) -> np.ndarray:
    """``[count, frames, n_mels]`` log-mels of quiet noise (white, pink, brown, hum) as a
    microphone hears in a quiet room: the background for short events and the
    "nothing happening" examples of the background class."""
    rng = np.random.default_rng(seed)
    logmel = LogMel(params)
    n = params.samples_for(frames)
    out = np.empty((count, frames, params.n_mels), dtype=np.float32)
    freqs = np.fft.rfftfreq(n, 1.0 / params.sample_rate)
    for i in range(count):
        kind = i % 4
        spectrum = rng.normal(size=freqs.size) + 1j * rng.normal(size=freqs.size)
        if kind == 1:
            spectrum /= np.sqrt(np.maximum(freqs, 20.0))          # pink
        elif kind == 2:
            spectrum /= np.maximum(freqs, 20.0)                   # brown (traffic rumble)
        noise = np.fft.irfft(spectrum, n)
        if kind == 3:                                             # mains hum + hiss
            t = np.arange(n) / params.sample_rate
            hum = sum(np.sin(2 * np.pi * 50 * k * t + rng.uniform(0, 6.28)) / k for k in (1, 2, 3))
            noise = 0.2 * noise / noise.std() + hum
        level = rng.uniform(*levels_dbfs)
        noise *= 10 ** (level / 20) / (np.sqrt(np.mean(noise ** 2)) + 1e-12)
        out[i] = logmel(noise)
    return out


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the window augmentations."""

    gain_db: tuple[float, float] = (-12.0, 6.0)
    """Uniform gain range in dB."""
    mix_prob: float = 0.5
    """Probability of mixing a negative (background window) into a labelled window."""
    mix_snr_db: tuple[float, float] = (0.0, 20.0)
    """Signal-to-negative ratio range in dB (mean power over the window)."""
    specaugment_prob: float = 0.8
    """Probability of applying SpecAugment masks to a window."""
    freq_masks: int = 2
    """Number of frequency masks."""
    freq_mask_max: int = 8
    """Maximum mel bands per frequency mask."""
    time_masks: int = 2
    """Number of time masks."""
    time_mask_max: int = 12
    """Maximum frames per time mask."""
    warp_prob: float = 0.0
    """Probability of a time stretch and mel-band shift of a window (a log-mel approximation
    of time stretching and pitch shifting)."""
    stretch: tuple[float, float] = (0.85, 1.18)
    """Time-stretch factor range (>1 plays faster)."""
    band_shift: int = 2
    """Largest mel-band shift (either way), about a semitone or two per band at mid mels."""
    onset_prob: float = 0.0
    """Probability of an onset crop: the clip's first 0.3-0.9 of a window at the window's end,
    quiet background before it (what the daemon's window holds just after a sound starts)."""


def crop(features: np.ndarray, valid: int, frames: int, rng: np.random.Generator,
         background: np.ndarray, start: int | None = None) -> tuple[np.ndarray, int]:
    """A ``frames``-long window taken within the first ``valid`` rows of ``features``.

    Slices shorter than the window are placed at a random offset into
    ``background`` (power sum), as the daemon hears a short sound in a quiet
    room. Returns the window and the frame offset of the crop in the clip.
    """
    valid = max(1, min(valid, features.shape[0]))
    if valid >= frames:
        offset = int(rng.integers(0, valid - frames + 1)) if start is None else start
        return features[offset:offset + frames].copy(), offset
    window = background.copy()
    place = int(rng.integers(0, frames - valid + 1)) if start is None else start
    window[place:place + valid] = power_sum_db(window[place:place + valid], features[:valid])
    return window, 0


def onset_crop(features: np.ndarray, valid: int, frames: int, rng: np.random.Generator,
               background: np.ndarray, min_fraction: float = 0.3,
               max_fraction: float = 0.9) -> np.ndarray:
    """A window ending with the clip's first ``k`` frames (``k`` uniform in the fraction
    range of the window, at most ``valid``) over ``background``; before them only background."""
    valid = max(1, min(valid, features.shape[0]))
    lo = max(1, int(round(min_fraction * frames)))
    hi = max(lo, min(valid, int(round(max_fraction * frames))))
    k = int(rng.integers(lo, hi + 1)) if hi > lo else hi
    k = min(k, valid)
    window = background.copy()
    window[frames - k:] = power_sum_db(window[frames - k:], features[:k])
    return window


def mix_at_snr(window: np.ndarray, other: np.ndarray, snr_db: float) -> np.ndarray:
    """Add ``other`` to ``window`` with ``snr_db`` between their mean powers."""
    p_w = np.mean(10.0 ** (window / 10.0))
    p_o = np.mean(10.0 ** (other / 10.0))
    shift = 10.0 * np.log10(p_w / max(p_o, 1e-20)) - snr_db
    return power_sum_db(window, other + np.float32(shift))


def spec_augment(window: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Frequency and time masks filled with the window mean (in place, returned)."""
    fill = window.mean()
    frames, bands = window.shape
    for _ in range(cfg.freq_masks):
        width = int(rng.integers(0, cfg.freq_mask_max + 1))
        lo = int(rng.integers(0, bands - width + 1))
        window[:, lo:lo + width] = fill
    for _ in range(cfg.time_masks):
        width = int(rng.integers(0, cfg.time_mask_max + 1))
        lo = int(rng.integers(0, frames - width + 1))
        window[lo:lo + width, :] = fill
    return window


def warp(window: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Stretch ``window`` in time about its centre (linear interpolation, edges held) and
    shift it along the mel axis (vacated bands take the edge band)."""
    frames, bands = window.shape
    rate = float(rng.uniform(*cfg.stretch))
    centre = (frames - 1) / 2.0
    pos = np.clip(centre + (np.arange(frames) - centre) * rate, 0, frames - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, frames - 1)
    frac = (pos - lo).astype(np.float32)[:, None]
    out = window[lo] * (1 - frac) + window[hi] * frac
    shift = int(rng.integers(-cfg.band_shift, cfg.band_shift + 1))
    if shift > 0:
        out = np.concatenate([np.repeat(out[:, :1], shift, axis=1), out[:, :-shift]], axis=1)
    elif shift < 0:
        out = np.concatenate([out[:, -shift:], np.repeat(out[:, -1:], -shift, axis=1)], axis=1)
    return out.astype(np.float32)
