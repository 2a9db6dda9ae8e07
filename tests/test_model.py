"""Classifier on real (tiny) ONNX models: loading, checks, normalisation, bad files."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest

from detector.config import Config, ConfigError, EventsConfig, AudioConfig, ModelConfig
from detector.errors import ModelError
from detector.audio.features import FeatureParams, logmel
from detector.model.classifier import Classifier, check_against_model, default_model_path
from onnx_models import make_band_model, tone_signal


def window_of(segments, params=FeatureParams(), frames=97):
    return logmel(tone_signal(segments, 1.0, params.sample_rate), params)[:frames]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_band_model(tmp_path_factory.mktemp("m") / "tiny.onnx")


def test_tiny_model_loads_and_scores_tones(tiny):
    clf = Classifier(tiny)
    meta = clf.metadata
    assert clf.labels == ("siren", "dog_bark", "background")
    assert meta.frames == 97 and meta.background_labels == ("background",)
    assert clf.providers == ["CPUExecutionProvider"]
    siren = clf.predict(window_of([(0, 1, 1000.0)]))
    bark = clf.predict(window_of([(0, 1, 3000.0)]))
    silence = clf.predict(window_of([]))
    assert siren.dtype == np.float32 and siren.shape == (3,)
    assert siren[0] > 0.99 and siren[1] < 0.01
    assert bark[1] > 0.99 and bark[0] < 0.01
    assert silence[0] < 0.01 and silence[1] < 0.01


def test_single_thread_session_options(tiny):
    clf = Classifier(tiny, intra_op_threads=1)
    opts = clf.session.get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1


def test_normalization_from_metadata_is_applied(tmp_path):
    path = make_band_model(tmp_path / "norm.onnx", normalization={"mean": -40.0, "std": 25.0})
    clf = Classifier(path)
    # weights were built for normalised input: without (x - mean) / std the tone
    # score would be sigmoid(25 * ...) vs sigmoid(...); check the documented values
    w = window_of([(0, 1, 1000.0)])
    raw = make_band_model(tmp_path / "raw.onnx")
    assert np.allclose(clf.predict(w), Classifier(raw).predict(w), atol=1e-5)
    assert clf.predict(window_of([]))[0] < 0.01


def test_dynamic_frames_dimension_is_accepted(tmp_path):
    clf = Classifier(make_band_model(tmp_path / "dyn.onnx", input_frames="dynamic"))
    assert clf.predict(window_of([(0, 1, 1000.0)]))[0] > 0.99


def test_cuda_requested_falls_back_to_cpu_with_a_log(tiny, caplog):
    with caplog.at_level(logging.WARNING, logger="detector.model.classifier"):
        clf = Classifier(tiny, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert clf.providers == ["CPUExecutionProvider"]
    assert any("CUDAExecutionProvider is not available" in r.getMessage() for r in caplog.records)


def test_unknown_provider_is_a_config_error(tiny):
    with pytest.raises(ConfigError, match="unknown provider 'CUDA'"):
        Classifier(tiny, providers=("CUDA",))


def put(path, data: bytes):
    path.write_bytes(data)
    return path


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


@pytest.mark.parametrize("make, expected", [
    (lambda d: d / "missing.onnx", "does not exist"),
    (lambda d: d, "is not a file"),
    (lambda d: put(d / "rand.onnx", np.random.default_rng(0).bytes(2000)),
     "cannot be loaded as ONNX"),
    (lambda d: put(d / "empty.onnx", b""), "cannot be loaded"),
    (lambda d: put(d / "text.onnx", b"ir_version: 8\n"), "cannot be loaded"),
    (lambda d: make_band_model(d / "nometa.onnx", with_metadata=False), "lacks metadata"),
    (lambda d: make_band_model(d / "nolabels.onnx", drop_props=("labels",)),
     r"lacks metadata \['labels'\]"),
    (lambda d: make_band_model(d / "frames.onnx", input_frames=50), r"needs float32"),
    (lambda d: make_band_model(d / "outs.onnx", n_outputs=2), r"names 3 labels"),
    (lambda d: make_band_model(d / "badjson.onnx", extra_props={"n_mels": "sixty-four"}),
     "wrong type"),
    (lambda d: make_band_model(d / "feat.onnx", extra_props={"feature": "mfcc"}),
     "feature 'mfcc' is not supported"),
])
def test_bad_model_files_give_one_line(tmp_path, make, expected):
    path = make(tmp_path)
    with pytest.raises(ModelError) as info:
        Classifier(path)
    assert re.search(expected, one_line(info.value)), str(info.value)


def test_missing_shipped_model_message(monkeypatch, tmp_path):
    import detector.model.classifier as model_mod
    monkeypatch.setattr(model_mod, "MODELS_DIR", tmp_path)
    with pytest.raises(ModelError, match="shipped model default.onnx is missing.*--model"):
        Classifier(None)


def test_default_model_path_is_inside_the_package():
    path = default_model_path()
    assert path.name == "default.onnx" and path.parent.name == "models"


def test_shipped_model_loads_if_present():
    if not default_model_path().exists():
        pytest.skip("detector/models/default.onnx is not shipped yet")
    clf = Classifier()
    scores = clf.predict(np.full((clf.metadata.frames, clf.metadata.features.n_mels), -60.0,
                                 dtype=np.float32))
    assert scores.shape == (len(clf.labels),) and np.all((scores >= 0) & (scores <= 1))


@pytest.mark.parametrize("config, message", [
    (Config(events=EventsConfig(thresholds={"cat": 0.5})), "names 'cat', which model"),
    (Config(events=EventsConfig(labels=("background",))), "background label"),
    (Config(events=EventsConfig(thresholds_off={"siren": 0.9})), r"must be <= the on-threshold"),
    (Config(audio=AudioConfig(sample_rate=8000)), r"cannot carry the model's fmax=8000"),
    (Config(model=ModelConfig(window_hop_seconds=2.0)), r"must be <= the model window"),
])
def test_config_contradicting_the_model_is_refused(tiny, config, message):
    meta = Classifier(tiny).metadata
    with pytest.raises(ConfigError, match=message) as info:
        check_against_model(config, meta)
    one_line(info.value)


def test_consistent_config_passes(tiny):
    meta = Classifier(tiny).metadata
    check_against_model(Config(events=EventsConfig(thresholds={"siren": 0.7}, labels=("siren",)),
                               audio=AudioConfig(sample_rate=48000)), meta)
