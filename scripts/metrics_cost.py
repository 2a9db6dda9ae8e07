"""What serving Prometheus metrics costs the daemon: prometheus_client's import and memory.

Two measurements, each in fresh processes, metrics on and off interleaved, medians:

* the import alone: a child imports the daemon's metrics module (prometheus_client, its
  collectors, http.server) and reports the import time and how much its peak resident
  memory (VmHWM) grew;
* the whole daemon: ``python -m detector replay <demo clip>`` with ``[metrics] enabled``
  (port 0) and without, CPU seconds, wall seconds and peak RSS (``wait4``).

    python scripts/metrics_cost.py [--runs 9] [--out bench/results]

Writes ``bench/results/metrics_cost.json`` (machine, load, date, command, every run) and
``metrics_cost.md`` (the sentence docs/service.md includes). It uses the helpers of
``python -m bench`` (fresh children measured by ``wait4``, machine and load) but is not one
of its subcommands: the question it answers (is prometheus_client cheap enough to load when
metrics are on?) is settled by its results file.
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
from bench._common import REPO, RESULTS, child_env, head, machine, run_child  # noqa: E402

CLIP = REPO / "detector" / "data" / "demo.flac"
IMPORT_PROBE = """
import json, sys, time
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
import detector.pipeline  # what every run imports anyway
before, t0 = hwm(), time.perf_counter()
if sys.argv[1] == "on":
    import detector.publish.metrics, http.server
seconds = time.perf_counter() - t0
print(json.dumps({"import_ms": seconds * 1000.0, "hwm_growth_mb": hwm() - before}))
"""


def median(values) -> float:
    return round(statistics.median(values), 3)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="runs per mode (default 9)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    start = machine()
    runs: dict[str, dict[str, list]] = {"on": {}, "off": {}}
    with tempfile.TemporaryDirectory() as tmp:
        env = child_env(REPO, pycache=Path(tmp) / "pycache")
        configs = {}
        for mode, text in (("on", "[metrics]\nenabled = true\nport = 0\n"),
                           ("off", "[metrics]\nenabled = false\n")):
            configs[mode] = Path(tmp) / f"{mode}.toml"
            configs[mode].write_text("[mqtt]\nenabled = false\n" + text)
        for i in range(args.runs + 1):  # the first round only fills the bytecode cache
            for mode in ("off", "on") if i % 2 else ("on", "off"):
                probe = run_child([sys.executable, "-c", IMPORT_PROBE, mode], env=env)
                probe.check("metrics_cost import probe")
                replay = run_child([sys.executable, "-m", "detector", "replay", CLIP,
                                    "--config", configs[mode]], env=env).check("metrics_cost")
                if i == 0:
                    continue
                got = json.loads(probe.stdout.strip().splitlines()[-1])
                for key, value in (("import_ms", got["import_ms"]),
                                   ("import_hwm_growth_mb", got["hwm_growth_mb"]),
                                   ("replay_cpu_seconds", replay.cpu_seconds),
                                   ("replay_wall_seconds", replay.wall_seconds),
                                   ("replay_maxrss_mb", replay.maxrss_mb)):
                    runs[mode].setdefault(key, []).append(round(value, 4))
    from importlib.metadata import version

    client = version("prometheus_client")  # the version measured

    medians = {mode: {k: median(v) for k, v in got.items()} for mode, got in runs.items()}
    cost = {k: round(medians["on"][k] - medians["off"][k], 3) for k in medians["on"]}
    result = {
        "command": f"python scripts/metrics_cost.py --runs {args.runs}",
        "what": "medians over fresh processes, metrics on vs off, interleaved; replay of "
                f"{CLIP.relative_to(REPO)} with [metrics] enabled (port 0) or not",
        "machine": start, "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
        "revision": head(), "prometheus_client": client,
        "python": sys.version.split()[0], "runs": args.runs,
        "median": medians, "cost": cost, "samples": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics_cost.json").write_text(json.dumps(result, indent=1) + "\n")
    m = start
    sentence = (
        f"Enabling `[metrics]` costs the daemon {cost['import_ms']:.0f} ms more at start "
        f"(importing prometheus_client {client} and its HTTP server) "
        f"and {cost['import_hwm_growth_mb']:.1f} MB of peak memory; a whole replay of the "
        f"demo clip peaks at {medians['on']['replay_maxrss_mb']:.0f} MB with metrics and "
        f"{medians['off']['replay_maxrss_mb']:.0f} MB without, and uses "
        f"{medians['on']['replay_cpu_seconds']:.2f} s against "
        f"{medians['off']['replay_cpu_seconds']:.2f} s of CPU: the import and the "
        "endpoint's shutdown, which waits up to 0.5 s for its poll loop "
        f"(medians of {args.runs} runs, `{result['command']}`, {m['cpu']}, {m['cores']} "
        f"cores, load {m['load_avg_1min_at_start']}, {m['date']}). Without `[metrics]` "
        "the module is never imported.\n")
    (args.out / "metrics_cost.md").write_text(sentence)
    print(sentence, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
