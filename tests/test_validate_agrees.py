"""``validate-config``, ``run`` and ``replay`` agree: every config the daemon refuses,
validate-config refuses with the same single line, and relative paths in a config
file resolve from the file's folder, never from the working directory. Real files,
a real listening socket, the real CLI as a subprocess."""

from __future__ import annotations

import socket
import subprocess

import pytest

from onnx_models import make_band_model, write_tone_wav
from test_private_and_bad_input import cli


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_band_model(tmp_path_factory.mktemp("agree") / "tiny.onnx")


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    return write_tone_wav(tmp_path_factory.mktemp("agree-wav") / "t.wav", [(0.5, 1.5, 1000.0)],
                          seconds=3.0)


@pytest.fixture(scope="module")
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _bad_configs(tmp, busy):
    not_pem = tmp / "notpem.pem"
    not_pem.write_text("this is not a certificate\n")
    (tmp / "adir").mkdir(exist_ok=True)
    blocker = tmp / "blocker"
    blocker.write_text("a file where a folder should be")
    mqtt = '[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = 1\n'
    return {
        "missing CA": (mqtt + 'tls = true\nca_file = "nope.pem"\n', "mqtt.ca_file="),
        "CA not PEM": (mqtt + f'tls = true\nca_file = "{not_pem}"\n', "TLS setup failed"),
        "CA a directory": (mqtt + 'tls = true\nca_file = "adir"\n', "is not a file"),
        "missing cert": (mqtt + 'tls = true\ncert_file = "nocert.pem"\n', "mqtt.cert_file="),
        "queue a directory": (mqtt + 'queue_path = "adir"\n', "is a directory"),
        "clips unwritable": ('[clips]\nenabled = true\ndirectory = "blocker/clips"\n',
                             "clips.directory="),
        "metrics bad host": ('[metrics]\nenabled = true\nhost = "256.1.1.1"\n',
                             "metrics.host='256.1.1.1'"),
        "metrics port in use": (f'[metrics]\nenabled = true\nport = {busy}\n',
                                "Address already in use"),
    }


@pytest.mark.parametrize("name", ["missing CA", "CA not PEM", "CA a directory", "missing cert",
                                  "queue a directory", "clips unwritable", "metrics bad host",
                                  "metrics port in use"])
def test_validate_run_and_replay_refuse_alike(tmp_path, model, wav, busy_port, name):
    text, fragment = _bad_configs(tmp_path, busy_port)[name]
    conf = tmp_path / "c.toml"
    conf.write_text(text)
    conf.chmod(0o600)
    lines = {}
    for command in (["validate-config", conf, "--model", model],
                    ["run", "--config", conf, "--model", model],
                    ["replay", wav, "--config", conf, "--model", model]):
        result = cli(*command)
        assert result.returncode == 2, (command[0], result.stderr)
        assert result.stdout == ""
        # the error is the only line: no info line before it, no traceback
        assert len(result.stderr.splitlines()) == 1, (command[0], result.stderr)
        lines[command[0]] = result.stderr.strip()
    assert fragment in lines["validate-config"], lines
    assert lines["run"] == lines["replay"] == lines["validate-config"], lines


def test_relative_paths_resolve_from_the_config_files_folder(tmp_path, model, wav):
    home = tmp_path / "etc"
    home.mkdir()
    (home / "secret").write_text("pw\n")
    (home / "secret").chmod(0o600)
    conf = home / "c.toml"
    conf.write_text('[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = 1\nusername = "u"\n'
                    'password_file = "secret"\nqueue_path = "state/x.db"\n'
                    '[clips]\nenabled = true\ndirectory = "clips"\n')
    conf.chmod(0o600)
    assert cli("validate-config", conf, "--model", model).returncode == 0
    # the CLI runs from the repository: nothing may appear there
    result = cli("replay", wav, "--config", conf, "--model", model)
    assert result.returncode in (0, 3), result.stderr  # the broker is away: lost or kept
    assert (home / "state" / "x.db").is_file() and (home / "clips").is_dir()
    from test_private_and_bad_input import REPO
    assert not (REPO / "state").exists() and not (REPO / "x.db").exists()
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"],
                            capture_output=True, text=True, cwd=REPO).stdout
    assert "x.db" not in status and "clips/" not in status
