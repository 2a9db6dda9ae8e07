"""``enroll --record``: a countdown before each take, and the countdown's audio is not
part of the take (a fake microphone on a fake clock; the real one is in
test_custom_pulse.py)."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import soundfile as sf

from detector.cli.enrolment import TAKE_PAUSE_SECONDS, record_takes
from detector.errors import ConfigError

RATE = 16000
BLOCK = 1600  # 0.1 s


class Clock:
    """Fake time: ``sleep`` advances it; the microphone fills its queue meanwhile."""

    def __init__(self):
        self.slept: list[float] = []
        self.mic: FakeMic | None = None

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.mic.hear(seconds, value=-0.5)  # the room during the countdown


class FakeMic:
    """Blocks already heard wait in a queue, like MicSource's; a read on an empty
    queue returns the sound the user makes after the prompt (0.25), or None with
    ``timeout=0`` (nothing queued yet)."""

    def __init__(self):
        self.queue: collections.deque = collections.deque()
        self.started = self.stopped = False

    def start(self):
        self.started = True

    def stop(self):
        self.stopped = True

    def hear(self, seconds: float, value: float) -> None:
        for _ in range(int(round(seconds * RATE / BLOCK))):
            self.queue.append(np.full(BLOCK, value, np.float32))

    def read(self, timeout=0.5):
        if self.queue:
            return self.queue.popleft()
        if timeout == 0:
            return None
        return np.full(BLOCK, 0.25, np.float32)


def record(tmp_path, capsys, pause, takes=3):
    clock, mic = Clock(), FakeMic()
    clock.mic = mic
    paths = record_takes(None, 1.0, takes, tmp_path, "knock", RATE, pause=pause,
                         sleep=clock.sleep, source=mic)
    return paths, clock, mic, capsys.readouterr().err


def test_each_take_follows_a_countdown_and_holds_only_the_audio_after_it(tmp_path, capsys):
    paths, clock, mic, err = record(tmp_path, capsys, pause=3.0)
    assert mic.started and mic.stopped
    assert clock.slept == [1.0] * 9  # 3 s before each of the 3 takes, a number a second
    lines = err.splitlines()
    assert lines[0] == "take 1/3 in 3... 2... 1..."
    assert lines[1].startswith("take 1/3: make the sound now (1 s)")
    assert "take 2/3 in 3... 2... 1..." in lines and "take 3/3 in 3... 2... 1..." in lines
    assert len(paths) == 3
    for path in paths:
        audio, rate = sf.read(path, dtype="float32")
        assert rate == RATE and audio.shape == (RATE,)
        # only the sound after the prompt; none of the countdown's -0.5
        assert np.allclose(audio, 0.25, atol=1e-4), np.unique(audio)


def test_a_fractional_pause_and_no_pause(tmp_path, capsys):
    _, clock, _, err = record(tmp_path / "a", capsys, pause=2.5, takes=1)
    assert clock.slept == [0.5, 1.0, 1.0] and "take 1/1 in 3... 2... 1..." in err
    _, clock, _, err = record(tmp_path / "b", capsys, pause=0, takes=2)
    assert clock.slept == [] and " in " not in err
    assert TAKE_PAUSE_SECONDS == 3.0  # the documented default


def test_a_pause_out_of_range_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"--pause 31 must be 0..30 seconds"):
        record_takes(None, 1.0, 1, tmp_path, "knock", RATE, pause=31, sleep=None,
                     source=FakeMic())
