"""The model card is generated from measured files: every number in it comes from them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from onnx_models import make_band_model  # noqa: E402

pytest.importorskip("matplotlib", reason="the card copies PNGs made with matplotlib")


def _png(path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(1, 1))
    fig.savefig(path)
    plt.close(fig)


def test_card_reports_the_runs_numbers_and_settings(tmp_path):
    from export.model_card import main

    labels = ["siren", "dog_bark"]
    models = tmp_path / "models"
    models.mkdir()
    make_band_model(models / "default.onnx", labels=labels + ["background"],
                    background_labels=["background"], thresholds={"siren": 0.71, "dog_bark": 0.5},
                    extra_props={"trained_on": "generated data"})
    run = tmp_path / "run"
    run.mkdir()
    _png(run / "curves.png")
    per_class = {x: {"precision": 0.5, "recall": 0.25, "f1": 0.33, "support": 4} for x in labels}
    test = {"accuracy": 0.625, "window_accuracy": 0.5, "n": 8, "labels": labels,
            "per_class": per_class, "confusion": [[3, 1], [2, 2]]}
    config = {"model_version": "9.9.9", "window_seconds": 1.0, "window_hop_seconds": 0.25,
              "folds": [1, 2], "test_folds": [], "label_smoothing": 0.05, "epochs": 7,
              "batch_size": 32, "learning_rate": 0.002, "seed": 0, "teacher": "t.npz",
              "teacher_weight": 50.0, "probe_weight": 0.5, "crops_per_clip": 2,
              "mixup_alpha": 0.4, "ema_momentum": 0.998, "background_boost": 1.0,
              "augment": {"mix_prob": 0.5, "specaugment_prob": 0.8, "warp_prob": 0.0,
                          "onset_prob": 0.0}, "folders": []}
    report = {"config": config, "labels": labels + ["background"], "frames": 97,
              "parameters": 1234, "onnx_bytes": 2_000_000, "ms_per_window_1thread": 1.5,
              "parity_max_abs_diff": 3e-7, "train_seconds": 1234.0,
              "daemon_false_alarms": {"method": "leave-one-out", "clips": 46, "fired": 2,
                                      "rate": 2 / 46, "labels": {"siren": 2},
                                      "policy": {"floor": 0.55, "margin": 0.1}}}
    (run / "report.json").write_text(json.dumps(report))
    cv = tmp_path / "cv"
    cv.mkdir()
    _png(cv / "confusion.png")
    fold = {"accuracy": 0.625, "window_accuracy": 0.5, "accuracy_all_outputs": 0.6, "n": 8,
            "daemon_false_alarms": report["daemon_false_alarms"]}
    agg = {"accuracy_mean": 0.625, "accuracy_std": 0.01, "window_accuracy_mean": 0.5,
           "window_accuracy_std": 0.02, "per_class": per_class, "labels": labels,
           "confusion": [[3, 1], [2, 2]]}
    (cv / "crossval.json").write_text(json.dumps({
        "folds": {"1": fold, "2": fold, "3": fold}, "test_restricted": agg,
        "test_all_outputs": {**agg, "accuracy_mean": 0.6}}))
    assert main(["--run", str(run), "--crossval", str(cv), "--model",
                 str(models / "default.onnx"), "--command", "python -m export train X",
                 "--cv-command", "python -m export crossval Y", "--note", "a reference: 69.1%",
                 "--load-note", "nothing else running"]) == 0
    card = (models / "MODEL_CARD.md").read_text()
    assert "model_version `9.9.9`" in card and "1,234 parameters" in card
    assert "**62.5% +- 1.0%**" in card                         # CV mean +- std
    assert "2 of 46 clips (4.3%)" in card and "siren: 2" in card  # swapped false alarms
    assert "siren 0.71, dog_bark 0.5" in card                  # thresholds from the model file
    assert "+ 0.1, within 0.55..0.99" in card                  # the policy of the run
    assert "in-batch mixup (alpha 0.4)" in card and "EMA 0.998" in card
    assert "2 random 1.0 s crop(s)" in card and "time stretch" not in card
    assert "20.6 min on 2 CPU cores (nothing else running)" in card
    assert "a reference: 69.1%" in card and "python -m export train X" in card
    assert (models / "cv_confusion.png").is_file() and (models / "training_curves.png").is_file()
    assert np.isfinite(float(card.split("parity on real windows: max abs diff ")[1][:7]))


def test_measure_reports_leave_one_out_negatives_as_in_sample(tmp_path):
    """With thresholds calibrated on every held-out file, no half of them is 'unseen'."""
    from onnx_models import write_tone_wav

    from export.model_card import measure

    data = tmp_path / "sesa" / "casual"
    data.mkdir(parents=True)
    for name in ("a.wav", "b.wav"):
        write_tone_wav(data / name, [], 2.0, noise_dbfs=-50)
    model = make_band_model(tmp_path / "m.onnx", thresholds={"siren": 0.5, "dog_bark": 0.5})
    run = tmp_path / "run"
    run.mkdir()
    report = {"config": {"folders": [str(tmp_path / "sesa")]},
              "heldout_files": {"calibration": ["a.wav"], "false_alarm_check": ["b.wav"]},
              "daemon_false_alarms": {"method": "leave-one-out", "clips": 2, "fired": 0}}
    (run / "report.json").write_text(json.dumps(report))
    result = measure(model, run)
    assert set(result) == {"false_alarms_all_heldout_in_sample"}
    assert result["false_alarms_all_heldout_in_sample"]["clips"] == 2
    del report["daemon_false_alarms"]                 # an older run: halves kept apart
    (run / "report.json").write_text(json.dumps(report))
    assert set(measure(model, run)) == {"false_alarms_check", "false_alarms_calibration"}
