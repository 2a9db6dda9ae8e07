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


def test_replay_blocks_tiny(tmp_path):
    run("replay_blocks.py", "--before", "HEAD", "--repeats", "1", "--seconds", "6",
        "--formats", "flac", "--name", "tiny", "--out", str(tmp_path))
    result = json.loads((tmp_path / "tiny.json").read_text())
    before, after = result["runs"]["flac"]["before"][0], result["runs"]["flac"]["after"][0]
    assert before["windows"] == after["windows"] > 10
    assert before["events"] == after["events"]
    assert after["process_cpu_ms_per_audio_second"] > after["stats_cpu_ms_per_audio_second"] > 0
    assert "whole process CPU" in (tmp_path / "tiny.md").read_text()


@pytest.mark.slow
def test_process_cost_tiny(tmp_path, mosquitto):
    run("process_cost.py", "--before", "HEAD", "--repeats", "1", "--seconds", "4",
        "--name", "tiny", "--out", str(tmp_path))
    result = json.loads((tmp_path / "tiny.json").read_text())
    assert set(result["median"]) == {"before/mqtt_off", "before/mqtt_on",
                                     "after/mqtt_off", "after/mqtt_on"}
    for row in result["median"].values():
        assert row["startup_cpu_seconds"] > 0 and row["whole_ms_per_audio_second"] > 0
        assert row["peak_rss_mb"] > 10 and row["events"] >= 0
    run_ = result["runs"]["after/mqtt_off"][0]
    assert run_["short"]["audio_seconds"] == pytest.approx(1.0, abs=0.01)
    assert run_["long"]["audio_seconds"] == pytest.approx(4.0, abs=0.01)
    assert result["same_events"] == {"mqtt_off": True, "mqtt_on": True}  # HEAD vs HEAD
    assert "startup CPU" in (tmp_path / "tiny.md").read_text()


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
def test_peer_compare_tiny(tmp_path, mosquitto):
    model = _yamnet_shaped_model(tmp_path / "peer" / "model.onnx")
    run("peer_compare.py", "--seconds", "6", "--repeats", "1", "--yamnet", str(model),
        "--name", "tiny", "--out", str(tmp_path))
    result = json.loads((tmp_path / "tiny.json").read_text())
    runs = result["runs"]
    assert runs["daemon"][0]["cpu_ms_per_audio_second"] > 0
    assert runs["yamnet_0.975"][0]["patches"] == 6  # one 0.975 s patch per 0.975 s of 6 s
    assert runs["yamnet_0.48"][0]["patches"] == 10  # whole 0.48 s chunks from 1.44 s to 5.76 s
    assert result["yamnet"]["source"] == "model.onnx"  # a name, not a local path
    assert "Frigate's cadence" in (tmp_path / "tiny.md").read_text()


def test_peer_compare_refuses_a_missing_model_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "peer_compare.py"), "--yamnet",
                           str(tmp_path / "nope.onnx"), "--seconds", "2", "--repeats", "1",
                           "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [f"peer_compare: {tmp_path / 'nope.onnx'}: not found"]


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
    run("latency.py", "--real", "dog_bark", "siren", "--onsets", "1", "--gap", "1.0",
        "--group", "2", "--data", str(shared_data), "--name", "tiny", "--out", str(tmp_path))
    result = json.loads((tmp_path / "tiny.json").read_text())
    assert result["onsets"] == 2 and set(result["labels"]) == {"dog_bark", "siren"}
    import csv

    from export.pretrained import FOLD_GROUPS, _hash_group
    with open(shared_data / "urbansound8k" / "metadata" / "UrbanSound8K.csv") as f:
        folds = {row["slice_file_name"]: int(row["fold"]) for row in csv.DictReader(f)}
    dog, siren = result["clips"]  # only clips held out of rotation 2
    assert folds[dog] in FOLD_GROUPS[2] and _hash_group(siren) == 2
    assert result["group"] == 2 and result["onset_hop_seconds"] == 0.05
    for row in result["labels"].values():
        assert row["clips"] == 1 and row["detected"] + row["missed"] == 1
        if row["detected"]:
            assert 0 < row["latency_ms"]["p50"] < 10000
    assert result["model"]
    assert "| dog_bark |" in (tmp_path / "tiny.md").read_text()


def test_latency_without_real_data_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "latency.py"), "--real", "siren",
                           "--data", str(tmp_path), "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"latency: no real recordings at {tmp_path}; pass --data or use --sound"]


@pytest.mark.slow
def test_decision_policy_tiny(tmp_path, shared_data):
    model = REPO / "detector" / "models" / "default.onnx"
    scores = tmp_path / "fine.npz"
    args = ["--model", str(model), "--group", "2", "--limit", "1", "--data", str(shared_data),
            "--scores", str(scores), "--out", str(tmp_path),
            "--policy", "0.25:2", "0.25:3:onset=0.05", "0.1:2"]
    run("decision_policy.py", *args, "--name", "a")
    assert scores.is_file()
    run("decision_policy.py", *args, "--name", "b")  # from the kept scores: same result
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert a["policies"] == b["policies"]
    rows = {r["policy"]: r for r in a["policies"]}
    # a window every 0.25 s / 0.1 s once the first 1 s window is full
    assert rows["0.25:2"]["windows_per_second"] == pytest.approx(4.0, rel=0.03)
    assert rows["0.1:2"]["windows_per_second"] == pytest.approx(10.0, rel=0.03)
    # onset windows: more than the regular hop's, fewer than every 0.05 s
    assert 4.0 < rows["0.25:3:onset=0.05"]["windows_per_second"] < 20.0
    for r in a["policies"]:
        assert 0 <= r["recall"] <= 1 and r["phases"] >= 1
    run("decision_policy.py", "--combine", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
        "--data", str(shared_data), "--name", "c", "--out", str(tmp_path))
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["policies"][0]["recall"] == pytest.approx(a["policies"][0]["recall"])
    assert (tmp_path / "c.png").is_file() and "| 0.25:2 |" in (tmp_path / "c.md").read_text()


def test_pi_estimate_tiny(tmp_path):
    run("pi_estimate.py", "--runs", "3", "--rounds", "1", "--warmup", "1",
        "--suites", "spec", "daemon", "--name", "tiny", "--out", str(tmp_path), timeout=120)
    result = json.loads((tmp_path / "tiny.json").read_text())
    local = result["local"]
    for net in ("mobilenet_v1", "mobilenet_v2"):
        row = local[f"spec/onnxruntime/{net}"]
        assert row["calls"] == 3 and row["cpu_ms_min_of_round_medians"] > 0
    assert local["daemon/onnxruntime/shipped_model"]["cpu_ms_p50"] > 0
    assert result["daemon"]["mqtt_off"] > 0  # the committed process_cost_onset results
    est = result["estimate"]
    scenarios = ["onnxruntime"]  # from the published A72 times and onnxruntime here
    if "spec/ncnn/mobilenet_v2" in local:  # the ncnn wheel is optional
        assert all(r["ratio"] > 0 for r in est["ratios"]) and len(est["ratios"]) == 2
        scenarios.append("ncnn_class")
    else:
        assert "ncnn" in result["skipped"]["spec/ncnn"]
    for scenario in scenarios:
        for pi in ("pi4", "pi5"):
            row = est["daemon"]["mqtt_off"][scenario][pi]
            assert row["ms_per_audio_second_central"] > 0 and row["headroom_central"] > 0
            low, high = row["ms_per_audio_second_range"]
            assert 0 < low <= row["ms_per_audio_second_central"] <= high
    md = (tmp_path / "tiny.md").read_text()
    assert "| spec/onnxruntime/mobilenet_v2 |" in md and "https://github.com/Tencent/ncnn" in md


def test_pi_estimate_writes_benchncnn_layouts():
    """The generated MobileNets have the layer and blob counts of benchncnn's files."""
    sys.path.insert(0, str(REPO / "bench"))
    from pi_estimate import ncnn_param

    assert ncnn_param("mobilenet_v1").splitlines()[:2] == ["7767517", "112 112"]
    assert ncnn_param("mobilenet_v2").splitlines()[:2] == ["7767517", "219 229"]


def test_null_model_keeps_the_contract_and_never_fires(tmp_path):
    """The floor's null model loads as the shipped one does and its scores fire nothing."""
    import numpy as np

    sys.path.insert(0, str(REPO / "bench"))
    from cost_floor import write_null_model

    from detector.model.classifier import Classifier

    shipped = Classifier(None, ["CPUExecutionProvider"], 1)
    null = Classifier(str(write_null_model(REPO / "detector" / "models" / "default.onnx",
                                           tmp_path / "null.onnx")), ["CPUExecutionProvider"], 1)
    assert null.metadata == shipped.metadata
    window = np.random.default_rng(0).standard_normal(
        (null.metadata.frames, null.metadata.features.n_mels)).astype(np.float32)
    scores = null.predict(window)
    n = len(null.metadata.labels)
    assert np.allclose(scores, 1.0 / n)
    assert all(1.0 / n < t for t in null.metadata.thresholds.values())


@pytest.mark.slow
def test_cost_floor_tiny(tmp_path, shared_data):
    run("cost_floor.py", "--seconds", "3", "--repeats", "1", "--runs", "3", "--rounds", "1",
        "--chunks", "25", "50", "--name", "tiny", "--out", str(tmp_path), timeout=300)
    result = json.loads((tmp_path / "tiny.json").read_text())
    assert set(result["process"]) == {"shipped", "shipped_no_onset", "shipped_coarse", "null",
                                      "null_no_onset"}
    assert result["process"]["null"]["events"] == 0
    trunk = result["trunk"]
    assert set(trunk["per_chunk"]) == {"25", "50"}
    assert all(row["calls"] == 3 for row in trunk["per_chunk"].values())
    null_ms = result["process"]["null_no_onset"]["whole_ms_per_audio_second"]
    assert [row["decide_every_s"] for row in result["floor"]] == [0.25, 0.1, 0.25]
    assert all(row["floor_ms_per_audio_second"] > null_ms for row in result["floor"])
    assert (tmp_path / "tiny.png").stat().st_size > 1000
    assert "null model" in (tmp_path / "tiny.md").read_text()
