"""Runtime control: validate a ``…/set`` MQTT payload before anything changes.

Everything that arrives from the broker is untrusted. :func:`parse_control`
accepts exactly one form and returns it normalised::

    {"labels": {"siren": {"enabled": false},
                "dog_bark": {"threshold_on": 0.6, "threshold_off": 0.4}}}

Anything else (not UTF-8, not JSON, not an object, an unknown key or label, a
threshold outside [0, 1] (``threshold_on`` must be > 0), ``threshold_off > threshold_on``, a string where a
boolean belongs, more than :data:`MAX_PAYLOAD_BYTES`) raises :class:`ConfigError`
with one line, and the caller changes nothing.
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable

from detector.errors import ConfigError

MAX_PAYLOAD_BYTES = 4096
"""Larger payloads are refused before they are parsed."""
LABEL_KEYS = ("enabled", "threshold_on", "threshold_off")
"""Settings one label accepts."""

_EXAMPLE = '{"labels": {"<label>": {"enabled": true, "threshold_on": 0.6, "threshold_off": 0.4}}}'


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _threshold(label: str, key: str, value: Any) -> float:
    # bool is an int subclass: "threshold_on": true must not become 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"control: labels.{label}.{key}={_short(value)} must be a number "
                          "in [0, 1]")
    try:
        number = float(value)
    except OverflowError:  # a 3000-digit integer is valid JSON but no float
        number = math.inf
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise ConfigError(f"control: labels.{label}.{key}={_short(value)} must be in [0, 1]")
    return number


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def parse_control(payload: bytes | str, labels: Iterable[str]) -> dict:
    """Validate a runtime-control payload against the model's event ``labels``.

    Returns ``{"labels": {label: {"enabled"?: bool, "threshold_on"?: float,
    "threshold_off"?: float}}}``; raises :class:`ConfigError` (one line) otherwise.
    A payload that names both thresholds must have ``threshold_off <= threshold_on``;
    a payload naming only one is checked against the tracker's current value by
    the pipeline (``EventTracker.set_label``).
    """
    known = list(labels)
    if isinstance(payload, str):
        payload = payload.encode("utf-8", "surrogatepass")
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise ConfigError(f"control: payload must be bytes, got {type(payload).__name__}")
    payload = bytes(payload)
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ConfigError(f"control: payload of {len(payload)} bytes exceeds the "
                          f"{MAX_PAYLOAD_BYTES}-byte limit")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("control: payload is not UTF-8 text; send JSON like " + _EXAMPLE) from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"control: payload is not valid JSON ({reason}); send JSON like "
                          + _EXAMPLE) from None
    if not isinstance(data, dict):
        raise ConfigError(f"control: payload must be a JSON object like {_EXAMPLE}, "
                          f"got {type(data).__name__}")
    extra = sorted(set(data) - {"labels"})
    if extra:
        raise ConfigError(f"control: unknown key(s) {extra}; the only top-level key is 'labels'")
    if "labels" not in data:
        raise ConfigError("control: payload lacks 'labels'; send JSON like " + _EXAMPLE)
    requested = data["labels"]
    if not isinstance(requested, dict) or not requested:
        raise ConfigError("control: 'labels' must be a non-empty object mapping label names "
                          "to settings")
    result: dict[str, dict[str, Any]] = {}
    for label, settings in requested.items():
        if label not in known:
            raise ConfigError(f"control: unknown label {_short(label)}; known labels: "
                              f"{', '.join(known) or '(none)'}")
        if not isinstance(settings, dict) or not settings:
            raise ConfigError(f"control: labels.{label} must be a non-empty object with "
                              f"keys from {list(LABEL_KEYS)}")
        extra = sorted(set(settings) - set(LABEL_KEYS))
        if extra:
            raise ConfigError(f"control: labels.{label} has unknown key(s) "
                              f"{[_short(k) for k in extra]}; allowed: {list(LABEL_KEYS)}")
        clean: dict[str, Any] = {}
        if "enabled" in settings:
            if not isinstance(settings["enabled"], bool):
                raise ConfigError(f"control: labels.{label}.enabled="
                                  f"{_short(settings['enabled'])} must be true or false")
            clean["enabled"] = settings["enabled"]
        for key in ("threshold_on", "threshold_off"):
            if key in settings:
                clean[key] = _threshold(label, key, settings[key])
        if clean.get("threshold_on") == 0.0:  # a label that is always on is a mistake
            raise ConfigError(f"control: labels.{label}.threshold_on=0 must be > 0")
        if ("threshold_on" in clean and "threshold_off" in clean
                and clean["threshold_off"] > clean["threshold_on"]):
            raise ConfigError(f"control: labels.{label}.threshold_off={clean['threshold_off']} "
                              f"must be <= threshold_on={clean['threshold_on']}")
        result[label] = clean
    return {"labels": result}
