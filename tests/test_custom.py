"""Custom labels on a real (tiny) ONNX model with a real embedding output.

The model (``make_band_model(embedding=True)``) exports the window's log-mel
profile as its embedding, so a 1.5 kHz chirp is learnable from generated clips
and told apart from 1 kHz / 3 kHz tones and noise. Black-box where it matters:
``python -m detector enroll / replay / custom`` as subprocesses, a real Mosquitto.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from detector.model import custom
from detector.cli import custom_fit
from detector.config import Config, ConfigError, load_config
from detector.errors import ModelError
from detector.audio.features import FeatureParams, logmel
from detector.model.metadata import ModelMetadata
from detector.model.classifier import Classifier
from mqtt_helpers import Recorder
from onnx_models import make_band_model, tone_signal, write_tone_wav

CHIRP = 1500.0


def cli(*args, env=None, cwd=None):
    full_env = {**os.environ, "PYTHONPATH": str(REPO)}
    full_env.pop("STATE_DIRECTORY", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "detector", *map(str, args)],
                          capture_output=True, text=True, env=full_env, cwd=cwd or REPO,
                          timeout=300)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_band_model(tmp_path_factory.mktemp("emb") / "tiny-emb.onnx", embedding=True)


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """Five chirp takes (different lengths, levels, noise floors) and a room recording."""
    d = tmp_path_factory.mktemp("audio")
    takes = []
    for i in range(5):
        start = 0.4 + 0.15 * i
        sig = tone_signal([(start, start + 0.5 + 0.2 * i, CHIRP + 15 * (i - 2))], 2.5,
                          amplitude=0.2 + 0.1 * i, noise_dbfs=-65 + 4 * i, seed=i)
        path = d / f"chirp{i}.wav"
        import soundfile as sf
        sf.write(path, sig, 16000)
        takes.append(path)
    room = []
    for i, level in enumerate((-70, -60, -50, -40)):
        room.append(write_tone_wav(d / f"room{i}.wav",
                                   [(1.0, 2.0, 1000.0), (3.0, 3.6, 3000.0), (4.5, 5.5, 600.0),
                                    (6.0, 6.5, 2400.0)], seconds=8.0, noise_dbfs=level,
                                   amplitude=0.05 * (i + 1)))
    test = write_tone_wav(d / "test.wav", [(1.0, 1.8, CHIRP), (5.0, 6.0, 1000.0),
                                           (9.0, 10.0, 3000.0)], seconds=13.0, noise_dbfs=-58)
    quiet = write_tone_wav(d / "other.wav", [(1.0, 2.0, 1000.0), (4.0, 5.0, 3000.0)],
                           seconds=7.0, noise_dbfs=-45)
    return {"takes": takes, "room": room, "test": test, "other": quiet}


@pytest.fixture(scope="module")
def enrolled(model, audio, tmp_path_factory):
    directory = tmp_path_factory.mktemp("custom")
    res = cli("enroll", "chirp", *audio["takes"], "--background", *audio["room"],
              "--model", model, "--custom", directory)
    assert res.returncode == 0, res.stderr
    return directory, res


# ------------------------------------------------------------------ the model contract
def test_metadata_embedding_keys_round_trip_and_are_checked():
    base = dict(labels=("a", "b"), features=FeatureParams(), window_seconds=1.0,
                model_version="t", trained_on="x", license_note="y")
    meta = ModelMetadata(**base, embedding_output="emb", embedding_dim=8)
    back = ModelMetadata.from_props(meta.to_props())
    assert back.embedding_output == "emb" and back.embedding_dim == 8
    assert ModelMetadata.from_props(ModelMetadata(**base).to_props()).embedding_output is None
    with pytest.raises(ModelError, match="given together"):
        ModelMetadata(**base, embedding_output="emb")
    with pytest.raises(ModelError, match="embedding_dim"):
        ModelMetadata(**base, embedding_output="emb", embedding_dim=0)


def test_classifier_returns_the_embedding_of_the_same_pass(model):
    clf = Classifier(model)
    assert clf.embedding_name == "embedding" and clf.embedding_dim == 128
    params = FeatureParams()
    window = logmel(tone_signal([(0, 1, CHIRP)], 1.0), params)[:97]
    scores, emb = clf.predict_with_embedding(window)
    assert scores.shape == (3,) and emb.shape == (128,) and emb.dtype == np.float32
    # the embedding is the window's time-mean and time-max per mel band (x 0.05)
    np.testing.assert_allclose(emb[:64], 0.05 * window.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(emb[64:], 0.05 * window.max(axis=0), atol=1e-4)
    other = clf.predict_with_embedding(logmel(tone_signal([(0, 1, 3000.0)], 1.0), params)[:97])[1]
    assert np.argmax(emb[:64]) != np.argmax(other[:64])


def test_embedding_output_that_is_missing_or_misshaped_is_one_line(tmp_path):
    bad = make_band_model(tmp_path / "bad.onnx", embedding=True,
                          extra_props={"embedding_output": "nope"})
    with pytest.raises(ModelError, match="names no output") as err:
        Classifier(bad)
    assert "\n" not in str(err.value)
    wrong = make_band_model(tmp_path / "wrong.onnx", embedding=True,
                            extra_props={"embedding_dim": 64})
    with pytest.raises(ModelError, match=r"\[batch, 64\]"):
        Classifier(wrong)


# ------------------------------------------------------------------ fitting
def test_fit_is_deterministic_and_separates():
    rng = np.random.default_rng(0)
    pos = rng.normal(1.0, 1.0, (60, 16))
    neg = rng.normal(0.0, 1.0, (400, 16))
    groups = np.repeat(np.arange(4), 15)
    a, _ = custom_fit.fit_head(pos, groups, neg)
    b, _ = custom_fit.fit_head(pos, groups, neg)
    assert np.array_equal(a.w, b.w) and a.b == b.b
    assert a.scores(pos).mean() > 0.8 and a.scores(neg).mean() < 0.2


def test_positive_windows_skip_silence_and_the_gate():
    levels = np.array([-90, -80, -30, -28, -33, -40, -85], dtype=float)
    clip = custom_fit.ClipWindows("c", levels, np.zeros((7, 2), np.float32), 2.0, -90.0)
    assert custom_fit.positive_windows(clip, gate_dbfs=-70).tolist() == [2, 3, 4]
    quiet = custom_fit.ClipWindows("q", levels - 50, np.zeros((7, 2), np.float32), 2.0, -140.0)
    assert custom_fit.positive_windows(quiet, gate_dbfs=-70).size == 0


def test_takes_are_also_heard_farther_away_window_for_window(model, audio):
    classifier = Classifier(model)
    samples = custom_fit.read_audio(audio["takes"][2], 16000)
    clip = custom_fit.embed_clip(classifier, samples, Config(), name="t", farther_db=(-20.0,))
    assert len(clip.farther) == 1
    copy = clip.farther[0]
    assert copy.levels.shape == clip.levels.shape
    loud = custom_fit.positive_windows(clip, -70.0)
    # where the sound is, the copy is 20 dB quieter (the room floor it is heard in aside)
    assert np.allclose(copy.levels[loud], clip.levels[loud] - 20.0, atol=1.5)
    assert not np.allclose(copy.embeddings[loud], clip.embeddings[loud])


def test_every_quieter_copy_keeps_the_windows_of_its_take_with_onset_windows_on(model, audio):
    """Onset windows are on by default, but a copy 40 dB quieter has no onset: enrolment
    embeds on the regular grid so no copy is dropped; a replayed stream keeps them."""
    classifier = Classifier(model)
    config = Config()
    assert config.model.onset_hop_seconds > 0
    for path in audio["takes"]:
        samples = custom_fit.read_audio(path, 16000)
        clip = custom_fit.embed_clip(classifier, samples, config, name="t")
        assert [c.levels.size for c in clip.farther] == [clip.levels.size] * 2
        plain = custom_fit.embed_samples(classifier, samples, Config(
            model=dataclasses.replace(config.model, onset_hop_seconds=0.0)))
        assert clip.levels.size == plain.levels.size
    streamed = custom_fit.embed_samples(classifier, samples, config, onset_windows=True)
    assert streamed.levels.size > clip.levels.size  # the daemon's onset windows


def test_quieter_copies_are_positives_of_their_own_take():
    """The copy's windows at the take's sound (not the copy's own loudest, which may be
    the room) are learned, held out with their take."""
    rng = np.random.default_rng(1)
    levels = np.array([-62, -30, -28, -62], dtype=float)
    far = custom_fit.ClipWindows("a -20", levels - [0, 20, 20, 0], rng.normal(0.5, 1, (4, 8)),
                             1.0, -62.0)
    takes = [custom_fit.ClipWindows(f"t{i}", levels, rng.normal(2, 1, (4, 8)), 1.0, -62.0,
                                farther=(far,)) for i in range(3)]
    bg = rng.normal(0, 1, (200, 8)).astype(np.float32)
    files = np.arange(200) // 4
    plain = custom_fit.enroll("x", [custom_fit.ClipWindows(t.name, t.levels, t.embeddings, 1.0, -62.0)
                                for t in takes], bg, files, "1", -70.0)
    both = custom_fit.enroll("x", takes, bg, files, "1", -70.0, background_groups=files % 25)
    assert plain.head.info["windows"] == 6 and both.head.info["windows"] == 12
    assert len(both.clip_scores) == 3
    with pytest.raises(ValueError):
        custom_fit.enroll("x", takes, bg, files, "1", -70.0, background_groups=files[:10])


def test_background_copies_keep_their_origin_through_save_and_load(tmp_path):
    emb = np.arange(24, dtype=np.float32).reshape(6, 4)
    bg = custom_fit.BackgroundSet(emb, np.array([0, 0, 1, 2, 2, 3]), ["a", "b", "a", "b"], "1",
                              np.array([0, 1, 0, 1]))
    back = custom_fit.BackgroundSet.load(bg.save(tmp_path / "bg.npz"))
    assert back.groups().tolist() == [0, 0, 1, 0, 0, 1]
    assert back.without_kinds(["b"]).groups().tolist() == [0, 0, 0, 0]
    plain = custom_fit.BackgroundSet.load(
        custom_fit.BackgroundSet(emb, np.array([0, 0, 1, 2, 2, 3]), list("abab"), "1").save(
            tmp_path / "plain.npz"))
    assert plain.origins is None and plain.groups().tolist() == [0, 0, 1, 2, 2, 3]
    broken = custom_fit.BackgroundSet(emb, np.array([0, 0, 1, 2, 2, 3]), list("abab"), "1",
                                  np.array([0, 1, 9, 1]))
    with pytest.raises(ModelError, match="inconsistent"):
        custom_fit.BackgroundSet.load(broken.save(tmp_path / "broken.npz"))


def test_kinds_that_name_the_label_are_left_out_of_the_background():
    kinds = ["door_wood_knock", "knock", "keyboard", "keys", "cough", "casual"]
    assert custom_fit.matching_kinds("knock", kinds) == ["door_wood_knock", "knock"]
    assert custom_fit.matching_kinds("doorbell", kinds) == []


# ------------------------------------------------------------------ enroll / replay
def test_enroll_reports_what_to_expect_and_writes_a_head(enrolled, model):
    directory, res = enrolled
    out = res.stdout
    assert "enrolled 'chirp' from 5 clip(s)" in out
    assert "leave-one-clip-out" in out and "held-out background" in out
    assert "Traceback" not in res.stderr
    head = custom.CustomHead.load(directory / "chirp.npz")
    assert head.model_version == "band-test-1" and head.embedding_dim == 128
    assert 0.5 <= head.threshold <= 0.98
    assert head.info["estimated_recall"] >= 0.8
    assert len(head.info["clips"]) == 5


def test_replay_fires_the_custom_label_only_on_its_sound(enrolled, model, audio):
    directory, _ = enrolled
    res = cli("replay", audio["test"], "--model", model, "--custom", directory)
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in res.stdout.splitlines()]
    chirps = [e for e in events if e["label"] == "chirp" and e["type"] == "start"]
    assert len(chirps) == 1, events  # the chirp at 1.0-1.8 s; not the 1 kHz / 3 kHz tones
    assert {e["label"] for e in events} == {"chirp", "siren", "dog_bark"}
    ends = [e for e in events if e["label"] == "chirp" and e["type"] == "end"]
    assert ends[0]["duration_s"] < 3.0, ends
    res = cli("replay", audio["other"], "--model", model, "--custom", directory)
    assert res.returncode == 0, res.stderr
    assert not [line for line in res.stdout.splitlines() if '"chirp"' in line]


def test_custom_label_thresholds_and_labels_are_configurable(enrolled, model, audio, tmp_path):
    directory, _ = enrolled
    conf = tmp_path / "c.toml"
    conf.write_text(f'[model]\ncustom_dir = "{directory}"\n'
                    '[events]\nlabels = ["siren"]\nthresholds = {chirp = 0.9}\n')
    res = cli("replay", audio["test"], "--model", model, "--config", conf)
    assert res.returncode == 0, res.stderr
    labels = {json.loads(line)["label"] for line in res.stdout.splitlines()}
    assert labels == {"siren"}  # chirp known (its threshold accepted) but not enabled
    conf.write_text('[events]\nthresholds = {chirp = 0.9}\n')
    res = cli("replay", audio["test"], "--model", model, "--config", conf)
    assert res.returncode == 2 and "chirp" in res.stderr and "Traceback" not in res.stderr


def test_state_directory_is_the_default_custom_dir(enrolled, model, audio, tmp_path):
    directory, _ = enrolled
    state = tmp_path / "state"
    (state / "custom").mkdir(parents=True)
    for p in directory.glob("*.npz"):
        (state / "custom" / p.name).write_bytes(p.read_bytes())
    res = cli("replay", audio["test"], "--model", model, env={"STATE_DIRECTORY": str(state)})
    assert res.returncode == 0, res.stderr
    assert '"chirp"' in res.stdout
    assert custom.default_custom_dir({}) is None


def test_validate_config_knows_custom_labels_where_the_daemon_loads_them(
        enrolled, model, tmp_path, monkeypatch, capsys):
    """A threshold for a custom label is valid wherever the daemon would find the label:
    --custom, model.custom_dir, $STATE_DIRECTORY, or (from a shell, where systemd's
    $STATE_DIRECTORY is unset) the installed service's state directory."""
    from detector.cli import main as cli_module

    directory, _ = enrolled
    conf = tmp_path / "c.toml"
    conf.write_text('[events]\nthresholds = {chirp = 0.9}\n')
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setattr(custom, "SERVICE_STATE_DIRECTORY", tmp_path / "no-service")
    assert cli_module.main(["validate-config", str(conf), "--model", str(model)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "'chirp'" in errors[0] and "--custom DIR" in errors[0]
    res = cli("validate-config", conf, "--model", model, "--custom", directory)
    assert res.returncode == 0, res.stderr
    assert "custom: chirp" in res.stdout
    state = tmp_path / "state"
    (state / "custom").mkdir(parents=True)
    for p in directory.glob("*.npz"):
        (state / "custom" / p.name).write_bytes(p.read_bytes())
    res = cli("validate-config", conf, "--model", model, env={"STATE_DIRECTORY": str(state)})
    assert res.returncode == 0, res.stderr
    # from a shell: no $STATE_DIRECTORY, the service's state directory is looked at
    monkeypatch.setattr(custom, "SERVICE_STATE_DIRECTORY", state)
    assert cli_module.main(["validate-config", str(conf), "--model", str(model)]) == 0
    assert "custom: chirp" in capsys.readouterr().out


def test_custom_list_and_remove(enrolled, tmp_path):
    directory, _ = enrolled
    copy = tmp_path / "c"
    copy.mkdir()
    (copy / "chirp.npz").write_bytes((directory / "chirp.npz").read_bytes())
    res = cli("custom", "list", "--custom", copy)
    assert res.returncode == 0, res.stderr
    assert "chirp: model band-test-1" in res.stdout and "estimated recall" in res.stdout
    res = cli("custom", "remove", "nothing", "--custom", copy)
    assert res.returncode == 2 and "no custom label 'nothing'" in res.stderr
    assert "it has: chirp" in res.stderr
    res = cli("custom", "remove", "chirp", "--custom", copy)
    assert res.returncode == 0 and not (copy / "chirp.npz").exists()
    assert "no custom labels" in cli("custom", "list", "--custom", copy).stdout


def test_a_head_for_another_model_version_is_refused_in_one_line(enrolled, audio, tmp_path):
    directory, _ = enrolled
    other = make_band_model(tmp_path / "v2.onnx", embedding=True, model_version="band-test-2")
    res = cli("replay", audio["test"], "--model", other, "--custom", directory)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert "Traceback" not in res.stderr
    assert "error:" in lines[-1] and "enrolled with model band-test-1" in lines[-1]
    assert "band-test-2" in lines[-1]


def test_bad_input_is_one_line(model, audio, tmp_path):
    plain = make_band_model(tmp_path / "plain.onnx")
    cases = [
        (("enroll", "Bad Name", audio["takes"][0], "--custom", tmp_path, "--model", model),
         "custom label 'Bad Name'"),
        (("enroll", "siren", audio["takes"][0], "--custom", tmp_path, "--model", model),
         "one of the model's own labels"),
        (("enroll", "chirp", tmp_path / "missing.wav", "--custom", tmp_path, "--model", model,
          "--background", audio["room"][0]), "does not exist"),
        (("enroll", "chirp", audio["takes"][0], "--custom", tmp_path, "--model", model),
         "no background set ships"),
        (("enroll", "chirp", audio["takes"][0], "--custom", tmp_path, "--model", plain),
         "no embedding output"),
        (("enroll", "chirp", "--custom", tmp_path, "--model", model), "no clips"),
        (("replay", audio["test"], "--model", model, "--custom", tmp_path / "nope"),
         "does not exist"),
    ]
    for args, text in cases:
        res = cli(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert "Traceback" not in res.stderr, res.stderr
        assert text in res.stderr.strip().splitlines()[-1], (args, res.stderr)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.npz").write_bytes(b"not a head")
    res = cli("replay", audio["test"], "--model", model, "--custom", broken)
    assert res.returncode == 2 and "not a head" in res.stderr and "Traceback" not in res.stderr


def test_heads_run_on_the_embedding_in_process(enrolled, model):
    directory, _ = enrolled
    clf = Classifier(model)
    heads = custom.load_custom_dir(directory)
    clf.attach_custom(heads)
    assert clf.metadata.labels == ("siren", "dog_bark", "background", "chirp")
    assert clf.metadata.thresholds["chirp"] == heads.heads[0].threshold
    params = FeatureParams()
    def window(freq):
        sig = tone_signal([(0, 1, freq)], 1.0, amplitude=0.3, noise_dbfs=-60)
        return logmel(sig, params)[:97]

    chirp, siren = clf.predict(window(CHIRP)), clf.predict(window(1000.0))
    assert chirp.shape == (4,) and chirp[3] > 0.9 and siren[3] < 0.1
    plain = Classifier(make_band_model(directory.parent / "plain-inproc.onnx"))
    with pytest.raises(ModelError, match="no embedding output"):
        plain.attach_custom(heads)


def test_custom_label_on_mqtt_and_home_assistant(mosquitto, enrolled, model, audio, tmp_path):
    directory, _ = enrolled
    node, disc = f"cu-{uuid.uuid4().hex[:6]}", f"ha-{uuid.uuid4().hex[:6]}"
    prefix = f"sound-detector/{node}"
    conf = tmp_path / "c.toml"
    conf.write_text(f'[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {mosquitto.port}\n'
                    f'node_id = "{node}"\ndiscovery_prefix = "{disc}"\n'
                    f'[model]\ncustom_dir = "{directory}"\n')
    conf.chmod(0o600)
    rec = Recorder(mosquitto.port, [f"{prefix}/#", f"{disc}/#"])
    try:
        res = cli("replay", audio["test"], "--model", model, "--config", conf)
        assert res.returncode == 0, res.stderr
        events = [json.loads(p) for p in rec.wait_count(f"{prefix}/events", 6)]
        assert ("start", "chirp") in [(e["type"], e["label"]) for e in events]
        rec.wait_for(lambda m: rec.payloads(f"{prefix}/chirp/state")[-2:] == [b"ON", b"OFF"],
                     what="chirp state ON, OFF")
        topics = {t for t, _, _ in rec.messages}
        assert f"{disc}/binary_sensor/{node}/chirp/config" in topics
        assert f"{disc}/event/{node}/chirp_event/config" in topics
    finally:
        rec.close()


def test_custom_dir_config_key_is_checked():
    with pytest.raises(ConfigError, match="custom_dir"):
        Config(model=type(Config().model)(custom_dir=" "))
    config = load_config(None)
    assert custom.resolve_custom_dir(None, config, env={"STATE_DIRECTORY": "/s"}) == \
        (Path("/s/custom"), False)
    assert custom.resolve_custom_dir("x", config, env={})[1] is True


def test_runtime_control_and_metrics_know_the_custom_label(enrolled, model, audio):
    from detector.publish.control import parse_control
    from detector.publish.metrics import MetricsSink, Registry
    from detector.config import MetricsConfig
    from detector.pipeline import Pipeline
    from detector.publish.sink import Sink

    directory, _ = enrolled
    clf = Classifier(model)
    clf.attach_custom(custom.load_custom_dir(directory))
    samples = custom_fit.read_audio(audio["test"], 16000)

    class Events(Sink):
        def __init__(self):
            self.labels, self.seen = (), []

        def start(self, labels, model_version):
            self.labels = tuple(labels)

        def event(self, event):
            self.seen.append((event["type"], event["label"]))

    def run(control=None):
        sink = Events()
        registry = Registry()
        metrics = MetricsSink(MetricsConfig(enabled=True, port=0), registry=registry)
        pipe = Pipeline(Config(), custom_fit.ArraySource(samples, 16000), clf, [sink, metrics],
                        node="t")
        if control is not None:
            pipe.apply_control(parse_control(control, pipe.tracker.event_labels))
        pipe.run()
        return sink, registry.render()

    sink, text = run()
    assert "chirp" in sink.labels and ("start", "chirp") in sink.seen
    line = [l for l in text.splitlines() if 'label="chirp"' in l and 'type="start"' in l]
    assert line and float(line[0].rsplit(" ", 1)[1]) == 1, text
    sink, text = run('{"labels": {"chirp": {"enabled": false}}}')
    assert ("start", "chirp") not in sink.seen and ("start", "siren") in sink.seen
    line = [l for l in text.splitlines() if 'label="chirp"' in l and 'type="start"' in l]
    assert line and float(line[0].rsplit(" ", 1)[1]) == 0, text
