"""Before/after CPU of the whole pipeline: two code versions, interleaved repeats.

    python bench/cpu_compare.py --before 01e80d6 --repeats 5 --seconds 300

Each repeat runs the daemon's pipeline (as ``run_bench.py`` does: file source ->
log-mel -> shipped model, 1 onnxruntime thread -> events -> MQTT to a private
Mosquitto) once in a fresh process for the ``--before`` git revision (exported
with ``git archive`` into a temporary folder) and once for the working tree, back
to back, so both see the same machine load. Per run it reports the process CPU
per second of audio (``time.process_time``, all threads) and splits it into the
model (CPU of the calling thread inside onnxruntime's run) and everything else.
A second process per version runs the pipeline alone (the same audio from memory
in 50 ms blocks, a fake model that answers at once, no outputs): the cost of
features, windowing, level and event logic without the model, file decoding or
MQTT, which is the least sensitive to other load on the machine.
On a shared machine compare the medians, not single runs.

Results: ``bench/results/<name>.json`` and ``<name>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench._common import (REPO, child_env, demo_audio, export_revision,  # noqa: E402
                           machine, run_child, save, write_tiled)

CHILD = r"""
import json, os, sys, time
from pathlib import Path
tree, wav = Path(sys.argv[1]), Path(sys.argv[2])
os.chdir(tree)
sys.path[:0] = [str(tree), str(tree / "bench")]
import run_bench  # sets one BLAS thread like the CLI, before numpy loads
from _common import Broker
import onnxruntime as ort

model = [0.0]
def timed(fn):
    def run(self, *a, **k):
        t = time.thread_time()
        try:
            return fn(self, *a, **k)
        finally:
            model[0] += time.thread_time() - t
    return run
ort.InferenceSession.run = timed(ort.InferenceSession.run)
ort.InferenceSession.run_with_iobinding = timed(ort.InferenceSession.run_with_iobinding)
with Broker() as broker:
    r, _ = run_bench.run_pipeline(wav, broker.port, None)
m = 1000 * model[0] / r["audio_seconds"]
print(json.dumps({"cpu_ms_per_audio_second": r["cpu_ms_per_audio_second"],
                  "model_ms_per_audio_second": round(m, 3),
                  "other_ms_per_audio_second": round(r["cpu_ms_per_audio_second"] - m, 3),
                  "features_ms_per_window_p50": r["features_ms_per_window"]["p50"],
                  "inference_ms_per_window_p50": r["inference_ms_per_window"]["p50"],
                  "windows": r["windows"], "events": r["events"]}))
"""

OVERHEAD_CHILD = r"""
import os, sys
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import json, time
from pathlib import Path
import numpy as np
tree, raw = Path(sys.argv[1]), Path(sys.argv[2])
os.chdir(tree)
sys.path.insert(0, str(tree))
from detector.audio.capture import AudioSource
from detector.config import config_from_dict
from detector.model.classifier import Classifier
from detector.pipeline import Pipeline

y = np.fromfile(raw, dtype=np.float32)
real = Classifier(None)
scores = real.predict(np.zeros((real.metadata.frames, real.metadata.features.n_mels),
                                dtype=np.float32))

class Memory(AudioSource):
    sample_rate = 16000
    def __init__(self):
        self.pos = 0
    def start(self):
        pass
    def stop(self):
        pass
    def read(self, timeout=0.5):
        if self.pos >= y.size:
            raise EOFError
        self.pos += 800
        return y[self.pos - 800:self.pos]

class Instant:
    metadata = real.metadata
    def predict(self, window):
        return scores

config = config_from_dict({"mqtt": {"enabled": False},
                           "output": {"stdout_json": False, "log_level": "warning"}})
pipe = Pipeline(config, Memory(), Instant(), [], node="x")
t = time.process_time()
pipe.run()
print(json.dumps({"pipeline_only_ms_per_audio_second":
                  round(1000 * (time.process_time() - t) / (y.size / 16000), 3)}))
"""

KEYS = ("cpu_ms_per_audio_second", "model_ms_per_audio_second", "other_ms_per_audio_second",
        "features_ms_per_window_p50", "inference_ms_per_window_p50",
        "pipeline_only_ms_per_audio_second")


def run_once(tree: Path, wav: Path, raw: Path) -> dict:
    result = {}
    for child, arg in ((CHILD, wav), (OVERHEAD_CHILD, raw)):
        run = run_child([sys.executable, "-c", child, str(tree), str(arg)],
                        child_env(tree)).check("cpu_compare")
        result.update(json.loads(run.stdout.strip().splitlines()[-1]))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision to compare against")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=300.0,
                        help="audio replayed per run (default 300)")
    parser.add_argument("--name", default="cpu_compare", help="results file name")
    parser.add_argument("--out", default=None, help="results folder (default bench/results)")
    args = parser.parse_args(argv)

    info = machine()
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="cpu-compare-") as tmp:
        tmp = Path(tmp)
        before_tree = tmp / "before"
        before_tree.mkdir()
        sha = export_revision(args.before, before_tree)
        wav = write_tiled(demo_audio(16000), 16000, args.seconds, tmp / "replay.wav")
        raw = tmp / "replay.f32"
        import soundfile as sf

        sf.read(str(wav), dtype="float32")[0].astype(np.float32).tofile(raw)
        for i in range(args.repeats):
            for label, tree in (("before", before_tree), ("after", REPO)):
                r = run_once(tree, wav, raw)
                runs[label].append(r)
                print(f"repeat {i + 1} {label}: " + json.dumps(r), file=sys.stderr)
    medians = {label: {k: round(statistics.median(r[k] for r in rs), 3) for k in KEYS}
               for label, rs in runs.items()}
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result = {"machine": info, "load_avg_1min_at_end": load_end,
              "command": "python bench/cpu_compare.py " + " ".join(
                  sys.argv[1:] if argv is None else argv),
              "before": sha, "after": "working tree", "seconds": args.seconds,
              "repeats": args.repeats, "median": medians, "runs": runs}
    md = markdown(result)
    path = save(args.name, result, md, args.out)
    print(md)
    print(f"-> {path}")
    return 0


def markdown(r: dict) -> str:
    m = r["machine"]
    b, a = r["median"]["before"], r["median"]["after"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; {m['date']}; "
        f"load average {m['load_avg_1min_at_start']} at start, "
        f"{r['load_avg_1min_at_end']:.2f} at end (shared machine).",
        f"Command: `{r['command']}` — {r['repeats']} interleaved repeats of "
        f"{r['seconds']:g} s of audio each; before = {r['before']}, after = working tree.", "",
        "| median over repeats | before | after | after / before |", "|---|---|---|---|",
    ]
    names = {"cpu_ms_per_audio_second": "CPU per second of audio (process, all threads)",
             "model_ms_per_audio_second": "of which onnxruntime run (model)",
             "other_ms_per_audio_second": "of which everything else",
             "features_ms_per_window_p50": "features per window p50 (wall)",
             "inference_ms_per_window_p50": "inference per window p50 (wall)",
             "pipeline_only_ms_per_audio_second":
                 "pipeline alone: in-memory 50 ms blocks, instant fake model, no MQTT"}
    for k in KEYS:
        lines.append(f"| {names[k]} | {b[k]:.3f} ms | {a[k]:.3f} ms | "
                     f"{a[k] / b[k]:.2f}x |" if b[k] else f"| {names[k]} | {b[k]} | {a[k]} | |")
    lines += ["", "| repeat | before CPU ms/s (model + rest) | after CPU ms/s (model + rest) |",
              "|---|---|---|"]
    for i, (x, y) in enumerate(zip(r["runs"]["before"], r["runs"]["after"]), 1):
        lines.append(f"| {i} | {x['cpu_ms_per_audio_second']:.2f} "
                     f"({x['model_ms_per_audio_second']:.2f} + {x['other_ms_per_audio_second']:.2f})"
                     f" | {y['cpu_ms_per_audio_second']:.2f} "
                     f"({y['model_ms_per_audio_second']:.2f} + {y['other_ms_per_audio_second']:.2f}) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
