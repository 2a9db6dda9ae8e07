"""The ONNX classifier: a session whose shapes, labels and features come from the file.

:class:`Classifier` opens an onnxruntime session with one intra-op and one
inter-op thread by default (steady latency on a 2-core Pi), reads the model
metadata contract (:class:`~detector.model.metadata.ModelMetadata`) from the file's
custom metadata, checks the input/output shapes against it, and runs a warm-up
window so a model that loads but cannot run fails at startup, not at the first
sound. Every problem is a :class:`~detector.errors.ModelError` with one line.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from detector.errors import ConfigError, ModelError
from detector.audio.features import make_frontend
from detector.model.metadata import ModelMetadata
from detector.private import refuse_writable_by_others

if TYPE_CHECKING:  # pragma: no cover
    from detector.config import Config

logger = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


def default_model_path() -> Path:
    """The model shipped inside the package: ``detector/models/default.onnx``."""
    return MODELS_DIR / "default.onnx"


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text[:limit] + ("..." if len(text) > limit else "")


def choose_providers(requested: Sequence[str]) -> list[str]:
    """Requested providers that this onnxruntime build offers, CPU always last.

    An unknown name is a configuration error; a known but unavailable one (CUDA
    without a GPU build) is dropped with a warning, falling back to CPU.
    """
    import onnxruntime as ort

    known = set(ort.get_all_providers())
    available = set(ort.get_available_providers())
    chosen: list[str] = []
    for name in requested:
        if name not in known:
            raise ConfigError(f"model.providers: unknown provider {name!r}; known: "
                              f"{', '.join(sorted(p for p in known if p in available))}, "
                              "or see onnxruntime's execution providers")
        if name not in available:
            logger.warning("execution provider %s is not available in this onnxruntime "
                           "build; falling back to the next one / CPU", name)
            continue
        if name not in chosen:
            chosen.append(name)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def _session_options(intra_op_threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # onnxruntime warnings are not user-facing
    return options


def _symbolic_overrides(path: Path) -> dict[str, int]:
    """Values for the named symbolic dims of the model's one input ``[batch, frames,
    n_mels, 1]``: batch 1, the others what the metadata says. Empty when the file has
    none, or cannot be read this way (then onnxruntime and the checks report it)."""
    from detector.model.onnxfile import read_header

    try:
        props, inputs = read_header(path)
        if len(inputs) != 1:
            return {}
        (shape,) = inputs.values()
        if shape is None or len(shape) != 4:
            return {}
        meta = ModelMetadata.from_props(props, source=f"model {path}")
    except Exception:  # any problem: no overrides; the normal path names it
        return {}
    values: dict[str, int] = {}
    for dim, want in zip(shape, (1, meta.frames, meta.features.n_mels, 1)):
        if isinstance(dim, str) and dim:
            values[dim] = want if values.get(dim, want) == want else -1
    return {name: v for name, v in values.items() if v > 0}


def _dim_ok(dim: object, expected: int) -> bool:
    """A static dimension must match; a symbolic/unknown one (str/None) is allowed."""
    return not isinstance(dim, int) or dim == expected


class Classifier:
    """One ONNX model: ``predict(window [frames, n_mels]) -> scores [n_classes]``."""

    def __init__(self, path: str | Path | None = None,
                 providers: Sequence[str] = ("CPUExecutionProvider",),
                 intra_op_threads: int = 1):
        self.path = Path(path) if path is not None else default_model_path()
        where = f"model {self.path}"
        if not self.path.exists():
            if path is None:
                raise ModelError(f"the shipped model {self.path.name} is missing from "
                                 f"{self.path.parent}; reinstall the package or pass --model PATH")
            raise ModelError(f"{where} does not exist; check the path (--model / model.path)")
        if not self.path.is_file():
            raise ModelError(f"{where} is not a file; pass the .onnx file")
        refuse_writable_by_others(self.path, "model", ModelError)
        chosen = choose_providers(providers)

        self.session = self._open(intra_op_threads, chosen)
        self.providers = self.session.get_providers()
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = ModelMetadata.from_props(props, source=where)
        meta = self.metadata

        self._stream = None
        """The :class:`~detector.model.streaming.StreamStage` of a streaming model (else None)."""
        if meta.is_streaming:
            self._open_streaming(where)
        else:
            self._open_window(where)
        self._n_labels = len(meta.labels)
        self.model_metadata = meta
        """The model's own metadata (``metadata`` adds the custom labels, if any)."""
        self.custom = None
        """Custom heads attached with :meth:`attach_custom` (None: only built-in labels)."""
        self.audioset_labels = None
        """AudioSet labels attached with :meth:`attach_audioset` (None: none)."""
        self.embedding = (np.zeros(self.embedding_dim, dtype=np.float32)
                          if self.embedding_name else None)
        """The embedding of the last window :meth:`predict` ran on (None without one)."""
        self.audioset: np.ndarray | None = None
        """The AudioSet logits of the last window :meth:`predict` ran on (None without them)."""
        self._warned_range = False

        self.frontend = make_frontend(meta)
        """The front end the model was trained on (tables only; the pipeline streams it)."""
        started = time.perf_counter()
        try:
            scores = self.predict(np.full((meta.frames, meta.features.n_mels),
                                          self.frontend.floor, dtype=np.float32))
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"{where} fails on a silent window ({_first_line(exc)})") from None
        self.reset()
        logger.info("model %s (%s): %d labels, window %.2f s = %d frames%s, providers %s, "
                    "warm-up %.1f ms", self.path.name, meta.model_version, len(meta.labels),
                    meta.window_seconds, meta.frames,
                    f", streaming in chunks of {meta.stream_chunk_frames}" if self._stream else "",
                    ",".join(self.providers), (time.perf_counter() - started) * 1000)
        del scores

    def _normalization(self) -> None:
        norm = self.metadata.normalization
        self._mean = float(norm["mean"]) if norm else 0.0
        self._std = float(norm["std"]) if norm else 1.0
        self._normalize = self._std != 1.0 or self._mean != 0.0
        self._window_shape = (self.metadata.frames, self.metadata.features.n_mels)

    def _open_streaming(self, where: str) -> None:
        from detector.model.streaming import StreamStage

        self._stream = StreamStage(self.session, self.metadata, where)
        self.input_name = self._stream.input_name
        self.output_name = self._stream.output_name
        self.embedding_name = self._stream.embedding_name
        self.embedding_dim = int(self.metadata.embedding_dim or 0)
        self._normalization()
        self._binding = self._output = self._emb_output = self._as_output = None
        self.audioset_name = None

    def reset(self) -> None:
        """Forget the stream so far (a streaming model's state); nothing for window models."""
        if self._stream is not None:
            self._stream.reset()

    def _open_window(self, where: str) -> None:
        meta = self.metadata
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ModelError(f"{where} has {len(inputs)} inputs; expected one "
                             "[batch, frames, n_mels, 1] float32 input")
        inp = inputs[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        expected = ["batch", meta.frames, meta.features.n_mels, 1]
        if (inp.type != "tensor(float)" or len(shape) != 4
                or not all(_dim_ok(d, e) for d, e in zip(shape[1:], expected[1:]))):
            raise ModelError(
                f"{where} input {inp.name} is {inp.type} {shape}; its metadata "
                f"(window_seconds={meta.window_seconds}, n_mels={meta.features.n_mels}) "
                f"needs float32 {expected}")
        if not outputs:
            raise ModelError(f"{where} has no outputs")
        emb_name = meta.embedding_output
        score_outputs = [o for o in outputs if o.name not in (emb_name, meta.audioset_output)]
        if not score_outputs:
            raise ModelError(f"{where} has no score output besides its embedding {emb_name}")
        out = score_outputs[0]
        self.output_name = out.name
        oshape = list(out.shape)
        if len(oshape) != 2 or not _dim_ok(oshape[1], len(meta.labels)):
            raise ModelError(f"{where} output {out.name} has shape {oshape}; its metadata "
                             f"names {len(meta.labels)} labels, so expected "
                             f"[batch, {len(meta.labels)}]")
        self.embedding_name: str | None = None
        """Name of the embedding output (None: the model has none)."""
        self.embedding_dim = 0
        """Width of the embedding (0 without one)."""
        if emb_name is not None:
            found = [o for o in outputs if o.name == emb_name]
            if not found:
                raise ModelError(f"{where} metadata embedding_output={emb_name!r} names no "
                                 f"output; its outputs: {', '.join(o.name for o in outputs)}")
            eshape = list(found[0].shape)
            if (found[0].type != "tensor(float)" or len(eshape) != 2
                    or not _dim_ok(eshape[1], meta.embedding_dim)):
                raise ModelError(f"{where} embedding output {emb_name} is {found[0].type} "
                                 f"{eshape}; its metadata says float32 "
                                 f"[batch, {meta.embedding_dim}]")
            self.embedding_name, self.embedding_dim = emb_name, int(meta.embedding_dim)
        self.audioset_name: str | None = None
        """Name of the AudioSet-logits output (None: the model has none)."""
        if meta.audioset_output is not None:
            from detector.model.metadata import AUDIOSET_CLASSES

            found = [o for o in outputs if o.name == meta.audioset_output]
            if not found:
                raise ModelError(f"{where} metadata audioset_output={meta.audioset_output!r} "
                                 f"names no output; its outputs: "
                                 f"{', '.join(o.name for o in outputs)}")
            ashape = list(found[0].shape)
            if (found[0].type != "tensor(float)" or len(ashape) != 2
                    or not _dim_ok(ashape[1], AUDIOSET_CLASSES)):
                raise ModelError(f"{where} AudioSet output {meta.audioset_output} is "
                                 f"{found[0].type} {ashape}; expected float32 "
                                 f"[batch, {AUDIOSET_CLASSES}]")
            self.audioset_name = meta.audioset_output
        self._normalization()
        self._input = np.zeros((1, meta.frames, meta.features.n_mels, 1), dtype=np.float32)
        self._n_labels = len(meta.labels)
        self._input_window = self._input[0, :, :, 0]  # a [frames, n_mels] view of the input
        self._output_names = [self.output_name] + ([self.embedding_name]
                                                   if self.embedding_name else [])
        if self.audioset_name:
            self._output_names.append(self.audioset_name)
        self._feed = {self.input_name: self._input}
        self._binding, self._output, self._emb_output, self._as_output = self._bind_io()

    def _open(self, intra_op_threads: int, providers: Sequence[str]):
        """The onnxruntime session, opened once with the input's symbolic dims pinned.

        The daemon always runs one window of ``frames`` columns, so a symbolic batch
        (or frames, n_mels) dimension can be fixed with onnxruntime's free-dimension
        override. That lets its optimiser fold the model's shape arithmetic
        (Shape/Gather/Cast/Concat chains that tf2onnx exports for a dynamic batch)
        into constants: same arithmetic on the data, bit-identical scores, fewer
        nodes per run (the shipped model: 53 -> 32). The dims' names and the window
        come from the file itself (:mod:`detector.model.onnxfile`), so there is one session
        build, not one to ask and one with the overrides. A session the overrides
        cannot build is opened as the file is.
        """
        import onnxruntime as ort

        where = f"model {self.path}"
        overrides = _symbolic_overrides(self.path)
        if overrides:
            try:
                options = _session_options(intra_op_threads)
                for name, value in overrides.items():
                    options.add_free_dimension_override_by_name(name, value)
                return ort.InferenceSession(str(self.path), options, providers=providers)
            except Exception as exc:  # open it as the file is, without overrides
                logger.debug("model %s: symbolic dims not fixed (%s)", self.path.name,
                             _first_line(exc))
        try:
            return ort.InferenceSession(str(self.path), _session_options(intra_op_threads),
                                        providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/...
            raise ModelError(f"{where} cannot be loaded as ONNX ({_first_line(exc)}); "
                             "pass a model exported by `python -m export`") from None

    def _bind_io(self):
        """Pre-bound input and output buffers for :meth:`predict`, or ``(None, None, None)``.

        The input is an OrtValue over ``self._input`` (CPU memory shared with the
        numpy array, so filling the array is all a window needs) and the outputs
        preallocated ``[1, n_labels]`` (and ``[1, embedding_dim]``) float32 arrays;
        each window then skips onnxruntime's per-run feed conversion and output
        allocation. Only when the session's output shapes are exactly those (a
        fixed batch, see :meth:`_open`); otherwise ``session.run`` is used.
        """
        from detector.model.metadata import AUDIOSET_CLASSES

        wanted = {self.output_name: [1, self._n_labels]}
        if self.embedding_name:
            wanted[self.embedding_name] = [1, self.embedding_dim]
        if self.audioset_name:
            wanted[self.audioset_name] = [1, AUDIOSET_CLASSES]
        shapes = {o.name: (o.type, list(o.shape)) for o in self.session.get_outputs()}
        if any(shapes.get(name) != ("tensor(float)", shape) for name, shape in wanted.items()):
            return None, None, None, None
        try:
            import onnxruntime as ort

            binding = self.session.io_binding()
            # kept referenced: the OrtValue wraps self._input's memory
            self._input_value = ort.OrtValue.ortvalue_from_numpy(self._input)
            binding.bind_ortvalue_input(self.input_name, self._input_value)
            arrays = {}
            for name, shape in wanted.items():
                arrays[name] = np.zeros(shape, dtype=np.float32)
                binding.bind_output(name, "cpu", 0, np.float32, shape, arrays[name].ctypes.data)
        except Exception as exc:  # an onnxruntime without io_binding: plain run
            logger.debug("model %s: no IO binding (%s)", self.path.name, _first_line(exc))
            return None, None, None, None
        return (binding, arrays[self.output_name], arrays.get(self.embedding_name),
                arrays.get(self.audioset_name))

    def attach_custom(self, heads) -> None:
        """Score custom labels (:class:`detector.model.custom.CustomHeads`) on the embedding.

        Their scores follow the model's in :meth:`predict`, and :attr:`metadata`
        lists them after the model's labels (with their calibrated thresholds),
        so the event tracker, control, MQTT, discovery, clips and metrics treat
        them like the model's own labels. No second network pass.
        """
        if self.embedding_name is None:
            raise ModelError(f"model {self.path.name} ({self.model_metadata.model_version}) "
                             "has no embedding output, so it cannot run custom labels")
        heads.check_model(self.model_metadata)
        if self.audioset_labels is not None:
            raise RuntimeError("attach custom heads before AudioSet labels")
        from dataclasses import replace

        meta = self.model_metadata
        self.custom = heads if len(heads) else None
        gates = heads.gates if self.audioset_name is not None else {}
        self.metadata = replace(meta, labels=(*meta.labels, *heads.labels),
                                thresholds={**meta.thresholds, **heads.thresholds},
                                gate={**meta.gate, **gates})

    def attach_audioset(self, labels) -> None:
        """Score AudioSet classes (:class:`detector.model.audioset.AudioSetLabels`) as labels.

        Their scores (the classes' probabilities from the ``audioset`` output of the same
        pass) follow the model's and the custom labels' in :meth:`predict`; :attr:`metadata`
        lists them with their default threshold and gate rule, so they are labels like the
        model's own everywhere. Call after :meth:`attach_custom`.
        """
        from dataclasses import replace

        from detector.model import audioset

        meta = self.metadata
        if self.audioset_name is None:
            raise ConfigError(f"events.audioset_labels needs a model with an audioset output; "
                              f"model {self.path.name} ({meta.model_version}) has none")
        taken = set(meta.labels)
        for label, name in zip(labels.labels, labels.names):
            if label in taken:
                raise ConfigError(f"events.audioset_labels: {name!r} would be label {label!r}, "
                                  "which the model or a custom label already has; remove it "
                                  "from events.audioset_labels")
        self.audioset_labels = labels if len(labels) else None
        self.metadata = replace(meta, labels=(*meta.labels, *labels.labels),
                                thresholds={**meta.thresholds,
                                            **{x: audioset.THRESHOLD for x in labels.labels}},
                                gate={**meta.gate, **labels.gate_metadata()})

    @property
    def labels(self) -> tuple[str, ...]:
        return self.metadata.labels

    def predict(self, window: np.ndarray) -> np.ndarray:
        """Scores in [0, 1] (float32) for one ``[frames, n_mels]`` window: one per model
        label, then one per custom label. The window's embedding (same network pass)
        is left in :attr:`embedding`."""
        if window.shape != self._window_shape:
            raise ValueError(f"window shape {window.shape} != {self._window_shape}")
        if self._stream is not None:  # only the newest chunk is new to a streaming model
            chunk = window[-self._stream.chunk:]
            target = self._stream.input[0, :, :, 0]
            if self._normalize:
                np.subtract(chunk, self._mean, out=target)
                target /= self._std
            else:
                target[:] = chunk
            scores, embedding = self._stream.step()
            if embedding is not None:
                self.embedding = embedding
        else:
            scores = self._run_window(window)
        if scores.shape[0] != self._n_labels:
            raise ModelError(f"model {self.path} returned {scores.shape[0]} scores for "
                             f"{self._n_labels} labels")
        # min/max propagate NaN, and NaN fails both comparisons: one test covers
        # NaN, +-inf and values outside [0, 1]
        if not (scores.min() >= 0.0 and scores.max() <= 1.0):
            if not self._warned_range:
                logger.warning("model %s returned scores outside [0, 1] (or NaN); "
                               "clipping them", self.path.name)
                self._warned_range = True
            scores = np.clip(np.nan_to_num(scores, nan=0.0), 0.0, 1.0)
        if self.custom is not None:
            scores = np.concatenate((scores, self.custom.scores(self.embedding)))
        if self.audioset_labels is not None:
            scores = np.concatenate((scores, self.audioset_labels.scores(self.audioset)))
        return scores

    def _run_window(self, window: np.ndarray) -> np.ndarray:
        """One pass of a whole-window model; leaves the embedding in :attr:`embedding`."""
        if self._normalize and window.dtype == np.float32:
            # the same float32 operations as the expression below, without temporaries
            dst = self._input_window
            np.subtract(window, self._mean, out=dst)
            np.divide(dst, self._std, out=dst)
        elif self._normalize:
            self._input[0, :, :, 0] = (window - self._mean) / self._std
        else:
            self._input[0, :, :, 0] = window
        if self._binding is not None:
            self.session.run_with_iobinding(self._binding)
            if self._emb_output is not None:
                self.embedding = self._emb_output.reshape(-1).copy()
            if self._as_output is not None:
                self.audioset = self._as_output.reshape(-1).copy()
            return self._output.reshape(-1).copy()
        result = self.session.run(self._output_names, self._feed)
        if self.embedding_name:
            self.embedding = np.asarray(result[1], dtype=np.float32).reshape(-1)
        if self.audioset_name:
            self.audioset = np.asarray(result[-1], dtype=np.float32).reshape(-1)
        return np.asarray(result[0], dtype=np.float32).reshape(-1)

    def predict_with_embedding(self, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, embedding)`` of one window, from one network pass."""
        if self.embedding_name is None:
            raise ModelError(f"model {self.path.name} ({self.model_metadata.model_version}) "
                             "has no embedding output")
        scores = self.predict(window)
        return scores, self.embedding


def check_against_model(config: "Config", meta: ModelMetadata) -> None:
    """Refuse (one line) a config that contradicts the model it runs."""
    labels = set(meta.labels)
    background = set(meta.background_labels)
    known = ", ".join(meta.event_labels)
    ev = config.events
    if ev.labels is not None and not ev.labels:
        raise ConfigError("events.labels = [] enables no label, so no event can ever fire; "
                          f"omit it to use every event label of the model ({known})")
    gate_keys = (("events.gate_top_k", ev.gate_top_k),
                 ("events.gate_floor", ev.gate_floor),
                 ("events.gate_context_seconds", ev.gate_context_seconds),
                 ("events.gate_max_wait_seconds", ev.gate_max_wait_seconds))
    for key, names in (("events.thresholds", ev.thresholds),
                       ("events.thresholds_off", ev.thresholds_off),
                       ("events.labels", ev.labels or ()), *gate_keys):
        for name in names:
            if name not in labels:
                raise ConfigError(f"{key} names {name!r}, which model "
                                  f"{meta.model_version} does not have; its labels: {known}")
            if name in background:
                raise ConfigError(f"{key} names {name!r}, a background label of the model "
                                  f"that never fires events; its event labels: {known}")
    for key, names in gate_keys:
        for name in names:
            if name not in meta.gate:
                gated = ", ".join(meta.gate) or "none"
                raise ConfigError(f"{key} names {name!r}, which model {meta.model_version} "
                                  f"does not gate; its gated labels: {gated}")
    for label, off in ev.thresholds_off.items():
        on = ev.thresholds.get(label, meta.thresholds.get(label, ev.threshold_on))
        if off > on:
            raise ConfigError(f"events.thresholds_off.{label}={off} must be <= the "
                              f"on-threshold {on} of {label!r}")
    rate = config.audio.sample_rate
    if rate is not None and rate < 2 * meta.features.fmax:
        raise ConfigError(f"audio.sample_rate={rate} cannot carry the model's "
                          f"fmax={meta.features.fmax:g} Hz; use >= "
                          f"{int(2 * meta.features.fmax)} or omit it")
    hop = config.model.window_hop_seconds
    if meta.is_streaming and hop is not None and abs(hop - meta.window_hop_seconds) > 1e-6:
        raise ConfigError(f"model.window_hop_seconds={hop}: model {meta.model_version} is a "
                          f"streaming model that steps every {meta.window_hop_seconds:g} s "
                          "(its chunk); omit the key")
    if hop is not None and hop > meta.window_seconds:
        raise ConfigError(f"model.window_hop_seconds={hop} must be <= the model window "
                          f"{meta.window_seconds} s (larger hops skip audio)")
