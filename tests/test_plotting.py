"""`replay --plot`: score curves with fired events and thresholds."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from detector.cli import plotting  # noqa: E402
from detector.errors import DetectorError  # noqa: E402

LABELS = ["air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling",
          "engine_idling", "gun_shot", "jackhammer", "siren", "street_music", "background"]
T0 = "2026-01-01T12:00:00+00:00"


def recording(n=120, hop=0.25, seed=0):
    rng = np.random.default_rng(seed)
    times = np.arange(1, n + 1) * hop
    scores = rng.uniform(0, 0.15, (n, len(LABELS)))
    scores[20:40, 3] = 0.9   # dog_bark 5..10 s
    scores[60:90, 8] = 0.8   # siren 15..22.5 s
    return times, scores


def events():
    return [
        {"id": "a", "type": "start", "label": "dog_bark", "score": 0.9, "peak_score": 0.9,
         "start": "2026-01-01T12:00:05+00:00", "end": None, "duration_s": None},
        {"id": "a", "type": "end", "label": "dog_bark", "score": 0.2, "peak_score": 0.95,
         "start": "2026-01-01T12:00:05+00:00", "end": "2026-01-01T12:00:10Z",
         "duration_s": 5.0},
        {"id": "b", "type": "start", "label": "gun_shot", "score": 0.6, "peak_score": 0.6,
         "start": "2026-01-01T12:00:15.5Z", "end": None, "duration_s": None},
    ]


def test_event_spans_from_iso_times_and_stream_start():
    spans = plotting.event_spans(events(), stream_start=T0, stream_end=30.0)
    assert [(s[0], round(s[1], 3), round(s[2], 3), s[3]) for s in spans] == [
        ("dog_bark", 5.0, 10.0, 0.95),
        ("gun_shot", 15.5, 30.0, 0.6),  # still open at the end of the recording
    ]


def test_event_spans_prefer_offsets_and_fall_back_to_duration():
    evs = [{"id": "x", "type": "end", "label": "siren", "offset_s": 3.0, "duration_s": 2.5,
            "start": "garbage", "peak_score": 0.7}]
    assert plotting.event_spans(evs) == [("siren", 3.0, 5.5, 0.7)]


def test_unplaceable_events_are_skipped_with_a_warning(caplog):
    assert plotting.event_spans(events(), stream_start=None) == []
    assert "could not be placed" in caplog.text


def test_choose_labels_keeps_fired_classes_even_with_low_scores():
    _, scores = recording()
    chosen = plotting.choose_labels(scores, LABELS, ["gun_shot"], max_labels=3)
    assert len(chosen) == 3
    assert chosen[0] == LABELS.index("gun_shot")
    assert set(chosen[1:]) == {LABELS.index("dog_bark"), LABELS.index("siren")}


def test_plot_scores_writes_a_png(tmp_path):
    import matplotlib.image

    times, scores = recording()
    out = plotting.plot_scores(times, scores, LABELS, events(), tmp_path / "scores.png",
                               thresholds={"dog_bark": (0.5, 0.3), "siren": 0.6},
                               stream_start=T0, max_labels=4)
    pixels = matplotlib.image.imread(out)
    assert pixels.shape[0] > 400 and pixels.shape[1] > 800
    assert pixels[..., :3].std() > 0.05


def test_plot_scores_with_many_labels_and_no_events(tmp_path):
    rng = np.random.default_rng(1)
    labels = [f"class_{i}" for i in range(60)]
    out = plotting.plot_scores(np.arange(10) * 0.5, rng.uniform(size=(10, 60)), labels, [],
                               tmp_path / "many.png", thresholds=0.5)
    assert out.stat().st_size > 1000


def test_plot_scores_rejects_mismatched_shapes(tmp_path):
    with pytest.raises(DetectorError, match="does not match"):
        plotting.plot_scores([0.0, 1.0], np.zeros((3, 2)), ["a", "b"], [],
                             tmp_path / "x.png")
    with pytest.raises(DetectorError, match="does not exist"):
        plotting.plot_scores([0.0], np.zeros((1, 1)), ["a"], [],
                             tmp_path / "missing" / "x.png")


def test_plot_scores_without_matplotlib_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None; sys.modules['matplotlib.figure'] = None\n"
            "from detector.cli.plotting import plot_scores\n"
            "from detector.errors import DetectorError\n"
            "try:\n    plot_scores([0.0], [[0.5]], ['a'], [], 'x.png')\n"
            "except DetectorError as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "[analysis] extra" in proc.stdout


def test_heat_cells_reach_half_way_between_uneven_window_times():
    # the regular 0.25 s grid plus onset windows 0.05 s apart at a sound's start
    times = np.array([0.25, 0.5, 0.75, 0.8, 0.85, 0.9, 1.0, 1.25])
    edges = plotting.heat_cell_edges(times)
    assert edges.shape == (times.size + 1,)
    assert np.all(np.diff(edges) > 0)
    assert np.all((edges[:-1] < times) & (times < edges[1:]))  # each window in its cell
    assert np.allclose(edges[1:-1], (times[:-1] + times[1:]) / 2)  # half-way between


def test_heat_map_is_drawn_on_the_window_times(tmp_path, monkeypatch):
    """The demo's case: with onset windows the bright cells sat half a second after the
    event bar, since an image spaces its columns evenly. The mesh's column edges must
    put every window's cell around that window's own time."""
    import matplotlib.axes

    times = np.concatenate([np.arange(1, 45) * 0.25, [9.05, 9.1, 9.15, 9.2]])
    order = np.argsort(times, kind="stable")
    times = times[order]
    scores = np.zeros((times.size, len(LABELS)))
    scores[(times >= 9.05) & (times <= 9.5), LABELS.index("car_horn")] = 1.0
    drawn = {}
    original = matplotlib.axes.Axes.pcolormesh

    def spy(self, x, y, c, *a, **k):
        drawn.setdefault("x", np.asarray(x))  # the first mesh: the colorbar draws one too
        drawn.setdefault("c", np.asarray(c))
        return original(self, x, y, c, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "pcolormesh", spy)
    plotting.plot_scores(times, scores, LABELS, [], tmp_path / "uneven.png")
    row = drawn["c"][0]  # car_horn scores highest: the top row
    bright = np.flatnonzero(row > 0.5)
    left, right = drawn["x"][bright[0]], drawn["x"][bright[-1] + 1]
    assert 9.0 <= left <= 9.05 and 9.5 <= right <= 9.625
