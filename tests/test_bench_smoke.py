"""The bench scripts in a tiny mode, so they keep working (no timing asserts: speed
numbers belong to bench/results, not to tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_run_bench_tiny(tmp_path, mosquitto):  # mosquitto fixture: fails early if it is missing
    pytest.importorskip("librosa")
    run("run_bench.py", "--seconds", "8", "--runs", "20", "--name", "tiny", "--out", str(tmp_path))
    result = json.loads((tmp_path / "tiny.json").read_text())
    pipe = result["pipeline"]
    assert pipe["audio_seconds"] == pytest.approx(8.0, abs=0.1)
    assert pipe["windows"] > 20 and pipe["events"] >= 2  # the demo's siren starts and ends
    assert pipe["cpu_ms_per_audio_second"] > 0 and pipe["peak_rss_mb"] > 10
    assert pipe["inference_ms_per_window"]["p50"] > 0
    assert result["features_streaming_vs_librosa"]["ratio"] > 0
    assert (tmp_path / "tiny.md").read_text().count("|") > 20


@pytest.mark.slow
def test_latency_tiny(tmp_path, mosquitto):
    run("latency.py", "--onsets", "1", "--gap", "1.0", "--name", "tiny", "--out", str(tmp_path))
    result = json.loads((tmp_path / "tiny.json").read_text())
    assert result["onsets"] == 1
    assert result["detected"] + result["missed"] == 1
    if result["detected"]:
        assert 0 < result["latency_ms"]["p50"] < 5000


@pytest.mark.slow
def test_scaleout_tiny(tmp_path, mosquitto):
    run("scaleout.py", "--nodes", "2", "--seconds", "7", "--name", "tiny", "--out", str(tmp_path))
    fleet = json.loads((tmp_path / "tiny.json").read_text())["fleets"][0]
    assert fleet["nodes"] == 2 and fleet["exit_codes"] == {"0": 2}
    assert fleet["events_produced"] >= 2  # the siren in the first 7 s, on each node
    assert fleet["events_delivered"] == fleet["events_produced"]
    assert fleet["produced_not_delivered"] == 0


def test_frontend_cost_tiny(tmp_path):
    run("frontend_cost.py", "--seconds", "2", "--rounds", "1", "--name", "tiny",
        "--out", str(tmp_path))
    result = json.loads((tmp_path / "tiny.json").read_text())
    rows = result["frontends"]
    assert set(rows) == {"logmel_db", "mn_logmel"}
    assert rows["mn_logmel"]["n_mels"] == 128 and rows["mn_logmel"]["columns"] == 1 + (32000 - 512) // 160
    assert all(r["cpu_ms_per_audio_second_median"] > 0 for r in rows.values())
    assert "| `mn_logmel` |" in (tmp_path / "tiny.md").read_text()
