"""Tiny but REAL ONNX models (built with the ``onnx`` helper API) and test audio.

Every test that needs a classifier uses one of these instead of mocking
onnxruntime: the file carries the full metadata contract
(:class:`detector.model.metadata.ModelMetadata`), so the daemon loads it exactly like
the shipped model.

The band model
--------------
``make_band_model(path, labels=("siren", "dog_bark", "background"),
bands_hz={"siren": 1000, "dog_bark": 3000})`` builds::

    x [N, frames, n_mels, 1]  ->  pool over time (mean or max)  ->  [N, n_mels]
      ->  MatMul W + b  ->  Sigmoid  ->  scores [N, n_classes]

For a label with a band at ``f`` Hz the score is
``sigmoid((x[band(f)] - mean_over_bands(x) - offset_db) / scale_db)``, where
``band(f)`` is the mel band whose filter peaks at ``f``. A tone at ``f`` that
fills the window gives a score near 1 (its band stands ~100 dB above the mean of
a digital-silence background); silence, broadband noise and tones in other bands
give a score near 0 (for the defaults ``offset_db=20``, ``scale_db=4``:
``sigmoid(-5) = 0.007``). With mean pooling a tone must fill about
``offset_db / 100`` of the window before its label passes 0.5, so starts lag the
onset by ~0.2 window and ends trail the offset by ~0.8 window; use
``pooling="max"`` for a model that reacts as soon as one frame holds the tone.
Labels without a band (e.g. ``background``) get a constant score
``sigmoid(background_logit)``; by default they are declared ``background_labels``.

Use it from any test (``tests/`` is on ``sys.path`` under pytest)::

    from onnx_models import make_band_model, write_tone_wav
    model = make_band_model(tmp_path / "tiny.onnx")
    wav = write_tone_wav(tmp_path / "tone.wav", [(1.0, 2.5, 1000.0)], seconds=5.0)
    # python -m detector replay wav --model model  -> one siren start + end

Knobs for negative tests: ``with_metadata=False`` (no contract),
``drop_props=("labels",)``, ``extra_props={...}`` (override any JSON value),
``input_frames`` (a static frames dim that contradicts the metadata, or
``"dynamic"``), ``n_outputs`` (an output width that contradicts the labels).

Embedding
---------
``embedding=True`` adds a second output ``embedding`` ``[N, 2 * n_mels]``: the
window's log-mel averaged over time and its maximum over time, per mel band,
times ``0.05`` (dB -> a unit-ish scale). It carries the sound's real spectral
shape, so custom labels can be enrolled on it (a 1.5 kHz tone is told from a
1 kHz tone and from noise); the metadata names it (``embedding_output``,
``embedding_dim``) as the model-file contract says.
``expose_embedding(src, dst, tensor)`` does the same for an existing model:
it makes an inner tensor (e.g. the shipped model's pooled LSTM output) a
second output and names it in the metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from detector.audio.features import FeatureParams, MnParams, build_frontend
from detector.model.metadata import ModelMetadata

DEFAULT_LABELS = ("siren", "dog_bark", "background")
DEFAULT_BANDS = {"siren": 1000.0, "dog_bark": 3000.0}


def band_index(freq_hz: float, params: FeatureParams = FeatureParams(),
               feature: str = "logmel_db", feature_params: MnParams | None = None) -> int:
    """Index of the mel band whose filter weighs the FFT bin nearest ``freq_hz`` most
    (in the front end ``feature`` builds from ``params`` / ``feature_params``)."""
    fb = build_frontend(feature, params, feature_params).weights
    fft_bin = int(round(freq_hz * params.n_fft / params.sample_rate))
    return int(np.argmax(fb[:, fft_bin]))


def make_band_model(
    path: str | Path,
    labels: Sequence[str] = DEFAULT_LABELS,
    bands_hz: Mapping[str, float] | None = None,
    window_seconds: float = 1.0,
    features: FeatureParams = FeatureParams(),
    *,
    offset_db: float = 20.0,
    scale_db: float = 4.0,
    background_logit: float = 0.0,
    pooling: str = "mean",
    background_labels: Iterable[str] | None = None,
    thresholds: Mapping[str, float] | None = None,
    window_hop_seconds: float | None = 0.25,
    normalization: Mapping[str, float] | None = None,
    model_version: str = "band-test-1",
    with_metadata: bool = True,
    drop_props: Iterable[str] = (),
    extra_props: Mapping[str, object] | None = None,
    input_frames: int | str | None = None,
    n_outputs: int | None = None,
    opset: int = 17,
    feature: str = "logmel_db",
    feature_params: MnParams | None = None,
    embedding: bool = False,
    audioset_bands: Mapping[str, float] | None = None,
    gate: Mapping[str, Mapping] | None = None,
) -> Path:
    """Write a band-detector ONNX model to ``path`` and return the path.

    ``normalization`` (``{"mean": m, "std": s}``) is written into the metadata and
    folded into the weights, so the daemon must apply it for the scores to come
    out as documented above. See the module docstring for the negative-test knobs.
    ``feature="mn_logmel"`` (with ``features=MN04_FEATURES`` and ``feature_params``)
    builds a model on that front end; its units are natural-log energies, not dB,
    so pass ``offset_db`` / ``scale_db`` in those units (e.g. 5 and 1).
    ``audioset_bands`` ({AudioSet class name: Hz}) adds an ``audioset`` output
    ``[N, 527]`` of logits: a named class responds to its band like a label does,
    every other class sits at probability 0.01; ``gate`` is the metadata's gate.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = Path(path)
    bands = dict(DEFAULT_BANDS if bands_hz is None else bands_hz)
    unknown = set(bands) - set(labels)
    if unknown:
        raise ValueError(f"bands_hz names labels not in labels: {sorted(unknown)}")
    if background_labels is None:
        background_labels = [label for label in labels if label not in bands]
    meta = ModelMetadata(
        labels=tuple(labels), features=features, window_seconds=window_seconds,
        model_version=model_version, trained_on="synthetic: tone bands (tests/onnx_models.py)",
        license_note="test model, MIT", normalization=normalization,
        thresholds=dict(thresholds or {}), background_labels=tuple(background_labels),
        feature=feature, feature_params=feature_params,
        **({"window_hop_seconds": window_hop_seconds} if window_hop_seconds else {}),
        **({"embedding_output": "embedding", "embedding_dim": 2 * features.n_mels}
           if embedding else {}),
        **({"audioset_output": "audioset"} if audioset_bands is not None else {}),
        **({"gate": dict(gate)} if gate else {}))
    n_mels, frames = features.n_mels, meta.frames
    std = float(normalization["std"]) if normalization else 1.0

    n_classes = len(labels) if n_outputs is None else n_outputs
    weights = np.zeros((n_mels, n_classes), dtype=np.float32)
    bias = np.full(n_classes, background_logit, dtype=np.float32)
    for k, label in enumerate(labels[:n_classes]):
        if label in bands:
            column = -np.full(n_mels, 1.0 / n_mels)
            column[band_index(bands[label], features, feature, feature_params)] += 1.0
            # (x_n[b] - mean x_n) * std = x[b] - mean x: normalisation folded in.
            weights[:, k] = column * std / scale_db
            bias[k] = -offset_db / scale_db

    if input_frames == "dynamic":
        frames_dim: int | str = "frames"
    else:
        frames_dim = frames if input_frames is None else int(input_frames)
    x = helper.make_tensor_value_info("logmel", TensorProto.FLOAT, ["N", frames_dim, n_mels, 1])
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", n_classes])
    pool = {"mean": "ReduceMean", "max": "ReduceMax"}[pooling]
    nodes = [
        helper.make_node("Squeeze", ["logmel", "axis3"], ["x3"]),
        helper.make_node(pool, ["x3"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["scores"]),
    ]
    inits = [numpy_helper.from_array(np.array([3], dtype=np.int64), "axis3"),
             numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")]
    outputs = [y]
    if embedding:
        # the window as the daemon gives it (normalisation undone), pooled over time
        nodes += [
            helper.make_node("ReduceMean", ["x3"], ["emb_mean"], axes=[1], keepdims=0),
            helper.make_node("ReduceMax", ["x3"], ["emb_max"], axes=[1], keepdims=0),
            helper.make_node("Concat", ["emb_mean", "emb_max"], ["emb_cat"], axis=1),
            helper.make_node("Mul", ["emb_cat", "emb_scale"], ["embedding"]),
        ]
        inits.append(numpy_helper.from_array(np.array(0.05 * std, dtype=np.float32),
                                             "emb_scale"))
        outputs.append(helper.make_tensor_value_info("embedding", TensorProto.FLOAT,
                                                     ["N", 2 * n_mels]))
    if audioset_bands is not None:
        from detector.model.gate import audioset_classes

        names = audioset_classes()
        w_as = np.zeros((n_mels, len(names)), dtype=np.float32)
        b_as = np.full(len(names), np.log(0.01 / 0.99), dtype=np.float32)
        for name, hz in audioset_bands.items():
            column = -np.full(n_mels, 1.0 / n_mels)
            column[band_index(hz, features, feature, feature_params)] += 1.0
            w_as[:, names.index(name)] = column * std / scale_db
            b_as[names.index(name)] = -offset_db / scale_db
        nodes += [helper.make_node("MatMul", ["pooled", "W_as"], ["as0"]),
                  helper.make_node("Add", ["as0", "b_as"], ["audioset"])]
        inits += [numpy_helper.from_array(w_as, "W_as"), numpy_helper.from_array(b_as, "b_as")]
        outputs.append(helper.make_tensor_value_info("audioset", TensorProto.FLOAT,
                                                     ["N", len(names)]))
    graph = helper.make_graph(nodes, "band_model", [x], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="tests/onnx_models.py")
    model.ir_version = 8
    if with_metadata:
        props = meta.to_props()
        for key in drop_props:
            props.pop(key, None)
        for key, value in (extra_props or {}).items():
            props[key] = json.dumps(value)
        helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def tone_signal(segments: Sequence[tuple[float, float, float]], seconds: float,
                sample_rate: int = 16000, amplitude: float = 0.5,
                noise_dbfs: float | None = None, seed: int = 0) -> np.ndarray:
    """Mono float32: silence (or seeded white noise at ``noise_dbfs``) with sine
    bursts ``(start_s, end_s, freq_hz)``; 5 ms raised-cosine ramps avoid clicks."""
    n = int(round(seconds * sample_rate))
    out = np.zeros(n, dtype=np.float64)
    if noise_dbfs is not None:
        rng = np.random.default_rng(seed)
        out += rng.standard_normal(n) * 10 ** (noise_dbfs / 20)
    ramp_n = int(0.005 * sample_rate)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp_n) / ramp_n)
    for start, end, freq in segments:
        a, b = int(round(start * sample_rate)), int(round(end * sample_rate))
        t = np.arange(b - a) / sample_rate
        burst = amplitude * np.sin(2 * np.pi * freq * t)
        if b - a > 2 * ramp_n:
            burst[:ramp_n] *= ramp
            burst[-ramp_n:] *= ramp[::-1]
        out[a:b] += burst
    return out.astype(np.float32)


def write_tone_wav(path: str | Path, segments: Sequence[tuple[float, float, float]],
                   seconds: float, sample_rate: int = 16000, amplitude: float = 0.5,
                   noise_dbfs: float | None = None, subtype: str = "PCM_16") -> Path:
    """Write :func:`tone_signal` to a WAV (or FLAC, by suffix) file and return the path."""
    import soundfile as sf

    path = Path(path)
    sf.write(str(path), tone_signal(segments, seconds, sample_rate, amplitude, noise_dbfs),
             sample_rate, subtype=subtype)
    return path


def expose_embedding(src: str | Path, dst: str | Path, tensor: str, dim: int,
                     model_version: str | None = None) -> Path:
    """Copy model ``src`` to ``dst`` with the inner float tensor ``tensor`` ``[N, dim]``
    as a second output, named in the metadata (``embedding_output``, ``embedding_dim``).
    The scores are untouched (same graph, one more output)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(src))
    if not any(tensor in node.output for node in model.graph.node):
        raise ValueError(f"{src} has no tensor {tensor!r}")
    model.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT,
                                                            ["N", dim]))
    props = {p.key: p.value for p in model.metadata_props}
    props["embedding_output"] = json.dumps(tensor)
    props["embedding_dim"] = json.dumps(dim)
    if model_version is not None:
        props["model_version"] = json.dumps(model_version)
    del model.metadata_props[:]
    helper.set_model_props(model, props)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return dst


SHIPPED_030_EMBEDDING = "crnn_infer_1/pool_time_1/concat:0"
"""The pooled (mean + max over time) LSTM output of the shipped model 0.3.0: 256 wide."""
