"""Threshold policy: just above what the held-out negatives reach, never below the floor."""

from __future__ import annotations

import numpy as np
import pytest

from export.falsealarm import FLOOR, MARGIN
from export.train import calibrate_thresholds, false_alarms


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
    assert thr["c"] == pytest.approx((0.1 + 0.995) / 2 + MARGIN, abs=1e-3)
    assert calibrate_thresholds([loud_b * 0 + 1.0], labels, ["b"])["b"] == 0.99  # the ceiling
    # by construction none of the calibration negatives fires at those thresholds
    assert false_alarms([quiet, loud_b, spike_c], labels, thr)["fired"] == 0
    # a new negative louder than all of them does
    louder = quiet.copy()
    louder[:, 1] = 0.95
    assert false_alarms([louder], labels, thr)["fired"] == 1
