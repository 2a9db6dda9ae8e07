"""The pipeline's stages on their own: the window grid, the level meter and the decisions."""

from __future__ import annotations

import numpy as np
import pytest

from detector.audio.level import LevelMeter, dbfs
from detector.audio.windows import WindowGrid
from detector.config import EventsConfig
from detector.events import Decisions, EventTracker

SR, N_FFT, HOP = 16000, 400, 160


def grid(**kw) -> WindowGrid:
    base = dict(frames=10, n_mels=4, n_fft=N_FFT, hop_length=HOP, sample_rate=SR, hop_columns=5)
    base.update(kw)
    return WindowGrid(**base)


def windows(g: WindowGrid, columns: np.ndarray, block: int):
    out = []
    for i in range(0, columns.shape[0], block):
        for col_end, window, regular in g.add(columns[i:i + block]):
            out.append((col_end, window.copy(), regular))
    return out


@pytest.mark.parametrize("block", [1, 3, 7, 64, 2000])
def test_windows_are_the_same_for_any_block_size(block):
    columns = np.arange(2000 * 4, dtype=np.float32).reshape(2000, 4)
    got = windows(grid(), columns, block)
    ends = [c for c, _, _ in got]
    # due after column 10, then every 5 columns; column c ends at n_fft + (c - 1) * hop
    assert ends == [N_FFT + (c - 1) * HOP for c in range(10, 2001, 5)]
    for (col_end, window, regular), c in zip(got, range(10, 2001, 5)):
        assert regular
        np.testing.assert_array_equal(window, columns[c - 10:c])
    assert len(got) == len(windows(grid(), columns, 2000))


def test_onset_windows_only_while_an_onset_span_is_open():
    g = grid(onset_hop_seconds=HOP / SR, onset_rise_db=10.0, onset_seconds=0.05,
             gate_dbfs=-80.0)
    assert g.onset_columns == 1
    onset = 3 * SR // 2  # a sudden rise after 1.5 s of quiet (the detector needs 1 s)
    g.feed(np.full(onset, 1e-3, dtype=np.float32))
    before = windows(g, np.zeros((140, 4), np.float32), 7)  # columns ending before it
    assert before and all(regular for _, _, regular in before)
    g.feed(np.full(SR // 2, 0.5, dtype=np.float32))
    got = windows(g, np.zeros((100, 4), np.float32), 1)
    irregular = [c for c, _, regular in got if not regular]
    assert irregular and g.onset_windows == len(irregular)
    # the level keeps rising above the last second for ~10 frames, each an onset
    assert onset <= min(irregular) and max(irregular) <= onset + 0.2 * SR
    regular_after = [c for c, _, regular in got if regular]
    assert len(regular_after) == 20  # the regular grid goes on unchanged


def test_onset_hop_snaps_to_a_divisor_of_the_window_hop():
    assert grid(onset_hop_seconds=3 * HOP / SR, hop_columns=10).onset_columns == 2
    assert grid().onset_columns == 5  # off: the regular hop


def test_level_meter_reports_the_leq_of_each_interval():
    meter = LevelMeter(1.0)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.1, 3 * SR)
    reports = []
    for i in range(0, x.shape[0], 1000):
        block = x[i:i + 1000]
        reports += meter.add(block, (i + block.shape[0]) / SR, 0.0)
    assert [when for _, when in reports] == [1.0, 2.0, 3.0]
    first_block_end = int(np.ceil(SR / 1000) * 1000)  # the interval closes with its block
    assert reports[0][0] == pytest.approx(dbfs(float(x[:first_block_end] @ x[:first_block_end]),
                                               first_block_end))


def test_decisions_carry_replay_offsets_and_pass_everything_without_a_gate():
    tracker = EventTracker(["siren"], EventsConfig(smoothing_windows=1, min_duration_seconds=0.0,
                                                   cooldown_seconds=0.0, gate_dbfs=-100.0))
    d = Decisions(tracker, None, file_offsets=True, record_candidates=True)
    d.started_at = 100.0
    out = []
    for k, score in enumerate([0.0, 0.95, 0.95, 0.0, 0.0]):
        now = 100.0 + 0.25 * k
        d.window(now, 0.25 * k + 1.0)
        out += [d.stamp(e) for e in d.update([score], -20.0, now)]
    assert [e["type"] for e in out] == ["start", "end"]
    assert out[0]["offset_s"] == out[1]["offset_s"] == 1.25  # the onset window's position
    assert out[0]["published_offset_s"] == 1.25
    assert d.candidates == []  # recorded only when a gate decides
