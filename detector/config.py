"""Settings written once: frozen dataclasses loaded from one TOML file.

Every section is a frozen dataclass whose defaults are the only defaults in the
program (argparse never repeats them). :func:`load_config` reads TOML with
:mod:`tomllib`, rejects unknown sections and keys (naming them and the closest
known key), checks types and bounds naming the offending value, and resolves
the MQTT password from the environment / a file / a systemd credential without
ever putting it in a ``repr``, a log line or an error message.

Each field carries a one-line docstring (the string literal under it);
:func:`field_docs` reads them so the README table and ``--help`` cannot drift
from the code.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import math
import os
import socket
import stat
import sys
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from detector.errors import ConfigError
from detector.private import refuse_writable_by_others

MAX_CONFIG_BYTES = 1 << 20
"""A config file is refused beyond this size (1 MB; the example is ~5 kB)."""
PASSWORD_ENV = "SOUND_DETECTOR_MQTT_PASSWORD"
"""Environment variable that may hold the MQTT password."""
CREDENTIAL_NAME = "mqtt_password"
"""File name of the systemd credential (``LoadCredential=mqtt_password:...``)."""


def _bounded(default: Any, *, ge: float | None = None, gt: float | None = None,
             le: float | None = None, lt: float | None = None, secret: bool = False,
             choices: tuple | None = None) -> Any:
    """A dataclass field with bounds checked by :class:`_Section`."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "secret": secret, "choices": choices}
    if isinstance(default, (dict, list)):
        kind = type(default)
        return field(default_factory=lambda: kind(default), metadata=meta, repr=not secret)
    return field(default=default, metadata=meta, repr=not secret)


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(hint)
                           if arg is not type(None))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    if origin is dict:
        key, value = typing.get_args(hint)
        return f"a table of {_type_name(key)} -> {_type_name(value)}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint)))


_MISMATCH = object()


def _coerce(value: Any, hint: Any) -> Any:
    """Return ``value`` converted to ``hint`` (int -> float, list -> tuple) or _MISMATCH."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            out = _coerce(value, arg)
            if out is not _MISMATCH:
                return out
        return _MISMATCH
    if hint is type(None):
        return None if value is None else _MISMATCH
    if hint is bool:
        return value if isinstance(value, bool) else _MISMATCH
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _MISMATCH
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
            return value if math.isfinite(value) else _MISMATCH
        return _MISMATCH
    if hint is str:
        return value if isinstance(value, str) else _MISMATCH
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return _MISMATCH
        item_hint = typing.get_args(hint)[0]
        items = tuple(_coerce(item, item_hint) for item in value)
        return _MISMATCH if any(item is _MISMATCH for item in items) else items
    if origin is dict:
        if not isinstance(value, Mapping):
            return _MISMATCH
        key_hint, value_hint = typing.get_args(hint)
        out = {}
        for key, item in value.items():
            k, v = _coerce(key, key_hint), _coerce(item, value_hint)
            if k is _MISMATCH or v is _MISMATCH:
                return _MISMATCH
            out[k] = v
        return out
    raise TypeError(f"unsupported config type {hint!r}")  # a bug in this module


def _check_bounds(name: str, value: Any, meta: Mapping[str, Any]) -> None:
    shown = "(value hidden)" if meta.get("secret") else repr(value)
    if meta.get("choices") is not None and value is not None and value not in meta["choices"]:
        raise ConfigError(f"{name}={shown} must be one of {list(meta['choices'])}")
    items: list[tuple[str, Any]] = []
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        items = [(name, value)]
    elif isinstance(value, dict):
        items = [(f"{name}.{key}", v) for key, v in value.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
    checks = (("ge", ">=", lambda x, b: x >= b), ("gt", ">", lambda x, b: x > b),
              ("le", "<=", lambda x, b: x <= b), ("lt", "<", lambda x, b: x < b))
    for where, number in items:
        for op, text, ok in checks:
            limit = meta.get(op)
            if limit is not None and not ok(number, limit):
                raise ConfigError(f"{where}={_num(number)} must be {text} {_num(limit)}")


def _num(x: float) -> str:
    """``-1.0`` -> ``-1``, ``0.25`` -> ``0.25`` (numbers as a user wrote them)."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


class _Section:
    """Shared validation: types coerced and bounds checked on construction."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            name = f"{self.section}.{f.name}"
            value = getattr(self, f.name)
            out = _coerce(value, hints[f.name])
            if out is _MISMATCH:
                shown = "(value hidden)" if f.metadata.get("secret") else repr(value)
                raise ConfigError(f"{name}={shown} must be {_type_name(hints[f.name])}")
            object.__setattr__(self, f.name, out)
            _check_bounds(name, out, f.metadata)
        self._check()

    def _check(self) -> None:
        """Cross-field checks of a section (override)."""


def _topic_part(name: str, value: str | None, allow_slash: bool) -> None:
    if value is None:
        return
    bad = [c for c in "+#\0" if c in value] + (["/"] if not allow_slash and "/" in value else [])
    if not value or bad or value.startswith("/") or value.endswith("/"):
        raise ConfigError(f"{name}={value!r} must be a non-empty MQTT topic part without "
                          "'+', '#', NUL or a leading/trailing '/'"
                          + ("" if allow_slash else " or any '/'"))


@dataclass(frozen=True)
class AudioConfig(_Section):
    """[audio]: where samples come from."""

    section: ClassVar[str] = "audio"

    device: str | int | None = None
    """Input device: name substring or PortAudio index; unset = the system default input."""
    sample_rate: int | None = _bounded(None, ge=8000, le=192000)
    """Capture rate in Hz; unset = the model rate if the device supports it, else the device default (resampled)."""
    block_seconds: float = _bounded(0.05, ge=0.005, le=1.0)
    """Audio block length handed from the capture callback to the pipeline, in seconds."""
    latency_seconds: float = _bounded(0.1, ge=0.0, le=2.0)
    """PortAudio input latency in seconds (0.1 avoids lost frames on small devices)."""
    queue_seconds: float = _bounded(10.0, ge=0.5, le=600.0)
    """Audio buffered between capture and processing before blocks are dropped (counted as overflows)."""
    reconnect_max_backoff_seconds: float = _bounded(2.0, ge=0.1, le=300.0)
    """Longest wait between attempts to reopen a lost input device, in seconds."""

    def _check(self) -> None:
        if isinstance(self.device, str) and not self.device.strip():
            raise ConfigError("audio.device='' must be a device name substring or index; "
                              "omit it for the default input")
        if isinstance(self.device, int) and self.device < 0:
            raise ConfigError(f"audio.device={self.device} must be >= 0")


@dataclass(frozen=True)
class ModelConfig(_Section):
    """[model]: the ONNX classifier."""

    section: ClassVar[str] = "model"

    path: str | None = None
    """Path of the .onnx model (relative to the config file); unset = the shipped detector/models/default.onnx."""
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    """onnxruntime execution providers in order of preference (unavailable ones fall back to CPU)."""
    intra_op_threads: int = _bounded(1, ge=0, le=64)
    """onnxruntime intra-op threads (1 keeps latency steady on small CPUs; 0 = onnxruntime default)."""
    window_hop_seconds: float | None = _bounded(None, ge=0.02, le=10.0)
    """Seconds between model windows; unset = the model's metadata (default 0.25)."""
    onset_hop_seconds: float = _bounded(0.05, ge=0.0, le=10.0)
    """Seconds between model windows for onset_seconds after a sound onset (a sudden rise of the level), so a sound is decided on soon after it begins (rounded down to a divisor of the window hop); 0 = no extra windows."""
    onset_seconds: float = _bounded(1.0, ge=0.0, le=10.0)
    """How long after an onset the windows come every onset_hop_seconds."""
    onset_rise_db: float = _bounded(10.0, gt=0.0, le=60.0)
    """An onset: the level of the last 30 ms at least this many dB above the second before (and above events.gate_dbfs)."""
    custom_dir: str | None = None
    """Directory of custom labels made by `sound-detector enroll` (relative to the config file); unset = custom/ in the service's state directory ($STATE_DIRECTORY), if any."""

    def _check(self) -> None:
        if not self.providers:
            raise ConfigError("model.providers=[] must name at least one provider, "
                              "e.g. [\"CPUExecutionProvider\"]")
        if self.path is not None and not self.path.strip():
            raise ConfigError("model.path='' must be a file path; omit it for the shipped model")
        if self.custom_dir is not None and not self.custom_dir.strip():
            raise ConfigError("model.custom_dir='' must be a directory; omit it for the default")


@dataclass(frozen=True)
class EventsConfig(_Section):
    """[events]: how per-window scores become start/end events."""

    section: ClassVar[str] = "events"

    gate_dbfs: float = _bounded(-70.0, ge=-150.0, le=0.0)
    """Energy gate: windows quieter than this (dBFS) count as score 0 for every label."""
    smoothing_windows: int = _bounded(3, ge=1, le=100)
    """Scores are smoothed by the mean of the last N windows (1 = no smoothing)."""
    threshold_on: float = _bounded(0.5, gt=0.0, le=1.0)
    """On-threshold for labels without a calibrated threshold in the model or in events.thresholds."""
    off_ratio: float = _bounded(0.7, gt=0.0, le=1.0)
    """Hysteresis: an event ends when the smoothed score drops below off_ratio x its on-threshold."""
    thresholds: dict[str, float] = _bounded({}, gt=0.0, le=1.0)
    """Per-label on-thresholds, e.g. {siren = 0.6}; override the model's calibrated ones."""
    thresholds_off: dict[str, float] = _bounded({}, ge=0.0, lt=1.0)
    """Per-label off-thresholds (must be <= the label's on-threshold); override off_ratio."""
    min_duration_seconds: float = _bounded(0.0, ge=0.0, le=60.0)
    """A start is confirmed (and published, back-dated to the onset) only after the score stays on this long."""
    cooldown_seconds: float = _bounded(1.0, ge=0.0, le=3600.0)
    """After an end, the same label cannot start again for this many seconds."""
    labels: tuple[str, ...] | None = None
    """Labels that may fire events; unset = every non-background label of the model."""
    audioset_labels: tuple[str, ...] = ()
    """AudioSet classes to detect without training, by their exact names, e.g. ["Smoke detector, smoke alarm", "Glass"]; the event label is the name's slug (smoke_detector_smoke_alarm). `sound-detector labels --search WORD` lists them."""
    audioset_gate: bool = True
    """Publish a label's event only when the model's own AudioSet classes agree (models with a gate; see docs/model.md)."""
    gate_top_k: dict[str, int] = _bounded({}, ge=1, le=527)
    """Per-label override of the gate's rank: a supporting AudioSet class must be in the top k of 527, e.g. {siren = 10}."""
    gate_floor: dict[str, float] = _bounded({}, ge=0.0, le=1.0)
    """Per-label override of the least pooled probability of a supporting AudioSet class."""
    gate_context_seconds: dict[str, float] = _bounded({}, ge=0.5, le=60.0)
    """Per-label override of the seconds of sound the AudioSet evidence is pooled over."""
    gate_max_wait_seconds: dict[str, float] = _bounded({}, ge=0.0, le=60.0)
    """Per-label override of how long a candidate event may wait for AudioSet support before it is dropped."""

    def _check(self) -> None:
        if self.audioset_labels:
            from detector.model.audioset import check_names

            check_names(self.audioset_labels)
        for label, off in self.thresholds_off.items():
            on = self.thresholds.get(label)
            if on is not None and off > on:
                raise ConfigError(f"events.thresholds_off.{label}={off} must be <= "
                                  f"events.thresholds.{label}={on}")


@dataclass(frozen=True)
class MqttConfig(_Section):
    """[mqtt]: publishing events to a broker."""

    section: ClassVar[str] = "mqtt"

    enabled: bool = False
    """Publish events, state and level to an MQTT broker."""
    host: str = "localhost"
    """Broker host name or address."""
    port: int = _bounded(1883, ge=1, le=65535)
    """Broker TCP port (8883 is usual with TLS)."""
    base_topic: str = "sound-detector"
    """First part of every topic: <base_topic>/<node_id>/..."""
    node_id: str | None = None
    """This node's name in topics and events; unset = the host name."""
    client_id: str | None = None
    """MQTT client id; unset = sound-detector-<node_id>."""
    username: str | None = None
    """Broker user name; unset = anonymous."""
    password: str | None = _bounded(None, secret=True)
    """Broker password; prefer password_file, $SOUND_DETECTOR_MQTT_PASSWORD or the systemd credential mqtt_password (never logged)."""
    password_file: str | None = None
    """File holding the broker password (first line; must not be world-readable); relative to the config file."""
    tls: bool = False
    """Connect with TLS (server certificate and host name verified)."""
    ca_file: str | None = None
    """CA bundle (PEM) for the broker certificate (relative to the config file); unset = the system CAs."""
    cert_file: str | None = None
    """Client certificate (PEM) for mutual TLS."""
    key_file: str | None = None
    """Private key (PEM) of the client certificate."""
    tls_insecure: bool = False
    """Skip host name verification (testing only)."""
    keepalive_seconds: int = _bounded(30, ge=5, le=3600)
    """MQTT keepalive interval in seconds."""
    queue_max_events: int = _bounded(10000, ge=1, le=10_000_000)
    """Events kept while the broker is unreachable; the oldest are dropped beyond this (counted as lost)."""
    queue_path: str | None = None
    """SQLite file for the outgoing queue so events survive a restart (relative to the config file); unset = in memory."""
    level_interval_seconds: float = _bounded(10.0, ge=0.5, le=3600.0)
    """Seconds between sound-level messages (0.5..3600)."""
    homeassistant_discovery: bool = True
    """Publish Home Assistant MQTT discovery (binary_sensor + event per label, level sensor)."""
    discovery_prefix: str = "homeassistant"
    """Home Assistant discovery prefix."""
    debug_scores: bool = False
    """Publish the top scores of every window on <prefix>/scores (tuning only)."""

    def _check(self) -> None:
        if not self.host.strip():
            raise ConfigError("mqtt.host='' must be a broker host name or address")
        _topic_part("mqtt.base_topic", self.base_topic, allow_slash=True)
        _topic_part("mqtt.node_id", self.node_id, allow_slash=False)
        _topic_part("mqtt.discovery_prefix", self.discovery_prefix, allow_slash=True)
        if self.key_file and not self.cert_file:
            raise ConfigError("mqtt.key_file is set without mqtt.cert_file; "
                              "set both for a client certificate")
        if (self.ca_file or self.cert_file) and not self.tls:
            raise ConfigError("mqtt.ca_file/cert_file are set but mqtt.tls=false; "
                              "set tls = true")

    def __repr__(self) -> str:  # the dataclass repr already hides password; be explicit
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                          if f.name != "password")
        secret = "set" if self.password else "unset"
        return f"MqttConfig({shown}, password=<{secret}>)"

    @property
    def resolved_node_id(self) -> str:
        """``node_id`` or, when unset, the host name made safe for a topic."""
        return self.node_id or node_from_hostname()


@dataclass(frozen=True)
class ClipsConfig(_Section):
    """[clips]: optional FLAC clips of each event (off by default for privacy)."""

    section: ClassVar[str] = "clips"

    enabled: bool = False
    """Save every event as a FLAC clip (its path is added to the end event as "clip")."""
    directory: str = "clips"
    """Directory for clips; a path set in a config file is relative to that file, the default "clips" to the working (state) directory."""
    pre_roll_seconds: float = _bounded(2.0, ge=0.0, le=60.0)
    """Audio kept before the event start, in seconds."""
    post_roll_seconds: float = _bounded(2.0, ge=0.0, le=60.0)
    """Audio kept after the event end, in seconds."""
    max_count: int = _bounded(500, ge=1, le=1_000_000)
    """Oldest clips are deleted beyond this many."""
    max_age_days: float = _bounded(30.0, gt=0.0, le=36500.0)
    """Clips older than this are deleted."""
    max_total_mb: float = _bounded(500.0, gt=0.0, le=1_000_000.0)
    """Oldest clips are deleted when the directory holds more than this many megabytes."""


@dataclass(frozen=True)
class MetricsConfig(_Section):
    """[metrics]: Prometheus exposition on a local port."""

    section: ClassVar[str] = "metrics"

    enabled: bool = False
    """Serve Prometheus metrics over HTTP."""
    host: str = "127.0.0.1"
    """Address to listen on (keep it local unless a firewall protects it)."""
    port: int = _bounded(9808, ge=0, le=65535)
    """TCP port of the metrics endpoint (0 = any free port, for tests)."""


@dataclass(frozen=True)
class OutputConfig(_Section):
    """[output]: terminal output and logging."""

    section: ClassVar[str] = "output"

    stdout_json: bool = True
    """Print one JSON line per start/end event on stdout (replay always does)."""
    log_level: str = _bounded("info", choices=("debug", "info", "warning", "error"))
    """Log level on stderr: debug, info, warning or error (--debug forces debug)."""


SECTIONS: dict[str, type] = {
    "audio": AudioConfig, "model": ModelConfig, "events": EventsConfig,
    "mqtt": MqttConfig, "clips": ClipsConfig, "metrics": MetricsConfig,
    "output": OutputConfig,
}


@dataclass(frozen=True)
class Config:
    """The whole configuration, one attribute per TOML section."""

    audio: AudioConfig = field(default_factory=AudioConfig)
    """[audio] section."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """[model] section."""
    events: EventsConfig = field(default_factory=EventsConfig)
    """[events] section."""
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    """[mqtt] section."""
    clips: ClipsConfig = field(default_factory=ClipsConfig)
    """[clips] section."""
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """[metrics] section."""
    output: OutputConfig = field(default_factory=OutputConfig)
    """[output] section."""
    source: str | None = None
    """Path the configuration was read from (None = built-in defaults)."""


def node_from_hostname() -> str:
    """Host name reduced to characters that are safe in an MQTT topic."""
    name = socket.gethostname().split(".")[0] or "sound-detector"
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def _unknown(what: str, name: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError(f"unknown {what}; {hint}known: {', '.join(known)}")


def _world_readable(path: Path) -> bool:
    return bool(path.stat().st_mode & stat.S_IROTH)


def _read_secret_file(path: Path, what: str) -> str:
    try:
        if _world_readable(path):
            raise ConfigError(f"{what} {path} is readable by every user; "
                              f"run `chmod 600 {path}`")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text") from None
    secret = text.splitlines()[0] if text.strip() else ""
    if not secret:
        raise ConfigError(f"{what} {path} is empty")
    return secret


def resolve_password(mqtt: MqttConfig, env: Mapping[str, str] | None = None) -> str | None:
    """The MQTT password, in order: ``$SOUND_DETECTOR_MQTT_PASSWORD``, ``password_file``,
    ``$CREDENTIALS_DIRECTORY/mqtt_password`` (systemd ``LoadCredential=``), ``password``."""
    env = os.environ if env is None else env
    if env.get(PASSWORD_ENV):
        return env[PASSWORD_ENV]
    if mqtt.password_file:
        return _read_secret_file(Path(mqtt.password_file), "mqtt.password_file")
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / CREDENTIAL_NAME).is_file():
        # systemd makes credentials readable by the service only; no mode check needed.
        try:
            text = (Path(cred_dir) / CREDENTIAL_NAME).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            raise ConfigError(f"cannot read the systemd credential {CREDENTIAL_NAME} "
                              f"in $CREDENTIALS_DIRECTORY") from None
        if text.strip():
            return text.splitlines()[0]
    return mqtt.password


def _build_section(name: str, table: Any) -> Any:
    cls = SECTIONS[name]
    if not isinstance(table, Mapping):
        raise ConfigError(f"[{name}] must be a table (a [{name}] header with key = value lines)")
    known = [f.name for f in fields(cls)]
    for key in table:
        if key not in known:
            raise _unknown(f"key {key!r} in [{name}]", str(key), known)
    return cls(**table)


def config_from_dict(data: Mapping[str, Any], source: str | None = None,
                     env: Mapping[str, str] | None = None) -> Config:
    """Validate a parsed TOML document into a :class:`Config` (password resolved)."""
    sections: dict[str, Any] = {}
    for name, table in data.items():
        if name not in SECTIONS:
            raise _unknown(f"section [{name}]", str(name), list(SECTIONS))
        sections[name] = _build_section(name, table)
    config = Config(**sections, source=source)
    password = resolve_password(config.mqtt, env)
    if password != config.mqtt.password:
        config = Config(**{**{n: getattr(config, n) for n in SECTIONS},
                           "mqtt": _replace(config.mqtt, password=password)}, source=source)
    return config


def _replace(section: Any, **changes: Any) -> Any:
    values = {f.name: getattr(section, f.name) for f in fields(section)}
    values.update(changes)
    return type(section)(**values)


EXAMPLE_CONFIG = Path(__file__).resolve().parent / "data" / "config.example.toml"
"""The commented example config shipped in the package (``sound-detector config``)."""


def example_config_text() -> str:
    """Text of the commented example config (every key with its default)."""
    try:
        return EXAMPLE_CONFIG.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"the example config {EXAMPLE_CONFIG} is missing from the "
                          f"installation ({exc.strerror or exc}); reinstall the package") from None


def load_config(path: str | os.PathLike | None = None,
                env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML config; ``None`` = built-in defaults.

    Every problem raises :class:`ConfigError` with one line that starts with the
    file name. A file that sets ``mqtt.password`` and is readable by every user
    is refused.
    """
    if path is None:
        return config_from_dict({}, None, env)
    path = Path(path)
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError
        if not stat.S_ISREG(info.st_mode):  # a FIFO would block, /dev/zero never end
            raise ConfigError(f"config file {path} is not a regular file (a FIFO or device?); "
                              "pass the .toml file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path} is {info.st_size} bytes; a config is at "
                              f"most {MAX_CONFIG_BYTES // 1024} kB")
        refuse_writable_by_others(path, "config file", ConfigError)
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; create it with "
                          f"`sound-detector config > {path}` (a commented example) "
                          "and edit it") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; pass the .toml file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; is it a TOML file?") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid TOML: nested too deeply") from None
    data = _paths_from(data, path.resolve().parent)
    mqtt = data.get("mqtt")
    if isinstance(mqtt, Mapping) and mqtt.get("password") and _world_readable(path):
        raise ConfigError(
            f"{path} contains mqtt.password and is readable by every user; run "
            f"`chmod 600 {path}` (or use mqtt.password_file / ${PASSWORD_ENV})")
    try:
        return config_from_dict(data, str(path), env)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


PATH_KEYS: dict[str, tuple[str, ...]] = {
    "mqtt": ("password_file", "queue_path", "ca_file", "cert_file", "key_file"),
    "clips": ("directory",),
}
"""File and folder keys that a config file names relative to itself (``model.path`` and
``model.custom_dir`` are resolved the same way where they are used)."""


def _paths_from(data: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """``data`` with the relative paths of :data:`PATH_KEYS` it sets made absolute from
    ``base`` (the config file's folder), never from the working directory."""
    out = dict(data)
    for section, keys in PATH_KEYS.items():
        table = out.get(section)
        if not isinstance(table, Mapping):
            continue
        table = dict(table)
        for key in keys:
            value = table.get(key)
            if isinstance(value, str) and value.strip():
                expanded = Path(value).expanduser()
                if not expanded.is_absolute():
                    table[key] = str(base / expanded)
        out[section] = table
    return out


def field_docs(cls: type) -> list[tuple[str, str, str]]:
    """``(name, default, doc)`` for every field of a section, docs read from the source."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)):
            docs[node.target.id] = str(after.value.value).strip()
    out = []
    instance = cls()
    for f in fields(cls):
        default = getattr(instance, f.name)
        out.append((f.name, _toml_value(default), docs.get(f.name, "")))
    return out


def _toml_value(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def reference_markdown() -> str:
    """Markdown table of every config key, its default and meaning (for the README)."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for name, cls in SECTIONS.items():
        for key, default, doc in field_docs(cls):
            lines.append(f"| `{name}.{key}` | `{default}` | {doc.replace('|', '/')} |")
    return "\n".join(lines)
