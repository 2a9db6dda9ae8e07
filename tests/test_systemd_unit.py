"""The systemd unit (verify, security exposure) and install.sh / uninstall.sh.

install.sh runs for real into a staging root (``--prefix``): virtualenv, pip install
of this project, config from the example, credential file modes, unit file; then
the installed ``sound-detector`` validates the config and uninstall.sh removes it.
Only apt and systemctl are skipped (this machine has no systemd as PID 1).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from detector.config import load_config

UNIT = REPO / "systemd" / "sound-detector.service"
EXPOSURE_TARGET = 2.0


def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_has_the_service_contract():
    s = unit_settings()
    expected = {
        "Type": "notify", "NotifyAccess": "main", "WatchdogSec": "30",
        "Restart": "on-failure", "RestartSec": "5", "DynamicUser": "yes",
        "SupplementaryGroups": "audio", "StateDirectory": "sound-detector",
        "ConfigurationDirectory": "sound-detector",
        "LoadCredential": "mqtt_password:/etc/sound-detector/mqtt_password",
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "NoNewPrivileges": "yes", "PrivateDevices": "no", "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "DeviceAllow": "char-alsa rw",
        "ExecStart": "/opt/sound-detector/venv/bin/sound-detector run "
                     "--config /etc/sound-detector/config.toml",
    }
    for key, value in expected.items():
        assert s.get(key) == [value], f"{key}: {s.get(key)}"
    assert "@system-service" in s["SystemCallFilter"]


def _analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (apt install systemd)")
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def verify_installed_unit(root: Path) -> subprocess.CompletedProcess:
    """`systemd-analyze verify` of the unit as install.sh wrote it into the staging root
    ``root``: ExecStart, the credential and every path are resolved inside ``root``. The
    distribution's own units (sysinit.target, …) are copied in, as a real root has them."""
    system_units = Path("/usr/lib/systemd/system")
    if not system_units.is_dir():
        pytest.skip("no /usr/lib/systemd/system to complete the staging root")
    dest = root / "usr/lib/systemd/system"
    if not dest.exists():
        shutil.copytree(system_units, dest, symlinks=True)
    return _analyze("verify", f"--root={root}", "sound-detector.service", cwd=root)


def test_security_exposure_is_low(tmp_path):
    out = _analyze("security", "--offline=true", str(UNIT), cwd=tmp_path)
    match = re.search(r"Overall exposure level for sound-detector\.service: ([0-9.]+)",
                      out.stdout + out.stderr)
    assert match, out.stdout[-2000:] + out.stderr
    exposure = float(match.group(1))
    print(f"systemd-analyze security exposure: {exposure}")
    assert exposure <= EXPOSURE_TARGET


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory):
    """This project copied without caches, so pip builds outside the shared tree."""
    dst = tmp_path_factory.mktemp("src") / "sound-detector"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", ".git",
                                    ".pytest_cache", ".hypothesis", "runs", "*.png")
    dst.mkdir()
    for name in ("pyproject.toml", "README.md", "detector", "export", "systemd", "scripts"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, dst / name)
    return dst


def run_script(script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                          timeout=600, env=outer_env())


def outer_env() -> dict[str, str]:
    """PATH/PYTHONPATH so the staged venv finds the test environment's packages
    (numpy, onnxruntime, setuptools) even when the tests themselves run in a venv,
    whose packages --system-site-packages would not see; nothing is downloaded."""
    import site

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(site.getsitepackages())
    return env


@pytest.mark.slow
def test_install_and_uninstall_into_a_staging_root(source_copy, tmp_path, mosquitto):
    root = tmp_path / "root"
    password = tmp_path / "pw"
    password.write_text("broker-secret\n")
    args = ["--prefix", str(root), "--source", str(source_copy), "--no-apt",
            "--system-site-packages", "--pip-args", "--no-deps --no-build-isolation --no-index",
            "--mqtt-host", "broker.lan", "--mqtt-port", "1884", "--mqtt-user", "pi",
            "--mqtt-password-file", str(password), "--node-id", "garden"]
    if not (REPO / "detector" / "models" / "default.onnx").exists():
        args.append("--no-validate")  # no shipped model yet: validated below with a tiny one
    out = run_script(source_copy / "scripts" / "install.sh", *args)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "systemctl skipped" in out.stdout

    exe = root / "opt/sound-detector/venv/bin/sound-detector"
    conf = root / "etc/sound-detector/config.toml"
    cred = root / "etc/sound-detector/mqtt_password"
    unit = root / "etc/systemd/system/sound-detector.service"
    assert os.access(exe, os.X_OK)
    assert unit.read_text() == UNIT.read_text()
    link = root / "usr/local/bin/sound-detector"  # `sudo sound-detector …` on sudo's PATH
    assert os.readlink(link) == "/opt/sound-detector/venv/bin/sound-detector"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o644
    assert stat.S_IMODE(cred.stat().st_mode) == 0o600
    assert cred.read_text() == "broker-secret\n"
    assert "broker-secret" not in conf.read_text()

    config = load_config(conf, env={})
    assert config.mqtt.enabled and config.mqtt.host == "broker.lan"
    assert config.mqtt.port == 1884 and config.mqtt.username == "pi"
    assert config.mqtt.node_id == "garden"
    assert config.mqtt.queue_path == "/var/lib/sound-detector/outbox.sqlite"
    assert config.output.stdout_json is False
    # the service gets the password as a systemd credential ($CREDENTIALS_DIRECTORY)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    shutil.copy(cred, credentials / "mqtt_password")
    assert load_config(conf, env={"CREDENTIALS_DIRECTORY": str(credentials)}) \
        .mqtt.password == "broker-secret"

    sys.path.insert(0, str(REPO / "tests"))
    from onnx_models import make_band_model

    model = make_band_model(tmp_path / "tiny.onnx")
    check = subprocess.run([str(exe), "validate-config", str(conf), "--model", str(model)],
                           capture_output=True, text=True, timeout=120, env=outer_env())
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("OK:")

    # a second install never overwrites the config the user edited
    conf.write_text(conf.read_text().replace('host = "broker.lan"', 'host = "edited.lan"'))
    pip_args = ["--pip-args", "--no-deps --no-build-isolation --no-index"]
    again = run_script(source_copy / "scripts" / "install.sh", "--prefix", str(root),
                       "--source", str(source_copy), "--no-apt", "--no-validate",
                       "--mqtt-host", "other.lan", *pip_args)
    assert again.returncode == 0, again.stderr
    assert "keeping the existing" in again.stdout
    # ... and says which options it did not apply
    assert "NOT applied, because a config exists: --mqtt-host other.lan" in again.stdout
    assert load_config(conf, env={}).mqtt.host == "edited.lan"
    assert cred.read_text() == "broker-secret\n"

    # an upgrade whose config fails validation changes nothing (checked before apt/pip)
    edited = conf.read_text()
    conf.write_text(edited.replace("port = 1884", "port = 0"))
    unit_before = unit.stat().st_mtime_ns
    venv_before = (root / "opt/sound-detector/venv/bin/sound-detector").stat().st_mtime_ns
    bad = run_script(source_copy / "scripts" / "install.sh", "--prefix", str(root),
                     "--source", str(source_copy), "--no-apt", "--update-config",
                     "--mqtt-host", "other.lan", *pip_args)
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "mqtt.port=0" in bad.stderr and "nothing was changed" in bad.stderr
    assert unit.stat().st_mtime_ns == unit_before
    assert exe.stat().st_mtime_ns == venv_before
    assert 'host = "edited.lan"' in conf.read_text()
    conf.write_text(edited)

    # the installed unit passes systemd-analyze verify as written (ExecStart is the
    # staged venv's sound-detector), and verify really checks it: without it, it fails
    verified = verify_installed_unit(root)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "sound-detector.service" not in verified.stderr, verified.stderr  # no warnings
    exe.rename(exe.with_name("moved"))
    broken = verify_installed_unit(root)
    assert broken.returncode != 0 and "is not executable" in broken.stderr, broken.stderr
    exe.with_name("moved").rename(exe)

    # uninstall removes the node from the broker (Home Assistant device, retained topics)
    conf.write_text(conf.read_text().replace('host = "edited.lan"', 'host = "127.0.0.1"')
                    .replace("port = 1884", f"port = {mosquitto.port}"))
    from detector.publish.homeassistant import discovery_messages
    from mqtt_helpers import retained_all
    import paho.mqtt.client as paho

    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="test-stage-publisher")
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    for topic, payload in discovery_messages("sound-detector/garden", "garden", ["siren"],
                                             "v1", "0.0.1"):
        pub.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    pub.publish("sound-detector/garden/status", "offline", qos=1, retain=True).wait_for_publish(5)
    pub.disconnect()
    pub.loop_stop()
    assert len(retained_all(mosquitto.port, "homeassistant/+/garden/+/config")) == 3

    queue_before = Path(config.mqtt.queue_path).exists()
    out = run_script(source_copy / "scripts" / "uninstall.sh", "--prefix", str(root))
    assert out.returncode == 0, out.stderr
    assert "removed node garden" in out.stdout, out.stdout + out.stderr
    # the removal never touches the service's queue (queue_path is an absolute path of
    # the real system, outside the staging root)
    assert not Path(config.mqtt.queue_path).exists() or queue_before, \
        "homeassistant --remove created the service's outbox"
    assert retained_all(mosquitto.port, "homeassistant/+/garden/+/config") == {}
    assert retained_all(mosquitto.port, "sound-detector/garden/#") == {}
    assert f"{root}/opt/sound-detector" in out.stdout  # paths as they are, with the prefix
    assert not (root / "opt/sound-detector").exists() and not unit.exists()
    assert not os.path.lexists(link)
    assert conf.exists() and cred.exists(), "config is kept without --purge"
    out = run_script(source_copy / "scripts" / "uninstall.sh", "--prefix", str(root), "--purge")
    assert out.returncode == 0, out.stderr
    assert not (root / "etc/sound-detector").exists()


def test_install_refuses_bad_arguments_with_one_line(tmp_path):
    script = REPO / "scripts" / "install.sh"
    for args, fragment in [(["--bogus"], "unknown option --bogus"),
                           (["--prefix"], "--prefix needs a value"),
                           (["--prefix", str(tmp_path), "--mqtt-port", "x"], "not a number"),
                           (["--prefix", str(tmp_path), "--mqtt-password-file",
                             str(tmp_path / "nope")], "does not exist")]:
        out = run_script(script, *args)
        assert out.returncode == 2
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], out.stderr
    assert not any(tmp_path.iterdir()), "nothing is installed after a refused argument"


MDWE_CHILD = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
if sys.argv[1] == "mdwe" and libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, REFUSE_EXEC_GAIN
    print("unsupported"); sys.exit(0)
import sounddevice  # the callback type PortAudio calls for every audio block
try:
    sounddevice._ffi.callback("PaStreamCallback", lambda *args: 0)
except MemoryError as exc:
    print("refused:", exc); sys.exit(0)
print("ok")
"""


def test_memory_deny_write_execute_would_break_capture():
    """Why the unit leaves MemoryDenyWriteExecute= off: sounddevice's audio callback is a
    cffi/libffi closure that needs a writable+executable page. The kernel's own MDWE
    (prctl PR_SET_MDWE, what systemd's option amounts to) makes creating it fail."""
    assert "MemoryDenyWriteExecute=" not in [
        line.split("=")[0] + "=" for line in UNIT.read_text().splitlines()
        if not line.startswith("#")]
    plain = subprocess.run([sys.executable, "-c", MDWE_CHILD, "plain"], capture_output=True,
                           text=True, timeout=60)
    assert plain.stdout.strip() == "ok", plain.stderr
    denied = subprocess.run([sys.executable, "-c", MDWE_CHILD, "mdwe"], capture_output=True,
                            text=True, timeout=60)
    if denied.stdout.strip() == "unsupported":
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    assert denied.stdout.startswith("refused: Cannot allocate write+execute memory"), \
        denied.stdout + denied.stderr
