"""FileSource on generated audio in every container it supports, plus every way a
file can be bad; device helpers that need no sound card."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf

import detector.audio.capture as capture
from detector.audio.capture import DECODE_SECONDS, DEMO_CLIP, AudioSource, FileSource
from detector.errors import AudioError
from detector.audio.resample import resample

RATE = 16000


def tone(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def read_all(src: FileSource) -> tuple[np.ndarray, list[int]]:
    blocks = []
    while True:
        try:
            blocks.append(src.read())
        except EOFError:
            break
    assert all(b.dtype == np.float32 and b.ndim == 1 for b in blocks)
    return (np.concatenate(blocks) if blocks else np.zeros(0, np.float32)), [len(b) for b in blocks]


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


@pytest.mark.parametrize("fmt,subtype,ext", [("WAV", "PCM_16", "wav"), ("WAV", "FLOAT", "wav"),
                                             ("FLAC", "PCM_24", "flac"), ("OGG", "VORBIS", "ogg")])
def test_formats_stream_the_whole_file(tmp_path, fmt, subtype, ext):
    x = tone(440, 2.0, RATE) + 0.05 * np.random.default_rng(0).standard_normal(2 * RATE).astype(np.float32)
    path = tmp_path / f"clip.{ext}"
    sf.write(path, x, RATE, format=fmt, subtype=subtype)
    expected, _ = sf.read(path, dtype="float32")
    with FileSource(path, RATE) as src:
        got, sizes = read_all(src)
    np.testing.assert_array_equal(got, expected)  # same decoder, nothing dropped or added
    assert len(sizes) > 10 and max(sizes) == int(0.05 * RATE)  # streamed in 50 ms blocks
    if fmt != "OGG":
        np.testing.assert_allclose(got, x, atol=1e-4)


@pytest.mark.parametrize("block_seconds", [0.01, 0.05, 0.137, 1.0, 10.0])
def test_blocks_concatenate_to_the_whole_file(tmp_path, block_seconds):
    x = np.random.default_rng(3).uniform(-0.9, 0.9, 44100 * 2 + 17).astype(np.float32)
    path = tmp_path / "noise.wav"
    sf.write(path, x, 44100, subtype="FLOAT")
    got, _ = read_all(FileSource(path, RATE, block_seconds=block_seconds))
    np.testing.assert_array_equal(got, resample(x, 44100, RATE))  # streaming == one-shot


def test_44k1_stereo_is_downmixed_and_resampled(tmp_path):
    left, right = tone(1000, 3.0, 44100, 0.6), tone(1000, 3.0, 44100, 0.2)
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([left, right], axis=1), 44100, subtype="PCM_24")
    src = FileSource(path, RATE)
    assert (src.source_rate, src.channels, src.sample_rate) == (44100, 2, RATE)
    assert src.duration_seconds == pytest.approx(3.0)
    got, _ = read_all(src)
    assert len(got) == round(3.0 * RATE)  # duration preserved exactly
    seg = got[RATE // 2: -RATE // 2]
    assert abs(peak_hz(seg, RATE) - 1000.0) < 1.0
    rms = np.sqrt(np.mean(seg ** 2))
    assert rms == pytest.approx(0.4 / np.sqrt(2), rel=2e-3)  # mean of the two channels
    assert src.position_seconds == pytest.approx(3.0)


def test_channels_are_averaged_not_picked(tmp_path):
    x = tone(300, 1.0, RATE)
    path = tmp_path / "antiphase.wav"
    sf.write(path, np.stack([x, -x, np.zeros_like(x)], axis=1), RATE, subtype="FLOAT")
    got, _ = read_all(FileSource(path, RATE))
    assert np.max(np.abs(got)) < 1e-7


def test_nan_and_inf_become_zero_with_one_warning(tmp_path, caplog):
    x = tone(200, 1.0, RATE)
    x[100] = np.nan
    x[5000:5003] = np.inf
    x[12000] = -np.inf
    path = tmp_path / "nan.wav"
    sf.write(path, x, RATE, subtype="FLOAT")
    with caplog.at_level(logging.WARNING, logger="detector.audio.capture"):
        src = FileSource(path, RATE)
        got, _ = read_all(src)
    assert np.isfinite(got).all()
    assert got[100] == 0 and np.all(got[5000:5003] == 0) and got[12000] == 0
    np.testing.assert_array_equal(got[:100], x[:100])
    assert src.nonfinite_samples == 5
    warnings = [r for r in caplog.records if "NaN/inf" in r.getMessage()]
    assert len(warnings) == 1 and "0.01 s" in warnings[0].getMessage()


def test_out_of_range_samples_are_clipped(tmp_path):
    x = np.array([0.0, 1.5, -3.0, 0.25] * 1000, dtype=np.float32)
    path = tmp_path / "hot.wav"
    sf.write(path, x, RATE, subtype="FLOAT")
    got, _ = read_all(FileSource(path, RATE))
    np.testing.assert_array_equal(got, np.clip(x, -1, 1))


def test_eof_is_sticky(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(path, tone(500, 0.1, RATE), RATE)
    src = FileSource(path, RATE)
    read_all(src)
    for _ in range(2):
        with pytest.raises(EOFError):
            src.read()
    src.stop()
    src.stop()


def test_large_file_is_read_in_blocks(tmp_path, monkeypatch):
    path = tmp_path / "long.flac"
    sf.write(path, np.zeros(RATE * 60, np.float32), RATE)  # one minute
    requested = []
    real_read = sf.SoundFile.read

    def spy(self, frames=-1, *args, **kwargs):
        requested.append(frames)
        return real_read(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    got, sizes = read_all(FileSource(path, RATE, block_seconds=0.5))
    assert len(got) == RATE * 60
    # decoded DECODE_SECONDS (a whole number of blocks) per read, never "everything"
    # (frames=-1), and handed on in blocks of block_seconds
    assert set(requested) == {int(DECODE_SECONDS * RATE)}
    assert set(sizes) == {RATE // 2}


def test_realtime_paces_to_the_clock(tmp_path, monkeypatch):
    path = tmp_path / "two_seconds.wav"
    sf.write(path, tone(500, 2.0, 48000), 48000)

    class FakeClock:
        now = 100.0
        slept = 0.0

        def monotonic(self):
            return self.now

        def sleep(self, seconds):
            assert seconds > 0
            self.slept += seconds
            self.now += seconds

    clock = FakeClock()
    monkeypatch.setattr(capture, "time", clock)
    src = FileSource(path, RATE, realtime=True, block_seconds=0.1)
    src.start()
    total = 0
    while True:
        try:
            block = src.read()
        except EOFError:
            break
        total += len(block)
        # Never ahead of the wall clock: each block is released when its audio has "happened".
        assert clock.now - 100.0 == pytest.approx(total / RATE, abs=1e-9)
    assert clock.slept == pytest.approx(2.0)

    fast = FileSource(path, RATE, realtime=False)
    clock.slept = 0.0
    read_all(fast)
    assert clock.slept == 0.0


# -- bad files: one line naming the file and the problem, at construction

def write_bytes(path, data: bytes):
    path.write_bytes(data)
    return path


def wav_bytes(tmp_path) -> bytes:
    p = tmp_path / "ok.wav"
    sf.write(p, tone(440, 1.0, RATE), RATE)
    return p.read_bytes()


def flac_bytes(tmp_path) -> bytes:
    p = tmp_path / "ok.flac"
    sf.write(p, tone(440, 1.0, RATE), RATE)
    return p.read_bytes()


@pytest.mark.parametrize("case,expect", [
    ("missing", "file not found"),
    ("directory", "is a directory"),
    ("empty", "empty file"),
    ("text", "not a readable audio file (Format not recognised)"),
    ("random", "not a readable audio file"),
    ("wav_header_only", "not a readable audio file"),
    ("wav_no_samples", "contains no audio samples"),
    ("flac_cut_in_first_block", "cannot decode audio"),
    ("ogg_truncated", "not a readable audio file"),
])
def test_bad_files_raise_one_line(tmp_path, case, expect):
    if case == "missing":
        path = tmp_path / "nope.wav"
    elif case == "directory":
        path = tmp_path
    elif case == "empty":
        path = write_bytes(tmp_path / "empty.wav", b"")
    elif case == "text":
        path = write_bytes(tmp_path / "notes.wav", b"this is not audio\n" * 20)
    elif case == "random":
        path = write_bytes(tmp_path / "noise.flac",
                           np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif case == "wav_header_only":
        path = write_bytes(tmp_path / "cut.wav", wav_bytes(tmp_path)[:20])
    elif case == "wav_no_samples":
        path = tmp_path / "zero.wav"
        sf.write(path, np.zeros(0, np.float32), RATE)
    elif case == "flac_cut_in_first_block":
        data = flac_bytes(tmp_path)
        path = write_bytes(tmp_path / "cut.flac", data[: len(data) // 50])
    else:
        p = tmp_path / "ok.ogg"
        sf.write(p, tone(440, 2.0, RATE), RATE, format="OGG")
        data = p.read_bytes()
        path = write_bytes(tmp_path / "cut.ogg", data[: len(data) // 2])
    with pytest.raises(AudioError) as info:
        FileSource(path, RATE)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(str(path)) and expect in message


def test_truncated_wav_plays_what_is_there(tmp_path):
    data = wav_bytes(tmp_path)
    path = write_bytes(tmp_path / "half.wav", data[: 44 + 2 * 8000])  # header + 0.5 s
    got, _ = read_all(FileSource(path, RATE))
    np.testing.assert_allclose(got, tone(440, 0.5, RATE), atol=1e-4)


def test_flac_corrupted_midway_ends_early_with_one_warning(tmp_path, caplog):
    data = flac_bytes(tmp_path)
    path = write_bytes(tmp_path / "half.flac", data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="detector.audio.capture"):
        got, _ = read_all(FileSource(path, RATE))
    assert 0 < len(got) < RATE
    np.testing.assert_allclose(got, tone(440, 1.0, RATE)[: len(got)], atol=1e-4)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "decoding stopped" in warnings[0]


def test_demo_clip_is_bundled_and_readable():
    assert DEMO_CLIP.name == "demo.flac" and DEMO_CLIP.parent.name == "data"
    if not DEMO_CLIP.exists():
        pytest.skip("detector/data/demo.flac not generated yet (scripts/make_demo_clip.py)")
    info = sf.info(DEMO_CLIP)
    assert (info.samplerate, info.channels) == (16000, 1)
    assert 5.0 <= info.duration <= 15.0
    assert DEMO_CLIP.stat().st_size <= 300_000
    got, _ = read_all(FileSource(DEMO_CLIP, RATE))
    assert len(got) == info.frames and np.max(np.abs(got)) > 0.05


def test_file_source_is_an_audio_source(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, tone(440, 0.2, RATE), RATE)
    src = FileSource(path, RATE)
    assert isinstance(src, AudioSource)
    assert src.overflows == 0 and src.queue_depth == 0


def test_shipped_model_hears_the_siren_in_the_demo_clip():
    """The README's first command: `sound-detector replay` on the bundled clip
    reports the synthetic siren (black-box, as a user runs it)."""
    import json
    import subprocess
    import sys

    from detector.model.classifier import default_model_path

    # both ship with the package: missing is a packaging bug, not a reason to skip
    assert DEMO_CLIP.is_file() and default_model_path().is_file()
    out = subprocess.run([sys.executable, "-m", "detector", "replay"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    sirens = [e for e in events if e["label"] == "siren"]
    assert [e["type"] for e in sirens][:2] == ["start", "end"], events
    # the siren sounds for 5 s (1-6 s): siren events start inside it and cover >= 2 s of it
    # (model 1.1.0 ends and restarts once where the synthetic sweep turns, so in two events)
    ends = [e for e in sirens if e["type"] == "end"]
    assert all(1.0 <= e["offset_s"] <= 6.0 for e in sirens if e["type"] == "start"), sirens
    assert sum(e["duration_s"] for e in ends) >= 2.0, sirens
    # and the gate says why: the AudioSet classes that supported it
    assert all("Siren" in e["evidence"] for e in sirens), sirens


# -- property-based: any bytes, any cut of a valid file, any float content

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402


def _drain_or_audio_error(path) -> np.ndarray | None:
    """A file is either refused with one AudioError line or streamed as finite
    mono float32 in [-1, 1] ending in EOFError; nothing else may escape."""
    try:
        src = FileSource(path, RATE)
    except AudioError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(path))
        return None
    got, _ = read_all(src)
    assert np.isfinite(got).all() and np.max(np.abs(got), initial=0.0) <= 1.0
    return got


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=3000), ext=st.sampled_from(["wav", "flac", "ogg", "mp3", "raw"]))
def test_arbitrary_bytes_never_escape_as_anything_but_audio_error(tmp_path, data, ext):
    path = tmp_path / f"x.{ext}"
    path.write_bytes(data)
    _drain_or_audio_error(path)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from([("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", "PCM_16"),
                            ("OGG", "VORBIS")]),
       rate=st.sampled_from([8000, 11025, 16000, 22050, 44100, 48000]),
       channels=st.integers(1, 3),
       cut=st.floats(0.0, 1.0),
       flip=st.integers(0, 2 ** 31 - 1))
def test_truncated_or_damaged_files(tmp_path, fmt, rate, channels, cut, flip):
    x = np.random.default_rng(flip).uniform(-0.5, 0.5, (rate // 4, channels)).astype(np.float32)
    path = tmp_path / f"x.{fmt[0].lower()}"
    sf.write(path, x, rate, format=fmt[0], subtype=fmt[1])
    data = bytearray(path.read_bytes()[: int(len(path.read_bytes()) * cut)])
    if data and flip % 2:  # also damage one byte somewhere
        data[flip % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))
    got = _drain_or_audio_error(path)
    if got is not None:  # never more audio than was written (resampler tail aside)
        assert len(got) <= round(len(x) * RATE / rate) + 64


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32),
                       min_size=1, max_size=2000))
def test_any_float_content_comes_out_finite_and_in_range(tmp_path, values):
    path = tmp_path / "f.wav"
    sf.write(path, np.array(values, dtype=np.float32), RATE, subtype="FLOAT")
    got = _drain_or_audio_error(path)
    assert got is not None and len(got) == len(values)


def test_mic_reader_downmixes_and_resamples_after_each_format_marker():
    """The reader side of MicSource (no PortAudio needed): blocks as the callback
    queues them, preceded by the marker each (re)opened stream puts first."""
    from detector.audio.capture import MicSource, _Format
    from detector.config import AudioConfig

    src = MicSource(AudioConfig(), RATE)
    left, right = tone(1000, 1.0, 48000, 0.6), tone(1000, 1.0, 48000, 0.2)
    stereo = np.stack([left, right], axis=1)
    src._queue.put(_Format(48000, 2))
    for i in range(0, len(stereo), 2400):
        src._queue.put(stereo[i:i + 2400].copy())
    # A reconnect to a mono 16 kHz device: new marker, no resampling any more.
    mono = tone(500, 0.25, RATE, 0.3)
    src._queue.put(_Format(RATE, 1))
    src._queue.put(mono[:, None].copy())
    assert src.queue_depth == 23  # markers included
    out = []
    while (block := src.read(timeout=0)) is not None:
        out.append(block)
    assert src.read(timeout=0.05) is None  # nothing left: None, not an exception
    got = np.concatenate(out)
    resampled, tail = got[:-len(mono)], got[-len(mono):]
    np.testing.assert_array_equal(tail, mono)
    # 48 kHz stereo -> 16 kHz mono: every sample (the filter's tail is flushed when
    # the next stream starts), at 1 kHz, at the mean of the two channels' level.
    assert len(resampled) == RATE
    seg = resampled[2000:-2000]
    assert abs(peak_hz(seg, RATE) - 1000) < 2
    assert np.sqrt(np.mean(seg ** 2)) == pytest.approx(0.4 / np.sqrt(2), rel=2e-3)


def test_without_portaudio_devices_fails_in_one_line_and_replay_still_works(tmp_path):
    """On a machine without libportaudio2, `import sounddevice` raises OSError. Capture
    imports it lazily: `devices` says what to install, `replay` does not need it."""
    import os
    import subprocess
    import sys

    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "sounddevice.py").write_text('raise OSError("PortAudio library not found")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "detector", "devices"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "libportaudio2" in lines[0] and "Traceback" not in out.stderr

    clip = tmp_path / "quiet.wav"
    sf.write(clip, tone(440, 2.0, RATE, 0.01), RATE)
    from detector.model.classifier import default_model_path

    assert default_model_path().is_file()  # ships with the package
    out = subprocess.run([sys.executable, "-m", "detector", "replay", str(clip)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
