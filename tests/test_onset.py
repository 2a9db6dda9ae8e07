"""Onset windows: a sudden rise of the level makes the pipeline decide on a finer grid."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from detector.config import Config, EventsConfig, ModelConfig, MqttConfig
from detector.errors import ConfigError
from detector.model.classifier import Classifier
from detector.audio.onset import OnsetDetector, OnsetSpans
from detector.pipeline import Pipeline
from onnx_models import make_band_model, tone_signal
from test_pipeline import ArraySource, Collector

SR = 16000


def noise(seconds: float, dbfs: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (10 ** (dbfs / 20) * rng.standard_normal(int(seconds * SR))).astype(np.float32)


def burst_signal() -> np.ndarray:
    """3 s of -60 dBFS noise, a 1 kHz tone at -20 dBFS from 3.0 to 4.5 s, noise to 6 s."""
    y = noise(6.0, -60.0)
    t = np.arange(int(1.5 * SR)) / SR
    y[3 * SR:int(4.5 * SR)] += (0.1 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    return y


def onsets_in_blocks(signal, sizes) -> list[int]:
    det = OnsetDetector(160)
    out, pos, i = [], 0, 0
    while pos < len(signal):
        n = sizes[i % len(sizes)]
        out += det.feed(signal[pos:pos + n])
        pos, i = pos + n, i + 1
    return out


def test_a_burst_in_quiet_noise_rises_just_after_it_begins():
    found = onsets_in_blocks(burst_signal(), [800])
    assert found, "no onset found"
    assert found[0] <= 3 * SR + 160
    # a 40 dB rise stays 10 dB above the mean of the second before for a few frames
    # (that second fills with the burst), then no more onsets while it lasts or ends
    assert all(3 * SR <= p <= int(3.15 * SR) for p in found), found


def test_steady_sound_and_quiet_have_no_onsets():
    assert onsets_in_blocks(noise(5.0, -60.0), [800]) == []
    assert onsets_in_blocks(noise(5.0, -20.0), [800]) == []
    t = np.arange(5 * SR) / SR
    assert onsets_in_blocks((0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), [800]) == []
    # digital silence never rises above the floor
    assert onsets_in_blocks(np.zeros(3 * SR, np.float32), [800]) == []


def test_a_quiet_rise_below_the_floor_is_not_an_onset():
    y = noise(4.0, -100.0)
    y[2 * SR:] += noise(2.0, -80.0, seed=1)  # 20 dB up, but below -70 dBFS
    assert onsets_in_blocks(y, [800]) == []
    assert OnsetDetector(160, floor_dbfs=-90.0).feed(y)


@pytest.mark.parametrize("sizes", [[1], [159, 161, 7], [16000 * 6], [3000, 17, 800]])
def test_onsets_do_not_depend_on_block_size(sizes):
    signal = burst_signal()
    signal[int(5.2 * SR):int(5.3 * SR)] += noise(0.1, -10.0, seed=3)  # a click in the tail
    assert onsets_in_blocks(signal, sizes) == onsets_in_blocks(signal, [800])


def test_reset_starts_positions_again():
    det = OnsetDetector(160)
    det.feed(noise(2.0, -60.0))
    det.reset()
    assert det.feed(burst_signal())[0] <= 3 * SR + 160


def test_spans_cover_from_the_onset_for_their_length():
    spans = OnsetSpans(1000)
    spans.add([5000, 5500])
    assert not spans.covers(4999)
    assert spans.covers(5000) and spans.covers(6400)
    assert spans.open_until == 6500
    assert not spans.covers(6501)
    assert spans.open_until is None  # both spans ended before the last query: dropped


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return Classifier(make_band_model(tmp_path_factory.mktemp("m") / "tiny.onnx"))


def config(onset_hop=0.0, seconds=1.0, **events) -> Config:
    return Config(events=EventsConfig(**events),
                  model=ModelConfig(onset_hop_seconds=onset_hop, onset_seconds=seconds),
                  mqtt=MqttConfig(node_id="test-node", level_interval_seconds=1.0))


def run(classifier, signal, cfg, block=800):
    sink = Collector()
    pipe = Pipeline(cfg, ArraySource(signal, block=block), classifier, [sink])
    pipe.run()
    return pipe, sink


def rel(stamp: str, origin: float) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() - origin


def start_of(pipe, sink, label) -> float:
    """Confirmation time of ``label``'s first start, from the stream start."""
    event = next(e for e in sink.events if e["type"] == "start" and e["label"] == label)
    return rel(event["start"], pipe.started_at) + event["duration_s"]


def test_windows_come_every_onset_hop_for_the_span_after_an_onset(classifier):
    signal = burst_signal()
    plain, plain_sink = run(classifier, signal, config())
    pipe, sink = run(classifier, signal, config(onset_hop=0.05, seconds=1.0))
    regular = np.array([w[2] for w in plain_sink.windows]) - plain.started_at
    times = np.array([w[2] for w in sink.windows]) - pipe.started_at
    assert np.allclose(np.diff(regular), 0.25, atol=1e-3)
    extra = times[np.min(np.abs(times[:, None] - regular[None, :]), axis=1) > 1e-3]
    # windows off the 0.25 s grid only within 1 s after the rising frames (3.0-3.15 s)
    assert len(extra) > 0
    assert extra.min() >= 3.0 and extra.max() <= 3.15 + 1.0, extra  # last rise + span
    assert pipe.onset_windows == len(extra) == pipe.windows - plain.windows
    steps = np.diff(np.sort(times[(times >= 3.05) & (times <= 3.95)]))
    assert np.allclose(steps, 0.05, atol=1e-3)


def test_onset_windows_decide_sooner_and_keep_the_events(classifier):
    signal = burst_signal()
    plain_pipe, plain = run(classifier, signal, config())
    pipe, sink = run(classifier, signal, config(onset_hop=0.05))
    assert [(e["type"], e["label"]) for e in sink.events] == \
        [(e["type"], e["label"]) for e in plain.events] == [("start", "siren"), ("end", "siren")]
    fast, slow = start_of(pipe, sink, "siren"), start_of(plain_pipe, plain, "siren")
    assert 3.0 < fast < slow, (fast, slow)


@pytest.mark.parametrize("block", [160, 4096, 16000 * 3, "random"])
def test_onset_windows_do_not_depend_on_block_size(classifier, block):
    signal = tone_signal([(1.0, 2.5, 1000.0), (2.0, 3.0, 3000.0)], 5.0)
    ref_pipe, ref = run(classifier, signal, config(onset_hop=0.05), block=800)
    if block == "random":
        sink = Collector()
        pipe = Pipeline(config(onset_hop=0.05), ArraySource(signal, seed=7), classifier, [sink])
        pipe.run()
    else:
        pipe, sink = run(classifier, signal, config(onset_hop=0.05), block=block)
    assert ref_pipe.onset_windows > 0
    assert pipe.windows == ref_pipe.windows and pipe.onset_windows == ref_pipe.onset_windows
    assert [(e["type"], e["label"], e["peak_score"]) for e in sink.events] == \
        [(e["type"], e["label"], e["peak_score"]) for e in ref.events]
    for a, b in zip(sink.events, ref.events):  # same times (to the 1 ms of the ISO stamps)
        assert rel(a["start"], pipe.started_at) == pytest.approx(
            rel(b["start"], ref_pipe.started_at), abs=0.0015)


def test_steady_sound_costs_no_onset_windows(classifier):
    t = np.arange(6 * SR) / SR
    steady = (0.1 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    plain, _ = run(classifier, steady, config())
    pipe, _ = run(classifier, steady, config(onset_hop=0.05))
    assert pipe.onset_windows == 0 and pipe.windows == plain.windows


def test_an_onset_hop_that_does_not_divide_the_hop_is_rounded_down_to_a_divisor(classifier):
    # hop 0.25 s = 25 columns: 0.1 s (10 columns) becomes 5, 0.03 s (3 columns) becomes 1
    pipe = Pipeline(config(onset_hop=0.1), ArraySource(np.zeros(SR)), classifier, [])
    assert pipe.onset_columns == 5
    pipe = Pipeline(config(onset_hop=0.03), ArraySource(np.zeros(SR)), classifier, [])
    assert pipe.onset_columns == 1
    # equal to the hop, or 0: nothing extra
    for off in (0.25, 0.0):
        pipe = Pipeline(config(onset_hop=off), ArraySource(np.zeros(SR)), classifier, [])
        assert pipe.onset_columns == pipe.hop_columns


def test_onset_windows_are_on_by_default():
    assert ModelConfig().onset_hop_seconds == 0.05
