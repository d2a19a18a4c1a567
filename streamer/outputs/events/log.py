"""The event log: every event on disk (SQLite, WAL) before anything publishes it, and how far each sink got.

One database, `events.sqlite` in `events.dir`, shared by every source of the daemon (each opens its own
connection; SQLite's WAL lets one writer and many readers work at once, also across processes):

    events(seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE, kind TEXT, source TEXT,
           pts_s REAL, wall REAL, payload TEXT)     -- payload: the kind's fields as JSON
    cursors(sink TEXT PRIMARY KEY, seq INTEGER)    -- the last seq a sink delivered (acknowledged)
    meta(key TEXT PRIMARY KEY, value INTEGER)      -- `dropped`: events the size cap removed, all time
    snapshots(id TEXT PRIMARY KEY, bytes INTEGER)  -- an event's pictures (snapshots.py) and their size on disk

An event's pictures are files beside the database, `snapshots/<id>.jpg` and `snapshots/<id>-crop.jpg`;
a row in `snapshots` is made before they are written, so retention never leaves a file behind.

`seq` is the delivery order (AUTOINCREMENT: never reused, even after the newest rows are removed);
`id` is what receivers drop duplicates by: a UUIDv7 (RFC 9562), time-ordered and unique across
sources, restarts and machines. An append is one transaction, committed (synchronous=FULL) before it
returns, so whatever a sink reads from here survives a SIGKILL or a power cut.

Cursor semantics: a sink reads `after(cursor)`, delivers, and calls `advance(sink, seq)` only for a
seq whose delivery (and that of every seq before it) was acknowledged. After a crash or a restart
it starts again from its cursor: nothing is lost, and what it sends twice is only what was in flight
(the same ids). A cursor never moves back.

Retention: `prune()` removes events older than `keep_days` (wall time) and, beyond `max_mb` (the
database's live pages and the snapshots' files together), the oldest events; those the cap removes
are counted (meta `dropped`) and logged, with how many of them some sink had not delivered. An
event's snapshot files go with it.

Every call holds a lock (one connection, any thread) and SQLite waits at most `BUSY_TIMEOUT_S` for
another process's write, so no call blocks for long.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FILE_NAME = "events.sqlite"
SNAPSHOTS = "snapshots"  # the folder of the events' pictures, beside the database
BUSY_TIMEOUT_S = 5.0
DAY_S = 86400.0
PRUNE_BATCH = 500  # rows removed per step while over the size cap

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    pts_s REAL,
    wall REAL NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_source ON events (source, seq);
CREATE INDEX IF NOT EXISTS events_by_wall ON events (wall);
CREATE TABLE IF NOT EXISTS cursors (sink TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (id TEXT PRIMARY KEY, bytes INTEGER NOT NULL);
"""


def uuid7(wall: float | None = None) -> str:
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits; sorts by time as text."""
    ms = int((time.time() if wall is None else wall) * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms << 80) | (0x7 << 76) | ((rand >> 68) & 0xFFF) << 64 | (0b10 << 62) | (rand & ((1 << 62) - 1))
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def snapshot_paths(folder: str | Path, event_id: str) -> tuple[Path, Path]:
    """(the frame's picture, the crop around the object) of event `event_id` in the log folder `folder`."""
    pictures = Path(folder) / SNAPSHOTS
    return pictures / f"{event_id}.jpg", pictures / f"{event_id}-crop.jpg"


@dataclass(frozen=True)
class NewEvent:
    """An event before it is logged: its kind, the source, its stream time (s; None when it has none),
    wall time (time.time()) and its kind's fields."""

    kind: str
    source: str
    pts_s: float | None
    wall: float
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredEvent:
    """A logged event: its delivery order `seq` and its unique `id` besides NewEvent's fields."""

    seq: int
    id: str
    kind: str
    source: str
    pts_s: float | None
    wall: float
    payload: dict[str, Any]

    def message(self) -> dict[str, Any]:
        """What sinks send: `{"id", "seq", "kind", "source", "pts_s", "wall", **payload}`."""
        return {"id": self.id, "seq": self.seq, "kind": self.kind, "source": self.source, "pts_s": self.pts_s,
                "wall": self.wall, **self.payload}


class EventLog:
    """The log in `folder` (made if missing). Thread-safe; close() once."""

    def __init__(self, folder: str | Path, keep_days: float | None = 7.0, max_mb: float | None = 500.0) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / FILE_NAME
        self.keep_days, self.max_mb = keep_days, max_mb
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # committed means on disk, also after a power cut
        with self._transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)

    # -- writing

    def append(self, events: Iterable[NewEvent]) -> list[StoredEvent]:
        """Log `events` in order in one transaction, committed when this returns."""
        rows = [(uuid7(e.wall), e.kind, e.source, e.pts_s, e.wall, json.dumps(e.payload, separators=(",", ":"), allow_nan=False), e)
                for e in events]
        stored: list[StoredEvent] = []
        if not rows:
            return stored
        with self._lock, self._transaction():
            for event_id, kind, source, pts_s, wall, payload, e in rows:
                cur = self._db.execute("INSERT INTO events (id, kind, source, pts_s, wall, payload) VALUES (?, ?, ?, ?, ?, ?)",
                                       (event_id, kind, source, pts_s, wall, payload))
                assert cur.lastrowid is not None
                stored.append(StoredEvent(cur.lastrowid, event_id, kind, source, pts_s, wall, dict(e.payload)))
        return stored

    # -- reading

    def after(self, seq: int, limit: int = 100, source: str | None = None) -> list[StoredEvent]:
        """The events after `seq` in order, at most `limit`; only `source`'s when given."""
        where, args = ("seq > ? AND source = ?", (seq, source)) if source is not None else ("seq > ?", (seq,))
        with self._lock:
            rows = self._db.execute(f"SELECT seq, id, kind, source, pts_s, wall, payload FROM events WHERE {where} "  # noqa: S608
                                    "ORDER BY seq LIMIT ?", (*args, limit)).fetchall()
        return [StoredEvent(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6])) for r in rows]

    def last_seq(self) -> int:
        """The newest seq ever given (0: none); removed rows still count."""
        return self._number("SELECT seq FROM sqlite_sequence WHERE name = 'events'")

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    # -- cursors

    def cursor(self, sink: str) -> int:
        """The last seq `sink` delivered; 0 for a new sink."""
        return self._number("SELECT seq FROM cursors WHERE sink = ?", (sink,))

    def start_cursor(self, sink: str, at: int) -> int:
        """`sink`'s cursor; a sink never seen before starts at `at` (e.g. last_seq(): only what comes next)."""
        with self._lock, self._transaction():
            self._db.execute("INSERT OR IGNORE INTO cursors (sink, seq) VALUES (?, ?)", (sink, at))
            return int(self._db.execute("SELECT seq FROM cursors WHERE sink = ?", (sink,)).fetchone()[0])

    def advance(self, sink: str, seq: int) -> None:
        """`sink` delivered everything up to `seq`; committed when this returns. Never moves back."""
        with self._lock, self._transaction():
            self._db.execute("INSERT INTO cursors (sink, seq) VALUES (?, ?) ON CONFLICT (sink) DO UPDATE SET seq = "
                             "MAX(seq, excluded.seq)", (sink, seq))

    # -- snapshots

    def record_snapshot(self, event_id: str, nbytes: int) -> bool:
        """Count `nbytes` of pictures for event `event_id` before they are written; False (nothing
        recorded: do not write them) when the event is not in the log (retention removed it)."""
        with self._lock, self._transaction():
            cur = self._db.execute("INSERT OR REPLACE INTO snapshots (id, bytes) SELECT ?, ? WHERE EXISTS "
                                   "(SELECT 1 FROM events WHERE id = ?)", (event_id, nbytes, event_id))
            return cur.rowcount > 0

    # -- retention

    @property
    def dropped(self) -> int:
        """Events the size cap removed, all time."""
        return self._number("SELECT value FROM meta WHERE key = 'dropped'")

    def _number(self, query: str, args: tuple = ()) -> int:
        """The one number `query` selects; 0 when it selects no row."""
        with self._lock:
            row = self._db.execute(query, args).fetchone()
        return int(row[0]) if row else 0

    def used_bytes(self) -> int:
        """Bytes in live pages of the database (free pages, which SQLite reuses, left out) and in its snapshots."""
        with self._lock:
            return self._used_bytes()

    def prune(self, now: float | None = None) -> tuple[int, int]:
        """Apply retention: (events removed for their age, events removed by the size cap)."""
        now = time.time() if now is None else now
        aged = capped = 0
        if self.keep_days is not None:
            with self._lock, self._transaction():
                self._forget_snapshots("wall < ?", (now - self.keep_days * DAY_S,))
                aged = self._db.execute("DELETE FROM events WHERE wall < ?", (now - self.keep_days * DAY_S,)).rowcount
        if self.max_mb is not None:
            limit = self.max_mb * 1e6
            undelivered = 0
            while True:
                with self._lock:
                    used = self._used_bytes()
                    if used <= limit:
                        break
                    rows = self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
                    batch = max(1, min(PRUNE_BATCH, math.ceil(rows * (used - limit) / used)))  # about the share over the cap
                    with self._transaction():
                        oldest = self._db.execute("SELECT MIN(seq), MAX(seq) FROM (SELECT seq FROM events ORDER BY seq LIMIT ?)",
                                                  (batch,)).fetchone()
                        if oldest[0] is None:
                            break
                        slowest = self._db.execute("SELECT MIN(seq) FROM cursors").fetchone()[0]
                        if slowest is not None:
                            undelivered += self._db.execute("SELECT COUNT(*) FROM events WHERE seq > ? AND seq <= ?",
                                                            (slowest, oldest[1])).fetchone()[0]
                        self._forget_snapshots("seq <= ?", (oldest[1],))
                        n = self._db.execute("DELETE FROM events WHERE seq <= ?", (oldest[1],)).rowcount
                        self._db.execute("INSERT INTO meta (key, value) VALUES ('dropped', ?) ON CONFLICT (key) DO UPDATE SET "
                                         "value = value + excluded.value", (n,))
                        capped += n
            if capped:
                log.warning("events: the log reached events.max_mb (%g MB): removed its %d oldest events, %d of them not yet "
                            "delivered by every sink (%d removed so far)", self.max_mb, capped, undelivered, self.dropped)
        if aged:
            log.info("events: removed %d events older than events.keep_days (%g)", aged, self.keep_days)
        return aged, capped

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- inside

    def _used_bytes(self) -> int:
        pages = self._db.execute("PRAGMA page_count").fetchone()[0] - self._db.execute("PRAGMA freelist_count").fetchone()[0]
        pictures = self._db.execute("SELECT COALESCE(SUM(bytes), 0) FROM snapshots").fetchone()[0]
        return int(pages * self._db.execute("PRAGMA page_size").fetchone()[0] + pictures)

    def _forget_snapshots(self, where: str, args: tuple) -> None:
        """Inside a transaction: the snapshot rows and files of the events `where` selects (about to be
        removed). A file is removed before the rows' commit: a crash leaves a row without a file, never a file."""
        ids = [row[0] for row in self._db.execute(
            f"SELECT s.id FROM snapshots s JOIN events e ON e.id = s.id WHERE e.{where}", args).fetchall()]  # noqa: S608
        for event_id in ids:
            for path in snapshot_paths(self.folder, event_id):
                path.unlink(missing_ok=True)
        self._db.executemany("DELETE FROM snapshots WHERE id = ?", [(i,) for i in ids])

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an exception): the write lock taken up front, so a busy
    database waits (at most the busy timeout) at the start instead of failing halfway."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, value, traceback) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")

