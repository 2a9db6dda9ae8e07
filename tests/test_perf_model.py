"""Classifier pins the input's symbolic dims (batch 1) so onnxruntime folds shape ops.

The scores must stay bit-identical to a session opened without the override.
"""

import numpy as np
import pytest

from detector.model.classifier import Classifier, _session_options, default_model_path
from onnx_models import make_band_model


def plain_scores(path, windows, normalization=None):
    """Scores from a plain session, fed as the Classifier feeds it (the model's normalisation)."""
    import onnxruntime as ort

    if normalization:
        windows = [(w - normalization["mean"]) / normalization["std"] for w in windows]

    session = ort.InferenceSession(str(path), _session_options(1),
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [session.run(None, {name: w[None, :, :, None].astype(np.float32)})[0].reshape(-1)
            for w in windows]


def windows(frames, n_mels, n=12, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((frames, n_mels)) * 15 - 50).astype(np.float32)
            for _ in range(n)]


@pytest.mark.parametrize("input_frames", [None, "dynamic"])
def test_symbolic_dims_are_fixed_and_scores_unchanged(tmp_path, input_frames):
    path = make_band_model(tmp_path / "m.onnx", input_frames=input_frames)
    clf = Classifier(path)
    assert clf.session.get_inputs()[0].shape == [1, 97, 64, 1]
    ws = windows(97, 64)
    for got, want in zip([clf.predict(w) for w in ws], plain_scores(path, ws)):
        assert np.array_equal(got, want)


def test_shipped_model_scores_are_bit_identical():
    path = default_model_path()
    if not path.exists():
        pytest.skip("shipped model not present")
    clf = Classifier(path)
    meta = clf.metadata
    assert clf.session.get_inputs()[0].shape == [1, meta.frames, meta.features.n_mels, 1]
    ws = windows(meta.frames, meta.features.n_mels, n=20, seed=1)
    if meta.feature == "mn_logmel":  # ln(mel) values, not dB
        ws = [w / 10.0 for w in ws]
    for got, want in zip([clf.predict(w) for w in ws],
                         plain_scores(path, ws, meta.normalization)):
        if meta.normalization:  # the Classifier normalises in place: float32 rounding differs
            assert np.max(np.abs(got - want)) < 1e-5
        else:
            assert np.array_equal(got, want)


def test_predict_uses_bound_buffers_and_returns_fresh_arrays(tmp_path):
    path = make_band_model(tmp_path / "m.onnx")
    clf = Classifier(path)
    assert clf._binding is not None
    ws = windows(97, 64, n=6, seed=3)
    got = [clf.predict(w) for w in ws]  # kept across calls: must not alias the buffer
    want = plain_scores(path, ws)
    assert all(np.array_equal(g, w) for g, w in zip(got, want))
    assert len({g.tobytes() for g in got}) == len(got)


def test_normalised_model_through_bound_buffers(tmp_path):
    path = make_band_model(tmp_path / "n.onnx", normalization={"mean": -40.0, "std": 25.0})
    raw = make_band_model(tmp_path / "r.onnx")
    a, b = Classifier(path), Classifier(raw)
    for w in windows(97, 64, n=4, seed=4):
        assert np.allclose(a.predict(w), b.predict(w), atol=1e-5)


def test_refused_override_falls_back_to_the_plain_session(tmp_path, monkeypatch):
    import detector.model.classifier as model

    real = model._session_options
    calls = []

    class NoOverride:
        def __init__(self, options):
            self._options = options

        def add_free_dimension_override_by_name(self, name, value):
            raise RuntimeError("not supported here")

        def __getattr__(self, name):
            return getattr(self._options, name)

    def options(threads):
        calls.append(threads)
        return NoOverride(real(threads)) if len(calls) == 1 else real(threads)

    monkeypatch.setattr(model, "_session_options", options)
    path = make_band_model(tmp_path / "m.onnx")
    clf = Classifier(path)
    assert len(calls) == 2  # the refused override, then the plain session
    assert clf.session.get_inputs()[0].shape[0] == "N"
    assert clf._binding is None  # output batch is symbolic: plain session.run
    ws = windows(97, 64, n=3)
    for got, want in zip([clf.predict(w) for w in ws], plain_scores(path, ws)):
        assert np.array_equal(got, want)
