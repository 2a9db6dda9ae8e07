"""A microphone that is not there when the daemon starts (real PortAudio capture
through the PulseAudio FIFO source, unloaded = unplugged): `run` does not exit, it
tells systemd "waiting for audio device …" with the watchdog fed, and once the source
appears it listens, hears a tone and says so."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from onnx_models import make_band_model, tone_signal

REPO = Path(__file__).resolve().parents[1]


def _collect(sock, seconds: float) -> list[str]:
    out, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            out.append(sock.recv(4096).decode())
        except socket.timeout:
            pass
    return out


def test_run_waits_for_a_missing_microphone_then_listens(pulse_mic, tmp_path):
    model = make_band_model(tmp_path / "band.onnx")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(0.2)
    pulse_mic.unload_source()  # unplugged before the daemon starts
    env = {**os.environ, "PYTHONPATH": str(REPO), "NOTIFY_SOCKET": str(tmp_path / "notify"),
           "WATCHDOG_USEC": "2000000"}
    proc = subprocess.Popen([sys.executable, "-m", "detector", "run", "--model", str(model),
                             "--device", "pulse"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        messages = _collect(sock, 6.0)
        assert proc.poll() is None, proc.stderr.read()
        statuses = [m for m in messages if "STATUS=" in m]
        assert statuses[-1] == "STATUS=waiting for audio device 'pulse'; retrying", messages
        assert "READY=1" in messages[0]
        # the helper keeps the watchdog fed although no window runs (1 s interval)
        assert messages.count("WATCHDOG=1") >= 4, messages
        pulse_mic.load_source()  # plugged in
        messages = _collect(sock, 5.0)
        assert "STATUS=listening for 2 labels (model band-test-1)" in messages, messages
        pulse_mic.play(tone_signal([(0.0, 1.5, 1000.0)], 1.5))
        pulse_mic.wait_played()
        time.sleep(2.0)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-3000:]
        events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert [(e["label"], e["type"]) for e in events][:2] == [("siren", "start"),
                                                                  ("siren", "end")], out
        assert "waiting for audio device 'pulse'" in err and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
