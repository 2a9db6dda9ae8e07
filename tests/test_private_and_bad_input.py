"""Private files whatever the umask, files others can write refused, setups that can
never fire refused, and odd inputs (FIFO, devices, deep TOML, bad WAV headers, absurd
sample rates) each one line — through the real CLI where a user would meet them."""

from __future__ import annotations

import os
import stat
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onnx_models import make_band_model, write_tone_wav

REPO = Path(__file__).resolve().parents[1]


def cli(*args, timeout=60):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SOUND_DETECTOR_MQTT_PASSWORD", None)
    return subprocess.run([sys.executable, "-m", "detector", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def one_line(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [l for l in result.stderr.splitlines() if l.startswith("sound-detector: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_band_model(tmp_path_factory.mktemp("private") / "tiny.onnx")


# -- private files -------------------------------------------------------------------

def test_sqlite_outbox_is_private_under_umask_022(tmp_path, umask_022):
    from detector.publish.outbox import SqliteOutbox

    path = tmp_path / "state" / "deep" / "outbox.sqlite"
    box = SqliteOutbox(path, 10)
    box.put("t", "x")
    assert box.peek() is not None
    assert mode(path) == 0o600
    for suffix in ("-wal", "-shm"):
        extra = path.with_name(path.name + suffix)
        assert extra.exists() and mode(extra) == 0o600, suffix
    assert mode(path.parent) == 0o700 and mode(path.parent.parent) == 0o700
    box.close()


def test_an_existing_readable_outbox_is_tightened(tmp_path, umask_022):
    from detector.publish.outbox import SqliteOutbox

    path = tmp_path / "outbox.sqlite"
    SqliteOutbox(path, 10).close()
    os.chmod(path, 0o644)
    SqliteOutbox(path, 10).close()
    assert mode(path) == 0o600


def test_clips_are_private_under_umask_022(tmp_path, umask_022):
    from detector.publish.clips import ClipSink
    from detector.config import ClipsConfig
    from detector.events import iso_utc

    sr, t0 = 16000, 1_700_000_000.0
    sink = ClipSink(ClipsConfig(enabled=True, directory=str(tmp_path / "clips"),
                                pre_roll_seconds=0.5, post_roll_seconds=0.0), sr)
    block = np.full(800, 0.1, dtype=np.float32)
    for k in range(60):
        now = t0 + (k + 1) * 0.05
        sink.audio(block, now)
        if k == 20:
            sink.event({"id": "a", "type": "start", "label": "siren", "start": iso_utc(now),
                        "end": None})
        if k == 40:
            end = {"id": "a", "type": "end", "label": "siren", "start": iso_utc(t0 + 1.05),
                   "end": iso_utc(now)}
            sink.event(end)
    sink.close()
    assert sink.written, "a clip was written"
    assert mode(tmp_path / "clips") == 0o700
    assert all(mode(p) == 0o600 for p in sink.written)


# -- files others can write; setups that can never fire ------------------------------

def test_world_writable_config_and_model_are_refused(tmp_path, model):
    conf = tmp_path / "c.toml"
    conf.write_text("[events]\nthreshold_on = 0.6\n")
    assert cli("validate-config", conf, "--model", model).returncode == 0
    os.chmod(conf, 0o666)
    line = one_line(cli("validate-config", conf, "--no-model"))
    assert "writable by every user" in line and "chmod o-w" in line
    os.chmod(conf, 0o644)
    shared = tmp_path / "shared.onnx"
    shared.write_bytes(Path(model).read_bytes())
    os.chmod(shared, 0o666)
    line = one_line(cli("validate-config", conf, "--model", shared))
    assert "model" in line and "writable by every user" in line
    line = one_line(cli("replay", tmp_path / "none.wav", "--model", shared))
    assert "writable by every user" in line


def test_setups_that_can_never_fire_are_refused(tmp_path, model):
    conf = tmp_path / "c.toml"
    conf.write_text("[events]\nlabels = []\n")
    line = one_line(cli("validate-config", conf, "--model", model))
    assert "events.labels = []" in line and "no event can ever fire" in line
    allbg = make_band_model(tmp_path / "bg.onnx", extra_props={
        "background_labels": ["siren", "dog_bark", "background"]})
    ok = tmp_path / "ok.toml"
    ok.write_text("")
    line = one_line(cli("validate-config", ok, "--model", allbg))
    assert "every label is a background label" in line


# -- config files that are not files ---------------------------------------------------

def test_config_fifo_device_and_deep_toml_are_one_line(tmp_path):
    fifo = tmp_path / "c.fifo"
    os.mkfifo(fifo)
    assert "not a regular file" in one_line(cli("validate-config", fifo, "--no-model",
                                                timeout=20))
    assert "not a regular file" in one_line(cli("validate-config", "/dev/zero", "--no-model"))
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "{a = " * 1000 + "1" + "}" * 1000 + "\n")
    assert "nested too deeply" in one_line(cli("validate-config", deep, "--no-model"))
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (2 << 20) + "\n")
    assert "at most 1024 kB" in one_line(cli("validate-config", big, "--no-model"))


# -- audio files -------------------------------------------------------------------------

def _wav(path: Path, rate: int, bits: int, n_bytes: int = 1200) -> Path:
    data = bytes((np.arange(n_bytes) * 37 % 251).astype(np.uint8))
    align = max(1, (bits + 7) // 8)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * align, align, bits)
    body = (b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data"
            + struct.pack("<I", len(data)) + data)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def test_bad_audio_headers_and_devices_are_one_line(tmp_path, model):
    line = one_line(cli("replay", _wav(tmp_path / "b7.wav", 16000, 7), "--model", model))
    assert "7 bits per sample" in line
    line = one_line(cli("replay", _wav(tmp_path / "r1.wav", 1, 16), "--model", model))
    assert "declares 1 Hz" in line
    line = one_line(cli("replay", "/dev/urandom", "--model", model))
    assert "not a regular file" in line and "empty" not in line
    # the legal neighbours still play
    assert cli("replay", _wav(tmp_path / "b8.wav", 16000, 8, 32000), "--model",
               model).returncode == 0


def test_file_audio_comes_in_bounded_blocks_at_any_accepted_rate(tmp_path):
    from detector.audio.capture import FILE_RATE_RANGE, MAX_BLOCK_SECONDS, FileSource

    import soundfile as sf

    low = FILE_RATE_RANGE[0]
    path = tmp_path / "low.wav"
    t = np.arange(30 * low) / low
    sf.write(path, (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), low,
             subtype="PCM_16")
    source = FileSource(path, 16000, block_seconds=10.0)  # asks for huge blocks
    sizes = []
    while True:
        try:
            sizes.append(source.read().size)
        except EOFError:
            break
    assert max(sizes) <= int(MAX_BLOCK_SECONDS * 16000)
    assert abs(sum(sizes) - 30 * 16000) <= 16, "nothing lost by the splitting"


def test_world_writable_directories_are_tightened_or_warned(tmp_path, caplog):
    from detector.publish.clips import ClipSink
    from detector.config import ClipsConfig
    from detector.publish.outbox import SqliteOutbox

    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o777)  # ours: others lose write access, with one warning
    clips = tmp_path / "clips"
    clips.mkdir()
    os.chmod(clips, 0o777)
    shared = tmp_path / "shared"  # sticky like /tmp: not ours to change, one warning
    shared.mkdir()
    os.chmod(shared, 0o1777)
    with caplog.at_level("WARNING"):
        SqliteOutbox(state / "outbox.sqlite", 10).close()
        ClipSink(ClipsConfig(enabled=True, directory=str(clips)), 16000).close()
        SqliteOutbox(shared / "outbox.sqlite", 10).close()
    assert mode(state) == 0o755 and mode(clips) == 0o755
    assert mode(shared) == 0o1777
    lines = [r.getMessage() for r in caplog.records
             if "writable by other users" in r.getMessage()]
    assert len(lines) == 3, lines
    assert "mode 777 -> 755" in lines[0] and "mode 777 -> 755" in lines[1]
    assert "mode 1777" in lines[2] and "directory of its own" in lines[2]
