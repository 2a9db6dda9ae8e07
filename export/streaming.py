"""The streaming recipe: the mn04 trunk on 0.25 s chunks, an LSTM that carries its state.

The whole-window model (:mod:`export.pretrained`) runs the trunk on a 1 s window every
0.25 s, so every audio frame goes through the network four times, and a sound must fill
most of a window before its score rises. Here:

* the trunk runs once per **chunk** of :data:`CHUNK_FRAMES` new log-mel columns (0.25 s)
  and sees that chunk only, so its output (pooled over time and frequency, the chunk's
  *embedding*) does not depend on what came before: a chunk's embedding in a cache is
  exactly what the daemon computes for it in any stream;
* the LSTM takes one embedding per hop and carries ``(h, c)`` from hop to hop: the
  context of steady sounds lives in the state, impulsive ones can fire on their first
  chunk;
* the head is trained on long sequences assembled from the cached chunks of many clips
  one after another (with their room-noise lead-ins and tails), with a label per chunk,
  so it learns to rise at an onset, fall after the end, and run on a stream that never
  resets.

The exported file is a *step* model: ``features [1, 25, 128, 1]`` + ``state_h``,
``state_c`` ``[1, units]`` -> ``scores``, ``embedding`` (the chunk's), ``state_h_out``,
``state_c_out``; its metadata names the chunk and the state pairs
(``stream_chunk_frames``, ``state_inputs``, ``state_outputs``), and the daemon's
:mod:`detector.streaming` stage feeds it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import pretrained as P

logger = logging.getLogger(__name__)

CHUNK_FRAMES = 25
"""Log-mel columns per model step (hop 160 at 16 kHz: 0.25 s)."""
HOP = 160
NFFT = 512
CHUNK_SECONDS = CHUNK_FRAMES * HOP / P.SR
EMBED_DIM = 384
STATE_INPUTS = ("state_h", "state_c")
STATE_OUTPUTS = ("state_h_out", "state_c_out")
MIN_COVER_SECONDS = 0.04
"""An event chunk needs at least this much of its clip to take the clip's label."""


# --- chunks of one clip --------------------------------------------------------------------

def clip_chunks(audio: np.ndarray, is_event: bool, frontend, rng: np.random.Generator,
                label_index: int, chunk: int = CHUNK_FRAMES) -> tuple[np.ndarray, np.ndarray]:
    """Chunks ``[n, chunk, n_mels]`` of ``audio`` laid into room noise, and their labels.

    The clip starts after a random 0.3-1.0 s of room noise (so onsets fall anywhere in a
    chunk) and is followed by :data:`export.pretrained.POST_SECONDS`. Labels per chunk:
    background where the chunk holds none of the clip; for events the clip's label where
    it holds at least :data:`MIN_COVER_SECONDS` of it within 20 dB of the clip's loudest
    chunk, masked (-1) otherwise; a background clip's chunks are all background.
    """
    pre = int(rng.uniform(0.3, 1.0) * P.SR)
    post = int(P.POST_SECONDS * P.SR)
    signal = np.concatenate([np.zeros(pre, np.float32), audio.astype(np.float32),
                             np.zeros(post, np.float32)])
    signal = signal + P.room_noise(len(signal), rng)
    feats = frontend(signal)
    n = len(feats) // chunk
    if n == 0:
        return np.zeros((0, chunk, feats.shape[1]), np.float32), np.zeros(0, np.int64)
    chunks = feats[:n * chunk].reshape(n, chunk, feats.shape[1])
    step = chunk * HOP
    span = (chunk - 1) * HOP + NFFT
    bg = P.LABELS.index(P.BACKGROUND)
    cover, energy = np.zeros(n), np.full(n, -200.0)
    for k in range(n):
        lo, hi = max(k * step, pre), min(k * step + span, pre + len(audio))
        if hi > lo:
            cover[k] = (hi - lo) / P.SR
            energy[k] = P.rms_db(signal[lo:hi])
    peak = energy.max()
    labels = np.full(n, bg, np.int64)
    touched = cover > 0
    if not is_event:
        labels[touched] = label_index
    else:
        good = (cover >= MIN_COVER_SECONDS) & (energy >= peak - 20.0)
        labels[touched] = -1
        labels[good] = label_index
    return chunks.astype(np.float32), labels


# --- the chunk trunk ---------------------------------------------------------------------

def chunk_trunk_model(weights, chunk: int = CHUNK_FRAMES, n_mels: int = 128):
    """Keras: ``[batch, chunk, n_mels, 1]`` -> the chunk's embedding ``[batch, 384]``."""
    import keras
    from keras import layers as L

    from .mn04 import build_trunk

    inputs, trunk, _ = build_trunk(weights, n_frames=chunk, n_mels=n_mels)
    emb = L.Lambda(lambda t: keras.ops.mean(t, axis=(1, 2)), name="embedding")(trunk)
    return keras.Model(inputs, emb, name="mn04_chunk")


def write_chunk_trunk(weights, path: str | Path, chunk: int = CHUNK_FRAMES) -> Path:
    from .onnx_export import keras_to_onnx, write_onnx

    model = chunk_trunk_model(weights, chunk)
    return write_onnx(keras_to_onnx(model, "features", ["embedding"]), {}, path)


def embed_chunks(session, chunks: np.ndarray, batch: int = 64) -> np.ndarray:
    out = []
    for i in range(0, len(chunks), batch):
        x = np.ascontiguousarray(chunks[i:i + batch, :, :, None], dtype=np.float32)
        out.append(session.run(None, {"features": x})[0].astype(np.float16))
    return np.concatenate(out) if out else np.zeros((0, EMBED_DIM), np.float16)


@dataclass
class ChunkCache:
    """Chunk embeddings of many clip versions; each version's chunks are contiguous, in order."""

    emb: np.ndarray
    label: np.ndarray
    sample: np.ndarray
    """Index of the source sample (-1: synthetic background)."""
    variant: np.ndarray
    seq: np.ndarray
    """Id of the clip version the chunk belongs to (unique per sample and variant)."""

    FIELDS = ("emb", "label", "sample", "variant", "seq")

    @staticmethod
    def concat(parts: list["ChunkCache"]) -> "ChunkCache":
        out = ChunkCache(*(np.concatenate([getattr(p, f) for p in parts])
                           for f in ChunkCache.FIELDS))
        # make sequence ids unique across parts, keeping each part's order
        offset, seqs = 0, []
        for p in parts:
            seqs.append(p.seq + offset)
            offset += int(p.seq.max()) + 1 if len(p.seq) else 0
        out.seq = np.concatenate(seqs) if seqs else out.seq
        return out

    def save(self, path: Path) -> None:
        np.savez(path, **{f: getattr(self, f) for f in self.FIELDS})

    @staticmethod
    def load(path: Path) -> "ChunkCache":
        with np.load(path) as d:
            return ChunkCache(*(d[f] for f in ChunkCache.FIELDS))

    def spans(self, rows: np.ndarray | None = None) -> list[tuple[int, int]]:
        """``(first_row, end_row)`` of every clip version (restricted to ``rows`` if given)."""
        keep = np.ones(len(self.seq), bool) if rows is None else np.isin(
            np.arange(len(self.seq)), rows)
        change = np.flatnonzero(np.diff(self.seq)) + 1
        starts = np.concatenate([[0], change])
        ends = np.concatenate([change, [len(self.seq)]])
        return [(int(a), int(b)) for a, b in zip(starts, ends) if b > a and keep[a]]


def build_chunk_cache(samples, indices, frontend, session, n_variants: int, pools: dict,
                      seed: int, n_synthetic: int = 0, progress: bool = True) -> ChunkCache:
    """Chunks of ``samples[indices]`` in ``n_variants`` versions through the chunk trunk
    (mixing only with background audio of the sample's own rotation group)."""
    from tqdm import tqdm

    parts: list[ChunkCache] = []
    seq = 0
    for i in tqdm(list(indices), desc=f"chunk trunk x{n_variants}", unit="clip",
                  disable=not progress):
        sample = samples[i]
        rng = np.random.default_rng([seed, i])
        audio = P.read(sample)
        is_event = sample.label != P.BACKGROUND
        pool = pools.get(sample.group, [])
        for v, x in enumerate(P.variants(audio, is_event, n_variants, pool, rng)):
            chunks, labels = clip_chunks(x, is_event, frontend, rng,
                                         P.LABELS.index(sample.label))
            if not len(labels):
                continue
            n = len(labels)
            parts.append(ChunkCache(embed_chunks(session, chunks), labels, np.full(n, i),
                                    np.full(n, v), np.full(n, seq)))
            seq += 1
    rng = np.random.default_rng([seed, 10 ** 6])
    for x in P.synthetic_background(n_synthetic, rng):
        chunks, labels = clip_chunks(x, False, frontend, rng, P.LABELS.index(P.BACKGROUND))
        n = len(labels)
        if n:
            parts.append(ChunkCache(embed_chunks(session, chunks), labels, np.full(n, -1),
                                    np.zeros(n, int), np.full(n, seq)))
            seq += 1
    return ChunkCache.concat(parts)


# the cache protocol of ``export.pretrained_cli.build_or_load_cache``
CACHE_PREFIX = "chunks"
CACHE_TRUNK = "chunk_trunk.onnx"
build_cache_part = build_chunk_cache


def cache_settings() -> dict:
    return {"chunk_frames": CHUNK_FRAMES, "min_cover": MIN_COVER_SECONDS}


def write_cache_trunk(weights, path: Path) -> Path:
    return write_chunk_trunk(weights, path)


def load_cache(paths) -> ChunkCache:
    return ChunkCache.concat([ChunkCache.load(p) for p in paths])


# --- training sequences ------------------------------------------------------------------

def make_sequences(cache: ChunkCache, spans: list[tuple[int, int]], n_seq: int, length: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n_seq`` row-index sequences ``[n_seq, length]``: clip versions one after another
    in random order, the first entered at a random chunk."""
    rows = np.empty((n_seq, length), np.int64)
    for s in range(n_seq):
        out, fill = rows[s], 0
        while fill < length:
            a, b = spans[int(rng.integers(len(spans)))]
            if fill == 0 and b - a > 1:  # start the sequence anywhere in its first clip
                a += int(rng.integers(0, b - a))
            take = min(b - a, length - fill)
            out[fill:fill + take] = np.arange(a, a + take)
            fill += take
    return rows


@dataclass(frozen=True)
class StreamHeadConfig:
    lstm_units: int = 128
    dropout: float = 0.3
    epochs: int = 10
    batch_size: int = 32
    seq_length: int = 64
    """Chunks per training sequence (16 s)."""
    passes: float = 2.0
    """Each training chunk appears about this many times per epoch."""
    learning_rate: float = 2e-3
    background_weight: float = 1.0
    seed: int = 0


def build_stream_head(cfg: StreamHeadConfig, dim: int = EMBED_DIM):
    """Keras: chunk embeddings ``[batch, time, dim]`` -> per-chunk softmax over the labels."""
    import keras
    from keras import layers as L

    inputs = keras.Input((None, dim), name="sequence")
    x = L.LayerNormalization(name="head_norm")(inputs)
    x = L.Dropout(0.15, name="head_in_drop")(x)
    h = L.LSTM(cfg.lstm_units, return_sequences=True, name="head_lstm")(x)
    z = L.Concatenate(name="head_concat")([h, x])
    z = L.Dropout(cfg.dropout, name="head_drop")(z)
    out = L.Dense(len(P.LABELS), activation="softmax", name="head_scores")(z)
    return keras.Model(inputs, out, name="stream_head")


def train_stream_head(cache: ChunkCache, rows: np.ndarray, cfg: StreamHeadConfig,
                      verbose: int = 1):
    """Fit the head on sequences assembled from the clip versions among ``rows``."""
    import keras

    keras.utils.set_random_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    spans = cache.spans(rows)
    total = sum(b - a for a, b in spans)
    n_seq = max(cfg.batch_size, int(cfg.passes * total / cfg.seq_length))
    labels = cache.label[rows]
    weights = P.class_weights(labels[labels >= 0], cfg.background_weight).astype(np.float32)
    model = build_stream_head(cfg, cache.emb.shape[1])
    steps = cfg.epochs * int(np.ceil(n_seq / cfg.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, steps)
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4),
                  loss="sparse_categorical_crossentropy", weighted_metrics=["accuracy"])
    history: dict[str, list] = {}
    for epoch in range(cfg.epochs):
        seq_rows = make_sequences(cache, spans, n_seq, cfg.seq_length, rng)
        x = cache.emb[seq_rows].astype(np.float32)
        y = cache.label[seq_rows]
        w = np.where(y >= 0, weights[np.maximum(y, 0)], 0.0).astype(np.float32)
        y = np.maximum(y, 0)
        if verbose:
            print(f"epoch {epoch + 1}/{cfg.epochs}: {n_seq} sequences of {cfg.seq_length} chunks")
        h = model.fit(x, y, sample_weight=w, batch_size=cfg.batch_size, epochs=1,
                      shuffle=True, verbose=verbose)
        for k, v in h.history.items():
            history.setdefault(k, []).extend(v)
    return model, history


def clip_scores(head, cache: ChunkCache, spans, batch: int = 256) -> list[np.ndarray]:
    """Per clip version: per-chunk scores ``[n, labels]`` from a zero state."""
    out: list[np.ndarray] = []
    by_len: dict[int, list[int]] = {}
    for k, (a, b) in enumerate(spans):
        by_len.setdefault(b - a, []).append(k)
    result: dict[int, np.ndarray] = {}
    for n, ks in by_len.items():
        for i in range(0, len(ks), batch):
            part = ks[i:i + batch]
            x = np.stack([cache.emb[spans[k][0]:spans[k][1]] for k in part]).astype(np.float32)
            y = np.asarray(head(x, training=False))
            for k, s in zip(part, y):
                result[k] = s
    for k in range(len(spans)):
        out.append(result[k])
    return out


def thresholds(head, cache: ChunkCache, rows_neg: np.ndarray, floor: float, margin: float,
               smoothing: int = 2) -> dict[str, float]:
    """On-thresholds: the highest smoothed score of any calibration negative + margin."""
    spans = cache.spans(rows_neg)
    peaks = [P.smoothed_max(s, smoothing) for s in clip_scores(head, cache, spans)]
    thr = P.thresholds_from_negatives(np.array(peaks), floor, margin)
    return {label: round(float(t), 3) for label, t in zip(P.LABELS, thr)
            if label != P.BACKGROUND}


def offline_report(samples, head, cache: ChunkCache, rows: np.ndarray,
                   thr: dict[str, float], smoothing: int = 2) -> dict:
    """Clip accuracy (UrbanSound8K), recall / wrong / negatives firing from per-clip peaks."""
    spans = cache.spans(rows)
    scores = clip_scores(head, cache, spans)
    t = np.array([thr.get(label, 2.0) for label in P.LABELS])
    peaks, hits = {}, []
    n_us = len(P.URBANSOUND8K_LABELS)
    bg = P.LABELS.index(P.BACKGROUND)
    for (a, b), s in zip(spans, scores):
        i = int(cache.sample[a])
        peaks[i] = P.smoothed_max(s, smoothing)
        if i >= 0 and samples[i].kind.startswith("us8k:"):
            keep = cache.label[a:b] != bg
            p = (s[keep] if keep.any() else s)[:, :n_us].mean(axis=0)
            hits.append(P.URBANSOUND8K_LABELS[int(p.argmax())] == samples[i].label)
    report = P.decide(samples, {}, peaks, t)
    report["clip_accuracy"] = float(np.mean(hits)) if hits else None
    return report


# --- the exported step model -------------------------------------------------------------

def build_step_model(weights, head, chunk: int = CHUNK_FRAMES, n_mels: int = 128):
    """Keras: (``features [1, chunk, n_mels, 1]``, ``state_h``, ``state_c``) ->
    (``scores``, ``embedding``, ``state_h_out``, ``state_c_out``): one hop of the stream,
    with the trained head's layers and the LSTM's weights in an ``LSTMCell``."""
    import keras
    from keras import layers as L

    from .mn04 import build_trunk

    lstm = head.get_layer("head_lstm")
    units = lstm.units
    feats = keras.Input((chunk, n_mels, 1), batch_size=1, name="features")
    h_in = keras.Input((units,), batch_size=1, name="state_h")
    c_in = keras.Input((units,), batch_size=1, name="state_c")
    _, trunk, _ = build_trunk(weights, inputs=feats, n_mels=n_mels)
    emb = L.Lambda(lambda t: keras.ops.mean(t, axis=(1, 2)), name="embedding")(trunk)
    x = head.get_layer("head_norm")(emb)
    cell = L.LSTMCell(units, name="step_lstm")
    h, (h2, c2) = cell(x, [h_in, c_in])
    cell.set_weights(lstm.cell.get_weights())
    z = head.get_layer("head_concat")([h, x])
    scores = head.get_layer("head_scores")(z)
    h_out = L.Identity(name="h_out")(h2)
    c_out = L.Identity(name="c_out")(c2)
    return keras.Model([feats, h_in, c_in], [scores, emb, h_out, c_out], name="sound_detector")


def metadata(version: str, trained_on: str, thr: dict[str, float]):
    from dataclasses import replace

    meta = P.metadata(version, trained_on, thr)
    return replace(meta, window_hop_seconds=CHUNK_SECONDS, stream_chunk_frames=CHUNK_FRAMES,
                   state_inputs=STATE_INPUTS, state_outputs=STATE_OUTPUTS)


def export_step_model(weights, head, meta, out_path: str | Path,
                      check: np.ndarray | None = None) -> tuple[Path, float | None]:
    """The step model -> ONNX with ``meta``. With ``check`` (normalised features of one
    stream, ``[n * chunk, n_mels]``), the file stepped through its chunks is compared with
    the training head run over the same chunk embeddings (whole sequence, one pass): the
    two must agree within 1e-4 (the cell is the layer, the state is carried right)."""
    from .onnx_export import keras_to_onnx_inputs, write_onnx

    model = build_step_model(weights, head)
    units = head.get_layer("head_lstm").units
    proto = keras_to_onnx_inputs(
        model, [("features", (1, CHUNK_FRAMES, 128, 1)), ("state_h", (1, units)),
                ("state_c", (1, units))],
        ["scores", "embedding", *STATE_OUTPUTS])
    path = write_onnx(proto, meta.to_props(), out_path)
    diff = None
    if check is not None and len(check) >= CHUNK_FRAMES:
        n = len(check) // CHUNK_FRAMES
        chunks = check[:n * CHUNK_FRAMES].reshape(n, CHUNK_FRAMES, -1)
        sess = P.open_session(path)
        state = {name: np.zeros((1, units), np.float32) for name in STATE_INPUTS}
        got, embs = [], []
        for c in chunks:
            feed = {"features": np.ascontiguousarray(c[None, :, :, None]), **state}
            s, e, h, cc = sess.run(None, feed)
            state = {"state_h": h, "state_c": cc}
            got.append(s[0])
            embs.append(e[0])
        want = np.asarray(head(np.stack(embs)[None], training=False))[0]
        diff = float(np.abs(np.stack(got) - want).max())
        if diff > 1e-4:
            from detector.errors import ModelError
            raise ModelError(f"streaming ONNX parity check failed: max abs diff {diff:.2e}")
    return path, diff
