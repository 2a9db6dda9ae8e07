"""Static int8 quantization of a detector model, with the cost and benefit measured.

``python -m export quantize --model M.onnx --calibration DIR --out M.int8.onnx``

* Calibration inputs are *recorded from the daemon's own path*: each real clip in DIR
  (any folder of WAV/FLAC/OGG files, searched recursively) is laid after a second of
  quiet room noise and streamed through :class:`detector.pipeline.Pipeline` with the
  model's own :class:`detector.model.Classifier`, whose session is wrapped so every
  feed it runs is copied (:class:`FeedRecorder`). So the activation ranges are those
  the daemon produces: its front end, normalisation, energy gate (quiet windows never
  reach the model) and, for a model with extra inputs (a streaming model's carried
  state), the real state values, not zeros.
* onnxruntime static quantization, QDQ format, per-channel weights, uint8
  activations / int8 weights (the fast U8S8 path on x86 and ARM).
* Only ``Conv``, ``MatMul`` and ``Gemm`` are quantized by default. onnxruntime
  has no static (QDQ) int8 kernel for ``LSTM``: the recurrent layer stays
  float32, which is what keeps the scores close (``--op-types`` to change).
* The metadata contract is copied over (``model_version`` gets ``+int8``,
  ``quantization`` records how), so the daemon loads the result unchanged.
* Reported: file size, per-window latency with one thread (median / p95),
  score difference on the calibration windows, and with ``--eval-dataset``
  the accuracy of both models through :mod:`export.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from detector.errors import ConfigError, DetectorError, ModelError

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
DEFAULT_OP_TYPES = ("Conv", "MatMul", "Gemm")


def audio_files(calibration_dir: str | Path, max_clips: int, seed: int = 0) -> list[Path]:
    """Up to ``max_clips`` real recordings under ``calibration_dir`` (seeded sample)."""
    root = Path(calibration_dir)
    if not root.is_dir():
        raise ConfigError(f"--calibration {root} is not a directory")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise ConfigError(f"--calibration {root} holds no .wav/.flac/.ogg files; pass a folder "
                          "of real recordings like those the daemon will hear")
    rng = np.random.default_rng(seed)
    if len(files) > max_clips:
        files = [files[i] for i in sorted(rng.choice(len(files), max_clips, replace=False))]
    return files


class FeedRecorder:
    """Stands in for a :class:`~detector.model.Classifier`'s onnxruntime session and keeps
    a copy of every feed (all inputs by name) the classifier runs, then runs it."""

    def __init__(self, session):
        self._session = session
        self.feeds: list[dict[str, np.ndarray]] = []

    def run(self, output_names, feed, *args, **kwargs):
        self.feeds.append({name: np.array(value, copy=True) for name, value in feed.items()})
        return self._session.run(output_names, feed, *args, **kwargs)

    def run_with_iobinding(self, *args, **kwargs):
        raise ModelError("FeedRecorder sees only session.run feeds; the classifier's IO "
                         "binding must be off while recording")

    def __getattr__(self, name):
        return getattr(self._session, name)


class _ArraySource:
    """An in-memory audio source for :class:`~detector.pipeline.Pipeline` (blocks of a
    fixed size, then ``EOFError``), the same interface as the daemon's file replay."""

    def __init__(self, audio: np.ndarray, sample_rate: int, block: int):
        self.audio, self.sample_rate, self.block, self.pos = audio, sample_rate, block, 0
        self.overflows = self.queue_depth = 0

    def start(self):
        self.pos = 0

    def stop(self):
        pass

    def read(self, timeout: float = 0.5):
        if self.pos >= len(self.audio):
            raise EOFError
        out = self.audio[self.pos:self.pos + self.block]
        self.pos += self.block
        return out


def record_feeds(classifier, files, windows_per_clip: int = 4, seed: int = 0,
                 progress: bool = True, lead_seconds: float = 1.0) -> list[dict]:
    """Model feeds recorded from the daemon's path on real clips: each clip, after
    ``lead_seconds`` of quiet room noise, streamed through ``Pipeline`` with
    ``classifier`` (a :class:`~detector.model.Classifier`, streaming models included, or
    anything with ``metadata``, ``predict(window)`` and an onnxruntime ``session`` it
    runs); up to ``windows_per_clip`` of each clip's feeds kept
    (seeded). Any state the classifier carries runs on from clip to clip, as in the daemon."""
    from detector.config import config_from_dict
    from detector.pipeline import Pipeline
    from export.audio import load_audio

    config = config_from_dict({"model": {"intra_op_threads": 1},
                               "output": {"stdout_json": False, "log_level": "warning"}})
    rate = classifier.metadata.features.sample_rate
    block = max(1, int(round(config.audio.block_seconds * rate)))
    rng = np.random.default_rng(seed)
    iterator = files
    if progress:
        try:
            from tqdm import tqdm
            iterator = tqdm(files, desc="calibration", unit="clip", file=sys.stderr,
                            disable=None)
        except ImportError:
            pass
    session = classifier.session
    recorder = FeedRecorder(session)
    # whatever holds the classifier's session runs it through the recorder: the classifier
    # and any stage of it (a streaming model's state stage keeps its own reference)
    holders = [classifier] + [obj for obj in vars(classifier).values()
                              if obj is not classifier and getattr(obj, "session", None) is session]
    binding = getattr(classifier, "_binding", None)
    chosen: list[dict] = []
    try:
        for holder in holders:
            holder.session = recorder
        if binding is not None:
            classifier._binding = None  # the plain session.run path: the same feed, visible
        for path in iterator:
            audio = load_audio(path, rate)
            lead = (10 ** (-60 / 20) * rng.standard_normal(int(lead_seconds * rate)))
            source = _ArraySource(np.concatenate([lead.astype(np.float32), audio]), rate, block)
            pipeline = Pipeline(config, source, classifier, [], live=False, node="calibration")
            pipeline.run()
            if pipeline.error is not None:
                raise pipeline.error
            feeds, recorder.feeds = recorder.feeds, []
            take = min(windows_per_clip, len(feeds))
            chosen += [feeds[i] for i in np.sort(rng.choice(len(feeds), take, replace=False))]
    finally:
        for holder in holders:
            holder.session = session
        if binding is not None:
            classifier._binding = binding
    if not chosen:
        raise ConfigError("no calibration window reached the model (every clip was below "
                          "the energy gate); pass louder real recordings")
    return chosen


class _Reader:
    """onnxruntime CalibrationDataReader over recorded feeds."""

    def __init__(self, feeds: list[dict]):
        self.feeds = feeds
        self.pos = 0

    def get_next(self):
        if self.pos >= len(self.feeds):
            return None
        self.pos += 1
        return self.feeds[self.pos - 1]

    def rewind(self):
        self.pos = 0


def _session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def latency_ms(paths, feeds: list[dict], runs: int = 200) -> list[dict]:
    """Per-window latency of each model, one thread, batch 1: median and p95 in ms.

    The models are timed interleaved (run i of every model back to back), so
    load from other processes hits them alike and the comparison stays fair.
    """
    sessions = [_session(p) for p in paths]
    for i in range(10):  # warm-up
        for session in sessions:
            session.run(None, feeds[i % len(feeds)])
    times = [[] for _ in sessions]
    for i in range(runs):
        for k, session in enumerate(sessions):
            t0 = time.perf_counter()
            session.run(None, feeds[i % len(feeds)])
            times[k].append((time.perf_counter() - t0) * 1e3)
    return [{"median": float(np.median(t)), "p95": float(np.percentile(t, 95)), "runs": runs}
            for t in times]


def output_scores(path, feeds: list[dict], output: str) -> np.ndarray:
    """``output`` of the model at ``path`` for each feed, stacked ``[n, ...]``."""
    session = _session(path)
    return np.concatenate([session.run([output], feed)[0] for feed in feeds])


def quantize_model(model_path: str | Path, calibration_dir: str | Path, out_path: str | Path,
                   *, op_types=DEFAULT_OP_TYPES, per_channel: bool = True,
                   max_clips: int = 200, windows_per_clip: int = 4, seed: int = 0,
                   latency_runs: int = 200, progress: bool = True, classifier=None) -> dict:
    """Write the int8 model to ``out_path``; return the comparison report.

    Calibration feeds are recorded through ``classifier`` (default: the daemon's
    :class:`~detector.model.Classifier` of ``model_path``), see :func:`record_feeds`."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model_path, out_path = Path(model_path), Path(out_path)
    files = audio_files(calibration_dir, max_clips, seed)
    if classifier is None:
        from detector.model import Classifier

        classifier = Classifier(model_path, ("CPUExecutionProvider",), 1)
    score_output = getattr(classifier, "output_name", None) or \
        classifier.session.get_outputs()[0].name
    feeds = record_feeds(classifier, files, windows_per_clip, seed, progress)
    logger.info("calibrating on %d feeds recorded from %d clips", len(feeds), len(files))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(model_path), str(prepared))
            source = prepared
        except Exception as exc:  # shape inference fails on some graphs; quantize as is
            logger.warning("quantization pre-processing failed (%s); quantizing the model "
                           "as exported", str(exc).splitlines()[0] if str(exc) else exc)
            source = model_path
        try:
            quantize_static(str(source), str(out_path), _Reader(feeds),
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(op_types),
                            per_channel=per_channel, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelError(f"int8 quantization of {model_path} failed: {reason}") from None

    original = onnx.load(str(model_path))
    quantized = onnx.load(str(out_path))
    props = {p.key: p.value for p in original.metadata_props}
    ops_in_model = sorted({n.op_type for n in original.graph.node})
    left_float = sorted(op for op in ops_in_model if op in ("LSTM", "GRU", "RNN"))
    props["model_version"] = json.dumps(json.loads(props.get("model_version", '"?"')) + "+int8")
    props["quantization"] = json.dumps({
        "method": "onnxruntime static, QDQ, uint8 activations, int8 weights",
        "per_channel": per_channel, "op_types": list(op_types),
        "float_ops": left_float, "calibration_windows": len(feeds),
        "calibration": "feeds recorded from the daemon's pipeline on real clips"})
    del quantized.metadata_props[:]
    onnx.helper.set_model_props(quantized, props)
    onnx.save(quantized, str(out_path))

    fp_scores = output_scores(model_path, feeds, score_output)
    q_scores = output_scores(out_path, feeds, score_output)
    quantized_nodes = sum(1 for n in quantized.graph.node if n.op_type == "DequantizeLinear")
    report = {
        "model": str(model_path), "out": str(out_path),
        "bytes_fp32": model_path.stat().st_size, "bytes_int8": out_path.stat().st_size,
        "op_types": list(op_types), "float_ops_kept": left_float,
        "dequantize_nodes": quantized_nodes,
        "calibration_windows": len(feeds),
        "score_max_abs_diff": float(np.max(np.abs(fp_scores - q_scores))),
        "score_mean_abs_diff": float(np.mean(np.abs(fp_scores - q_scores))),
        "window_top1_agreement": float(np.mean(fp_scores.argmax(1) == q_scores.argmax(1))),
    }
    if latency_runs:
        report["latency_ms_fp32"], report["latency_ms_int8"] = latency_ms(
            [model_path, out_path], feeds, latency_runs)
    return report


def compare_accuracy(model_path, int8_path, dataset, folds=None, progress=True) -> dict:
    """Accuracy of the float and int8 models on the same clips (export.evaluate)."""
    from export.evaluate import evaluate, load_clips

    clips = load_clips(dataset, folds)
    fp = evaluate(model_path, dataset, clips=clips, progress=progress)
    q = evaluate(int8_path, dataset, clips=clips, progress=progress)
    return {"dataset": str(dataset), "folds": fp["folds"], "n": fp["n"],
            "accuracy_fp32": fp["accuracy"], "accuracy_int8": q["accuracy"],
            "accuracy_change": q["accuracy"] - fp["accuracy"],
            "window_accuracy_fp32": fp["window_accuracy"],
            "window_accuracy_int8": q["window_accuracy"]}


def format_report(r: dict) -> str:
    lines = [f"size: {r['bytes_fp32'] / 1e6:.2f} MB -> {r['bytes_int8'] / 1e6:.2f} MB",
             f"quantized op types {r['op_types']}; kept in float32: {r['float_ops_kept'] or 'none'}",
             f"scores on {r['calibration_windows']} calibration windows: max |diff| "
             f"{r['score_max_abs_diff']:.4f}, mean {r['score_mean_abs_diff']:.4f}, "
             f"top-1 agreement {r['window_top1_agreement']:.3f}"]
    if "latency_ms_fp32" in r:
        a, b = r["latency_ms_fp32"], r["latency_ms_int8"]
        lines.append(f"latency per window, 1 thread: fp32 median {a['median']:.3f} ms "
                     f"(p95 {a['p95']:.3f}), int8 median {b['median']:.3f} ms "
                     f"(p95 {b['p95']:.3f})")
    if "accuracy" in r:
        acc = r["accuracy"]
        lines.append(f"accuracy on {acc['n']} clips: fp32 {acc['accuracy_fp32']:.4f}, int8 "
                     f"{acc['accuracy_int8']:.4f} (change {acc['accuracy_change']:+.4f})")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Static int8 quantization (QDQ, per-channel) of a detector model, "
                          "calibrated on real clips; reports size, latency and accuracy change.")
    parser.add_argument("--model", required=True, type=Path, help="float32 .onnx model")
    parser.add_argument("--calibration", required=True, type=Path,
                        help="folder of real recordings (searched recursively) for activation "
                             "ranges, e.g. an UrbanSound8K training fold")
    parser.add_argument("--out", required=True, type=Path, help="where to write the int8 model")
    parser.add_argument("--op-types", nargs="+", default=list(DEFAULT_OP_TYPES),
                        help="ONNX op types to quantize (default: Conv MatMul Gemm; LSTM has no "
                             "static int8 kernel in onnxruntime)")
    parser.add_argument("--no-per-channel", action="store_true",
                        help="per-tensor instead of per-channel weight scales")
    parser.add_argument("--max-clips", type=int, default=200,
                        help="calibration clips sampled from the folder (default 200)")
    parser.add_argument("--eval-dataset", type=Path,
                        help="also evaluate both models on this dataset (export.evaluate)")
    parser.add_argument("--eval-folds", type=int, nargs="+",
                        help="UrbanSound8K folds for --eval-dataset")
    parser.add_argument("--latency-runs", type=int, default=500,
                        help="timed runs per model for the latency comparison (default 500)")
    parser.add_argument("--json", type=Path, help="write the report as JSON here")


def run(args: argparse.Namespace) -> int:
    try:
        report = quantize_model(args.model, args.calibration, args.out,
                                op_types=tuple(args.op_types),
                                per_channel=not args.no_per_channel, max_clips=args.max_clips,
                                latency_runs=getattr(args, "latency_runs", 500))
        if args.eval_dataset:
            report["accuracy"] = compare_accuracy(args.model, args.out, args.eval_dataset,
                                                  args.eval_folds)
    except DetectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(format_report(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from export._cli import run_command

    return run_command(sys.modules[__name__], "python -m export.quantize", argv)


if __name__ == "__main__":
    sys.exit(main())
