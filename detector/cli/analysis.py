"""``sound-detector analyze FILE_OR_DIR --out DIR``: plots and the classic feature table.

For every audio file this writes PNG plots (waveform, average spectrum,
spectrogram on a linear and a log frequency axis, mel spectrogram, MFCC,
chroma, spectral centroid / rolloff / bandwidth, zero-crossing rate, RMS) and a
one-row features CSV with the columns of the classic GTZAN feature table
(``filename, length, chroma_stft_mean, chroma_stft_var, rms_mean, …,
mfcc20_var, label``). A directory run also writes one combined ``features.csv``
and shows a progress bar; the label of a file is the name of its top-level
folder under the input directory (a dataset laid out one folder per class).

librosa and matplotlib are the ``[analysis]`` extra: they are imported inside
functions only, so ``import detector`` stays light on a Raspberry Pi.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from detector.errors import AudioError, ConfigError, DetectorError

logger = logging.getLogger(__name__)

EXTRA_HINT = "analysis needs the [analysis] extra: pip install 'sound-detector[analysis]'"

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".au")
"""File endings a directory scan picks up (whatever libsndfile can decode)."""

N_FFT = 2048
"""FFT size of the analysis STFT (librosa's default; 93 ms at 22.05 kHz)."""
HOP_LENGTH = 512
"""Hop of the analysis STFT in samples."""
SPECTRUM_N_FFT = 8192
"""FFT size of the averaged spectrum plot (fine frequency resolution)."""
N_MFCC = 20
N_MELS = 128
PLOT_NAMES = ("overview", "waveform", "spectrum", "spectrogram_linear", "spectrogram_log",
              "mel_spectrogram", "mfcc", "chroma", "spectral_shape", "zcr_rms")
"""PNG files written per audio file (``<name>.png``)."""


def feature_columns(n_mfcc: int = N_MFCC) -> list[str]:
    """Column order of the features CSV (the classic GTZAN table, plus ``sample_rate``)."""
    columns = ["filename", "length", "sample_rate"]
    for name in ("chroma_stft", "rms", "spectral_centroid", "spectral_bandwidth", "rolloff",
                 "zero_crossing_rate", "harmony", "perceptr"):
        columns += [f"{name}_mean", f"{name}_var"]
    columns.append("tempo")
    for i in range(1, n_mfcc + 1):
        columns += [f"mfcc{i}_mean", f"mfcc{i}_var"]
    columns.append("label")
    return columns


NUMERIC_COLUMNS = [c for c in feature_columns() if c not in ("filename", "label")]
"""The numeric feature columns (what a classifier trains on, minus bookkeeping)."""


def require_extra():
    """Import librosa and matplotlib or raise the one-line install hint."""
    try:
        import librosa  # noqa: F401
        import matplotlib  # noqa: F401
    except ImportError:
        raise DetectorError(EXTRA_HINT) from None
    return librosa


def load_audio(path: str | Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Read ``path`` as mono float32; resample to ``sample_rate`` (None keeps the file's rate).

    Raises :class:`AudioError` with one line for a missing, unreadable or empty
    file. NaN/inf samples are replaced by 0 with a warning.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path} does not exist; pass an audio file or a directory")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # LibsndfileError, RuntimeError, TypeError for odd headers
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AudioError(f"{path} is not readable audio ({reason}); "
                         "convert it to WAV/FLAC/OGG or remove it") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path} is empty (0 samples); record or convert it again")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(mono)):
        logger.warning("%s contains NaN/inf samples; replaced by 0", path)
        mono = np.nan_to_num(mono, nan=0.0, posinf=0.0, neginf=0.0)
    if sample_rate is not None and rate != sample_rate:
        import soxr

        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
        rate = sample_rate
    return np.ascontiguousarray(mono, dtype=np.float32), int(rate)


def average_spectrum(y: np.ndarray, sr: int, n_fft: int = SPECTRUM_N_FFT
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Average amplitude spectrum in dBFS: ``(frequencies_hz, level_db)``.

    Hann-windowed frames (50 % overlap) are averaged in power and scaled so a
    full-scale sine reads 0 dBFS at its frequency (a sine of amplitude ``a``
    reads ``20·log10(a)``, within the window's scalloping loss of ≤ 1.4 dB).
    Signals shorter than ``n_fft`` use one zero-padded frame.
    """
    y = np.asarray(y, dtype=np.float64)
    n_fft = int(n_fft)
    if y.size < n_fft:
        win_len = max(16, int(2 ** math.floor(math.log2(max(y.size, 16)))))
        frames = np.zeros((1, win_len))
        frames[0, :min(win_len, y.size)] = y[:win_len]
        n_fft = win_len
    else:
        hop = n_fft // 2
        frames = np.lib.stride_tricks.sliding_window_view(y, n_fft)[::hop]
    window = np.hanning(n_fft + 1)[:-1]
    spectra = np.fft.rfft(frames * window, axis=-1)
    power = np.mean(np.abs(spectra) ** 2, axis=0)
    amplitude = 2.0 * np.sqrt(power) / window.sum()
    freqs = np.fft.rfftfreq(n_fft, d=1.0 / sr)
    return freqs, 20.0 * np.log10(np.maximum(amplitude, 1e-10))


@dataclass
class Analysis:
    """Everything computed for one signal; plots and the features row read from it."""

    y: np.ndarray
    sr: int
    stft_mag: np.ndarray
    """|STFT| ``[1 + n_fft/2, frames]``."""
    mel_db: np.ndarray
    mfcc: np.ndarray
    chroma: np.ndarray
    rms: np.ndarray
    centroid: np.ndarray
    bandwidth: np.ndarray
    rolloff: np.ndarray
    zcr: np.ndarray
    harmonic: np.ndarray
    percussive: np.ndarray
    tempo: float
    spectrum_freqs: np.ndarray
    spectrum_db: np.ndarray

    @property
    def frame_times(self) -> np.ndarray:
        import librosa

        return librosa.frames_to_time(np.arange(self.stft_mag.shape[1]), sr=self.sr,
                                      hop_length=HOP_LENGTH)

    @property
    def duration(self) -> float:
        return self.y.size / self.sr


def analyze_signal(y: np.ndarray, sr: int, extras: bool = True) -> Analysis:
    """Compute every analysis feature of mono ``y`` at ``sr`` Hz (librosa conventions).

    ``extras=False`` skips the harmonic/percussive separation and the tempo
    estimate (the slow part); those columns are then 0.
    """
    librosa = require_extra()
    y = np.asarray(y, dtype=np.float32)
    if y.size == 0:
        raise AudioError("signal is empty (0 samples)")
    analysed = y if y.size >= N_FFT else np.pad(y, (0, N_FFT - y.size))
    with warnings.catch_warnings():
        # librosa warns about n_fft vs. very short signals and silent chroma frames;
        # the padding above and the finite checks below cover both.
        warnings.simplefilter("ignore", UserWarning)
        stft_mag = np.abs(librosa.stft(analysed, n_fft=N_FFT, hop_length=HOP_LENGTH))
        power = stft_mag ** 2
        mel = librosa.feature.melspectrogram(S=power, sr=sr, n_mels=N_MELS)
        mel_db = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)
        mfcc = librosa.feature.mfcc(S=mel_db, n_mfcc=N_MFCC)
        chroma = librosa.feature.chroma_stft(S=power, sr=sr, n_fft=N_FFT)
        # From the samples, not from S: librosa's rms(S=...) keeps the Hann window's
        # energy loss (a 0.5 sine would read 0.22 instead of 0.354).
        rms = librosa.feature.rms(y=analysed, frame_length=N_FFT, hop_length=HOP_LENGTH)[0]
        centroid = librosa.feature.spectral_centroid(S=stft_mag, sr=sr, n_fft=N_FFT)[0]
        bandwidth = librosa.feature.spectral_bandwidth(S=stft_mag, sr=sr, n_fft=N_FFT)[0]
        rolloff = librosa.feature.spectral_rolloff(S=stft_mag, sr=sr, n_fft=N_FFT)[0]
        zcr = librosa.feature.zero_crossing_rate(analysed, frame_length=N_FFT,
                                                 hop_length=HOP_LENGTH)[0]
        if extras:
            harmonic, percussive = librosa.effects.hpss(analysed)
            onset_env = librosa.onset.onset_strength(S=mel_db, sr=sr)
            tempo = float(np.atleast_1d(librosa.feature.tempo(onset_envelope=onset_env,
                                                               sr=sr))[0])
        else:
            harmonic = percussive = np.zeros(1, dtype=np.float32)
            tempo = 0.0
    freqs, level_db = average_spectrum(y, sr)
    chroma = np.nan_to_num(chroma)
    return Analysis(y=y, sr=sr, stft_mag=stft_mag, mel_db=mel_db, mfcc=mfcc, chroma=chroma,
                    rms=rms, centroid=centroid, bandwidth=bandwidth, rolloff=rolloff, zcr=zcr,
                    harmonic=harmonic, percussive=percussive,
                    tempo=tempo if math.isfinite(tempo) else 0.0,
                    spectrum_freqs=freqs, spectrum_db=level_db)


def feature_row(analysis: Analysis, filename: str, label: str = "") -> dict:
    """One row of the features table (column order: :func:`feature_columns`)."""
    row: dict = {"filename": filename, "length": int(analysis.y.size),
                 "sample_rate": int(analysis.sr)}
    series = {
        "chroma_stft": analysis.chroma, "rms": analysis.rms,
        "spectral_centroid": analysis.centroid, "spectral_bandwidth": analysis.bandwidth,
        "rolloff": analysis.rolloff, "zero_crossing_rate": analysis.zcr,
        "harmony": analysis.harmonic, "perceptr": analysis.percussive,
    }
    for name, values in series.items():
        row[f"{name}_mean"] = float(np.mean(values))
        row[f"{name}_var"] = float(np.var(values))
    row["tempo"] = float(analysis.tempo)
    for i, coefficients in enumerate(analysis.mfcc, start=1):
        row[f"mfcc{i}_mean"] = float(np.mean(coefficients))
        row[f"mfcc{i}_var"] = float(np.var(coefficients))
    row["label"] = label
    return row


def features_of(y: np.ndarray, sr: int, extras: bool = True) -> np.ndarray:
    """The numeric feature vector (:data:`NUMERIC_COLUMNS` order) of one signal."""
    row = feature_row(analyze_signal(y, sr, extras=extras), "")
    return np.array([row[c] for c in NUMERIC_COLUMNS], dtype=np.float64)


# ----------------------------------------------------------------------------- plots

def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _plot_waveform(ax, a: Analysis) -> None:
    t = np.arange(a.y.size) / a.sr
    step = max(1, a.y.size // 3000)  # a line with > 3k points only blurs and slows
    if step > 1:
        # Keep the envelope: min and max of each bucket, so peaks are not decimated away.
        n = (a.y.size // step) * step
        buckets = a.y[:n].reshape(-1, step)
        tb = t[:n:step]
        ax.fill_between(tb, buckets.min(axis=1), buckets.max(axis=1), color="tab:blue",
                        linewidth=0)
    else:
        ax.plot(t, a.y, color="tab:blue", linewidth=0.6)
    peak = float(np.max(np.abs(a.y))) if a.y.size else 0.0
    ax.set_xlim(0, a.duration)
    ax.set_ylim(-1.05, 1.05)
    ax.set_title(f"Waveform (peak {20 * math.log10(max(peak, 1e-10)):.1f} dBFS)")
    ax.set_xlabel("Time (s)")
    ax.set_ylabel("Amplitude (full scale = 1)")
    ax.grid(alpha=0.3)


def _plot_spectrum(ax, a: Analysis) -> None:
    freqs, level = a.spectrum_freqs, a.spectrum_db
    ax.plot(freqs, level, color="tab:purple", linewidth=0.8)
    peak = int(np.argmax(level[1:]) + 1) if level.size > 1 else 0
    ax.axvline(freqs[peak], color="0.5", linestyle=":", linewidth=0.8)
    ax.set_title(f"Average spectrum (peak {level[peak]:.1f} dBFS at {freqs[peak]:.0f} Hz)")
    ax.set_xlabel("Frequency (Hz)")
    ax.set_ylabel("Magnitude (dBFS)")
    ax.set_xlim(0, a.sr / 2)
    top = max(float(level.max()), -100.0)
    ax.set_ylim(max(float(level.min()), top - 110) - 5, top + 5)
    ax.grid(alpha=0.3)


def _specshow(fig, ax, data, a: Analysis, y_axis: str, title: str, unit: str, **kwargs):
    import librosa.display

    image = librosa.display.specshow(data, sr=a.sr, hop_length=HOP_LENGTH, x_axis="time",
                                     y_axis=y_axis, ax=ax, **kwargs)
    ax.set_title(title)
    ax.set_xlabel("Time (s)")
    fig.colorbar(image, ax=ax, label=unit, format="%+.0f" if "dB" in unit else None)
    return image


def _stft_db(a: Analysis) -> np.ndarray:
    # Amplitude in dBFS: a full-scale sine peaks near 0 dB (|X| * 2 / sum(hann)).
    scale = 2.0 / (N_FFT / 2.0)
    return 20.0 * np.log10(np.maximum(a.stft_mag * scale, 1e-5))


def _plot_spectrogram(fig, ax, a: Analysis, log_axis: bool) -> None:
    db = _stft_db(a)
    vmax = max(float(db.max()), -80.0)
    _specshow(fig, ax, db, a, "log" if log_axis else "hz",
              f"Spectrogram ({'log' if log_axis else 'linear'} frequency axis)",
              "Level (dBFS)", vmin=vmax - 90, vmax=vmax, cmap="magma")
    ax.set_ylabel("Frequency (Hz)")


def _plot_mel(fig, ax, a: Analysis) -> None:
    vmax = max(float(a.mel_db.max()), -80.0)
    _specshow(fig, ax, a.mel_db, a, "mel", f"Mel spectrogram ({N_MELS} bands, power dB)",
              "Power (dB re 1)", vmin=vmax - 90, vmax=vmax, cmap="magma")
    ax.set_ylabel("Frequency (Hz, mel scale)")


def _plot_mfcc(fig, ax, a: Analysis) -> None:
    import librosa.display

    # MFCC 1 (overall log energy) dwarfs the others; scale colours by 2..n so their
    # structure shows, and let coefficient 1 saturate.
    rest = a.mfcc[1:] if a.mfcc.shape[0] > 1 else a.mfcc
    limit = max(float(np.percentile(np.abs(rest), 99)), 1e-3)
    image = librosa.display.specshow(a.mfcc, sr=a.sr, hop_length=HOP_LENGTH, x_axis="time",
                                     ax=ax, cmap="coolwarm", vmin=-limit, vmax=limit)
    ax.set_title(f"MFCC 1–{a.mfcc.shape[0]} (colour range set by 2–{a.mfcc.shape[0]})")
    ax.set_xlabel("Time (s)")
    ax.set_ylabel("MFCC coefficient")
    n = a.mfcc.shape[0]
    ax.set_yticks(np.arange(0, n, 4) + 0.5, [str(i) for i in range(1, n + 1, 4)])
    fig.colorbar(image, ax=ax, label="Coefficient value")


def _plot_chroma(fig, ax, a: Analysis) -> None:
    _specshow(fig, ax, a.chroma, a, "chroma", "Chromagram (energy per pitch class)",
              "Relative energy (0–1)", vmin=0, vmax=1, cmap="viridis")
    ax.set_ylabel("Pitch class")


def _plot_spectral_shape(ax, a: Analysis) -> None:
    t = a.frame_times
    ax.plot(t, a.centroid, label="Spectral centroid", color="tab:red")
    ax.fill_between(t, np.maximum(a.centroid - a.bandwidth, 0), a.centroid + a.bandwidth,
                    color="tab:red", alpha=0.15, label="Centroid ± bandwidth")
    ax.plot(t, a.rolloff, label="Roll-off (85 % energy)", color="tab:green")
    ax.set_xlim(0, max(a.duration, float(t[-1]) if t.size else 0.0))
    ax.set_ylim(0, a.sr / 2)
    ax.set_title("Spectral centroid, bandwidth and roll-off")
    ax.set_xlabel("Time (s)")
    ax.set_ylabel("Frequency (Hz)")
    ax.legend(loc="upper right", fontsize="small")
    ax.grid(alpha=0.3)


def _plot_zcr_rms(ax, a: Analysis) -> None:
    t = a.frame_times
    rms_db = 20.0 * np.log10(np.maximum(a.rms, 1e-5))
    ax.plot(t, rms_db, color="tab:blue", label="RMS level")
    ax.set_ylabel("RMS level (dBFS)", color="tab:blue")
    ax.set_ylim(max(float(rms_db.min()), -100.0) - 3, max(float(rms_db.max()), -97.0) + 3)
    ax.set_xlabel("Time (s)")
    ax.set_title("RMS level and zero-crossing rate")
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    twin.plot(t, a.zcr, color="tab:orange", label="Zero-crossing rate")
    twin.set_ylabel("Zero crossings per sample", color="tab:orange")
    twin.set_ylim(0, max(0.05, float(a.zcr.max()) * 1.1))
    ax.set_xlim(0, max(a.duration, float(t[-1]) if t.size else 0.0))
    lines = ax.get_lines() + twin.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="upper right", fontsize="small")


def _draw(name: str, fig, ax, a: Analysis) -> None:
    if name == "waveform":
        _plot_waveform(ax, a)
    elif name == "spectrum":
        _plot_spectrum(ax, a)
    elif name == "spectrogram_linear":
        _plot_spectrogram(fig, ax, a, log_axis=False)
    elif name == "spectrogram_log":
        _plot_spectrogram(fig, ax, a, log_axis=True)
    elif name == "mel_spectrogram":
        _plot_mel(fig, ax, a)
    elif name == "mfcc":
        _plot_mfcc(fig, ax, a)
    elif name == "chroma":
        _plot_chroma(fig, ax, a)
    elif name == "spectral_shape":
        _plot_spectral_shape(ax, a)
    elif name == "zcr_rms":
        _plot_zcr_rms(ax, a)
    else:  # pragma: no cover - PLOT_NAMES and this switch are kept in step
        raise ValueError(name)


def write_plots(a: Analysis, out_dir: Path, title: str, which: str = "all") -> list[Path]:
    """Write the PNGs for one analysed signal; ``which`` is ``all``, ``overview`` or ``none``."""
    if which == "none":
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    panels = [n for n in PLOT_NAMES if n != "overview"]
    fig = _figure(16, 20)
    axes = fig.subplots(5, 2).ravel()
    for name, ax in zip(panels, axes):
        _draw(name, fig, ax, a)
    axes[-1].axis("off")
    axes[-1].text(0.0, 0.95, _summary_text(a), va="top", ha="left", family="monospace",
                  fontsize=10, transform=axes[-1].transAxes)
    fig.suptitle(f"{title} — {a.duration:.2f} s at {a.sr} Hz", fontsize=14)
    path = out_dir / "overview.png"
    fig.savefig(path)
    written.append(path)
    if which == "all":
        for name in panels:
            fig = _figure(10, 4)
            ax = fig.subplots()
            _draw(name, fig, ax, a)
            fig.suptitle(title, fontsize=10)
            path = out_dir / f"{name}.png"
            fig.savefig(path)
            written.append(path)
    return written


def _summary_text(a: Analysis) -> str:
    row = feature_row(a, "")
    lines = [
        "Summary (mean over frames)",
        f"duration            {a.duration:8.2f} s",
        f"RMS level           {20 * math.log10(max(row['rms_mean'], 1e-10)):8.1f} dBFS",
        f"spectral centroid   {row['spectral_centroid_mean']:8.0f} Hz",
        f"spectral bandwidth  {row['spectral_bandwidth_mean']:8.0f} Hz",
        f"roll-off (85 %)     {row['rolloff_mean']:8.0f} Hz",
        f"zero-crossing rate  {row['zero_crossing_rate_mean']:8.4f} /sample",
        f"tempo estimate      {row['tempo']:8.1f} BPM",
        f"spectrum peak       {a.spectrum_freqs[int(np.argmax(a.spectrum_db))]:8.0f} Hz",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``sound-detector analyze`` (the CLI calls this)."""
    parser.add_argument("input", metavar="FILE_OR_DIR",
                        help="audio file, or directory scanned recursively for audio files")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output directory for PNGs and features CSVs")
    parser.add_argument("--sample-rate", type=int, default=None, metavar="HZ",
                        help="resample to HZ before analysis (default: each file's own "
                             "rate; use one rate, e.g. 22050, for comparable MFCC columns)")
    parser.add_argument("--plots", choices=("all", "overview", "none"), default="all",
                        help="PNGs per file: overview + one per plot (all), the overview "
                             "only, or none (features CSV only). Default: all")
    parser.add_argument("--no-extras", action="store_true",
                        help="skip harmonic/percussive separation and tempo (faster; "
                             "those columns are written as 0)")


def find_audio_files(root: Path) -> list[Path]:
    """Audio files under ``root`` (recursive, sorted, hidden entries skipped)."""
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _write_csv(path: Path, rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=feature_columns())
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.8g}" if isinstance(v, float) else v)
                             for k, v in row.items()})


def analyze_file(path: Path, out_dir: Path, name: str, label: str = "",
                 sample_rate: int | None = None, plots: str = "all",
                 extras: bool = True) -> dict:
    """Analyse one file: PNGs and ``features.csv`` into ``out_dir``; return the row."""
    y, sr = load_audio(path, sample_rate)
    if y.size < 64:
        raise AudioError(f"{path} has only {y.size} samples; at least 64 are needed")
    a = analyze_signal(y, sr, extras=extras)
    row = feature_row(a, name, label)
    bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:  # would poison every table built from it; say which feature broke
        raise AudioError(f"{path} gives non-finite features {bad[:3]}")
    write_plots(a, out_dir, name, plots)
    _write_csv(out_dir / "features.csv", [row])
    return row


def run(args: argparse.Namespace) -> int:
    """Run ``analyze``: 0 = all files done, 1 = some files failed (warned), 2 = bad input."""
    require_extra()
    source = Path(args.input)
    out = Path(args.out)
    if args.sample_rate is not None and not 1000 <= args.sample_rate <= 384000:
        raise ConfigError(f"--sample-rate={args.sample_rate} must be in 1000..384000 Hz")
    if not source.exists():
        raise ConfigError(f"{source} does not exist; pass an audio file or a directory")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a directory")
    extras = not getattr(args, "no_extras", False)
    if source.is_file():
        row = analyze_file(source, out / source.stem, source.name, "", args.sample_rate,
                           args.plots, extras)
        print(f"{source}: {row['length']} samples at {row['sample_rate']} Hz -> "
              f"{out / source.stem}")
        return 0

    files = find_audio_files(source)
    if not files:
        raise ConfigError(f"{source} holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    from tqdm import tqdm

    rows, failed = [], 0
    for path in tqdm(files, desc="analyze", unit="file"):
        rel = path.relative_to(source)
        label = rel.parts[0] if len(rel.parts) > 1 else ""
        try:
            rows.append(analyze_file(path, out / rel.with_suffix(""), rel.as_posix(), label,
                                     args.sample_rate, args.plots, extras))
        except AudioError as exc:
            failed += 1
            tqdm.write(f"warning: skipped {exc}")
    combined = out / "features.csv"
    _write_csv(combined, rows)
    print(f"{len(rows)} of {len(files)} files analysed -> {combined}"
          + (f"; {failed} failed (see warnings)" if failed else ""))
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m detector.cli.analysis`` (the same as ``sound-detector analyze``)."""
    import sys

    parser = argparse.ArgumentParser(prog="sound-detector analyze",
                                     description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except DetectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
