"""detector.model.onnxfile reads what onnx reads (metadata, graph inputs), and the Classifier
builds its onnxruntime session once, already specialised to one window."""

from __future__ import annotations

import numpy as np
import pytest

from detector.errors import ModelError
from detector.model.classifier import Classifier, default_model_path
from detector.model.onnxfile import read_header
from onnx_models import make_band_model

onnx = pytest.importorskip("onnx")


def onnx_view(path):
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    inits = {i.name for i in model.graph.initializer}
    inputs = {i.name: [d.dim_param or (d.dim_value if d.HasField("dim_value") else None)
                       for d in i.type.tensor_type.shape.dim]
              for i in model.graph.input if i.name not in inits}
    return props, inputs


@pytest.mark.parametrize("frames", [None, "dynamic"])
def test_band_models_read_like_onnx(tmp_path, frames):
    path = make_band_model(tmp_path / "m.onnx", input_frames=frames, embedding=True)
    props, inputs = read_header(path)
    assert (props, inputs) == onnx_view(path)
    (dims,) = inputs.values()
    assert isinstance(dims[0], str) and dims[2:] == [64, 1]
    assert isinstance(dims[1], str) if frames == "dynamic" else dims[1] == 97


def test_shipped_model_reads_like_onnx():
    path = default_model_path()
    if not path.exists():
        pytest.skip("shipped model not present")
    assert read_header(path) == onnx_view(path)


def test_initializers_listed_as_graph_inputs_are_not_inputs(tmp_path):
    """Old exporters list every weight in graph.input too; onnxruntime does not count them."""
    path = make_band_model(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        model.graph.input.append(onnx.helper.make_tensor_value_info(
            init.name, init.data_type, list(init.dims)))
    onnx.save(model, str(tmp_path / "old.onnx"))
    _, inputs = read_header(tmp_path / "old.onnx")
    assert list(inputs) == [model.graph.input[0].name]


@pytest.mark.parametrize("content", [b"", b"\xff" * 64, b"not an onnx model at all",
                                     b"\x3a\xff\xff\xff\xff\x0f"])
def test_malformed_files_are_a_value_error(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ValueError):
        read_header(path)


def test_truncated_model_is_a_value_error(tmp_path):
    path = make_band_model(tmp_path / "m.onnx")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError):
        read_header(cut)


def test_classifier_builds_one_session(tmp_path, monkeypatch):
    import onnxruntime as ort

    built = []
    real = ort.InferenceSession

    class Counting(real):
        def __init__(self, *args, **kwargs):
            built.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", Counting)
    for name, frames in (("a.onnx", None), ("b.onnx", "dynamic")):
        path = make_band_model(tmp_path / name, input_frames=frames)
        clf = Classifier(path)
        assert clf.session.get_inputs()[0].shape == [1, 97, 64, 1]  # pinned at the one build
        assert clf._binding is not None
    assert len(built) == 2


def test_unreadable_header_opens_the_file_as_it_is(tmp_path, monkeypatch):
    """If the header cannot be read this way the session is still opened (no overrides)."""
    import detector.model.onnxfile as onnxfile

    def broken(path):
        raise ValueError("unsupported protobuf wire type 3")

    monkeypatch.setattr(onnxfile, "read_header", broken)
    path = make_band_model(tmp_path / "m.onnx")
    clf = Classifier(path)
    assert isinstance(clf.session.get_inputs()[0].shape[0], str)
    assert clf._binding is None
    assert clf.predict(np.zeros((97, 64), dtype=np.float32)).shape == (3,)


@pytest.mark.parametrize("content", [b"", b"not an onnx model at all", b"\x08\x07\x3a\x03abc"])
def test_garbage_is_still_one_model_error(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError, match="cannot be loaded as ONNX"):
        Classifier(path)
