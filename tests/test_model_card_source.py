"""The shipped model card says exactly what its data file and the model say (one source)."""

from __future__ import annotations

import json

import pytest

from conftest import REPO

DATA = REPO / "bench" / "results" / "model_card.json"
CARD = REPO / "detector" / "models" / "MODEL_CARD.md"
MODEL = REPO / "detector" / "models" / "default.onnx"


def test_the_shipped_model_card_is_generated_from_its_data_file():
    from export.card import render

    if not DATA.is_file():
        pytest.fail(f"{DATA.relative_to(REPO)} is missing: write it with `python -m export card "
                    "--run RUN --data-out ...`")
    data = json.loads(DATA.read_text())
    expected = render(data, MODEL)
    assert CARD.read_text() == expected, (
        "MODEL_CARD.md differs from what its data file renders: run `python -m export card "
        "--from bench/results/model_card.json --model detector/models/default.onnx "
        "--out detector/models/MODEL_CARD.md`")


def test_the_card_data_is_of_the_shipped_model():
    from detector.model.classifier import Classifier

    data = json.loads(DATA.read_text())
    version = Classifier(MODEL).metadata.model_version
    # the data file was written by the run that trained this version
    assert f"--model-version {version}" in data["command"], (version, data["command"])
    assert sorted(data["rotations"]) == ["0", "1", "2", "3"]
