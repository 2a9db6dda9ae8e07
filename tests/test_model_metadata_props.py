"""One validation of the model file for ``validate-config`` and every command that runs
a model: each metadata value type-, range- and consistency-checked.

The property (hypothesis): a real ONNX model whose metadata is mutated in any way
gives, through the real CLI (``main``, in-process), either one error line and exit 2
or a working pipeline (``replay`` exits 0) — never a traceback — and
``validate-config`` agrees with ``replay``: OK exactly when the daemon runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from detector.cli.main import main
from detector.model.metadata import OPTIONAL_KEYS, REQUIRED_KEYS
from onnx_models import make_band_model, write_tone_wav

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("metaprops")
    models = {}
    for name, frames in (("static", None), ("symbolic", "dynamic")):
        path = make_band_model(d / f"{name}.onnx", input_frames=frames)
        models[name] = onnx.load(str(path))
    wav = write_tone_wav(d / "tone.wav", [(0.5, 1.5, 1000.0)], seconds=4.0)  # longer than any window the strategies draw (<= 3 s)
    conf = d / "empty.toml"
    conf.write_text("")
    return d, models, wav, conf


def write_model(models, kind: str, changes: dict, path: Path) -> Path:
    model = onnx.ModelProto()
    model.CopyFrom(models[kind])
    props = {p.key: p.value for p in model.metadata_props}
    for key, text in changes.items():
        if text is None:
            props.pop(key, None)
        else:
            props[key] = text
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    path.write_bytes(model.SerializeToString())
    return path


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(argv))
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return code, out.getvalue(), err.getvalue()


def check_outcome(code: int, out: str, err: str) -> None:
    assert "Traceback" not in err, err
    assert code in (0, 2), (code, err)
    errors = [line for line in err.splitlines() if line.startswith("sound-detector: error:")]
    if code == 2:
        assert len(errors) == 1, err
        assert len(errors[0]) < 600, errors[0]
    else:
        assert not errors, err


KEYS = (*REQUIRED_KEYS, *OPTIONAL_KEYS)
LABELS = ["siren", "dog_bark", "background"]
numbers = st.sampled_from([0, 1, -1, 0.5, 0.05, 0.25, 1.0, 2.0, 30, 31, 1e9, -1e9, 1e-9,
                           16000, 8000, 512, 513, 160, 64, 65, 0.0, 50.0, 7999.9, 400,
                           10 ** 30, 2 ** 64, 3.5]) | st.integers(-10 ** 6, 10 ** 6) \
    | st.floats(allow_nan=False, allow_infinity=False)
scalars = st.none() | st.booleans() | numbers | st.text(max_size=6) \
    | st.sampled_from(LABELS + ["logmel_db", "mn_logmel", "NTMC", "cat", ""])
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(LABELS + ["mean", "std", "cat", "window"]), inner,
                      max_size=3),
    max_leaves=12)
raw_texts = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "", "{",
                             "[1,", '"unterminated', "9" * 400, "[" * 5000 + "]" * 5000,
                             '{"siren": NaN}', '{"siren": 1e999}'])
typed = {
    "thresholds": st.dictionaries(st.sampled_from(LABELS + ["cat"]), numbers | scalars,
                                  max_size=3),
    "labels": st.lists(st.sampled_from(LABELS + ["cat", "", "x" * 300]), max_size=4),
    "background_labels": st.lists(st.sampled_from(LABELS + ["cat"]), max_size=4),
    "normalization": st.none() | st.fixed_dictionaries({"mean": numbers, "std": numbers}),
}


# plausible other values, so that the working-pipeline side is reached often too
valid = {
    "thresholds": st.dictionaries(st.sampled_from(LABELS), st.floats(0.01, 1.0), max_size=3),
    "background_labels": st.sampled_from([[], ["background"], ["dog_bark"]]),
    "window_hop_seconds": st.floats(0.01, 1.0),
    "window_seconds": st.floats(0.2, 3.0),
    "fmin": st.floats(0.0, 500.0),
    "fmax": st.floats(1000.0, 8000.0),
    "hop_length": st.integers(64, 512),
    "win_length": st.integers(64, 512),
    "n_fft": st.sampled_from([256, 512, 1024]),
    "normalization": st.none() | st.fixed_dictionaries({"mean": st.floats(-50, 50),
                                                        "std": st.floats(0.1, 50)}),
    "model_version": st.text(min_size=1, max_size=10),
    "trained_on": st.text(max_size=10),
    "input_layout": st.just("NTMC"),
    "feature": st.just("logmel_db"),
}


@st.composite
def mutations(draw):
    changes = {}
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["delete", "json", "raw", "typed", "valid", "valid"]))
        key = draw(st.sampled_from(sorted(valid) if how == "valid"
                                   else KEYS + ("unknown_key",)))
        if how == "valid":
            changes[key] = json.dumps(draw(valid[key]))
        elif how == "delete":
            changes[key] = None
        elif how == "raw":
            changes[key] = draw(raw_texts)
        elif how == "typed" and key in typed:
            changes[key] = json.dumps(draw(typed[key]))
        else:
            changes[key] = json.dumps(draw(json_values))
    return changes


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["static", "symbolic"]), changes=mutations())
def test_any_metadata_is_one_line_or_a_working_pipeline(base, kind, changes):
    d, models, wav, conf = base
    path = write_model(models, kind, changes, d / "mutated.onnx")
    checked = run("validate-config", str(conf), "--model", str(path))
    check_outcome(*checked)
    replayed = run("replay", str(wav), "--model", str(path))
    check_outcome(*replayed)
    event(f"replay exit {replayed[0]}")
    assert checked[0] == replayed[0], ("validate-config and replay disagree", changes,
                                       checked[2], replayed[2])
    if replayed[0] == 0:
        for line in replayed[1].splitlines():
            json.loads(line)


# the cases that validate-config called OK and the daemon then died on (or ran uselessly)
@pytest.mark.parametrize("key, text, needle", [
    ("thresholds", '"0.5"', "thresholds='0.5' has the wrong type"),
    ("thresholds", "[0.5, 0.5, 0.5]", "thresholds=[0.5, 0.5, 0.5] has the wrong type"),
    ("thresholds", '{"siren": 5.0}', "thresholds.siren=5.0 must be a number in (0, 1]"),
    ("thresholds", '{"siren": NaN}', "thresholds='{\"siren\": NaN}' is not valid JSON"),
    ("thresholds", '{"siren": "high"}', "thresholds.siren='high' must be a number"),
    ("window_hop_seconds", '"0.25"', "window_hop_seconds='0.25' has the wrong type"),
    ("window_hop_seconds", "-1", "window_hop_seconds=-1 must be a number in (0, 30]"),
    ("window_hop_seconds", "1e9", "window_hop_seconds=1000000000.0 must be a number"),
    ("window_hop_seconds", "2.0", "window_hop_seconds=2.0 must be a number in (0, "
                                  "window_seconds=1.0]"),
    ("sample_rate", '"16000"', "sample_rate='16000' has the wrong type"),
    ("n_mels", "64.5", "n_mels=64.5 has the wrong type"),
    ("fmax", "1e999", "fmax=inf must be a number"),
    ("labels", '"siren"', "labels='siren' has the wrong type"),
    ("model_version", "3", "model_version=3 has the wrong type"),
    ("normalization", '{"mean": 0, "std": 0}', "normalization.std=0 must be a number in (0, "),
    ("embedding_dim", "8", "embedding_output and embedding_dim must be given together"),
    ("background_labels", '["siren", "dog_bark", "background"]',
     "every label is a background label"),
])
def test_known_bad_values_are_one_line_naming_the_key(base, key, text, needle):
    d, models, wav, conf = base
    path = write_model(models, "static", {key: text}, d / f"bad-{key}.onnx")
    for argv in (("validate-config", str(conf), "--model", str(path)),
                 ("replay", str(wav), "--model", str(path))):
        code, out, err = run(*argv)
        check_outcome(code, out, err)
        assert code == 2
        line = [l for l in err.splitlines() if l.startswith("sound-detector: error:")][0]
        assert needle in line, line


def test_the_untouched_models_run(base):
    d, models, wav, conf = base
    for kind in models:
        path = write_model(models, kind, {}, d / f"{kind}-copy.onnx")
        assert run("validate-config", str(conf), "--model", str(path))[0] == 0
        code, out, err = run("replay", str(wav), "--model", str(path))
        assert code == 0, err
        assert [json.loads(l)["label"] for l in out.splitlines()] == ["siren", "siren"]


def test_black_box_exit_code(base):
    """The same check as a user meets it: a subprocess, one line, exit 2."""
    d, models, wav, conf = base
    path = write_model(models, "static", {"thresholds": '"0.5"'}, d / "bb.onnx")
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "detector", "validate-config", str(conf),
                             "--model", str(path)], capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "thresholds='0.5' has the wrong type" in result.stderr
