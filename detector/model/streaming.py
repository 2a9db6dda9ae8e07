"""The streaming-model stage: each log-mel column through the network once, state carried.

A *streaming* model file (metadata ``stream_chunk_frames``, ``state_inputs``,
``state_outputs``; see :class:`~detector.model.metadata.ModelMetadata`) is one *step* of a
stream: its ``features`` input is the newest ``[1, chunk, n_mels, 1]`` columns, its
state inputs are what the previous step returned on the state outputs (zeros at the
start of a stream), and it returns the scores of the stream so far and the chunk's
embedding. The pipeline still hands the classifier the last whole window every hop
(the hop *is* the chunk, so a window's newest ``chunk`` columns are exactly the ones
not seen yet); this stage keeps the state and the schedule:

* :meth:`StreamStage.step` runs one chunk and carries the state;
* :meth:`StreamStage.reset` goes back to the start-of-stream state (after a gap in
  the audio, or when quiet windows skipped the model, so the state never spans audio
  the model did not see);
* the *window* embedding custom labels learn on is the mean of the chunk embeddings
  of the last ``window_seconds`` (the same span as a whole-window model's).

The model-file contract of this kind lives here and in :mod:`detector.model.metadata`; a new
model family is a new stage beside this one, not edits across the pipeline.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

import numpy as np

from detector.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    from detector.model.metadata import ModelMetadata


def _static(shape) -> list[int] | None:
    """A shape with every dimension a fixed integer, or None."""
    dims = list(shape)
    return dims if all(isinstance(d, int) and d > 0 for d in dims) else None


class StreamStage:
    """State, schedule and IO checks of one streaming model session."""

    def __init__(self, session, meta: "ModelMetadata", where: str):
        self.meta = meta
        self.session = session
        self.chunk = int(meta.stream_chunk_frames)
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = {o.name: o for o in session.get_outputs()}
        state_in, state_out = meta.state_inputs, meta.state_outputs
        missing = [n for n in state_in if n not in inputs] + [n for n in state_out
                                                              if n not in outputs]
        if missing:
            raise ModelError(f"{where} metadata names state {missing} that the file lacks; "
                             f"inputs: {', '.join(inputs)}; outputs: {', '.join(outputs)}")
        feature_inputs = [n for n in inputs if n not in state_in]
        if len(feature_inputs) != 1:
            raise ModelError(f"{where} has inputs {list(inputs)}: a streaming model needs "
                             f"exactly one feature input besides its state {list(state_in)}")
        feat = inputs[feature_inputs[0]]
        expected = [1, self.chunk, meta.features.n_mels, 1]
        shape = list(feat.shape)
        if not (feat.type == "tensor(float)" and len(shape) == 4 and shape[1:] == expected[1:]
                and (shape[0] == 1 or not isinstance(shape[0], int))):
            raise ModelError(f"{where} input {feat.name} is {feat.type} {list(feat.shape)}; its "
                             f"metadata (stream_chunk_frames={self.chunk}) needs float32 {expected}")
        self.input_name = feat.name
        self._state: dict[str, np.ndarray] = {}
        self._pairs = list(zip(state_in, state_out))
        for name_in, name_out in self._pairs:
            shape_in = _static(inputs[name_in].shape)
            shape_out = _static(outputs[name_out].shape)
            if shape_in is None or shape_in != shape_out or inputs[name_in].type != "tensor(float)":
                raise ModelError(f"{where} state {name_in} {list(inputs[name_in].shape)} -> "
                                 f"{name_out} {list(outputs[name_out].shape)}: a state pair needs "
                                 "one fixed float32 shape on both sides")
            self._state[name_in] = np.zeros(shape_in, dtype=np.float32)
        others = [n for n in outputs if n not in state_out and n != meta.embedding_output]
        if not others:
            raise ModelError(f"{where} has no score output besides its state and embedding")
        self.output_name = others[0]
        oshape = list(outputs[self.output_name].shape)
        if len(oshape) != 2 or (isinstance(oshape[1], int) and oshape[1] != len(meta.labels)):
            raise ModelError(f"{where} output {self.output_name} has shape {oshape}; its "
                             f"metadata names {len(meta.labels)} labels")
        self.embedding_name = meta.embedding_output
        if self.embedding_name is not None:
            if self.embedding_name not in outputs:
                raise ModelError(f"{where} metadata embedding_output={self.embedding_name!r} "
                                 f"names no output; its outputs: {', '.join(outputs)}")
            eshape = list(outputs[self.embedding_name].shape)
            if len(eshape) != 2 or (isinstance(eshape[1], int) and eshape[1] != meta.embedding_dim):
                raise ModelError(f"{where} embedding output {self.embedding_name} is {eshape}; "
                                 f"its metadata says [1, {meta.embedding_dim}]")
        self._outputs = [self.output_name, *state_out] + (
            [self.embedding_name] if self.embedding_name else [])
        self._input = np.zeros(expected, dtype=np.float32)
        hop_seconds = self.chunk * meta.features.hop_length / meta.features.sample_rate
        span = max(1, int(round(meta.window_seconds / hop_seconds)))
        self._embeddings: collections.deque = collections.deque(maxlen=span)
        self.steps = 0
        """Chunks run since the last :meth:`reset`."""

    @property
    def input(self) -> np.ndarray:
        """``[1, chunk, n_mels, 1]``: fill ``[0, :, :, 0]`` with the newest chunk, then :meth:`step`."""
        return self._input

    def reset(self) -> None:
        """Back to the start of a stream: zero state, no remembered chunk embeddings."""
        for value in self._state.values():
            value.fill(0.0)
        self._embeddings.clear()
        self.steps = 0

    def step(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Run the chunk in :attr:`input`; carry the state. Returns the scores ``[labels]``
        and the window embedding (mean of the last window's chunk embeddings) or None."""
        feed = {self.input_name: self._input, **self._state}
        result = self.session.run(self._outputs, feed)
        for k, (name_in, _) in enumerate(self._pairs, start=1):
            self._state[name_in] = np.asarray(result[k], dtype=np.float32)
        self.steps += 1
        embedding = None
        if self.embedding_name is not None:
            self._embeddings.append(np.asarray(result[-1], dtype=np.float32).reshape(-1))
            embedding = np.mean(self._embeddings, axis=0) if len(self._embeddings) > 1 \
                else self._embeddings[0].copy()
        return np.asarray(result[0], dtype=np.float32).reshape(-1), embedding
