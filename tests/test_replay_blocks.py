"""Replay decodes files in large reads and still hands the pipeline the blocks of
one read per block: the same sizes, the same samples, so the same scores and events.

The reference is the same FileSource with ``DECODE_SECONDS = 0``: one soundfile read
per ``block_seconds`` block, which is how replay read files before.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf

import detector.audio.capture as capture
from detector.audio.capture import DEMO_CLIP, FileSource
from detector.config import Config, MqttConfig
from detector.model.classifier import Classifier
from detector.pipeline import Pipeline

RATE = 16000
BLOCKS = [0.01, 0.05, 0.137, 1.0]


def scene(seconds: float, rate: int, channels: int = 1, seed: int = 3) -> np.ndarray:
    """Seeded noise with tone bursts and a few clicks (and NaN-free), ``channels`` wide."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    y = 0.01 * rng.standard_normal(n)
    for start in np.arange(0.5, seconds - 1.0, 2.5):
        span = (t >= start) & (t < start + 1.0)
        y[span] += 0.4 * np.sin(2 * np.pi * (700 + 300 * start) * t[span])
    y[rng.integers(0, n, 20)] = 0.95
    out = np.stack([y * (1.0 - 0.3 * c) for c in range(channels)], axis=1)
    return out.astype(np.float32)


def blocks(path, block_seconds: float, monkeypatch, one_read_per_block: bool,
           reads: list | None = None) -> list[np.ndarray]:
    with monkeypatch.context() as patch:
        if one_read_per_block:
            patch.setattr(capture, "DECODE_SECONDS", 0.0)
        if reads is not None:
            real = sf.SoundFile.read

            def spy(self, frames=-1, *args, **kwargs):
                reads.append(frames)
                return real(self, frames, *args, **kwargs)

            patch.setattr(sf.SoundFile, "read", spy)
        source = FileSource(path, RATE, block_seconds=block_seconds)
        out = []
        while True:
            try:
                out.append(source.read())
            except EOFError:
                break
        source.stop()
    return out


def assert_same_blocks(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert [b.size for b in got] == [b.size for b in want]
    for a, b in zip(got, want):
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("replay")
    made = {}
    made["flac_16k_mono"] = d / "a.flac"  # 21 s: several 4 s reads and a short last one
    sf.write(made["flac_16k_mono"], scene(21.3, RATE), RATE, subtype="PCM_16")
    made["wav_44k1_stereo"] = d / "b.wav"  # downmixed and resampled
    sf.write(made["wav_44k1_stereo"], scene(9.7, 44100, channels=2), 44100, subtype="PCM_16")
    made["wav_8k_float"] = d / "c.wav"  # upsampled, float samples beyond +-1 are clipped
    sf.write(made["wav_8k_float"], 1.5 * scene(6.1, 8000), 8000, subtype="FLOAT")
    made["ogg_48k"] = d / "d.ogg"
    sf.write(made["ogg_48k"], scene(5.2, 48000), 48000, format="OGG", subtype="VORBIS")
    return made


@pytest.mark.parametrize("block_seconds", BLOCKS)
@pytest.mark.parametrize("kind", ["flac_16k_mono", "wav_44k1_stereo", "wav_8k_float", "ogg_48k"])
def test_large_reads_give_the_same_blocks(files, kind, block_seconds, monkeypatch):
    reads_large, reads_small = [], []
    got = blocks(files[kind], block_seconds, monkeypatch, False, reads_large)
    want = blocks(files[kind], block_seconds, monkeypatch, True, reads_small)
    assert_same_blocks(got, want)
    assert sum(b.size for b in got) > 0
    # the point of it: fewer, larger reads (a 1 s block fits four times in a 4 s read)
    assert len(reads_large) <= len(reads_small) // 2 + 1
    assert -1 not in reads_large  # never "the whole file"


def test_nan_in_a_large_read_is_reported_once_at_its_position(tmp_path, monkeypatch, caplog):
    y = scene(9.0, RATE)[:, 0]
    y[int(6.5 * RATE)] = np.nan
    y[int(7.5 * RATE)] = np.inf
    path = tmp_path / "nan.wav"
    sf.write(path, y, RATE, subtype="FLOAT")
    runs = []
    for small in (False, True):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="detector.audio.capture"):
            runs.append(blocks(path, 0.05, monkeypatch, small))
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "first at 6.50 s" in warnings[0]
    assert_same_blocks(*runs)


@pytest.mark.parametrize("block_seconds", [0.05, 0.137])
def test_damaged_flac_plays_every_block_before_the_damage(tmp_path, monkeypatch, caplog,
                                                          block_seconds):
    whole = tmp_path / "whole.flac"
    sf.write(whole, scene(12.0, RATE), RATE, subtype="PCM_16")
    data = whole.read_bytes()
    cut = tmp_path / "cut.flac"
    cut.write_bytes(data[: int(len(data) * 0.6)])  # header says 12 s, data ends near 7 s
    runs, messages = [], []
    for small in (False, True):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="detector.audio.capture"):
            runs.append(blocks(cut, block_seconds, monkeypatch, small))
        messages.append([r.getMessage() for r in caplog.records if r.levelno == logging.WARNING])
    assert_same_blocks(*runs)
    played = sum(b.size for b in runs[0]) / RATE
    assert 4.0 < played < 12.0  # more than the first 4 s read, less than the header says
    assert messages[0] == messages[1] and len(messages[0]) == 1
    assert "decoding stopped" in messages[0][0]


def _replay(model, path, block_seconds, monkeypatch, one_read_per_block):
    with monkeypatch.context() as patch:
        if one_read_per_block:
            patch.setattr(capture, "DECODE_SECONDS", 0.0)
        config = Config(mqtt=MqttConfig(enabled=False, node_id="test"))
        source = FileSource(path, model.metadata.features.sample_rate,
                            block_seconds=block_seconds)
        pipe = Pipeline(config, source, model, [], record_scores=True, file_offsets=True)
        pipe.run()
    events = [(e["type"], e["label"], e["score"], e["peak_score"], e["duration_s"],
               e["offset_s"]) for e in pipe.events]
    return pipe, events


@pytest.fixture(scope="module")
def shipped():
    return Classifier(None)


def _real_recording(shared_data, tmp_path) -> "Path":
    """Real siren, gun shot, dog bark and car horn clips back to back in one FLAC."""
    import csv

    picks = sorted((shared_data / "sesa" / "siren").glob("*.flac"))[:2]
    picks += sorted((shared_data / "sesa" / "gunshot").glob("*.flac"))[:2]
    meta = shared_data / "urbansound8k" / "metadata" / "UrbanSound8K.csv"
    wanted = {"dog_bark": 2, "car_horn": 2}
    with open(meta, newline="") as handle:
        for row in csv.DictReader(handle):
            if wanted.get(row["class_name"], 0) > 0:
                clip = (shared_data / "urbansound8k" / "audio" / f"fold{row['fold']}"
                        / row["slice_file_name"])
                if clip.exists():
                    picks.append(clip)
                    wanted[row["class_name"]] -= 1
    if len(picks) < 4:
        pytest.skip("too few real clips under ../shared/data")
    gap = np.zeros(RATE, dtype=np.float32)
    parts = []
    for clip in picks:
        y, rate = sf.read(clip, dtype="float32", always_2d=True)
        assert rate == RATE
        parts += [gap, y.mean(axis=1)]
    path = tmp_path / "real.flac"
    sf.write(path, np.concatenate(parts + [gap]), RATE, subtype="PCM_16")
    return path


@pytest.mark.parametrize("block_seconds", [0.05, 0.137, 1.0])
def test_shipped_model_scores_and_events_are_identical_on_the_demo_clip(
        shipped, block_seconds, monkeypatch):
    pipe, events = _replay(shipped, DEMO_CLIP, block_seconds, monkeypatch, False)
    ref, ref_events = _replay(shipped, DEMO_CLIP, block_seconds, monkeypatch, True)
    assert pipe.samples_in == ref.samples_in > 0
    assert pipe.score_times == ref.score_times and len(pipe.score_rows) > 10
    np.testing.assert_array_equal(np.vstack(pipe.score_rows), np.vstack(ref.score_rows))
    assert events == ref_events


@pytest.mark.parametrize("block_seconds", [0.05, 0.137])
def test_shipped_model_scores_and_events_are_identical_on_real_recordings(
        shipped, shared_data, tmp_path, block_seconds, monkeypatch):
    path = _real_recording(shared_data, tmp_path)
    pipe, events = _replay(shipped, path, block_seconds, monkeypatch, False)
    ref, ref_events = _replay(shipped, path, block_seconds, monkeypatch, True)
    assert pipe.samples_in == ref.samples_in > 8 * RATE
    assert pipe.score_times == ref.score_times
    np.testing.assert_array_equal(np.vstack(pipe.score_rows), np.vstack(ref.score_rows))
    assert events == ref_events
    assert events, "the real sirens, shots, barks and horns fire something"
