"""Threshold policy: just above what the held-out negatives reach, never below the floor."""

from __future__ import annotations

import numpy as np
import pytest

from export.train import FLOOR, MARGIN, calibrate_thresholds, false_alarms


def test_thresholds_sit_a_margin_above_the_loudest_negative_within_floor_and_ceiling():
    labels = ["a", "b", "c", "background"]
    quiet = np.array([[0.1, 0.1, 0.1, 0.7]] * 4, np.float32)
    loud_b = quiet.copy()
    loud_b[1:3, 1] = 0.8                       # two windows in a row: smoothed peak 0.8
    spike_c = quiet.copy()
    spike_c[2, 2] = 0.995                      # one window only: smoothing halves it
    thr = calibrate_thresholds([quiet, loud_b, spike_c], labels, ["a", "b", "c"],
                               floor=FLOOR, margin=MARGIN)
    assert thr["a"] == FLOOR                   # negatives never came near: the floor
    assert thr["b"] == pytest.approx(0.8 + MARGIN)
    assert thr["c"] == pytest.approx(max(FLOOR, (0.1 + 0.995) / 2 + MARGIN), abs=1e-3)
    assert calibrate_thresholds([spike_c], labels, ["c"], floor=0.3, margin=MARGIN)["c"] == \
        pytest.approx((0.1 + 0.995) / 2 + MARGIN, abs=1e-3)
    assert calibrate_thresholds([loud_b * 0 + 1.0], labels, ["b"])["b"] == 0.99  # the ceiling
    # by construction none of the calibration negatives fires at those thresholds
    assert false_alarms([quiet, loud_b, spike_c], labels, thr)["fired"] == 0
    # a new negative louder than all of them does
    louder = quiet.copy()
    louder[:, 1] = 0.95
    assert false_alarms([louder], labels, thr)["fired"] == 1


def test_leave_one_out_replays_each_negative_with_thresholds_from_the_others(tmp_path):
    """Four everyday-sound files; one holds a loud 1 kHz tone the band model calls
    'siren'. Calibrated without it, the siren threshold sits at the floor, so that file (and
    only that file) fires when replayed through the daemon."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from onnx_models import make_band_model, write_tone_wav

    from detector.model import Classifier
    from export.falsealarm import cross_calibrate, false_alarm_rate

    model = make_band_model(tmp_path / "band.onnx", thresholds={"siren": 0.5, "dog_bark": 0.5})
    quiet = [write_tone_wav(tmp_path / f"room{i}.wav", [], 3.0, noise_dbfs=-50 - 3 * i)
             for i in range(3)]
    siren_like = write_tone_wav(tmp_path / "kettle.wav", [(0.5, 2.8, 1000.0)], 3.0,
                                noise_dbfs=-50)
    result = cross_calibrate(model, quiet + [siren_like])
    fa = result["false_alarms"]
    assert fa["method"] == "leave-one-out" and fa["clips"] == 4
    assert fa["fired_files"] == {"kettle.wav": ["siren"]}
    assert fa["fired"] == 1 and fa["rate"] == 0.25 and fa["labels"] == {"siren": 1}
    # the kettle saturates the band model (score ~1.0): the ceiling is as high as it goes
    assert result["thresholds"]["siren"] == 0.99
    assert result["thresholds"]["dog_bark"] == FLOOR
    assert Classifier(model).metadata.thresholds == result["thresholds"]   # written in place
    assert false_alarm_rate(model, quiet)["fired"] == 0
