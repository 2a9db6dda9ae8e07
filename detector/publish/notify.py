"""systemd notification protocol (``sd_notify``) without libsystemd.

With ``Type=notify`` systemd sets ``NOTIFY_SOCKET`` (a filesystem path or an
abstract ``@name``) and, with ``WatchdogSec=``, ``WATCHDOG_USEC``. This sink sends
datagrams to it:

- ``READY=1`` when the pipeline starts (``systemctl start`` returns then);
- ``WATCHDOG=1`` from :meth:`NotifySink.window`, i.e. from the audio loop itself,
  at most every ``WATCHDOG_USEC / 2``: if the loop stalls the pings stop and
  systemd restarts the service (``Restart=on-failure`` covers watchdog kills);
- while the input device is reported lost no windows are processed, so a small
  thread keeps pinging until it is back (the capture supervisor is retrying;
  restarting the daemon would not help);
- ``STATUS=…`` lines shown by ``systemctl status``; ``STOPPING=1`` at close.

Without ``NOTIFY_SOCKET`` (not under systemd) every method is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Callable, Mapping

from detector.publish.sink import Sink

logger = logging.getLogger(__name__)


def _address(value: str) -> str | bytes:
    if value.startswith("@"):  # abstract namespace socket
        return b"\0" + value[1:].encode()
    return value


class Notifier:
    """Sends ``sd_notify`` datagrams; silent no-op when ``NOTIFY_SOCKET`` is unset."""

    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        target = env.get("NOTIFY_SOCKET") or ""
        self.address = _address(target) if target else None
        self.watchdog_seconds: float | None = None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if usec and (not pid or pid == str(os.getpid())):
            try:
                self.watchdog_seconds = int(usec) / 1e6 if int(usec) > 0 else None
            except ValueError:
                logger.warning("ignoring WATCHDOG_USEC=%r (not an integer)", usec)
        self._sock: socket.socket | None = None
        self._failed = False
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; False if it could not be sent."""
        if self._sock is None:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode("utf-8", "replace"), self.address)
        except OSError as exc:
            if not self._failed:  # systemd gone or socket vanished: say it once
                logger.warning("sd_notify to NOTIFY_SOCKET failed: %s", exc)
                self._failed = True
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class NotifySink(Sink):
    """READY / WATCHDOG / STATUS / STOPPING for a ``Type=notify`` systemd service."""

    def __init__(self, env: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 device: str | int | None = None):
        self.notifier = Notifier(env)
        self.device = device
        """``audio.device`` as configured (named in the waiting STATUS)."""
        self.clock = clock
        wd = self.notifier.watchdog_seconds
        self.ping_interval = wd / 2.0 if wd else None
        """Seconds between WATCHDOG=1 pings (half of WatchdogSec), None without a watchdog."""
        self._last_ping: float | None = None
        self._lock = threading.Lock()
        self._device_lost = threading.Event()
        self._closed = threading.Event()
        self._keeper: threading.Thread | None = None
        self.windows = 0
        self._base_status = ""
        self._listening = ""
        self._device_state: str | None = None
        self._mqtt_problem: str | None = None

    def start(self, labels, model_version):
        if not self.notifier.enabled:
            return
        self._listening = f"listening for {len(labels)} labels (model {model_version})"
        if self._device_state is None:
            self._base_status = self._listening
        self.notifier.send("READY=1", self._status_line())
        self._ping(force=True)
        if self.ping_interval:
            logger.info("systemd watchdog: pinging every %.1f s from the audio loop",
                        self.ping_interval)

    def _ping(self, force: bool = False) -> None:
        if not self.ping_interval:
            return
        now = self.clock()
        with self._lock:
            if not force and self._last_ping is not None and now - self._last_ping < self.ping_interval:
                return
            self._last_ping = now
        self.notifier.send("WATCHDOG=1")

    def window(self, scores, level_dbfs, now, timing):
        self.windows += 1
        if self.notifier.enabled:
            self._ping()

    def _status_line(self) -> str:
        line = self._base_status
        if self._mqtt_problem:
            line += f"; MQTT: {self._mqtt_problem}"
        return "STATUS=" + line

    def mqtt_state(self, state: str) -> None:
        """The MQTT sink's ``on_state``: ``"connected"`` or a one-line problem (any thread)."""
        self._mqtt_problem = None if state == "connected" else " ".join(str(state).split())
        if self.notifier.enabled and self._base_status:
            self.notifier.send(self._status_line())

    def status(self, key, value):
        if key != "device" or not self.notifier.enabled:
            return
        previous, self._device_state = self._device_state, value
        if value in ("lost", "waiting"):
            # no windows run meanwhile: a helper keeps the watchdog fed (a restart
            # would not bring the microphone back)
            wanted = "(the default input)" if self.device is None else repr(self.device)
            self._base_status = ("audio device lost; retrying" if value == "lost"
                                 else f"waiting for audio device {wanted}; retrying")
            self.notifier.send(self._status_line())
            self._device_lost.set()
            if self.ping_interval and (self._keeper is None or not self._keeper.is_alive()):
                self._keeper = threading.Thread(target=self._keep_alive, name="watchdog-keeper",
                                                daemon=True)
                self._keeper.start()
        else:
            self._device_lost.clear()
            if previous not in ("lost", "waiting"):
                return  # the first audio after a normal start: STATUS already says listening
            back = "; audio device back" if previous == "lost" else ""
            self._base_status = (self._listening or "listening") + back
            self.notifier.send(self._status_line())

    def _keep_alive(self) -> None:
        while self._device_lost.is_set() and not self._closed.is_set():
            self._ping()
            self._closed.wait(self.ping_interval / 2.0)

    def close(self):
        self._closed.set()
        if self.notifier.enabled:
            self.notifier.send("STOPPING=1", "STATUS=stopping")
        if self._keeper is not None:
            self._keeper.join(5)
        self.notifier.close()
