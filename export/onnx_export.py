"""Keras -> ONNX (tf2onnx, opset 17) with named outputs and the model-file metadata.

Every exported graph is rewritten by :func:`export.onnx_optimize.optimize` (Pad and
BatchNorm folded into Conv, HardSwish, squeeze-excitation as 1x1 Conv: same
arithmetic, fewer nodes) before it is written."""

from __future__ import annotations

from pathlib import Path

from detector.errors import ModelError
from export.onnx_optimize import optimize

OPSET = 17


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
