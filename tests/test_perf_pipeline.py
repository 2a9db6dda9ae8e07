"""The pipeline's cheaper paths give exactly the results of the plain ones.

* Samples are transformed once per model hop, when the next window is due, and
  the columns go to a linear buffer (compacted
  every ``COLUMN_BUFFER_ROWS`` columns, grown for huge blocks): every window the
  model sees must be the exact slice of the log-mel stream.
* A window the event tracker's energy gate zeroes is not sent to the model
  (unless raw scores are recorded): events and the smoothed scores the sinks
  get must be identical to running the model on it.
"""

import numpy as np
import pytest

from detector.audio.features import StreamingLogMel
from detector.audio.windows import COLUMN_BUFFER_ROWS
from onnx_models import tone_signal
from test_pipeline import SR, ArraySource, classifier, config, run  # noqa: F401 (fixture)


class Recording:
    """A classifier wrapper that keeps a copy of every window it is given."""

    def __init__(self, inner):
        self.inner = inner
        self.metadata = inner.metadata
        self.windows = []

    def predict(self, window):
        self.windows.append(np.array(window, copy=True))
        return self.inner.predict(window)


def check_windows(pipe, windows, columns) -> int:
    """Every window the model saw is the exact slice of the column stream that ends on the
    window grid: every regular one (each hop) in order, plus onset windows (on the finer
    onset grid) between them. Returns how many onset windows there were."""
    frames, hop, fine = pipe.frames, pipe.hop_columns, pipe.onset_columns
    starts = list(range(0, columns.shape[0] - frames + 1, fine))
    j, extra = 0, 0
    for got in windows:
        # the pipeline transforms once per hop, the reference once per block: equal up
        # to BLAS summation order (a misplaced slice is off by whole dB)
        while j < len(starts) and not np.allclose(got, columns[starts[j]:starts[j] + frames],
                                                  rtol=0, atol=1e-4):
            assert starts[j] % hop, f"the regular window at column {starts[j]} is missing"
            j += 1
        assert j < len(starts), "a window that is no slice of the column stream"
        extra += bool(starts[j] % hop)
        j += 1
    assert all(s % hop for s in starts[j:]), "regular windows missing at the end"
    assert extra == pipe.onset_windows and len(windows) == pipe.windows
    return extra


def stream_columns(signal, blocks, params):
    stream = StreamingLogMel(params)
    out, i = [], 0
    for n in blocks:
        out.append(stream.push(signal[i:i + n]))
        i += n
    return np.concatenate(out)


@pytest.mark.parametrize("block", [800, 160, 1000, 16000 * 12, "random"])
def test_windows_are_exact_slices_of_the_column_stream(classifier, block):
    seconds = 2.5 * COLUMN_BUFFER_ROWS * 160 / SR  # several compactions of the buffer
    signal = tone_signal([(1.0, 3.0, 1000.0), (9.0, 14.0, 3000.0)], seconds,
                         noise_dbfs=-40.0)
    source = ArraySource(signal, seed=11) if block == "random" else ArraySource(signal, block)
    blocks = []
    read = source.read

    def logged_read(timeout=0.5):
        out = read(timeout)
        blocks.append(out.shape[0])
        return out

    source.read = logged_read
    rec = Recording(classifier)
    pipe, _ = run(rec, source)
    columns = stream_columns(signal, blocks, classifier.metadata.features)
    assert pipe.windows - pipe.onset_windows > 2 * COLUMN_BUFFER_ROWS // pipe.hop_columns
    assert check_windows(pipe, rec.windows, columns) > 0  # the tones begin: onset windows


def test_gated_windows_skip_the_model_with_identical_results(classifier):
    # loud tone, digital silence, a tone below the -70 dBFS gate, loud tone again
    loud = tone_signal([(0.5, 2.0, 1000.0)], 3.0)
    quiet = tone_signal([(0.2, 2.5, 1000.0)], 3.0, amplitude=10 ** (-85 / 20))
    signal = np.concatenate([loud, np.zeros(2 * SR, np.float32), quiet, loud])
    runs = {}
    for record in (True, False):
        rec = Recording(classifier)
        pipe, (sink,) = run(rec, ArraySource(signal), cfg=config(gate_dbfs=-70.0),
                            record_scores=record)
        runs[record] = (pipe, sink, len(rec.windows))
    (p_all, s_all, n_all), (p_skip, s_skip, n_skip) = runs[True], runs[False]
    assert n_all == p_all.windows == p_skip.windows
    gated = [w[1] < -70.0 for w in s_all.windows]
    assert sum(gated) >= 10 and n_skip == n_all - sum(gated)
    for a, b, g in zip(s_all.windows, s_skip.windows, gated):
        assert a[0] == b[0] and a[1] == b[1]  # smoothed scores and level, exactly
        assert a[2] - p_all.started_at == pytest.approx(b[2] - p_skip.started_at, abs=1e-6)
        if g:
            assert b[3]["inference_ms"] == 0.0 and b[3]["model_skipped"] == 1.0
        else:
            assert b[3]["model_skipped"] == 0.0
    keys = ("type", "label", "score", "peak_score", "duration_s", "level_dbfs")
    assert len(s_all.events) == len(s_skip.events) >= 4
    assert [[e[k] for k in keys] for e in s_all.events] == \
        [[e[k] for k in keys] for e in s_skip.events]


def test_reconnects_restart_framing_like_separate_streams(classifier):
    # A device reconnect restarts the log-mel framing at the next block: the columns
    # are those of each stretch of audio streamed on its own, windows span the seams.
    signal = tone_signal([(1.0, 2.5, 1000.0), (4.0, 6.0, 3000.0)], 9.0, noise_dbfs=-40.0)
    seams, box = [], {}

    def on_read(source):
        if source.pos and source.pos < len(source.signal) and len(seams) < 40 \
                and (source.pos // 800) % 23 == 0:
            seams.append(source.pos)
            box["pipe"].on_device_status("connected")

    source = ArraySource(signal, block=800, on_read=on_read)
    rec = Recording(classifier)
    from detector.pipeline import Pipeline

    pipe = box["pipe"] = Pipeline(config(), source, rec, [])
    pipe.run()
    params = classifier.metadata.features
    bounds = [0, *seams, len(signal)]
    columns = np.concatenate([stream_columns(signal[a:b], [b - a], params)
                              for a, b in zip(bounds, bounds[1:])])
    assert len(seams) >= 5 and pipe.windows - pipe.onset_windows > 10
    check_windows(pipe, rec.windows, columns)
