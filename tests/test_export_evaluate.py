"""``python -m export evaluate`` on generated tone datasets and a real band-detector ONNX model.

The band model (tests/onnx_models.py) says "siren" for a 1 kHz tone and
"dog_bark" for a 3 kHz tone, so every expected number below follows from the
audio the test writes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from detector.errors import AudioError, ConfigError
from export import evaluate as ev
from onnx_models import make_band_model, tone_signal

SR = 16000
HEADER = "slice_file_name,fsID,start,end,salience,fold,classID,class_name"
CLASS_ID = {"dog_bark": 3, "siren": 8, "car_horn": 1}


def write_clip(path: Path, segments, seconds=4.0, rate=SR, stereo=False, subtype="PCM_16"):
    audio = tone_signal(segments, seconds, sample_rate=rate)
    if stereo:
        audio = np.stack([audio, audio], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, rate, subtype=subtype)
    return path


def make_us8k(root: Path, rows) -> Path:
    """rows: (name, fsID, start, end, fold, label, segments, kwargs)."""
    lines = [HEADER]
    for name, fsid, start, end, fold, label, segments, kw in rows:
        write_clip(root / "audio" / f"fold{fold}" / name, segments, **kw)
        lines.append(f"{name},{fsid},{start},{end},1,{fold},{CLASS_ID[label]},{label}")
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    (root / "metadata" / "UrbanSound8K.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def model(tmp_path):
    return make_band_model(tmp_path / "band.onnx")  # siren 1 kHz, dog_bark 3 kHz, background


@pytest.fixture
def us8k(tmp_path):
    hi_fi = dict(rate=44100, stereo=True, subtype="PCM_24")  # like the original dataset
    return make_us8k(tmp_path / "us8k", [
        ("1-8-0-0.wav", 1, 0.0, 4.0, 1, "siren", [(0, 4, 1000)], hi_fi),
        ("2-8-0-0.flac", 2, 0.0, 4.0, 1, "siren", [(0.5, 3.5, 1000)], {}),
        ("3-3-0-0.flac", 3, 0.0, 4.0, 1, "dog_bark", [(0, 4, 3000)], {}),
        # true extent 0.6 s of 1 kHz; the copy was padded to 4 s with 3 kHz "other audio":
        # only the crop to end-start makes this a siren.
        ("4-8-0-0.flac", 4, 10.0, 10.6, 2, "siren", [(0, 0.6, 1000), (0.6, 4, 3000)], {}),
        ("5-3-0-0.wav", 5, 0.0, 4.0, 2, "dog_bark", [(0, 4, 3000)], hi_fi),
        # labelled dog_bark, sounds like a siren: the one error
        ("6-3-0-0.flac", 6, 0.0, 4.0, 2, "dog_bark", [(0, 4, 1000)], {}),
    ])


def test_evaluate_urbansound8k_layout(model, us8k):
    r = ev.evaluate(model, us8k, progress=False)
    assert r["n"] == 6 and r["labels"] == ["siren", "dog_bark"]  # model output order
    assert r["accuracy"] == pytest.approx(5 / 6)
    assert r["confusion"]["order"] == ["siren", "dog_bark"]
    assert r["confusion"]["matrix"] == [[3, 0], [1, 2]]
    assert r["per_class"]["siren"] == pytest.approx(
        {"precision": 3 / 4, "recall": 1.0, "f1": 6 / 7, "support": 3})
    assert r["per_class"]["dog_bark"] == pytest.approx(
        {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert r["folds"] == [1, 2]
    assert r["accuracy_by_fold"] == {"1": {"n": 3, "accuracy": 1.0},
                                     "2": {"n": 3, "accuracy": pytest.approx(2 / 3)}}
    preds = {p["path"]: p["predicted"] for p in r["predictions"]}
    assert preds["audio/fold2/4-8-0-0.flac"] == "siren"  # cropped to its true 0.6 s
    assert preds["audio/fold2/6-3-0-0.flac"] == "siren"
    assert r["model"]["version"] == "band-test-1"
    # 4 s clips: 397 columns, windows of 97 every 25 -> 13 windows; the cropped
    # 0.6 s clip is zero-padded to one window -> 1 window.
    assert r["n_windows"] == 5 * 13 + 1
    assert r["protocol"]["window_hop_seconds"] == pytest.approx(0.25)


def test_windows_and_crop_are_what_the_daemon_hears(model, us8k):
    # Without the crop the padded clip would be heard as mostly 3 kHz: dog_bark.
    r = ev.evaluate(model, us8k, folds=[2], progress=False)
    assert r["folds"] == [2] and r["n"] == 3
    # window accuracy: 13 + 1 windows correct out of 13 + 13 + 1 (clip 6 all wrong)
    assert r["window_accuracy"] == pytest.approx(14 / 27)
    r_hop = ev.evaluate(model, us8k, folds=[1], window_hop_seconds=1.0, progress=False)
    assert r_hop["n_windows"] == 3 * 4  # (397 - 97) // 100 + 1


def test_accuracy_all_outputs_counts_labels_outside_the_dataset(tmp_path):
    model = make_band_model(tmp_path / "m.onnx", labels=("siren", "dog_bark", "car_horn"),
                            bands_hz={"siren": 1000, "dog_bark": 3000, "car_horn": 500})
    root = make_us8k(tmp_path / "d", [
        ("1.flac", 1, 0, 4, 1, "siren", [(0, 4, 1000)], {}),
        # siren present in 60 % of the clip, a louder-scoring 500 Hz hum throughout:
        # among {siren, dog_bark} it is a siren; over all outputs it is a car_horn.
        ("2.flac", 2, 0, 4, 1, "siren", [(0, 4, 500), (0, 2.4, 1000)], {}),
        ("3.flac", 3, 0, 4, 1, "dog_bark", [(0, 4, 3000)], {}),
    ])
    r = ev.evaluate(model, root, progress=False)
    assert r["labels"] == ["siren", "dog_bark"]
    assert r["accuracy"] == 1.0
    assert r["accuracy_all_outputs"] == pytest.approx(2 / 3)


def test_folder_per_class_dataset(model, tmp_path):
    root = tmp_path / "folders"
    write_clip(root / "siren" / "a.wav", [(0, 2, 1000)], seconds=2.0)
    write_clip(root / "siren" / "b.ogg", [(0, 0.5, 1000)], seconds=0.5,
               subtype="VORBIS")  # shorter than a window
    write_clip(root / "dog_bark" / "c.flac", [(0, 3, 3000)], seconds=3.0, rate=48000)
    r = ev.evaluate(model, root, progress=False)
    assert r["n"] == 3 and r["accuracy"] == 1.0 and r["folds"] is None
    with pytest.raises(ConfigError, match="--folds needs the UrbanSound8K layout"):
        ev.evaluate(model, root, folds=[1], progress=False)


def test_unknown_dataset_label_is_a_clear_error(model, tmp_path):
    root = tmp_path / "folders"
    write_clip(root / "siren" / "a.wav", [(0, 2, 1000)], seconds=2.0)
    write_clip(root / "jackhammer" / "b.wav", [(0, 2, 1000)], seconds=2.0)
    with pytest.raises(ConfigError) as err:
        ev.evaluate(model, root, progress=False)
    assert "['jackhammer']" in str(err.value) and "\n" not in str(err.value)


def run_cli(capsys, **kw):
    args = dict(model=None, dataset=None, folds=None, json=None, png=None, window_hop=None,
                skip_bad=False, threads=1)
    args.update(kw)
    code = ev.run(argparse.Namespace(**args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_writes_json_and_png(model, us8k, tmp_path, capsys):
    out = tmp_path / "out" / "eval.json"
    code, stdout, _ = run_cli(capsys, model=model, dataset=us8k, json=out)
    assert code == 0 and "accuracy 0.8333 on 6 clips" in stdout
    result = json.loads(out.read_text())
    for key in ("accuracy", "n", "labels", "per_class", "confusion", "window_accuracy",
                "folds", "model", "accuracy_all_outputs"):
        assert key in result
    png = out.with_suffix(".png")
    header = png.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
    assert width > 300 and height > 300


def test_corrupt_clip_stops_with_one_line_or_is_skipped(model, us8k, tmp_path, capsys):
    bad = us8k / "audio" / "fold1" / "3-3-0-0.flac"
    bad.write_bytes(b"fLaC but not really a flac file")
    code, _, err = run_cli(capsys, model=model, dataset=us8k)
    assert code == 2
    assert err.count("\n") == 1 and "3-3-0-0.flac" in err and "--skip-bad" in err
    out = tmp_path / "skip.json"
    code, _, _ = run_cli(capsys, model=model, dataset=us8k, json=out, skip_bad=True)
    result = json.loads(out.read_text())
    assert code == 0 and result["n"] == 5 and result["n_skipped"] == 1
    assert result["skipped"][0]["path"] == "audio/fold1/3-3-0-0.flac"


def test_missing_model_is_one_line(us8k, tmp_path, capsys):
    code, _, err = run_cli(capsys, model=tmp_path / "nope.onnx", dataset=us8k)
    assert code == 2 and err.count("\n") == 1 and "nope.onnx" in err


def test_model_without_metadata_is_refused(tmp_path, us8k):
    with pytest.raises(Exception) as err:
        ev.evaluate(make_band_model(tmp_path / "x.onnx", with_metadata=False), us8k,
                    progress=False)
    assert "lacks metadata" in str(err.value)


def test_shipped_model_on_real_data(shared_data):
    """Real UrbanSound8K clips through the shipped model (a small slice: fast)."""
    from export.datasets import load_urbansound8k

    shipped = Path(__file__).resolve().parents[1] / "detector" / "models" / "default.onnx"
    if not shipped.is_file():
        pytest.skip("detector/models/default.onnx not committed yet")
    clips = load_urbansound8k(shared_data / "urbansound8k", folds=[3])
    by_label: dict[str, list] = {}
    for clip in clips:
        by_label.setdefault(clip.label, []).append(clip)
    subset = [c for group in by_label.values() for c in group[:3]]
    r = ev.evaluate(shipped, clips=subset, progress=False)
    assert r["n"] == len(subset) == 30
    # Trained on these folds: this is a sanity check (far above 10 % chance), not a score.
    assert r["accuracy"] > 0.5


def test_black_box_python_m_export_evaluate(model, us8k, tmp_path):
    """The real entry point: ``python -m export evaluate`` in a subprocess."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "bb.json"
    done = subprocess.run([sys.executable, "-m", "export", "evaluate", "--model", str(model),
                           "--dataset", str(us8k), "--folds", "2", "--json", str(out)],
                          cwd=repo, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["n"] == 3
    bad = subprocess.run([sys.executable, "-m", "export", "evaluate", "--model", str(model),
                          "--dataset", str(us8k), "--folds", "7"],
                         cwd=repo, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("error:") and "fold" in bad.stderr


def test_scorer_computes_the_front_end_the_model_names(tmp_path):
    from detector.features import MN04_FEATURES, MN04_NORMALIZATION, MN04_PARAMS, MnLogMel

    path = make_band_model(tmp_path / "mn.onnx", features=MN04_FEATURES, feature="mn_logmel",
                           feature_params=MN04_PARAMS, normalization=MN04_NORMALIZATION,
                           offset_db=5.0, scale_db=1.0)
    scorer = ev.OnnxScorer(path)
    audio = tone_signal([(0.0, 2.0, 1000.0)], seconds=2.0)
    windows = scorer.windows(audio, hop_frames=25)
    mel = MnLogMel(MN04_FEATURES, MN04_PARAMS)(audio)
    np.testing.assert_array_equal(windows[0], mel[:scorer.meta.frames])
    scores = scorer.scores(windows)
    assert scores[:, 0].min() > 0.9 and scores[:, 1].max() < 0.1  # siren band, not dog_bark
