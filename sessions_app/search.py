"""Full-text search over one space: its messages (L3 records) and its memories and insights.

PostgreSQL matches `to_tsvector('simple', content)` (the GIN indexes of migration 0005) against
`plainto_tsquery`; SQLite matches the FTS5 tables of the same migration. The query text is
user input and never reaches either engine as syntax: it is cut into words here, and the words
go to PostgreSQL as plain text and to FTS5 as quoted strings, so `OR`, `NEAR`, `*`, `:` or
quotes are words like any other. Every word must occur (AND); case does not matter.

Order: the memories and insights that match (newest slot first), then the messages (newest
first). The cursor names the last hit of a page; it is signed, and bound to the space and the
words, so a tampered or borrowed cursor is refused (400 `INVALID_CURSOR`). A query without
a word (only punctuation) finds nothing.

The search is a cold path: the caller runs `search_space` in one worker-thread hop.
"""

from __future__ import annotations

import hashlib
import html
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.core import signing
from django.db import connection
from django.utils.dateparse import parse_datetime

from spaces.errors import InvalidInput
from spaces.wire import iso_ms

from .data_errors import InvalidCursor

MAX_QUERY_CHARS = 256
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
SNIPPET_CHARS = 160
_BEFORE_MATCH = 50
_TOP = 2**62  # above every id
_SALT = "stello.search.cursor"
# Letters and digits: both engines split words at everything else (underscores included).
_WORD = re.compile(r"[^\W_]+")
SLOT_KEYS = ("memory", "insight")


@dataclass(frozen=True)
class Query:
    text: str
    words: tuple[str, ...]
    limit: int
    phase: int  # 0: memories and insights, 1: messages
    before: int  # ids below this one


def parse_query(space_id: str, params: Any) -> Query:
    """The query of `?q=&limit=&cursor=`, or InvalidInput / InvalidCursor (nothing searched)."""
    text = params.get("q")
    if text is None:
        raise InvalidInput("q is required")
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidInput(f"q must be at most {MAX_QUERY_CHARS} characters")
    if not text:
        raise InvalidInput("q must not be empty")
    # At most MAX_QUERY_CHARS / 2 words. None at all (only punctuation) finds nothing.
    words = tuple(dict.fromkeys(w.lower() for w in _WORD.findall(text)))
    raw_limit = params.get("limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
            raise InvalidInput(f"limit must be an integer from 1 to {MAX_LIMIT}")
        limit = int(raw_limit)
    phase, before = 0, _TOP
    cursor = params.get("cursor")
    if cursor is not None:
        phase, before = _read_cursor(cursor, space_id, words)
    return Query(text, words, limit, phase, before)


def _binding(space_id: str, words: tuple[str, ...]) -> str:
    return hashlib.sha256(f"{space_id}\n{' '.join(words)}".encode()).hexdigest()[:16]


def _make_cursor(space_id: str, words: tuple[str, ...], phase: int, before: int) -> str:
    return signing.dumps([_binding(space_id, words), phase, before], salt=_SALT, compress=False)


def _read_cursor(cursor: str, space_id: str, words: tuple[str, ...]) -> tuple[int, int]:
    try:
        binding, phase, before = signing.loads(cursor[:512], salt=_SALT)
    except (signing.BadSignature, ValueError, TypeError):
        raise InvalidCursor() from None
    if (binding != _binding(space_id, words) or phase not in (0, 1)
            or not isinstance(before, int) or not 0 < before <= _TOP):
        raise InvalidCursor("cursor belongs to another query")
    return phase, before


# -- SQL ----------------------------------------------------------------------------------------

_PG_MATCH = ("to_tsvector('simple'::regconfig, {col}) @@ "
             "plainto_tsquery('simple'::regconfig, %(q)s)")
PG_SLOTS = f"""
SELECT d.id, d.session_id, s.label, d.key, d.content, d.updated_at
FROM session_data d JOIN sessions s ON s.id = d.session_id
WHERE s.space_id = %(space)s AND d.key IN ('memory', 'insight') AND d.id < %(before)s
  AND {_PG_MATCH.format(col="d.content")}
ORDER BY d.id DESC LIMIT %(limit)s
"""
PG_RECORDS = f"""
SELECT r.id, r.session_id, s.label, r.role, r.content, r.timestamp
FROM records r JOIN sessions s ON s.id = r.session_id
WHERE s.space_id = %(space)s AND r.id < %(before)s AND {_PG_MATCH.format(col="r.content")}
ORDER BY r.id DESC LIMIT %(limit)s
"""
# FTS5 walks its matches in rowid (= record id) order, newest first, and stops at the limit.
SQLITE_SLOTS = """
SELECT d.id, d.session_id, s.label, d.key, d.content, d.updated_at
FROM session_data_fts f JOIN session_data d ON d.id = f.rowid
JOIN sessions s ON s.id = d.session_id
WHERE session_data_fts MATCH %(q)s AND f.rowid < %(before)s AND s.space_id = %(space)s
  AND d.key IN ('memory', 'insight')
ORDER BY f.rowid DESC LIMIT %(limit)s
"""
SQLITE_RECORDS = """
SELECT r.id, r.session_id, s.label, r.role, r.content, r.timestamp
FROM records_fts f JOIN records r ON r.id = f.rowid JOIN sessions s ON s.id = r.session_id
WHERE records_fts MATCH %(q)s AND f.rowid < %(before)s AND s.space_id = %(space)s
ORDER BY f.rowid DESC LIMIT %(limit)s
"""


def _fts5_query(words: tuple[str, ...]) -> str:
    # Each word a quoted FTS5 string (a quote inside doubled): never an operator.
    return " ".join('"' + w.replace('"', '""') + '"' for w in words)


def _fetch(sql_pg: str, sql_sqlite: str, space_id: str, query: Query, before: int,
           limit: int) -> list[tuple]:
    if connection.vendor == "postgresql":
        sql, params = sql_pg, {"q": " ".join(query.words), "space": space_id}
    else:  # SQLite keeps UUIDs as 32 hex digits
        sql, params = sql_sqlite, {"q": _fts5_query(query.words),
                                   "space": uuid.UUID(space_id).hex}
    with connection.cursor() as cursor:
        cursor.execute(sql, {**params, "before": before, "limit": limit})
        return cursor.fetchall()


def _uuid(value: Any) -> str:
    return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))


def _time(value: Any) -> datetime:
    if isinstance(value, str):
        value = parse_datetime(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def snippet(content: str, words: tuple[str, ...]) -> str:
    """Up to SNIPPET_CHARS of `content` around its first match, HTML-escaped, every match of a
    word wrapped in `<mark>` (safe to insert as HTML), `…` where text was cut."""
    pattern = re.compile(r"(?<![^\W_])(?:" + "|".join(map(re.escape, words)) + r")(?![^\W_])",
                         re.IGNORECASE)
    first = pattern.search(content)
    start = max(0, first.start() - _BEFORE_MATCH) if first else 0
    end = min(len(content), start + SNIPPET_CHARS)
    window = content[start:end]
    parts, last = [], 0
    for match in pattern.finditer(window):
        parts.append(html.escape(window[last:match.start()]))
        parts.append(f"<mark>{html.escape(match.group())}</mark>")
        last = match.end()
    parts.append(html.escape(window[last:]))
    return ("…" if start else "") + "".join(parts) + ("…" if end < len(content) else "")


def search_space(space_id: str, query: Query) -> dict[str, Any]:
    """One page of hits: `{"results": [...], "nextCursor": str | None}`."""
    results: list[dict[str, Any]] = []
    if not query.words:
        return {"results": results, "nextCursor": None}
    phase, before, limit = query.phase, query.before, query.limit
    if phase == 0:
        rows = _fetch(PG_SLOTS, SQLITE_SLOTS, space_id, query, before, limit + 1)
        for _id, sid, label, key, content, updated in rows[:limit]:
            results.append({"kind": key, "sessionId": _uuid(sid), "sessionLabel": label,
                            "updatedAt": iso_ms(_time(updated)),
                            "snippet": snippet(content, query.words)})
        if len(rows) > limit:
            return {"results": results,
                    "nextCursor": _make_cursor(space_id, query.words, 0, rows[limit - 1][0])}
        phase, before = 1, _TOP
    room = limit - len(results)
    rows = _fetch(PG_RECORDS, SQLITE_RECORDS, space_id, query, before, room + 1)
    for row_id, sid, label, role, content, timestamp in rows[:room]:
        results.append({"kind": "message", "sessionId": _uuid(sid), "sessionLabel": label,
                        "messageId": row_id, "role": role,
                        "timestamp": iso_ms(_time(timestamp)),
                        "snippet": snippet(content, query.words)})
    next_cursor = None
    if len(rows) > room:
        after = rows[room - 1][0] if room else before
        next_cursor = _make_cursor(space_id, query.words, 1, after)
    return {"results": results, "nextCursor": next_cursor}
