"""The least CPU the daemon can cost here with any model built on the mn04 trunk.

    python bench/cost_floor.py --seconds 600 --repeats 3 --runs 200 --rounds 6

Two measurements, then their sum:

* **The daemon without a model.** A *null model* with the shipped model's contract and
  metadata (same input ``[batch, frames, n_mels, 1]``, ``scores`` and ``embedding`` outputs,
  labels, thresholds, front end) whose graph does no work (one mean of the input; every score
  ``1 / n_labels``, below every threshold, so no events) is replayed like the shipped model:
  fresh ``python -m detector replay FILE --stats`` processes, MQTT off, on the first 1 s and
  on ``--seconds`` of real recordings (``bench.process_cost``), shipped and null alternated
  (both once more with onset windows off, ``model.onset_hop_seconds = 0``, to show what
  they cost with and without a model; the shipped one also on the coarser grid of
  :data:`COARSE`).
  What the null row costs is what the daemon costs around its model: interpreter, imports,
  model load, decoding, front end, onset detector, event logic, outputs.
* **The trunk, each audio frame once.** The frozen mn04 trunk (the CNN every model of this
  project starts from, ``export.streaming.write_chunk_trunk`` from ``--weights``, rewritten by
  ``export.onnx_optimize`` as the exporter does) is timed on chunks of ``--chunks`` log-mel
  columns, one onnxruntime thread, CPU per call (``time.process_time``), the minimum of the
  round medians. A line through those points gives a fixed cost per call and a cost per
  column. A model that computes every column exactly once (cached activations or
  a trunk on each new chunk) and decides every ``hop`` seconds needs at least
  ``100 columns x per column + 1 / hop x per call`` of trunk per second of audio (the head,
  the state and any left context come on top).

Floor = the null process without onset windows (the least the daemon costs around a model
deciding every 0.25 s; a finer hop only adds windows) + that trunk, per second of audio,
against the issue's 1.5 ms target and the shipped model's own row of the same run. Needs the
``[train]`` extra (the trunk is built from the released weights with Keras and tf2onnx).
Results: ``bench/results/<name>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (REPO, SHARED_DATA, head, machine, save,  # noqa: E402
                           write_scene_in_child)
from bench.process_cost import replay, summarize  # noqa: E402

TARGET_MS = 1.5
"""The issue's whole-daemon target, ms of CPU per second of audio."""
COARSE = ("[model]\nwindow_hop_seconds = 0.5\nonset_hop_seconds = 0.1\nonset_seconds = 0.5\n"
          "[events]\nsmoothing_windows = 2\n")
"""The CPU-saving decision grid of docs/faq.md (``0.5:2:onset=0.1:span=0.5`` in
bench/decision_policy.py)."""
COLUMNS_PER_SECOND = 100
"""Log-mel columns per second of audio (hop 160 at 16 kHz)."""


def write_null_model(shipped: Path, out: Path) -> Path:
    """A model file with ``shipped``'s inputs, outputs and metadata whose graph does no work."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    src = onnx.load(str(shipped), load_external_data=False)
    feats = src.graph.input[0]
    outputs = {o.name: o for o in src.graph.output}
    n_labels = outputs["scores"].type.tensor_type.shape.dim[1].dim_value
    dim = outputs["embedding"].type.tensor_type.shape.dim[1].dim_value
    inits = [numpy_helper.from_array(np.zeros((1, n_labels), np.float32), "zero_scores"),
             numpy_helper.from_array(np.full((1, n_labels), 1.0 / n_labels, np.float32),
                                     "uniform"),
             numpy_helper.from_array(np.zeros((1, dim), np.float32), "zero_embedding")]
    nodes = [helper.make_node("ReduceMean", [feats.name], ["mean"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("Unsqueeze", ["mean", "one"], ["mean2"]),
             helper.make_node("Mul", ["mean2", "zero_scores"], ["s0"]),
             helper.make_node("Add", ["s0", "uniform"], ["scores"]),
             helper.make_node("Mul", ["mean2", "zero_embedding"], ["embedding"])]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "one"))
    graph_outputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", n_labels]),
                     helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])]
    if "audioset" in outputs:  # the gate's evidence: every AudioSet class at logit 0
        n_as = outputs["audioset"].type.tensor_type.shape.dim[1].dim_value
        inits.append(numpy_helper.from_array(np.zeros((1, n_as), np.float32), "zero_audioset"))
        nodes.append(helper.make_node("Mul", ["mean2", "zero_audioset"], ["audioset"]))
        graph_outputs.append(helper.make_tensor_value_info("audioset", TensorProto.FLOAT,
                                                          ["batch", n_as]))
    graph = helper.make_graph(nodes, "null_model", [feats], graph_outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = src.ir_version
    for prop in src.metadata_props:
        entry = model.metadata_props.add()
        entry.key, entry.value = prop.key, prop.value
    out.write_bytes(model.SerializeToString())
    return out


def trunk_files(weights: Path, chunks, folder: Path) -> dict[int, Path]:
    """The optimized mn04 chunk trunk for every chunk length, as ONNX files."""
    import onnx

    from export.mn04 import load_weights
    from export.onnx_optimize import optimize
    from export.streaming import write_chunk_trunk

    arrays = load_weights(weights)
    out = {}
    for frames in chunks:
        raw = write_chunk_trunk(arrays, folder / f"trunk{frames}_raw.onnx", frames)
        optimized = optimize(onnx.load(str(raw)))
        optimized = optimized[0] if isinstance(optimized, tuple) else optimized
        out[frames] = folder / f"trunk{frames}.onnx"
        onnx.save(optimized, str(out[frames]))
    return out


def time_trunks(files: dict[int, Path], runs: int, rounds: int) -> dict:
    from pi_estimate import measure, ort_runner

    runners = {("trunk", "onnxruntime", str(frames)): ort_runner(str(path), (1, frames, 128, 1))
               for frames, path in files.items()}
    timed, loads = measure(runners, runs, rounds, warmup=max(10, runs // 10))
    rows = {int(k.split("/")[-1]): v for k, v in timed.items()}
    frames = np.array(sorted(rows), dtype=np.float64)
    cpu = np.array([rows[int(f)]["cpu_ms_min_of_round_medians"] for f in frames])
    if len(frames) >= 2:
        per_column, per_call = np.polyfit(frames, cpu, 1)
    else:  # one chunk length: all of it counts as per-column cost
        per_column, per_call = cpu[0] / frames[0], 0.0
    return {"per_chunk": {str(int(f)): rows[int(f)] for f in frames},
            "per_call_ms": round(float(per_call), 4),
            "per_column_ms": round(float(per_column), 5), "loads": loads}


def floor_rows(null_ms: float, trunk: dict, hops) -> list[dict]:
    rows = []
    per_call, per_column = trunk["per_call_ms"], trunk["per_column_ms"]
    for hop in hops:
        trunk_ms = COLUMNS_PER_SECOND * per_column + per_call / hop
        rows.append({"decide_every_s": hop, "trunk_ms_per_audio_second": round(trunk_ms, 3),
                     "floor_ms_per_audio_second": round(null_ms + trunk_ms, 3)})
    chunk25 = trunk["per_chunk"].get("25")
    if chunk25 is not None:  # the streaming recipe: the trunk on each new 0.25 s chunk alone
        trunk_ms = chunk25["cpu_ms_min_of_round_medians"] / 0.25
        rows.append({"decide_every_s": 0.25, "measured_chunk": 25,
                     "trunk_ms_per_audio_second": round(trunk_ms, 3),
                     "floor_ms_per_audio_second": round(null_ms + trunk_ms, 3)})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0,
                        help="audio of the long replay (default 600)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", type=int, default=200, help="trunk calls per round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--chunks", type=int, nargs="+", default=[25, 32, 50, 97],
                        help="chunk lengths (log-mel columns) the trunk is timed on")
    parser.add_argument("--hops", type=float, nargs="+", default=[0.25, 0.1],
                        help="decision hops (s) of the floor rows")
    parser.add_argument("--weights", default=str(SHARED_DATA / "pretrained" / "mn04_as.npz"),
                        help="mn04 weights (.npz, see the data README)")
    parser.add_argument("--name", default="cost_floor", help="results file name")
    parser.add_argument("--out", default=None, help="results folder (default bench/results)")
    args = parser.parse_args(argv)
    if args.seconds <= 1.0:
        raise SystemExit(f"cost_floor: --seconds {args.seconds:g} must be above 1")
    if min(args.repeats, args.runs, args.rounds) < 1 or min(args.chunks) < 1:
        raise SystemExit("cost_floor: --repeats, --runs, --rounds and --chunks must be >= 1")
    if min(args.hops) <= 0:
        raise SystemExit("cost_floor: --hops must be > 0")
    weights = Path(args.weights)
    if not weights.is_file():
        raise SystemExit(f"cost_floor: no mn04 weights at {weights} (--weights)")

    info = machine()
    shipped = REPO / "detector" / "models" / "default.onnx"
    with tempfile.TemporaryDirectory(prefix="cost-floor-") as tmp:
        tmp = Path(tmp)
        null = write_null_model(shipped, tmp / "null.onnx")
        long_wav, short_wav = tmp / "long.wav", tmp / "short.wav"
        what, samples = write_scene_in_child(args.seconds, [long_wav])
        write_scene_in_child(1.0, [short_wav])
        base = "[mqtt]\nenabled = false\n[output]\nlog_level = \"warning\"\n"
        config, steady_hop = tmp / "off.toml", tmp / "no_onset.toml"
        config.write_text(base)
        steady_hop.write_text(base + "[model]\nonset_hop_seconds = 0\n")
        coarse = tmp / "coarse.toml"  # the CPU-saving grid of docs/faq.md
        coarse.write_text(base + COARSE)
        pycache = tmp / "pycache"
        rows = {"shipped": (None, config), "shipped_no_onset": (None, steady_hop),
                "shipped_coarse": (None, coarse),
                "null": (null, config), "null_no_onset": (null, steady_hop)}
        replay(REPO, short_wav, config, pycache)  # compile the bytecode once, unmeasured
        runs = {key: [] for key in rows}
        for i in range(args.repeats):
            for key, (model, cfg) in rows.items():
                r = {"short": replay(REPO, short_wav, cfg, pycache, model),
                     "long": replay(REPO, long_wav, cfg, pycache, model)}
                runs[key].append(r)
                print(f"repeat {i + 1} {key}: startup {r['short']['cpu_seconds']} s, long "
                      f"{r['long']['cpu_seconds']} s, {r['long']['events']} events, load "
                      f"{r['long']['load_avg_1min']}", file=sys.stderr)
        trunk = time_trunks(trunk_files(weights, args.chunks, tmp), args.runs, args.rounds)
    process = {key: summarize(rs) for key, rs in runs.items()}
    null_ms = process["null_no_onset"]["whole_ms_per_audio_second"]
    result = {"machine": info, "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
              "command": "python bench/cost_floor.py " + " ".join(
                  sys.argv[1:] if argv is None else argv),
              "tree": head(), "audio": what, "seconds": samples / 16000,
              "repeats": args.repeats, "target_ms_per_audio_second": TARGET_MS,
              "process": process, "runs": runs,
              "trunk": trunk, "floor": floor_rows(null_ms, trunk, args.hops)}
    md = markdown(result)
    path = save(args.name, result, md, args.out)
    plot(result, path.with_suffix(".png"))
    print(md)
    print(f"-> {path}")
    return 0


def markdown(r: dict) -> str:
    m, p, t = r["machine"], r["process"], r["trunk"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; {m['date']}; load "
        f"average {m['load_avg_1min_at_start']} at start, {r['load_avg_1min_at_end']} at end.",
        f"Command: `{r['command']}` — {r['repeats']} repeats of fresh `python -m detector "
        f"replay FILE --stats` processes (MQTT off, compiled bytecode) on the first 1 s and "
        f"all {r['seconds']:g} s of {r['audio']} (tree {r['tree']}), the shipped model and a "
        "null model (the same contract and metadata, a graph that does no work, no events) "
        "alternated; the mn04 trunk timed on chunks, 1 onnxruntime thread, CPU per call "
        "(min of round medians).", "",
        "| whole process, median over repeats | startup CPU (1 s file) | steady CPU per s "
        "of audio | whole process per s of audio | peak RSS | events |",
        "|---|---|---|---|---|---|"]
    for key, title in (("shipped", "shipped model"),
                       ("shipped_no_onset", "shipped model, onset windows off"),
                       ("shipped_coarse", "shipped model, coarse grid (0.5 s hop, onset "
                        "windows every 0.1 s for 0.5 s, 2-window smoothing)"),
                       ("null", "null model (no model work)"),
                       ("null_no_onset", "null model, onset windows off")):
        s = p[key]
        lines.append(f"| {title} | {1000 * s['startup_cpu_seconds']:.0f} ms | "
                     f"{s['steady_ms_per_audio_second']:.2f} ms | "
                     f"**{s['whole_ms_per_audio_second']:.2f} ms** | {s['peak_rss_mb']:.1f} MB "
                     f"| {s['events']} |")
    lines += ["", "| mn04 trunk on a chunk of | CPU per call | calls |", "|---|---|---|"]
    for frames, row in t["per_chunk"].items():
        lines.append(f"| {frames} columns ({int(frames) / 100:.2f} s) | "
                     f"{row['cpu_ms_min_of_round_medians']:.3f} ms | {row['calls']} |")
    lines += ["", f"Line through them: {t['per_call_ms']:.3f} ms per call + "
              f"{1000 * t['per_column_ms']:.2f} µs per column.", "",
              "| any mn04 model that computes each column once and decides every | trunk per "
              "s of audio | + null process without onset windows = floor | target |",
              "|---|---|---|---|"]
    for row in r["floor"]:
        how = (f"{row['decide_every_s']:g} s, trunk on each new {row['measured_chunk']}-column "
               "chunk alone (measured call)" if row.get("measured_chunk")
               else f"{row['decide_every_s']:g} s (the line)")
        lines.append(f"| {how} | {row['trunk_ms_per_audio_second']:.2f} ms | "
                     f"**{row['floor_ms_per_audio_second']:.2f} ms** | "
                     f"{r['target_ms_per_audio_second']:g} ms |")
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    null_ms = r["process"]["null"]["whole_ms_per_audio_second"]
    names, around, trunk = ["shipped model\n(measured)"], [null_ms], [
        r["process"]["shipped"]["whole_ms_per_audio_second"] - null_ms]
    null_ms = r["process"]["null_no_onset"]["whole_ms_per_audio_second"]
    for row in r["floor"]:
        tag = "chunk alone" if row.get("measured_chunk") else "each column once"
        names.append(f"floor: {tag},\ndecide every {row['decide_every_s']:g} s")
        around.append(null_ms)
        trunk.append(row["trunk_ms_per_audio_second"])
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(names))
    ax.bar(x, around, color="#999999", label="daemon around the model (null model; "
           "floors: onset windows off)")
    ax.bar(x, trunk, bottom=around, color="#3b75af", label="model / mn04 trunk")
    ax.axhline(r["target_ms_per_audio_second"], color="#c0392b", ls="--",
               label=f"target {r['target_ms_per_audio_second']:g} ms")
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylabel("CPU ms per second of audio")
    ax.set_title("Whole-process CPU: the shipped model and the least an mn04 model costs",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
