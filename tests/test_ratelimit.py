"""RateLimitedLog: a bounded number of lines per period, the rest counted."""

from __future__ import annotations

import logging

from detector.ratelimit import RateLimitedLog


def test_burst_per_period_then_a_count_of_the_held_back(caplog):
    now = [0.0]
    log = RateLimitedLog(logging.getLogger("test.rl"), period_seconds=60, burst=3,
                         clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.rl"):
        passed = [log.log("bad %d", i) for i in range(10)]
        assert passed == [True] * 3 + [False] * 7
        now[0] = 61.0
        assert log.log("bad %d", 10)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert lines == ["bad 0", "bad 1", "bad 2", "bad 10 (7 similar line(s) suppressed)"]
