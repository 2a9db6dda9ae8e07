"""EventTracker driven by a synthetic clock: no sleeping, every rule exercised."""

from __future__ import annotations

import re
import uuid
from datetime import datetime

import pytest

from detector.config import ConfigError, EventsConfig
from detector.events import EVENT_KEYS, EventTracker, iso_utc

LABELS = ("siren", "dog_bark", "background")
T0 = 1_700_000_000.0
HOP = 0.25
LOUD = -20.0


def tracker(**settings) -> EventTracker:
    base = dict(smoothing_windows=1, cooldown_seconds=0.0, min_duration_seconds=0.0)
    base.update(settings)
    thresholds = base.pop("model_thresholds", None)
    return EventTracker(LABELS, EventsConfig(**base), thresholds,
                        background_labels=("background",), node="node1", model="m1")


def drive(tr: EventTracker, rows, level=LOUD, start=0):
    """Feed rows of (siren, dog_bark) scores one hop apart; return [(window, event)]."""
    out = []
    for i, row in enumerate(rows, start=start):
        levels = level if isinstance(level, list) else [level] * len(rows)
        for event in tr.update([row[0], row[1], 0.9], levels[i - start], T0 + i * HOP):
            out.append((i, event))
    return out


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() - T0


def test_onset_and_offset_with_contract_payload():
    tr = tracker()
    got = drive(tr, [(0.1, 0)] * 2 + [(0.8, 0)] * 4 + [(0.1, 0)] * 2)
    assert [(i, e["type"], e["label"]) for i, e in got] == [(2, "start", "siren"),
                                                            (6, "end", "siren")]
    start, end = got[0][1], got[1][1]
    for event in (start, end):
        assert tuple(event) == EVENT_KEYS
        uuid.UUID(event["id"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["start"])
        assert event["node"] == "node1" and event["model"] == "m1"
    assert start["id"] == end["id"]  # one event, one id: pair start and end by it
    assert start["end"] is None and start["duration_s"] == 0.0
    assert seconds(start["start"]) == pytest.approx(2 * HOP)
    assert end["start"] == start["start"]
    assert seconds(end["end"]) == pytest.approx(6 * HOP)
    assert end["duration_s"] == pytest.approx(4 * HOP)
    assert start["score"] == 0.8 and end["peak_score"] == 0.8 and end["score"] == 0.8
    assert end["level_dbfs"] == LOUD


def test_hysteresis_keeps_event_open_between_off_and_on():
    tr = tracker(threshold_on=0.6, off_ratio=0.5)  # off = 0.3
    got = drive(tr, [(0.7, 0), (0.4, 0), (0.35, 0), (0.5, 0), (0.29, 0), (0.5, 0)])
    assert [(i, e["type"]) for i, e in got] == [(0, "start"), (4, "end")]
    # 0.5 after the end is above off but below on: no new start
    assert tr.active == ()


def test_peak_and_mean_score_and_loudest_level():
    tr = tracker()
    got = drive(tr, [(0.6, 0), (0.9, 0), (0.6, 0), (0.0, 0)], level=[-30.0, -10.0, -25.0, -40.0])
    end = got[-1][1]
    assert end["peak_score"] == 0.9
    assert end["score"] == pytest.approx(0.7, abs=1e-4)
    assert end["level_dbfs"] == -10.0


def test_min_duration_confirms_late_but_backdates_start():
    tr = tracker(min_duration_seconds=0.5)
    got = drive(tr, [(0.9, 0)] * 3 + [(0.0, 0)])
    assert [(i, e["type"]) for i, e in got] == [(2, "start"), (3, "end")]
    start = got[0][1]
    assert seconds(start["start"]) == 0.0
    assert start["duration_s"] == pytest.approx(0.5)


def test_min_duration_drops_short_blips():
    tr = tracker(min_duration_seconds=0.5)
    assert drive(tr, [(0.9, 0), (0.9, 0), (0.0, 0), (0.0, 0)]) == []
    assert tr.flush(T0 + 10) == []


def test_cooldown_blocks_restart_then_allows_it():
    tr = tracker(cooldown_seconds=1.0)
    rows = [(0.9, 0), (0.0, 0)] + [(0.9, 0)] * 3 + [(0.9, 0)] * 2
    got = drive(tr, rows)
    # end at window 1 (t=0.25): blocked until t=1.25 = window 5
    assert [(i, e["type"]) for i, e in got] == [(0, "start"), (1, "end"), (5, "start")]


def test_simultaneous_labels_are_independent():
    tr = tracker()
    got = drive(tr, [(0.9, 0.0), (0.9, 0.9), (0.0, 0.9), (0.0, 0.0)])
    assert [(i, e["type"], e["label"]) for i, e in got] == [
        (0, "start", "siren"), (1, "start", "dog_bark"), (2, "end", "siren"),
        (3, "end", "dog_bark")]
    assert tr.active == ()


def test_background_label_never_fires():
    tr = tracker()
    assert drive(tr, [(0.0, 0.0)] * 5) == []  # background scores 0.9 throughout
    assert tr.smoothed["background"] == pytest.approx(0.9)
    assert "background" not in tr.event_labels


def test_energy_gate_zeroes_quiet_windows():
    tr = tracker(gate_dbfs=-50.0)
    got = drive(tr, [(0.9, 0)] * 4, level=[-60.0, -60.0, -40.0, -60.0])
    assert [(i, e["type"]) for i, e in got] == [(2, "start"), (3, "end")]
    assert tr.smoothed["siren"] == 0.0


def test_smoothing_is_the_mean_of_the_last_windows():
    tr = tracker(smoothing_windows=3)
    got = drive(tr, [(0.9, 0), (0.9, 0), (0.0, 0), (0.0, 0), (0.0, 0)])
    # smoothed: 0.9, 0.9, 0.6, 0.3 (< 0.35 off) -> end at window 3
    assert [(i, e["type"]) for i, e in got] == [(0, "start"), (3, "end")]
    # a single spike averaged over 3 windows stays below 0.5
    tr2 = tracker(smoothing_windows=3)
    assert drive(tr2, [(0.0, 0), (0.0, 0), (0.9, 0), (0.0, 0)]) == []


def test_threshold_precedence_config_over_model_over_default():
    tr = tracker(thresholds={"siren": 0.8}, model_thresholds={"siren": 0.3, "dog_bark": 0.3})
    assert tr.thresholds("siren") == (0.8, pytest.approx(0.56))
    assert tr.thresholds("dog_bark") == (0.3, pytest.approx(0.21))
    got = drive(tr, [(0.5, 0.5)])
    assert [e["label"] for _, e in got] == ["dog_bark"]
    tr2 = tracker(thresholds_off={"siren": 0.1})
    assert tr2.thresholds("siren") == (0.5, 0.1)


def test_enabled_labels_from_config():
    tr = tracker(labels=("dog_bark",))
    got = drive(tr, [(0.9, 0.9), (0.0, 0.0)])
    assert {e["label"] for _, e in got} == {"dog_bark"}


def test_flush_closes_open_events_and_drops_pending():
    tr = tracker(min_duration_seconds=0.0)
    drive(tr, [(0.9, 0.9)])
    ends = tr.flush(T0 + 2.0)
    assert sorted(e["label"] for e in ends) == ["dog_bark", "siren"]
    assert all(e["type"] == "end" and seconds(e["end"]) == 2.0 for e in ends)
    assert tr.flush(T0 + 3.0) == []


def test_set_label_runtime_control():
    tr = tracker()
    drive(tr, [(0.9, 0.0)])
    assert tr.active == ("siren",)
    tr.set_label("siren", enabled=False)
    got = drive(tr, [(0.9, 0.0)] * 2, start=1)
    # the open event ends at the time of the last update before the change
    assert [(i, e["type"]) for i, e in got] == [(1, "end")]
    assert seconds(got[0][1]["end"]) == 0.0
    tr.set_label("siren", enabled=True, threshold_on=0.95)
    assert drive(tr, [(0.9, 0.0)], start=3) == []
    tr.set_label("siren", threshold_on=0.8)
    assert tr.thresholds("siren") == (0.8, pytest.approx(0.56))
    tr.set_label("siren", threshold_off=0.2)
    tr.set_label("siren", threshold_on=0.7)  # an explicit off-threshold stays
    assert tr.thresholds("siren") == (0.7, 0.2)


@pytest.mark.parametrize("kwargs, message", [
    ({"label": "cat"}, "unknown label 'cat'"),
    ({"label": "background", "enabled": True}, "background label"),
    ({"label": "siren", "threshold_on": 1.5}, "must be a number in 0..1"),
    ({"label": "siren", "threshold_on": 0}, "must be > 0"),
    ({"label": "siren", "threshold_on": 0.4, "threshold_off": 0.5}, "must be <= threshold_on"),
])
def test_set_label_rejects_bad_values_and_changes_nothing(kwargs, message):
    tr = tracker()
    before = tr.thresholds("siren")
    with pytest.raises(ConfigError, match=message):
        tr.set_label(**kwargs)
    assert tr.thresholds("siren") == before and tr.is_enabled("siren")


def test_config_naming_unknown_or_background_labels_is_refused():
    with pytest.raises(ConfigError, match="unknown label 'cat'"):
        tracker(thresholds={"cat": 0.5})
    with pytest.raises(ConfigError, match="background label"):
        tracker(labels=("background",))


def test_iso_utc_has_milliseconds_and_z():
    assert iso_utc(1_700_000_000.5) == "2023-11-14T22:13:20.500Z"


# ---------------------------------------------------------------- property-based
from hypothesis import given, settings, strategies as st  # noqa: E402

_rows = st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1),
                           st.floats(-100, 0)), min_size=1, max_size=120)


@settings(max_examples=300, deadline=None)
@given(rows=_rows, smoothing=st.integers(1, 4), min_dur=st.sampled_from([0.0, 0.25, 0.6]),
       cooldown=st.sampled_from([0.0, 0.5, 2.0]), gate=st.sampled_from([-100.0, -50.0]),
       on=st.floats(0.05, 1.0), ratio=st.floats(0.05, 1.0))
def test_event_stream_invariants(rows, smoothing, min_dur, cooldown, gate, on, ratio):
    tr = EventTracker(LABELS, EventsConfig(smoothing_windows=smoothing, min_duration_seconds=min_dur,
                                           cooldown_seconds=cooldown, gate_dbfs=gate,
                                           threshold_on=on, off_ratio=ratio),
                      background_labels=("background",))
    events = []
    for i, (a, b, c, level) in enumerate(rows):
        events += tr.update([a, b, c], level, T0 + i * HOP)
    events += tr.flush(T0 + len(rows) * HOP)
    assert tr.active == ()
    for label in ("siren", "dog_bark"):
        mine = [e for e in events if e["label"] == label]
        # strictly alternating start/end pairs, each end closing its start
        assert [e["type"] for e in mine] == ["start", "end"] * (len(mine) // 2)
        last_end = None
        for start, end in zip(mine[::2], mine[1::2]):
            assert end["start"] == start["start"]
            assert end["duration_s"] >= min_dur - 1e-9
            assert start["peak_score"] <= end["peak_score"] <= 1.0
            assert end["score"] <= end["peak_score"] + 1e-9
            if last_end is not None:  # cooldown respected
                assert seconds(start["start"]) >= last_end + cooldown - 1e-6
            last_end = seconds(end["end"])
    assert all(e["label"] != "background" for e in events)
    assert len({(e["id"], e["type"]) for e in events}) == len(events)
    assert len({e["id"] for e in events}) == len(events) // 2 + len(events) % 2


def test_float32_arrays_decide_exactly_like_python_floats():
    """The pipeline feeds float32 arrays (converted in one ``tolist``); a list of the same
    values as Python floats must give the same smoothed scores and events."""
    import numpy as np

    labels = ("siren", "dog_bark", "background")
    rng = np.random.default_rng(7)
    rows = rng.random((400, 3)).astype(np.float32)
    rows[100:140, 0] = 0.97
    cfg = EventsConfig(smoothing_windows=3, min_duration_seconds=0.5)
    a = EventTracker(labels, cfg, background_labels=("background",))
    b = EventTracker(labels, cfg, background_labels=("background",))
    for i, row in enumerate(rows):
        level = -20.0 if i % 50 else -90.0
        ea = a.update(row, level, i * 0.25)
        eb = b.update([float(x) for x in row], level, i * 0.25)
        assert a.smoothed == b.smoothed
        assert all(type(v) is float for v in a.smoothed.values())
        assert [{k: v for k, v in e.items() if k != "id"} for e in ea] == \
            [{k: v for k, v in e.items() if k != "id"} for e in eb]
    with pytest.raises(ValueError):
        a.update(np.zeros(2, dtype=np.float32), -20.0, 1000.0)
