"""Window augmentations of the training set: onset crops and in-batch mixup."""

from __future__ import annotations

import numpy as np
import pytest

from export.augment import onset_crop, power_sum_db


def test_onset_crop_puts_the_clip_start_at_the_window_end():
    rng = np.random.default_rng(0)
    frames, bands = 101, 8
    background = np.full((frames, bands), -100.0, dtype=np.float32)
    clip = np.tile(np.arange(300, dtype=np.float32)[:, None] * 0.01 - 20.0, (1, bands))
    for _ in range(50):
        window = onset_crop(clip, 300, frames, rng, background)
        loud = np.flatnonzero(window[:, 0] > -99.0)
        k = len(loud)
        assert 30 <= k <= 91
        assert loud[0] == frames - k and loud[-1] == frames - 1      # sound only at the end
        # the clip's first k frames, in order, summed with the background
        np.testing.assert_allclose(window[frames - k:], power_sum_db(background[frames - k:],
                                                                     clip[:k]), atol=1e-5)


def test_onset_crop_of_a_short_clip_never_reads_past_its_true_extent():
    rng = np.random.default_rng(1)
    background = np.full((101, 4), -100.0, dtype=np.float32)
    clip = np.full((400, 4), -100.0, dtype=np.float32)
    clip[:20] = -10.0                                  # 20 real frames, then repeated filler
    clip[20:] = 50.0
    for _ in range(20):
        window = onset_crop(clip, 20, 101, rng, background)
        assert window.max() < 0.0                      # the filler never appears
        assert (window[-20:] > -11).all()


def test_mixup_blends_windows_and_targets_alike_and_drops_half_missing_teacher_targets():
    pytest.importorskip("keras", reason="needs the [train] extra")
    from export.train import EpochData

    class Stub:
        rng = np.random.default_rng(0)

        class cfg:
            mixup_alpha = 0.4

    x = np.stack([np.full((5, 3, 1), v, np.float32) for v in (0.0, 10.0, 20.0, 30.0)])
    y = np.eye(4, dtype=np.float32)
    t = np.array([[0.2, 0.4], [0.6, 0.8], [-1, -1], [0.1, 0.1]], np.float32)
    mx, my, mt = EpochData.mixup(Stub, x.copy(), y.copy(), t.copy())
    np.testing.assert_allclose(my.sum(axis=1), 1.0, atol=1e-6)
    assert (my.max(axis=1) >= 0.5 - 1e-6).all()        # the window's own label dominates
    # a mixed window is the same convex blend of the inputs as its target is of the labels
    np.testing.assert_allclose(mx[:, 0, 0, 0], my @ x[:, 0, 0, 0], atol=1e-4)
    missing = mt[:, 0] < 0
    assert missing[2]                                  # its own teacher target was missing
    assert (mt[~missing] >= 0).all()


def test_warp_stretches_time_about_the_centre_and_shifts_bands():
    from export.augment import AugmentConfig, warp

    frames, bands = 101, 16
    window = np.zeros((frames, bands), dtype=np.float32)
    window[:, 8] = 10.0                       # one loud band
    window[50, :] += 5.0                      # one click at the centre frame
    cfg = AugmentConfig(stretch=(1.0, 1.0), band_shift=2)
    seen = set()
    rng = np.random.default_rng(0)
    for _ in range(40):
        out = warp(window, cfg, rng)
        assert out.shape == window.shape and out.dtype == np.float32
        band = int(np.argmax(out[0]))
        seen.add(band - 8)
        assert int(np.argmax(out[:, 0])) == 50    # rate 1: time untouched
    assert seen == {-2, -1, 0, 1, 2}
    # faster playback squeezes a ramp towards the centre: the slope grows by the rate
    ramp = np.tile(np.arange(frames, dtype=np.float32)[:, None], (1, 4))
    out = warp(ramp, AugmentConfig(stretch=(1.1, 1.1), band_shift=0), rng)
    assert np.diff(out[40:60, 0]).mean() == pytest.approx(1.1, rel=1e-3)
    assert out[50, 0] == pytest.approx(50.0)
