"""``sound-detector enroll --record``: takes recorded from a real PortAudio microphone
(the PulseAudio FIFO of tests/pulse.py), then the label they teach fires on replay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import soundfile as sf

from conftest import REPO
from onnx_models import make_band_model, tone_signal, write_tone_wav

CHIRP = 1500.0


def test_enroll_records_takes_from_the_microphone(pulse_mic, tmp_path):
    model = make_band_model(tmp_path / "emb.onnx", embedding=True)
    room = [write_tone_wav(tmp_path / f"room{i}.wav",
                           [(1.0, 2.0, 1000.0), (3.0, 3.6, 3000.0), (4.5, 5.5, 600.0)],
                           seconds=7.0, noise_dbfs=level, amplitude=0.1 * (i + 1))
            for i, level in enumerate((-70, -55, -40))]
    config = tmp_path / "c.toml"
    config.write_text('[audio]\ndevice = "pulse"\n')
    custom = tmp_path / "custom"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("STATE_DIRECTORY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "detector", "enroll", "chirp", "--record", "2", "--takes", "3",
         "--pause", "0.5",
         "--background", *map(str, room), "--model", str(model), "--custom", str(custom),
         "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    prompts: list[str] = []
    err_lines: list[str] = []

    def feed():
        for line in proc.stderr:
            err_lines.append(line)
            if "make the sound now" in line:
                k = len(prompts)
                prompts.append(line)
                # a 0.6 s chirp (a little different each take) with a quiet noise floor
                pulse_mic.play(tone_signal([(0.3, 0.9, CHIRP + 10 * k)], 1.4, amplitude=0.3,
                                           noise_dbfs=-60, seed=k))

    reader = threading.Thread(target=feed, daemon=True)
    reader.start()
    out = proc.stdout.read()
    proc.wait(timeout=120)
    reader.join(timeout=10)
    err = "".join(err_lines)
    assert proc.returncode == 0, err[-3000:]
    assert len(prompts) == 3
    assert [l.strip() for l in err_lines if l.startswith("take ") and " in " in l] == [
        f"take {k}/3 in 1..." for k in (1, 2, 3)]  # a countdown before each take
    recordings = sorted((custom / "recordings").glob("chirp-*.flac"))
    assert len(recordings) == 3
    for path in recordings:
        audio, rate = sf.read(path, dtype="float32")
        assert rate == 16000 and audio.shape == (32000,)
        assert np.abs(audio).max() > 0.2  # the chirp was captured, not only silence
    assert "enrolled 'chirp' from 3 clip(s)" in out, out
    assert (custom / "chirp.npz").is_file()

    test = write_tone_wav(tmp_path / "test.wav", [(1.0, 1.8, CHIRP), (4.0, 5.0, 1000.0)],
                          seconds=7.0, noise_dbfs=-60)
    res = subprocess.run([sys.executable, "-m", "detector", "replay", str(test), "--model",
                          str(model), "--custom", str(custom)], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    starts = [json.loads(line) for line in res.stdout.splitlines()
              if json.loads(line)["type"] == "start"]
    assert sorted(e["label"] for e in starts) == ["chirp", "siren"]
