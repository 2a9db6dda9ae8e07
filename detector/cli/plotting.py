"""``sound-detector replay FILE --plot OUT.png``: score curves with the fired events.

:func:`plot_scores` draws, over the recording, the per-class score curves of
the classes that matter (those that fired plus the highest-scoring ones),
each class's on-threshold as a dashed line in the class colour, the fired
events as shaded spans, and below a heat map of every class's score — the
picture a user needs to tune thresholds.

matplotlib is the ``[analysis]`` extra and is imported inside functions only.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from detector.errors import DetectorError

logger = logging.getLogger(__name__)

EXTRA_HINT = "analysis needs the [analysis] extra: pip install 'sound-detector[analysis]'"


def _epoch(value) -> float | None:
    """Seconds since the epoch from a float, a datetime or an ISO-8601 string."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime):
        moment = value
    else:
        text = str(value).strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def event_spans(events: Sequence[Mapping], stream_start=None, stream_end: float = math.inf
                ) -> list[tuple[str, float, float, float]]:
    """``(label, t0, t1, peak_score)`` per fired event, in seconds from stream start.

    A start event and its end event (same ``id``) make one span; a start with
    no end lasts to ``stream_end``; an end whose start is missing uses its own
    ``start`` field. An event's position comes from ``offset_s`` / ``end_offset_s``
    (seconds from stream start) when present, else from its ISO-8601 ``start`` /
    ``end`` minus ``stream_start`` (epoch seconds, datetime or ISO string).
    Events that cannot be placed are skipped with a warning.
    """
    origin = _epoch(stream_start)
    spans: dict[str, dict] = {}
    order: list[str] = []
    unplaced = 0

    def position(event: Mapping, offset_key: str, iso_key: str) -> float | None:
        if isinstance(event.get(offset_key), (int, float)):
            return float(event[offset_key])
        moment = _epoch(event.get(iso_key))
        if moment is None or origin is None:
            return None
        return moment - origin

    for index, event in enumerate(events):
        key = str(event.get("id", f"#{index}"))
        label = str(event.get("label", "?"))
        start = position(event, "offset_s", "start")
        if start is None:
            unplaced += 1
            continue
        span = spans.get(key)
        if span is None:
            span = {"label": label, "t0": start, "t1": None, "peak": 0.0}
            spans[key] = span
            order.append(key)
        peak = event.get("peak_score", event.get("score"))
        if isinstance(peak, (int, float)):
            span["peak"] = max(span["peak"], float(peak))
        if event.get("type") == "end":
            end = position(event, "end_offset_s", "end")
            if end is None and isinstance(event.get("duration_s"), (int, float)):
                end = start + float(event["duration_s"])
            span["t1"] = end
    if unplaced:
        logger.warning("%d events could not be placed on the time axis (no offset_s and no "
                       "stream_start to convert their ISO times)", unplaced)
    result = []
    for key in order:
        span = spans[key]
        t1 = span["t1"] if span["t1"] is not None else stream_end
        result.append((span["label"], span["t0"], max(t1, span["t0"]), span["peak"]))
    return result


def _threshold_for(thresholds, label: str) -> float | None:
    if thresholds is None:
        return None
    if isinstance(thresholds, (int, float)):
        return float(thresholds)
    value = thresholds.get(label)
    if isinstance(value, (tuple, list)):
        value = value[0] if value else None
    if isinstance(value, Mapping):
        value = value.get("threshold_on", value.get("on"))
    return float(value) if isinstance(value, (int, float)) else None


def choose_labels(scores: np.ndarray, labels: Sequence[str], fired: Sequence[str],
                  max_labels: int) -> list[int]:
    """Indices of the curves to draw: every class that fired, then the highest peaks."""
    peaks = scores.max(axis=0) if scores.size else np.zeros(len(labels))
    chosen = [i for i, name in enumerate(labels) if name in set(fired)]
    chosen.sort(key=lambda i: -peaks[i])
    for i in np.argsort(-peaks, kind="stable"):
        if len(chosen) >= max_labels:
            break
        if int(i) not in chosen:
            chosen.append(int(i))
    return chosen


def heat_cell_edges(times) -> np.ndarray:
    """``[n + 1]`` edges of the heat map's cells, one cell per window, around its time.

    Windows are not evenly spaced once onset windows are on (extra windows a few
    hundredths of a second apart at a sound's start, besides the regular hop), so each
    cell reaches half-way to its neighbours; the first and the last reach as far out as
    inwards. A curve's point and its heat-map cell sit at the same time.
    """
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    if t.size == 0:
        return np.zeros(0)
    if t.size == 1:
        return np.array([t[0] - 0.5, t[0] + 0.5])
    mid = (t[:-1] + t[1:]) / 2.0
    return np.concatenate([[t[0] - (mid[0] - t[0])], mid, [t[-1] + (t[-1] - mid[-1])]])


def plot_scores(times: Sequence[float], scores, labels: Sequence[str],
                events: Sequence[Mapping], out_png: str | Path, *,
                thresholds=None, stream_start=None, title: str | None = None,
                max_labels: int = 8) -> Path:
    """Write a PNG of per-class scores over a recording with the fired events marked.

    ``times``: ``[n]`` seconds from stream start of each model window (its end);
    ``scores``: ``[n, n_labels]`` in [0, 1]; ``events``: the event dicts the
    tracker produced (see :func:`event_spans` for how they are placed in time);
    ``thresholds``: one float, or ``{label: on}`` / ``{label: (on, off)}``.
    At most ``max_labels`` curves are drawn (classes that fired first, then the
    highest-scoring); the heat map below shows every class (up to 40).
    Returns the path written. Raises :class:`DetectorError` without matplotlib
    or for inconsistent shapes.
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib import colormaps
    except ImportError:
        raise DetectorError(EXTRA_HINT) from None
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores.reshape(-1, 1)
    labels = [str(x) for x in labels]
    if scores.shape != (times.size, len(labels)):
        raise DetectorError(f"plot_scores: scores shape {scores.shape} does not match "
                            f"{times.size} times x {len(labels)} labels")
    out_png = Path(out_png)
    if out_png.parent and not out_png.parent.exists():
        raise DetectorError(f"--plot {out_png}: directory {out_png.parent} does not exist")
    duration = float(times[-1]) if times.size else 0.0
    spans = event_spans(events, stream_start, stream_end=duration)
    fired = [label for label, *_ in spans]
    chosen = choose_labels(scores, labels, fired, max_labels)
    palette = colormaps["tab10" if len(chosen) <= 10 else "tab20"]
    colour = {labels[i]: palette(k % palette.N) for k, i in enumerate(chosen)}

    heat_rows = min(len(labels), 40)
    fig = Figure(figsize=(12, 5.5 + 0.16 * heat_rows), dpi=100, layout="constrained")
    ax, heat = fig.subplots(2, 1, sharex=True,
                            gridspec_kw={"height_ratios": [3, max(1.2, 0.1 * heat_rows)]})
    for i in chosen:
        name = labels[i]
        ax.plot(times, scores[:, i], color=colour[name], linewidth=1.4,
                label=f"{name} (max {scores[:, i].max():.2f})" if scores.size else name)
        level = _threshold_for(thresholds, name)
        if level is not None:
            ax.axhline(level, color=colour[name], linestyle="--", linewidth=0.9, alpha=0.8)
    for label, t0, t1, peak in spans:
        shade = colour.get(label, (0.5, 0.5, 0.5, 1.0))
        ax.axvspan(t0, t1, color=shade, alpha=0.18, linewidth=0)
        ax.axvline(t0, color=shade, linewidth=1.0)
        ax.annotate(f"{label} {peak:.2f}" if peak else label, xy=(t0, 1.0),
                    xycoords=("data", "axes fraction"), xytext=(2, -2),
                    textcoords="offset points", va="top", ha="left", fontsize=8,
                    rotation=90, color=shade)
    ax.set_ylim(-0.02, 1.05)
    ax.set_ylabel("Score (0–1)")
    note = f"{len(spans)} event{'s' if len(spans) != 1 else ''}"
    if thresholds is not None:
        note += "; dashed lines: on-thresholds"
    if len(chosen) < len(labels):
        note += f"; top {len(chosen)} of {len(labels)} classes drawn"
    ax.set_title(f"{title or 'Scores over the recording'}\n{note}", fontsize=10)
    ax.grid(alpha=0.3)
    if chosen:
        fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper",
                   fontsize="small", title="class (peak score)")

    rows = list(np.argsort(-scores.max(axis=0), kind="stable")[:heat_rows]) \
        if scores.size else list(range(heat_rows))
    if times.size:
        # pcolormesh on the windows' own times: imshow would space them evenly
        image = heat.pcolormesh(heat_cell_edges(times), np.arange(len(rows) + 1) - 0.5,
                                scores[:, rows].T, vmin=0, vmax=1, cmap="viridis",
                                shading="flat")
        heat.set_ylim(len(rows) - 0.5, -0.5)  # the highest-scoring class on top
        fig.colorbar(image, ax=heat, label="Score", pad=0.01)
    heat.set_yticks(range(len(rows)), [labels[i] for i in rows], fontsize=7)
    for label, t0, t1, _ in spans:
        if label in labels and labels.index(label) in rows:
            r = rows.index(labels.index(label))
            heat.plot([t0, t1], [r, r], color="white", linewidth=2.0)
    heat.set_xlabel("Time from stream start (s)")
    heat.set_title("All classes (white bars: fired events)", fontsize=9)
    heat.set_xlim(min(0.0, float(times[0]) if times.size else 0.0), max(duration, 1e-3))
    fig.savefig(out_png)
    return out_png
