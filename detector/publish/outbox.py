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

Nothing is lost quietly. A write the SQLite file refuses (a full disk, an I/O
error) does not raise into the pipeline: the message is *held in memory* (at most
``max_messages``, in order behind the ones on disk) and written as soon as the file
takes writes again; held messages are delivered straight from memory meanwhile.
Every message that is lost all the same — the outbox full (``queue_max_events``)
or the memory hold full, or held messages still unwritten at shutdown — is
counted (:attr:`Outbox.lost`, :attr:`Outbox.events_lost`) and reported by
:class:`LossReport`: one ERROR line at the first loss, then at most one per
:data:`LOSS_REPORT_SECONDS` with the count, never one line per message.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from detector.errors import ConfigError
from detector.private import lock_file, private_dir, private_file, unlock_file

logger = logging.getLogger(__name__)

LOSS_REPORT_SECONDS = 60.0
"""Lost messages are reported in one ERROR line at the first loss, then at most this often."""
MIN_FREE_BYTES = 64_000_000
"""At start, a warning when the outbox's filesystem has less free space than this."""
RETRY_SECONDS = 1.0
"""Messages held in memory after a failed write are written again at most this often
when no new message comes."""


class LossReport:
    """Counts lost messages and says so: one ERROR line when the first loss comes,
    then at most one per ``period_seconds`` with the count since the last line and the
    total; :meth:`flush` reports what is left (at shutdown). The clock is passed in."""

    def __init__(self, log: logging.Logger, period_seconds: float = LOSS_REPORT_SECONDS,
                 clock: Callable[[], float] = time.monotonic,
                 on_report: Callable[[int, int, str], None] | None = None):
        self.log = log
        self.period = float(period_seconds)
        self.clock = clock
        self.on_report = on_report
        """Called with (lost since the last report, total, reason) after every line."""
        self.total = 0
        self.events_total = 0
        self._unreported = 0
        self._unreported_events = 0
        self._reasons: dict[str, int] = {}
        self._last: float | None = None

    def add(self, count: int, events: int, reason: str) -> None:
        if count <= 0:
            return
        self.total += count
        self.events_total += events
        self._unreported += count
        self._unreported_events += events
        self._reasons[reason] = self._reasons.get(reason, 0) + count
        now = self.clock()
        if self._last is None or now - self._last >= self.period:
            self._emit(now)

    def flush(self) -> None:
        """Report losses not yet reported (shutdown)."""
        if self._unreported:
            self._emit(self.clock())

    def _emit(self, now: float) -> None:
        count, events = self._unreported, self._unreported_events
        since = "" if self._last is None else f" in the last {now - self._last:.0f} s"
        self._last = now
        reasons = self._reasons
        why = ("; ".join(f"{n} because {reason}" for reason, n in reasons.items())
               if len(reasons) > 1 else next(iter(reasons)))
        self._unreported = self._unreported_events = 0
        self._reasons = {}
        self.log.error("MQTT outbox: LOST %d message(s) (%d event(s))%s: %s; %d message(s) "
                       "(%d event(s)) lost since start", count, events, since, why,
                       self.total, self.events_total)
        if self.on_report is not None:
            self.on_report(count, self.total, why)


def _is_event(topic: str) -> bool:
    """An event message (``…/events``), as opposed to state or per-label copies."""
    return topic.endswith("/events")


@dataclass(frozen=True)
class Message:
    """One queued MQTT publication."""

    seq: int
    """Position in the queue (increasing; unique within one outbox)."""
    topic: str
    payload: bytes
    qos: int
    retain: bool
    held: bool = False
    """Held in memory after a failed write (its ``seq`` counts the memory hold)."""


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
        self.losses = LossReport(logger)
        """Lost messages: counted, one ERROR line per interval (see :class:`LossReport`)."""
        self._cond = threading.Condition()

    @property
    def lost(self) -> int:
        """Messages lost since this process started (dropped or never written)."""
        return self.losses.total

    @property
    def events_lost(self) -> int:
        """Event messages (``…/events``) among :attr:`lost`."""
        return self.losses.events_total

    @property
    def held(self) -> int:
        """Messages held in memory because the file refused them (0 for memory outboxes)."""
        return 0

    def put(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        """Append a message; drops the oldest (counted, reported) when full."""
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        with self._cond:
            dropped = self._append(topic, bytes(payload), int(qos), bool(retain))
            if dropped:
                self.dropped += len(dropped)
                self.losses.add(len(dropped), sum(map(_is_event, dropped)),
                                f"the outbox is full (mqtt.queue_max_events, {self.max_messages} "
                                "messages) and dropped its oldest")
            self._cond.notify_all()

    def peek(self, timeout: float | None = None) -> Message | None:
        """The oldest message without removing it; waits up to ``timeout`` seconds."""
        with self._cond:
            message = self._first()
            if message is None and timeout:
                self._cond.wait(timeout)
                message = self._first()
            return message

    def remove(self, seq: int | Message) -> None:
        """Remove a delivered message (no-op if it was dropped meanwhile)."""
        with self._cond:
            if isinstance(seq, Message):
                self._remove_message(seq)
            else:
                self._delete(seq)

    def _remove_message(self, message: Message) -> None:
        self._delete(message.seq)

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
        self.losses.flush()

    # implemented by subclasses; called with the lock held
    def _append(self, topic: str, payload: bytes, qos: int, retain: bool) -> list[str]:
        """Queue one message; returns the topics of messages dropped to make room."""
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
        dropped = []
        while len(self._items) > self.max_messages:
            dropped.append(self._items.popleft().topic)
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

    def queued(self) -> list[Message]:
        """A copy of the queued messages, oldest first."""
        with self._cond:
            return list(self._items)

    def _set_aside(self, message, reason):
        self._delete(message.seq)
        self.aside.append((message, reason))

    def _count_aside(self):
        return len(self.aside)


class SqliteOutbox(Outbox):
    """On-disk outbox in one SQLite file; survives daemon restarts and crashes.

    A write the file refuses (full disk, I/O error) holds the message in memory
    (see the module docstring); a delete it refuses after a delivery hides the row
    until a later delete succeeds (if the process ends first, the next run sends
    that message again: a duplicate by ``(id, type)``, never a loss).
    """

    def __init__(self, path: str | Path, max_messages: int):
        import sqlite3  # only for an on-disk queue (a replay or memory queue never loads it)

        super().__init__(max_messages)
        self._sqlite_error = sqlite3.Error
        self.path = Path(path).expanduser()
        self._held: deque[Message] = deque()
        self._held_next = 1
        self._moved: dict[int, int] = {}  # held seq -> its row's seq once written
        self._undeleted: set[int] = set()  # delivered rows whose delete failed
        self._failing: str | None = None  # why the last write failed, None while writes work
        self._retry_at = 0.0
        self._lock_key: str | None = None
        try:
            private_dir(self.path.parent)
            self._lock_key = _lock(self.path)
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
            pending = self._disk_count()
            aside = self._count_aside()
        except (OSError, sqlite3.Error) as exc:
            self._unlock()
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
        warn_low_space(self.path.parent, "mqtt.queue_path", f"the outbox holds up to "
                       f"{max_messages} message(s) in memory when the disk is full, then "
                       "loses them (counted and logged)")

    @property
    def held(self) -> int:
        with self._cond:
            return len(self._held)

    # -- writes that may fail ---------------------------------------------------
    def _write(self, messages: list[tuple[str, bytes, int, bool]]) -> tuple[list[int], list[str]]:
        """Insert ``messages`` in one transaction and trim to ``max_messages``; returns
        the new rows' seqs and the topics trimmed. Raises on a refused write."""
        seqs = []
        with self._db:  # one transaction: insert + trim
            self._db.execute("BEGIN IMMEDIATE")
            for topic, payload, qos, retain in messages:
                cur = self._db.execute(
                    "INSERT INTO outbox (topic, payload, qos, retain) VALUES (?, ?, ?, ?)",
                    (topic, payload, qos, int(retain)))
                seqs.append(int(cur.lastrowid))
            excess = max(0, self._disk_count() - len(self._undeleted) - self.max_messages)
            dropped: list[str] = []
            if excess:
                rows = self._db.execute(
                    "SELECT seq, topic FROM outbox ORDER BY seq LIMIT ?",
                    (excess + len(self._undeleted),)).fetchall()
                rows = [(seq, topic) for seq, topic in rows if seq not in self._undeleted]
                rows = rows[:excess]
                self._db.executemany("DELETE FROM outbox WHERE seq = ?",
                                     [(seq,) for seq, _ in rows])
                dropped = [str(topic) for _, topic in rows]
        return seqs, dropped

    def _refused(self, exc: BaseException) -> None:
        reason = str(exc) or type(exc).__name__
        if self._failing is None:
            logger.error("MQTT outbox: %s refuses writes (%s); holding messages in memory "
                         "(at most %d) and writing them when it takes writes again",
                         self.path, reason, self.max_messages)
        self._failing = reason
        self._retry_at = time.monotonic() + RETRY_SECONDS

    def _flush_held(self) -> list[str]:
        """Write the held messages to the file (in order); returns trimmed topics.
        Raises when the file still refuses them."""
        if not self._held:
            return []
        held = list(self._held)
        seqs, dropped = self._write([(m.topic, m.payload, m.qos, m.retain) for m in held])
        self._held.clear()
        for message, seq in zip(held, seqs):
            self._moved[message.seq] = seq
        while len(self._moved) > 4 * self.max_messages:  # only recent ones can be in flight
            self._moved.pop(next(iter(self._moved)))
        if self._failing is not None:
            logger.warning("MQTT outbox: %s takes writes again; %d message(s) held in memory "
                           "are written", self.path, len(held))
            self._failing = None
        return dropped

    def _hold(self, topic, payload, qos, retain) -> None:
        self._held.append(Message(self._held_next, topic, payload, qos, retain, held=True))
        self._held_next += 1
        lost = []
        while len(self._held) > self.max_messages:
            lost.append(self._held.popleft().topic)
        if lost:
            self.losses.add(len(lost), sum(map(_is_event, lost)),
                            f"{self.path} refuses writes ({self._failing}) and the memory hold "
                            f"({self.max_messages} messages) is full")

    def _append(self, topic, payload, qos, retain):
        try:
            dropped = self._flush_held()
            _, more = self._write([(topic, payload, qos, retain)])
            return dropped + more
        except (self._sqlite_error, OSError) as exc:
            self._refused(exc)
            self._hold(topic, payload, qos, retain)
            return []

    def _retry(self) -> None:
        """Between puts: write held messages / finish failed deletes, at most every
        :data:`RETRY_SECONDS`."""
        if not (self._held or self._undeleted) or time.monotonic() < self._retry_at:
            return
        self._retry_at = time.monotonic() + RETRY_SECONDS
        try:
            dropped = self._flush_held()
        except (self._sqlite_error, OSError) as exc:
            self._refused(exc)
        else:
            if dropped:
                self.dropped += len(dropped)
                self.losses.add(len(dropped), sum(map(_is_event, dropped)),
                                f"the outbox is full (mqtt.queue_max_events, "
                                f"{self.max_messages} messages) and dropped its oldest")
        for seq in list(self._undeleted):
            self._delete(seq)

    # -- reads --------------------------------------------------------------------
    def _first(self):
        self._retry()
        if self._undeleted:
            marks = ",".join("?" * len(self._undeleted))
            row = self._db.execute(
                f"SELECT seq, topic, payload, qos, retain FROM outbox WHERE seq NOT IN ({marks}) "
                "ORDER BY seq LIMIT 1", tuple(self._undeleted)).fetchone()
        else:
            row = self._db.execute(
                "SELECT seq, topic, payload, qos, retain FROM outbox ORDER BY seq LIMIT 1"
            ).fetchone()
        if row is None:
            return self._held[0] if self._held else None
        return Message(int(row[0]), str(row[1]), bytes(row[2]), int(row[3]), bool(row[4]))

    def _delete(self, seq):
        try:
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
        except (self._sqlite_error, OSError) as exc:
            if seq not in self._undeleted:
                self._undeleted.add(seq)
                self._refused(exc)
            return
        self._undeleted.discard(seq)

    def _remove_message(self, message):
        if not message.held:
            self._delete(message.seq)
            return
        for item in self._held:
            if item.seq == message.seq:
                self._held.remove(item)
                return
        if message.seq in self._moved:  # written to the file while it was in flight
            self._delete(self._moved.pop(message.seq))

    def _disk_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def _count(self):
        return self._disk_count() - len(self._undeleted) + len(self._held)

    def _set_aside(self, message, reason):
        try:
            with self._db:  # one transaction: copy, delete, trim to the newest max_messages
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT OR REPLACE INTO undeliverable (seq, topic, payload, qos, retain, "
                    "reason, set_aside_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (None if message.held else message.seq, message.topic, message.payload,
                     message.qos, int(message.retain), reason, time.time()))
                if not message.held:
                    self._db.execute("DELETE FROM outbox WHERE seq = ?", (message.seq,))
                self._db.execute("DELETE FROM undeliverable WHERE seq NOT IN (SELECT seq FROM "
                                 "undeliverable ORDER BY seq DESC LIMIT ?)", (self.max_messages,))
        except (self._sqlite_error, OSError) as exc:
            self._refused(exc)
            self.losses.add(1, int(_is_event(message.topic)),
                            f"an undeliverable message could not be set aside in {self.path} "
                            f"({exc})")
            if not message.held:
                self._delete(message.seq)
        if message.held:
            self._remove_message(message)

    def _count_aside(self):
        return int(self._db.execute("SELECT COUNT(*) FROM undeliverable").fetchone()[0])

    def close(self):
        with self._cond:
            self._retry_at = 0.0
            self._retry()
            if self._held:
                lost = [m.topic for m in self._held]
                self._held.clear()
                self.losses.add(len(lost), sum(map(_is_event, lost)),
                                f"{self.path} still refuses writes ({self._failing}) at shutdown; "
                                "the messages held in memory are gone")
            self.losses.flush()
            try:
                self._db.close()
            except self._sqlite_error:  # pragma: no cover - closing twice / disk gone
                logger.exception("closing MQTT outbox %s", self.path)
            self._unlock()

    def _unlock(self) -> None:
        unlock_file(self._lock_key)  # closing the descriptor releases the lock
        self._lock_key = None


def _lock(path: Path) -> str | None:
    """Take ``<path>.lock`` for this outbox (flock, released when the process ends, even by
    SIGKILL); a second daemon on the same outbox is refused in one line."""
    lock_path = path.with_name(path.name + ".lock")
    key, ok = lock_file(lock_path, share_in_process=False)
    if not ok:
        raise ConfigError(f"mqtt.queue_path={str(path)!r} is in use by another running "
                          f"sound-detector (pid {key}, lock {lock_path.name}); one outbox "
                          "serves one daemon: stop the other one, or give this one its own "
                          "queue_path and client_id")
    return key


def warn_low_space(directory: Path, key: str, consequence: str,
                   margin: int = MIN_FREE_BYTES) -> int | None:
    """One warning when ``directory``'s filesystem has less than ``margin`` bytes free;
    returns the free bytes (None when unknown)."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return None
    if free < margin:
        logger.warning("%s: only %.1f MB free on the filesystem of %s (less than %.0f MB); %s",
                       key, free / 1e6, directory, margin / 1e6, consequence)
    return free


def open_outbox(max_messages: int, path: str | None = None) -> Outbox:
    """An SQLite outbox at ``path`` when given, else an in-memory one."""
    if path:
        return SqliteOutbox(path, max_messages)
    return MemoryOutbox(max_messages)
