"""Custom labels that know what they are not: at enrolment the takes' AudioSet profile
becomes the label's support set (in the head file), and the daemon's gate applies it.

A real ONNX band model with an embedding and an ``audioset`` output in which "Doorbell" is
the band detector of the chirp's frequency and "Glass" of another; ``python -m detector
enroll / replay`` as subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detector.model import custom
from detector.cli import custom_fit
from detector.model.gate import audioset_classes
from onnx_models import make_band_model, tone_signal, write_tone_wav

REPO = Path(__file__).resolve().parents[1]
CHIRP = 1500.0
NAMES = audioset_classes()


def starts_of(stdout: str) -> list[dict]:
    events = [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]
    return [e for e in events if e["type"] == "start"]


def cli(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("STATE_DIRECTORY", None)
    return subprocess.run([sys.executable, "-m", "detector", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import soundfile as sf

    d = tmp_path_factory.mktemp("cg")
    model = make_band_model(d / "m.onnx", embedding=True,
                            audioset_bands={"Doorbell": CHIRP, "Glass": 2400.0})
    takes = []
    for i in range(5):
        start = 0.4 + 0.15 * i
        sig = tone_signal([(start, start + 0.6 + 0.2 * i, CHIRP + 15 * (i - 2))], 2.5,
                          amplitude=0.2 + 0.1 * i, noise_dbfs=-65 + 4 * i, seed=i)
        takes.append(d / f"chirp{i}.wav")
        sf.write(takes[-1], sig, 16000)
    room = [write_tone_wav(d / f"room{i}.wav", [(1.0, 2.0, 1000.0), (3.0, 3.6, 3000.0),
                                                 (4.5, 5.5, 600.0)], seconds=7.0,
                           noise_dbfs=level, amplitude=0.05 * (i + 1))
            for i, level in enumerate((-70, -60, -50, -40))]
    directory = d / "custom"
    res = cli("enroll", "chirp", *takes, "--background", *room, "--model", model,
              "--custom", directory)
    assert res.returncode == 0, res.stderr
    test = write_tone_wav(d / "test.wav", [(1.0, 2.2, CHIRP)], seconds=5.0, noise_dbfs=-58)
    return {"model": model, "dir": directory, "out": res.stdout, "test": test, "d": d}


def test_enrolment_stores_the_takes_audioset_classes_and_prints_them(setup):
    head = custom.CustomHead.load(setup["dir"] / "chirp.npz")
    gate = head.gate
    assert gate is not None and NAMES.index("Doorbell") in gate["support"]
    assert NAMES.index("Glass") not in gate["support"]
    assert head.info["gate"]["support_names"][0] == "Doorbell"
    out = setup["out"]
    assert 'AudioSet evidence: "Doorbell"' in out
    assert "expect without the AudioSet gate:" in out and "expect with the AudioSet gate:" in out


def test_the_daemon_gates_the_custom_label_with_its_stored_support(setup):
    proc = cli("replay", setup["test"], "--model", setup["model"], "--custom", setup["dir"])
    assert proc.returncode == 0, proc.stderr
    starts = starts_of(proc.stdout)
    assert [e["label"] for e in starts] == ["chirp"]
    assert starts[0]["evidence"][0] == "Doorbell"
    # the same head with a support set the sound never ranks ("Glass" at 2.4 kHz): dropped
    other = setup["d"] / "other"
    other.mkdir()
    head = custom.CustomHead.load(setup["dir"] / "chirp.npz")
    info = {**head.info, "gate": {**head.info["gate"], "support": [NAMES.index("Glass")]}}
    custom.CustomHead(head.label, head.model_version, head.weights, head.bias,
                      head.threshold, info).save(other)
    proc = cli("replay", setup["test"], "--model", setup["model"], "--custom", other)
    assert proc.returncode == 0, proc.stderr
    assert starts_of(proc.stdout) == []
    # ... unless the gate is switched off
    config = setup["d"] / "off.toml"
    config.write_text("[events]\naudioset_gate = false\n")
    proc = cli("replay", setup["test"], "--model", setup["model"], "--custom", other,
               "--config", config)
    assert [e["label"] for e in starts_of(proc.stdout)] == ["chirp"]


def test_support_set_is_common_to_most_takes_and_not_the_background():
    n = len(NAMES)

    def profile(**probs):
        p = np.full(n, 0.01, dtype=np.float32)
        for name, v in probs.items():
            p[NAMES.index(name.replace("_", " "))] = v
        return p

    takes = [profile(Doorbell=0.6, Speech=0.7, Chime=0.3), profile(Doorbell=0.5, Chime=0.2),
             profile(Doorbell=0.4, Music=0.5), profile(Doorbell=0.7, Chime=0.1)]
    support = [NAMES[i] for i in custom_fit.support_set(takes, custom_fit.background_classes(None, []))]
    assert support[0] == "Doorbell" and "Chime" in support
    assert "Speech" not in support  # uninformative, whatever the takes say
    assert "Music" not in support  # in one take of four only
    # a class the background files rank high is not evidence
    bg = np.vstack([profile(Chime=0.9)] * 5 + [profile(Rain=0.9)] * 5)
    excluded = custom_fit.background_classes(bg, np.repeat(np.arange(5), 2))
    assert NAMES.index("Chime") in excluded
    assert "Chime" not in [NAMES[i] for i in custom_fit.support_set(takes, excluded)]


def test_a_take_that_is_mostly_speech_or_silence_is_warned():
    p = np.full(len(NAMES), 0.01, dtype=np.float32)
    p[NAMES.index("Speech")] = 0.8
    note = custom_fit.uninformative_take("take1.wav", p)
    assert note and '"Speech"' in note and "take1.wav" in note
    p[NAMES.index("Doorbell")] = 0.9
    assert custom_fit.uninformative_take("take1.wav", p) is None


def test_a_background_set_keeps_its_audioset_evidence(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.random((6, len(NAMES))).astype(np.float32)
    bg = custom_fit.BackgroundSet(rng.standard_normal((6, 4)).astype(np.float32),
                              np.array([0, 0, 1, 1, 2, 2]), ["a", "b", "a"], "v1",
                              audioset=probs)
    back = custom_fit.BackgroundSet.load(bg.save(tmp_path / "bg.npz"))
    assert back.audioset.shape == (6, len(NAMES))
    np.testing.assert_allclose(back.audioset, probs, atol=1e-3)  # stored as float16
    assert back.without_kinds(["b"]).audioset.shape == (4, len(NAMES))
    plain = custom_fit.BackgroundSet(bg.embeddings, bg.files, bg.kinds, "v1")
    assert custom_fit.BackgroundSet.load(plain.save(tmp_path / "plain.npz")).audioset is None
