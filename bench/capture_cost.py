#!/usr/bin/env python3
"""Cost of audio input: CPU per second of audio for live capture (real PortAudio via
the PulseAudio FIFO microphone of the tests) and replay throughput for files.

    python bench/capture_cost.py [--seconds 10]

Live capture is measured as process CPU time (all threads: PortAudio's callback
thread, the ALSA pulse client, our reader) while a consumer reads for ``--seconds``.
The PulseAudio daemon is another process and is not counted; the FIFO writer thread
lives in this process, so its idle cost (writer running, no capture) is measured
first and subtracted.
Needs pulseaudio (scripts/setup-test-deps.sh).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))


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

    def run():
        nonlocal got
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            block = src.read(timeout=0.5)
            if block is not None:
                got += len(block)

    cpu, _ = cpu_of(run)
    overflows = src.overflows
    src.stop()
    return cpu, got, overflows


def replay(path: Path) -> tuple[float, float, int]:
    from detector.audio.capture import FileSource

    src = FileSource(path, 16000)
    n = 0

    def run():
        nonlocal n
        while True:
            try:
                n += len(src.read())
            except EOFError:
                return

    cpu, wall = cpu_of(run)
    return cpu, wall, n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(f"# capture cost on {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d', time.gmtime())}")

    from pulse import PulseMic

    mic = PulseMic()
    mic.start()
    os.environ.update(mic.env)
    try:
        idle, _ = cpu_of(lambda: time.sleep(args.seconds))
        print(f"FIFO writer alone (subtracted below): {1000 * idle / args.seconds:.2f} ms CPU/s")
        print("| input | device rate | CPU per second of audio | samples | overflows |")
        print("|---|---:|---:|---:|---:|")
        for rate in (None, 48000):
            cpu, got, overflows = live(args.seconds, rate)
            audio_s = got / 16000
            per_s = 1000 * (cpu - idle * audio_s / args.seconds) / audio_s
            print(f"| microphone (PortAudio, ALSA pulse) | {rate or 16000} Hz | "
                  f"{per_s:.2f} ms | {got} | {overflows} |")
    finally:
        mic.stop()

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        minute = 60
        for name, rate, channels, fmt in [("wav16k", 16000, 1, "WAV"),
                                          ("flac44k1stereo", 44100, 2, "FLAC"),
                                          ("ogg48k", 48000, 1, "OGG")]:
            path = Path(tmp) / f"{name}.{fmt.lower()}"
            audio = (0.1 * rng.standard_normal((rate * minute, channels))).astype(np.float32)
            # Written in 1 s pieces: libsndfile 1.2.0 crashes writing a long OGG in one call.
            with sf.SoundFile(path, "w", rate, channels, format=fmt) as out:
                for i in range(0, len(audio), rate):
                    out.write(audio[i:i + rate])
            cpu, wall, n = replay(path)
            print(f"| file {fmt} {rate} Hz {channels} ch, {minute} s | {rate} Hz | "
                  f"{1000 * cpu / (n / 16000):.2f} ms ({(n / 16000) / wall:.0f}x real time) "
                  f"| {n} | - |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
