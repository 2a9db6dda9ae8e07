"""One benchmark harness: ``python -m bench cost|latency|quality|scale|peer ...``.

* ``cost``    whole-process CPU and peak RSS per second of audio (startup included), model
              time per window;
* ``latency`` sound onset -> event message at an MQTT subscriber (real Mosquitto, real time);
  ``--outage`` the broker stopped and restarted: queued events delivered after its return;
* ``quality`` recall, wrong labels, everyday clips firing and false alarms per hour of the
  shipped model (from its evaluation's results); ``--labels audioset|custom`` label sources;
* ``scale``   N daemons publishing to one broker;
* ``peer``    the daemon and YAMNet W8A8 (what Frigate runs) in the same rounds.

Each writes one ``bench/results/<name>.json`` (machine, load, date, command and the numbers),
``<name>.md``, a table rendered from that JSON, and ``<name>.png``, its picture (``python -m
bench plot FILE.json...`` redraws one); ``scripts/sync_docs.py`` renders the docs' blocks from
the same JSON.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# As the CLI does: one BLAS thread (OpenBLAS workers spin and cost more than they save).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from bench._common import SUBCOMMANDS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["plot"]:  # redraw committed results, nothing measured
        from bench._plots import main as plot
        return plot(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    subs = parser.add_subparsers(dest="sub", required=True, metavar="|".join(SUBCOMMANDS))
    modules = {}
    for sub in SUBCOMMANDS:
        modules[sub] = importlib.import_module(f"bench.{sub}")
        doc = modules[sub].__doc__
        p = subs.add_parser(sub, help=doc.splitlines()[0], description=doc,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        modules[sub].add_arguments(p)
        p.add_argument("--out", default=None, help="results folder (default bench/results)")
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "labels", None):  # only quality --labels passes options on
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return modules[args.sub].run(args, argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
