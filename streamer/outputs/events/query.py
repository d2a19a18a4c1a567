"""Reading the event log for the server's `/api/events`: filters, paging, snapshots; never writes.

Each request opens its own read-only connection (`mode=ro`): WAL lets it read beside the daemon's
writers, and it sees only what they committed.

`GET /api/events` parameters, each at most once (anything else is a 400):

- `source`: a source id; `kind`: one kind or several, comma-separated (kinds.py lists them);
  `category`: a category name (`car`); events without one (source_state, counts) never match.
- `since`, `until`: wall-clock time, Unix seconds: the event's `wall` (when its frame was captured),
  `since <= wall < until`. Stream time (`pts_s`) is not a filter: it restarts with each source.
- Paging, by `seq` (the log's order): with neither cursor, the newest `limit` events, newest first;
  `before=SEQ`: the page before it, newest first (pass the answer's `next` back to page on; null:
  the last page); `after=SEQ`: the events after it, oldest first (pass `next` back to follow the log
  as it grows; it is `after` itself when nothing is new). Not both.
- `limit`: events per page, 1 to MAX_LIMIT (default DEFAULT_LIMIT).

The answer: `{"events": [...], "next": SEQ or null}`; each event is what the sinks send (log.py:
`id`, `seq`, `kind`, `source`, `pts_s`, `wall` and its kind's fields) with `snapshot`: whether
`/api/events/ID/snapshot.jpg` and `/api/events/ID/crop.jpg` exist.
"""
from __future__ import annotations

import contextlib
import json
import math
import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from streamer.config import EventKind
from streamer.outputs.events.log import BUSY_TIMEOUT_S, FILE_NAME, snapshot_paths

KINDS: tuple[str, ...] = get_args(EventKind)
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
EVENT_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")  # log.uuid7's form
PARAMETERS = ("source", "kind", "category", "since", "until", "after", "before", "limit")


class BadQuery(ValueError):
    """A parameter of /api/events that cannot be used; its message is the one line the client gets."""


@dataclass(frozen=True)
class Query:
    """What /api/events asks for (module docstring); None: no such filter."""

    source: str | None = None
    kinds: tuple[str, ...] | None = None
    category: str | None = None
    since: float | None = None
    until: float | None = None
    after: int | None = None
    before: int | None = None
    limit: int = DEFAULT_LIMIT


def parse_query(params: Mapping[str, Sequence[str]], ignore: Sequence[str] = ("token",)) -> Query:
    """The Query of a request's parameters (urllib.parse.parse_qs's form); `ignore`: names that are
    not filters (the server's `token`). Raises BadQuery with one line."""
    values: dict[str, str] = {}
    for name, given in params.items():
        if name in ignore:
            continue
        if name not in PARAMETERS:
            raise BadQuery(f"unknown parameter {_shown(name)}; known: {', '.join(PARAMETERS)}")
        if len(given) != 1:
            raise BadQuery(f"{name} given {len(given)} times; give it once")
        values[name] = given[0]
    kinds = None
    if "kind" in values:
        kinds = tuple(k.strip() for k in values["kind"].split(","))
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise BadQuery(f"unknown kind {_shown(unknown[0])}; known: {', '.join(KINDS)}")
    query = Query(values.get("source"), kinds, values.get("category"), _time(values, "since"), _time(values, "until"),
                  _whole(values, "after", 0), _whole(values, "before", 1), _whole(values, "limit", 1, MAX_LIMIT) or DEFAULT_LIMIT)
    if query.after is not None and query.before is not None:
        raise BadQuery("give after or before, not both")
    return query


def read_events(folder: str | Path, query: Query) -> dict[str, Any]:
    """/api/events' answer from the log in `folder` (no events yet when it has none). Raises
    sqlite3.Error when the database cannot be read."""
    where, args = ["1"], []
    for clause, value in (("source = ?", query.source), ("json_extract(payload, '$.category') = ?", query.category),
                          ("wall >= ?", query.since), ("wall < ?", query.until), ("seq > ?", query.after),
                          ("seq < ?", query.before)):
        if value is not None:
            where.append(clause)
            args.append(value)
    if query.kinds is not None:
        where.append(f"kind IN ({','.join('?' * len(query.kinds))})")
        args.extend(query.kinds)
    ascending = query.after is not None
    sql = (f"SELECT seq, id, kind, source, pts_s, wall, payload, id IN (SELECT id FROM snapshots) FROM events "  # noqa: S608
           f"WHERE {' AND '.join(where)} ORDER BY seq {'ASC' if ascending else 'DESC'} LIMIT ?")
    with _reading(folder) as db:
        rows = [] if db is None else db.execute(sql, (*args, query.limit)).fetchall()
    events = [{"id": r[1], "seq": r[0], "kind": r[2], "source": r[3], "pts_s": r[4], "wall": r[5], **json.loads(r[6]),
               "snapshot": bool(r[7])} for r in rows]
    if ascending:
        next_seq: int | None = rows[-1][0] if rows else query.after
    else:
        next_seq = rows[-1][0] if len(rows) == query.limit else None
    return {"events": events, "next": next_seq}


def read_snapshot(folder: str | Path, event_id: str, crop: bool = False) -> bytes | None:
    """The JPEG of event `event_id`'s snapshot (its crop when `crop`); None when there is none (no
    such event, no snapshot, or retention just removed it). The id is looked up in the log, never
    used as a path before it is found there."""
    if not EVENT_ID.match(event_id):
        return None
    with _reading(folder) as db:
        found = db is not None and db.execute("SELECT 1 FROM snapshots WHERE id = ?", (event_id,)).fetchone() is not None
    if not found:
        return None
    try:
        return snapshot_paths(folder, event_id)[1 if crop else 0].read_bytes()
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def _reading(folder: str | Path) -> Iterator[sqlite3.Connection | None]:
    path = Path(folder).resolve() / FILE_NAME
    if not path.exists():
        yield None
        return
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    try:
        yield db
    finally:
        db.close()


def _time(values: Mapping[str, str], name: str) -> float | None:
    if name not in values:
        return None
    try:
        value = float(values[name])
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise BadQuery(f"{name} must be a time in Unix seconds, e.g. 1765000000.5; got {_shown(values[name])}")
    return value


def _whole(values: Mapping[str, str], name: str, low: int, high: int = 2**63 - 1) -> int | None:
    if name not in values:
        return None
    text = values[name]
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise BadQuery(f"{name} must be a whole number from {low} to {high}; got {_shown(text)}")
    return int(text)


def _shown(text: str) -> str:
    """A value the client sent, quoted on one line and cut short."""
    return repr(text[:40] + ("..." if len(text) > 40 else ""))
