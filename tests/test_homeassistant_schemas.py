"""The discovery payloads against Home Assistant's own MQTT discovery schemas.

Home Assistant is no dependency of this project (and recent releases need a newer
Python than Debian 12's), so this runs only where a Python with `homeassistant` is
named by $SOUND_DETECTOR_HA_PYTHON (or the test Python has it); the last run's result
is bench/results/ha_schemas.md, written by the script itself."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_discovery_payloads_pass_home_assistant_schemas():
    python = os.environ.get("SOUND_DETECTOR_HA_PYTHON")
    if not python:
        if importlib.util.find_spec("homeassistant") is None:
            pytest.skip("no Home Assistant to check against: set SOUND_DETECTOR_HA_PYTHON to a "
                        "Python with homeassistant installed (see scripts/check_ha_schemas.py)")
        python = sys.executable
    result = subprocess.run([python, str(REPO / "scripts" / "check_ha_schemas.py")],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "23 of 23 discovery payloads accepted" in result.stdout, result.stdout


def test_recorded_result_names_the_version_and_rejects_nothing():
    text = (REPO / "bench" / "results" / "ha_schemas.md").read_text()
    row = next(l for l in text.splitlines() if l.startswith("| 20"))
    version, payloads, accepted, rejected = [c.strip() for c in row.strip("|").split("|")]
    assert payloads == accepted and rejected == "0" and version.count(".") == 2
