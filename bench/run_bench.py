"""Whole-pipeline cost benchmark: CPU per second of audio, per-window times, RSS, startup.

    python bench/run_bench.py --seconds 600 --name pipeline

One process replays a real clip (the bundled demo street scene, tiled to
``--seconds``) as fast as possible through the daemon's own pipeline: file
source -> streaming log-mel -> ONNX model (1 onnxruntime thread) -> event
tracker -> MQTT to a real local Mosquitto. It reports

* CPU seconds (``time.process_time``, all threads incl. paho's) per second of audio;
* per-window feature and inference time, p50/p95/p99 (the pipeline's own timing);
* peak RSS of the process after the run (before any comparison below loads more);
* startup time from "import the detector" to the first classified window;

and side-by-side ratios measured in the same run: incremental ``StreamingLogMel``
vs recomputing librosa's melspectrogram for every window; fp32 vs int8 model
(EVAL's ``export.quantize``); onnxruntime with 1 vs default intra-op threads.

Results: ``bench/results/<name>.json`` and ``<name>.md``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

T_START = time.perf_counter()

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# As the CLI does: one BLAS thread (OpenBLAS workers spin and cost more than they save).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from bench._common import Broker, demo_audio, machine, percentiles, save, write_tiled  # noqa: E402


def run_pipeline(wav: Path, port: int, model: str | None):
    """Replay ``wav`` through the real pipeline with MQTT on; returns measurements."""
    t_import = time.perf_counter()
    from detector.audio.capture import FileSource
    from detector.config import config_from_dict
    from detector.model.classifier import Classifier
    from detector.pipeline import Pipeline, build_sinks
    from detector.publish.sink import Sink

    class Timing(Sink):
        def __init__(self):
            self.features_ms: list[float] = []
            self.inference_ms: list[float] = []
            self.first_window: float | None = None
            self.events = 0

        def window(self, scores, level_dbfs, now, timing):
            if self.first_window is None:
                self.first_window = time.perf_counter()
            self.features_ms.append(float(timing["features_ms"]))
            self.inference_ms.append(float(timing["inference_ms"]))

        def event(self, event):
            self.events += 1

    config = config_from_dict({
        "model": {"intra_op_threads": 1, **({"path": model} if model else {})},
        "mqtt": {"enabled": True, "host": "127.0.0.1", "port": port, "node_id": "bench",
                 "homeassistant_discovery": True},
        "output": {"stdout_json": False, "log_level": "warning"}})
    timing = Timing()
    classifier = Classifier(config.model.path, config.model.providers,
                            config.model.intra_op_threads)
    source = FileSource(wav, classifier.metadata.features.sample_rate, realtime=False)
    sinks = build_sinks(config, source.sample_rate, stdout=False, extra=[timing])
    pipeline = Pipeline(config, source, classifier, sinks, node="bench")
    cpu0, wall0 = time.process_time(), time.perf_counter()
    pipeline.run()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if pipeline.error is not None:
        raise pipeline.error
    audio_s = pipeline.samples_in / source.sample_rate
    return {
        "audio_seconds": round(audio_s, 2),
        "cpu_seconds": round(cpu, 3),
        "cpu_ms_per_audio_second": round(1000 * cpu / audio_s, 3),
        "wall_seconds": round(wall, 3),
        "realtime_factor": round(audio_s / wall, 1),
        "windows": pipeline.windows,
        "events": pipeline.events_out,
        "features_ms_per_window": percentiles(timing.features_ms),
        "inference_ms_per_window": percentiles(timing.inference_ms),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "startup_to_first_window_s": round(timing.first_window - t_import, 3)
        if timing.first_window else None,
        "interpreter_start_to_first_window_s": round(timing.first_window - T_START, 3)
        if timing.first_window else None,
    }, classifier


def features_ratio(y: np.ndarray, params, frames: int, hop_columns: int, n_windows: int) -> dict:
    """Per model window: StreamingLogMel on the new hop vs librosa on the whole window."""
    import librosa

    from detector.audio.features import StreamingLogMel

    hop_samples = hop_columns * params.hop_length
    window_samples = params.samples_for(frames)
    need = window_samples + n_windows * hop_samples
    y = np.tile(y, int(np.ceil(need / len(y))))[:need].astype(np.float32)
    stream = StreamingLogMel(params)
    stream.push(y[:window_samples])
    t0 = time.process_time()
    for k in range(n_windows):
        s = window_samples + k * hop_samples
        stream.push(y[s:s + hop_samples])
    incremental = (time.process_time() - t0) / n_windows * 1000
    kwargs = dict(sr=params.sample_rate, n_fft=params.n_fft, hop_length=params.hop_length,
                  win_length=params.win_length, n_mels=params.n_mels, fmin=params.fmin,
                  fmax=params.fmax, center=False, power=2.0)
    librosa.power_to_db(librosa.feature.melspectrogram(y=y[:window_samples], **kwargs),
                        ref=1.0, top_db=None)  # warm-up (numba/caches)
    t0 = time.process_time()
    for k in range(n_windows):
        s = (k + 1) * hop_samples
        librosa.power_to_db(librosa.feature.melspectrogram(y=y[s:s + window_samples], **kwargs),
                            ref=1.0, top_db=None)
    recompute = (time.process_time() - t0) / n_windows * 1000
    return {"streaming_ms_per_window": round(incremental, 4),
            "librosa_recompute_ms_per_window": round(recompute, 4),
            "ratio": round(recompute / incremental, 1)}


def model_ms(path: Path, threads: int, window: np.ndarray, runs: int) -> dict:
    from detector.model.classifier import Classifier

    clf = Classifier(path, ("CPUExecutionProvider",), threads)
    for _ in range(10):
        clf.predict(window)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        clf.predict(window)
        times.append((time.perf_counter() - t0) * 1000)
    return percentiles(times)


def int8_model(fp32: Path, wav: Path, workdir: Path, given: str | None) -> Path | None:
    if given:
        return Path(given)
    try:
        from export.quantize import quantize_model
    except ImportError as exc:
        print(f"int8 comparison skipped: export.quantize unavailable ({exc})", file=sys.stderr)
        return None
    calib = workdir / "calibration"
    calib.mkdir(exist_ok=True)
    (calib / wav.name).symlink_to(wav)
    out = workdir / "model.int8.onnx"
    quantize_model(fp32, calib, out, max_clips=1, windows_per_clip=16, latency_runs=10,
                   progress=False)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0,
                        help="audio replayed through the pipeline (default 600)")
    parser.add_argument("--model", default=None, help="ONNX model (default: the shipped one)")
    parser.add_argument("--int8", default=None,
                        help="int8 model to compare (default: quantize the model here)")
    parser.add_argument("--runs", type=int, default=500, help="timed runs per model variant")
    parser.add_argument("--name", default="pipeline", help="results file name")
    parser.add_argument("--out", default=None, help="results folder (default bench/results)")
    args = parser.parse_args(argv)

    info = machine()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, Broker() as broker:
        tmp = Path(tmp)
        sr = 16000
        wav = write_tiled(demo_audio(sr), sr, args.seconds, tmp / "replay.wav")
        pipe, classifier = run_pipeline(wav, broker.port, args.model)
        meta = classifier.metadata
        hop_columns = max(1, int(round((meta.window_hop_seconds or 0.25)
                                       * meta.features.sample_rate / meta.features.hop_length)))
        n_ratio = max(20, min(400, args.runs))
        feats = features_ratio(demo_audio(sr), meta.features, meta.frames, hop_columns, n_ratio)
        from detector.audio.features import logmel

        window = logmel(demo_audio(sr)[:meta.window_samples], meta.features)
        fp32 = classifier.path
        threads = {"1_thread": model_ms(fp32, 1, window, args.runs),
                   "default_threads": model_ms(fp32, 0, window, args.runs)}
        q_path = int8_model(fp32, wav, tmp, args.int8)
        quant = None
        if q_path is not None:
            quant = {"fp32": model_ms(fp32, 1, window, args.runs),
                     "int8": model_ms(q_path, 1, window, args.runs),
                     "fp32_bytes": fp32.stat().st_size, "int8_bytes": q_path.stat().st_size}
    result = {"machine": info, "command": "python bench/run_bench.py " + " ".join(
        sys.argv[1:] if argv is None else argv), "model": meta.model_version,
        "window_seconds": meta.window_seconds, "hop_seconds": hop_columns
        * meta.features.hop_length / meta.features.sample_rate,
        "pipeline": pipe, "features_streaming_vs_librosa": feats,
        "onnxruntime_threads_ms": threads, "fp32_vs_int8_ms": quant}
    md = markdown(result)
    path = save(args.name, result, md, args.out)
    print(md)
    print(f"-> {path}")
    return 0


def markdown(r: dict) -> str:
    p = r["pipeline"]
    m = r["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; {m['date']}; "
        f"load average at start {m['load_avg_1min_at_start']} (shared machine).",
        f"Command: `{r['command']}` — model {r['model']}, window {r['window_seconds']} s, "
        f"hop {r['hop_seconds']} s, file source -> features -> model -> events -> MQTT "
        "(real Mosquitto), 1 onnxruntime thread.", "",
        "| metric | value |", "|---|---|",
        f"| audio replayed | {p['audio_seconds']} s ({p['windows']} windows, {p['events']} events) |",
        f"| CPU per second of audio | **{p['cpu_ms_per_audio_second']} ms** |",
        f"| speed | {p['realtime_factor']}x real time |",
        f"| features per window p50/p95/p99 | {_ms(p['features_ms_per_window'])} |",
        f"| inference per window p50/p95/p99 | {_ms(p['inference_ms_per_window'])} |",
        f"| peak RSS | {p['peak_rss_mb']} MB |",
        f"| import -> first window | {p['startup_to_first_window_s']} s "
        f"(interpreter start -> first window {p['interpreter_start_to_first_window_s']} s) |",
        "", "| comparison (same run) | A | B | B / A |", "|---|---|---|---|",
    ]
    f = r["features_streaming_vs_librosa"]
    lines.append(f"| features per window: StreamingLogMel (A) vs librosa recompute (B) | "
                 f"{f['streaming_ms_per_window']} ms | {f['librosa_recompute_ms_per_window']} ms "
                 f"| {f['ratio']}x |")
    t = r["onnxruntime_threads_ms"]
    lines.append(f"| inference p50 (p95): 1 thread (A) vs default threads (B) | "
                 f"{t['1_thread']['p50']} ({t['1_thread']['p95']}) ms | "
                 f"{t['default_threads']['p50']} ({t['default_threads']['p95']}) ms | "
                 f"{t['default_threads']['p50'] / t['1_thread']['p50']:.2f}x |")
    q = r["fp32_vs_int8_ms"]
    if q:
        lines.append(f"| inference p50 (p95): fp32 (A) vs int8 (B), 1 thread | "
                     f"{q['fp32']['p50']} ({q['fp32']['p95']}) ms | "
                     f"{q['int8']['p50']} ({q['int8']['p95']}) ms | "
                     f"{q['int8']['p50'] / q['fp32']['p50']:.2f}x |")
        lines.append(f"| model size fp32 (A) vs int8 (B) | {q['fp32_bytes'] // 1024} KB | "
                     f"{q['int8_bytes'] // 1024} KB | {q['int8_bytes'] / q['fp32_bytes']:.2f}x |")
    else:
        lines.append("| fp32 vs int8 | not run (export.quantize unavailable) | | |")
    return "\n".join(lines) + "\n"


def _ms(p: dict) -> str:
    return " / ".join(f"{p[k]:.3f}" if p[k] is not None else "–" for k in ("p50", "p95", "p99")) + " ms"


if __name__ == "__main__":
    raise SystemExit(main())
