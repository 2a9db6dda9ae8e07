"""Scale-out: N simulated sensor nodes publishing to one Mosquitto.

    python -m bench scale --nodes 10 25 50 --seconds 60

Each node is a separate ``python -m detector replay --realtime`` process (the
real daemon code path: file source paced like a microphone, the shipped model,
the event tracker, the MQTT sink) with its own ``node_id``, replaying the
bundled demo street scene back to back for ``--seconds`` of audio. One paho
subscriber counts the events that reach ``sound-detector/+/events``; every
node prints its events as JSON lines on stdout, which counts what was produced.

Reported per N: events produced vs delivered (by id, de-duplicated), CPU
seconds per node (from the children's rusage) and per second of audio, wall
time vs audio time (a node that cannot keep up falls behind real time), and
the load average. On a small machine, large N saturates the CPU: the numbers
say so instead of hiding it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench._common import REPO, Broker, begin, finish, stamp_line

DEMO_SECONDS = 12.0


def run_fleet(n: int, seconds: float, broker: Broker, workdir: Path, timeout: float) -> dict:
    import paho.mqtt.client as mqtt

    delivered: dict[str, set] = {}
    lock = threading.Lock()
    ready = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"scaleout-sub-{n}")
    sub.on_connect = lambda c, u, f, r, p: c.subscribe("sound-detector/+/events", qos=1)
    sub.on_subscribe = lambda c, u, m, r, p: ready.set()

    def on_message(client, userdata, msg):
        event = json.loads(msg.payload)
        with lock:
            delivered.setdefault(event["node"], set()).add(event["id"] + event["type"])

    sub.on_message = on_message
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    if not ready.wait(10):
        raise SystemExit("subscriber could not subscribe")
    clip_seconds = min(DEMO_SECONDS, seconds)
    clip = workdir / "clip.wav"
    import soundfile as sf

    from bench._common import demo_audio

    sf.write(str(clip), demo_audio(16000)[:int(clip_seconds * 16000)], 16000, subtype="PCM_16")
    repeat = max(1, math.ceil(seconds / clip_seconds))
    procs = []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for i in range(n):
        node = f"node{n:02d}-{i:02d}"
        conf = workdir / f"{node}.toml"
        conf.write_text(
            "[model]\nintra_op_threads = 1\n"
            f"[mqtt]\nenabled = true\nhost = \"127.0.0.1\"\nport = {broker.port}\n"
            f"node_id = \"{node}\"\nhomeassistant_discovery = false\n"
            "level_interval_seconds = 10.0\n[output]\nlog_level = \"warning\"\n")
        out = (workdir / f"{node}.jsonl").open("wb")
        procs.append((node, out, subprocess.Popen(
            [sys.executable, "-m", "detector", "replay", str(clip), "--config", str(conf), "--realtime",
             "--repeat", str(repeat)], stdout=out, stderr=subprocess.DEVNULL, env=env,
            cwd=workdir)))
    codes = []
    for node, out, proc in procs:
        remaining = max(1.0, timeout - (time.monotonic() - t0))
        try:
            codes.append(proc.wait(remaining))
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                codes.append(proc.wait(10))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        out.close()
    wall = time.monotonic() - t0
    load = os.getloadavg()[0]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    time.sleep(1.0)  # let the last QoS 1 messages arrive
    sub.loop_stop()
    sub.disconnect()
    produced = 0
    lost = 0
    for node, out, _ in procs:
        ids = set()
        for line in (workdir / f"{node}.jsonl").read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            ids.add(event["id"] + event["type"])
        produced += len(ids)
        lost += len(ids - delivered.get(node, set()))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    audio = repeat * clip_seconds
    return {"nodes": n, "audio_seconds_per_node": audio, "wall_seconds": round(wall, 1),
            "behind_real_time_s": round(wall - audio, 1),
            "exit_codes": {str(c): codes.count(c) for c in sorted(set(codes), key=str)},
            "events_produced": produced,
            "events_delivered": sum(len(v) for v in delivered.values()),
            "produced_not_delivered": lost,
            "cpu_seconds_per_node": round(cpu / n, 2),
            "cpu_ms_per_audio_second_per_node": round(1000 * cpu / n / audio, 1),
            "load_avg_1min_at_end": round(load, 2)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="audio per node (whole repeats of the 12 s demo clip, or "
                             "of its first SECONDS when shorter)")
    parser.add_argument("--timeout", type=float, default=600.0, help="per fleet size")
    parser.add_argument("--name", default="scale")


def run(args, argv) -> int:
    result = begin("scale", argv)
    rows = []
    with Broker() as broker, tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        for n in args.nodes:
            work = Path(tmp) / f"n{n}"
            work.mkdir()
            print(f"{n} nodes...", flush=True)
            rows.append(run_fleet(n, args.seconds, broker, work, args.timeout))
            print(json.dumps(rows[-1]), flush=True)
    result["fleets"] = rows
    finish(result, args.name, args.out, markdown)
    return 0


def markdown(r: dict) -> str:
    md = ["| nodes | audio/node | wall | produced | delivered | lost | CPU/node | "
          "CPU per audio s per node | load avg at end | exit codes |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for f in r["fleets"]:
        md.append(f"| {f['nodes']} | {f['audio_seconds_per_node']:.0f} s | {f['wall_seconds']} s "
                  f"| {f['events_produced']} | {f['events_delivered']} | "
                  f"{f['produced_not_delivered']} | {f['cpu_seconds_per_node']} s | "
                  f"{f['cpu_ms_per_audio_second_per_node']} ms | {f['load_avg_1min_at_end']} | "
                  f"{f['exit_codes']} |")
    md += ["", "Each node a `python -m detector replay --realtime` process (the demo clip, "
           "the shipped model, MQTT), one Mosquitto, one subscriber counting by event id.", "",
           stamp_line(r)]
    return "\n".join(md) + "\n"
