"""The streaming recipe and the daemon's streaming stage: chunk labels, the metadata
contract, and a tiny REAL run (chunk trunk -> cache -> stateful head -> step model ->
the daemon fires, stream and batch agree)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, SHARED_DATA
from test_export_pretrained import make_data, sweep

SR = 16000
WEIGHTS = SHARED_DATA / "pretrained" / "mn04_as.npz"


def _frontend_stub(signal):
    """Columns like the daemon's (one per 160 samples after the first 512), constant."""
    n = 1 + (len(signal) - 512) // 160
    return np.zeros((n, 8), np.float32)


def test_chunks_label_the_sound_and_its_quiet_surroundings():
    from export import pretrained as P
    from export.streaming import CHUNK_FRAMES, clip_chunks

    rng = np.random.default_rng(0)
    audio = np.concatenate([0.3 * np.ones(SR // 2, np.float32),  # loud half second
                            1e-4 * np.ones(SR, np.float32)])     # a quiet fringe
    chunks, labels = clip_chunks(audio, True, _frontend_stub, rng, 3)
    assert chunks.shape[1:] == (CHUNK_FRAMES, 8)
    bg = P.LABELS.index(P.BACKGROUND)
    # room noise before, the loud part labelled, the quiet fringe masked, room noise after
    assert labels[0] == bg and labels[-1] == bg
    loud, masked = np.flatnonzero(labels == 3), np.flatnonzero(labels == -1)
    assert len(loud) and len(masked)
    assert masked.max() > loud.max()  # the fringe after the loud part is masked
    assert set(labels[masked.max() + 1:]) == {bg}
    # a background clip: every chunk background, none masked
    _, labels = clip_chunks(audio, False, _frontend_stub, rng, bg)
    assert set(labels) == {bg}


def test_sequences_follow_clip_versions_in_order():
    from export.streaming import ChunkCache, make_sequences

    n = [5, 3, 7]
    seq = np.concatenate([np.full(k, i) for i, k in enumerate(n)])
    cache = ChunkCache(np.zeros((len(seq), 4), np.float16), np.zeros(len(seq), int),
                       seq.copy(), np.zeros(len(seq), int), seq)
    spans = cache.spans()
    assert spans == [(0, 5), (5, 8), (8, 15)]
    assert cache.spans(np.arange(5, 15)) == [(5, 8), (8, 15)]
    rows = make_sequences(cache, spans, 20, 12, np.random.default_rng(1))
    assert rows.shape == (20, 12)
    for r in rows:  # inside a clip version the rows run in order
        for a, b in zip(r[:-1], r[1:]):
            assert b == a + 1 or b in (0, 5, 8)


def _meta(**kw):
    from detector.features import MN04_FEATURES, MN04_PARAMS
    from detector.metadata import ModelMetadata

    base = dict(labels=("siren", "background"), features=MN04_FEATURES, window_seconds=1.0,
                model_version="t", trained_on="t", license_note="t", feature="mn_logmel",
                feature_params=MN04_PARAMS, normalization={"mean": -4.5, "std": 5.0},
                background_labels=("background",), window_hop_seconds=0.25,
                stream_chunk_frames=25, state_inputs=("state_h", "state_c"),
                state_outputs=("state_h_out", "state_c_out"))
    base.update(kw)
    return ModelMetadata(**base)


def test_streaming_metadata_round_trips_and_refuses_inconsistency():
    from detector.errors import ModelError
    from detector.metadata import ModelMetadata

    meta = _meta()
    back = ModelMetadata.from_props(meta.to_props())
    assert back == meta and back.is_streaming
    with pytest.raises(ModelError, match="window_hop_seconds"):
        _meta(window_hop_seconds=0.5)
    with pytest.raises(ModelError, match="same length"):
        _meta(state_outputs=("state_h_out",))
    with pytest.raises(ModelError, match="unique"):
        _meta(state_outputs=("state_h", "x"))
    with pytest.raises(ModelError, match="only defined for a streaming"):
        _meta(stream_chunk_frames=None)
    with pytest.raises(ModelError, match="stream_chunk_frames"):
        _meta(stream_chunk_frames=500)
    props = meta.to_props()
    props["state_inputs"] = '"state_h"'
    with pytest.raises(ModelError, match="state_inputs"):
        ModelMetadata.from_props(props)


def test_config_hop_is_refused_for_a_streaming_model():
    from detector.config import config_from_dict
    from detector.errors import ConfigError
    from detector.model import check_against_model

    config = config_from_dict({"model": {"window_hop_seconds": 0.1}})
    with pytest.raises(ConfigError, match="streaming model"):
        check_against_model(config, _meta())
    check_against_model(config_from_dict({"model": {"window_hop_seconds": 0.25}}), _meta())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    pytest.importorskip("tensorflow", reason="needs the [train] extra (TensorFlow)")
    pytest.importorskip("tf2onnx", reason="needs the [train] extra (tf2onnx)")
    if not WEIGHTS.is_file():
        pytest.skip("shared data (pretrained/mn04_as.npz) not present")
    tmp = tmp_path_factory.mktemp("streaming")
    rng = np.random.default_rng(3)
    data = tmp / "data"
    make_data(data, rng)
    run, model = tmp / "run", tmp / "model.onnx"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "export", "streaming", "--data", str(data),
           "--weights", str(WEIGHTS), "--run", str(run), "--workers", "1", "--variants", "2",
           "--synthetic", "4", "--epochs", "8", "--seq-length", "24", "--passes", "6",
           "--floor", "0.5", "--crossval", "--rotations", "0", "--out", str(model),
           "--model-version", "tiny-s1"]
    done = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp, run, model, env


def test_tiny_real_run_the_daemon_fires_on_its_streaming_model(tiny_run):
    tmp, run, model, env = tiny_run
    summary = json.loads((run / "summary.json").read_text())
    # the step model stepped through real chunks equals the head run over the whole sequence
    assert summary["final"]["onnx_stream_parity"] < 1e-4
    assert summary["rotations"]["0"]["stream"]["labelled"]["recall"] > 0
    rng = np.random.default_rng(5)
    clip = tmp / "siren.wav"
    sf.write(clip, np.concatenate([np.zeros(SR, np.float32), sweep(3.0, rng),
                                   np.zeros(SR, np.float32)]), SR)
    replay = subprocess.run([sys.executable, "-m", "detector", "replay", str(clip), "--model",
                             str(model)], cwd=tmp, env=env, capture_output=True, text=True,
                            timeout=300)
    assert replay.returncode == 0, replay.stderr[-2000:]
    events = [json.loads(line) for line in replay.stdout.splitlines() if line.startswith("{")]
    assert any(e["type"] == "start" and e["label"] == "siren" for e in events), replay.stdout
    assert all(e["model"] == "tiny-s1" for e in events)
    card = tmp / "MODEL_CARD.md"
    done = subprocess.run([sys.executable, "-m", "export", "card", "--run", str(run), "--model",
                           str(model), "--baseline-run", str(run), "--baseline-name", "itself",
                           "--out", str(card)], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    text = card.read_text()
    assert "streaming" in text and "state_h" in text and "| 0 |" in text
    assert "| itself |" in text  # the comparison table names both models


@pytest.mark.parametrize("block_seconds", [0.01, 0.0625, 0.25, 1.0])
def test_streaming_model_same_scores_for_any_block_size(tiny_run, block_seconds):
    """Stream vs batch: the pipeline fed in blocks of any size steps the model on the same
    chunks as one pass over the whole file, with the same carried state."""
    from detector.capture import FileSource
    from detector.config import config_from_dict
    from detector.model import Classifier
    from detector.pipeline import Pipeline

    tmp, _, model, _ = tiny_run
    rng = np.random.default_rng(7)
    audio = np.concatenate([0.01 * rng.standard_normal(SR).astype(np.float32), sweep(2.5, rng),
                            0.01 * rng.standard_normal(SR).astype(np.float32)])
    path = tmp / "blocks.wav"
    sf.write(path, audio, SR)
    config = config_from_dict({"output": {"stdout_json": False}})

    def scores(seconds):
        clf = Classifier(model)
        source = FileSource(path, SR, block_seconds=seconds)
        pipe = Pipeline(config, source, clf, [], record_scores=True)
        pipe.run()
        return np.stack(pipe.score_rows), np.stack(pipe.embedding_rows)

    whole_s, whole_e = scores(len(audio) / SR)
    got_s, got_e = scores(block_seconds)
    assert got_s.shape == whole_s.shape and len(got_s) > 8
    np.testing.assert_allclose(got_s, whole_s, atol=1e-5)
    np.testing.assert_allclose(got_e, whole_e, atol=1e-5)


def test_streaming_model_state_is_carried_and_reset(tiny_run):
    from detector.model import Classifier

    _, _, model, _ = tiny_run
    clf = Classifier(model)
    meta = clf.metadata
    rng = np.random.default_rng(2)
    windows = [rng.normal(-4.5, 2.0, (meta.frames, meta.features.n_mels)).astype(np.float32)
               for _ in range(6)]
    first = [clf.predict(w) for w in windows]
    clf.reset()
    again = [clf.predict(w) for w in windows]
    np.testing.assert_allclose(first, again, atol=1e-6)  # reset = a fresh stream
    clf.reset()
    clf.predict(windows[3])
    alone = clf.predict(windows[5])
    # the same chunk after another history scores differently: the state is carried
    assert np.abs(alone - first[5]).max() > 1e-4


def test_streaming_model_file_missing_state_is_one_line(tiny_run, tmp_path):
    import onnx

    from detector.errors import ModelError
    from detector.metadata import ModelMetadata
    from detector.model import Classifier

    _, _, model, _ = tiny_run
    proto = onnx.load(str(model))
    props = {p.key: p.value for p in proto.metadata_props}
    meta = ModelMetadata.from_props(props)
    bad = replace(meta, state_inputs=("state_h", "nope"), state_outputs=("state_h_out",
                                                                          "state_c_out"))
    del proto.metadata_props[:]
    for k, v in bad.to_props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    path = tmp_path / "bad.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ModelError, match="nope"):
        Classifier(path)
