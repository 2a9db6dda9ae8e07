"""The model-file contract between the exporter and the daemon.

An ``.onnx`` model is self-describing: its ``metadata_props`` hold JSON values
under the keys in :data:`REQUIRED_KEYS` (and optionally :data:`OPTIONAL_KEYS`).
``export/`` writes them with :meth:`ModelMetadata.to_props`; the daemon reads
them with :meth:`ModelMetadata.from_props` and refuses a model without them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ConfigError, ModelError
from .features import FEATURE_KINDS, FeatureParams, MnParams

REQUIRED_KEYS = (
    "labels", "sample_rate", "n_fft", "hop_length", "win_length", "n_mels",
    "fmin", "fmax", "window_seconds", "feature", "normalization",
    "model_version", "trained_on", "license_note",
)
OPTIONAL_KEYS = ("input_layout", "thresholds", "background_labels", "window_hop_seconds",
                 "feature_params", "embedding_output", "embedding_dim")
SUPPORTED_FEATURES = FEATURE_KINDS
SUPPORTED_LAYOUTS = ("NTMC",)  # [batch, frames, n_mels, 1]


@dataclass(frozen=True)
class ModelMetadata:
    """Everything the daemon needs to know about a model, read from the file itself."""

    labels: tuple[str, ...]
    """Class names in output order."""
    features: FeatureParams
    """Log-mel front end the model was trained on."""
    window_seconds: float
    """Length of one model window in seconds."""
    model_version: str
    """Free-form version string, published with every event."""
    trained_on: str
    """Dataset and folds used for training."""
    license_note: str
    """License of the training data / model."""
    feature: str = "logmel_db"
    """Front end kind (:data:`SUPPORTED_FEATURES`): ``logmel_db`` (slaney mel, dB) or
    ``mn_logmel`` (the EfficientAT front end's equivalent, see ``feature_params``)."""
    feature_params: MnParams | None = None
    """Parameters of the ``mn_logmel`` front end (metadata key ``feature_params``, a
    JSON object with every :class:`~detector.features.MnParams` field); None for
    ``logmel_db``, whose parameters are the top-level keys alone."""
    normalization: Mapping[str, float] | None = None
    """``{"mean": m, "std": s}`` applied as ``(x - m) / s`` before the model, or None."""
    input_layout: str = "NTMC"
    """Input tensor layout: ``NTMC`` = ``[batch, frames, n_mels, 1]``."""
    thresholds: Mapping[str, float] = field(default_factory=dict)
    """Calibrated per-class on-thresholds (defaults for the event tracker)."""
    background_labels: tuple[str, ...] = ()
    """Outputs that model "nothing of interest" and never produce events."""
    window_hop_seconds: float = 0.25
    """Suggested hop between model windows in seconds."""
    embedding_output: str | None = None
    """Name of a float32 ``[batch, embedding_dim]`` output holding the window's embedding
    (what custom labels learn on), or None when the model has none."""
    embedding_dim: int | None = None
    """Width of the embedding output (required with ``embedding_output``)."""

    def __post_init__(self) -> None:
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ModelError(f"model labels {list(self.labels)!r} must be non-empty and unique")
        if self.feature not in SUPPORTED_FEATURES:
            raise ModelError(f"model feature {self.feature!r} is not supported "
                             f"(expected one of {SUPPORTED_FEATURES})")
        if self.feature == "mn_logmel":
            if self.feature_params is None:
                raise ModelError("model metadata feature_params is required for feature "
                                 "'mn_logmel'")
            try:
                self.feature_params.check_against(self.features)
            except ConfigError as exc:
                raise ModelError(f"model metadata is inconsistent: {exc}") from None
        elif self.feature_params is not None:
            raise ModelError(f"model metadata feature_params is only defined for feature "
                             f"'mn_logmel', not {self.feature!r}")
        if self.input_layout not in SUPPORTED_LAYOUTS:
            raise ModelError(f"model input_layout {self.input_layout!r} is not supported "
                             f"(expected one of {SUPPORTED_LAYOUTS})")
        if not 0.05 <= self.window_seconds <= 30:
            raise ModelError(f"model window_seconds={self.window_seconds} must be in 0.05..30")
        if self.frames < 1:
            raise ModelError(f"model window_seconds={self.window_seconds} is shorter than "
                             f"one FFT frame (n_fft={self.features.n_fft})")
        if self.normalization is not None:
            try:
                std = float(self.normalization["std"])
                float(self.normalization["mean"])
            except (KeyError, TypeError, ValueError):
                raise ModelError("model normalization must be null or "
                                 '{"mean": <number>, "std": <number>}') from None
            if not std > 0:
                raise ModelError(f"model normalization std={std} must be > 0")
        unknown = set(self.thresholds) - set(self.labels)
        if unknown:
            raise ModelError(f"model thresholds name unknown labels {sorted(unknown)}")
        unknown = set(self.background_labels) - set(self.labels)
        if unknown:
            raise ModelError(f"model background_labels name unknown labels {sorted(unknown)}")
        if (self.embedding_output is None) != (self.embedding_dim is None):
            raise ModelError("model metadata embedding_output and embedding_dim must be "
                             "given together (or neither)")
        if self.embedding_output is not None:
            if not isinstance(self.embedding_output, str) or not self.embedding_output:
                raise ModelError(f"model embedding_output={self.embedding_output!r} must be "
                                 "the name of an output")
            if (isinstance(self.embedding_dim, bool) or not isinstance(self.embedding_dim, int)
                    or not 1 <= self.embedding_dim <= 65536):
                raise ModelError(f"model embedding_dim={self.embedding_dim!r} must be an "
                                 "integer in 1..65536")

    @property
    def window_samples(self) -> int:
        return int(round(self.window_seconds * self.features.sample_rate))

    @property
    def frames(self) -> int:
        """Log-mel columns in one model window."""
        return self.features.frames_for(self.window_samples)

    @property
    def event_labels(self) -> tuple[str, ...]:
        """Labels that can produce events (all but the background outputs)."""
        return tuple(label for label in self.labels if label not in self.background_labels)

    def to_props(self) -> dict[str, str]:
        """``metadata_props`` for the ONNX file: every value JSON-encoded."""
        values: dict[str, Any] = {
            "labels": list(self.labels),
            **self.features.as_dict(),
            "window_seconds": self.window_seconds,
            "feature": self.feature,
            "normalization": dict(self.normalization) if self.normalization else None,
            "model_version": self.model_version,
            "trained_on": self.trained_on,
            "license_note": self.license_note,
            "input_layout": self.input_layout,
            "thresholds": dict(self.thresholds),
            "background_labels": list(self.background_labels),
            "window_hop_seconds": self.window_hop_seconds,
        }
        if self.feature_params is not None:
            values["feature_params"] = self.feature_params.as_dict()
        if self.embedding_output is not None:
            values["embedding_output"] = self.embedding_output
            values["embedding_dim"] = self.embedding_dim
        return {key: json.dumps(value) for key, value in values.items()}

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> "ModelMetadata":
        """Parse ``metadata_props``; raise :class:`ModelError` naming what is wrong."""
        missing = [key for key in REQUIRED_KEYS if key not in props]
        if missing:
            raise ModelError(f"{source} lacks metadata {missing}; export it with "
                             "`python -m export export` (see README, 'Model file')")
        values: dict[str, Any] = {}
        for key in (*REQUIRED_KEYS, *OPTIONAL_KEYS):
            if key in props:
                try:
                    values[key] = json.loads(props[key])
                except (TypeError, ValueError):
                    raise ModelError(f"{source} metadata {key}={props[key]!r} "
                                     "is not valid JSON") from None
        try:
            features = FeatureParams(
                sample_rate=int(values["sample_rate"]), n_fft=int(values["n_fft"]),
                hop_length=int(values["hop_length"]), win_length=int(values["win_length"]),
                n_mels=int(values["n_mels"]), fmin=float(values["fmin"]),
                fmax=float(values["fmax"]))
            optional = {key: values[key] for key in OPTIONAL_KEYS if key in values}
            if "background_labels" in optional:
                optional["background_labels"] = tuple(optional["background_labels"])
            if optional.get("thresholds") is None:
                optional.pop("thresholds", None)
            if optional.get("feature_params") is None:
                optional.pop("feature_params", None)
            elif values["feature"] == "mn_logmel":
                optional["feature_params"] = MnParams.from_dict(optional["feature_params"])
            dim = optional.get("embedding_dim")
            if isinstance(dim, float) and dim.is_integer():
                optional["embedding_dim"] = int(dim)
            return cls(labels=tuple(str(x) for x in values["labels"]), features=features,
                       window_seconds=float(values["window_seconds"]),
                       feature=str(values["feature"]),
                       normalization=values["normalization"],
                       model_version=str(values["model_version"]),
                       trained_on=str(values["trained_on"]),
                       license_note=str(values["license_note"]), **optional)
        except ConfigError as exc:
            raise ModelError(f"{source} metadata is inconsistent: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{source} metadata has a value of the wrong type: {exc}") from None
