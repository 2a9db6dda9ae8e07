"""export.baselines end to end on a tiny generated UrbanSound8K-layout dataset."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

from export import baselines  # noqa: E402

SR = 16000


def make_dataset(root):
    """Two classes (hum vs. tone) in three folds, two recordings (fsID) per class and fold."""
    rng = np.random.default_rng(0)
    rows = []
    t = np.arange(SR) / SR
    for fold in (1, 2, 3):
        (root / "audio" / f"fold{fold}").mkdir(parents=True)
        for class_id, name in ((0, "air_conditioner"), (8, "siren")):
            for rec in range(2):
                fsid = fold * 100 + class_id * 10 + rec
                if class_id == 0:
                    y = 0.2 * np.sin(2 * np.pi * 120 * t) + 0.05 * rng.standard_normal(SR)
                else:
                    y = 0.3 * np.sin(2 * np.pi * (900 + 300 * np.sin(2 * np.pi * t)) * t)
                fname = f"{fsid}-{class_id}-0-0.flac"
                sf.write(root / "audio" / f"fold{fold}" / fname, y.astype(np.float32), SR)
                rows.append([fname, fsid, 0.0, 1.0, 1, fold, class_id, name])
    (root / "metadata").mkdir()
    with (root / "metadata" / "UrbanSound8K.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slice_file_name", "fsID", "start", "end", "salience", "fold",
                         "classID", "class_name"])
        writer.writerows(rows)


def test_random_splits_keep_test_sizes_and_cover_every_clip():
    folds = np.array([1] * 5 + [2] * 7 + [3] * 4)
    splits = list(baselines.random_splits(folds, seed=0, rotations=3))
    assert [len(te) for _, _, te in splits] == [5, 7, 4]
    assert sorted(np.concatenate([te for _, _, te in splits]).tolist()) == list(range(16))
    for _, tr, te in splits:
        assert not set(tr) & set(te) and len(tr) + len(te) == 16
    official = list(baselines.official_splits(folds))
    assert [name for name, *_ in official] == ["fold1", "fold2", "fold3"]
    assert all(set(folds[te]) == {int(n[-1])} for n, _, te in official)


@pytest.mark.slow
@pytest.mark.train
def test_baselines_end_to_end_on_generated_data(tmp_path, capsys):
    data = tmp_path / "data" / "urbansound8k"
    make_dataset(data)
    res = tmp_path / "results"
    code = baselines.main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "work"),
                           "--results-dir", str(res), "--crnn-epochs", "1",
                           "--mlp-epochs", "30", "--cnn-epochs", "1", "--cnn-hop-frames", "25",
                           "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    result = json.loads((res / "baselines.json").read_text())
    assert result["folds"] == [1, 2, 3] and result["n_clips"] == 12
    mlp = result["models"]["feature-MLP"]
    assert set(mlp["official"]["per_split"]) == {"fold1", "fold2", "fold3"}
    assert mlp["random"]["n_splits"] == 3
    # Hum vs. tone is trivially separable from the feature table.
    assert mlp["official"]["mean"] >= 0.75
    assert mlp["cost"]["onnx_bytes"] > 1000 and mlp["cost"]["params"] > 40000
    cnn = result["models"]["log-mel CNN"]
    assert cnn["official"]["n_splits"] == 3 and cnn["random"]["n_splits"] == 1
    assert cnn["cost"]["window_ms_p50"] > 0
    crnn_row = result["models"]["CNN+LSTM"]
    assert crnn_row["official"]["n_splits"] == 3 and crnn_row["cost"]["params"] > 100000
    assert (res / "baselines.png").read_bytes()[:4] == b"\x89PNG"
    table = (res / "baselines.md").read_text()
    assert "feature-MLP | official" in table and "CNN+LSTM | official" in table
    # The feature table is cached for the next run.
    assert (tmp_path / "work" / "features.csv").is_file()



def test_missing_dataset_is_one_line(tmp_path, capsys):
    code = baselines.main(["--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "no UrbanSound8K found" in capsys.readouterr().err
