"""``python -m bench`` in a tiny mode, so every subcommand keeps working (no timing asserts:
speed numbers belong to bench/results, not to tests)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def test_one_harness_with_five_subcommands():
    out = run("--help").stdout
    for sub in ("cost", "latency", "quality", "scale", "peer"):
        assert sub in out
    assert sorted(p.name for p in (REPO / "bench").glob("*.py") if not p.name.startswith("_")) \
        == ["capture.py", "cost.py", "labels_audioset.py", "labels_custom.py", "latency.py",
            "peer.py", "quality.py", "scale.py", "yamnet_peer.py"]


@pytest.mark.slow
def test_cost_tiny(tmp_path, mosquitto):  # mosquitto fixture: fails early if it is missing
    run("cost", "--before", "HEAD", "--seconds", "4", "--repeats", "1", "--runs", "20",
        "--name", "tiny", "--out", str(tmp_path))
    result = json.loads((tmp_path / "tiny.json").read_text())
    assert result["bench"] == "cost" and result["command"].startswith("python -m bench cost ")
    assert {"cpu", "cores", "date", "load_avg_1min_at_start"} <= set(result["machine"])
    assert set(result["median"]) == {"before/mqtt_off", "before/mqtt_on",
                                     "after/mqtt_off", "after/mqtt_on"}
    for row in result["median"].values():
        assert row["startup_cpu_seconds"] > 0 and row["whole_ms_per_audio_second"] > 0
        assert row["peak_rss_mb"] > 10 and row["model_ms_per_window"] > 0 and row["windows"] > 5
    run_ = result["runs"]["after/mqtt_off"][0]
    assert run_["short"]["audio_seconds"] == pytest.approx(1.0, abs=0.01)
    assert run_["long"]["audio_seconds"] == pytest.approx(4.0, abs=0.01)
    assert result["same_events"] == {"mqtt_off": True, "mqtt_on": True}  # HEAD vs HEAD
    assert result["model_call_ms"]["p50"] > 0
    md = (tmp_path / "tiny.md").read_text()
    assert (tmp_path / "tiny.png").stat().st_size > 10_000  # the picture of the same JSON
    assert "whole process per second of audio" in md and "load" in md


@pytest.mark.slow
def test_latency_tiny(tmp_path, mosquitto):
    run("latency", "--onsets", "1", "--gap", "1.0", "--name", "tiny", "--out", str(tmp_path))
    result = json.loads((tmp_path / "tiny.json").read_text())
    assert result["onsets"] == 1 and result["mode"] == "onset"
    row = result["labels"]["horn"]
    assert row["detected"] + row["missed"] == 1
    if row["detected"]:
        assert 0 < row["latency_ms"]["p50"] < 5000


@pytest.mark.slow
def test_latency_after_a_broker_outage_tiny(tmp_path, mosquitto):
    run("latency", "--outage", "1", "--repeats", "1", "--name", "tiny", "--out", str(tmp_path))
    result = json.loads((tmp_path / "tiny.json").read_text())
    (row,) = result["rows"]
    assert row["queued_messages"] > 0 and row["all_delivered"]
    assert "delivered after the broker's return" in (tmp_path / "tiny.md").read_text()


@pytest.mark.slow
def test_scale_tiny(tmp_path, mosquitto):
    run("scale", "--nodes", "2", "--seconds", "7", "--name", "tiny", "--out", str(tmp_path))
    fleet = json.loads((tmp_path / "tiny.json").read_text())["fleets"][0]
    assert fleet["nodes"] == 2 and fleet["exit_codes"] == {"0": 2}
    assert fleet["events_produced"] >= 2  # the siren in the first 7 s, on each node
    assert fleet["events_delivered"] == fleet["events_produced"]
    assert fleet["produced_not_delivered"] == 0


def test_quality_pools_the_model_card_data(tmp_path):
    """The numbers the docs show are those of the model card, pooled the same way."""
    run("quality", "--name", "tiny", "--out", str(tmp_path))
    result = json.loads((tmp_path / "tiny.json").read_text())
    on = result["gate_on"]
    card = (REPO / "detector" / "models" / "MODEL_CARD.md").read_text()
    assert f"| event recall >= 85% | {100 * on['recall']:.1f}% |" in card
    assert f"| false alarms per hour of everyday sound | {on['false_alarms_per_hour']:.1f} |" in card
    assert re.search(rf"\*\*{100 * on['everyday_firing']:.1f}%\*\* of {on['everyday_clips']}", card)
    assert result["model"] == "1.1.0"


def _yamnet_shaped_model(path: Path) -> Path:
    """A tiny stand-in with the W8A8 YAMNet's interface: uint8 [1, 1, 96, 64] in, uint8
    [1, 521] out, and its four quantization initializers (scores follow the mean level)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "audio_scale"),
             numpy_helper.from_array(np.array(144, np.uint8), "audio_zero_point"),
             numpy_helper.from_array(np.array(0.75, np.float32), "class_scores_scale"),
             numpy_helper.from_array(np.array(190, np.uint8), "class_scores_zero_point"),
             numpy_helper.from_array(np.array([1, 1], np.int64), "shape"),
             numpy_helper.from_array(np.linspace(-1, 1, 521, dtype=np.float32)[None], "w")]
    nodes = [helper.make_node("DequantizeLinear", ["audio", "audio_scale", "audio_zero_point"],
                              ["x"]),
             helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0),
             helper.make_node("Reshape", ["m", "shape"], ["m2"]),
             helper.make_node("MatMul", ["m2", "w"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "class_scores_scale",
                                                 "class_scores_zero_point"], ["class_scores"])]
    graph = helper.make_graph(
        nodes, "yamnet_shaped",
        [helper.make_tensor_value_info("audio", TensorProto.UINT8, [1, 1, 96, 64])],
        [helper.make_tensor_value_info("class_scores", TensorProto.UINT8, [1, 521])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.slow
def test_peer_tiny(tmp_path, mosquitto):
    model = _yamnet_shaped_model(tmp_path / "peer" / "model.onnx")
    run("peer", "--seconds", "6", "--repeats", "1", "--yamnet", str(model),
        "--name", "tiny", "--out", str(tmp_path))
    result = json.loads((tmp_path / "tiny.json").read_text())
    runs = result["runs"]
    assert runs["daemon"][0]["cpu_ms_per_audio_second"] > 0
    assert runs["yamnet_0.975"][0]["patches"] == 6  # one 0.975 s patch per 0.975 s of 6 s
    assert runs["yamnet_0.48"][0]["patches"] == 10  # whole 0.48 s chunks from 1.44 s to 5.76 s
    assert result["yamnet"]["source"] == "model.onnx"  # a name, not a local path
    assert "Frigate's cadence" in (tmp_path / "tiny.md").read_text()


def test_peer_refuses_a_missing_model_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench", "peer", "--yamnet",
                           str(tmp_path / "nope.onnx"), "--seconds", "2", "--repeats", "1",
                           "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [f"peer: {tmp_path / 'nope.onnx'}: not found"]


def test_yamnet_front_end_puts_a_tone_in_its_mel_band():
    import numpy as np

    sys.path.insert(0, str(REPO / "bench"))
    from yamnet_peer import PATCH_SAMPLES, SR, YamnetFrontEnd, yamnet_mel_matrix

    t = np.arange(PATCH_SAMPLES) / SR
    patch = YamnetFrontEnd().patch((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))
    assert patch.shape == (96, 64)
    mel = yamnet_mel_matrix()
    band_of_1k = int(np.argmax(mel[int(round(1000 / (SR / 512)))]))
    assert set(np.argmax(patch, axis=1)) == {band_of_1k}
    silence = YamnetFrontEnd().patch(np.zeros(PATCH_SAMPLES, np.float32))
    np.testing.assert_allclose(silence, np.log(0.001), rtol=1e-6)  # YAMNet's log offset


@pytest.mark.slow
def test_latency_on_real_recordings_tiny(tmp_path, mosquitto, shared_data):
    run("latency", "--real", "dog_bark", "siren", "--onsets", "1", "--gap", "1.0",
        "--data", str(shared_data), "--name", "tiny", "--out", str(tmp_path))
    result = json.loads((tmp_path / "tiny.json").read_text())
    assert result["onsets"] == 2 and set(result["labels"]) == {"dog_bark", "siren"}
    assert result["onset_hop_seconds"] == 0.05 and len(result["clips"]) == 2
    for row in result["labels"].values():
        assert row["clips"] == 1 and row["detected"] + row["missed"] == 1
        if row["detected"]:
            assert 0 < row["latency_ms"]["p50"] < 10000
    assert result["model"]
    assert "| dog_bark |" in (tmp_path / "tiny.md").read_text()


def test_latency_without_real_data_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench", "latency", "--real", "siren",
                           "--data", str(tmp_path), "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"latency: no real recordings at {tmp_path}; pass --data or use --sound"]


def test_every_committed_result_has_its_picture(tmp_path):
    """`python -m bench plot` redraws each harness result from its JSON alone; the PNG
    decodes and is the size the page shows, and a file the harness did not write is one
    line and exit 2."""
    from PIL import Image

    results = sorted(p for p in (REPO / "bench" / "results").glob("*.json")
                     if json.loads(p.read_text()).get("bench") in
                     ("cost", "latency", "quality", "peer", "scale"))
    assert {"cost.json", "latency.json", "quality.json", "peer.json", "scale.json"} <= \
        {p.name for p in results}
    for src in results:
        copy = tmp_path / src.name
        copy.write_text(src.read_text())
        run("plot", str(copy))
        with Image.open(copy.with_suffix(".png")) as image:
            assert image.format == "PNG" and image.width >= 500 and image.height >= 300
        assert (src.with_suffix(".png")).is_file(), f"{src.name} has no committed picture"
    other = tmp_path / "other.json"
    other.write_text('{"bench": "nothing"}')
    proc = subprocess.run([sys.executable, "-m", "bench", "plot", str(other)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
