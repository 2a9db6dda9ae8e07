"""Black-box: ``python -m detector`` as a subprocess, a real Mosquitto, a real ONNX
model (tests/onnx_models.py), real audio (generated tones; the PulseAudio FIFO
microphone for the service-mode test). Subscribers are real paho clients."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from conftest import REPO
from detector.events import EVENT_KEYS
from mqtt_helpers import Recorder, retained
from onnx_models import make_band_model, tone_signal, write_tone_wav

SIREN, DOG = 1000.0, 3000.0


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_band_model(tmp_path_factory.mktemp("e2e") / "tiny.onnx")


def write_config(path: Path, port: int, node: str, discovery: str, **extra: str) -> Path:
    sections: dict[str, dict[str, str]] = {
        "mqtt": {"enabled": "true", "host": '"127.0.0.1"', "port": str(port),
                 "node_id": f'"{node}"', "discovery_prefix": f'"{discovery}"',
                 "level_interval_seconds": "1.0"},
    }
    for key, value in extra.items():
        section, name = key.split("__")
        sections.setdefault(section, {})[name] = value
    text = "".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in body.items()) + "\n"
                   for name, body in sections.items())
    path.write_text(text)
    path.chmod(0o600)
    return path


def daemon(*args, env=None, **kw) -> subprocess.Popen:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full_env.pop("SOUND_DETECTOR_MQTT_PASSWORD", None)
    return subprocess.Popen([sys.executable, "-m", "detector", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full_env, cwd=REPO, **kw)


def test_replay_publishes_the_contract(mosquitto, model, tmp_path):
    node, disc = f"e2e-{uuid.uuid4().hex[:6]}", f"ha-{uuid.uuid4().hex[:6]}"
    prefix = f"sound-detector/{node}"
    wav = write_tone_wav(tmp_path / "tones.wav", [(1.0, 2.5, SIREN), (4.0, 5.5, DOG)],
                         seconds=7.0)
    clips = tmp_path / "clips"
    conf = write_config(tmp_path / "c.toml", mosquitto.port, node, disc,
                        clips__enabled="true", clips__directory=f'"{clips}"',
                        clips__pre_roll_seconds="0.5", clips__post_roll_seconds="0.5")
    rec = Recorder(mosquitto.port, [f"{prefix}/#", f"{disc}/#"])
    proc = daemon("replay", wav, "--model", model, "--config", conf)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    printed = [json.loads(line) for line in out.splitlines()]
    assert [(e["type"], e["label"]) for e in printed] == [
        ("start", "siren"), ("end", "siren"), ("start", "dog_bark"), ("end", "dog_bark")]

    events = [json.loads(p) for p in rec.wait_count(f"{prefix}/events", 4)]
    assert events == printed, "MQTT carries exactly what stdout printed, in order"
    for e in events:
        assert set(EVENT_KEYS) <= set(e) and set(e) - set(EVENT_KEYS) <= {
            "clip", "offset_s", "published_offset_s", "evidence"}
        assert isinstance(e["offset_s"], float)  # replay: the position in the file
        assert e["published_offset_s"] >= e["offset_s"]  # published at or after the onset
        assert e["node"] == node and e["model"] == "band-test-1"
    for end in (events[1], events[3]):
        assert Path(end["clip"]).is_file() and Path(end["clip"]).parent == clips
    assert rec.payloads(f"{prefix}/siren/state")[-2:] == [b"ON", b"OFF"]
    assert [json.loads(p)["event_type"] for p in rec.payloads(f"{prefix}/dog_bark/event")] \
        == ["start", "end"]
    statuses = rec.payloads(f"{prefix}/status")
    assert statuses[0] == b"online" and statuses[-1] == b"offline"  # clean exit says offline
    assert retained(mosquitto.port, f"{prefix}/siren/state") == b"OFF"
    assert retained(mosquitto.port, f"{prefix}/status") == b"offline"
    level = json.loads(rec.wait_count(f"{prefix}/level", 1)[0])
    assert set(level) == {"dbfs", "leq_dbfs", "interval_s", "time"}

    configs = {t: json.loads(p) for t, p, retain in rec.messages if t.startswith(disc)}
    expected = {f"{disc}/binary_sensor/{node}/siren/config",
                f"{disc}/binary_sensor/{node}/dog_bark/config",
                f"{disc}/event/{node}/siren_event/config",
                f"{disc}/event/{node}/dog_bark_event/config",
                f"{disc}/sensor/{node}/level/config"}
    assert set(configs) == expected  # "background" is a background label: no entity
    sensor = configs[f"{disc}/binary_sensor/{node}/siren/config"]
    assert sensor["device_class"] == "sound" and sensor["state_topic"] == f"{prefix}/siren/state"
    assert retained(mosquitto.port, f"{disc}/event/{node}/siren_event/config") is not None
    rec.close()


def test_last_will_after_kill_9_of_the_daemon(mosquitto, model, tmp_path):
    node = f"will-{uuid.uuid4().hex[:6]}"
    prefix = f"sound-detector/{node}"
    wav = write_tone_wav(tmp_path / "long.wav", [(1.0, 2.0, SIREN)], seconds=120.0)
    conf = write_config(tmp_path / "c.toml", mosquitto.port, node, "ha-will")
    rec = Recorder(mosquitto.port, [f"{prefix}/status"])
    proc = daemon("replay", wav, "--realtime", "--model", model, "--config", conf)
    try:
        rec.wait_for(lambda m: rec.last(f"{prefix}/status") == b"online", timeout=60,
                     what="online")
        assert retained(mosquitto.port, f"{prefix}/status") == b"online"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        rec.wait_for(lambda m: rec.last(f"{prefix}/status") == b"offline", timeout=60,
                     what="last will offline")
        assert retained(mosquitto.port, f"{prefix}/status") == b"offline"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
        rec.close()


def test_daemon_started_before_the_broker_delivers_everything(model, tmp_path):
    from conftest import Mosquitto, free_port

    port = free_port()
    node = f"early-{uuid.uuid4().hex[:6]}"
    prefix = f"sound-detector/{node}"
    wav = write_tone_wav(tmp_path / "tones.wav", [(0.5, 1.5, SIREN), (2.5, 3.5, DOG)],
                         seconds=8.0)
    conf = write_config(tmp_path / "c.toml", port, node, "ha-early")
    proc = daemon("replay", wav, "--realtime", "--model", model, "--config", conf)
    broker = None
    try:
        # wait until both events happened while no broker exists
        printed = []
        while len(printed) < 4:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            printed.append(json.loads(line))
        broker = Mosquitto(tmp_path, port=port)
        rec = Recorder(port, [f"{prefix}/events"])
        got = [json.loads(p) for p in rec.wait_count(f"{prefix}/events", 4, timeout=60)]
        assert got == printed
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert err.count("is unreachable") == 1, err
        rec.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if broker:
            broker.stop()


def test_service_mode_with_microphone_notify_credential_and_control(
        model, tmp_path, pulse_mic):
    """`run` as systemd runs it: READY/WATCHDOG/STOPPING on a real NOTIFY_SOCKET, the
    password from $CREDENTIALS_DIRECTORY against a broker that requires it, events
    from a real (virtual) microphone, runtime control over ``…/set``, SIGTERM."""
    import getpass

    from conftest import free_port, mosquitto_binary, wait_port

    pwfile = tmp_path / "passwd"
    subprocess.run([mosquitto_binary("mosquitto_passwd"), "-b", "-c", str(pwfile),
                    "sensor", "cred-Pa55"],
                   check=True, capture_output=True)
    port = free_port()
    bconf = tmp_path / "auth.conf"
    bconf.write_text(f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\n"
                     f"allow_anonymous false\npassword_file {pwfile}\npersistence false\n")
    broker = subprocess.Popen([mosquitto_binary(), "-c", str(bconf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    wait_port(port)
    node = f"svc-{uuid.uuid4().hex[:6]}"
    prefix = f"sound-detector/{node}"
    conf = write_config(tmp_path / "c.toml", port, node, "ha-svc",
                        mqtt__username='"sensor"', audio__device='"pulse"',
                        output__stdout_json="false")
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "mqtt_password").write_text("cred-Pa55\n")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(30)
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "2000000",
           "CREDENTIALS_DIRECTORY": str(creds), "JOURNAL_STREAM": "8:12345"}
    proc = daemon("run", "--config", conf, "--model", model, env=env)
    err_lines: list[str] = []

    def pump():
        for line in proc.stderr:
            err_lines.append(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    rec = None
    try:
        first = notify.recv(4096).decode()
        assert first.startswith("READY=1"), first
        assert notify.recv(4096) == b"WATCHDOG=1"
        # the watcher uses the same account (the broker refuses anonymous clients)
        rec = Recorder(port, [f"{prefix}/#"], username="sensor", password="cred-Pa55")
        rec.wait_for(lambda m: rec.last(f"{prefix}/status") == b"online", what="online")
        pulse_mic.play(tone_signal([(0.0, 1.5, SIREN)], 1.5))
        events = rec.wait_count(f"{prefix}/events", 2, timeout=30)
        assert [json.loads(p)["type"] for p in events] == ["start", "end"]
        # the watchdog keeps being fed from the audio loop
        pings = [notify.recv(4096) for _ in range(2)]
        assert all(p == b"WATCHDOG=1" or p.startswith(b"STATUS=") for p in pings)
        # runtime control: disable siren; a bad payload changes nothing
        rec.client.publish(f"{prefix}/set", b'{"labels": {"siren": {"enabled": "no"}}}', qos=1)
        rec.client.publish(f"{prefix}/set", b'{"labels": {"siren": {"enabled": false}}}', qos=1)
        deadline = time.monotonic() + 30
        while not any("control: siren enabled=False" in line for line in err_lines):
            assert time.monotonic() < deadline, "".join(err_lines)
            time.sleep(0.05)
        pulse_mic.play(tone_signal([(0.0, 1.5, SIREN), (2.0, 3.5, DOG)], 3.5))
        events = rec.wait_count(f"{prefix}/events", 4, timeout=30)
        assert [(json.loads(p)["type"], json.loads(p)["label"]) for p in events[2:]] == [
            ("start", "dog_bark"), ("end", "dog_bark")]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, "".join(err_lines)
        reader.join(10)
        err = "".join(err_lines)
        rest = []
        notify.settimeout(2)
        try:
            while True:
                rest.append(notify.recv(4096).decode())
        except socket.timeout:
            pass
        assert any(m.startswith("STOPPING=1") for m in rest), rest
        rec.wait_for(lambda m: rec.last(f"{prefix}/status") == b"offline", what="offline")
        assert "cred-Pa55" not in err
        assert "ignored sound-detector/" in err and "must be true or false" in err
        assert "Traceback" not in err
        # journald mode: no timestamps in log lines
        assert all(not line[:2].isdigit() for line in err.splitlines() if line)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if rec is not None:
            rec.close()
        notify.close()
        broker.terminate()
        broker.wait(5)


def test_device_loss_is_published_and_detection_resumes(mosquitto, model, tmp_path, pulse_mic):
    """The microphone vanishes (PulseAudio source unloaded, like a USB plug pulled)
    while `run` streams: `…/device` goes `lost` (retained), the daemon keeps running,
    and after the source is back `connected` follows and a tone is detected again."""
    node = f"dev-{uuid.uuid4().hex[:6]}"
    prefix = f"sound-detector/{node}"
    conf = write_config(tmp_path / "c.toml", mosquitto.port, node, "ha-dev",
                        audio__device='"pulse"', output__stdout_json="false")
    rec = Recorder(mosquitto.port, [f"{prefix}/#"])
    proc = daemon("run", "--config", conf, "--model", model)
    try:
        rec.wait_for(lambda m: rec.last(f"{prefix}/device") == b"connected", timeout=30,
                     what="device connected")
        pulse_mic.unload_source()
        rec.wait_for(lambda m: rec.last(f"{prefix}/device") == b"lost", timeout=30,
                     what="device lost")
        assert retained(mosquitto.port, f"{prefix}/device") == b"lost"
        assert proc.poll() is None, "a lost device must not stop the daemon"
        back = time.monotonic()
        pulse_mic.load_source()
        rec.wait_for(lambda m: rec.last(f"{prefix}/device") == b"connected", timeout=30,
                     what="device connected again")
        print(f"device back -> 'connected' on the broker after {time.monotonic() - back:.2f} s")
        pulse_mic.play(tone_signal([(0.0, 1.5, SIREN)], 1.5))
        events = [json.loads(p) for p in rec.wait_count(f"{prefix}/events", 2, timeout=30)]
        assert [(e["type"], e["label"]) for e in events[-2:]] == [("start", "siren"),
                                                                 ("end", "siren")]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
        rec.close()


def test_shipped_model_on_the_demo_clip_reaches_the_broker(mosquitto, tmp_path):
    """The README's first command with MQTT on: the shipped model hears the bundled
    clip, and the broker gets exactly the events printed on stdout."""
    from detector.audio.capture import DEMO_CLIP

    shipped = REPO / "detector" / "models" / "default.onnx"
    if not (shipped.exists() and Path(DEMO_CLIP).exists()):
        pytest.skip("shipped model or demo clip not in this checkout yet")
    node = f"demo-{uuid.uuid4().hex[:6]}"
    prefix = f"sound-detector/{node}"
    conf = write_config(tmp_path / "c.toml", mosquitto.port, node, "ha-demo")
    rec = Recorder(mosquitto.port, [f"{prefix}/events"])
    proc = daemon("replay", "--config", conf)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    printed = [json.loads(line) for line in out.splitlines()]
    assert printed, "the demo clip produces events with the shipped model"
    got = [json.loads(p) for p in rec.wait_count(f"{prefix}/events", len(printed))]
    assert got == printed
    rec.close()
