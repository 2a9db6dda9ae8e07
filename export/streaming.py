"""The mn04 trunk on one chunk of columns -> its pooled embedding, as ONNX.

All that is left of the streaming experiment (see docs/model.md, "What the streaming
experiment taught"): ``bench/cost_floor.py`` times this graph at several chunk lengths.
"""

from __future__ import annotations

from pathlib import Path


def write_chunk_trunk(weights, path: str | Path, chunk: int = 25, n_mels: int = 128) -> Path:
    """The frozen trunk on ``[batch, chunk, n_mels, 1]`` -> ``embedding`` ``[batch, 384]``."""
    import keras
    from keras import layers as L

    from .mn04 import build_trunk
    from .onnx_export import keras_to_onnx, write_onnx

    inputs, trunk, _ = build_trunk(weights, n_frames=chunk, n_mels=n_mels)
    emb = L.Lambda(lambda t: keras.ops.mean(t, axis=(1, 2)), name="embedding")(trunk)
    model = keras.Model(inputs, emb, name="mn04_chunk")
    return write_onnx(keras_to_onnx(model, "features", ["embedding"]), {}, path)
