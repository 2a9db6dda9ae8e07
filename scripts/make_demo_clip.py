#!/usr/bin/env python3
"""Generate the bundled demo clip, detector/data/demo.flac: a synthetic street scene.

The dataset audio the model is trained on (UrbanSound8K) is CC BY-NC and must not
ship in the package, so the demo is synthesised, deterministically (seeded):

  0.0 - 12.0 s  street background: brown-ish traffic rumble with slow swells,
                a distant car passing, faint broadband hiss
  1.0 -  6.0 s  an emergency-vehicle siren passing by: a "wail" sweep turning into
                a faster "yelp", horn-loudspeaker harmonics, a little vibrato, a
                Doppler shift (up while approaching, down after passing), distance
                level change and a short early-reflection tail
  7.0 -  9.2 s  a car horn: two-tone (about 415 + 520 Hz) with a rich harmonic
                spectrum, a short toot and a sustained honk
  9.2 - 12.0 s  quiet street again

Mono, 16 kHz, 16-bit FLAC. Usage::

    python scripts/make_demo_clip.py                    # writes detector/data/demo.flac
    python scripts/make_demo_clip.py -o demo.flac --png demo.png   # + spectrogram plot
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 16000
DURATION = 12.0
SPEED_OF_SOUND = 343.0
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "detector" / "data" / "demo.flac"


def db(x: float) -> float:
    return 10 ** (x / 20)


def fft_filter(x: np.ndarray, gain_of_hz) -> np.ndarray:
    """Zero-phase filtering by a gain curve in the frequency domain."""
    spec = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1 / RATE)
    return np.fft.irfft(spec * gain_of_hz(freqs), n=len(x))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)) + 1e-20))


def background(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n) / RATE
    # Traffic rumble: noise with a ~1/f^2 slope above 60 Hz, engine-ish energy at 40-200 Hz.
    white = rng.standard_normal(n)
    rumble = fft_filter(white, lambda f: 1.0 / np.maximum(f, 60.0) * (f > 25))
    rumble /= rms(rumble)
    swell = 0.7 + 0.3 * np.sin(2 * np.pi * t / 7.3 + 1.0) * np.sin(2 * np.pi * t / 3.1)
    # A distant car passing at ~10 s: band-limited tyre noise swelling and fading.
    tyre = fft_filter(rng.standard_normal(n),
                      lambda f: np.exp(-0.5 * ((f - 700.0) / 500.0) ** 2))
    tyre /= rms(tyre)
    passing = np.exp(-0.5 * ((t - 10.2) / 0.9) ** 2)
    # Faint broadband hiss (wind, far traffic), tilted down by 3 dB/octave.
    hiss = fft_filter(rng.standard_normal(n), lambda f: 1.0 / np.sqrt(np.maximum(f, 200.0)))
    hiss /= rms(hiss)
    return (db(-36) * rumble * swell + db(-42) * tyre * passing + db(-52) * hiss)


def siren(rng: np.random.Generator, n: int, start: float, end: float) -> np.ndarray:
    """A passing siren: wail, then yelp; Doppler and distance from a straight pass."""
    t = np.arange(n) / RATE
    active = (t >= start) & (t < end)
    ts = np.clip(t - start, 0, None)
    length = end - start
    # Wail: slow rise/fall 700 <-> 1500 Hz (rise faster than fall); yelp after 2.8 s.
    wail_phase = (ts / 2.6) % 1.0
    wail = np.where(wail_phase < 0.4, wail_phase / 0.4, 1 - (wail_phase - 0.4) / 0.6)
    wail = 700 + 800 * np.sin(0.5 * np.pi * wail)
    yelp_phase = (ts / 0.32) % 1.0
    yelp = 750 + 700 * np.sin(0.5 * np.pi * np.where(yelp_phase < 0.5, 2 * yelp_phase,
                                                     2 - 2 * yelp_phase))
    blend = np.clip((ts - 2.6) / 0.25, 0, 1)
    f0 = (1 - blend) * wail + blend * yelp
    f0 *= 1 + 0.004 * np.sin(2 * np.pi * 5.5 * ts)  # slight vibrato / mechanical wobble
    # Vehicle at 14 m/s on a straight road, closest approach 12 m at 45 % of the event.
    speed, closest, t_pass = 14.0, 12.0, start + 0.45 * length
    x = speed * (t - t_pass)
    distance = np.sqrt(x ** 2 + closest ** 2)
    radial_speed = speed * x / distance  # > 0 when receding
    doppler = SPEED_OF_SOUND / (SPEED_OF_SOUND + radial_speed)
    phase = 2 * np.pi * np.cumsum(f0 * doppler) / RATE
    # Horn-loudspeaker timbre: strong odd harmonics, weaker even ones, rolled off.
    wave = np.zeros(n)
    for k in range(1, 9):
        amp = (1.0 if k % 2 else 0.45) / k ** 0.9
        wave += amp * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    wave = np.tanh(1.6 * wave) / np.tanh(1.6)  # loudspeaker driven hard
    level = closest / distance  # 1/r, 0 dB at closest approach
    fade = np.clip(ts / 0.15, 0, 1) * np.clip((end - t) / 0.3, 0, 1)
    dry = wave * level * fade * active
    # Early reflections from building fronts + a short diffuse tail.
    wet = dry.copy()
    for delay_ms, gain in [(11, 0.35), (23, 0.25), (37, 0.18), (53, 0.12)]:
        d = int(delay_ms * RATE / 1000)
        wet[d:] += gain * dry[:-d]
    tail = rng.standard_normal(int(0.25 * RATE)) * np.exp(-np.arange(int(0.25 * RATE)) / (0.06 * RATE))
    wet += 0.02 * np.convolve(dry, tail)[:n]
    # Air absorption: highs fade with distance (a fixed gentle low-pass is enough here).
    wet = fft_filter(wet, lambda f: 1.0 / np.sqrt(1 + (f / 4500.0) ** 4))
    return wet / np.max(np.abs(wet))


def car_horn(rng: np.random.Generator, n: int, honks: list[tuple[float, float]]) -> np.ndarray:
    """Two-tone electromagnetic car horn (about 410 + 510 Hz).

    Such a horn is a steel diaphragm hammered by an interrupter at the fundamental:
    the sound is a train of sharp pulses (a dense, buzzy harmonic series) shaped by
    the resonances of the diaphragm and the horn bell (roughly 1.1, 2.4 and 3.6 kHz),
    with a small pitch rise as the diaphragm gets going, cycle-to-cycle jitter and
    some mechanical rattle.
    """
    t = np.arange(n) / RATE
    envelope = np.zeros(n)
    glide = np.ones(n)
    for on, off in honks:
        inside = (t >= on) & (t < off)
        attack = np.clip((t - on) / 0.012, 0, 1)
        release = np.clip((off - t) / 0.035, 0, 1)
        envelope = np.maximum(envelope, attack * release * inside)
        glide = np.where(inside, 1 - 0.06 * np.exp(-np.clip(t - on, 0, None) / 0.03), glide)
    out = np.zeros(n)
    for f_base, gain in ((410.0, 1.0), (510.0, 0.8)):
        jitter = 1 + 0.003 * fft_filter(rng.standard_normal(n), lambda f: (f < 40) * 1.0)
        f = f_base * glide * jitter
        phase = np.cumsum(f) / RATE  # in cycles
        # Pulse train: a narrow raised-cosine pulse once per cycle (all harmonics, ~flat).
        frac = phase % 1.0
        pulses = np.where(frac < 0.08, 0.5 - 0.5 * np.cos(2 * np.pi * frac / 0.08), 0.0)
        pulses -= pulses.mean()
        out += gain * pulses
    def resonances(f):
        g = 0.15 + 0.0 * f
        for fc, bw, a in ((1100.0, 250.0, 0.8), (2400.0, 350.0, 1.0), (3600.0, 500.0, 0.6)):
            g = g + a / (1 + ((f - fc) / (bw / 2)) ** 2)
        return g * (f > 250) / np.sqrt(1 + (f / 6000.0) ** 8)
    out = fft_filter(out, resonances)
    rattle = fft_filter(rng.standard_normal(n), lambda f: np.exp(-0.5 * ((f - 3000) / 1200) ** 2))
    out = out / rms(out) + 0.08 * rattle / rms(rattle)
    wet = out * envelope
    for delay_ms, gain in [(9, 0.3), (19, 0.2), (31, 0.12)]:
        d = int(delay_ms * RATE / 1000)
        wet[d:] += gain * wet[:-d].copy()
    return wet / np.max(np.abs(wet))


def make_scene(seed: int = 2026) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(DURATION * RATE)
    scene = background(rng, n)
    scene += db(-9) * siren(rng, n, start=1.0, end=6.0)
    scene += db(-12) * car_horn(rng, n, honks=[(7.0, 7.35), (7.6, 9.2)])
    peak = np.max(np.abs(scene))
    if peak > db(-1):
        scene *= db(-1) / peak
    return scene.astype(np.float32)


def save_spectrogram(audio: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from detector.audio.features import FeatureParams, logmel

    mel = logmel(audio, FeatureParams())
    fig, ax = plt.subplots(figsize=(10, 3.2), dpi=110)
    im = ax.imshow(mel.T, origin="lower", aspect="auto", cmap="magma",
                   extent=[0, len(audio) / RATE, 0, mel.shape[1]], vmin=-100, vmax=mel.max())
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mel band (50 Hz - 8 kHz)")
    ax.set_title("demo.flac (synthetic): street, siren passing 1-6 s, car horn 7-9.2 s")
    fig.colorbar(im, ax=ax, label="dB")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--png", type=Path, help="also save a log-mel spectrogram plot")
    args = parser.parse_args(argv)
    audio = make_scene(args.seed)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    sf.write(args.output, audio, RATE, format="FLAC", subtype="PCM_16")
    size = args.output.stat().st_size
    print(f"wrote {args.output}: {len(audio) / RATE:.1f} s, {RATE} Hz mono, {size / 1000:.0f} kB")
    if args.png:
        save_spectrogram(audio, args.png)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
