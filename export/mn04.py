"""The AudioSet-pretrained EfficientAT ``mn04_as`` network, ported to Keras.

EfficientAT (Schmid, Koutini & Widmer, ICASSP 2023; MIT license) released
``mn04_as``: a MobileNetV3 of width 0.4 trained on AudioSet (527 classes,
mAP 0.432). This module rebuilds its architecture in Keras from the PyTorch
``state_dict`` arrays (``mn04_as.npz``) and also holds a numpy copy of the
teacher's own 32 kHz front end, so the port can be checked against the
published logits before any fine-tuning.

Layout: the project's models take ``[batch, frames, n_mels, 1]`` (time first,
``NTMC``), so every 2-D kernel is transposed from PyTorch's
``[out, in, k_freq, k_time]`` to Keras' ``[k_time, k_freq, in, out]``. All
convolutions pad symmetrically by ``(k - 1) // 2`` (Keras ``same`` pads
stride-2 convolutions asymmetrically and gives other numbers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BN_EPSILON = 1e-3
"""BatchNorm epsilon of the released checkpoint."""

# Block index -> (stride, activation, squeeze-excitation), from the released architecture.
_STRIDE2 = {0, 2, 4, 7, 13}
_RELU_BLOCKS = set(range(1, 7))
_SE_BLOCKS = {4, 5, 6, 11, 12, 13, 14, 15}
N_BLOCKS = 17
"""``features.0`` (stem) .. ``features.16`` (last 1x1 conv)."""
EMBEDDING_DIM = 384
"""Channels of the trunk's last feature map (``features.16``)."""
AUDIOSET_CLASSES = 527


class WeightsError(ValueError):
    """The weights file does not hold the expected mn04 arrays."""


def load_weights(path: str | Path) -> dict[str, np.ndarray]:
    """The state_dict arrays of ``mn04_as.npz`` as float32."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"pretrained weights {path} not found (mn04_as.npz)")
    with np.load(path) as data:
        weights = {key: np.asarray(data[key], dtype=np.float32) for key in data.files}
    if "features.0.0.weight" not in weights or "classifier.5.weight" not in weights:
        raise WeightsError(f"{path} does not hold mn04 weights (features.0.0.weight missing)")
    return weights


@dataclass(frozen=True)
class ConvSpec:
    """One conv + BN (+ activation) of the state_dict."""

    prefix: str
    """``features.N.block.K`` or ``features.N``: arrays are ``prefix.0.weight``, ``prefix.1.*``."""
    kernel: np.ndarray
    depthwise: bool
    activation: str | None


@dataclass(frozen=True)
class SESpec:
    prefix: str
    fc1: tuple[np.ndarray, np.ndarray]
    fc2: tuple[np.ndarray, np.ndarray]


def block_layout(weights: dict[str, np.ndarray], index: int) -> list[ConvSpec | SESpec]:
    """The layers of ``features.<index>`` in order, read from the array names and shapes."""
    act = "relu" if index in _RELU_BLOCKS else "hard_silu"
    if index in (0, N_BLOCKS - 1):
        kernel = weights[f"features.{index}.0.weight"]
        return [ConvSpec(f"features.{index}", kernel, False, act)]
    subs = sorted({int(m.group(1)) for key in weights
                   if (m := re.match(rf"features\.{index}\.block\.(\d+)\.", key))})
    layers: list[ConvSpec | SESpec] = []
    for sub in subs:
        prefix = f"features.{index}.block.{sub}"
        if f"{prefix}.conc_se_layers.0.fc1.weight" in weights:
            se = f"{prefix}.conc_se_layers.0"
            layers.append(SESpec(prefix, (weights[f"{se}.fc1.weight"], weights[f"{se}.fc1.bias"]),
                                 (weights[f"{se}.fc2.weight"], weights[f"{se}.fc2.bias"])))
            continue
        kernel = weights[f"{prefix}.0.weight"]
        layers.append(ConvSpec(prefix, kernel, depthwise=kernel.shape[1] == 1 and kernel.shape[2] > 1,
                               activation=act))
    # The last conv of a block is the linear projection: BN, no activation.
    last = max(i for i, layer in enumerate(layers) if isinstance(layer, ConvSpec))
    proj = layers[last]
    layers[last] = ConvSpec(proj.prefix, proj.kernel, proj.depthwise, None)
    return layers


def _bn_arrays(weights, prefix):
    return [weights[f"{prefix}.1.{name}"] for name in ("weight", "bias", "running_mean", "running_var")]


def build_trunk(weights: dict[str, np.ndarray], inputs=None, n_frames: int | None = None,
                n_mels: int = 128, name: str = "mn04", up_to: int = N_BLOCKS):
    """Keras tensors of the pretrained trunk ``features.0 .. features.<up_to - 1>``.

    Returns ``(inputs, output, layers_by_block)``: ``output`` is
    ``[batch, time', freq', channels]``; ``layers_by_block[i]`` lists the Keras layers of
    block ``i`` (for freezing and per-block learning rates).
    """
    import keras
    from keras import layers as L

    if inputs is None:
        inputs = keras.Input((n_frames, n_mels, 1), name="features")
    x = inputs
    by_block: list[list] = []
    for index in range(up_to):
        block_layers: list = []
        stride = 2 if index in _STRIDE2 else 1
        block_in = x
        for spec in block_layout(weights, index):
            tag = spec.prefix.replace(".", "_").replace("features_", f"{name}_b")
            if isinstance(spec, SESpec):
                pool = L.GlobalAveragePooling2D(keepdims=True, name=f"{tag}_se_pool")
                fc1 = L.Dense(spec.fc1[0].shape[0], activation="relu", name=f"{tag}_se_fc1")
                fc2 = L.Dense(spec.fc2[0].shape[0], activation="sigmoid", name=f"{tag}_se_fc2")
                s = fc2(fc1(pool(x)))
                fc1.set_weights([spec.fc1[0].T, spec.fc1[1]])
                fc2.set_weights([spec.fc2[0].T, spec.fc2[1]])
                mul = L.Multiply(name=f"{tag}_se_scale")
                x = mul([x, s])
                block_layers += [pool, fc1, fc2, mul]
                continue
            k_freq, k_time = spec.kernel.shape[2], spec.kernel.shape[3]
            conv_stride = stride if (spec.depthwise or index == 0) else 1
            if k_freq > 1 or k_time > 1:
                pad = L.ZeroPadding2D(((k_time - 1) // 2, (k_freq - 1) // 2), name=f"{tag}_pad")
                x = pad(x)
                block_layers.append(pad)
            if spec.depthwise:
                conv = L.DepthwiseConv2D((k_time, k_freq), strides=conv_stride, use_bias=False,
                                         name=f"{tag}_dw")
                x = conv(x)
                conv.set_weights([spec.kernel.transpose(3, 2, 0, 1)])
            else:
                conv = L.Conv2D(spec.kernel.shape[0], (k_time, k_freq), strides=conv_stride,
                                use_bias=False, name=f"{tag}_conv")
                x = conv(x)
                conv.set_weights([spec.kernel.transpose(3, 2, 1, 0)])
            bn = L.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=f"{tag}_bn")
            x = bn(x)
            bn.set_weights(_bn_arrays(weights, spec.prefix))
            block_layers += [conv, bn]
            if spec.activation:
                act = L.Activation(spec.activation, name=f"{tag}_act")
                x = act(x)
                block_layers.append(act)
        if (index not in (0, N_BLOCKS - 1) and stride == 1
                and block_in.shape[-1] == x.shape[-1]):
            add = L.Add(name=f"{name}_b{index}_residual")
            x = add([block_in, x])
            block_layers.append(add)
        by_block.append(block_layers)
    return inputs, x, by_block


def audioset_head(weights: dict[str, np.ndarray], pooled, name: str = "audioset"):
    """The released classifier on a pooled ``[batch, 384]`` tensor: AudioSet logits."""
    from keras import layers as L

    fc1 = L.Dense(weights["classifier.2.weight"].shape[0], activation="hard_silu",
                  name=f"{name}_fc1")
    fc2 = L.Dense(weights["classifier.5.weight"].shape[0], name=f"{name}_logits")
    out = fc2(fc1(pooled))
    fc1.set_weights([weights["classifier.2.weight"].T, weights["classifier.2.bias"]])
    fc2.set_weights([weights["classifier.5.weight"].T, weights["classifier.5.bias"]])
    return out, [fc1, fc2]


def build_tagger(weights: dict[str, np.ndarray], n_frames: int | None = None):
    """The whole released network: ``[batch, frames, 128, 1]`` -> AudioSet logits."""
    import keras
    from keras import layers as L

    inputs, trunk, _ = build_trunk(weights, n_frames=n_frames)
    pooled = L.GlobalAveragePooling2D(name="mn04_pool")(trunk)
    logits, _ = audioset_head(weights, pooled)
    return keras.Model(inputs, logits, name="mn04_as")


# --- the teacher's own front end (32 kHz), for checking the port ------------------------

TEACHER_RATE = 32000


def kaldi_mel_banks(n_mels: int = 128, n_fft: int = 1024, sample_rate: int = TEACHER_RATE,
                    fmin: float = 0.0, fmax: float = 15000.0) -> np.ndarray:
    """Kaldi-style triangular mel filters ``[n_mels, n_fft // 2 + 1]`` (Nyquist column zero).

    Triangles are laid out linearly in ``mel = 1127 ln(1 + f / 700)`` and evaluated at
    each FFT bin's frequency, without area normalisation (torchaudio's
    ``compliance.kaldi.get_mel_banks``, as EfficientAT uses it).
    """
    def mel(f):
        return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)

    n_bins = n_fft // 2
    lo, hi = mel(fmin), mel(fmax)
    delta = (hi - lo) / (n_mels + 1)
    b = np.arange(n_mels)[:, None]
    left, center, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
    m = mel(np.arange(n_bins) * (sample_rate / n_fft))[None, :]
    banks = np.maximum(0.0, np.minimum((m - left) / (center - left), (right - m) / (right - center)))
    return np.pad(banks, ((0, 0), (0, 1)))


def teacher_logmel(audio_16k: np.ndarray) -> np.ndarray:
    """The teacher's input for 16 kHz audio: ``[frames, 128]`` (time first), normalised.

    Upsample x2 (``resample_poly``), pre-emphasis 0.97, STFT n_fft 1024 with an 800-point
    symmetric Hann centred in the frame, hop 320, ``center=True`` reflect padding, power,
    Kaldi mel 0-15000 Hz, ``(ln(mel + 1e-5) + 4.5) / 5``.
    """
    from scipy.signal import resample_poly

    x = resample_poly(np.asarray(audio_16k, dtype=np.float64), 2, 1)
    x = x[1:] - 0.97 * x[:-1]
    n_fft, hop, win = 1024, 320, 800
    x = np.pad(x, n_fft // 2, mode="reflect")
    n_frames = 1 + (len(x) - n_fft) // hop
    window = np.zeros(n_fft)
    window[(n_fft - win) // 2:(n_fft - win) // 2 + win] = np.hanning(win)
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * window, axis=1)) ** 2
    mel = spec @ kaldi_mel_banks().T
    return ((np.log(mel + 1e-5) + 4.5) / 5.0).astype(np.float32)
