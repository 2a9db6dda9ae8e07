"""Cost of audio input (``python -m bench cost --capture``): CPU per second of audio for live
capture (real PortAudio through the PulseAudio FIFO microphone of the tests; needs
``scripts/setup-test-deps.sh``) and for decoding files in replay.

Live capture is process CPU (all threads: PortAudio's callback, the ALSA pulse client, the
reader) while a consumer reads for ``--seconds``; the PulseAudio daemon is another process and
is not counted; the FIFO writer thread lives in this process, so its idle cost is measured
first and subtracted.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench._common import REPO, begin, finish, stamp_line


def cpu_of(fn) -> tuple[float, float]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu0, time.perf_counter() - wall0


def live(seconds: float, sample_rate: int | None) -> tuple[float, int, int]:
    from detector.audio.capture import MicSource
    from detector.config import AudioConfig

    src = MicSource(AudioConfig(device="pulse", sample_rate=sample_rate), 16000)
    src.start()
    got = 0
    src.read(timeout=2.0)
    end = time.monotonic() + seconds

    def read():
        nonlocal got
        while time.monotonic() < end:
            block = src.read(timeout=0.5)
            got += 0 if block is None else len(block)

    cpu, _ = cpu_of(read)
    overflows = src.overflows
    src.stop()
    return cpu, got, overflows


def replay(path: Path) -> tuple[float, float, int]:
    from detector.audio.capture import FileSource

    src, n = FileSource(path, 16000), 0

    def read():
        nonlocal n
        while True:
            try:
                n += len(src.read())
            except EOFError:
                return

    cpu, wall = cpu_of(read)
    return cpu, wall, n


def run(args, argv) -> int:
    import soundfile as sf

    sys.path.insert(0, str(REPO / "tests"))
    from pulse import PulseMic

    result, rows = begin("cost", argv), []
    mic = PulseMic()
    mic.start()
    os.environ.update(mic.env)
    try:
        idle, _ = cpu_of(lambda: time.sleep(args.seconds))
        for rate in (None, 48000):
            cpu, got, overflows = live(args.seconds, rate)
            audio_s = got / 16000
            rows.append({"input": "microphone (PortAudio, ALSA pulse)", "rate": rate or 16000,
                         "ms_per_audio_second": round(1000 * (cpu - idle * audio_s / args.seconds)
                                                      / audio_s, 2), "overflows": overflows})
    finally:
        mic.stop()
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        for rate, channels, fmt in [(16000, 1, "WAV"), (44100, 2, "FLAC"), (48000, 1, "OGG")]:
            path = Path(tmp) / f"a.{fmt.lower()}"
            audio = (0.1 * rng.standard_normal((rate * 60, channels))).astype(np.float32)
            with sf.SoundFile(path, "w", rate, channels, format=fmt) as out:
                for i in range(0, len(audio), rate):  # 1 s pieces: libsndfile 1.2.0 and OGG
                    out.write(audio[i:i + rate])
            cpu, wall, n = replay(path)
            rows.append({"input": f"file {fmt}, {channels} channel(s), 60 s", "rate": rate,
                         "ms_per_audio_second": round(1000 * cpu / (n / 16000), 2),
                         "realtime_factor": round((n / 16000) / wall)})
    result.update({"mode": "capture", "fifo_writer_ms_per_second": round(
        1000 * idle / args.seconds, 2), "rows": rows})
    finish(result, args.name, args.out, markdown)
    return 0


def markdown(r: dict) -> str:
    lines = ["| input | device rate | CPU per second of audio |", "|---|---|---|"]
    lines += [f"| {x['input']} | {x['rate']} Hz | {x['ms_per_audio_second']:.2f} ms"
              + (f" ({x['realtime_factor']}x real time)" if "realtime_factor" in x else "")
              + " |" for x in r["rows"]]
    lines += ["", f"The FIFO writer's own {r['fifo_writer_ms_per_second']} ms per second is "
              "subtracted from the microphone rows.", "", stamp_line(r)]
    return "\n".join(lines) + "\n"
