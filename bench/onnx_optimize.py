"""Node count and per-window cost of exported graphs before / after ``export.onnx_optimize``.

    python bench/onnx_optimize.py --runs 2000 --name onnx_optimize

Models: the shipped ``detector/models/default.onnx`` (whole 1 s window, 97 frames) and the
AudioSet mn04 trunk exported at 25 frames (one 0.25 s streaming chunk,
``export.pretrained.write_trunk_onnx``; needs the ``[train]`` extra and
``../shared/data/pretrained/mn04_as.npz``, skipped with a note otherwise). Each is timed as
exported and as rewritten, with onnxruntime on one thread (``ORT_ENABLE_ALL``, what the
daemon uses), batch 1, on real log-mel windows when ../shared/data is there (random
normal inputs otherwise). Runs of the two graphs are interleaved so machine load hits both
alike; the cost of one run is its ``time.process_time`` (CPU of this process), the table
gives the median and p95 of ``--runs`` runs. Also reported: the largest output
difference between the two graphs over the timed inputs.

Results: ``bench/results/<name>.json`` and ``<name>.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import REPO, SHARED_DATA, machine, save  # noqa: E402

SHIPPED = REPO / "detector" / "models" / "default.onnx"
EXPORTED_REV = "b8541f0"
"""The commit that shipped model 1.0.0 as tf2onnx wrote it (the file was rewritten in
place later): the "before" graph of the whole-window row."""


def as_exported(tmp: Path) -> tuple[Path, str]:
    """The shipped model as exported (from git at :data:`EXPORTED_REV`), or the shipped
    file itself when that revision is not in the clone."""
    import subprocess

    blob = subprocess.run(["git", "show", f"{EXPORTED_REV}:detector/models/default.onnx"],
                          cwd=REPO, capture_output=True)
    if blob.returncode != 0 or not blob.stdout:
        return SHIPPED, "the shipped file (its exported version is not in this clone)"
    path = tmp / "default-as-exported.onnx"
    path.write_bytes(blob.stdout)
    return path, f"default.onnx as exported ({EXPORTED_REV})"
WEIGHTS = SHARED_DATA / "pretrained" / "mn04_as.npz"


def session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def windows(frames: int, n: int = 64) -> tuple[np.ndarray, str]:
    """``[n, frames, 128, 1]`` normalised windows of real recordings (``real_scene``)
    through the shipped model's own front end."""
    from bench._common import real_scene
    from detector.audio.features import make_frontend
    from detector.model.classifier import Classifier

    meta = Classifier(SHIPPED).metadata
    audio, what = real_scene(40.0)
    mel = make_frontend(meta)(audio)
    norm = meta.normalization or {"mean": 0.0, "std": 1.0}
    mel = (mel - float(norm["mean"])) / float(norm["std"])
    hop = max(1, (mel.shape[0] - frames) // n)
    x = np.stack([mel[i * hop:i * hop + frames] for i in range(n)]).astype(np.float32)
    return x[..., None], what


def time_pair(paths, x: np.ndarray, runs: int) -> list[dict]:
    sessions = [session(p) for p in paths]
    names = [s.get_inputs()[0].name for s in sessions]
    for i in range(30):
        for s, name in zip(sessions, names):
            s.run(None, {name: x[i % len(x)][None]})
    times = [[] for _ in sessions]
    for i in range(runs):
        feed = x[i % len(x)][None]
        for k, (s, name) in enumerate(zip(sessions, names)):
            t0 = time.process_time()
            s.run(None, {name: feed})
            times[k].append((time.process_time() - t0) * 1e3)
    return [{"median_ms": round(float(np.median(t)), 4),
             "p95_ms": round(float(np.percentile(t, 95)), 4), "runs": runs} for t in times]


def max_output_diff(paths, x: np.ndarray) -> float:
    a, b = (session(p) for p in paths)
    name = a.get_inputs()[0].name
    worst = 0.0
    for i in range(len(x)):
        for u, v in zip(a.run(None, {name: x[i][None]}), b.run(None, {name: x[i][None]})):
            worst = max(worst, float(np.max(np.abs(u.astype(np.float64) - v))))
    return worst


def measure(label: str, raw_path: Path, x: np.ndarray, runs: int, tmp: Path) -> dict:
    import onnx

    from export.onnx_optimize import optimize

    raw = onnx.load(str(raw_path))
    opt = optimize(raw)
    opt_path = tmp / f"{raw_path.stem}.opt.onnx"
    onnx.save(opt, str(opt_path))
    before, after = time_pair([raw_path, opt_path], x, runs)
    return {"model": label, "frames": int(x.shape[1]), "nodes_before": len(raw.graph.node),
            "nodes_after": len(opt.graph.node), "before": before, "after": after,
            "max_output_diff": max_output_diff([raw_path, opt_path], x)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="timed runs per graph")
    parser.add_argument("--name", default="onnx_optimize", help="results file name")
    parser.add_argument("--out", type=Path, help="results folder (default bench/results)")
    args = parser.parse_args(argv)
    import onnxruntime as ort

    info = machine()
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        x97, what = windows(97)
        exported, which = as_exported(tmp)
        rows.append(measure(f"model 1.0.0 whole window: {which}", exported, x97, args.runs,
                            tmp))
        if not WEIGHTS.is_file():
            notes.append(f"mn04 trunk skipped: {WEIGHTS.name} not found")
        else:
            try:
                from export.mn04 import load_weights
                from export.onnx_export import keras_to_onnx, write_onnx
                from export.pretrained import trunk_model
            except ImportError as exc:
                notes.append(f"mn04 trunk skipped: the [train] extra is missing ({exc})")
            else:
                model = trunk_model(load_weights(WEIGHTS), 25)
                raw = tmp / "trunk25.onnx"
                write_onnx(keras_to_onnx(model, "features", ["sequence", "audioset"],
                                         optimized=False), {}, raw)
                rows.append(measure("mn04 trunk (0.25 s chunk)", raw, x97[:, :25].copy(),
                                    args.runs, tmp))
    result = {"machine": info, "onnxruntime": ort.__version__, "inputs": what,
              "command": f"python bench/onnx_optimize.py --runs {args.runs} --name {args.name}",
              "rows": rows, "notes": notes}
    lines = [f"Machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}, "
             f"onnxruntime {ort.__version__}; {info['date']}; load average at start "
             f"{info['load_avg_1min_at_start']} (shared machine).",
             f"Command: `{result['command']}` — 1 onnxruntime thread, ORT_ENABLE_ALL, batch 1, "
             f"CPU time (process_time) per run, the two graphs interleaved; inputs: {what}.",
             "",
             "| model | frames | nodes as exported → rewritten | median ms before → after "
             "| p95 ms before → after | max output diff |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        b, a = r["before"], r["after"]
        lines.append(f"| {r['model']} | {r['frames']} | {r['nodes_before']} → {r['nodes_after']} "
                     f"| {b['median_ms']:.3f} → **{a['median_ms']:.3f}** "
                     f"({a['median_ms'] / b['median_ms']:.2f}x) | {b['p95_ms']:.3f} → "
                     f"{a['p95_ms']:.3f} | {r['max_output_diff']:.1e} |")
    lines += [f"\n{n}" for n in notes]
    path = save(args.name, result, "\n".join(lines) + "\n", args.out)
    print("\n".join(lines))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
