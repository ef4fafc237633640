"""Conversations as data on PostgreSQL: message pages, message stretches and rewrites, and the
session edits (`PgSpaceStore` inherits these). Reads are one statement each on the event loop;
a rewrite is one statement (atomic in autocommit). Editing and deleting a session are cold paths
that go through the ORM store, so every model's cascade applies.

Imported by `postgres` once its helpers exist (it needs them to build its SQL).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.utils import timezone

from ..engine.errors import SessionArchived, SessionNotFound
from ..engine.types import Message, SaveResult, SessionMeta
from .common import INSIGHT, message_from_row, message_json, record_rows
from .postgres import (
    _INSERT_RECORDS,
    _RECORD_ROWS,
    _THIS_SESSION,
)

_NEWEST = 9_223_372_036_854_775_807  # above every record id

# One page of a session's records next to a cursor, one extra row telling whether more follow.
# Ordering on (session_id, id) makes the planner walk the records_session_order index and stop
# after the page: ordered on id alone, it may walk the primary key backwards through other
# sessions' newer records.
_PAGE = f"""
SELECT s.id, p.role, p.content, p."timestamp", p.tool_calls, p.tool_call_id, p.id
FROM sessions s LEFT JOIN LATERAL (
  SELECT r.role, r.content, r."timestamp", r.tool_calls, r.tool_call_id, r.id
  FROM records r WHERE r.session_id = %(sid)s AND {{where}}
  ORDER BY r.session_id {{order}}, r.id {{order}} LIMIT %(limit)s
) p ON true
WHERE {_THIS_SESSION}
"""
SQL_PAGE_BEFORE = _PAGE.format(where="r.id < %(key)s", order="DESC")
SQL_PAGE_AFTER = _PAGE.format(where="r.id > %(key)s", order="ASC")

# The stretch of a record: from the nearest user message at or before it (else the first
# record) up to the next user message (excluded). Tool-call groups never cross a user message,
# so a stretch holds every group it touches whole. `through` reads from the first record.
_STRETCH = f"""
WITH src AS (
  SELECT s.id FROM sessions s WHERE {_THIS_SESSION}
), tgt AS (
  SELECT r.id FROM records r, src
  WHERE r.session_id = %(sid)s AND (%(rid)s::bigint IS NULL OR r.id = %(rid)s::bigint)
  ORDER BY r.session_id DESC, r.id DESC LIMIT 1
), lo AS (
  SELECT r.id FROM records r, tgt
  WHERE r.session_id = %(sid)s AND r.id <= tgt.id AND r.role = 'user' AND NOT %(through)s
  ORDER BY r.session_id DESC, r.id DESC LIMIT 1
), hi AS (
  SELECT r.id FROM records r, tgt
  WHERE r.session_id = %(sid)s AND r.id > tgt.id AND r.role = 'user'
  ORDER BY r.session_id, r.id LIMIT 1
)
SELECT src.id, (
  SELECT json_agg(json_build_array(r.id, r.role, r.content, r.tool_calls, r.tool_call_id)
                  ORDER BY r.id)
  FROM records r, tgt
  WHERE r.session_id = %(sid)s
    AND r.id >= coalesce((SELECT lo.id FROM lo), 0)
    AND r.id < coalesce((SELECT hi.id FROM hi), 9223372036854775807)
)
FROM src
"""

# Remove some records and append others in one transaction, refused (nothing written) unless
# the session is active. The main SELECT sees the rows as they were before the statement.
SQL_REWRITE = f"""
WITH src AS (
  SELECT s.id, s.status FROM sessions s WHERE {_THIS_SESSION}
), ok AS (
  SELECT src.id FROM src WHERE src.status = 'active'
), del AS (
  DELETE FROM records r USING ok
  WHERE r.session_id = ok.id AND r.id = ANY(%(remove)s::bigint[])
  RETURNING r.id
), ins AS (
  {_INSERT_RECORDS}
  SELECT ok.id, m.role, m.content, m.calls, m.call_id, %(now)s
  FROM ok CROSS JOIN {_RECORD_ROWS}
  ORDER BY m.ord
  RETURNING r.id
), consumed AS (
  DELETE FROM session_data d USING ok
  WHERE d.session_id = ok.id AND d.key = '{INSIGHT}' AND d.content = %(consumed)s
), upd AS (
  UPDATE sessions AS s SET
    record_count = s.record_count + %(added)s - (SELECT count(*) FROM del),
    turn_count = greatest(s.turn_count - %(turns_removed)s, 0)
                 + CASE WHEN %(end_turn)s THEN 1 ELSE 0 END,
    last_active_at = CASE WHEN %(end_turn)s THEN %(now)s ELSE s.last_active_at END,
    updated_at = %(now)s
  FROM ok WHERE s.id = ok.id
  RETURNING s.turn_count, s.record_count
)
SELECT src.status, upd.turn_count, upd.record_count, coalesce(
  (SELECT max(ins.id) FROM ins),
  (SELECT r.id FROM records r WHERE r.session_id = %(sid)s
     AND r.id <> ALL(%(remove)s::bigint[]) ORDER BY r.session_id DESC, r.id DESC LIMIT 1),
  0)
FROM src LEFT JOIN upd ON true
"""


def _id_messages(rows: Any) -> list[tuple[int, Message]]:
    return [(r[0], message_from_row(*r[1:])) for r in rows or ()]


class PgConversations:
    """Mixed into `PgSpaceStore` (which provides `_params`, `_read`, `_one`)."""

    space_id: str

    # -- REST reads ----------------------------------------------------------------------------
    async def message_page(
        self, session_id: str, *, limit: int, before: int | None = None,
        after: int | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """Up to `limit` records oldest first, either just after record id `after` or just
        before `before` (neither: the newest ones), and whether more lie beyond them in that
        direction. SessionNotFound unless the session is in this space."""
        sql = SQL_PAGE_AFTER if after is not None else SQL_PAGE_BEFORE
        key = after if after is not None else (before if before is not None else _NEWEST)
        rows = await self._read_all(sql, self._params(session_id, key=key, limit=limit + 1))
        if not rows:
            raise SessionNotFound()
        page = [message_json(*r[1:]) for r in rows if r[6] is not None]
        more = len(page) > limit
        page = page[:limit]
        if after is None:
            page.reverse()
        return page, more

    # -- engine port ---------------------------------------------------------------------------
    async def record_stretch(
        self, session_id: str, record_id: int | None = None
    ) -> list[tuple[int, Message]]:
        return await self._stretch(session_id, record_id, through=False)

    async def history_through(self, session_id: str, record_id: int) -> list[tuple[int, Message]]:
        return await self._stretch(session_id, record_id, through=True)

    async def _stretch(
        self, session_id: str, record_id: int | None, *, through: bool
    ) -> list[tuple[int, Message]]:
        params = self._params(session_id, rid=record_id, through=through)
        row = await self._read(_STRETCH, params)
        if row is None:
            raise SessionNotFound()
        return _id_messages(row[1])

    async def rewrite_records(
        self,
        session_id: str,
        remove: Sequence[int],
        messages: Sequence[Message] = (),
        *,
        consumed_insight: str | None = None,
        end_turn: bool = False,
        turns_removed: int = 0,
    ) -> SaveResult:
        params = self._params(
            session_id, remove=list(remove), now=timezone.now(), consumed=consumed_insight,
            added=len(messages), end_turn=end_turn, turns_removed=turns_removed,
            **record_rows(messages),
        )
        row = await self._one(SQL_REWRITE, params)
        if row is None:
            raise SessionNotFound()
        if row[0] != "active":
            raise SessionArchived(session_id)
        result = SaveResult(turn_count=row[1], record_count=row[2], last_record_id=row[3])
        if end_turn and self._on_turn is not None:
            self._on_turn(self.space_id, str(params["sid"]), result.turn_count)
        return result

    # -- cold paths: the ORM store does them (every model's cascade applies) -------------------
    def _orm(self):
        from .orm import DjangoSpaceStore

        return DjangoSpaceStore(self.space_id)

    async def update_session(self, session_id: str, changes: dict[str, Any]) -> SessionMeta:
        return await self._orm().update_session(session_id, changes)

    async def delete_session(self, session_id: str) -> list[str]:
        return await self._orm().delete_session(session_id)

    async def list_sessions(self, **query: Any) -> tuple[list[SessionMeta], bool]:
        return await self._orm().list_sessions(**query)
