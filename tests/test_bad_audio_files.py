"""Audio files that used to pass in silence: each is one line through the real CLI —
an error (exit 2) when nothing can be processed, else one warning that says what the
daemon did — and never a traceback."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import soundfile as sf

from onnx_models import make_band_model
from test_private_and_bad_input import cli, one_line


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_band_model(tmp_path_factory.mktemp("badaudio") / "tiny.onnx")


def tone(seconds: float, amplitude: float = 0.3, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)


def warnings(result, needle: str) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines()
            if " WARNING " in line and needle in line]


@pytest.mark.parametrize("samples", [1, 1600])  # one sample; 0.1 s
def test_a_file_shorter_than_one_window_is_an_error(tmp_path, model, samples):
    path = tmp_path / "short.wav"
    sf.write(path, tone(1.0)[:samples], 16000, subtype="PCM_16")
    line = one_line(cli("replay", path, "--model", model))
    assert "shorter than one model window (0.99 s): nothing was processed" in line  # 97 frames
    assert f"{samples / 16000:.2f} s of audio" in line


def test_a_wav_cut_in_half_is_one_warning_and_plays_what_is_there(tmp_path, model):
    whole = tmp_path / "whole.wav"
    sf.write(whole, tone(10.0), 16000, subtype="PCM_16")
    data = whole.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[:44 + 5 * 32000])  # header + the first 5 s
    result = cli("replay", cut, "--model", model)
    assert result.returncode == 0, result.stderr
    found = warnings(result, "cut.wav")
    assert len(found) == 1 and "announces 10.00 s of audio but the file holds 5.00 s" in found[0]
    assert "pipeline stopped: 5.0 s of audio" in result.stderr


def test_a_wav_header_claiming_4_gb_is_one_warning(tmp_path, model):
    path = tmp_path / "lie.wav"
    sf.write(path, tone(3.0), 16000, subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    at = raw.find(b"data")
    raw[at + 4:at + 8] = struct.pack("<I", 0xFFFFFFF0)
    raw[4:8] = struct.pack("<I", 0xFFFFFFF8)
    path.write_bytes(bytes(raw))
    result = cli("replay", path, "--model", model)
    assert result.returncode == 0, result.stderr
    found = warnings(result, "lie.wav")
    assert len(found) == 1 and "but the file holds 3.00 s" in found[0]


def test_a_truncated_flac_is_one_warning(tmp_path, model):
    path = tmp_path / "cut.flac"
    sf.write(path, tone(10.0), 16000)
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    result = cli("replay", path, "--model", model)
    assert result.returncode == 0, result.stderr
    assert len(warnings(result, "cut.flac")) == 1


@pytest.mark.parametrize("gain", [1e6, 1e30])
def test_samples_far_outside_full_scale_are_one_warning(tmp_path, model, gain):
    path = tmp_path / "loud.wav"
    sf.write(path, tone(3.0) * np.float32(gain), 16000, subtype="FLOAT")
    result = cli("replay", path, "--model", model)
    assert result.returncode == 0, result.stderr
    found = warnings(result, "outside [-1, 1]")
    assert len(found) == 1 and "clipped to +-1" in found[0]
    # a file at full scale says nothing
    sf.write(path, tone(3.0, amplitude=1.0), 16000, subtype="FLOAT")
    assert warnings(cli("replay", path, "--model", model), "outside") == []
