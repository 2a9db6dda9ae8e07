"""A bounded, ordered queue of MQTT messages that must not be lost.

Events and per-label state changes go into an outbox first; the MQTT delivery
thread takes the oldest message, publishes it, waits for the broker's PUBACK and
only then removes it (:meth:`Outbox.peek` / :meth:`Outbox.remove`). While the
broker is away, messages accumulate up to ``max_messages``; beyond that the
oldest are dropped with a logged warning that counts them.

Two implementations share the interface:

- :class:`MemoryOutbox` — a deque; survives broker outages, not daemon restarts.
- :class:`SqliteOutbox` — an SQLite file (WAL, ``synchronous=FULL``): a message
  put in the outbox survives a crash or reboot and is delivered by the next run.
  A crash between the PUBACK and the delete sends that one message again on the
  next start; subscribers de-duplicate by the event's ``(id, type)``.

A message that can never be delivered (a topic longer than MQTT's 65,535 bytes,
say) must not block the ones behind it: :meth:`Outbox.set_aside` moves it out of
the queue into a separate store (the ``undeliverable`` table of the SQLite file,
or a bounded list in memory), where it is kept and counted, and the queue flows on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .private import private_dir, private_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    """One queued MQTT publication."""

    seq: int
    """Position in the queue (increasing; unique within one outbox)."""
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox:
    """Interface and shared bookkeeping; use :func:`open_outbox`."""

    def __init__(self, max_messages: int):
        if max_messages < 1:
            raise ConfigError(f"mqtt.queue_max_events={max_messages} must be >= 1")
        self.max_messages = max_messages
        self.dropped = 0
        """Messages dropped because the outbox was full (since this process started)."""
        self.set_aside_count = 0
        """Messages moved aside as undeliverable (since this process started)."""
        self._cond = threading.Condition()

    def put(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        """Append a message; drops the oldest (with a warning) when full."""
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        with self._cond:
            dropped = self._append(topic, bytes(payload), int(qos), bool(retain))
            if dropped:
                self.dropped += dropped
                logger.warning("MQTT outbox full (%d messages): dropped the %d oldest, "
                               "%d dropped in total", self.max_messages, dropped, self.dropped)
            self._cond.notify_all()

    def peek(self, timeout: float | None = None) -> Message | None:
        """The oldest message without removing it; waits up to ``timeout`` seconds."""
        with self._cond:
            message = self._first()
            if message is None and timeout:
                self._cond.wait(timeout)
                message = self._first()
            return message

    def remove(self, seq: int) -> None:
        """Remove a delivered message (no-op if it was dropped meanwhile)."""
        with self._cond:
            self._delete(seq)

    def set_aside(self, message: Message, reason: str) -> None:
        """Move an undeliverable message out of the queue, keeping it with ``reason``."""
        with self._cond:
            self._set_aside(message, str(reason))
            self.set_aside_count += 1
            self._cond.notify_all()

    @property
    def undeliverable(self) -> int:
        """Messages kept aside as undeliverable (for the SQLite outbox: in the file)."""
        with self._cond:
            return self._count_aside()

    def __len__(self) -> int:
        with self._cond:
            return self._count()

    def wake(self) -> None:
        """Wake a thread blocked in :meth:`peek` (used at shutdown)."""
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """Release resources; queued messages stay on disk for the SQLite outbox."""

    # implemented by subclasses; called with the lock held
    def _append(self, topic: str, payload: bytes, qos: int, retain: bool) -> int:
        raise NotImplementedError

    def _first(self) -> Message | None:
        raise NotImplementedError

    def _delete(self, seq: int) -> None:
        raise NotImplementedError

    def _count(self) -> int:
        raise NotImplementedError

    def _set_aside(self, message: Message, reason: str) -> None:
        raise NotImplementedError

    def _count_aside(self) -> int:
        raise NotImplementedError


class MemoryOutbox(Outbox):
    """In-memory outbox: ordered, bounded, lost when the process exits."""

    def __init__(self, max_messages: int):
        super().__init__(max_messages)
        self._items: deque[Message] = deque()
        self._next = 1
        self.aside: deque[tuple[Message, str]] = deque(maxlen=max_messages)
        """Undeliverable messages with their reason (the newest ``max_messages``)."""

    def _append(self, topic, payload, qos, retain):
        self._items.append(Message(self._next, topic, payload, qos, retain))
        self._next += 1
        dropped = 0
        while len(self._items) > self.max_messages:
            self._items.popleft()
            dropped += 1
        return dropped

    def _first(self):
        return self._items[0] if self._items else None

    def _delete(self, seq):
        if self._items and self._items[0].seq == seq:
            self._items.popleft()
            return
        for item in self._items:
            if item.seq == seq:
                self._items.remove(item)
                return

    def _count(self):
        return len(self._items)

    def _set_aside(self, message, reason):
        self._delete(message.seq)
        self.aside.append((message, reason))

    def _count_aside(self):
        return len(self.aside)


class SqliteOutbox(Outbox):
    """On-disk outbox in one SQLite file; survives daemon restarts and crashes."""

    def __init__(self, path: str | Path, max_messages: int):
        import sqlite3  # only for an on-disk queue (a replay or memory queue never loads it)

        super().__init__(max_messages)
        self._sqlite_error = sqlite3.Error
        self.path = Path(path).expanduser()
        try:
            private_dir(self.path.parent)
            private_file(self.path)  # SQLite gives its -wal/-shm files the database's mode
            for suffix in ("-wal", "-shm"):
                extra = self.path.with_name(self.path.name + suffix)
                if extra.exists():
                    private_file(extra)
            # used from the pipeline thread (put) and the delivery thread (peek/remove),
            # always under self._cond
            self._db = sqlite3.connect(str(self.path), check_same_thread=False,
                                       isolation_level=None, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                "topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, "
                "retain INTEGER NOT NULL)")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS undeliverable (seq INTEGER PRIMARY KEY, "
                "topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, "
                "retain INTEGER NOT NULL, reason TEXT NOT NULL, set_aside_at REAL NOT NULL)")
            pending = self._count()
            aside = self._count_aside()
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"mqtt.queue_path={str(self.path)!r} cannot be used as an SQLite "
                              f"queue ({exc}); point it at a writable file, e.g. "
                              "/var/lib/sound-detector/outbox.sqlite") from None
        if pending:
            logger.info("MQTT outbox %s holds %d undelivered message(s) from a previous run",
                        self.path, pending)
        if aside:
            logger.warning("MQTT outbox %s keeps %d undeliverable message(s) set aside in its "
                           "'undeliverable' table (inspect with sqlite3; they are not retried)",
                           self.path, aside)

    def _append(self, topic, payload, qos, retain):
        with self._db:  # one transaction: insert + trim
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT INTO outbox (topic, payload, qos, retain) VALUES (?, ?, ?, ?)",
                             (topic, payload, qos, int(retain)))
            count = self._count()
            dropped = max(0, count - self.max_messages)
            if dropped:
                self._db.execute("DELETE FROM outbox WHERE seq IN "
                                 "(SELECT seq FROM outbox ORDER BY seq LIMIT ?)", (dropped,))
        return dropped

    def _first(self):
        row = self._db.execute(
            "SELECT seq, topic, payload, qos, retain FROM outbox ORDER BY seq LIMIT 1").fetchone()
        if row is None:
            return None
        return Message(int(row[0]), str(row[1]), bytes(row[2]), int(row[3]), bool(row[4]))

    def _delete(self, seq):
        self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    def _count(self):
        return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def _set_aside(self, message, reason):
        with self._db:  # one transaction: copy, delete, trim to the newest max_messages
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO undeliverable (seq, topic, payload, qos, retain, reason, "
                "set_aside_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (message.seq, message.topic, message.payload, message.qos, int(message.retain),
                 reason, time.time()))
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (message.seq,))
            self._db.execute("DELETE FROM undeliverable WHERE seq NOT IN (SELECT seq FROM "
                             "undeliverable ORDER BY seq DESC LIMIT ?)", (self.max_messages,))

    def _count_aside(self):
        return int(self._db.execute("SELECT COUNT(*) FROM undeliverable").fetchone()[0])

    def close(self):
        with self._cond:
            try:
                self._db.close()
            except self._sqlite_error:  # pragma: no cover - closing twice / disk gone
                logger.exception("closing MQTT outbox %s", self.path)


def open_outbox(max_messages: int, path: str | None = None) -> Outbox:
    """An SQLite outbox at ``path`` when given, else an in-memory one."""
    if path:
        return SqliteOutbox(path, max_messages)
    return MemoryOutbox(max_messages)
