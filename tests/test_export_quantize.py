"""Static int8 quantization of real (tiny) ONNX models: a Conv+LSTM CRNN built with the
onnx helper API and the band model, calibrated on generated audio."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import soundfile as sf
from onnx import TensorProto, helper, numpy_helper

from detector.errors import ConfigError
from detector.features import FeatureParams
from detector.metadata import ModelMetadata
from export import quantize as qz
from export.evaluate import OnnxScorer
from onnx_models import make_band_model, tone_signal

LABELS = ("siren", "dog_bark", "car_horn")


def make_crnn(path: Path, seed: int = 0) -> Path:
    """[N, T, 64, 1] -> Conv 3x3 (8 ch) -> Relu -> mean over mels -> LSTM(16) -> MatMul -> Sigmoid."""
    rng = np.random.default_rng(seed)
    meta = ModelMetadata(labels=LABELS, features=FeatureParams(), window_seconds=0.5,
                         model_version="crnn-test", trained_on="random weights",
                         license_note="test, MIT", normalization={"mean": -50.0, "std": 20.0},
                         thresholds={"siren": 0.7}, background_labels=())
    frames, mels, ch, hidden, k = meta.frames, 64, 8, 16, len(LABELS)
    init = [
        numpy_helper.from_array(rng.normal(0, 0.3, (ch, 1, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, ch).astype(np.float32), "conv_b"),
        numpy_helper.from_array(rng.normal(0, 0.3, (1, 4 * hidden, ch)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(0, 0.3, (1, 4 * hidden, hidden)).astype(np.float32),
                                "R"),
        numpy_helper.from_array(np.zeros((1, 8 * hidden), np.float32), "B"),
        numpy_helper.from_array(rng.normal(0, 0.5, (hidden, k)).astype(np.float32), "dense_w"),
        numpy_helper.from_array(np.zeros(k, np.float32), "dense_b"),
        numpy_helper.from_array(np.array([0], np.int64), "ax0"),
    ]
    nodes = [
        helper.make_node("Transpose", ["logmel"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("ReduceMean", ["relu"], ["pooled"], axes=[3], keepdims=0),  # [N,C,T]
        helper.make_node("Transpose", ["pooled"], ["seq"], perm=[2, 0, 1]),  # [T,N,C]
        helper.make_node("LSTM", ["seq", "W", "R", "B"], ["", "h"], hidden_size=hidden),
        helper.make_node("Squeeze", ["h", "ax0"], ["last"]),
        helper.make_node("MatMul", ["last", "dense_w"], ["logits0"]),
        helper.make_node("Add", ["logits0", "dense_b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes, "crnn", [helper.make_tensor_value_info("logmel", TensorProto.FLOAT,
                                                      ["N", frames, mels, 1])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", k])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, meta.to_props())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def calibration(tmp_path):
    root = tmp_path / "calib"
    rng = np.random.default_rng(1)
    for i, freq in enumerate([500, 1000, 2000, 3000, 4000, 6000]):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        audio = tone_signal([(0.2, 1.2, freq)], 2.0, noise_dbfs=-40, seed=i)
        audio += 0.05 * rng.standard_normal(audio.shape).astype(np.float32)
        sf.write(str(sub / f"clip{i}.flac"), audio, 16000)
    return root


def test_crnn_int8_keeps_metadata_lstm_float_and_close_scores(tmp_path, calibration):
    model = make_crnn(tmp_path / "crnn.onnx")
    out = tmp_path / "crnn.int8.onnx"
    report = qz.quantize_model(model, calibration, out, latency_runs=20, progress=False)

    q = onnx.load(str(out))
    ops = [n.op_type for n in q.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert "LSTM" in ops  # no static int8 LSTM kernel: kept float
    int8_weights = [t.name for t in q.graph.initializer if t.data_type == TensorProto.INT8]
    assert any("conv_w" in name for name in int8_weights)
    assert any("dense_w" in name for name in int8_weights)
    assert report["float_ops_kept"] == ["LSTM"]

    # metadata survives (model_version marked), and the daemon's contract still parses
    before = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    after = {p.key: p.value for p in q.metadata_props}
    assert json.loads(after["model_version"]) == "crnn-test+int8"
    assert {k: v for k, v in after.items() if k not in ("model_version", "quantization")} == \
        {k: v for k, v in before.items() if k != "model_version"}
    meta = ModelMetadata.from_props(after)
    assert meta.labels == LABELS and meta.thresholds == {"siren": 0.7}
    assert json.loads(after["quantization"])["calibration_windows"] == 6 * 4

    # scores on fresh windows (not the calibration ones) stay close
    fp, i8 = OnnxScorer(model), OnnxScorer(out)
    test_audio = tone_signal([(0.1, 1.5, 1500)], 2.0, noise_dbfs=-30, seed=7)
    windows = fp.windows(test_audio, fp.hop_frames())
    a, b = fp.scores(windows), i8.scores(windows)
    assert a.shape == b.shape == (windows.shape[0], 3)
    assert np.max(np.abs(a - b)) < 0.05
    assert not np.array_equal(a, b)  # it really is a different (quantized) model
    assert report["score_max_abs_diff"] < 0.05
    assert report["latency_ms_int8"]["runs"] == 20
    assert report["bytes_int8"] > 0


def test_cli_band_model_with_accuracy(tmp_path, calibration, capsys):
    model = make_band_model(tmp_path / "band.onnx")
    data = tmp_path / "eval"
    for label, freq in (("siren", 1000), ("dog_bark", 3000)):
        (data / label).mkdir(parents=True)
        for i in range(2):
            sf.write(str(data / label / f"{i}.wav"),
                     tone_signal([(0, 2, freq)], 2.0, noise_dbfs=-50, seed=i), 16000)
    out, js = tmp_path / "band.int8.onnx", tmp_path / "q.json"
    args = argparse.Namespace(model=model, calibration=calibration, out=out,
                              op_types=["MatMul"], no_per_channel=False, max_clips=3,
                              eval_dataset=data, eval_folds=None, json=js, latency_runs=20)
    assert qz.run(args) == 0
    stdout = capsys.readouterr().out
    assert "accuracy on 4 clips: fp32 1.0000, int8 1.0000" in stdout
    report = json.loads(js.read_text())
    assert report["calibration_windows"] == 3 * 4 and report["accuracy"]["accuracy_change"] == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["model_version"] == '"band-test-1+int8"'


def test_empty_calibration_folder_is_one_line(tmp_path, capsys):
    model = make_band_model(tmp_path / "band.onnx")
    (tmp_path / "empty").mkdir()
    args = argparse.Namespace(model=model, calibration=tmp_path / "empty",
                              out=tmp_path / "x.onnx", op_types=["MatMul"], no_per_channel=False,
                              max_clips=3, eval_dataset=None, eval_folds=None, json=None)
    assert qz.run(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no .wav/.flac/.ogg" in err
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(ConfigError, match="not a directory"):
        qz.quantize_model(model, tmp_path / "missing", tmp_path / "y.onnx", progress=False)


# --- calibration recorded from the daemon's path -----------------------------------------

def make_stateful(path: Path, seed: int = 0) -> Path:
    """A streaming model as the daemon runs it (``stream_chunk_frames``, state inputs and
    outputs in the metadata): the newest 25-column chunk and a carried state in, scores
    and the next state out (``state_next = 0.5 * state_in + pooled conv``)."""
    rng = np.random.default_rng(seed)
    meta = ModelMetadata(labels=LABELS, features=FeatureParams(), window_seconds=0.5,
                         model_version="stateful-test", trained_on="random weights",
                         license_note="test, MIT", normalization={"mean": -50.0, "std": 20.0},
                         thresholds={}, background_labels=(), window_hop_seconds=0.25,
                         stream_chunk_frames=25, state_inputs=("state_in",),
                         state_outputs=("state_next",))
    chunk, mels, ch, k = 25, 64, 8, len(LABELS)
    init = [numpy_helper.from_array(rng.normal(0, 0.3, (ch, 1, 3, 3)).astype(np.float32), "conv_w"),
            numpy_helper.from_array(rng.normal(0, 0.1, ch).astype(np.float32), "conv_b"),
            numpy_helper.from_array(np.array([0.5], np.float32), "decay"),
            numpy_helper.from_array(rng.normal(0, 0.5, (ch, k)).astype(np.float32), "dense_w")]
    nodes = [helper.make_node("Transpose", ["features"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
             helper.make_node("Flatten", ["pool"], ["flat"]),
             helper.make_node("Mul", ["state_in", "decay"], ["kept"]),
             helper.make_node("Add", ["kept", "flat"], ["state_next"]),
             helper.make_node("MatMul", ["state_next", "dense_w"], ["logits"]),
             helper.make_node("Sigmoid", ["logits"], ["scores"])]
    graph = helper.make_graph(
        nodes, "stateful",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, chunk, mels, 1]),
         helper.make_tensor_value_info("state_in", TensorProto.FLOAT, [1, ch])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, k]),
         helper.make_tensor_value_info("state_next", TensorProto.FLOAT, [1, ch])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, meta.to_props())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_streaming_model_feeds_are_recorded_with_their_real_state(tmp_path, calibration):
    from detector.model import Classifier

    model = make_stateful(tmp_path / "stateful.onnx")
    clf = Classifier(model)
    session = clf.session
    files = qz.audio_files(calibration, max_clips=10)
    feeds = qz.record_feeds(clf, files, windows_per_clip=100, progress=False)
    assert len(feeds) > 6 * 4
    assert all(set(f) == {"features", "state_in"} for f in feeds)
    assert all(f["features"].shape == (1, 25, 64, 1) for f in feeds)
    states = np.concatenate([f["state_in"] for f in feeds])
    # carried from hop to hop (the daemon resets it only after gaps): mostly not zeros
    assert np.count_nonzero(np.abs(states).sum(axis=1)) >= 0.8 * len(feeds)
    assert not np.allclose(states[1:], states[:-1])
    assert clf.session is session and clf._stream.session is session  # recorder taken out


def test_streaming_model_quantizes_with_its_state_input(tmp_path, calibration):
    from detector.model import Classifier

    model = make_stateful(tmp_path / "stateful.onnx")
    out = tmp_path / "stateful.int8.onnx"
    report = qz.quantize_model(model, calibration, out, latency_runs=10, progress=False)
    q = onnx.load(str(out))
    assert [i.name for i in q.graph.input] == ["features", "state_in"]
    assert [o.name for o in q.graph.output] == ["scores", "state_next"]
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)
    assert report["calibration_windows"] == 6 * 4
    assert report["score_max_abs_diff"] < 0.05 and report["window_top1_agreement"] > 0.8
    # the daemon runs the int8 file as the streaming model it is
    clf = Classifier(out)
    assert clf._stream is not None
    scores = clf.predict(np.full((clf.metadata.frames, 64), -40.0, np.float32))
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))


def test_calibration_through_the_daemon_classifier_matches_its_windows(tmp_path, calibration):
    """With the daemon's own Classifier, each recorded feed is a window the model saw."""
    from detector.model import Classifier

    model = make_crnn(tmp_path / "crnn.onnx")
    clf = Classifier(model)
    files = qz.audio_files(calibration, max_clips=2)
    feeds = qz.record_feeds(clf, files, windows_per_clip=3, progress=False)
    assert len(feeds) == 2 * 3 and all(list(f) == [clf.input_name] for f in feeds)
    for feed in feeds:
        assert feed[clf.input_name].shape == (1, clf.metadata.frames, 64, 1)
    assert clf.session.__class__.__name__ == "InferenceSession"
    assert clf._binding is not None  # IO binding restored after recording
    window = np.full((clf.metadata.frames, 64), -45.0, np.float32)
    x = ((window + 50.0) / 20.0)[None, :, :, None].astype(np.float32)
    want = clf.session.run([clf.output_name], {clf.input_name: x})[0][0]
    assert np.allclose(clf.predict(window), want)
