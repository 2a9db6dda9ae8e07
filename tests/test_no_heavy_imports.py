"""The runtime never needs TensorFlow, librosa or matplotlib (a Raspberry Pi has none).

A subprocess installs a meta-path finder that makes those imports fail, imports
every runtime module of ``detector`` and runs a whole replay through the CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from onnx_models import make_band_model, write_tone_wav

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("tensorflow", "keras", "librosa", "matplotlib", "numba", "tf2onnx", "scipy")
# modules that are analysis/plotting front ends: they may import heavy packages lazily,
# inside functions, but importing the module itself must still work
RUNTIME_MODULES = sorted(
    ".".join(p.relative_to(REPO / "detector").with_suffix("").parts)
    for p in (REPO / "detector").rglob("*.py") if p.stem not in ("__main__", "__init__"))

SCRIPT = textwrap.dedent("""
    import importlib, importlib.abc, json, sys

    BLOCKED = set(json.loads(sys.argv[1]))

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked heavy import: {name}")
            return None

    sys.meta_path.insert(0, Block())
    for name in json.loads(sys.argv[2]):
        importlib.import_module("detector." + name)
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not heavy, heavy
    from detector.cli.main import main
    code = main(sys.argv[3:])
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not heavy, heavy
    sys.exit(code)
""")


def test_runtime_imports_and_replay_without_heavy_packages(tmp_path):
    model = make_band_model(tmp_path / "tiny.onnx")
    tone = write_tone_wav(tmp_path / "tone.wav", [(1.0, 2.5, 1000.0)], seconds=4.0)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(BLOCKED), json.dumps(RUNTIME_MODULES),
         "replay", str(tone), "--model", str(model)],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "blocked heavy import" not in result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["type"], e["label"]) for e in events] == [("start", "siren"), ("end", "siren")]
    # the runtime modules that must exist
    for name in ("config", "model.classifier", "events", "pipeline", "cli.main",
                 "publish.stdout", "audio.features", "model.metadata", "audio.capture"):
        assert name in RUNTIME_MODULES


def test_a_replay_loads_only_what_it_uses(tmp_path):
    """Startup CPU and memory: a replay without MQTT never imports paho (nor ssl through
    it), and the MQTT sink's module with its in-memory queue loads neither sqlite3 nor an
    HTTP server (paho itself brings http.client). prometheus_client (tens of ms and
    megabytes: bench/results/metrics_cost.json) is loaded only when [metrics] is enabled."""
    model = make_band_model(tmp_path / "tiny.onnx")
    tone = write_tone_wav(tmp_path / "tone.wav", [(1.0, 2.5, 1000.0)], seconds=4.0)
    script = ("import json, sys; from detector.cli.main import main; code = main(sys.argv[2:]); "
              "sys.argv[1] == 'mqtt' and __import__('detector.publish.mqtt'); "
              "print(json.dumps(sorted(sys.modules))); sys.exit(code)")
    configs = {"plain": "[mqtt]\nenabled = false\n", "mqtt": "[mqtt]\nenabled = false\n",
               "metrics": "[mqtt]\nenabled = false\n[metrics]\nenabled = true\nport = 0\n"}
    for mode, banned, wanted in (
            ("plain", {"paho", "ssl", "sqlite3", "http.server", "onnx", "scipy",
                       "prometheus_client", "detector.publish.metrics"}, set()),
            ("mqtt", {"sqlite3", "http.server", "onnx", "scipy", "prometheus_client",
                      "detector.publish.metrics"}, {"detector.publish.mqtt"}),
            ("metrics", {"paho", "sqlite3", "onnx", "scipy"},
             {"prometheus_client", "detector.publish.metrics"})):
        config = tmp_path / f"{mode}.toml"
        config.write_text(configs[mode])
        result = subprocess.run([sys.executable, "-c", script, mode, "replay", str(tone),
                                 "--model", str(model), "--config", str(config)],
                                capture_output=True, text=True, timeout=120, cwd=REPO)
        assert result.returncode == 0, result.stderr
        loaded = set(json.loads(result.stdout.strip().splitlines()[-1]))
        assert wanted <= loaded, (mode, sorted(wanted - loaded))
        found = {m for m in loaded if m in banned or m.split(".")[0] in banned}
        assert not found, (mode, sorted(found))
