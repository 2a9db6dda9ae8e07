"""The released mn04 network hears the 16 kHz ``mn_logmel`` front end as it hears its own.

The feature-level comparison is in ``test_features_mn.py``; this one asks the
network: its AudioSet logits on the 16 kHz columns against its logits on the
teacher's 32 kHz front end over the same frames (the teacher's frames 2..398
of a 4 s clip are the 16 kHz columns 0..396, see ``TEACHER_SHIFT``).
Measured on 20 real 4 s clips: mean |logit difference| 0.06, top class 19/20
the same; with an ideal upsampler (bands above 8 kHz at the floor) 0.25 and 16/20.
"""

from __future__ import annotations

from pathlib import Path

from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf

from conftest import SHARED_DATA
from detector.audio.features import MN04_FEATURES, MN04_NORMALIZATION, MN04_PARAMS, MnLogMel

pytest.importorskip("tensorflow", reason="needs the [train] extra (TensorFlow)")
pytest.importorskip("scipy", reason="needs scipy (the teacher's resampler)")
pytestmark = [pytest.mark.train, pytest.mark.slow]

WEIGHTS = Path(__file__).resolve().parents[1] / "export" / "data" / "mn04_as.npz"  # shipped
LOGITS = SHARED_DATA / "teacher" / "mn04_logits.npz"
SHIFT, FRAMES = 2, 397  # 1 + (64000 - 512) // 160 columns of a 4 s clip
MEAN_BOUND, TOP1_MIN = 0.12, 18


@pytest.fixture(scope="module")
def network():
    if not LOGITS.is_file():
        pytest.skip(f"shared data (pretrained/, teacher/) not found under {SHARED_DATA}")
    from export.mn04 import build_tagger, load_weights, teacher_logmel

    data = np.load(LOGITS)
    files = data["files"]
    rng = np.random.default_rng(7)
    clips = []
    for i in rng.permutation(len(files)):
        audio, rate = sf.read(SHARED_DATA / files[i], dtype="float32")
        if rate == 16000 and len(audio) == 64000:
            clips.append(audio)
        if len(clips) == 20:
            break
    model = build_tagger(load_weights(WEIGHTS))
    teacher = np.stack([teacher_logmel(a)[SHIFT:SHIFT + FRAMES] for a in clips])[..., None]
    return model, clips, np.asarray(model(teacher, training=False))


def logits_on(network, mn=MN04_PARAMS):
    model, clips, _ = network
    fe = MnLogMel(MN04_FEATURES, mn)
    mean, std = MN04_NORMALIZATION["mean"], MN04_NORMALIZATION["std"]
    x = np.stack([(fe.stream().push(a)[:FRAMES] - mean) / std for a in clips])[..., None]
    return np.asarray(model(x.astype(np.float32), training=False))


def test_network_logits_on_the_16khz_front_end_match_its_own(network):
    reference = network[2]
    ours = logits_on(network)
    diff = np.abs(ours - reference)
    top1 = int((ours.argmax(1) == reference.argmax(1)).sum())
    assert diff.mean() < MEAN_BOUND and top1 >= TOP1_MIN, (diff.mean(), diff.max(), top1)


def test_without_the_upsampler_image_the_network_notices(network):
    reference = network[2]
    ideal = logits_on(network, replace(MN04_PARAMS, upsample_taps=0))
    diff = np.abs(ideal - reference)
    assert diff.mean() > MEAN_BOUND, diff.mean()
