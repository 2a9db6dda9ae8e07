"""A probe model for the custom-labels benchmark: the AudioSet-pretrained mn04 trunk's
pooled output as the embedding (needs the [train] extra).

    python bench/custom_probe_model.py OUT.onnx [--weights ../shared/data/pretrained/mn04_as.npz]

EfficientAT mn04_as (MIT), not fine-tuned, exported with tf2onnx: input the
``mn_logmel`` front end at 16 kHz (1 s windows), outputs ``scores`` (sigmoid of
its 527 AudioSet logits; all but the first are declared background labels, so
the probe fires little by itself) and ``embedding`` (the trunk's last feature map averaged over time and
frequency, 384 wide). It shows what custom labels get from an AudioSet-trained
embedding before the shipped model exports one; it is not a product model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--weights", default=str(REPO.parent / "shared" / "data" / "pretrained"
                                                 / "mn04_as.npz"))
    args = parser.parse_args(argv)
    import keras
    import onnx
    import tensorflow as tf
    import tf2onnx

    from detector.audio.features import MN04_FEATURES, MN04_NORMALIZATION, MN04_PARAMS
    from detector.model.metadata import ModelMetadata
    from export.mn04 import audioset_head, build_trunk, load_weights

    weights = load_weights(args.weights)
    labels = tuple(f"audioset_{i:03d}" for i in range(527))
    meta = ModelMetadata(labels=labels, features=MN04_FEATURES, window_seconds=1.0,
                         model_version="mn04-as-probe",
                         trained_on="AudioSet (EfficientAT mn04_as), not fine-tuned",
                         license_note="EfficientAT mn04_as weights, MIT", feature="mn_logmel",
                         feature_params=MN04_PARAMS, normalization=MN04_NORMALIZATION,
                         background_labels=labels[1:], embedding_output="embedding",
                         embedding_dim=384)
    inputs, trunk, _ = build_trunk(weights, n_frames=meta.frames)
    pooled = keras.layers.GlobalAveragePooling2D(name="embedding")(trunk)
    logits, _ = audioset_head(weights, pooled)
    scores = keras.layers.Activation("sigmoid", name="scores")(logits)
    model = keras.Model(inputs, [scores, pooled])
    spec = (tf.TensorSpec((None, meta.frames, 128, 1), tf.float32, name="logmel"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    props = meta.to_props()
    props["embedding_output"] = json.dumps(proto.graph.output[1].name)
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, args.out)
    print(f"wrote {args.out}: outputs {[o.name for o in proto.graph.output]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
