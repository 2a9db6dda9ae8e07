"""What ``run`` would refuse, checked before anything starts, for every command alike.

:func:`check_runtime` is called by ``validate-config``, ``run`` and ``replay`` after
the config is loaded, so the three agree on every config: TLS files that are missing,
not files or not PEM; a ``queue_path`` that is a directory, or whose folder cannot be
written; a clips directory that cannot be written; a metrics address that is not one
of this machine's, or a port already in use. It changes nothing on disk: the sinks
create their files and folders when the daemon starts.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from detector.errors import ConfigError


def _existing_ancestor(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def _writable_dir(key: str, directory: Path, what: str) -> None:
    """``directory`` exists and can be written, or can be created under a writable one."""
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{key}={str(directory)!r} is not a directory; {what}")
    base = _existing_ancestor(directory)
    if not base.is_dir():
        raise ConfigError(f"{key}={str(directory)!r} cannot be created: {str(base)!r} is not "
                          f"a directory; {what}")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={str(directory)!r} is not writable ({str(base)!r} does not "
                          f"let this user write); {what}")


def _check_tls(mqtt) -> None:
    import ssl  # only with TLS on: a plain replay never loads it (startup cost)

    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(mqtt, name)
        if path and not Path(path).is_file():
            raise ConfigError(f"mqtt.{name}={path!r} does not exist or is not a file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if mqtt.ca_file:
            context.load_verify_locations(cafile=mqtt.ca_file)
        if mqtt.cert_file:
            context.load_cert_chain(mqtt.cert_file, mqtt.key_file)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(f"mqtt: TLS setup failed ({type(exc).__name__}: "
                          f"{getattr(exc, 'reason', None) or exc}); check mqtt.ca_file, "
                          "cert_file and key_file") from None


def _check_queue(path_text: str) -> None:
    path = Path(path_text).expanduser()
    fix = "point it at a writable file, e.g. /var/lib/sound-detector/outbox.sqlite"
    if path.is_dir():
        raise ConfigError(f"mqtt.queue_path={str(path)!r} is a directory; {fix}")
    _writable_dir("mqtt.queue_path", path.parent, fix)
    if path.exists():
        try:
            with open(path, "rb") as handle:
                head = handle.read(16)
        except OSError as exc:
            raise ConfigError(f"mqtt.queue_path={str(path)!r} cannot be read "
                              f"({exc.strerror or exc}); {fix}") from None
        if head and head != b"SQLite format 3\0":
            raise ConfigError(f"mqtt.queue_path={str(path)!r} exists and is not an SQLite "
                              f"file; {fix}")


def _check_metrics(metrics) -> None:
    where = f"{metrics.host}:{metrics.port}"
    try:
        infos = socket.getaddrinfo(metrics.host, metrics.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"metrics.host={metrics.host!r} is not an address to listen on "
                          f"({getattr(exc, 'strerror', None) or exc}); e.g. 127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as http.server does
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(f"metrics: cannot listen on {where} ({exc.strerror or exc}); "
                              "choose another metrics.port or disable [metrics]") from None


def check_runtime(config) -> None:
    """Raise :class:`ConfigError` (one line) for anything the daemon would refuse at start."""
    mqtt = config.mqtt
    if mqtt.enabled:
        if mqtt.password and not mqtt.username:
            raise ConfigError("mqtt: a password is set but mqtt.username is not; set both")
        if mqtt.tls:
            _check_tls(mqtt)
        if mqtt.queue_path:
            _check_queue(mqtt.queue_path)
    if config.clips.enabled:
        directory = Path(config.clips.directory).expanduser().resolve()
        _writable_dir("clips.directory", directory,
                      "choose a writable directory or set clips.enabled = false")
    if config.metrics.enabled:
        _check_metrics(config.metrics)
