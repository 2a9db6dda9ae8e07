"""Dataset loaders and audio reading on generated mini datasets in tmp dirs."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from detector.errors import AudioError, DetectorError
from export.audio import check_audio_files, load_audio
from export.datasets import (URBANSOUND8K_LABELS, DatasetError, check_fold_integrity,
                             load_folder_dataset, load_urbansound8k)

HEADER = "slice_file_name,fsID,start,end,salience,fold,classID,class_name\n"


def tone(freq=440.0, seconds=0.5, sr=16000):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def make_us8k(root, rows, ext=".flac", write=True):
    """rows: (fsID, slice, fold, classID) -> CSV + audio files."""
    (root / "metadata").mkdir(parents=True)
    lines = [HEADER]
    for fs_id, idx, fold, class_id in rows:
        name = f"{fs_id}-{class_id}-0-{idx}.wav"   # the official CSV names .wav files
        lines.append(f"{name},{fs_id},{idx * 0.5},{idx * 0.5 + 1.5},1,{fold},{class_id},"
                     f"{URBANSOUND8K_LABELS[class_id]}\n")
        folder = root / "audio" / f"fold{fold}"
        folder.mkdir(parents=True, exist_ok=True)
        if write:
            sf.write(folder / name.replace(".wav", ext), tone(200 + 100 * class_id), 16000)
    (root / "metadata" / "UrbanSound8K.csv").write_text("".join(lines))


def test_urbansound8k_layout_folds_and_flac_substitution(tmp_path):
    make_us8k(tmp_path, [(100, 0, 1, 3), (100, 1, 1, 3), (200, 0, 2, 6), (300, 0, 3, 0)])
    clips = load_urbansound8k(tmp_path)
    assert [c.label for c in clips] == ["dog_bark", "dog_bark", "gun_shot", "air_conditioner"]
    assert [c.fold for c in clips] == [1, 1, 2, 3]
    assert clips[0].group == "100" and clips[0].path.suffix == ".flac"
    assert clips[1].start == 0.5 and clips[1].true_duration == pytest.approx(1.5)
    only = load_urbansound8k(tmp_path, folds=[2, 3])
    assert [c.group for c in only] == ["200", "300"]


def test_original_wav_layout_is_read(tmp_path):
    make_us8k(tmp_path, [(7, 0, 1, 1)], ext=".wav")
    (clip,) = load_urbansound8k(tmp_path)
    assert clip.path.name == "7-1-0-0.wav"


def test_fsid_in_two_folds_is_rejected(tmp_path):
    make_us8k(tmp_path, [(100, 0, 1, 3), (100, 1, 2, 3)])
    with pytest.raises(DatasetError, match="recording 100 appears in folds \\[1, 2\\]"):
        load_urbansound8k(tmp_path)


def test_fold_integrity_of_real_subset(shared_data):
    clips = load_urbansound8k(shared_data / "urbansound8k")
    check_fold_integrity(clips)  # raises on a leak
    # The shared subset holds folds 1-9 (fold 10 is held back for judging).
    assert {c.fold for c in clips} == set(range(1, 10))
    assert len({c.label for c in clips}) == 10
    rows = (shared_data / "urbansound8k" / "metadata" / "UrbanSound8K.csv").read_text().splitlines()
    assert len(clips) == len(rows) - 1
    # Every clip cut anew from the original recordings is listed in the metadata and loaded.
    rebuilt = (shared_data / "urbansound8k" / "metadata" / "rebuilt.txt").read_text().split()
    loaded = {c.path.name for c in clips}
    assert rebuilt and set(rebuilt) <= loaded


def test_missing_audio_file_is_one_line(tmp_path):
    make_us8k(tmp_path, [(100, 0, 1, 3)], write=False)
    with pytest.raises(DatasetError) as info:
        load_urbansound8k(tmp_path)
    message = str(info.value)
    assert "100-3-0-0.wav" in message and "missing" in message and "\n" not in message


def test_missing_csv_and_bad_row(tmp_path):
    with pytest.raises(DatasetError, match="UrbanSound8K.csv not found"):
        load_urbansound8k(tmp_path)
    make_us8k(tmp_path, [(1, 0, 1, 3)])
    csv_path = tmp_path / "metadata" / "UrbanSound8K.csv"
    csv_path.write_text(HEADER + "1-3-0-0.wav,1,0,1,1,one,3,dog_bark\n")
    with pytest.raises(DatasetError, match=":2: bad fold"):
        load_urbansound8k(tmp_path)
    csv_path.write_text(HEADER + "1-3-0-0.wav,1,0,1,1,1,4,dog_bark\n")
    with pytest.raises(DatasetError, match="classID 4 does not match"):
        load_urbansound8k(tmp_path)


def test_folder_dataset(tmp_path):
    for label in ("siren", "casual"):
        (tmp_path / label).mkdir()
        for i in range(2):
            sf.write(tmp_path / label / f"{label}_{i}.wav", tone(), 16000)
    (tmp_path / "casual" / "notes.txt").write_text("not audio")
    clips = load_folder_dataset(tmp_path)
    assert [(c.label, c.group) for c in clips] == [
        ("casual", "casual_0"), ("casual", "casual_1"), ("siren", "siren_0"), ("siren", "siren_1")]
    assert all(c.fold is None for c in clips)
    with pytest.raises(DatasetError, match="holds no class folders"):
        load_folder_dataset(tmp_path / "siren")


def test_load_audio_any_rate_depth_channels(tmp_path):
    sr_in = 44100
    t = np.arange(sr_in) / sr_in
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 1000 * t), 0.5 * np.sin(2 * np.pi * 1000 * t)], 1)
    for subtype in ("PCM_16", "PCM_24", "PCM_U8"):
        path = tmp_path / f"x_{subtype}.wav"
        sf.write(path, stereo, sr_in, subtype=subtype)
        audio = load_audio(path, 16000)
        assert audio.dtype == np.float32 and audio.ndim == 1
        assert abs(len(audio) - 16000) <= 1
        spectrum = np.abs(np.fft.rfft(audio[1000:15000]))
        peak_hz = np.argmax(spectrum) * 16000 / 14000
        assert abs(peak_hz - 1000) < 5
        assert 0.45 < np.abs(audio[1000:15000]).max() < 0.55


def test_corrupt_empty_missing_audio_is_one_line(tmp_path):
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"fLaC this is not a flac stream" * 10)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    for path, words in ((bad, "corrupt"), (empty, "empty"), (tmp_path / "nope.wav", "does not exist")):
        with pytest.raises(AudioError) as info:
            load_audio(path, 16000)
        assert str(path) in str(info.value) and words in str(info.value)
        assert "\n" not in str(info.value)
        with pytest.raises(AudioError, match=words):
            check_audio_files([path], progress=False)
    assert issubclass(DatasetError, DetectorError)
