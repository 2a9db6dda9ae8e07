"""The model-file contract between the exporter and the daemon.

An ``.onnx`` model is self-describing: its ``metadata_props`` hold JSON values
under the keys in :data:`REQUIRED_KEYS` (and optionally :data:`OPTIONAL_KEYS`).
``export/`` writes them with :meth:`ModelMetadata.to_props`; the daemon reads
them with :meth:`ModelMetadata.from_props` and refuses a model without them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from detector.errors import ConfigError, ModelError
from detector.audio.features import FEATURE_KINDS, FeatureParams, MnParams

REQUIRED_KEYS = (
    "labels", "sample_rate", "n_fft", "hop_length", "win_length", "n_mels",
    "fmin", "fmax", "window_seconds", "feature", "normalization",
    "model_version", "trained_on", "license_note",
)
OPTIONAL_KEYS = ("input_layout", "thresholds", "background_labels", "window_hop_seconds",
                 "feature_params", "embedding_output", "embedding_dim",
                 "stream_chunk_frames", "state_inputs", "state_outputs",
                 "audioset_output", "gate")
GATE_KEYS = ("support", "top_k", "floor", "context_seconds", "max_wait_seconds")
"""Keys of one label's entry in the ``gate`` metadata (see :mod:`detector.model.gate`)."""
SUPPORTED_FEATURES = FEATURE_KINDS
SUPPORTED_LAYOUTS = ("NTMC",)  # [batch, frames, n_mels, 1]
AUDIOSET_CLASSES = 527
"""Width of an ``audioset`` output (the released AudioSet classifier)."""
MAX_LABELS = 4096
MAX_LABEL_CHARS = 256
"""A label is a topic part and an entity name: longer ones are refused."""
MAX_WINDOW_VALUES = 1 << 22
"""frames x n_mels of one model window (16 MB of float32) at most."""


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


class _Values:
    """Typed, range-checked access to parsed metadata: each failure is one
    :class:`ModelError` naming the key and its value."""

    def __init__(self, values: Mapping[str, Any], source: str, prefix: str = ""):
        self.values, self.source, self.prefix = values, source, prefix

    def fail(self, key: str, what: str, wrong_type: bool = False) -> ModelError:
        kind = " has the wrong type; it" if wrong_type else ""
        return ModelError(f"{self.source} metadata {self.prefix}{key}="
                          f"{_short(self.values.get(key))}{kind} "
                          f"must be {what}")

    def integer(self, key: str, low: int, high: int) -> int:
        value, what = self.values[key], f"an integer in {low}..{high}"
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or (isinstance(value, float) and not value.is_integer())):
            raise self.fail(key, what, wrong_type=True)
        if not low <= value <= high:
            raise self.fail(key, what)
        return int(value)

    def number(self, key: str, low: float, high: float, low_open: bool = False) -> float:
        value = self.values[key]
        what = f"a number in {'(' if low_open else '['}{low:g}, {high:g}]"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, what, wrong_type=True)
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            raise self.fail(key, what) from None
        if not (math.isfinite(number) and (low < number if low_open else low <= number)
                and number <= high):
            raise self.fail(key, what)
        return number

    def string(self, key: str, max_chars: int, empty: bool = True) -> str:
        value = self.values[key]
        what = f"a{'' if empty else ' non-empty'} string of at most {max_chars} characters"
        if not isinstance(value, str):
            raise self.fail(key, what, wrong_type=True)
        if len(value) > max_chars or (not empty and not value):
            raise self.fail(key, what)
        return value

    def strings(self, key: str, low: int) -> tuple[str, ...]:
        value = self.values[key]
        what = (f"a list of {low}..{MAX_LABELS} non-empty strings of at most "
                f"{MAX_LABEL_CHARS} characters")
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise self.fail(key, what, wrong_type=True)
        if (not low <= len(value) <= MAX_LABELS
                or not all(0 < len(x) <= MAX_LABEL_CHARS for x in value)):
            raise self.fail(key, what)
        return tuple(value)


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
    JSON object with every :class:`~detector.audio.features.MnParams` field); None for
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
    stream_chunk_frames: int | None = None
    """A *streaming* model (:mod:`detector.model.streaming`): its ``features`` input takes only
    the newest ``stream_chunk_frames`` columns, once per hop (the hop is the chunk), and
    the model carries a state from hop to hop. None: a whole-window model."""
    state_inputs: tuple[str, ...] = ()
    """Streaming models: the state inputs, fed zeros at the start of a stream and then
    the matching :attr:`state_outputs` of the previous hop."""
    state_outputs: tuple[str, ...] = ()
    """Streaming models: the state outputs, pairwise with :attr:`state_inputs`."""
    audioset_output: str | None = None
    """Name of a float32 ``[batch, 527]`` output: the released AudioSet classifier's logits
    for the window, in the order of ``detector/data/audioset_classes.json`` (the gate's
    evidence), or None."""
    gate: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """The gate (:mod:`detector.model.gate`) per label: ``{"support": [AudioSet class indices],
    "top_k": k, "floor": p, "context_seconds": C, "max_wait_seconds": W}``; a label
    without an entry is not gated. Needs :attr:`audioset_output`."""

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
        if self.frames * self.features.n_mels > MAX_WINDOW_VALUES:
            raise ModelError(f"model window of {self.frames} frames x {self.features.n_mels} "
                             f"mels exceeds {MAX_WINDOW_VALUES} values (window_seconds="
                             f"{self.window_seconds}, hop_length={self.features.hop_length})")
        unknown = set(self.thresholds) - set(self.labels)
        if unknown:
            raise ModelError(f"model thresholds name unknown labels {sorted(unknown)}")
        for label, value in self.thresholds.items():
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not 0.0 < value <= 1.0):
                raise ModelError(f"model thresholds.{label}={_short(value)} must be a number "
                                 "in (0, 1] (scores are in [0, 1]; above 1 it never fires)")
        unknown = set(self.background_labels) - set(self.labels)
        if unknown:
            raise ModelError(f"model background_labels name unknown labels {sorted(unknown)}")
        if not self.event_labels:
            raise ModelError(f"model {self.model_version}: every label is a background label "
                             f"({', '.join(self.labels)}), so no event can ever fire")
        hop = self.window_hop_seconds
        if (isinstance(hop, bool) or not isinstance(hop, (int, float))
                or not 0.0 < hop <= self.window_seconds):
            raise ModelError(f"model window_hop_seconds={_short(hop)} must be a number in "
                             f"(0, window_seconds={self.window_seconds}]")
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

        self._check_stream()
        self._check_gate()

    def _check_gate(self) -> None:
        if self.gate and self.audioset_output is None:
            raise ModelError("model metadata gate needs audioset_output (the output the "
                             "gate reads)")
        for label, rule in self.gate.items():
            where = f"model metadata gate.{label}"
            if label not in self.event_labels:
                raise ModelError(f"{where}: {label!r} is not an event label of the model")
            if not isinstance(rule, Mapping) or set(rule) != set(GATE_KEYS):
                raise ModelError(f"{where} must be an object with exactly the keys "
                                 f"{', '.join(GATE_KEYS)}")
            v = _Values(rule, "model", f"gate.{label}.")
            support = rule["support"]
            if (not isinstance(support, (list, tuple))
                    or not all(isinstance(i, int) and not isinstance(i, bool)
                               and 0 <= i < AUDIOSET_CLASSES for i in support)):
                raise v.fail("support", f"a list of AudioSet class indices 0..{AUDIOSET_CLASSES - 1}")
            v.integer("top_k", 1, AUDIOSET_CLASSES)
            v.number("floor", 0.0, 1.0)
            v.number("context_seconds", self.window_seconds, 60.0)
            v.number("max_wait_seconds", 0.0, 60.0)

    def _check_stream(self) -> None:
        chunk = self.stream_chunk_frames
        if chunk is None:
            if self.state_inputs or self.state_outputs:
                raise ModelError("model metadata state_inputs/state_outputs are only defined "
                                 "for a streaming model (stream_chunk_frames)")
            return
        if isinstance(chunk, bool) or not isinstance(chunk, int) or not 1 <= chunk <= self.frames:
            raise ModelError(f"model stream_chunk_frames={_short(chunk)} must be an integer in "
                             f"1..{self.frames} (the window's frames)")
        hop = chunk * self.features.hop_length / self.features.sample_rate
        if not math.isclose(self.window_hop_seconds, hop, rel_tol=0, abs_tol=1e-6):
            raise ModelError(f"model window_hop_seconds={self.window_hop_seconds} must equal "
                             f"its chunk of {chunk} frames ({hop:g} s): a streaming model "
                             "steps once per chunk")
        ins, outs = tuple(self.state_inputs), tuple(self.state_outputs)
        if not ins or len(ins) != len(outs):
            raise ModelError(f"model state_inputs {list(ins)} and state_outputs {list(outs)} "
                             "must be non-empty lists of the same length")
        names = (*ins, *outs)
        if len(set(names)) != len(names) or self.embedding_output in names:
            raise ModelError(f"model state names {list(names)} must be unique and differ from "
                             "the embedding output")

    @property
    def is_streaming(self) -> bool:
        return self.stream_chunk_frames is not None

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
        if self.stream_chunk_frames is not None:
            values["stream_chunk_frames"] = self.stream_chunk_frames
            values["state_inputs"] = list(self.state_inputs)
            values["state_outputs"] = list(self.state_outputs)
        if self.audioset_output is not None:
            values["audioset_output"] = self.audioset_output
        if self.gate:
            values["gate"] = {label: dict(rule) for label, rule in self.gate.items()}
        return {key: json.dumps(value) for key, value in values.items()}

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> "ModelMetadata":
        """Parse ``metadata_props``; raise :class:`ModelError` naming what is wrong.

        Every value is type- and range-checked here (one line naming the key and the
        value), consistency between keys in :meth:`__post_init__`; ``validate-config``
        and every command that runs a model go through this one function.
        """
        missing = [key for key in REQUIRED_KEYS if key not in props]
        if missing:
            raise ModelError(f"{source} lacks metadata {missing}; a model file describes "
                             "itself (docs/model.md, 'Model-file contract'): train it with "
                             "`python -m export train`")
        values: dict[str, Any] = {}
        for key in (*REQUIRED_KEYS, *OPTIONAL_KEYS):
            if key in props:
                try:
                    values[key] = json.loads(props[key], parse_constant=_reject_constant)
                except (TypeError, ValueError, RecursionError):
                    raise ModelError(f"{source} metadata {key}={_short(props[key])} "
                                     "is not valid JSON (NaN and Infinity are not)") from None
        v = _Values(values, source)
        try:
            features = FeatureParams(
                sample_rate=v.integer("sample_rate", 1000, 384_000),
                n_fft=v.integer("n_fft", 16, 65_536),
                hop_length=v.integer("hop_length", 1, 65_536),
                win_length=v.integer("win_length", 1, 65_536),
                n_mels=v.integer("n_mels", 1, 512),
                fmin=v.number("fmin", 0.0, 192_000.0),
                fmax=v.number("fmax", 0.0, 192_000.0, low_open=True))
            optional: dict[str, Any] = {}
            if values.get("input_layout") is not None:
                optional["input_layout"] = v.string("input_layout", 16)
            if values.get("thresholds") is not None:
                table = values["thresholds"]
                if not isinstance(table, dict):
                    raise v.fail("thresholds", "an object mapping labels to numbers in (0, 1]",
                                 wrong_type=True)
                optional["thresholds"] = dict(table)  # values checked in __post_init__
            if values.get("background_labels") is not None:
                optional["background_labels"] = v.strings("background_labels", 0)
            if values.get("window_hop_seconds") is not None:
                optional["window_hop_seconds"] = v.number("window_hop_seconds", 0.0, 30.0,
                                                          low_open=True)
            feature = v.string("feature", 32)
            if values.get("feature_params") is not None:
                if feature == "mn_logmel":
                    optional["feature_params"] = MnParams.from_dict(values["feature_params"])
                else:
                    optional["feature_params"] = values["feature_params"]  # refused below
            if values.get("embedding_output") is not None:
                optional["embedding_output"] = v.string("embedding_output", 256, empty=False)
            if values.get("embedding_dim") is not None:
                optional["embedding_dim"] = v.integer("embedding_dim", 1, 65_536)
            if values.get("stream_chunk_frames") is not None:
                optional["stream_chunk_frames"] = v.integer("stream_chunk_frames", 1, 1 << 20)
            for key in ("state_inputs", "state_outputs"):
                if values.get(key) is not None:
                    optional[key] = v.strings(key, 1)
            if values.get("audioset_output") is not None:
                optional["audioset_output"] = v.string("audioset_output", 256, empty=False)
            if values.get("gate") is not None:
                if not isinstance(values["gate"], dict):
                    raise v.fail("gate", "an object mapping labels to gate rules",
                                 wrong_type=True)
                optional["gate"] = dict(values["gate"])  # checked in __post_init__
            normalization = values["normalization"]
            if normalization is not None:
                if not isinstance(normalization, dict) or set(normalization) != {"mean", "std"}:
                    raise v.fail("normalization", 'null or {"mean": <number>, "std": <number>}',
                                 wrong_type=True)
                norm = _Values(normalization, source, "normalization.")
                normalization = {"mean": norm.number("mean", -1e6, 1e6),
                                 "std": norm.number("std", 0.0, 1e6, low_open=True)}
            return cls(labels=v.strings("labels", 1), features=features,
                       window_seconds=v.number("window_seconds", 0.05, 30.0),
                       feature=feature, normalization=normalization,
                       model_version=v.string("model_version", 200, empty=False),
                       trained_on=v.string("trained_on", 10_000),
                       license_note=v.string("license_note", 10_000), **optional)
        except ConfigError as exc:
            raise ModelError(f"{source} metadata is inconsistent: {exc}") from None
