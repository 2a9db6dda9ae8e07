"""The shipped model against its rewritten (``export.onnx_optimize``) and int8
(``export.quantize``) variants on a long real replay: cost, scores and events.

    python bench/model_variants.py --seconds 600 --calibration-clips 100 --runs 1000 \\
        --name model_variants

* Replay: ``--seconds`` of real recordings back to back (``bench._common.real_scene``:
  UrbanSound8K, SESA and everyday clips, each after 0.5 s of quiet noise), written once
  as a 16 kHz WAV in a temporary folder (never kept).
* Calibration (int8): ``--calibration-clips`` other real clips of the same collections,
  none of them in the replay, recorded through the daemon's pipeline
  (``export.quantize.record_feeds``).
* Variants: ``fp32`` (model 1.0.0 as tf2onnx exported it, from git), ``optimized`` (that
  graph rewritten: what ships now), ``int8`` (the exported graph, static QDQ: Conv,
  MatMul, Gemm) and ``int8 of optimized``.
* Per variant: per-window CPU ms (1 onnxruntime thread, ORT_ENABLE_ALL, batch 1,
  ``time.process_time`` per run, median / p95 of ``--runs``, all variants interleaved, on
  real windows), file size, node count; every window's scores through
  ``detector.pipeline.Pipeline`` (``record_scores``): max |diff| to fp32 and top-label
  agreement (all windows, and windows above the energy gate); the events of
  ``sound-detector replay FILE --model M`` (MQTT off): identical to fp32 or not, and the
  fp32 event starts kept (same label within 0.5 s).

Results: ``bench/results/<name>.json`` and ``<name>.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import REPO, SHARED_DATA, child_env, machine, real_scene, run_child, save  # noqa: E402,E501
from bench.onnx_optimize import as_exported, time_pair, windows  # noqa: E402

SHIPPED = REPO / "detector" / "models" / "default.onnx"
SR = 16000
MATCH_SECONDS = 0.5


def replay_events(model: Path, wav: Path, config: Path) -> list[dict]:
    """Start and end events of ``sound-detector replay`` (a fresh process)."""
    run = run_child([sys.executable, "-m", "detector", "replay", wav, "--model", model,
                     "--config", config], child_env(REPO)).check(f"replay with {model.name}")
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]


def replay_scores(model: Path, wav: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """Every window's raw scores and level through the daemon's Pipeline, and the gate."""
    from detector.audio.capture import FileSource
    from detector.config import config_from_dict
    from detector.model.classifier import Classifier
    from detector.pipeline import Pipeline

    config = config_from_dict({"model": {"intra_op_threads": 1},
                               "output": {"stdout_json": False, "log_level": "warning"}})
    classifier = Classifier(model, ("CPUExecutionProvider",), 1)
    source = FileSource(wav, SR, realtime=False, block_seconds=config.audio.block_seconds)
    pipeline = Pipeline(config, source, classifier, [], live=False, record_scores=True,
                        node="bench")
    pipeline.run()
    if pipeline.error is not None:
        raise SystemExit(f"pipeline with {model.name} failed: {pipeline.error}")
    return (np.stack(pipeline.score_rows), np.asarray(pipeline.level_rows),
            float(pipeline.tracker.settings.gate_dbfs))


def key(event: dict) -> tuple:
    return (event["type"], event["label"], round(float(event["offset_s"]), 3),
            round(float(event.get("duration_s") or 0.0), 3))


def starts_kept(reference: list[dict], other: list[dict]) -> tuple[int, int, int]:
    """(fp32 starts, of them matched by a start of the same label within MATCH_SECONDS,
    starts of ``other`` that match none)."""
    ref = [(e["label"], float(e["offset_s"])) for e in reference if e["type"] == "start"]
    oth = [(e["label"], float(e["offset_s"])) for e in other if e["type"] == "start"]
    used = [False] * len(oth)
    kept = 0
    for label, t in ref:
        for i, (l2, t2) in enumerate(oth):
            if not used[i] and l2 == label and abs(t2 - t) <= MATCH_SECONDS:
                used[i] = True
                kept += 1
                break
    return len(ref), kept, used.count(False)


def clip_pool(data: Path) -> list[Path]:
    return sorted([*(data / "urbansound8k" / "audio").glob("fold*/*.flac"),
                   *(data / "sesa").glob("*/*.flac"), *(data / "negatives").glob("*/*.flac")])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="replay length")
    parser.add_argument("--calibration-clips", type=int, default=100,
                        help="real clips (not in the replay) for the int8 calibration")
    parser.add_argument("--runs", type=int, default=1000, help="timed runs per variant")
    parser.add_argument("--model", type=Path,
                        help="fp32 model (default: the shipped model as exported, from git)")
    parser.add_argument("--name", default="model_variants", help="results file name")
    parser.add_argument("--out", type=Path, help="results folder (default bench/results)")
    args = parser.parse_args(argv)
    import onnx
    import onnxruntime as ort
    import soundfile as sf

    from export.onnx_optimize import optimize
    from export.quantize import quantize_model

    if not (SHARED_DATA / "urbansound8k").is_dir():
        raise SystemExit(f"model_variants needs the real recordings in {SHARED_DATA}")
    info = machine()
    used: list[Path] = []
    audio, what = real_scene(args.seconds, used=used)
    rng = np.random.default_rng(0)
    pool = [p for p in clip_pool(SHARED_DATA) if p not in set(used)]
    calib = [pool[i] for i in sorted(rng.choice(len(pool), min(args.calibration_clips,
                                                                 len(pool)), replace=False))]
    with tempfile.TemporaryDirectory(prefix="model-variants-") as tmp:
        tmp = Path(tmp)
        wav = tmp / "replay.wav"
        sf.write(str(wav), audio, SR, subtype="PCM_16")
        del audio
        config = tmp / "config.toml"
        config.write_text("[mqtt]\nenabled = false\n[output]\nlog_level = \"warning\"\n")
        calib_dir = tmp / "calibration"
        calib_dir.mkdir()
        for i, path in enumerate(calib):
            (calib_dir / f"{i:04d}_{path.name}").symlink_to(path)
        fp32 = args.model or as_exported(tmp)[0]
        opt = tmp / "optimized.onnx"
        proto = onnx.load(str(fp32))
        onnx.save(optimize(proto), str(opt))  # metadata kept
        variants = {"fp32 (as exported)": fp32, "optimized (ships now)": opt}
        reports = {}
        for label, src in (("int8", fp32), ("int8 of optimized", opt)):
            out = tmp / f"{label.replace(' ', '_')}.onnx"
            reports[label] = quantize_model(src, calib_dir, out, max_clips=len(calib),
                                            latency_runs=0, progress=False)
            variants[label] = out
        x, inputs_what = windows(97)
        timing = dict(zip(variants, time_pair(list(variants.values()), x, args.runs)))
        ref_scores, levels, gate = replay_scores(fp32, wav)
        loud = levels >= gate
        ref_events = replay_events(fp32, wav, config)
        rows = []
        for label, path in variants.items():
            scores = ref_scores if path == fp32 else replay_scores(path, wav)[0]
            events = ref_events if path == fp32 else replay_events(path, wav, config)
            n_ref, kept, extra = starts_kept(ref_events, events)
            agree = scores.argmax(1) == ref_scores.argmax(1)
            rows.append({
                "variant": label, "nodes": len(onnx.load(str(path)).graph.node),
                "bytes": path.stat().st_size, "ms_per_window": timing[label],
                "windows": int(len(scores)), "windows_above_gate": int(loud.sum()),
                "score_max_abs_diff": float(np.max(np.abs(scores - ref_scores))),
                "score_max_abs_diff_above_gate": float(np.max(np.abs(scores - ref_scores)[loud]))
                if loud.any() else 0.0,
                "top_label_agreement": float(agree.mean()),
                "top_label_agreement_above_gate": float(agree[loud].mean()) if loud.any()
                else 1.0,
                "events": len(events), "events_identical": [key(e) for e in events] ==
                [key(e) for e in ref_events],
                "fp32_starts": n_ref, "starts_kept": kept, "extra_starts": extra})
    result = {"machine": info, "onnxruntime": ort.__version__, "replay": what,
              "replay_seconds": args.seconds, "calibration_clips": len(calib),
              "timing_inputs": inputs_what, "quantize_reports": reports, "rows": rows,
              "command": f"python bench/model_variants.py --seconds {args.seconds:g} "
                         f"--calibration-clips {args.calibration_clips} --runs {args.runs} "
                         f"--name {args.name}"}
    lines = [f"Machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}, "
             f"onnxruntime {ort.__version__}; {info['date']}; load average at start "
             f"{info['load_avg_1min_at_start']} (shared machine).",
             f"Command: `{result['command']}` — replay: {args.seconds:g} s of {what}; int8 "
             f"calibrated on {len(calib)} other real clips through the daemon's pipeline; "
             "per-window CPU ms with 1 onnxruntime thread (ORT_ENABLE_ALL), all variants "
             "interleaved.", "",
             "| variant | nodes | size | ms/window median (p95) | max score diff | top label "
             "agrees (above gate) | events | identical events | fp32 starts kept | extra "
             "starts |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["ms_per_window"]
        lines.append(
            f"| {r['variant']} | {r['nodes']} | {r['bytes'] / 1e6:.2f} MB | "
            f"{t['median_ms']:.3f} ({t['p95_ms']:.3f}) | {r['score_max_abs_diff']:.1e} | "
            f"{100 * r['top_label_agreement']:.2f}% ({100 * r['top_label_agreement_above_gate']:.2f}%) "
            f"| {r['events']} | {'yes' if r['events_identical'] else 'no'} | "
            f"{r['starts_kept']} / {r['fp32_starts']} | {r['extra_starts']} |")
    lines.append(f"\n{rows[0]['windows']} windows, {rows[0]['windows_above_gate']} of them above "
                 f"the energy gate; a start is kept when the variant starts the same label "
                 f"within {MATCH_SECONDS} s.")
    path = save(args.name, result, "\n".join(lines) + "\n", args.out)
    print("\n".join(lines))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
