#!/usr/bin/env python3
"""Validate this node's Home Assistant discovery payloads with Home Assistant's own
MQTT discovery schemas (the ``DISCOVERY_SCHEMA`` of its binary_sensor, event and sensor
platforms, after the same abbreviation expansion its discovery code does).

Needs a Python with ``homeassistant`` installed (it is not a dependency of this project):

    python3 -m venv /tmp/ha && /tmp/ha/bin/pip install homeassistant==2024.1.6
    PYTHONPATH=. /tmp/ha/bin/python scripts/check_ha_schemas.py --out bench/results/ha_schemas.md

Exit 0 when every payload is accepted, 1 otherwise (each rejection printed).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from detector.publish.homeassistant import discovery_messages  # noqa: E402

LABELS = ["air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling",
          "engine_idling", "gun_shot", "jackhammer", "siren", "street_music", "explosion"]
"""The event labels of the shipped model (background never gets entities)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the result as markdown to this file")
    parser.add_argument("--node-id", default="garden")
    args = parser.parse_args(argv)
    try:
        from homeassistant.const import __version__ as ha_version
        # imported first: Home Assistant's own start-up order (mqtt alone hits an import cycle)
        import homeassistant.components.persistent_notification  # noqa: F401
        from homeassistant.components.mqtt import binary_sensor, event, sensor
        from homeassistant.components.mqtt.abbreviations import ABBREVIATIONS, DEVICE_ABBREVIATIONS
    except ImportError as exc:
        print(f"check_ha_schemas: error: Home Assistant is not installed in this Python "
              f"({exc}); see --help", file=sys.stderr)
        return 2
    schemas = {"binary_sensor": binary_sensor.DISCOVERY_SCHEMA,
               "event": event.DISCOVERY_SCHEMA, "sensor": sensor.DISCOVERY_SCHEMA}
    messages = discovery_messages(f"sound-detector/{args.node_id}", args.node_id, LABELS,
                                  "1.0.0", "0.0.0")
    rejected = []
    counts: dict[str, int] = {}
    for topic, payload in messages:
        component = topic.split("/")[1]
        config = json.loads(payload)
        # what Home Assistant's discovery does before validating: expand abbreviations
        config = {ABBREVIATIONS.get(k, k): v for k, v in config.items()}
        if isinstance(config.get("device"), dict):
            config["device"] = {DEVICE_ABBREVIATIONS.get(k, k): v
                                for k, v in config["device"].items()}
        try:
            schemas[component](config)
        except Exception as exc:  # voluptuous.Invalid and friends
            rejected.append(f"{topic}: {exc}")
        counts[component] = counts.get(component, 0) + 1
    # the check can fail: payloads broken on purpose must be rejected by the same code
    broken = {"binary_sensor": {**json.loads(messages[0][1]), "device_class": "no-such-class"},
              "event": {k: v for k, v in json.loads(messages[1][1]).items()
                        if k != "event_types"}}
    for component, config in broken.items():
        try:
            schemas[component](config)
        except Exception:
            continue
        print(f"check_ha_schemas: error: a broken {component} payload was accepted; "
              "the check proves nothing", file=sys.stderr)
        return 2
    for line in rejected:
        print(f"REJECTED {line}")
    summary = (f"Home Assistant {ha_version} (Python {platform.python_version()}): "
               f"{len(messages) - len(rejected)} of {len(messages)} discovery payloads accepted "
               f"({', '.join(f'{n} {c}' for c, n in sorted(counts.items()))}; "
               f"{len(LABELS)} labels)")
    print(summary)
    if args.out:
        Path(args.out).write_text(
            f"Written by `scripts/check_ha_schemas.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
            "every discovery payload of a node with the shipped model's labels, validated with "
            "Home Assistant's own MQTT `DISCOVERY_SCHEMA` of each platform (after its "
            "abbreviation expansion).\n\n"
            f"| Home Assistant | payloads | accepted | rejected |\n|---|---|---|---|\n"
            f"| {ha_version} | {len(messages)} | {len(messages) - len(rejected)} | "
            f"{len(rejected)} |\n" + "".join(f"\n- rejected: {r}" for r in rejected))
    return 1 if rejected else 0


if __name__ == "__main__":
    sys.exit(main())
