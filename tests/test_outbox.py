"""The outbox: ordered, bounded, and (with SQLite) durable across restarts."""

from __future__ import annotations

import logging
import os
import threading

import pytest

from detector.errors import ConfigError
from detector.publish.outbox import MemoryOutbox, SqliteOutbox, open_outbox


@pytest.fixture(params=["memory", "sqlite"])
def make_outbox(request, tmp_path):
    def make(max_messages=100):
        if request.param == "memory":
            return MemoryOutbox(max_messages)
        return SqliteOutbox(tmp_path / "q" / "outbox.sqlite", max_messages)
    return make


def drain(box):
    seen = []
    while (message := box.peek()) is not None:
        seen.append(message)
        box.remove(message.seq)
    return seen


def test_fifo_order_and_fields(make_outbox):
    box = make_outbox()
    box.put("a/events", b'{"id": 1}', qos=1, retain=False)
    box.put("a/siren/state", "ON", qos=1, retain=True)
    box.put("a/events", b'{"id": 2}')
    assert len(box) == 3
    first = box.peek()
    assert box.peek() == first, "peek must not remove"
    messages = drain(box)
    assert [(m.topic, m.payload, m.qos, m.retain) for m in messages] == [
        ("a/events", b'{"id": 1}', 1, False), ("a/siren/state", b"ON", 1, True),
        ("a/events", b'{"id": 2}', 1, False)]
    assert len(box) == 0 and box.peek() is None
    box.close()


def test_full_outbox_drops_oldest_and_counts(make_outbox, caplog):
    box = make_outbox(max_messages=3)
    with caplog.at_level(logging.WARNING, logger="detector.publish.outbox"):
        for i in range(500):
            box.put("n/events" if i % 2 else "n/siren/state", str(i))
    assert box.dropped == 497 and box.lost == 497 and box.events_lost == 248
    assert [m.payload for m in drain(box)] == [b"497", b"498", b"499"]
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    # counted, not logged one by one: the first loss at once, the rest in the interval's line
    assert len(lines) == 1 and lines[0].levelno == logging.ERROR
    assert "LOST 1 message(s)" in lines[0].getMessage()
    box.close()  # the losses not yet reported are reported at shutdown
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 2 and "LOST 496 message(s) (248 event(s))" in lines[1]
    assert "497 message(s) (248 event(s)) lost since start" in lines[1]


def test_loss_report_is_one_line_per_interval():
    from detector.publish.outbox import LossReport

    now = [0.0]
    seen = []
    log = logging.getLogger("test.loss")
    report = LossReport(log, period_seconds=60.0, clock=lambda: now[0],
                        on_report=lambda count, total, reason: seen.append((count, total)))
    for step in range(300):  # one loss a second for five minutes
        now[0] = float(step)
        report.add(1, 1, "disk full")
    report.flush()
    assert seen == [(1, 1), (60, 61), (60, 121), (60, 181), (60, 241), (59, 300)]
    assert report.total == report.events_total == 300


def test_removing_a_dropped_message_is_harmless(make_outbox):
    box = make_outbox(max_messages=1)
    box.put("t", "old")
    head = box.peek()
    box.put("t", "new")  # drops "old" while it is "in flight"
    box.remove(head.seq)
    assert [m.payload for m in drain(box)] == [b"new"]


def test_peek_waits_for_a_put(make_outbox):
    box = make_outbox()
    got = []
    reader = threading.Thread(target=lambda: got.append(box.peek(timeout=30)))
    reader.start()
    box.put("t", "x")
    reader.join(30)
    assert not reader.is_alive()
    assert got and got[0] is not None and got[0].payload == b"x"


def test_sqlite_outbox_survives_reopen(tmp_path):
    path = tmp_path / "outbox.sqlite"
    box = SqliteOutbox(path, 10)
    for i in range(4):
        box.put("t", str(i), retain=i % 2 == 1)
    box.remove(box.peek().seq)  # delivered before the "crash"
    box.close()
    again = SqliteOutbox(path, 10)
    assert len(again) == 3
    messages = drain(again)
    assert [(m.payload, m.retain) for m in messages] == [(b"1", True), (b"2", False), (b"3", True)]
    again.put("t", "later")
    assert again.peek().seq > messages[-1].seq, "sequence numbers never go back"
    mode = again._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode.lower() == "wal"
    again.close()


def test_concurrent_producers_keep_every_message(make_outbox):
    box = make_outbox(max_messages=10_000)

    def produce(name):
        for i in range(60):
            box.put("t", f"{name}-{i}")

    threads = [threading.Thread(target=produce, args=(n,)) for n in "abc"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    payloads = [m.payload.decode() for m in drain(box)]
    assert len(payloads) == 180
    for name in "abc":  # each producer's messages keep their order
        mine = [p for p in payloads if p.startswith(name)]
        assert mine == [f"{name}-{i}" for i in range(60)]


def test_unusable_queue_path_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError) as info:
        open_outbox(10, str(blocker / "outbox.sqlite"))
    assert "mqtt.queue_path" in str(info.value) and "\n" not in str(info.value)
    not_sqlite = tmp_path / "garbage.sqlite"
    not_sqlite.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="cannot be used as an SQLite queue"):
        open_outbox(10, str(not_sqlite))
    with pytest.raises(ConfigError, match="queue_max_events"):
        open_outbox(0)


def test_a_second_daemon_on_the_same_outbox_is_refused_in_one_line(tmp_path):
    """The lock is taken per open file description, so two outboxes in one process
    behave like two processes; the daemon-level test is in test_outbox_faults.py."""
    path = tmp_path / "q" / "outbox.sqlite"
    first = SqliteOutbox(path, 10)
    with pytest.raises(ConfigError) as info:
        SqliteOutbox(path, 10)
    message = str(info.value)
    assert "in use by another running sound-detector" in message and "\n" not in message
    assert f"pid {os.getpid()}" in message
    first.close()  # released: the next daemon may take it
    SqliteOutbox(path, 10).close()
