"""Runtime-control payload validation (the MQTT ``…/set`` topic)."""

from __future__ import annotations

import json

import pytest

from detector.publish.control import MAX_PAYLOAD_BYTES, parse_control
from detector.errors import ConfigError

LABELS = ("siren", "dog_bark", "car_horn")


def test_valid_payload_is_normalised():
    payload = json.dumps({"labels": {"siren": {"enabled": False},
                                     "dog_bark": {"threshold_on": 1, "threshold_off": 0.25}}})
    assert parse_control(payload.encode(), LABELS) == {
        "labels": {"siren": {"enabled": False},
                   "dog_bark": {"threshold_on": 1.0, "threshold_off": 0.25}}}
    result = parse_control(payload, LABELS)  # str is accepted as well
    assert isinstance(result["labels"]["dog_bark"]["threshold_on"], float)


def test_single_threshold_is_accepted():
    assert parse_control(b'{"labels": {"car_horn": {"threshold_off": 0.9}}}', LABELS) == {
        "labels": {"car_horn": {"threshold_off": 0.9}}}


@pytest.mark.parametrize("payload, fragment", [
    (b"", "not valid JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[1, 2]", "must be a JSON object"),
    (b'"siren"', "must be a JSON object"),
    (b"{}", "lacks 'labels'"),
    (b'{"labels": {}}', "non-empty object"),
    (b'{"labels": [], "x": 1}', "unknown key"),
    (b'{"labels": {"cat": {"enabled": true}}}', "unknown label 'cat'"),
    (b'{"labels": {"siren": {"enabled": "false"}}}', "must be true or false"),
    (b'{"labels": {"siren": {"enabled": 0}}}', "must be true or false"),
    (b'{"labels": {"siren": {"threshold_on": true}}}', "must be a number"),
    (b'{"labels": {"siren": {"threshold_on": "0.5"}}}', "must be a number"),
    (b'{"labels": {"siren": {"threshold_on": 1.5}}}', "must be in [0, 1]"),
    (b'{"labels": {"siren": {"threshold_off": -0.1}}}', "must be in [0, 1]"),
    (b'{"labels": {"siren": {"threshold_on": 0}}}', "must be > 0"),
    (b'{"labels": {"siren": {"threshold_on": NaN}}}', "not valid JSON"),
    (b'{"labels": {"siren": {"threshold_on": Infinity}}}', "not valid JSON"),
    (b'{"labels": {"siren": {"threshold_on": 1e400}}}', "must be in [0, 1]"),
    (b'{"labels": {"siren": {"threshold_on": 0.3, "threshold_off": 0.5}}}',
     "must be <= threshold_on"),
    (b'{"labels": {"siren": {"volume": 3}}}', "unknown key"),
    (b'{"labels": {"siren": {}}}', "non-empty object"),
    (b'{"labels": {"siren": null}}', "non-empty object"),
    (b"[" * 100000, "exceeds"),
    (b"[" * 3000, "not valid JSON"),
])
def test_bad_payloads_give_one_line(payload, fragment):
    with pytest.raises(ConfigError) as info:
        parse_control(payload, LABELS)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
    assert message.startswith("control: ")


def test_size_limit_is_checked_before_parsing():
    padding = " " * (MAX_PAYLOAD_BYTES + 1)
    with pytest.raises(ConfigError, match="exceeds"):
        parse_control(('{"labels": {"siren": {"enabled": true}}}' + padding).encode(), LABELS)
    # a payload just under the limit is fine
    ok = '{"labels": {"siren": {"enabled": true}}}'
    ok += " " * (MAX_PAYLOAD_BYTES - len(ok))
    assert parse_control(ok.encode(), LABELS) == {"labels": {"siren": {"enabled": True}}}


def test_a_huge_integer_is_one_line_not_an_overflow():
    payload = '{"labels": {"siren": {"threshold_on": ' + "9" * 3000 + "}}}"
    with pytest.raises(ConfigError, match=r"threshold_on=9+\.\.\. must be in \[0, 1\]"):
        parse_control(payload, ["siren"])
