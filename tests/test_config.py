"""Config: TOML parsing, unknown keys, types, bounds, secrets, file permissions."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from detector import config as cfg
from detector.config import (Config, ConfigError, EventsConfig, MqttConfig, SECTIONS,
                             config_from_dict, load_config, resolve_password)

SECRET = "s3cr3t-Pa55-word"
REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, mode: int = 0o600, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


def test_defaults_without_a_file():
    config = load_config(None, env={})
    assert config == Config(source=None)
    assert config.audio.block_seconds == 0.05
    assert config.model.providers == ("CPUExecutionProvider",)
    assert config.mqtt.port == 1883 and config.mqtt.enabled is False
    assert config.events.labels is None


def test_full_file_round_trip(tmp_path):
    path = write(tmp_path, """
[audio]
device = "USB"
sample_rate = 48000
[model]
path = "m.onnx"
providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
window_hop_seconds = 0.5
[events]
gate_dbfs = -60
thresholds = { siren = 0.6 }
thresholds_off = { siren = 0.3 }
labels = ["siren", "dog_bark"]
cooldown_seconds = 2
[mqtt]
enabled = true
host = "broker.lan"
port = 8883
tls = true
node_id = "garden"
[clips]
enabled = true
[metrics]
port = 9999
[output]
stdout_json = false
log_level = "warning"
""")
    c = load_config(path, env={})
    assert c.source == str(path)
    assert c.audio.device == "USB" and c.audio.sample_rate == 48000
    assert c.model.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert c.events.gate_dbfs == -60.0 and isinstance(c.events.gate_dbfs, float)
    assert c.events.thresholds == {"siren": 0.6}
    assert c.events.labels == ("siren", "dog_bark")
    assert c.events.cooldown_seconds == 2.0
    assert c.mqtt.port == 8883 and c.mqtt.resolved_node_id == "garden"
    assert c.clips.enabled and c.metrics.port == 9999
    assert c.output.stdout_json is False and c.output.log_level == "warning"
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.audio.device = "other"  # type: ignore[misc]


def test_device_may_be_an_index(tmp_path):
    assert load_config(write(tmp_path, "[audio]\ndevice = 3\n"), env={}).audio.device == 3


@pytest.mark.parametrize("text, expected", [
    ("[evnts]\n", r"unknown section \[evnts\]; did you mean 'events'"),
    ("[events]\ncooldown = 1\n", r"unknown key 'cooldown' in \[events\]; did you mean 'cooldown_seconds'"),
    ("[events]\ncooldown_seconds = -1\n", r"events\.cooldown_seconds=-1 must be >= 0$"),
    ("[events]\ncooldown_seconds = \"1\"\n", r"events\.cooldown_seconds='1' must be a number"),
    ("[events]\nsmoothing_windows = 1.5\n", r"events\.smoothing_windows=1\.5 must be an integer"),
    ("[events]\nthresholds = { siren = 1.5 }\n", r"events\.thresholds\.siren=1\.5 must be <= 1"),
    ("[events]\nthresholds = { siren = 0.5 }\nthresholds_off = { siren = 0.6 }\n",
     r"thresholds_off\.siren=0\.6 must be <="),
    ("[mqtt]\nport = 70000\n", r"mqtt\.port=70000 must be <= 65535"),
    ("[mqtt]\nenabled = \"yes\"\n", r"mqtt\.enabled='yes' must be true/false"),
    ("[mqtt]\nbase_topic = \"a/#\"\n", r"mqtt\.base_topic='a/#' must be a non-empty MQTT topic"),
    ("[mqtt]\nnode_id = \"a/b\"\n", r"mqtt\.node_id='a/b'"),
    ("[mqtt]\nkey_file = \"k.pem\"\n", r"mqtt\.key_file is set without mqtt\.cert_file"),
    ("[audio]\ndevice = true\n", r"audio\.device=True must be a string or an integer"),
    ("[audio]\nblock_seconds = 0\n", r"audio\.block_seconds=0 must be >= 0\.005"),
    ("[model]\nproviders = []\n", r"model\.providers=\[\] must name at least one"),
    ("[output]\nlog_level = \"loud\"\n", r"output\.log_level='loud' must be one of"),
    ("audio = 3\n", r"\[audio\] must be a table"),
    ("[events\n", r"invalid TOML"),
])
def test_bad_values_give_one_line_naming_the_value(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    assert re.search(expected, message), message


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    path = tmp_path / "bin.toml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_constructing_sections_in_code_is_validated_too():
    with pytest.raises(ConfigError, match=r"events\.off_ratio=0 must be > 0"):
        EventsConfig(off_ratio=0)
    assert EventsConfig(labels=["a"]).labels == ("a",)


def test_password_never_in_repr_or_errors(tmp_path):
    path = write(tmp_path, f'[mqtt]\nusername = "u"\npassword = "{SECRET}"\n')
    config = load_config(path, env={})
    assert config.mqtt.password == SECRET
    for text in (repr(config), str(config), repr(config.mqtt), str(config.mqtt)):
        assert SECRET not in text
    assert "password=<set>" in repr(config.mqtt)
    # a wrongly typed password is named but never shown
    bad = write(tmp_path, "[mqtt]\npassword = 123456789\n", name="bad.toml")
    with pytest.raises(ConfigError) as info:
        load_config(bad, env={})
    assert "123456789" not in str(info.value) and "value hidden" in str(info.value)


def test_world_readable_config_with_password_is_refused(tmp_path):
    path = write(tmp_path, f'[mqtt]\npassword = "{SECRET}"\n', mode=0o644)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert "readable by every user" in message and "chmod 600" in message
    assert SECRET not in message
    # without a password, the same mode is fine
    ok = write(tmp_path, '[mqtt]\nhost = "b"\n', mode=0o644, name="ok.toml")
    assert load_config(ok, env={}).mqtt.host == "b"


def test_password_sources_in_order(tmp_path):
    pw_file = write(tmp_path, "from-file\n", name="pw")
    cred = tmp_path / "creds"
    cred.mkdir()
    (cred / "mqtt_password").write_text("from-credential\n")
    base = MqttConfig(password="inline")
    with_file = MqttConfig(password="inline", password_file=str(pw_file))
    env_all = {"SOUND_DETECTOR_MQTT_PASSWORD": "from-env", "CREDENTIALS_DIRECTORY": str(cred)}
    assert resolve_password(with_file, env_all) == "from-env"
    assert resolve_password(with_file, {"CREDENTIALS_DIRECTORY": str(cred)}) == "from-file"
    assert resolve_password(base, {"CREDENTIALS_DIRECTORY": str(cred)}) == "from-credential"
    assert resolve_password(base, {}) == "inline"
    assert resolve_password(MqttConfig(), {}) is None
    config = config_from_dict({"mqtt": {"username": "u"}}, env={"CREDENTIALS_DIRECTORY": str(cred)})
    assert config.mqtt.password == "from-credential"
    assert "from-credential" not in repr(config)


def test_password_file_problems_are_one_line_without_the_secret(tmp_path):
    loose = write(tmp_path, SECRET + "\n", mode=0o644, name="pw")
    with pytest.raises(ConfigError, match="readable by every user") as info:
        resolve_password(MqttConfig(password_file=str(loose)), {})
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigError, match="cannot read mqtt.password_file"):
        resolve_password(MqttConfig(password_file=str(tmp_path / "missing")), {})
    empty = write(tmp_path, "\n", name="empty")
    with pytest.raises(ConfigError, match="is empty"):
        resolve_password(MqttConfig(password_file=str(empty)), {})


def test_every_field_has_a_docstring_and_the_docs_document_it():
    readme = (REPO / "docs" / "configuration.md").read_text()
    for name, cls in SECTIONS.items():
        for key, default, doc in cfg.field_docs(cls):
            assert doc, f"{name}.{key} has no docstring"
            assert f"`{name}.{key}`" in readme, f"docs/configuration.md lacks {name}.{key}"
    # the docs table is the generated one, row for row (regenerate it with
    # python scripts/sync_docs.py)
    missing = [row for row in cfg.reference_markdown().splitlines() if row not in readme]
    assert not missing, f"docs/configuration.md config table is out of date: {missing[:3]}"


def test_example_config_is_valid_and_complete():
    example = REPO / "detector" / "data" / "config.example.toml"
    config = load_config(example, env={})
    assert config.mqtt.password is None
    text = example.read_text()
    for name, cls in SECTIONS.items():
        assert f"[{name}]" in text
        for key, _, _ in cfg.field_docs(cls):
            assert re.search(rf"^#? ?{key} =", text, re.M), f"example lacks {name}.{key}"


# ---------------------------------------------------------------- property-based
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

_KEYS = {name: [f.name for f in dataclasses.fields(cls)] for name, cls in SECTIONS.items()}
_scalars = st.one_of(
    st.booleans(), st.integers(-10**12, 10**12),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.lists(st.one_of(st.text(max_size=6), st.integers(-5, 5)), max_size=3),
    st.dictionaries(st.text(max_size=6), st.one_of(st.floats(-2, 2), st.text(max_size=4)),
                    max_size=3))
_section = st.sampled_from(list(SECTIONS) + ["bogus"])


@st.composite
def documents(draw):
    doc = {}
    for name in draw(st.lists(_section, max_size=4, unique=True)):
        keys = _KEYS.get(name, []) + ["nonsense_key"]
        table = {}
        for key in draw(st.lists(st.sampled_from(keys), max_size=4, unique=True)):
            table[key] = draw(_scalars)
        doc[name] = table if draw(st.integers(0, 9)) else draw(_scalars)
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_any_document_gives_a_config_or_one_line(doc):
    try:
        config = config_from_dict(doc, env={})
    except ConfigError as exc:
        message = str(exc)
        assert message and "\n" not in message
        assert "Traceback" not in message
    else:
        assert isinstance(config, Config)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_any_file_bytes_give_a_config_or_one_line(tmp_path, data):
    path = tmp_path / "fuzz.toml"
    path.write_bytes(data)
    path.chmod(0o600)
    try:
        load_config(path, env={})
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(path))
