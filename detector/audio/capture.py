"""Audio input: a microphone (PortAudio via sounddevice) or a file (soundfile),
both behind one small interface, both delivering mono float32 at the model rate.

:class:`MicSource`
    The PortAudio callback does nothing but copy the block into a bounded queue and
    count overflows (it runs on PortAudio's real-time thread). Downmixing and
    resampling happen in :meth:`read`, on the caller's thread. A supervisor thread
    watches the stream: when it errors, goes inactive, or delivers nothing for
    :attr:`MicSource.STALL_SECONDS`, it reports ``"lost"``, closes the stream,
    re-scans the devices and re-opens with exponential backoff, and reports
    ``"connected"`` as soon as audio flows again.

:class:`FileSource`
    Streams WAV/FLAC/OGG in blocks (a 24-hour file is never loaded whole),
    downmixes, resamples, and optionally paces itself to the wall clock.

Both raise :class:`~detector.errors.DetectorError` subclasses with one line that
names the problem; ``sounddevice`` is imported lazily so file replay works on a
machine without the PortAudio library.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from detector.errors import AudioError, DeviceError
from detector.audio.resample import StreamResampler

if TYPE_CHECKING:  # pragma: no cover
    from detector.config import AudioConfig

logger = logging.getLogger(__name__)

__all__ = ["AudioSource", "MicSource", "FileSource", "list_devices", "format_devices",
           "DEMO_CLIP"]

DEMO_CLIP = Path(__file__).resolve().parents[1] / "data" / "demo.flac"
"""Bundled synthetic demo scene (street noise, siren, car horn); see scripts/make_demo_clip.py."""


def _sounddevice():
    """Import sounddevice, turning a missing PortAudio library into one clear line."""
    try:
        import sounddevice
    except OSError as exc:  # raised at import when libportaudio is missing
        raise DeviceError(
            f"cannot load PortAudio for microphone input ({exc}); install it with "
            "'sudo apt install libportaudio2' (Debian, Raspberry Pi OS) or use 'replay FILE'"
        ) from None
    return sounddevice


class AudioSource:
    """Common interface of every audio input.

    ``read`` returns mono float32 blocks in [-1, 1] at :attr:`sample_rate` (the
    model rate; any resampling happens inside the source).
    """

    sample_rate: int
    """Rate in Hz of the blocks :meth:`read` returns."""

    @property
    def overflows(self) -> int:
        """Blocks lost because the reader fell behind or the device overran."""
        return 0

    @property
    def queue_depth(self) -> int:
        """Blocks waiting to be read."""
        return 0

    def start(self) -> None:
        """Open the input; raises a DetectorError subclass when it cannot."""

    def read(self, timeout: float = 0.5) -> np.ndarray | None:
        """Next block, or None if nothing arrived within ``timeout`` seconds."""
        raise NotImplementedError

    def stop(self) -> None:
        """Release the input; safe to call twice."""

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------- devices

def list_devices(target_rate: int | None = None) -> list[dict]:
    """Input-capable devices as dicts: ``index, name, hostapi, channels,
    default_samplerate, default`` (+ ``supports_target_rate`` when ``target_rate``
    is given; checking it briefly opens each device)."""
    sd = _sounddevice()
    try:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
        default_in = sd.default.device[0]
    except sd.PortAudioError as exc:
        raise DeviceError(f"cannot list audio devices: {exc}") from None
    result = []
    for index, dev in enumerate(devices):
        if dev["max_input_channels"] <= 0:
            continue
        entry = {
            "index": index,
            "name": dev["name"],
            "hostapi": hostapis[dev["hostapi"]]["name"],
            "channels": int(dev["max_input_channels"]),
            "default_samplerate": float(dev["default_samplerate"]),
            "default": index == default_in,
        }
        if target_rate is not None:
            entry["supports_target_rate"] = _rate_supported(sd, index, target_rate, 1)
        result.append(entry)
    return result


def format_devices(target_rate: int | None = None) -> str:
    """Human-readable table of input devices for ``sound-detector devices``."""
    devices = list_devices(target_rate)
    if not devices:
        return ("no audio input devices found (is a microphone plugged in? "
                "on Linux check 'arecord -l' and that your user is in the 'audio' group)")
    lines = []
    header = f"{'':2}{'index':>5}  {'channels':>8}  {'rate Hz':>8}  "
    if target_rate is not None:
        header += f"{str(target_rate) + ' Hz':>9}  "
    lines.append(header + "name (host API)")
    for dev in devices:
        line = (f"{'*' if dev['default'] else '':2}{dev['index']:>5}  {dev['channels']:>8}  "
                f"{dev['default_samplerate']:>8.0f}  ")
        if target_rate is not None:
            line += f"{'yes' if dev['supports_target_rate'] else 'resample':>9}  "
        lines.append(line + f"{dev['name']} ({dev['hostapi']})")
    lines.append("* = default input. Choose one with [audio] device = \"<name substring>\" "
                 "or its index.")
    return "\n".join(lines)


def _rate_supported(sd, device: int, rate: int, channels: int) -> bool:
    try:
        sd.check_input_settings(device=device, samplerate=rate, channels=channels,
                                dtype="float32")
        return True
    except Exception:  # PortAudioError or ValueError for an impossible combination
        return False


NATIVE_NOISE = re.compile(r"^(ALSA lib |Expression '|Cannot connect to server|jack|JackShm|"
                          r"PaAlsa|pa_|snd_|Cannot lock down|connect\(2\) call)")
"""Lines PortAudio and ALSA write straight to the process's stderr (file descriptor 2)
while they enumerate devices: a dozen per attempt, useless in the journal."""

_stderr_lock = threading.Lock()


@contextlib.contextmanager
def native_stderr_captured(noise: list[str]):
    """Send file descriptor 2 to a temporary file for the block; afterwards, lines that
    match :data:`NATIVE_NOISE` are appended to ``noise`` (the caller counts and
    summarises them) and every other line (another thread's log line, say) is written
    back to stderr unchanged."""
    with _stderr_lock:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):
            yield
            return
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                yield
            finally:
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                capture.seek(0)
                other = []
                for line in capture.read().decode("utf-8", "replace").splitlines():
                    (noise if NATIVE_NOISE.match(line) else other).append(line)
                if other:
                    with contextlib.suppress(OSError, ValueError):
                        sys.stderr.write("\n".join(other) + "\n")
                        sys.stderr.flush()


def rescan_devices() -> None:
    """Re-initialise PortAudio so devices plugged in (or removed) since it started are
    seen. Only call it while no stream is open."""
    sd = _sounddevice()
    sd._terminate()
    sd._initialize()


def _input_names(sd) -> str:
    names = [f"{i}: {d['name']}" for i, d in enumerate(sd.query_devices())
             if d["max_input_channels"] > 0]
    return ", ".join(names) if names else "none"


def resolve_device(spec: str | int | None) -> tuple[int, dict]:
    """Find the input device for ``spec`` (None = default input, int = index,
    str = case-insensitive name substring, first match wins); return
    ``(index, info)`` or raise :class:`DeviceError` listing the input devices."""
    sd = _sounddevice()
    if isinstance(spec, str) and spec.strip().isdigit():
        spec = int(spec.strip())
    try:
        devices = sd.query_devices()
    except sd.PortAudioError as exc:
        raise DeviceError(f"cannot list audio devices: {exc}") from None
    if spec is None:
        index = sd.default.device[0]
        if index is None or index < 0 or index >= len(devices) \
                or devices[index]["max_input_channels"] <= 0:
            raise DeviceError("no default audio input device; set [audio] device to one of: "
                              + _input_names(sd))
        return int(index), dict(devices[index])
    if isinstance(spec, int):
        if not 0 <= spec < len(devices) or devices[spec]["max_input_channels"] <= 0:
            raise DeviceError(f"audio device index {spec} is not an input device; inputs: "
                              + _input_names(sd))
        return spec, dict(devices[spec])
    needle = str(spec).lower()
    matches = [i for i, d in enumerate(devices)
               if d["max_input_channels"] > 0 and needle in d["name"].lower()]
    if not matches:
        raise DeviceError(f"no audio input device matches {str(spec)!r}; inputs: "
                          + _input_names(sd))
    if len(matches) > 1:
        logger.info("audio device %r matches %d inputs (%s); using the first",
                    spec, len(matches), ", ".join(devices[i]["name"] for i in matches))
    return matches[0], dict(devices[matches[0]])


# --------------------------------------------------------------------------- microphone

@dataclass(frozen=True)
class _Format:
    """Marker put in the queue before the blocks of a newly opened stream."""

    rate: int
    channels: int


class MicSource(AudioSource):
    """Live capture from a PortAudio input device, resilient to the device vanishing.

    ``on_status`` is called from the supervisor thread with ``"connected"`` when
    audio flows (after the first open and after every reconnect) and ``"lost"``
    when the device stops delivering; only changes are reported. A device that is
    not there at :meth:`start` (unplugged, not yet enumerated) is ``"waiting"``: the
    supervisor keeps trying to open it, like after a loss, instead of failing.
    """

    STALL_SECONDS = 2.0
    """No block for this long (or an inactive stream) means the device is lost."""
    POLL_SECONDS = 0.1
    """How often the supervisor looks at the stream."""
    FIRST_BACKOFF_SECONDS = 0.5
    """First wait between reconnect attempts; doubles up to reconnect_max_backoff_seconds."""
    CARD_POLL_SECONDS = 0.25
    """How often /proc/asound/cards is checked for a re-plugged card while waiting."""
    STILL_MISSING_LOG_SECONDS = 3600.0
    """While the device stays away, one line with the count of attempts this often."""

    def __init__(self, settings: "AudioConfig", target_rate: int,
                 on_status: Callable[[str], None] | None = None):
        self.settings = settings
        self.sample_rate = int(target_rate)
        self._on_status = on_status
        maxsize = max(4, math.ceil(settings.queue_seconds / settings.block_seconds))
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._overflows = 0
        self._blocks = 0
        self._stream = None
        self._stream_lock = threading.Lock()
        self._stop = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._resampler: StreamResampler | None = None
        self._channels = 1
        self._reported: str | None = None
        self.device_name: str | None = None
        """Name of the device currently open."""
        self.device_rate: int | None = None
        """Rate the device is captured at (resampled to :attr:`sample_rate` when different)."""
        self.reconnects = 0
        """How many times the stream was re-opened after a loss."""
        self._waiting = False

    # -- public interface

    @property
    def overflows(self) -> int:
        return self._overflows

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def connected(self) -> bool:
        """True while audio is flowing."""
        return self._reported == "connected"

    def start(self) -> None:
        if self._supervisor is not None:
            return
        self._stop.clear()
        sd = _sounddevice()  # a missing PortAudio library stays a one-line error
        try:
            try:
                self._open()
            except DeviceError:
                # PortAudio's device list is a snapshot from its initialisation (often at
                # import): a microphone plugged in since then is only found after a re-scan.
                rescan_devices()
                self._open()
        except (DeviceError, sd.PortAudioError) as exc:
            # not there yet (unplugged, USB still enumerating): wait for it, do not exit
            self._waiting = True
            wanted = ("the default input" if self.settings.device is None
                      else repr(self.settings.device))
            logger.warning("waiting for audio device %s (%s); retrying until it appears",
                           wanted, " ".join(str(exc).split()))
            self._report("waiting")
        self._supervisor = threading.Thread(target=self._supervise, name="mic-supervisor",
                                            daemon=True)
        self._supervisor.start()

    def read(self, timeout: float = 0.5) -> np.ndarray | None:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining > 0:
                    item = self._queue.get(timeout=remaining)
                else:
                    item = self._queue.get_nowait()
            except queue.Empty:
                return None
            if isinstance(item, _Format):  # a (re)opened stream starts here
                tail = self._resampler.flush() if self._resampler is not None else None
                self._channels = item.channels
                self._resampler = StreamResampler(item.rate, self.sample_rate)
                if tail is not None and tail.size:
                    return tail  # the previous stream's last samples, held by the filter
                continue
            if self._resampler is None:  # cannot happen: a marker precedes every stream
                continue
            if item.shape[1] == 1:
                mono = item[:, 0]
            else:
                mono = item.mean(axis=1, dtype=np.float32)
            out = self._resampler.process(mono)
            if out.size:
                return out

    def stop(self) -> None:
        self._stop.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=10.0)
            if self._supervisor.is_alive():
                logger.warning("audio supervisor thread did not stop within 10 s")
            self._supervisor = None
        self._close_stream()

    # -- PortAudio callback: copy and count, nothing else

    def _callback(self, indata, frames, time_info, status) -> None:
        if status.input_overflow:
            self._overflows += 1
        try:
            self._queue.put_nowait(indata.copy())
        except queue.Full:
            self._overflows += 1
        self._blocks += 1

    # -- opening and closing

    def _choose_format(self, sd, index: int, info: dict) -> tuple[int, int]:
        """Capture rate and channel count: the model rate when the device takes it,
        else the configured or default rate (resampled); mono when possible."""
        max_channels = max(1, int(info["max_input_channels"]))
        channel_options = [1] if max_channels == 1 else [1, min(2, max_channels), max_channels]
        if self.settings.sample_rate is not None:
            rates = [int(self.settings.sample_rate)]
        else:
            rates = [self.sample_rate, int(round(info["default_samplerate"]))]
        for rate in dict.fromkeys(rates):
            for channels in dict.fromkeys(channel_options):
                if _rate_supported(sd, index, rate, channels):
                    return rate, channels
        if self.settings.sample_rate is not None:
            raise DeviceError(
                f"audio device {info['name']!r} does not support sample_rate="
                f"{self.settings.sample_rate}; remove [audio] sample_rate to use its default "
                f"({info['default_samplerate']:.0f} Hz) with resampling")
        # Nothing checked out (some ALSA devices refuse the probe): try the default anyway.
        return int(round(info["default_samplerate"])), 1

    def _open(self) -> None:
        """Resolve the device, open and start a stream (raises DeviceError/PortAudioError)."""
        sd = _sounddevice()
        index, info = resolve_device(self.settings.device)
        rate, channels = self._choose_format(sd, index, info)
        blocksize = max(1, int(round(self.settings.block_seconds * rate)))
        stream = sd.InputStream(device=index, samplerate=rate, channels=channels,
                                dtype="float32", blocksize=blocksize,
                                latency=self.settings.latency_seconds,
                                callback=self._callback)
        self._put_marker(_Format(rate, channels))
        try:
            stream.start()
        except Exception:
            stream.close(ignore_errors=True)
            raise
        with self._stream_lock:
            self._stream = stream
        self.device_name = info["name"]
        self.device_rate = rate
        logger.info("audio input %r (index %d) open: %d Hz, %d channel(s), block %d%s",
                    info["name"], index, rate, channels, blocksize,
                    f", resampled to {self.sample_rate} Hz" if rate != self.sample_rate else "")

    def _put_marker(self, marker: _Format) -> None:
        while True:
            try:
                self._queue.put_nowait(marker)
                return
            except queue.Full:  # the reader is far behind: drop the oldest block
                try:
                    self._queue.get_nowait()
                    self._overflows += 1
                except queue.Empty:
                    pass

    def _close_stream(self) -> None:
        with self._stream_lock:
            stream, self._stream = self._stream, None
        if stream is None:
            return
        # abort(), not stop(): stop() waits for buffers to drain, which can block for a
        # long time on a device that has gone away.
        closer = threading.Thread(target=_abort_and_close, args=(stream,),
                                  name="mic-close", daemon=True)
        closer.start()
        closer.join(timeout=5.0)
        if closer.is_alive():
            logger.warning("closing the audio stream hangs; abandoning it")

    # -- supervision

    def _report(self, status: str) -> None:
        if status == self._reported:
            return
        self._reported = status
        if self._on_status is not None:
            try:
                self._on_status(status)
            except Exception:
                logger.exception("audio status callback failed")

    def _supervise(self) -> None:
        if self._waiting:
            if not self._reconnect():
                return
            self._waiting = False
        last_count = self._blocks
        last_change = time.monotonic()
        while not self._stop.wait(self.POLL_SECONDS):
            try:
                count = self._blocks
                now = time.monotonic()
                with self._stream_lock:
                    stream = self._stream
                active = stream is not None and stream.active
                if count != last_count:
                    last_count, last_change = count, now
                    if active:
                        self._report("connected")
                        continue
                if active and now - last_change <= self.STALL_SECONDS:
                    continue
                reason = ("stream stopped" if not active
                          else f"no audio for {now - last_change:.1f} s")
                logger.warning("audio input %r lost (%s); retrying quietly until it is back",
                               self.device_name, reason)
                self._report("lost")
                self._close_stream()
                if not self._reconnect():
                    return
                last_count = self._blocks
                last_change = time.monotonic()
            except Exception:  # supervise, don't crash
                logger.exception("audio supervisor error; retrying")
                self._stop.wait(1.0)

    def _reconnect(self) -> bool:
        """Re-open with backoff until it works (True) or stop() is called (False).

        Attempts start FIRST_BACKOFF_SECONDS apart, doubling up to
        ``reconnect_max_backoff_seconds`` (start to start, so a slow failing open does
        not stretch the interval). A change in the kernel's sound-card list (a USB
        microphone plugged back in) triggers the next attempt at once.
        """
        sd = _sounddevice()
        max_delay = float(self.settings.reconnect_max_backoff_seconds)
        delay = min(self.FIRST_BACKOFF_SECONDS, max_delay)
        attempt = 0
        started = last_note = time.monotonic()
        suppressed = 0
        while not self._stop.is_set():
            attempt += 1
            began = time.monotonic()
            cards = _sound_cards()
            noise: list[str] = []
            try:
                # Re-scan: PortAudio enumerates devices only at initialisation, so a
                # re-plugged USB microphone is invisible until it is re-initialised.
                # PortAudio/ALSA print a dozen lines to stderr per scan: counted instead.
                with native_stderr_captured(noise):
                    rescan_devices()
                    self._open()
                self.reconnects += 1
                suppressed += len(noise)
                logger.info("audio input back after %.0f s and %d attempt(s)%s",
                            time.monotonic() - started, attempt,
                            f" ({suppressed} PortAudio/ALSA messages suppressed)"
                            if suppressed else "")
                return True
            except (DeviceError, sd.PortAudioError) as exc:
                suppressed += len(noise)
                for line in noise:
                    logger.debug("PortAudio/ALSA: %s", line)
                logger.debug("audio input not available yet (%s); retrying in %.1f s",
                             exc, delay)
                if began - last_note >= self.STILL_MISSING_LOG_SECONDS:
                    last_note = began
                    logger.warning("audio input still missing after %.0f min: %d attempt(s), "
                                   "%d PortAudio/ALSA messages suppressed (last: %s)",
                                   (began - started) / 60, attempt, suppressed, exc)
            next_attempt = began + delay
            while not self._stop.is_set():
                remaining = next_attempt - time.monotonic()
                if remaining <= 0:
                    break
                if self._stop.wait(min(remaining, self.CARD_POLL_SECONDS)):
                    return False
                if _sound_cards() != cards:
                    logger.info("sound card list changed; retrying now")
                    break
            delay = min(delay * 2, max_delay)
        return False


def _sound_cards() -> str | None:
    """The kernel's list of sound cards (Linux), cheap to poll; None elsewhere."""
    try:
        with open("/proc/asound/cards", encoding="utf-8", errors="replace") as cards:
            return cards.read()
    except OSError:
        return None


def _abort_and_close(stream) -> None:
    try:
        stream.abort(ignore_errors=True)
        stream.close(ignore_errors=True)
    except Exception:
        logger.debug("error while closing the audio stream", exc_info=True)


# --------------------------------------------------------------------------- files

FILE_RATE_RANGE = (1000, 768_000)
"""Sample rates (Hz) a file may declare. Far below, the resampler's filter delay spans
the whole file (a 1.2 kB WAV at 1 Hz once took 1.2 GB); no recording is made there."""
MAX_READ_FRAMES = 1 << 16
"""Longest block (in frames of the file) handed on, whatever the rate."""
DECODE_SECONDS = 4.0
"""Audio decoded per soundfile read; split into blocks of ``block_seconds`` afterwards.
Each read costs libsndfile seeks and Python overhead whatever its length, so decoding
many blocks at once makes replay cheaper; the blocks are the same as one read each."""
MAX_DECODE_SAMPLES = 1 << 20
"""Samples (frames x channels) decoded per read at most: 4 MB of float32, so memory
stays bounded at any rate and channel count."""
CLIP_WARN_PEAK = 1.0 + 1e-3
"""A file whose samples exceed this magnitude gets one warning: they are clipped (float
files may overshoot full scale a little; far beyond it, the file is mis-scaled)."""
MAX_BLOCK_SECONDS = 1.0
"""Longest block handed to the pipeline (resampler output is split beyond it)."""
_WAV_PCM_BITS = {1: (8, 16, 24, 32), 3: (32, 64)}  # format tag -> bits per sample


def _check_wav_header(path: Path) -> None:
    """Refuse a RIFF/WAVE header whose bit depth is not one PCM/float WAV uses; warn
    (one line) when its data chunk claims more bytes than the file holds.

    libsndfile reads a header claiming 7 bits as 8-bit audio; such a file is broken
    or crafted, and its samples would be misread, so it is one line instead. It
    also quietly reads a WAV cut short (or whose header claims 4 GB) up to the end
    of the file: the audio there is still played, and the warning says so.
    """
    import struct

    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
        return
    pos = 12
    bytes_per_second = 0
    while pos + 8 <= len(head):
        chunk, size = head[pos:pos + 4], struct.unpack("<I", head[pos + 4:pos + 8])[0]
        if chunk == b"fmt " and pos + 24 <= len(head):
            tag, _channels, _rate, bytes_per_second, _align, bits = struct.unpack(
                "<HHIIHH", head[pos + 8:pos + 24])
            if tag in _WAV_PCM_BITS and bits not in _WAV_PCM_BITS[tag]:
                kind = "PCM" if tag == 1 else "float"
                raise AudioError(f"{path}: WAV header claims {bits} bits per sample, which "
                                 f"{kind} WAV does not use ({', '.join(map(str, _WAV_PCM_BITS[tag]))}); "
                                 "the file is damaged")
        elif chunk == b"data":
            held = path.stat().st_size - (pos + 8)
            if head[:4] == b"RIFF" and size > held and bytes_per_second > 0:
                logger.warning("%s: the WAV header announces %.2f s of audio but the file holds "
                               "%.2f s (cut short, or a damaged header); the %.2f s there are "
                               "processed", path, size / bytes_per_second,
                               max(0, held) / bytes_per_second, max(0, held) / bytes_per_second)
            return
        pos += 8 + size + (size & 1)


def _soundfile_message(exc: Exception) -> str:
    text = getattr(exc, "error_string", None) or str(exc)
    text = text.strip().rstrip(".")
    return text.splitlines()[0] if text else type(exc).__name__


class FileSource(AudioSource):
    """Replay of an audio file (WAV, FLAC, OGG/Vorbis, anything libsndfile reads).

    Decoded :data:`DECODE_SECONDS` at a time (a whole number of blocks) and handed on
    in blocks of ``block_seconds`` of the file's rate, downmixed to mono,
    resampled to ``target_rate``, NaN/inf replaced by 0 (one warning) and samples
    outside [-1, 1] clipped. With ``realtime=True`` :meth:`read` sleeps so blocks
    come at the wall-clock rate, like a microphone. :meth:`read` raises
    :class:`EOFError` once the file is exhausted. A file that cannot be opened or
    decoded raises :class:`AudioError` in the constructor; a decoding error later
    in the file (truncated data) ends the stream early with one warning.
    """

    def __init__(self, path: str | Path, target_rate: int, realtime: bool = False,
                 block_seconds: float = 0.05):
        import soundfile as sf

        self.path = Path(path)
        self.sample_rate = int(target_rate)
        self.realtime = bool(realtime)
        if not block_seconds > 0:
            raise AudioError(f"block_seconds={block_seconds} must be > 0")
        name = str(self.path)
        if not self.path.exists():
            raise AudioError(f"{name}: file not found")
        if self.path.is_dir():
            raise AudioError(f"{name}: is a directory, not an audio file")
        if not self.path.is_file():
            raise AudioError(f"{name}: is not a regular file (a device, FIFO or socket); "
                             "pass an audio file")
        if self.path.stat().st_size == 0:
            raise AudioError(f"{name}: empty file (0 bytes), not audio")
        _check_wav_header(self.path)
        try:
            self._file = sf.SoundFile(name)
        except Exception as exc:  # LibsndfileError, RuntimeError, TypeError from odd headers
            raise AudioError(f"{name}: not a readable audio file ({_soundfile_message(exc)})") \
                from None
        if self._file.samplerate <= 0 or self._file.channels <= 0:
            self._file.close()
            raise AudioError(f"{name}: invalid header (rate {self._file.samplerate} Hz, "
                             f"{self._file.channels} channels)")
        low, high = FILE_RATE_RANGE
        if not low <= self._file.samplerate <= high:
            rate = self._file.samplerate
            self._file.close()
            raise AudioError(f"{name}: header declares {rate} Hz; audio files are read at "
                             f"{low}..{high} Hz (a damaged header?)")
        self.source_rate = int(self._file.samplerate)
        """Sample rate of the file."""
        self.channels = int(self._file.channels)
        """Channels in the file (downmixed to mono)."""
        self.frames = int(self._file.frames) if self._file.frames is not None else 0
        """Frames the header announces (a truncated file may hold fewer)."""
        self._block_frames = min(MAX_READ_FRAMES,
                                 max(1, int(round(block_seconds * self.source_rate))))
        per_read = min(int(DECODE_SECONDS * self.source_rate),
                       MAX_DECODE_SAMPLES // self.channels)
        self._decode_frames = self._block_frames * max(1, per_read // self._block_frames)
        self._chunk: np.ndarray | None = None  # decoded, cleaned mono samples
        self._chunk_pos = 0  # next block starts here in _chunk
        self._chunk_start = 0  # frame of the file where _chunk starts
        self._max_out = max(1, int(MAX_BLOCK_SECONDS * self.sample_rate))
        self._carry: np.ndarray | None = None  # resampled samples beyond _max_out
        self._resampler = StreamResampler(self.source_rate, self.sample_rate)
        self._emitted = 0
        self._read_frames = 0
        self._exhausted = False
        self._flushed = False
        self._nonfinite = 0
        self._clipped = False
        self._t0: float | None = None
        # Decode the first samples now so a corrupt file fails here, with one line.
        try:
            first = self._decode()
        except Exception as exc:
            self._file.close()
            raise AudioError(f"{name}: cannot decode audio ({_soundfile_message(exc)})") from None
        if first is None:
            self._file.close()
            raise AudioError(f"{name}: contains no audio samples")
        self._pending: np.ndarray | None = first

    @property
    def duration_seconds(self) -> float:
        """Duration the header announces."""
        return self.frames / self.source_rate

    @property
    def position_seconds(self) -> float:
        """Seconds of audio (at the target rate) returned so far."""
        return self._emitted / self.sample_rate

    @property
    def nonfinite_samples(self) -> int:
        """NaN/inf samples that were replaced by 0."""
        return self._nonfinite

    def start(self) -> None:
        self._t0 = time.monotonic()

    def _decode(self) -> np.ndarray | None:
        """Decode the next ``_decode_frames`` frames (None at the end of the file).

        A read that fails part-way (damaged data) is retried from its start one block
        at a time, so every block before the damage is still played, as with one read
        per block; the exception of the failing block is raised.
        """
        start = self._chunk_start
        try:
            raw = self._file.read(self._decode_frames, dtype="float32", always_2d=True)
        except Exception:
            if self._decode_frames == self._block_frames:
                raise
            self._decode_frames = self._block_frames  # small reads from here on
            self._file.seek(start)
            return self._decode()
        if len(raw) == 0:
            return None
        self._chunk_start = start + len(raw)
        return raw

    def _next_raw(self) -> np.ndarray | None:
        """The next decoded, not yet cleaned read (None once the file is exhausted)."""
        if self._pending is not None:
            raw, self._pending = self._pending, None
            return raw
        if self._exhausted:
            return None
        try:
            raw = self._decode()
        except Exception as exc:
            logger.warning("%s: decoding stopped at %.2f s (%s); the rest of the file is skipped",
                           self.path, self._read_frames / self.source_rate,
                           _soundfile_message(exc))
            raw = None
        if raw is None:
            self._exhausted = True
        return raw

    def _next_block(self) -> np.ndarray | None:
        """The next ``_block_frames`` clean mono samples (the last may be shorter)."""
        if self._chunk is None or self._chunk_pos >= self._chunk.size:
            raw = self._next_raw()
            if raw is None:
                return None
            self._chunk, self._chunk_pos = self._clean(raw), 0
        start = self._chunk_pos
        self._chunk_pos = start + self._block_frames
        return self._chunk[start:self._chunk_pos]

    def _clean(self, block: np.ndarray) -> np.ndarray:
        if self.channels == 1:
            mono = block[:, 0]
        else:
            mono = block.mean(axis=1, dtype=np.float32)
        finite = np.isfinite(mono)
        if not finite.all():
            bad = int(mono.size - np.count_nonzero(finite))
            if self._nonfinite == 0:
                first = self._read_frames + int(np.argmin(finite))
                logger.warning("%s: NaN/inf samples replaced by 0 (first at %.2f s)",
                               self.path, first / self.source_rate)
            self._nonfinite += bad
            mono = np.where(finite, mono, np.float32(0.0))
        peak = float(np.max(np.abs(mono))) if mono.size else 0.0
        if peak > CLIP_WARN_PEAK and not self._clipped:
            self._clipped = True
            first = self._read_frames + int(np.argmax(np.abs(mono) > 1.0))
            logger.warning("%s: samples outside [-1, 1] (peak %.3g = %+.0f dBFS, first at "
                           "%.2f s) are clipped to +-1, which distorts what the model hears and "
                           "the level; scale the file to full scale (float audio stored x%.3g?)",
                           self.path, peak, 20.0 * np.log10(peak),
                           first / self.source_rate, peak)
        self._read_frames += len(block)
        return np.clip(mono, -1.0, 1.0, out=np.array(mono, dtype=np.float32, copy=True))

    def read(self, timeout: float = 0.5) -> np.ndarray:
        if self._t0 is None:
            self.start()
        if self._carry is not None:
            out, self._carry = self._carry, None
        else:
            out = self._read_resampled()
        if out.size > self._max_out:
            out, self._carry = out[:self._max_out], out[self._max_out:]
        self._emitted += out.size
        if self.realtime:
            wait = self._t0 + self._emitted / self.sample_rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        return out

    def _read_resampled(self) -> np.ndarray:
        while True:
            block = self._next_block()
            if block is None:
                if self._flushed:
                    raise EOFError(f"{self.path}: end of file")
                self._flushed = True
                out = self._resampler.flush()
                self._file.close()
            else:
                out = self._resampler.process(block)
            if out.size:
                return out

    def stop(self) -> None:
        if not self._file.closed:
            self._file.close()
