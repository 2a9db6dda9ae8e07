"""CPU cost of each model front end per second of audio, streamed as the pipeline does.

``python bench/frontend_cost.py [--seconds 60] [--rounds 7] [--name frontend_cost]``

For each kind (``logmel_db`` with the shipped model's parameters, ``mn_logmel``
with EfficientAT mn04's at 16 kHz) the demo clip, tiled to ``--seconds``, is
appended in 50 ms blocks and the columns are flushed whenever a model hop
(25 columns, 0.25 s) is complete: the pipeline's pattern. CPU time is
``time.process_time`` around the feature calls only. Kinds alternate within
each round so that load from other processes hits both alike; the table gives
the median and the spread over rounds. Writes ``bench/results/<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

# As the CLI does: one BLAS thread (the matmuls are tiny; spinning workers cost more).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import demo_audio, machine, save  # noqa: E402
from detector.audio.features import (MN04_FEATURES, MN04_PARAMS, FeatureParams,  # noqa: E402
                               build_frontend)
from detector.model.classifier import default_model_path  # noqa: E402

BLOCK = 800  # 50 ms at 16 kHz
HOP_COLUMNS = 25


def shipped_params() -> FeatureParams:
    """The shipped model's log-mel parameters (the library defaults without it)."""
    try:
        import onnx

        from detector.model.metadata import ModelMetadata
        model = onnx.load(str(default_model_path()), load_external_data=False)
        props = {p.key: p.value for p in model.metadata_props}
        return ModelMetadata.from_props(props).features
    except Exception:  # pragma: no cover - the bench still runs without the model
        return FeatureParams()


def audio(seconds: float) -> np.ndarray:
    y = demo_audio(16000)
    n = int(seconds * 16000)
    return np.tile(y, int(np.ceil(n / len(y))))[:n].astype(np.float32)


def stream_cost(frontend, y: np.ndarray) -> tuple[float, int]:
    """CPU seconds to stream ``y`` through a fresh streaming instance; columns out."""
    stream = frontend.stream()
    columns = 0
    due = HOP_COLUMNS
    t0 = time.process_time()
    for i in range(0, len(y), BLOCK):
        stream.append(y[i:i + BLOCK])
        if stream.ready_columns >= due:
            columns += stream.flush().shape[0]
            due = HOP_COLUMNS
    columns += stream.flush().shape[0]
    return time.process_time() - t0, columns


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--name", default="frontend_cost")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.seconds < 1 or args.rounds < 1:
        print("frontend_cost: --seconds must be >= 1 and --rounds >= 1", file=sys.stderr)
        return 2
    y = audio(args.seconds)
    kinds = {
        "logmel_db": build_frontend("logmel_db", shipped_params()),
        "mn_logmel": build_frontend("mn_logmel", MN04_FEATURES, MN04_PARAMS),
    }
    for fe in kinds.values():  # warm-up: FFT plans, BLAS threads, page faults
        stream_cost(fe, y[:16000])
    per_second: dict[str, list[float]] = {k: [] for k in kinds}
    columns = {}
    for _ in range(args.rounds):
        for kind, fe in kinds.items():
            cpu, columns[kind] = stream_cost(fe, y)
            per_second[kind].append(cpu / args.seconds * 1000.0)
    rows = {}
    for kind, values in per_second.items():
        p = kinds[kind].params
        rows[kind] = {
            "n_fft": p.n_fft, "hop_length": p.hop_length, "win_length": p.win_length,
            "n_mels": p.n_mels, "columns": columns[kind],
            "cpu_ms_per_audio_second_median": round(statistics.median(values), 3),
            "cpu_ms_per_audio_second_min": round(min(values), 3),
            "cpu_ms_per_audio_second_max": round(max(values), 3),
            "us_per_column_median": round(statistics.median(values) * 1000.0
                                          / (columns[kind] / args.seconds), 2),
        }
    result = {"seconds": args.seconds, "rounds": args.rounds, "block_samples": BLOCK,
              "flush_every_columns": HOP_COLUMNS, "frontends": rows, "machine": machine()}
    lines = [
        f"# Front end CPU per second of audio ({args.seconds:g} s of the demo clip, "
        f"{args.rounds} alternated rounds)",
        "",
        f"Streamed in {BLOCK}-sample blocks, flushed every {HOP_COLUMNS} columns (the "
        "pipeline's pattern); `time.process_time` around the feature calls only. "
        "Command: `python bench/frontend_cost.py" + (
            "" if (args.seconds, args.rounds) == (60.0, 7)
            else f" --seconds {args.seconds:g} --rounds {args.rounds}") + "`.",
        "",
        "| front end | n_fft / hop / win | mel bands | CPU ms per audio s (median) | "
        "min - max | µs per column |",
        "|---|---|---|---|---|---|",
    ]
    for kind, r in rows.items():
        lines.append(f"| `{kind}` | {r['n_fft']} / {r['hop_length']} / {r['win_length']} | "
                     f"{r['n_mels']} | {r['cpu_ms_per_audio_second_median']:.3f} | "
                     f"{r['cpu_ms_per_audio_second_min']:.3f} - "
                     f"{r['cpu_ms_per_audio_second_max']:.3f} | {r['us_per_column_median']:.1f} |")
    info = result["machine"]
    lines += ["", f"Machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}, "
              f"{info['date']}, load average {info['load_avg_1min_at_start']} at start "
              "(the cores are shared with other work)."]
    save(args.name, result, "\n".join(lines) + "\n", args.out)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
