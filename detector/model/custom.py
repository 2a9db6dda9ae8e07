"""Custom labels: small heads on the model's embedding, learned on the device from a few clips.

A model whose metadata names an ``embedding_output`` gives, for every window,
an embedding alongside its scores (one network pass). A *custom head* is a
logistic regression on that embedding: ``score = sigmoid(w . e + b)``, fitted
with numpy alone (``detector.cli.custom_fit.fit_logistic``, Newton's method, deterministic) on the
windows of the user's clips where the sound is (energy-trimmed, see
``positive_windows``) against background embeddings (a set shipped with
the package for the shipped model, plus the user's own recordings). Its
threshold comes from held-out scores (``calibrate``; enrolment lives in :mod:`detector.cli.custom_fit`).

Each head is one ``<label>.npz`` in the custom directory: ``weights`` float32
``[embedding_dim]``, ``bias`` and a JSON ``meta`` (label, model version,
embedding width, threshold, what the enrolment measured). The daemon loads
them all (:func:`load_custom_dir`) and :meth:`detector.model.classifier.Classifier.attach_custom`
appends their scores to the model's, so they are labels like any other. A head
made for another model version (or embedding width) is refused in one line.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from detector.errors import ConfigError, ModelError

if TYPE_CHECKING:  # pragma: no cover
    from detector.config import Config
    from detector.model.metadata import ModelMetadata

logger = logging.getLogger(__name__)

FORMAT = 1
"""Version of the head file layout."""
LABEL_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
"""Custom label names: lower-case letters, digits, ``_`` and ``-`` (safe in MQTT topics)."""
DIR_NAME = "custom"
"""Sub-directory of the state directory that holds custom heads by default."""


# --------------------------------------------------------------------------- heads
def check_label(label: str) -> str:
    if not isinstance(label, str) or not LABEL_RE.match(label):
        raise ConfigError(f"custom label {label!r} must be 1-40 characters of a-z, 0-9, "
                          "'_' or '-', starting with a letter or digit")
    return label


@dataclass(frozen=True)
class CustomHead:
    """One custom label: ``score = sigmoid(weights . embedding + bias)``."""

    label: str
    """The label's name (as it appears in events and topics)."""
    model_version: str
    """``model_version`` of the model whose embedding it was fitted on."""
    weights: np.ndarray
    """float32 ``[embedding_dim]``."""
    bias: float
    """Logit offset."""
    threshold: float
    """Calibrated on-threshold of the event tracker."""
    info: Mapping = field(default_factory=dict)
    """What the enrolment measured (clips, windows, estimates, date)."""

    @property
    def embedding_dim(self) -> int:
        return int(self.weights.shape[0])

    @property
    def gate(self) -> dict | None:
        """The label's AudioSet rule as a model-metadata ``gate`` entry (None: the head
        was enrolled without AudioSet evidence)."""
        rule = self.info.get("gate")
        if not isinstance(rule, Mapping) or not rule.get("support"):
            return None
        return {"support": [int(i) for i in rule["support"]], "top_k": int(rule["top_k"]),
                "floor": float(rule["floor"]), "context_seconds": float(rule["context_seconds"]),
                "max_wait_seconds": float(rule["max_wait_seconds"])}

    def save(self, directory: str | Path) -> Path:
        """Write ``<directory>/<label>.npz`` (atomically) and return its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.label}.npz"
        meta = {"format": FORMAT, "label": self.label, "model_version": self.model_version,
                "embedding_dim": self.embedding_dim, "threshold": float(self.threshold),
                **{k: v for k, v in self.info.items()}}
        tmp = directory / f".{self.label}.npz.tmp"
        with open(tmp, "wb") as out:
            np.savez(out, weights=self.weights.astype(np.float32),
                     bias=np.array(self.bias, dtype=np.float32), meta=np.array(json.dumps(meta)))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "CustomHead":
        """Read a head file; every problem is one :class:`ModelError` line."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                weights = np.asarray(data["weights"], dtype=np.float32)
                bias = float(data["bias"])
                meta = json.loads(str(data["meta"]))
        except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
            raise ModelError(f"custom label file {path} is not a head written by "
                             f"`sound-detector enroll` ({type(exc).__name__}); remove it "
                             "or enroll the label again") from None
        try:
            label = check_label(str(meta["label"]))
            version = str(meta["model_version"])
            threshold = float(meta["threshold"])
            dim = int(meta["embedding_dim"])
        except (KeyError, TypeError, ValueError, ConfigError):
            raise ModelError(f"custom label file {path} has incomplete metadata; enroll "
                             "the label again") from None
        if meta.get("format") != FORMAT:
            raise ModelError(f"custom label file {path} has format {meta.get('format')!r}, "
                             f"this version reads {FORMAT}; enroll the label again")
        if path.stem != label:
            raise ModelError(f"custom label file {path} holds label {label!r}; its file "
                             f"name must be {label}.npz")
        if (weights.ndim != 1 or weights.shape[0] != dim or not np.all(np.isfinite(weights))
                or not math.isfinite(bias) or not 0.0 < threshold <= 1.0):
            raise ModelError(f"custom label file {path} holds invalid weights or threshold; "
                             "enroll the label again")
        info = {k: v for k, v in meta.items()
                if k not in ("format", "label", "model_version", "embedding_dim", "threshold")}
        return cls(label=label, model_version=version, weights=weights, bias=bias,
                   threshold=threshold, info=info)


class CustomHeads:
    """All custom labels of a directory, scored together: ``scores(embedding) -> [K]``."""

    def __init__(self, heads: Sequence[CustomHead] = (), source: str = ""):
        self.heads = list(heads)
        self.source = source
        labels = [h.label for h in self.heads]
        if len(set(labels)) != len(labels):
            raise ModelError(f"custom labels in {source} are not unique: {labels}")
        dims = {h.embedding_dim for h in self.heads}
        if len(dims) > 1:
            raise ModelError(f"custom labels in {source} have different embedding widths "
                             f"{sorted(dims)}; enroll them again with one model")
        dim = dims.pop() if dims else 0
        self._w = (np.vstack([h.weights for h in self.heads]).astype(np.float32)
                   if self.heads else np.zeros((0, dim), dtype=np.float32))
        self._b = np.array([h.bias for h in self.heads], dtype=np.float32)

    def __len__(self) -> int:
        return len(self.heads)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(h.label for h in self.heads)

    @property
    def thresholds(self) -> dict[str, float]:
        return {h.label: h.threshold for h in self.heads}

    @property
    def gates(self) -> dict[str, dict]:
        """``label -> gate rule`` of the heads enrolled with AudioSet evidence."""
        return {h.label: h.gate for h in self.heads if h.gate is not None}

    def check_model(self, meta: "ModelMetadata") -> None:
        """Refuse heads made for another model (version or embedding width) or whose
        label is already one of the model's."""
        for head in self.heads:
            where = f"custom label {head.label!r} ({self.source}/{head.label}.npz)"
            if head.model_version != meta.model_version:
                raise ModelError(f"{where} was enrolled with model {head.model_version}, "
                                 f"this model is {meta.model_version}; enroll it again "
                                 f"(`sound-detector enroll {head.label} ...`) or remove it")
            if head.embedding_dim != meta.embedding_dim:
                raise ModelError(f"{where} expects a {head.embedding_dim}-wide embedding, "
                                 f"model {meta.model_version} gives {meta.embedding_dim}; "
                                 "enroll it again")
            if head.label in meta.labels:
                raise ModelError(f"{where} has the name of one of the model's own labels; "
                                 "remove it and enroll under another name")

    def scores(self, embedding: np.ndarray) -> np.ndarray:
        """float32 scores in [0, 1] for one embedding (a few microseconds)."""
        z = self._w @ embedding + self._b
        return (1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))).astype(np.float32)


SERVICE_STATE_DIRECTORY = Path("/var/lib/sound-detector")
"""The installed service's state directory (``StateDirectory=sound-detector`` in
systemd/sound-detector.service): where the service loads ``custom/`` from."""


def service_custom_dir() -> Path | None:
    """``custom/`` in the installed service's state directory when it exists, else None:
    what the service would load, for commands run from a shell (no $STATE_DIRECTORY)."""
    path = SERVICE_STATE_DIRECTORY / DIR_NAME
    try:
        return path if path.is_dir() else None
    except OSError:  # not readable by this user
        return None


def default_custom_dir(env: Mapping[str, str] | None = None) -> Path | None:
    """``$STATE_DIRECTORY/custom`` under systemd (the service's state directory), else None."""
    env = os.environ if env is None else env
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state) / DIR_NAME if state else None


def resolve_custom_dir(cli_value: str | None, config: "Config | None" = None,
                       env: Mapping[str, str] | None = None) -> tuple[Path | None, bool]:
    """``(directory, explicit)``: ``--custom``, else ``model.custom_dir`` (relative to the
    config file), else the state directory's ``custom/`` (not explicit: may be absent)."""
    if cli_value:
        return Path(cli_value).expanduser(), True
    value = config.model.custom_dir if config is not None else None
    if value:
        path = Path(value).expanduser()
        if not path.is_absolute() and config is not None and config.source:
            path = Path(config.source).resolve().parent / path
        return path, True
    return default_custom_dir(env), False


def head_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.npz") if not p.name.startswith("."))


def load_custom_dir(directory: str | Path, explicit: bool = True) -> CustomHeads:
    """Every head in ``directory``; a missing explicit directory is one error line."""
    directory = Path(directory)
    if not directory.is_dir():
        if explicit and directory.exists():
            raise ConfigError(f"custom label directory {directory} is not a directory")
        if explicit:
            raise ConfigError(f"custom label directory {directory} does not exist; create it "
                              "with `sound-detector enroll LABEL FILE... --custom DIR`")
        return CustomHeads((), str(directory))
    heads = [CustomHead.load(p) for p in head_files(directory)]
    return CustomHeads(heads, str(directory))
