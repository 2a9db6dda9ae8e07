"""AudioSet labels (events.audioset_labels): names, slugs, the rank rule through the real
pipeline, Home Assistant names, ``sound-detector labels``.

Real ONNX models from tests/onnx_models.py with an ``audioset`` output whose named classes
are band detectors (a tone at the class's frequency makes it the top AudioSet class);
``python -m detector`` as a subprocess for what a user runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detector.model import audioset
from detector.config import EventsConfig
from detector.errors import ConfigError
from detector.publish.homeassistant import discovery_messages
from onnx_models import make_band_model, tone_signal, write_tone_wav

REPO = Path(__file__).resolve().parents[1]
SMOKE = "Smoke detector, smoke alarm"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "detector", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    # smoke alarm at 1.5 kHz (no built-in label there); three other AudioSet classes at 2 kHz
    return make_band_model(tmp_path_factory.mktemp("m") / "as.onnx",
                           audioset_bands={SMOKE: 1500.0, "Beep, bleep": 2000.0,
                                           "Alarm": 2000.0, "Buzzer": 2000.0})


def write_config(path: Path, **events) -> Path:
    lines = ["[events]"]
    for key, value in events.items():
        if isinstance(value, dict):
            value = "{" + ", ".join(f'"{k}" = {json.dumps(v)}' for k, v in value.items()) + "}"
        else:
            value = json.dumps(value)
        lines.append(f"{key} = {value}")
    path.write_text("\n".join(lines) + "\n")
    return path


def replay(model, wav, config):
    proc = cli("replay", wav, "--model", model, "--config", config)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_slug_is_lower_case_with_runs_of_other_characters_one_underscore():
    assert audioset.slug("Baby cry, infant cry") == "baby_cry_infant_cry"
    assert audioset.slug(SMOKE) == "smoke_detector_smoke_alarm"
    assert audioset.slug("Police car (siren)") == "police_car_siren"
    assert audioset.display_name("baby_cry_infant_cry") == "Baby cry, infant cry"
    assert audioset.display_name("dog_bark") is None
    # every class has its own label
    assert len(audioset.slugs()) == 527


def test_a_wrong_name_is_refused_in_one_line_with_the_closest_names(tmp_path):
    with pytest.raises(ConfigError, match="closest: 'Smoke detector, smoke alarm'"):
        EventsConfig(audioset_labels=("Smoke alarm",))
    config = write_config(tmp_path / "bad.toml", audioset_labels=["Glass", "baby cry"])
    proc = cli("validate-config", config, "--no-model")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "'baby cry'" in lines[0] and "'Baby cry, infant cry'" in lines[0]
    ok = write_config(tmp_path / "ok.toml", audioset_labels=[SMOKE, "Glass"])
    assert cli("validate-config", ok, "--no-model").returncode == 0


def test_an_audioset_label_fires_on_its_sound_with_its_evidence(model, tmp_path):
    config = write_config(tmp_path / "c.toml", audioset_labels=[SMOKE])
    wav = write_tone_wav(tmp_path / "alarm.wav", [(1.0, 4.0, 1500.0)], seconds=6.0)
    events = replay(model, wav, config)
    starts = [e for e in events if e["type"] == "start"]
    assert [e["label"] for e in starts] == ["smoke_detector_smoke_alarm"]
    assert starts[0]["evidence"] == [SMOKE]
    assert 0.9 <= starts[0]["offset_s"] <= 1.6
    assert [e["label"] for e in events if e["type"] == "end"] == ["smoke_detector_smoke_alarm"]
    # a sound it does not name (the model's own dog_bark band) does not fire it
    other = write_tone_wav(tmp_path / "bark.wav", [(1.0, 4.0, 3000.0)], seconds=6.0)
    assert [e["label"] for e in replay(model, other, config) if e["type"] == "start"] \
        == ["dog_bark"]


def test_the_rank_rule_drops_a_class_that_other_classes_outrank(model, tmp_path):
    import soundfile as sf

    # a quiet 1.5 kHz tone (the smoke alarm's class passes its threshold) under a loud
    # 2 kHz tone (three other AudioSet classes rank above it)
    y = (tone_signal([(1.0, 4.0, 1500.0)], 6.0, amplitude=0.02)
         + tone_signal([(1.0, 4.0, 2000.0)], 6.0, amplitude=0.5))
    wav = tmp_path / "mixed.wav"
    sf.write(str(wav), y, 16000, subtype="PCM_16")
    ranked = write_config(tmp_path / "top2.toml", audioset_labels=[SMOKE],
                          gate_top_k={"smoke_detector_smoke_alarm": 2})
    assert [e for e in replay(model, wav, ranked) if e["type"] == "start"] == []
    # the rule is what decides: with the gate switched off it still applies ...
    off = write_config(tmp_path / "off.toml", audioset_labels=[SMOKE], audioset_gate=False,
                       gate_top_k={"smoke_detector_smoke_alarm": 2})
    assert [e for e in replay(model, wav, off) if e["type"] == "start"] == []
    # ... and a rank of 5 lets it through
    wide = write_config(tmp_path / "top5.toml", audioset_labels=[SMOKE],
                        gate_top_k={"smoke_detector_smoke_alarm": 5})
    starts = [e for e in replay(model, wav, wide) if e["type"] == "start"]
    assert [e["label"] for e in starts] == ["smoke_detector_smoke_alarm"]


def test_thresholds_and_labels_take_audioset_labels_like_built_in_ones(model, tmp_path):
    wav = write_tone_wav(tmp_path / "alarm.wav", [(1.0, 4.0, 1500.0)], seconds=6.0)
    only = write_config(tmp_path / "only.toml", audioset_labels=[SMOKE],
                        labels=["siren"])
    assert [e for e in replay(model, wav, only) if e["type"] == "start"] == []
    unknown = write_config(tmp_path / "unk.toml", audioset_labels=[SMOKE],
                           thresholds={"glass": 0.5})
    proc = cli("replay", wav, "--model", model, "--config", unknown)
    assert proc.returncode == 2 and "'glass'" in proc.stderr
    assert "smoke_detector_smoke_alarm" in proc.stderr  # named among the labels


def test_a_model_without_an_audioset_output_is_one_line(tmp_path):
    plain = make_band_model(tmp_path / "plain.onnx")
    config = write_config(tmp_path / "c.toml", audioset_labels=[SMOKE])
    wav = write_tone_wav(tmp_path / "t.wav", [(0.5, 1.5, 1000.0)], seconds=2.0)
    proc = cli("replay", wav, "--model", plain, "--config", config)
    assert proc.returncode == 2
    assert "needs a model with an audioset output" in proc.stderr and "Traceback" not in proc.stderr


def test_a_slug_that_is_already_a_label_is_refused(model, tmp_path):
    config = write_config(tmp_path / "c.toml", audioset_labels=["Siren"])
    wav = write_tone_wav(tmp_path / "t.wav", [(0.5, 1.5, 1000.0)], seconds=2.0)
    proc = cli("replay", wav, "--model", model, "--config", config)
    assert proc.returncode == 2 and "'siren'" in proc.stderr


def test_home_assistant_names_an_audioset_label_by_its_audioset_name():
    messages = dict(discovery_messages("sd/n", "n", ["smoke_detector_smoke_alarm", "siren"],
                                       "1", "1"))
    sensor = json.loads(messages["homeassistant/binary_sensor/n/smoke_detector_smoke_alarm/config"])
    assert sensor["name"] == SMOKE
    assert sensor["state_topic"] == "sd/n/smoke_detector_smoke_alarm/state"
    assert json.loads(messages["homeassistant/binary_sensor/n/siren/config"])["name"] == "Siren"


def test_labels_lists_built_in_and_audioset_labels(model):
    proc = cli("labels", "--model", model, "--search", "alarm")
    assert proc.returncode == 0, proc.stderr
    assert 'smoke_detector_smoke_alarm' in proc.stdout and '"Car alarm"' in proc.stdout
    everything = cli("labels", "--model", model).stdout.splitlines()
    assert "built-in  siren" in everything
    assert sum(line.startswith("audioset ") for line in everything) == 527
    none = cli("labels", "--model", model, "--search", "qqqzz")
    assert none.returncode == 1


def test_scores_of_audioset_labels_come_from_the_same_pass(model):
    from detector.model.classifier import Classifier

    clf = Classifier(model)
    clf.attach_audioset(audioset.AudioSetLabels((SMOKE, "Alarm")))
    assert clf.labels[-2:] == ("smoke_detector_smoke_alarm", "alarm")
    meta = clf.metadata
    window = np.full((meta.frames, meta.features.n_mels), clf.frontend.floor, dtype=np.float32)
    window[:, 10] = 0.0
    scores = clf.predict(window)
    assert len(scores) == len(clf.labels)
    idx = [audioset.audioset_classes().index(n) for n in (SMOKE, "Alarm")]
    assert np.allclose(scores[-2:], 1 / (1 + np.exp(-clf.audioset[idx])), atol=1e-6)
    # defaults are in the metadata, so the tracker and gate read them like a model's
    assert meta.thresholds["alarm"] == audioset.THRESHOLD
    assert meta.gate["alarm"]["top_k"] == audioset.TOP_K


def test_an_audioset_label_reaches_mqtt_and_home_assistant(mosquitto, model, tmp_path):
    """Real Mosquitto: its state topic, its event with the evidence, its Home Assistant
    discovery named by the AudioSet name."""
    import uuid

    from mqtt_helpers import Recorder, retained

    node, disc = f"as-{uuid.uuid4().hex[:6]}", f"ha-{uuid.uuid4().hex[:6]}"
    prefix = f"sound-detector/{node}"
    conf = tmp_path / "c.toml"
    conf.write_text(f'[events]\naudioset_labels = ["{SMOKE}"]\n\n[mqtt]\nenabled = true\n'
                    f'host = "127.0.0.1"\nport = {mosquitto.port}\nnode_id = "{node}"\n'
                    f'discovery_prefix = "{disc}"\n')
    conf.chmod(0o600)
    wav = write_tone_wav(tmp_path / "alarm.wav", [(1.0, 4.0, 1500.0)], seconds=6.0)
    rec = Recorder(mosquitto.port, [f"{prefix}/#", f"{disc}/#"])
    proc = cli("replay", wav, "--model", model, "--config", conf)
    assert proc.returncode == 0, proc.stderr
    label = "smoke_detector_smoke_alarm"
    events = [json.loads(p) for p in rec.wait_count(f"{prefix}/events", 2)]
    assert [(e["type"], e["label"]) for e in events] == [("start", label), ("end", label)]
    assert events[0]["evidence"] == [SMOKE]
    assert rec.payloads(f"{prefix}/{label}/state")[-2:] == [b"ON", b"OFF"]
    assert retained(mosquitto.port, f"{prefix}/{label}/state") == b"OFF"
    config = json.loads(retained(mosquitto.port, f"{disc}/binary_sensor/{node}/{label}/config"))
    assert config["name"] == SMOKE
    event_cfg = json.loads(retained(mosquitto.port, f"{disc}/event/{node}/{label}_event/config"))
    assert event_cfg["name"] == f"{SMOKE} event"
    rec.close()


def test_runtime_control_switches_an_audioset_label_like_a_built_in_one(model):
    from dataclasses import replace

    from detector.config import Config
    from detector.cli.custom_fit import ArraySource
    from detector.model.classifier import Classifier
    from detector.pipeline import Pipeline
    from detector.publish.sink import Sink

    class Starts(Sink):
        def __init__(self):
            self.labels = []

        def event(self, event):
            if event["type"] == "start":
                self.labels.append(event["label"])

    clf = Classifier(model)
    clf.attach_audioset(audioset.AudioSetLabels((SMOKE,)))
    config = Config()
    config = replace(config, events=replace(config.events, audioset_labels=(SMOKE,)))
    audio = tone_signal([(1.0, 4.0, 1500.0)], 6.0)
    label = "smoke_detector_smoke_alarm"
    for enabled, expected in ((True, [label]), (False, [])):
        sink = Starts()
        pipe = Pipeline(config, ArraySource(audio, 16000), clf, [sink], node="t")
        pipe.apply_control({"labels": {label: {"enabled": enabled}}})
        pipe.run()
        assert sink.labels == expected
    # its thresholds are set the same way
    pipe = Pipeline(config, ArraySource(audio, 16000), clf, [Starts()], node="t")
    assert pipe.tracker.thresholds(label)[0] == audioset.THRESHOLD
    pipe.apply_control({"labels": {label: {"threshold_on": 0.5, "threshold_off": 0.2}}})
    pipe.run()
    assert pipe.tracker.thresholds(label) == (0.5, 0.2)
