"""The Keras port of the AudioSet-pretrained mn04 network against the released logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import SHARED_DATA

pytest.importorskip("tensorflow", reason="needs the [train] extra (TensorFlow)")
pytest.importorskip("tf2onnx", reason="needs the [train] extra (tf2onnx)")
pytestmark = pytest.mark.train

WEIGHTS = Path(__file__).resolve().parents[1] / "export" / "data" / "mn04_as.npz"  # shipped
LOGITS = SHARED_DATA / "teacher" / "mn04_logits.npz"


def test_kaldi_mel_banks_cover_0_to_15000_hz():
    from export.mn04 import kaldi_mel_banks

    banks = kaldi_mel_banks()
    assert banks.shape == (128, 513)
    assert np.all(banks >= 0) and np.all(banks <= 1)
    assert np.all(banks[:, -1] == 0)                  # no Nyquist bin
    peaks = banks.argmax(axis=1) * 31.25
    assert np.all(np.diff(peaks) >= 0)                 # bands ordered by frequency
    assert peaks[-1] < 15000 and np.count_nonzero(banks[:, 481:]) == 0   # 15000 Hz = bin 480


def test_block_layout_reads_the_architecture_from_the_arrays():
    from export.mn04 import N_BLOCKS, block_layout, load_weights

    weights = load_weights(WEIGHTS)
    layouts = [block_layout(weights, i) for i in range(N_BLOCKS)]
    kinds = [["se" if not hasattr(s, "kernel") else ("dw" if s.depthwise else "conv")
              for s in layout] for layout in layouts]
    assert kinds[1] == ["dw", "conv"]
    assert kinds[2] == ["conv", "dw", "conv"]
    assert kinds[4] == ["conv", "dw", "se", "conv"]
    assert all(layout[-1].activation is None for layout in layouts[1:-1])  # linear projection


def _four_second_clips(n: int):
    data = np.load(LOGITS)
    files, logits = data["files"], data["clip_logits"].astype(np.float32)
    rng = np.random.default_rng(7)
    chosen = []
    for i in rng.permutation(len(files)):
        audio, rate = sf.read(SHARED_DATA / files[i], dtype="float32")
        if rate == 16000 and len(audio) == 64000:
            chosen.append((audio, logits[i]))
        if len(chosen) == n:
            return chosen
    pytest.skip("not enough 4.0 s clips with teacher logits")


def test_port_and_its_onnx_reproduce_the_teacher_logits(tmp_path):
    if not LOGITS.is_file():
        pytest.skip("shared data (pretrained/, teacher/) not present")
    import onnxruntime as ort

    from export.mn04 import build_tagger, load_weights, teacher_logmel
    from export.onnx_export import keras_to_onnx, write_onnx

    clips = _four_second_clips(20)
    x = np.stack([teacher_logmel(audio) for audio, _ in clips])[..., None]
    expected = np.stack([z for _, z in clips])
    model = build_tagger(load_weights(WEIGHTS))
    keras_logits = np.asarray(model(x, training=False))
    # The stored logits are float16: 0.004 is the rounding floor.
    assert np.abs(keras_logits - expected).max() < 0.01
    assert np.array_equal(keras_logits.argmax(1), expected.argmax(1))
    path = write_onnx(keras_to_onnx(model, "features", ["audioset"], frames=None), {},
                      tmp_path / "mn04.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {"features": x})[0]
    assert np.abs(onnx_logits - expected).max() < 0.01
    assert np.abs(onnx_logits - keras_logits).max() < 1e-3
