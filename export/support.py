"""The gate's per-label AudioSet support sets: from the ontology, widened from training data.

A label fires only when one of the AudioSet classes that *support* it ranks among the top
``k`` of all 527 classes over the last few seconds (:mod:`detector.model.gate`). The support set
of a label is

1. the hand-written ontology nodes of :data:`ROOTS` and all their descendants in the
   AudioSet ontology (``pretrained/audioset_ontology.json``), kept where the released
   classifier has the class; and
2. classes *learned* from the training data of a rotation only: frequent among the label's
   own training clips (in the top ``k`` of the pooled evidence in at least
   ``min_share`` of them) and rare among the training negatives (at most ``max_negative``
   of the negative clips), the part of AudioSet's naming that differs from UrbanSound8K's
   (an air conditioner is often "White noise" or "Vehicle" to the network).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ROOTS: dict[str, tuple[str, ...]] = {
    "air_conditioner": ("Air conditioning", "Mechanical fan"),
    "car_horn": ("Vehicle horn, car horn, honking", "Air horn, truck horn", "Car alarm"),
    "children_playing": ("Children playing", "Child speech, kid speaking", "Children shouting",
                         "Child singing"),
    "dog_bark": ("Dog",),
    "drilling": ("Drill", "Power tool"),
    "engine_idling": ("Idling", "Engine"),
    "gun_shot": ("Gunshot, gunfire",),
    "jackhammer": ("Jackhammer",),
    "siren": ("Siren", "Emergency vehicle", "Civil defense siren"),
    "street_music": ("Music",),
    "explosion": ("Explosion",),
}
"""Ontology nodes (display names) that name each label; their descendants count too."""


def load_ontology(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        nodes = json.load(fh)
    if not isinstance(nodes, list) or not all("name" in n and "id" in n for n in nodes):
        raise ValueError(f"{path} is not an AudioSet ontology (a list of nodes with id, name)")
    return nodes


def descendants(nodes: list[dict], names) -> list[str]:
    """``names`` and every node below them, by display name, in a stable order."""
    by_name = {n["name"]: n for n in nodes}
    by_id = {n["id"]: n for n in nodes}
    out: list[str] = []
    stack = [by_name[name] for name in names if name in by_name][::-1]
    missing = [name for name in names if name not in by_name]
    if missing:
        raise ValueError(f"ontology has no node named {missing}")
    while stack:
        node = stack.pop()
        if node["name"] in out:
            continue
        out.append(node["name"])
        stack.extend(by_id[c] for c in reversed(node.get("child_ids", [])) if c in by_id)
    return out


def ontology_support(nodes: list[dict], class_names, roots=ROOTS) -> dict[str, list[int]]:
    """Per label: indices (into ``class_names``) of its roots and their descendants."""
    index = {str(name): i for i, name in enumerate(class_names)}
    return {label: sorted(index[n] for n in descendants(nodes, names) if n in index)
            for label, names in roots.items()}


def learned_support(clip_top: np.ndarray, clip_label: np.ndarray, labels, negative: str,
                    min_share: float = 0.25, max_negative: float = 0.03) -> dict[str, list[int]]:
    """Per label: classes in the top k of at least ``min_share`` of the label's clips and of at
    most ``max_negative`` of the ``negative`` clips.

    ``clip_top`` is ``[clips, 527]`` bool (a class was in the top k of the clip's pooled
    evidence at some point), ``clip_label`` the clips' labels (strings)."""
    clip_label = np.asarray(clip_label)
    neg = clip_top[clip_label == negative]
    neg_share = neg.mean(axis=0) if len(neg) else np.zeros(clip_top.shape[1])
    out = {}
    for label in labels:
        own = clip_top[clip_label == label]
        if not len(own):
            out[label] = []
            continue
        share = own.mean(axis=0)
        out[label] = sorted(np.flatnonzero((share >= min_share) & (neg_share <= max_negative))
                            .tolist())
    return out

