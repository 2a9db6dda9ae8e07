"""The shipped recipe (``python -m export train``): data layout, stream-like windows, and a
tiny REAL run (pretrained trunk -> cache -> head -> tf2onnx with parity -> the daemon fires
an event), on the shared layout plus a folder-per-class folder of a new label."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO

SR = 16000


def sweep(seconds, rng, lo=600.0, hi=1400.0, period=0.5):
    t = np.arange(int(seconds * SR)) / SR
    f = lo + (hi - lo) * (0.5 + 0.5 * np.sin(2 * np.pi * t / period + rng.uniform(0, 6)))
    return (0.3 * np.sin(2 * np.pi * np.cumsum(f) / SR)).astype(np.float32)


def horn(seconds, rng):
    t = np.arange(int(seconds * SR)) / SR
    f0 = rng.uniform(380, 460)
    x = sum(np.sign(np.sin(2 * np.pi * f0 * k * t)) / k for k in (1, 1.25))
    return (0.1 * x).astype(np.float32)


def pink(seconds, rng, level=0.05):
    x = np.fft.irfft(np.fft.rfft(rng.standard_normal(int(seconds * SR)))
                     / np.sqrt(np.arange(int(seconds * SR) // 2 + 1) + 1.0), int(seconds * SR))
    return (level * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def make_data(root, rng, per_class=6):
    """The shared data layout in miniature: UrbanSound8K (siren, car_horn), SESA, negatives."""
    us = root / "urbansound8k"
    (us / "metadata").mkdir(parents=True)
    lines = ["slice_file_name,fsID,start,end,salience,fold,classID,class_name"]
    for class_id, name, make in ((8, "siren", sweep), (1, "car_horn", horn)):
        for k in range(per_class):
            fold = 1 + k % 3
            fs_id = 1000 * class_id + k
            file = f"{fs_id}-{class_id}-0-0.wav"
            seconds = rng.uniform(1.5, 3.0)
            folder = us / "audio" / f"fold{fold}"
            folder.mkdir(parents=True, exist_ok=True)
            sf.write(folder / file.replace(".wav", ".flac"), make(seconds, rng), SR)
            lines.append(f"{file},{fs_id},0,{seconds:.3f},1,{fold},{class_id},{name}")
    (us / "metadata" / "UrbanSound8K.csv").write_text("\n".join(lines) + "\n")
    for folder in ("casual", "gunshot", "siren", "explosion"):
        (root / "sesa" / folder).mkdir(parents=True)
    for k in range(4):
        sf.write(root / "sesa" / "casual" / f"casual_{k:03d}.flac", pink(2.0, rng), SR)
    dcase = root / "negatives" / "dcase2016_office"
    dcase.mkdir(parents=True)
    for k, kind in enumerate(("speech", "knock", "keys", "cough")):
        sf.write(dcase / f"dev_1_ebr_0_nec_1_poly_0_{kind}_{k:02d}.flac",
                 pink(1.5, rng, 0.1), SR)
    esc = root / "negatives" / "esc50"
    esc.mkdir(parents=True)
    (esc / "esc50.csv").write_text("filename,fold,category,src_file,take\n"
                                   "4-1-A-1.flac,4,rain,1,A\n4-2-A-1.flac,4,hen,2,A\n")
    for name in ("4-1-A-1.flac", "4-2-A-1.flac"):
        sf.write(esc / name, pink(2.0, rng, 0.2), SR)


def test_collect_tags_groups_and_kinds(tmp_path):
    from export.pretrained import BACKGROUND, collect

    make_data(tmp_path, np.random.default_rng(0))
    samples = collect(tmp_path)
    assert {s.label for s in samples} == {"siren", "car_horn", BACKGROUND}
    kinds = {s.kind for s in samples if s.label == BACKGROUND}
    assert kinds == {"sesa:casual", "dcase:speech", "dcase:knock", "dcase:keys", "dcase:cough",
                     "esc50:rain", "esc50:hen"}
    # a kind is held out whole: every clip of it is in one rotation group
    for kind in kinds:
        assert len({s.group for s in samples if s.kind == kind}) == 1
    # fold 1 is rotation 0, folds 2 and 3 rotations 1 and 2
    assert {s.group for s in samples if s.kind.startswith("us8k:")} == {0, 1, 2}
    assert len(collect(tmp_path, limit=1)) == 2 + len(kinds)


def test_own_folders_give_their_labels_after_the_shipped_ones(tmp_path):
    from export.pretrained import BACKGROUND, collect, labels_of

    for label in ("doorbell", "background", "siren"):
        (tmp_path / "mine" / label).mkdir(parents=True)
        sf.write(tmp_path / "mine" / label / "a.wav", np.zeros(SR, np.float32), SR)
    samples = collect(None, folders=[tmp_path / "mine"])
    assert {(s.label, s.kind) for s in samples} == {
        ("doorbell", "folder:doorbell"), (BACKGROUND, "folder:background"),
        ("siren", "folder:siren")}
    assert labels_of(samples) == ("siren", "doorbell")


def test_windows_label_the_sound_not_the_quiet():
    from export.pretrained import BACKGROUND, LABELS, clip_windows, model_frontend

    rng = np.random.default_rng(1)
    audio = np.concatenate([sweep(0.5, rng), np.zeros(int(2.5 * SR), np.float32)])
    logmel, labels, onset = clip_windows(audio, True, model_frontend(), rng,
                                         LABELS.index("siren"), onset_offsets=())
    assert logmel.shape[1:] == (97, 128)
    siren, bg = LABELS.index("siren"), LABELS.index(BACKGROUND)
    # 0.75 s of room noise, the sweep (0.5 s), 2.5 s of silence, 0.5 s room noise; hop 0.25 s
    assert labels[0] == siren                  # the first window holds the whole sweep
    assert -1 in labels                        # silence inside the clip: masked, never background
    assert labels[-1] in (-1, bg)
    assert not onset.any()
    quiet, _, _ = clip_windows(np.zeros(SR, np.float32), False, model_frontend(), rng, bg,
                               onset_offsets=())
    assert quiet.mean() < logmel[0].mean() - 0.2    # room noise sits well below the sound


def test_onset_windows_see_the_first_fraction_of_a_second():
    from export.pretrained import LABELS, PRE_SECONDS, clip_windows, model_frontend

    OFFSETS = (0.05, 0.1, 0.15, 0.2)

    rng = np.random.default_rng(2)
    audio = sweep(2.0, rng)
    fe = model_frontend()
    plain, plain_labels, _ = clip_windows(audio, True, fe, np.random.default_rng(3),
                                          LABELS.index("siren"), onset_offsets=())
    logmel, labels, onset = clip_windows(audio, True, fe, np.random.default_rng(3),
                                         LABELS.index("siren"), onset_offsets=OFFSETS)
    assert onset.sum() == len(OFFSETS) and len(labels) == len(plain_labels) + onset.sum()
    # the regular windows are unchanged and keep their order
    np.testing.assert_array_equal(labels[~onset], plain_labels)
    assert logmel[~onset].shape == plain.shape
    # onset windows sit in time order before the first regular window, the one holding
    # 0.25 s of the clip (extra room noise in front makes room for them)
    idx = np.flatnonzero(onset)
    assert list(idx) == list(range(len(idx)))
    assert PRE_SECONDS + 0.25 == 1.0
    # 0.05 s of sound is masked, from 0.1 s on the window takes the label
    siren = LABELS.index("siren")
    assert [int(x) for x in labels[idx]] == [-1 if d < 0.1 else siren for d in OFFSETS]
    # a background clip's onset windows are background
    _, bg_labels, bg_onset = clip_windows(audio, False, fe, rng, LABELS.index("background"),
                                          onset_offsets=OFFSETS)
    assert set(bg_labels[bg_onset].tolist()) == {LABELS.index("background")}


@pytest.mark.train
@pytest.mark.slow
def test_tiny_real_run_the_daemon_fires_on_its_model(tmp_path):
    pytest.importorskip("tensorflow", reason="needs the [train] extra (TensorFlow)")
    pytest.importorskip("tf2onnx", reason="needs the [train] extra (tf2onnx)")
    rng = np.random.default_rng(3)
    data = tmp_path / "data"
    make_data(data, rng)
    mine = tmp_path / "mine"  # the user's own folder-per-class data: a new label
    for k in range(6):
        (mine / "beep").mkdir(parents=True, exist_ok=True)
        t = np.arange(int(rng.uniform(1.5, 2.5) * SR)) / SR
        sf.write(mine / "beep" / f"beep{k}.wav",
                 (0.3 * np.sin(2 * np.pi * 3000 * t) * (np.sin(2 * np.pi * 4 * t) > 0))
                 .astype(np.float32), SR)
    run, model = tmp_path / "run", tmp_path / "model.onnx"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "export", "train", "--data", str(data), "--folder", str(mine),
           "--run", str(run),  # the shipped weights and ontology (export/data/)
           "--workers", "1", "--variants", "2", "--synthetic", "4", "--epochs", "6",
           "--floor", "0.5", "--crossval", "--rotations", "0",
           "--out", str(model), "--model-version", "tiny-1"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final"]["onnx_parity"] < 1e-4
    assert "0" in summary["rotations"] and "stream" in summary["rotations"]["0"]
    # the rotation's held-out clips went through the daemon and some fired their label
    assert summary["rotations"]["0"]["stream"]["labelled"]["recall"] > 0
    assert (run / "rot0" / "stream.png").is_file()
    # the gate was learned and judged on and off
    assert summary["rotations"]["0"]["gate"] and "stream_nogate" in summary["rotations"]["0"]
    # the labels are those of the data: the shared layout's two and the folder's new one
    assert summary["final"]["labels"] == ["car_horn", "siren", "beep", "background"]
    assert set(summary["final"]["gate"]) == {"car_horn", "siren", "beep"}
    onset_off = tmp_path / "onset_off.toml"
    onset_off.write_text("[model]\nonset_hop_seconds = 0\n")
    done = subprocess.run([sys.executable, "-m", "export", "eval", "--model",
                           str(run / "rot0" / "model.onnx"), "--data", str(data),
                           "--folder", str(mine), "--group", "0",
                           "--no-gate", "--model-config", str(onset_off), "--out",
                           str(tmp_path / "se"), "--name", "x"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    judged = json.loads((tmp_path / "se" / "x.json").read_text())
    assert judged["events_config"] == {"audioset_gate": False}
    assert judged["model_config"] == {"onset_hop_seconds": 0}
    assert 0 <= judged["labelled"]["clip_accuracy"] <= 1
    # judged again without training: the stream files are rewritten, summary.json updated
    (run / "rot0" / "stream.json").unlink()
    done = subprocess.run(cmd[:cmd.index("--crossval")] + ["--eval-only", "--rotations", "0"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (run / "rot0" / "stream.json").is_file()
    again = json.loads((run / "summary.json").read_text())["rotations"]["0"]
    assert again["stream"]["labelled"]["recall"] == summary["rotations"]["0"]["stream"][
        "labelled"]["recall"]
    clip = tmp_path / "siren.wav"
    sf.write(clip, np.concatenate([np.zeros(SR, np.float32), sweep(3.0, rng),
                                   np.zeros(SR, np.float32)]), SR)
    replay = subprocess.run([sys.executable, "-m", "detector", "replay", str(clip), "--model",
                             str(model)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert replay.returncode == 0, replay.stderr[-2000:]
    events = [json.loads(line) for line in replay.stdout.splitlines() if line.startswith("{")]
    assert any(e["type"] == "start" and e["label"] == "siren" for e in events), replay.stdout
    assert all(e["model"] == "tiny-1" for e in events)
    card = tmp_path / "MODEL_CARD.md"
    done = subprocess.run([sys.executable, "-m", "export", "card", "--run", str(run), "--model",
                           str(model), "--out", str(card)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    text = card.read_text()
    assert "tiny-1" in text and "| 0 |" in text and "Non-commercial" in text


def test_stream_eval_attributes_events_to_clips_and_gaps(tmp_path):
    from export.pretrained import BACKGROUND, Sample
    from export.stream_eval import attribute, judge

    samples = [Sample(tmp_path / "a.flac", "siren", 0, "us8k:siren"),
               Sample(tmp_path / "b.flac", BACKGROUND, 0, "esc50:hen"),
               Sample(tmp_path / "c.flac", "dog_bark", 0, "us8k:dog_bark")]
    spans = [(5.0, 9.0), (14.0, 19.0), (24.0, 25.0)]
    # (label, onset window position, published position, score)
    events = [("siren", 5.2, 5.6, 0.9),      # own label, published 0.6 s after the onset
              ("dog_bark", 11.5, 11.5, 0.8),  # in the gap after clip a (> 1 s after its end)
              ("dog_bark", 13.9, 15.0, 0.8),  # a false alarm on the everyday clip: its onset
                                              # window ends 0.1 s before the clip, in time
              ("siren", 24.1, 26.5, 0.9)]     # wrong label on clip c, published after its end
    owners = attribute(events, spans)
    assert owners == [0, -1, 1, 2]
    result = judge(samples, spans, events, owners, gap=5.0)
    lab, ev = result["labelled"], result["everyday"]
    assert lab["recall"] == 0.5 and lab["wrong_label"] == 0.5
    assert lab["per_class"]["siren"]["delay_s"]["p50"] == 0.6
    assert ev["fired"] == 1.0 and ev["false_alarms"] == 1
    assert ev["false_alarms_per_hour"] == round(3600 / 5.0, 1)
    assert result["room_noise"]["events"] == 1
