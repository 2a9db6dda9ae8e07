"""Warnings at a bounded rate: a flood of bad input must not become a flood of log lines.

:class:`RateLimitedLog` lets ``burst`` lines through per ``period_seconds``;
the rest go to the debug log and are counted, and the next line that gets
through says how many were held back. The clock is passed in for tests.
"""

from __future__ import annotations

import logging
import time
from typing import Callable


class RateLimitedLog:
    """At most ``burst`` lines per ``period_seconds`` on one logger and level."""

    def __init__(self, logger: logging.Logger, period_seconds: float = 60.0, burst: int = 5,
                 level: int = logging.WARNING, clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.period = float(period_seconds)
        self.burst = int(burst)
        self.level = level
        self.clock = clock
        self._window_start: float | None = None
        self._in_window = 0
        self.suppressed = 0
        """Lines held back since the last line that got through."""

    def log(self, msg: str, *args) -> bool:
        """Log ``msg % args`` if the budget allows; True when it was logged."""
        now = self.clock()
        if self._window_start is None or now - self._window_start >= self.period:
            self._window_start, self._in_window = now, 0
        if self._in_window >= self.burst:
            self.suppressed += 1
            self.logger.debug(msg, *args)
            return False
        self._in_window += 1
        if self.suppressed:
            msg += " (%d similar line(s) suppressed)"
            args = (*args, self.suppressed)
            self.suppressed = 0
        self.logger.log(self.level, msg, *args)
        return True
