"""bench/cpu_compare.py in a tiny mode, so it keeps working (no timing asserts)."""

from __future__ import annotations

import json

import pytest

from test_bench_smoke import run


@pytest.mark.slow
def test_cpu_compare_tiny(tmp_path, mosquitto):  # mosquitto fixture: fails early if missing
    run("cpu_compare.py", "--before", "HEAD", "--repeats", "1", "--seconds", "6",
        "--name", "tiny", "--out", str(tmp_path))
    result = json.loads((tmp_path / "tiny.json").read_text())
    for label in ("before", "after"):
        (r,) = result["runs"][label]
        assert r["windows"] > 15 and r["cpu_ms_per_audio_second"] > 0
        assert 0 < r["model_ms_per_audio_second"] < r["cpu_ms_per_audio_second"]
    assert (tmp_path / "tiny.md").read_text().count("|") > 20
