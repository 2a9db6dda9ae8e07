"""Keras -> ONNX (tf2onnx, opset 17) with the model-file metadata and a parity check.

Every exported graph is rewritten by :func:`export.onnx_optimize.optimize` (Pad and
BatchNorm folded into Conv, HardSwish, squeeze-excitation as 1x1 Conv: same
arithmetic, fewer nodes) before it is written and checked against Keras."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from detector.errors import ModelError
from detector.metadata import ModelMetadata
from export.onnx_optimize import optimize

logger = logging.getLogger(__name__)

OPSET = 17
PARITY_TOLERANCE = 1e-4
LICENSE_NOTE = ("trained on UrbanSound8K (CC BY-NC 3.0) and SESA (CC BY 4.0): "
                "non-commercial use")


def export_onnx(model, metadata: ModelMetadata, out_path: str | Path,
                parity_windows: np.ndarray | None = None) -> float | None:
    """Write ``model`` (a single-output Keras model) to ``out_path`` with ``metadata``.

    When ``parity_windows`` (``[n, frames, n_mels, 1]`` real log-mel windows) is
    given, Keras and onnxruntime outputs are compared; returns the max abs
    difference and raises :class:`ModelError` above ``PARITY_TOLERANCE``.
    """
    import tensorflow as tf
    import tf2onnx

    frames, n_mels = int(model.input.shape[1]), int(model.input.shape[2])
    if frames != metadata.frames or n_mels != metadata.features.n_mels:
        raise ModelError(f"model input [{frames}, {n_mels}] does not match the metadata "
                         f"window ({metadata.frames} frames, {metadata.features.n_mels} mels)")
    n_out = int(model.output.shape[-1])
    if n_out != len(metadata.labels):
        raise ModelError(f"model has {n_out} outputs but metadata lists "
                         f"{len(metadata.labels)} labels")
    spec = (tf.TensorSpec((None, frames, n_mels, 1), tf.float32, name="logmel"),)
    model.output_names = ["scores"]
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    proto = optimize(proto)
    # Name the single output "scores" whatever Keras called it.
    old_name = proto.graph.output[0].name
    if old_name != "scores":
        for node in proto.graph.node:
            node.output[:] = ["scores" if o == old_name else o for o in node.output]
        proto.graph.output[0].name = "scores"
    del proto.metadata_props[:]
    for key, value in metadata.to_props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "sound-detector export"
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp.onnx")
    tmp.write_bytes(proto.SerializeToString())
    tmp.replace(out_path)
    if parity_windows is None:
        return None
    diff = parity(model, out_path, parity_windows)
    logger.info("parity Keras vs onnxruntime on %d windows: max abs diff %.2e",
                len(parity_windows), diff)
    if not diff <= PARITY_TOLERANCE:
        raise ModelError(f"ONNX parity check failed: max abs diff {diff:.2e} > "
                         f"{PARITY_TOLERANCE:.0e} between Keras and onnxruntime")
    return diff


def parity(model, onnx_path: str | Path, windows: np.ndarray) -> float:
    """Max abs difference between Keras and onnxruntime on ``windows``."""
    import onnxruntime as ort

    windows = np.asarray(windows, dtype=np.float32)
    expected = np.asarray(model(windows, training=False))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: windows})[0]
    return float(np.max(np.abs(expected - got)))


def time_per_window_ms(onnx_path: str | Path, frames: int, n_mels: int, repeats: int = 200) -> float:
    """Median single-window latency with onnxruntime on one thread (for the model card)."""
    import time

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).normal(-40, 15, (1, frames, n_mels, 1)).astype(np.float32)
    for _ in range(20):
        session.run(None, {name: x})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000.0)


def keras_to_onnx(model, input_name: str, output_names, frames: int | None = None,
                  n_mels: int | None = None, optimized: bool = True):
    """An ONNX ``ModelProto`` of a Keras model with named input and outputs (opset 17).

    ``output_names`` follow the order of ``model.outputs``; the input is
    ``[batch, frames, n_mels, 1]`` (``frames=None`` keeps the time axis free).
    ``optimized`` rewrites the graph with :func:`export.onnx_optimize.optimize`.
    """
    import tensorflow as tf
    import tf2onnx

    frames = frames if frames is not None else model.input.shape[1]
    n_mels = n_mels if n_mels is not None else model.input.shape[2]
    spec = (tf.TensorSpec((None, frames, n_mels, 1), tf.float32, name=input_name),)
    outputs = model.outputs if isinstance(model.outputs, (list, tuple)) else [model.outputs]
    if len(outputs) != len(output_names):
        raise ModelError(f"model has {len(outputs)} outputs, {len(output_names)} names given")
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    proto = _rename_outputs(proto, output_names)
    return optimize(proto) if optimized else proto


def keras_to_onnx_inputs(model, inputs, output_names, optimized: bool = True):
    """An ONNX ``ModelProto`` of a Keras model with several named, fixed-shape inputs.

    ``inputs`` is ``[(name, shape), ...]`` in the order of ``model.inputs``;
    ``output_names`` follow ``model.outputs`` (a step model with state inputs);
    ``optimized`` as in :func:`keras_to_onnx`.
    """
    import tensorflow as tf
    import tf2onnx

    spec = tuple(tf.TensorSpec(shape, tf.float32, name=name) for name, shape in inputs)
    if len(model.outputs) != len(output_names):
        raise ModelError(f"model has {len(model.outputs)} outputs, {len(output_names)} names given")
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    proto = _rename_outputs(proto, output_names)
    return optimize(proto) if optimized else proto


def _rename_outputs(proto, output_names):
    renames = {out.name: new for out, new in zip(proto.graph.output, output_names)}
    for node in proto.graph.node:
        node.input[:] = [renames.get(i, i) for i in node.input]
        node.output[:] = [renames.get(o, o) for o in node.output]
    for out in proto.graph.output:
        out.name = renames.get(out.name, out.name)
    proto.producer_name = "sound-detector export"
    return proto


def write_onnx(proto, metadata_props: dict[str, str], out_path: str | Path) -> Path:
    """Write ``proto`` with ``metadata_props`` atomically (temporary file + rename)."""
    del proto.metadata_props[:]
    for key, value in metadata_props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp.onnx")
    tmp.write_bytes(proto.SerializeToString())
    tmp.replace(out_path)
    return out_path
