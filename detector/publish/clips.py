"""Optional FLAC clips of each event, with pre-roll and post-roll (off by default).

Privacy first: nothing is recorded unless ``[clips] enabled = true``. Then:

- :meth:`ClipSink.audio` keeps a ring of the most recent audio (pre-roll plus a
  margin for the detection lag), in the pipeline thread, cheaply;
- a ``start`` event opens a clip that begins ``pre_roll_seconds`` before the
  event's onset (taken from the ring) and receives every following block;
- the matching ``end`` event gets ``"clip": "<absolute path>.flac"`` added *before*
  later sinks (MQTT, stdout) publish it; the clip keeps recording for
  ``post_roll_seconds`` more and is then finished. The file appears at that path
  once the post-roll is written (it is written as ``.<name>.part`` and renamed);
- encoding and disk I/O happen in one background writer thread, never in the
  audio loop; a full or read-only disk is logged, never fatal;
- retention after every clip (and at start): clips older than ``max_age_days``
  are deleted, then the oldest beyond ``max_count`` and beyond ``max_total_mb``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from detector.errors import ConfigError
from detector.private import private_dir, private_file
from detector.ratelimit import RateLimitedLog
from detector.publish.sink import Sink

logger = logging.getLogger(__name__)

RING_MARGIN_SECONDS = 10.0
"""Audio kept beyond the pre-roll: covers the lag between onset and the start event."""
MAX_CLIP_SECONDS = 600.0
"""A clip stops growing after this long (an event that lasts for hours)."""
_SAFE = re.compile(r"[^A-Za-z0-9_-]+")


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass
class _Clip:
    key: int
    label: str
    path: Path
    part: Path
    finish_at: float | None = None
    seconds: float = 0.0
    truncated: bool = False
    written_until: float = field(default=-np.inf)
    pending: deque = field(default_factory=deque)  # (start time, samples) not yet written


class ClipSink(Sink):
    """Writes one FLAC file per event; adds its path to the end event."""

    def __init__(self, settings, sample_rate: int):
        self.settings = settings
        self.sample_rate = int(sample_rate)
        self.directory = Path(settings.directory).expanduser().resolve()
        try:
            private_dir(self.directory)  # recordings of the room: 0700 / 0600
            probe = self.directory / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"clips.directory={str(self.directory)!r} is not writable "
                              f"({exc.strerror or exc}); choose a writable directory or set "
                              "clips.enabled = false") from None
        self._ring: deque[tuple[float, np.ndarray]] = deque()  # (time of last sample, block)
        self._ring_samples = 0
        self._ring_limit = int((settings.pre_roll_seconds + RING_MARGIN_SECONDS) * sample_rate)
        self._active: dict[str, _Clip] = {}
        self._finishing: list[_Clip] = []
        self._next_key = 0
        self._last_time: float | None = None
        self._jobs: queue.Queue = queue.Queue()
        self._broken: set[int] = set()  # clips whose open or write failed (writer thread)
        self._error_log = RateLimitedLog(logger, 60.0, 5, level=logging.ERROR)
        self.failed = 0
        """Clips dropped because a write failed (a full or read-only disk)."""
        self._remove_leftovers()
        self.written: list[Path] = []
        """Clips finished by this sink (in order)."""
        self._writer = threading.Thread(target=self._write_loop, name="clip-writer", daemon=True)
        self._writer.start()
        self._jobs.put(("retention",))
        logger.info("clips: saving events as FLAC in %s (pre-roll %.1f s, post-roll %.1f s)",
                    self.directory, settings.pre_roll_seconds, settings.post_roll_seconds)

    def _remove_leftovers(self) -> None:
        """Unfinished clips of an earlier run (``.<name>.flac.part``): a crash or a full
        disk left them; they are never renamed, so they go."""
        removed = 0
        for part in self.directory.glob(".*.flac.part"):
            try:
                part.unlink()
                removed += 1
            except OSError as exc:
                logger.warning("clips: cannot remove the unfinished %s: %s", part.name,
                               exc.strerror or exc)
        if removed:
            logger.info("clips: removed %d unfinished clip(s) (.part) left by an earlier run",
                        removed)

    def _sync(self, timeout: float = 1.0) -> None:
        """Wait (bounded) until the writer has done the jobs queued so far."""
        done = threading.Event()
        self._jobs.put(("sync", done))
        done.wait(timeout)

    # -- pipeline thread -------------------------------------------------------
    def audio(self, block: np.ndarray, now: float) -> None:
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        self._last_time = now
        self._ring.append((now, block))
        self._ring_samples += block.shape[0]
        while self._ring and self._ring_samples - self._ring[0][1].shape[0] >= self._ring_limit:
            self._ring_samples -= self._ring.popleft()[1].shape[0]
        for clip in list(self._active.values()) + list(self._finishing):
            self._feed(clip, block, now)

    def _feed(self, clip: _Clip, block: np.ndarray, end_time: float) -> None:
        """Take the part of ``block`` (ending at ``end_time``) the clip still needs.

        The newest :data:`RING_MARGIN_SECONDS` stay in memory (``pending``): an end
        event arrives some windows after the end it reports, and the clip must
        stop exactly ``post_roll_seconds`` after that end, not after the event.
        """
        start_time = end_time - block.shape[0] / self.sample_rate
        lo = 0
        if clip.written_until > start_time:  # already taken (ring overlap)
            lo = min(block.shape[0],
                     int(round((clip.written_until - start_time) * self.sample_rate)))
        if block.shape[0] > lo and not clip.truncated:
            if clip.seconds + (block.shape[0] - lo) / self.sample_rate > MAX_CLIP_SECONDS:
                clip.truncated = True
                logger.warning("clips: %s is longer than %.0f s; the rest is not recorded",
                               clip.path.name, MAX_CLIP_SECONDS)
            else:
                clip.pending.append((start_time + lo / self.sample_rate, block[lo:].copy()))
                clip.seconds += (block.shape[0] - lo) / self.sample_rate
        clip.written_until = max(clip.written_until, end_time)
        horizon = end_time - RING_MARGIN_SECONDS
        while clip.pending and clip.finish_at is None and (
                clip.pending[0][0] + clip.pending[0][1].shape[0] / self.sample_rate <= horizon):
            self._jobs.put(("write", clip.key, clip.pending.popleft()[1]))
        if clip.finish_at is not None and end_time >= clip.finish_at:
            self._finish(clip)

    def event(self, event: Mapping) -> None:
        label = str(event.get("label"))
        if event.get("type") == "start":
            onset = _parse_time(event.get("start")) or self._last_time or time.time()
            if label in self._active:  # should not happen (tracker ends first); be safe
                self._finish(self._active.pop(label))
            stamp = dt.datetime.fromtimestamp(onset, dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
            name = f"{stamp}Z_{_SAFE.sub('_', label).strip('_') or 'event'}_" \
                   f"{str(event.get('id', ''))[:8] or self._next_key}.flac"
            clip = _Clip(self._next_key, label, self.directory / name,
                         self.directory / f".{name}.part")
            self._next_key += 1
            self._active[label] = clip
            self._jobs.put(("open", clip.key, clip.part))
            clip.written_until = onset - self.settings.pre_roll_seconds
            for block_end, block in list(self._ring):
                if block_end > clip.written_until:
                    self._feed(clip, block, block_end)
        elif event.get("type") == "end":
            clip = self._active.pop(label, None)
            if clip is None:
                return
            end = _parse_time(event.get("end")) or self._last_time or time.time()
            clip.finish_at = end + self.settings.post_roll_seconds
            # the audio up to the end is final: write it now, so a disk that refuses the
            # clip has said so before the end event names it
            while clip.pending and (clip.pending[0][0] + clip.pending[0][1].shape[0]
                                    / self.sample_rate <= end):
                self._jobs.put(("write", clip.key, clip.pending.popleft()[1]))
            self._sync()
            # named only while it is being written: a clip whose file could not be
            # opened or written (full disk) is not announced
            if isinstance(event, dict) and clip.key not in self._broken:
                event["clip"] = str(clip.path)
            if self._last_time is not None and self._last_time >= clip.finish_at:
                self._finish(clip)
            else:
                self._finishing.append(clip)

    def _finish(self, clip: _Clip) -> None:
        while clip.pending:
            seg_start, segment = clip.pending.popleft()
            if clip.finish_at is not None:
                keep = int(round((clip.finish_at - seg_start) * self.sample_rate))
                segment = segment[:max(0, keep)]
            if segment.shape[0]:
                self._jobs.put(("write", clip.key, segment))
        if clip in self._finishing:
            self._finishing.remove(clip)
        if self._active.get(clip.label) is clip:
            del self._active[clip.label]
        self._jobs.put(("close", clip.key, clip.part, clip.path))

    def close(self) -> None:
        for clip in list(self._active.values()) + list(self._finishing):
            self._finish(clip)  # shutdown: keep what was recorded so far
        self._jobs.put(None)
        self._writer.join(30)

    # -- writer thread -----------------------------------------------------------
    def _write_loop(self) -> None:
        import soundfile as sf

        files: dict[int, sf.SoundFile] = {}
        parts: dict[int, Path] = {}
        broken: set[int] = set()
        while True:
            job = self._jobs.get()
            if job is None:
                break
            kind = job[0]
            if kind == "sync":
                job[1].set()
                continue
            try:
                if kind == "open":
                    parts[job[1]] = job[2]
                    private_file(job[2])  # libsndfile would create it with the umask's mode
                    files[job[1]] = sf.SoundFile(str(job[2]), "w", samplerate=self.sample_rate,
                                                 channels=1, format="FLAC", subtype="PCM_16")
                elif kind == "write":
                    if job[1] in files:
                        files[job[1]].write(np.clip(job[2], -1.0, 1.0))
                elif kind == "close":
                    handle = files.pop(job[1], None)
                    parts.pop(job[1], None)
                    if handle is not None:
                        handle.close()
                        os.replace(job[2], job[3])
                        self.written.append(Path(job[3]))
                        logger.info("clips: wrote %s", job[3])
                    self._retention()
                elif kind == "retention":
                    self._retention()
            except Exception as exc:  # disk full, permissions: log, drop this clip, go on
                key = job[1] if len(job) > 1 and isinstance(job[1], int) else None
                if key is not None and key not in broken:
                    broken.add(key)
                    self._broken.add(key)
                    self.failed += 1
                    self._error_log.log("clips: %s failed (%s); this clip is dropped (%d so far)",
                                        kind, str(exc).strip().splitlines()[0] if str(exc)
                                        else type(exc).__name__, self.failed)
                    handle = files.pop(key, None)
                    if handle is not None:
                        try:
                            handle.close()
                        except Exception:
                            pass
                    part = parts.pop(key, None)
                    if part is not None:  # no half-written file left behind
                        try:
                            Path(part).unlink(missing_ok=True)
                        except OSError:
                            pass
                elif key is None:
                    logger.exception("clips: %s failed", kind)
        for handle in files.values():
            try:
                handle.close()
            except Exception:
                pass

    def _retention(self) -> None:
        s = self.settings
        clips = []
        for path in self.directory.glob("*.flac"):
            try:
                st = path.stat()
            except OSError:
                continue
            clips.append((st.st_mtime, st.st_size, path))
        clips.sort()  # oldest first
        now = time.time()
        keep = []
        for mtime, size, path in clips:
            if now - mtime > s.max_age_days * 86400:
                self._delete(path, "older than clips.max_age_days")
            else:
                keep.append((mtime, size, path))
        while len(keep) > s.max_count:
            self._delete(keep.pop(0)[2], "beyond clips.max_count")
        total = sum(size for _, size, _ in keep)
        limit = s.max_total_mb * 1e6
        while keep and total > limit:
            _, size, path = keep.pop(0)
            total -= size
            self._delete(path, "beyond clips.max_total_mb")

    @staticmethod
    def _delete(path: Path, why: str) -> None:
        try:
            path.unlink()
            logger.info("clips: deleted %s (%s)", path.name, why)
        except OSError as exc:
            logger.warning("clips: cannot delete %s: %s", path, exc)
