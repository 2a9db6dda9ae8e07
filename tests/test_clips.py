"""Clip writer: exact pre-roll/post-roll spans in real FLAC files, retention, errors."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from detector.publish.clips import ClipSink
from detector.config import ClipsConfig
from detector.errors import ConfigError
from detector.events import iso_utc

SR = 16000
BLOCK = 800  # 0.05 s
T0 = 1_700_000_000.0


def signal(seconds: float) -> np.ndarray:
    """A ramp whose every sample is distinct at 16-bit resolution (position -> value)."""
    n = int(seconds * SR)
    return (((np.arange(n) % 50000) / 50000.0 - 0.5) * 1.6).astype(np.float32)


def feed(sink: ClipSink, audio: np.ndarray, until: float, events: dict[float, list[dict]],
         start_block: int = 0) -> int:
    """Push blocks ending up to ``until`` seconds; deliver events after the block ending at t."""
    k = start_block
    while (k + 1) * BLOCK <= until * SR + 1e-6:
        end = (k + 1) * BLOCK / SR
        sink.audio(audio[k * BLOCK:(k + 1) * BLOCK], T0 + end)
        for event in events.get(round(end, 3), []):
            sink.event(event)
        k += 1
    return k


def ev(kind, label, start, end=None):
    return {"id": f"{kind}-{label}-{start}", "type": kind, "label": label,
            "start": iso_utc(T0 + start), "end": None if end is None else iso_utc(T0 + end)}


def settings(tmp_path, **kw):
    kw.setdefault("directory", str(tmp_path / "clips"))
    return ClipsConfig(enabled=True, **kw)


def test_clip_holds_exactly_pre_roll_event_and_post_roll(tmp_path):
    audio = signal(10.0)
    sink = ClipSink(settings(tmp_path, pre_roll_seconds=1.0, post_roll_seconds=1.5), SR)
    start, end = ev("start", "dog bark", 3.0), ev("end", "dog bark", 3.0, 5.0)
    feed(sink, audio, 9.0, {3.5: [start], 5.5: [end]})  # events arrive after a detection lag
    assert "clip" not in start
    path = Path(end["clip"])
    assert path.parent == (tmp_path / "clips").resolve() and path.suffix == ".flac"
    assert "dog_bark" in path.name
    sink.close()
    data, rate = sf.read(path, dtype="float32")
    assert rate == SR
    expected = audio[int(2.0 * SR):int(6.5 * SR)]  # onset - 1.0 .. end + 1.5
    assert data.shape == expected.shape
    assert np.max(np.abs(data - expected)) <= 1.0 / 32768 + 1e-7
    assert sink.written == [path]
    assert not list((tmp_path / "clips").glob(".*.part"))


def test_overlapping_labels_and_shutdown_during_post_roll(tmp_path):
    audio = signal(6.0)
    sink = ClipSink(settings(tmp_path, pre_roll_seconds=0.5, post_roll_seconds=3.0), SR)
    a_end = ev("end", "siren", 1.0, 2.0)
    b_end = ev("end", "horn", 1.5, 2.5)
    feed(sink, audio, 4.0, {1.25: [ev("start", "siren", 1.0)], 1.75: [ev("start", "horn", 1.5)],
                            2.25: [a_end], 2.75: [b_end]})
    sink.close()  # post-rolls (to 5.0 and 5.5) are cut short at 4.0 but the clips are kept
    siren, _ = sf.read(a_end["clip"], dtype="float32")
    horn, _ = sf.read(b_end["clip"], dtype="float32")
    np.testing.assert_allclose(siren, audio[int(0.5 * SR):int(4.0 * SR)], atol=1 / 32768 + 1e-7)
    np.testing.assert_allclose(horn, audio[int(1.0 * SR):int(4.0 * SR)], atol=1 / 32768 + 1e-7)


def test_pre_roll_is_limited_to_what_was_heard(tmp_path):
    audio = signal(3.0)
    sink = ClipSink(settings(tmp_path, pre_roll_seconds=5.0, post_roll_seconds=0.0), SR)
    end = ev("end", "siren", 0.5, 1.0)
    feed(sink, audio, 2.0, {0.75: [ev("start", "siren", 0.5)], 1.25: [end]})
    sink.close()
    data, _ = sf.read(end["clip"], dtype="float32")
    np.testing.assert_allclose(data, audio[:int(1.0 * SR)], atol=1 / 32768 + 1e-7)


def test_loud_audio_is_clipped_not_wrapped(tmp_path):
    sink = ClipSink(settings(tmp_path, pre_roll_seconds=0.0, post_roll_seconds=0.0), SR)
    loud = np.full(int(2 * SR), 3.0, dtype=np.float32)
    end = ev("end", "gun", 0.5, 1.0)
    feed(sink, loud, 2.0, {0.5: [ev("start", "gun", 0.5)], 1.0: [end]})
    sink.close()
    data, _ = sf.read(end["clip"], dtype="float32")
    assert len(data) == SR // 2 and np.all(data > 0.99)


def make_clip(directory: Path, name: str, age_days: float, size: int) -> Path:
    path = directory / name
    path.write_bytes(b"\0" * size)
    stamp = time.time() - age_days * 86400
    os.utime(path, (stamp, stamp))
    return path


def test_retention_by_age_count_and_size(tmp_path):
    directory = tmp_path / "clips"
    directory.mkdir()
    old = make_clip(directory, "old.flac", 40, 10)
    files = [make_clip(directory, f"c{i}.flac", 10 - i, 300_000) for i in range(6)]
    other = make_clip(directory, "notes.txt", 100, 10)
    sink = ClipSink(settings(tmp_path, max_count=4, max_age_days=30, max_total_mb=1.0), SR)
    sink.close()  # retention runs at start
    left = sorted(p.name for p in directory.iterdir())
    # age removes old.flac; count keeps the 4 newest; size (1 MB) keeps the 3 newest
    assert left == ["c3.flac", "c4.flac", "c5.flac", "notes.txt"]
    assert not old.exists() and other.exists() and not files[0].exists()


def test_unwritable_directory_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError) as info:
        ClipSink(settings(tmp_path, directory=str(blocker / "clips")), SR)
    assert "clips.directory" in str(info.value) and "\n" not in str(info.value)


def test_disk_error_while_writing_is_logged_not_fatal(tmp_path, caplog):
    audio = signal(6.0)
    sink = ClipSink(settings(tmp_path, pre_roll_seconds=0.0, post_roll_seconds=0.0), SR)
    feed(sink, audio, 1.0, {1.0: [ev("start", "siren", 1.0)]})
    deadline = time.monotonic() + 10
    while not list((tmp_path / "clips").glob(".*.part")) and time.monotonic() < deadline:
        time.sleep(0.01)
    for part in (tmp_path / "clips").glob(".*.part"):
        part.unlink()  # the file vanishes under the writer (card removed, a cleaner, ...)
    lost = ev("end", "siren", 1.0, 2.0)
    k = feed(sink, audio, 3.0, {2.0: [lost]}, start_block=20)
    good = ev("end", "siren", 3.5, 4.0)
    feed(sink, audio, 5.0, {3.5: [ev("start", "siren", 3.5)], 4.0: [good]}, start_block=k)
    sink.close()
    assert not Path(lost["clip"]).exists()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "this clip is dropped" in errors[0]
    data, _ = sf.read(good["clip"], dtype="float32")  # the next clip is fine
    np.testing.assert_allclose(data, audio[int(3.5 * SR):int(4.0 * SR)], atol=1 / 32768 + 1e-7)


def test_leftover_part_files_are_removed_at_start(tmp_path, caplog):
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / ".20260101T000000Z_siren_abc.flac.part").write_bytes(b"half")
    (clips / "20260101T000000Z_siren_abc.flac").write_bytes(b"kept")  # a finished clip
    with caplog.at_level("INFO", logger="detector.publish.clips"):
        sink = ClipSink(settings(tmp_path), SR)
    sink.close()
    assert not list(clips.glob(".*.part"))
    assert (clips / "20260101T000000Z_siren_abc.flac").exists()
    assert any("removed 1 unfinished clip(s)" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs (a full disk) needs root")
def test_a_full_clips_disk_names_no_clip_that_does_not_exist(tmp_path, caplog):
    import subprocess

    from test_disk_full import fill

    mount = tmp_path / "fs"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs")
    try:
        sink = ClipSink(settings(tmp_path, directory=str(mount / "clips"),
                                 pre_roll_seconds=0.5, post_roll_seconds=0.5), SR)
        fill(mount)
        audio = signal(60.0)
        events: dict[float, list[dict]] = {}
        ends = []
        for i in range(20):  # 20 events of 1 s on a disk with no room
            start = 1.0 + 2.5 * i
            end = ev("end", "siren", start, start + 1.0)
            events.setdefault(round(start, 3), []).append(ev("start", "siren", start))
            events.setdefault(round(start + 1.0, 3), []).append(end)
            ends.append(end)
        with caplog.at_level("INFO", logger="detector.publish.clips"):
            feed(sink, audio, 55.0, events)
            sink.close()
        named = [Path(e["clip"]) for e in ends if "clip" in e]
        assert all(path.is_file() for path in named), named  # named => it exists
        assert not list((mount / "clips").glob(".*.part"))  # nothing half-written left
        errors = [r for r in caplog.records if r.levelname == "ERROR"]
        assert sink.failed == 20 - len(named) > 0
        assert len(errors) <= 5  # counted, at most 5 lines a minute
        assert "Traceback" not in caplog.text
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
