"""The AudioSet gate: the rank rule, pooling over the context, holding and dropping events."""

from __future__ import annotations

import numpy as np
import pytest

from detector.config import EventsConfig
from detector.model.gate import EventGate, Evidence, GateRule, audioset_classes, build_gate, supporting

N = 527
NAMES = audioset_classes()
SIREN = NAMES.index("Siren")
EMERGENCY = NAMES.index("Emergency vehicle")
CLAP = NAMES.index("Clapping")
SPEECH = NAMES.index("Speech")


def logits(**probs: float) -> np.ndarray:
    """AudioSet logits with the named class indices at the given probabilities, others 0.01."""
    p = np.full(N, 0.01, np.float32)
    for key, value in probs.items():
        p[int(key[1:])] = value
    return np.log(p / (1 - p)).astype(np.float32)


def ev(**probs: float) -> np.ndarray:
    return logits(**{f"c{k}": v for k, v in probs.items()})


def test_the_class_list_is_the_527_audioset_names():
    assert len(NAMES) == N == len(set(NAMES))
    assert NAMES[0] == "Speech" and "Gunshot, gunfire" in NAMES


def test_rank_rule_needs_a_support_class_in_the_top_k_and_above_the_floor():
    rule = GateRule(support=(SIREN, EMERGENCY), top_k=2, floor=0.2)
    pooled = np.full(N, 0.01, np.float32)
    pooled[[SPEECH, CLAP, SIREN]] = [0.9, 0.8, 0.7]  # siren third
    assert supporting(pooled, rule) == []
    pooled[CLAP] = 0.1  # siren now second
    assert supporting(pooled, rule) == [SIREN]
    pooled[EMERGENCY] = 0.95  # both in the top 2, best first
    assert supporting(pooled, rule) == [EMERGENCY]
    pooled[SIREN] = 0.96
    assert supporting(pooled, rule) == [SIREN, EMERGENCY]
    assert supporting(pooled, GateRule(support=(SIREN,), top_k=2, floor=0.99)) == []


def test_evidence_is_the_mean_over_the_windows_that_hear_the_context():
    e = Evidence(window_seconds=1.0, max_context_seconds=3.0)
    assert e.pooled(0.0, 3.0) is None
    for t, p in ((0.75, 0.7), (1.0, 0.9), (1.5, 0.1), (2.0, 0.1), (3.0, 0.5)):
        e.add(t, np.full(4, p, np.float32))
    # a 3 s context at t=3 (0..3 s) holds the 1 s windows ending at 1.0 s or later
    np.testing.assert_allclose(e.pooled(3.0, 3.0), np.full(4, (0.9 + 0.1 + 0.1 + 0.5) / 4),
                               rtol=1e-6)
    # 1 s = the last window alone
    np.testing.assert_allclose(e.pooled(3.0, 1.0), np.full(4, 0.5))
    e.reset()
    assert e.pooled(3.0, 3.0) is None


def start(label="siren", id_="a", onset=1.0):
    from detector.events import iso_utc

    return {"id": id_, "type": "start", "label": label, "start": iso_utc(onset)}


def end(label="siren", id_="a"):
    return {"id": id_, "type": "end", "label": label}


def gate(**kw) -> EventGate:
    rule = GateRule(support=(SIREN, EMERGENCY), top_k=3, floor=0.1, context_seconds=1.0,
                    max_wait_seconds=kw.pop("wait", 1.0))
    return EventGate({"siren": rule}, NAMES, window_seconds=1.0, **kw)


def test_a_supported_candidate_is_published_at_once_with_its_evidence():
    g = gate()
    g.add(1.0, ev(**{str(SIREN): 0.9}))
    out = g.filter([start()], 1.0)
    assert [e["type"] for e in out] == ["start"]
    assert out[0]["evidence"] == ["Siren"]
    assert out[0]["start"] == start()["start"]  # the onset, not the decision
    out = g.filter([end()], 2.0)
    assert out[0]["type"] == "end" and out[0]["evidence"] == ["Siren"]
    assert (g.passed, g.dropped) == (1, 0)


def test_a_candidate_waits_for_support_and_its_end_waits_with_it():
    g = gate(wait=1.0)
    g.add(1.0, ev(**{str(CLAP): 0.9}))
    assert g.filter([start()], 1.0) == []
    g.add(1.25, ev(**{str(CLAP): 0.9}))
    assert g.filter([end()], 1.25) == []  # the sound ended before support came
    g.add(1.5, ev(**{str(SIREN): 0.8, str(CLAP): 0.2}))
    out = g.filter([], 1.5)
    assert [e["type"] for e in out] == ["start", "end"]
    assert all(e["evidence"] == ["Siren"] for e in out)


def test_the_room_before_a_sound_does_not_dilute_its_evidence():
    g = gate(wait=1.0)
    g.rules["siren"] = GateRule(support=(SIREN,), top_k=1, context_seconds=3.0,
                                max_wait_seconds=1.0)
    g.evidence = Evidence(1.0, 3.0)
    for t in (1.0, 1.25, 1.5, 1.75, 2.0):  # quiet room: "Silence" first
        g.add(t, ev(**{str(NAMES.index("Silence")): 0.9}))
    g.add(2.25, ev(**{str(SIREN): 0.6, str(NAMES.index("Silence")): 0.05}))
    # over the whole 3 s context, Silence (mean 0.76) outranks Siren (0.11): a siren that
    # began at 2.25 s is judged on its own windows
    out = g.filter([start(onset=2.25)], 2.25)
    assert [e["evidence"] for e in out] == [["Siren"]]


def test_an_unsupported_candidate_is_dropped_with_its_end():
    g = gate(wait=0.5)
    for t in (1.0, 1.25):
        g.add(t, ev(**{str(CLAP): 0.9, str(SPEECH): 0.8, str(NAMES.index("Music")): 0.7}))
        assert g.filter([start()] if t == 1.0 else [], t) == []
    g.add(1.5, ev(**{str(CLAP): 0.9}))
    assert g.filter([], 1.5) == []  # deadline reached: dropped
    assert g.filter([end()], 2.0) == []  # its end never reaches a subscriber
    assert (g.passed, g.dropped) == (0, 1)


def test_ungated_labels_and_a_disabled_gate_pass_everything():
    g = gate()
    assert g.filter([start("dog_bark")], 1.0)[0]["label"] == "dog_bark"
    off = gate(enabled=False)
    assert off.filter([start()], 1.0)[0]["type"] == "start"


def test_flush_decides_the_waiting_candidates_on_the_evidence_there_is():
    g = gate(wait=5.0)
    g.add(1.0, ev(**{str(CLAP): 0.9}))
    g.filter([start("siren", "a")], 1.0)
    assert g.flush(1.1) == []
    g2 = gate(wait=5.0)
    g2.add(1.0, ev(**{str(CLAP): 0.5}))
    g2.filter([start("siren", "b")], 1.0)
    g2.add(1.25, ev(**{str(SIREN): 0.9}))
    g2.filter([end("siren", "b")], 1.25)  # passes here already
    assert g2.flush(1.3) == []


def test_config_overrides_the_models_gate_per_label():
    from detector.model.metadata import ModelMetadata
    from detector.audio.features import FeatureParams

    rule = {"support": [SIREN], "top_k": 5, "floor": 0.05, "context_seconds": 3.0,
            "max_wait_seconds": 2.0}
    meta = ModelMetadata(labels=("siren", "background"), features=FeatureParams(),
                         window_seconds=1.0, model_version="t", trained_on="", license_note="",
                         background_labels=("background",), audioset_output="audioset",
                         gate={"siren": rule})
    g = build_gate(meta, EventsConfig(gate_top_k={"siren": 12}, gate_max_wait_seconds={"siren": 0.5}))
    assert g.rules["siren"] == GateRule((SIREN,), 12, 0.05, 3.0, 0.5)
    assert build_gate(meta, EventsConfig(audioset_gate=False)).enabled is False


@pytest.mark.parametrize("bad, message", [
    ({"support": [527], "top_k": 5, "floor": 0.0, "context_seconds": 3.0,
      "max_wait_seconds": 1.0}, "support"),
    ({"support": [1], "top_k": 0, "floor": 0.0, "context_seconds": 3.0,
      "max_wait_seconds": 1.0}, "top_k"),
    ({"support": [1], "top_k": 5, "floor": 0.0, "context_seconds": 0.5,
      "max_wait_seconds": 1.0}, "context_seconds"),
    ({"support": [1], "top_k": 5}, "exactly the keys"),
])
def test_a_bad_gate_in_the_metadata_is_one_line(bad, message):
    from detector.errors import ModelError
    from detector.audio.features import FeatureParams
    from detector.model.metadata import ModelMetadata

    with pytest.raises(ModelError, match=message):
        ModelMetadata(labels=("siren", "background"), features=FeatureParams(),
                      window_seconds=1.0, model_version="t", trained_on="", license_note="",
                      background_labels=("background",), audioset_output="audioset",
                      gate={"siren": bad})


# ---------------------------------------------------------------- through the daemon
def _gated_model(tmp_path, siren_hz: float):
    from onnx_models import make_band_model

    rule = {"support": [SIREN, EMERGENCY], "top_k": 3, "floor": 0.1, "context_seconds": 2.0,
            "max_wait_seconds": 1.0}
    # the label head hears a siren at 1 kHz; the AudioSet head calls 1 kHz "Clapping"
    # unless its "Siren" band is put there too
    return make_band_model(tmp_path / f"gated{int(siren_hz)}.onnx", labels=("siren", "background"),
                           bands_hz={"siren": 1000.0}, thresholds={"siren": 0.5},
                           audioset_bands={"Siren": siren_hz, "Clapping": 1000.0}
                           if siren_hz != 1000.0 else {"Siren": 1000.0},
                           gate={"siren": rule})


def _replay(model, wav, tmp_path, *extra):
    import json
    import os
    import subprocess
    import sys

    from conftest import REPO

    done = subprocess.run([sys.executable, "-m", "detector", "replay", str(wav), "--model",
                           str(model), *extra], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_the_daemon_publishes_a_supported_event_with_its_evidence(tmp_path):
    from onnx_models import write_tone_wav

    wav = write_tone_wav(tmp_path / "tone.wav", [(1.0, 3.0, 1000.0)], seconds=5.0)
    events = _replay(_gated_model(tmp_path, 1000.0), wav, tmp_path)
    assert [e["type"] for e in events] == ["start", "end"]
    assert events[0]["evidence"] == ["Siren"] and events[1]["evidence"] == ["Siren"]
    # start stays the onset; publication is where the gate passed, never before it
    assert 1.0 <= events[0]["offset_s"] <= events[0]["published_offset_s"] <= 2.5


def test_the_daemon_drops_an_event_the_audioset_vocabulary_calls_something_else(tmp_path):
    from onnx_models import write_tone_wav

    wav = write_tone_wav(tmp_path / "tone.wav", [(1.0, 3.0, 1000.0)], seconds=5.0)
    model = _gated_model(tmp_path, 3000.0)
    assert _replay(model, wav, tmp_path) == []
    config = tmp_path / "nogate.toml"
    config.write_text("[events]\naudioset_gate = false\n")
    events = _replay(model, wav, tmp_path, "--config", str(config))
    assert [e["type"] for e in events] == ["start", "end"] and "evidence" not in events[0]


def test_a_replay_records_what_the_gate_off_would_have_published(tmp_path):
    from onnx_models import write_tone_wav

    from detector.audio.capture import FileSource
    from detector.config import config_from_dict
    from detector.model.classifier import Classifier
    from detector.pipeline import Pipeline

    wav = write_tone_wav(tmp_path / "tone.wav", [(1.0, 3.0, 1000.0)], seconds=5.0)
    runs = {}
    for gate_on in (True, False):
        cfg = config_from_dict({"output": {"stdout_json": False},
                                "events": {"audioset_gate": gate_on}})
        pipe = Pipeline(cfg, FileSource(wav, 16000, realtime=False),
                        Classifier(_gated_model(tmp_path, 3000.0)), [], record_scores=True,
                        node="t", file_offsets=True)
        pipe.run()
        runs[gate_on] = pipe
    assert runs[True].events == []  # dropped by the gate
    off = [(e["type"], e["label"], e["offset_s"], e["published_offset_s"])
           for e in runs[False].events]
    recorded = [(e["type"], e["label"], e["offset_s"], e["published_offset_s"])
                for e in runs[True].candidates]
    assert off == recorded and [t for t, *_ in off] == ["start", "end"]
