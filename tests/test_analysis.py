"""`sound-detector analyze`: plots and the GTZAN-style features table on generated audio."""

from __future__ import annotations

import csv
import math
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("librosa")
pytest.importorskip("matplotlib")

from detector.cli import analysis  # noqa: E402
from detector.errors import AudioError, DetectorError  # noqa: E402

SR = 16000


def tone(freq=1000.0, amplitude=0.5, seconds=2.0, sr=SR):
    t = np.arange(int(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def read_rows(path):
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, list(reader)


def assert_png(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 400
    assert pixels[..., :3].std() > 0.05, f"{path} is blank"


@pytest.mark.parametrize("freq", [440.0, 1000.0, 3150.0])
def test_tone_spectrum_peaks_at_its_frequency_and_level(freq):
    freqs, level = analysis.average_spectrum(tone(freq, 0.5), SR)
    peak = int(np.argmax(level))
    assert abs(freqs[peak] - freq) <= SR / analysis.SPECTRUM_N_FFT
    # 0.5 full scale = -6.02 dBFS, minus at most 1.42 dB Hann scalloping loss.
    assert -6.02 - 1.5 <= level[peak] <= -6.02 + 0.1
    far = np.abs(freqs - freq) > 200
    assert level[far].max() < level[peak] - 60


def test_short_signal_spectrum_does_not_fail():
    freqs, level = analysis.average_spectrum(tone(2000, 0.5, seconds=0.01), SR)
    assert np.all(np.isfinite(level))
    assert abs(freqs[np.argmax(level)] - 2000) < SR / 64


def test_features_of_a_tone_make_physical_sense():
    a = analysis.analyze_signal(tone(1000.0, 0.5), SR)
    row = analysis.feature_row(a, "t.wav", "x")
    assert list(row) == analysis.feature_columns()
    assert abs(row["spectral_centroid_mean"] - 1000) < 60
    assert abs(row["rms_mean"] - 0.5 / math.sqrt(2)) < 0.02
    # A sine crosses zero twice per period: 2000 / 16000 per sample.
    assert abs(row["zero_crossing_rate_mean"] - 2000 / SR) < 0.01
    # 1 kHz is closest to pitch class B (987.8 Hz): chroma row 11 dominates.
    assert int(np.argmax(a.chroma.mean(axis=1))) == 11
    assert all(math.isfinite(row[c]) for c in analysis.NUMERIC_COLUMNS)


def test_silence_and_tiny_files_give_finite_features():
    for y in (np.zeros(SR, np.float32), tone(500, 0.3, seconds=0.02)):
        row = analysis.feature_row(analysis.analyze_signal(y, SR), "s")
        assert all(math.isfinite(row[c]) for c in analysis.NUMERIC_COLUMNS), row


def test_single_file_writes_csv_and_valid_pngs(tmp_path):
    src = tmp_path / "tone.wav"
    sf.write(src, np.stack([tone(1000), tone(1000)], axis=1), SR)  # stereo input
    code = analysis.main([str(src), "--out", str(tmp_path / "out")])
    assert code == 0
    out = tmp_path / "out" / "tone"
    for name in analysis.PLOT_NAMES:
        assert_png(out / f"{name}.png")
    columns, rows = read_rows(out / "features.csv")
    assert columns == analysis.feature_columns()
    assert len(rows) == 1 and rows[0]["filename"] == "tone.wav"
    assert int(rows[0]["length"]) == 2 * SR and int(rows[0]["sample_rate"]) == SR
    for c in analysis.NUMERIC_COLUMNS:
        assert math.isfinite(float(rows[0][c])), c


def test_resampling_option(tmp_path):
    src = tmp_path / "tone.flac"
    sf.write(src, tone(1000), SR)
    assert analysis.main([str(src), "--out", str(tmp_path / "o"), "--plots", "none",
                          "--sample-rate", "22050"]) == 0
    _, rows = read_rows(tmp_path / "o" / "tone" / "features.csv")
    assert int(rows[0]["sample_rate"]) == 22050 and int(rows[0]["length"]) == 44100
    assert not list((tmp_path / "o").rglob("*.png"))


def test_directory_of_class_folders_labels_rows_and_survives_a_bad_file(tmp_path, capsys):
    root = tmp_path / "data"
    (root / "low").mkdir(parents=True)
    (root / "high").mkdir()
    sf.write(root / "low" / "a.wav", tone(300), SR)
    sf.write(root / "high" / "b.flac", tone(4000), SR)
    (root / "high" / "broken.wav").write_bytes(b"RIFF\x00\x00garbage")
    (root / "notes.txt").write_text("not audio")
    code = analysis.main([str(root), "--out", str(tmp_path / "out"), "--plots", "overview",
                          "--no-extras"])
    assert code == 1  # one file failed, the rest were done
    err = capsys.readouterr()
    assert "broken.wav" in err.out + err.err
    columns, rows = read_rows(tmp_path / "out" / "features.csv")
    assert columns == analysis.feature_columns()
    by_name = {r["filename"]: r for r in rows}
    assert set(by_name) == {"low/a.wav", "high/b.flac"}
    assert by_name["low/a.wav"]["label"] == "low" and by_name["high/b.flac"]["label"] == "high"
    assert float(by_name["high/b.flac"]["spectral_centroid_mean"]) > \
        5 * float(by_name["low/a.wav"]["spectral_centroid_mean"])
    assert_png(tmp_path / "out" / "low" / "a" / "overview.png")
    assert (tmp_path / "out" / "high" / "b" / "features.csv").is_file()


def test_missing_input_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "detector.cli.analysis",
                           str(tmp_path / "nope.wav"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope.wav does not exist" in lines[0], proc.stderr


def test_corrupt_single_file_is_an_audio_error(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav at all")
    with pytest.raises(AudioError, match="bad.wav is not readable audio"):
        analysis.analyze_file(bad, tmp_path / "o", "bad.wav")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), SR)
    with pytest.raises(AudioError, match="empty"):
        analysis.load_audio(empty)


def test_nan_samples_are_replaced(tmp_path):
    y = tone(1000)
    y[100:200] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, y, SR, subtype="FLOAT")
    loaded, _ = analysis.load_audio(path)
    assert np.all(np.isfinite(loaded)) and np.all(loaded[100:200] == 0)


def test_core_imports_without_the_analysis_extra():
    code = ("import sys; sys.modules['librosa'] = None; sys.modules['matplotlib'] = None\n"
            "import detector.cli.analysis, detector.cli.plotting\n"
            "from detector.errors import DetectorError\n"
            "try:\n    detector.cli.analysis.require_extra()\nexcept DetectorError as e:\n"
            "    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == analysis.EXTRA_HINT


def test_bad_sample_rate_is_a_config_error(tmp_path):
    src = tmp_path / "t.wav"
    sf.write(src, tone(), SR)
    with pytest.raises(DetectorError, match="--sample-rate=10"):
        analysis.run(analysis_args(src, tmp_path, sample_rate=10))


def analysis_args(src, tmp_path, **overrides):
    import argparse

    parser = argparse.ArgumentParser()
    analysis.add_arguments(parser)
    args = parser.parse_args([str(src), "--out", str(tmp_path / "o")])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args
