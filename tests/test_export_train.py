"""A tiny REAL training run: generated clips -> train -> ONNX export -> parity ->
the daemon's Classifier loads it -> a replay through the CLI produces scores."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("tensorflow", reason="needs the [train] extra (TensorFlow)")
pytest.importorskip("tf2onnx", reason="needs the [train] extra (tf2onnx)")
pytestmark = pytest.mark.train

SR = 16000


def clip(kind: str, seed: int, seconds: float = 1.6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    noise = 0.01 * rng.normal(size=t.size)
    if kind == "beep":      # 1.5-2.5 kHz tone bursts
        freq = rng.uniform(1500, 2500)
        gate = (np.sin(2 * np.pi * 3 * t) > 0).astype(float)
        return (0.3 * gate * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)
    if kind == "hum":       # low buzzing harmonics
        freq = rng.uniform(90, 140)
        x = sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, 6))
        return (0.1 * x + noise).astype(np.float32)
    return (0.05 * rng.normal(size=t.size)).astype(np.float32)  # background: broadband hiss


def write_teacher(root, path, n_classes=16):
    """A teacher-logits file in the shared layout: class-dependent logits per 1 s window."""
    rng = np.random.default_rng(0)
    files, win_logits, win_clip, win_start = [], [], [], []
    for index, wav in enumerate(sorted(root.glob("*/*.wav"))):
        files.append(f"data/{wav.parent.name}/{wav.name}")
        centre = np.zeros(n_classes)
        centre[len(wav.parent.name) % n_classes] = 4.0
        for start in (0.0, 0.5, 0.6):
            win_logits.append(centre - 6 + rng.normal(0, 0.5, n_classes))
            win_clip.append(index)
            win_start.append(start)
    np.savez(path, labels=np.array([f"c{i}" for i in range(n_classes)]), files=np.array(files),
             clip_logits=np.zeros((len(files), n_classes), np.float16),
             win_logits=np.array(win_logits, np.float16), win_clip=np.array(win_clip, np.int32),
             win_start_s=np.array(win_start, np.float32))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from export.train import TrainConfig, train

    root = tmp_path_factory.mktemp("data")
    for kind in ("beep", "hum", "background"):
        (root / kind).mkdir()
        for i in range(6):
            sf.write(root / kind / f"{kind}_{i}.wav", clip(kind, 100 * len(kind) + i), SR)
    out = tmp_path_factory.mktemp("run")
    teacher = write_teacher(root, out / "teacher.npz")
    cfg = TrainConfig(folders=(str(root),), holdout_every=3, epochs=3, batch_size=8,
                      learning_rate=3e-3, seed=1, cache_dir=str(out / "cache"),
                      model_version="test-tiny", teacher=str(teacher), teacher_weight=5.0,
                      probe_weight=0.5)
    report = train(cfg, out, verbose=0)
    return out, report, root


def test_training_exports_a_model_with_the_contract(trained):
    out, report, _ = trained
    onnx_path = out / "model.onnx"
    assert onnx_path.is_file() and (out / "curves.png").stat().st_size > 1000
    assert report["labels"] == ["beep", "hum", "background"]
    assert report["parity_max_abs_diff"] <= 1e-4
    assert len(report["history"]["loss"]) == 3
    assert "teacher_loss" in report["history"]  # the distillation head trained ...
    # every 3rd background file (2 of 6) was held out: calibration + false-alarm check
    assert report["false_alarms_heldout"]["clips"] == 1
    assert set(report["thresholds"]) == {"beep", "hum"}
    # the daemon's leave-one-out estimate replays both held-out files
    daemon = report["daemon_false_alarms"]
    assert daemon["method"] == "leave-one-out" and daemon["clips"] == 2
    assert daemon["fired"] == len(daemon["fired_files"]) <= 2
    saved = json.loads((out / "report.json").read_text())
    assert saved["onnx_bytes"] == onnx_path.stat().st_size

    from detector.model import Classifier
    classifier = Classifier(onnx_path)
    meta = classifier.metadata
    assert meta.labels == ("beep", "hum", "background")
    assert meta.background_labels == ("background",) and meta.event_labels == ("beep", "hum")
    import onnxruntime as ort  # ... and was dropped at export: one output, one score per label
    assert [o.shape[1] for o in ort.InferenceSession(str(onnx_path)).get_outputs()] == [3]
    assert meta.window_seconds == 1.0 and meta.frames == 97 and meta.model_version == "test-tiny"
    assert "non-commercial" in meta.license_note
    from detector.features import logmel
    window = logmel(clip("beep", 7), meta.features)[:meta.frames]
    scores = classifier.predict(window)
    assert scores.shape == (3,) and abs(float(scores.sum()) - 1.0) < 1e-4


def test_replay_through_the_daemon_cli(trained, tmp_path):
    out, _, _ = trained
    wav = tmp_path / "beep.wav"
    sf.write(wav, np.concatenate([clip("background", 5, 1.0), clip("beep", 9, 2.0)]), SR)
    proc = subprocess.run([sys.executable, "-m", "detector", "replay", str(wav),
                           "--model", str(out / "model.onnx"), "--show-scores"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    score_lines = [line for line in proc.stderr.splitlines() if "dBFS" in line]
    assert len(score_lines) >= 6  # 3 s at a 0.25 s hop after the first 1 s window
    assert all("beep" in line or "hum" in line for line in score_lines)
    for line in proc.stdout.splitlines():  # any events are valid JSON of the contract
        event = json.loads(line)
        assert event["label"] in ("beep", "hum") and event["model"] == "test-tiny"


def test_crossval_rejects_single_fold(tmp_path):
    from detector.errors import ConfigError
    from export.crossval import crossval
    from export.train import TrainConfig

    with pytest.raises(ConfigError, match="at least two folds"):
        crossval(TrainConfig(urbansound8k=str(tmp_path), folds=(1,)), tmp_path)


def test_crossval_by_official_folds_on_generated_urbansound8k(tmp_path, monkeypatch):
    """Two folds, two rotations: per-fold results, mean/std, pooled per-class, confusion PNG."""
    from dataclasses import replace

    from detector.errors import ConfigError
    from export.augment import AugmentConfig
    from export.crossval import crossval
    from export.datasets import URBANSOUND8K_LABELS
    from export.train import TrainConfig

    root = tmp_path / "us8k"
    (root / "metadata").mkdir(parents=True)
    rows = ["slice_file_name,fsID,start,end,salience,fold,classID,class_name"]
    kinds = {1: "beep", 5: "hum"}  # car_horn <- beeps, engine_idling <- hum
    for fold in (1, 2):
        (root / "audio" / f"fold{fold}").mkdir(parents=True)
        for class_id, kind in kinds.items():
            for i in range(4):
                fs_id = 1000 * fold + 10 * class_id + i
                name = f"{fs_id}-{class_id}-0-0.wav"
                seconds = 0.6 if i == 0 else 1.6   # one slice shorter than the window
                sf.write(root / "audio" / f"fold{fold}" / name, clip(kind, fs_id, seconds), SR)
                rows.append(f"{name},{fs_id},0.0,{seconds},1,{fold},{class_id},"
                            f"{URBANSOUND8K_LABELS[class_id]}")
    (root / "metadata" / "UrbanSound8K.csv").write_text("\n".join(rows) + "\n")
    cfg = TrainConfig(urbansound8k=str(root), folds=(1, 2), epochs=1, batch_size=8, seed=3,
                      cache_dir=str(tmp_path / "cache"), crops_per_clip=2, mixup_alpha=0.3,
                      ema_momentum=0.9, augment=AugmentConfig(onset_prob=0.5))
    # one rotation now (as one process of several would), then the rest: fold 1 is reused
    assert crossval(cfg, tmp_path / "cv", verbose=0, rotations=[1]) is None
    assert not (tmp_path / "cv" / "fold2").exists()
    fold1_report = tmp_path / "cv" / "fold1" / "report.json"
    stamp = fold1_report.stat().st_mtime_ns
    result = crossval(cfg, tmp_path / "cv", verbose=0)
    assert fold1_report.stat().st_mtime_ns == stamp
    assert set(result["folds"]) == {1, 2}
    assert all(result["folds"][f]["n"] == 8 for f in (1, 2))
    r = result["test_restricted"]
    assert r["labels"] == ["car_horn", "engine_idling"]
    assert np.array(r["confusion"]).sum() == 16
    accs = [result["folds"][f]["accuracy"] for f in (1, 2)]
    assert r["accuracy_mean"] == pytest.approx(np.mean(accs))
    assert (tmp_path / "cv" / "confusion.png").stat().st_size > 1000
    assert (tmp_path / "cv" / "fold2" / "model.onnx").is_file()
    assert "mean=" in result["summary"]

    # everything finished with these settings: nothing is trained again
    import export.train as train_module

    def no_training(*args, **kwargs):
        raise AssertionError("a finished rotation was trained again")

    monkeypatch.setattr(train_module, "train", no_training)
    again = crossval(cfg, tmp_path / "cv", verbose=0)
    assert again["summary"] == result["summary"]
    # other settings are a different experiment: that rotation runs again
    with pytest.raises(AssertionError, match="trained again"):
        crossval(replace(cfg, epochs=2), tmp_path / "cv", verbose=0)
    with pytest.raises(ConfigError, match="rotations"):
        crossval(cfg, tmp_path / "cv", verbose=0, rotations=[3])
