"""The PostgreSQL implementation of the engine's `SpaceStore` port: hand-written SQL on the async
psycopg pool (`spaces.pgpool`), on the event loop, with no thread hand-off.

Every method is one unit of work that holds a pooled autocommit connection only for its one
statement, so one round trip: a single statement is atomic in autocommit, so writes that touch
several tables use data-modifying CTEs, and reads gather slots, history and ancestors with JSON
aggregates and subqueries. The schema is the Django models'; the tables and columns named here
are checked against the models' `_meta` by the store tests.

Aliases used throughout (the schema test relies on them): s = sessions, n and t =
topology_nodes, r = records, d = session_data, c = core_data, sp = spaces, tu = turns,
e = session_events.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from django.utils import timezone
from psycopg.types.json import Jsonb

from spaces import pgpool

from ..accounting.record import SQL_RECORD_USAGE, usage_params, with_usage
from ..engine.errors import (
    ServiceUnavailable,
    SessionArchived,
    SessionNotFound,
    SpaceNotFound,
    TurnNotFound,
)
from ..engine.types import (
    SESSION_ARCHIVED,
    SESSION_FORKED,
    SESSION_UNARCHIVED,
    Bootstrap,
    ChildMemory,
    CompressionCache,
    ConsolidationInput,
    EventPage,
    Insight,
    LockedRead,
    LogEvent,
    Logged,
    Message,
    NewChild,
    SaveResult,
    SessionMeta,
    SpacePrompts,
    TurnContext,
    TurnInfo,
    TurnWrite,
    forked_payload,
)
from ..engine.usage import CallUsage
from .common import (
    ABANDONED_ERROR,
    COMPRESSION,
    CONSOLIDATE_PROMPT,
    INSIGHT,
    MEMORY,
    SESSION_CONFIG,
    SYSTEM_PROMPT,
    TurnListener,
    compact,
    compression_of,
    compression_text,
    event_page,
    event_rows,
    fork_metadata,
    json_object,
    message_from_row,
    message_json,
    parse_uuid,
    prune_to,
    record_rows,
    session_config_text,
    session_tree_from_rows,
    skills_of,
    source_id,
    storable,
    storable_json,
    turn_info,
)


def stored_jsonb(value: Mapping[str, Any]) -> Jsonb:
    """A jsonb parameter made `storable` (dumped by orjson; walked only when a NUL may be in)."""
    return Jsonb(dict(value), dumps=storable_json)


# -- SQL ------------------------------------------------------------------------------------

_META_COLUMNS = (
    "s.id", "s.space_id", "s.label", "s.role", "s.status", "s.scope", "s.metadata",
    "s.turn_count", "s.created_at", "s.updated_at", "s.last_active_at",
    "n.parent_id", "n.source_session_id", "n.depth", 'n."index"', "s.tags",
)
_META = ", ".join(_META_COLUMNS)
_META_WIDTH = len(_META_COLUMNS)
_SESSION_FROM = "sessions s LEFT JOIN topology_nodes n ON n.session_id = s.id"
_THIS_SESSION = "s.id = %(sid)s AND s.space_id = %(space)s"

SQL_GET_SESSION = f"SELECT {_META} FROM {_SESSION_FROM} WHERE {_THIS_SESSION}"

_TURN_SLOTS = ", ".join(
    f"'{k}'" for k in (SYSTEM_PROMPT, MEMORY, INSIGHT, SESSION_CONFIG, COMPRESSION)
)
_TURN_CONTEXT = f"""
SELECT {_META}, s.record_count, s.event_seq,
  (SELECT array_agg(tu.id) FROM turns tu WHERE tu.session_id = s.id AND tu.status = 'running')
    AS running,
  (SELECT array_agg(tu.id) FROM turns tu WHERE tu.session_id = s.id AND tu.status = 'waiting')
    AS waiting,
  (SELECT json_object_agg(d.key, d.content) FROM session_data d
    WHERE d.session_id = s.id AND d.key IN ({_TURN_SLOTS})) AS slots,
  (SELECT r.id FROM records r WHERE r.session_id = s.id ORDER BY r.id DESC LIMIT 1) AS last_id,
  {{history}} AS history
FROM {_SESSION_FROM} WHERE {_THIS_SESSION}
"""
SQL_TURN_CONTEXT = _TURN_CONTEXT.format(history="""(
    SELECT json_agg(json_build_array(r.role, r.content, r.tool_calls, r.tool_call_id)
                    ORDER BY r.id)
    FROM records r WHERE r.session_id = s.id AND r.id > %(after)s)""")
SQL_TURN_CONTEXT_NO_HISTORY = _TURN_CONTEXT.format(history="NULL::json")

# Records from one JSON parameter (`record_rows`), in order (the ids follow the order: it is
# the history's order).
_RECORD_ROWS = """ROWS FROM (json_to_recordset(%(records)s::json)
    AS (role text, content text, calls jsonb, call_id text))
  WITH ORDINALITY AS m(role, content, calls, call_id, ord)"""
# Log entries from one JSON parameter (`event_rows`).
_EVENT_ROWS = """json_to_recordset(%(events)s::json)
    AS x(seq bigint, last_seq bigint, type text, payload jsonb)"""
_INSERT_RECORDS = (
    'INSERT INTO records AS r (session_id, role, content, tool_calls, tool_call_id, "timestamp")'
)
_INSERT_TURN_RECORDS = (
    'INSERT INTO records AS r (session_id, role, content, tool_calls, tool_call_id, "timestamp",'
    ' turn_id)'
)

SQL_SAVE_CALL_METERED: str  # SQL_SAVE_CALL with the usage rows of the call (below)
SQL_SAVE_CALL = f"""
WITH src AS (
  SELECT s.id FROM sessions s WHERE {_THIS_SESSION}
), ins AS (
  {_INSERT_RECORDS}
  SELECT src.id, m.role, m.content, m.calls, m.call_id, %(now)s
  FROM src CROSS JOIN {_RECORD_ROWS}
  ORDER BY m.ord
  RETURNING r.id
), consumed AS (
  DELETE FROM session_data d USING src
  WHERE d.session_id = src.id AND d.key = '{INSIGHT}' AND d.content = %(consumed)s
), upd AS (
  UPDATE sessions AS s SET
    record_count = s.record_count + %(added)s,
    turn_count = s.turn_count + CASE WHEN %(end_turn)s THEN 1 ELSE 0 END,
    last_active_at = CASE WHEN %(end_turn)s THEN %(now)s ELSE s.last_active_at END,
    updated_at = CASE WHEN %(end_turn)s THEN %(now)s ELSE s.updated_at END
  FROM src WHERE s.id = src.id
  RETURNING s.turn_count, s.record_count
)
SELECT upd.turn_count, upd.record_count, coalesce(
  (SELECT max(ins.id) FROM ins),
  (SELECT r.id FROM records r, src WHERE r.session_id = src.id ORDER BY r.id DESC LIMIT 1),
  0)
FROM upd
"""

SQL_SAVE_CALL_METERED = compact(with_usage(SQL_SAVE_CALL))
# A call of a turn: the same, plus (in the same statement, so no extra round trip) the turn
# row (created by its first call, updated by the others), the round's log entries, the
# session's event counter, turns a dead process left running (failed, their records removed)
# and, at the turn's end, the log entries past the retention.
SQL_SAVE_TURN_CALL = f"""
WITH src AS (
  SELECT s.id FROM sessions s WHERE {_THIS_SESSION}
), stale AS (
  UPDATE turns AS tu SET status = 'failed', error = %(stale_error)s, updated_at = %(now)s
  FROM src WHERE tu.session_id = src.id AND tu.id = ANY(%(abandoned)s::uuid[])
    AND tu.status = 'running'
  RETURNING tu.id
), dropped AS (
  DELETE FROM records r USING stale WHERE r.turn_id = stale.id
  RETURNING r.id
), ins AS (
  {_INSERT_TURN_RECORDS}
  SELECT src.id, m.role, m.content, m.calls, m.call_id, %(now)s, %(turn)s
  FROM src CROSS JOIN {_RECORD_ROWS}
  ORDER BY m.ord
  RETURNING r.id
), consumed AS (
  DELETE FROM session_data d USING src
  WHERE d.session_id = src.id AND d.key = '{INSIGHT}' AND d.content = %(consumed)s
), trn AS (
  INSERT INTO turns AS tu (id, session_id, status, input, result, error, created_at,
                          updated_at)
  SELECT %(turn)s, src.id, %(status)s, %(input)s, %(result)s, NULL, %(now)s, %(now)s FROM src
  ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, result = EXCLUDED.result,
    updated_at = EXCLUDED.updated_at
), ev AS (
  INSERT INTO session_events AS e (session_id, seq, last_seq, type, payload, created_at)
  SELECT src.id, x.seq, x.last_seq, x.type, x.payload, %(now)s
  FROM src CROSS JOIN {_EVENT_ROWS}
), pruned AS (
  DELETE FROM session_events e USING src
  WHERE e.session_id = src.id AND e.seq <= %(prune_to)s AND e.last_seq <= %(prune_to)s
), upd AS (
  UPDATE sessions AS s SET
    record_count = s.record_count + %(added)s - (SELECT count(*) FROM dropped),
    event_seq = %(event_seq)s,
    turn_count = s.turn_count + CASE WHEN %(end_turn)s THEN 1 ELSE 0 END,
    last_active_at = CASE WHEN %(end_turn)s THEN %(now)s ELSE s.last_active_at END,
    updated_at = CASE WHEN %(end_turn)s THEN %(now)s ELSE s.updated_at END
  FROM src WHERE s.id = src.id
  RETURNING s.turn_count, s.record_count
)
SELECT upd.turn_count, upd.record_count, coalesce(
  (SELECT max(ins.id) FROM ins),
  (SELECT r.id FROM records r, src WHERE r.session_id = src.id
     AND NOT EXISTS (SELECT 1 FROM dropped WHERE dropped.id = r.id)
   ORDER BY r.id DESC LIMIT 1),
  0)
FROM upd
"""

# A turn that ends without completing (failed, cancelled): its row with the reason, its log
# entries and, when `discard`, none of its records (a cancelled turn leaves no history).
SQL_FINISH_TURN = f"""
WITH src AS (
  SELECT s.id FROM sessions s WHERE {_THIS_SESSION}
), dropped AS (
  DELETE FROM records r USING src
  WHERE r.session_id = src.id AND r.turn_id = %(turn)s AND %(discard)s
  RETURNING r.id
), trn AS (
  INSERT INTO turns AS tu (id, session_id, status, input, result, error, created_at,
                          updated_at)
  SELECT %(turn)s, src.id, %(status)s, %(input)s, NULL, %(error)s, %(now)s, %(now)s FROM src
  ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, error = EXCLUDED.error,
    updated_at = EXCLUDED.updated_at
), ev AS (
  INSERT INTO session_events AS e (session_id, seq, last_seq, type, payload, created_at)
  SELECT src.id, x.seq, x.last_seq, x.type, x.payload, %(now)s
  FROM src CROSS JOIN {_EVENT_ROWS}
), upd AS (
  UPDATE sessions AS s SET record_count = s.record_count - (SELECT count(*) FROM dropped),
    event_seq = greatest(s.event_seq, %(event_seq)s)
  FROM src WHERE s.id = src.id
  RETURNING s.record_count
)
SELECT upd.record_count FROM upd
"""

_TURN_COLUMNS = "tu.id, tu.session_id, tu.status, tu.input, tu.result, tu.error, tu.created_at, " \
    "tu.updated_at"
SQL_GET_TURN = f"""
SELECT {_TURN_COLUMNS} FROM turns tu JOIN sessions s ON s.id = tu.session_id
WHERE {_THIS_SESSION} AND tu.id = %(turn)s
"""
SQL_LIST_TURNS = f"""
SELECT {_TURN_COLUMNS}, s.id FROM sessions s LEFT JOIN turns tu ON tu.session_id = s.id
WHERE {_THIS_SESSION}
ORDER BY tu.created_at DESC NULLS LAST, tu.id DESC
LIMIT %(limit)s
"""
SQL_READ_EVENTS = f"""
SELECT s.event_seq,
  (SELECT min(e.seq) FROM session_events e WHERE e.session_id = s.id),
  (SELECT json_agg(json_build_array(e.seq, e.last_seq, e.type, e.payload) ORDER BY e.seq)
   FROM (SELECT e.seq, e.last_seq, e.type, e.payload FROM session_events e
         WHERE e.session_id = s.id AND e.last_seq > %(since)s
         ORDER BY e.seq LIMIT %(limit)s) e)
FROM sessions s WHERE {_THIS_SESSION}
"""
# The same statements, also recording the calls' usage (sessions_app/accounting/record.py).
METERED = {SQL_SAVE_CALL: SQL_SAVE_CALL_METERED,
           SQL_SAVE_TURN_CALL: compact(with_usage(SQL_SAVE_TURN_CALL))}

_SOURCE_EXISTS = (
    "EXISTS (SELECT 1 FROM sessions s WHERE s.id = %(source)s AND s.space_id = %(space)s)"
)
_PARENT_WHERE = {
    "flat": f"n.space_id = %(space)s AND n.parent_id IS NULL AND {_SOURCE_EXISTS}",
    "tree": f"n.session_id = %(source)s AND {_SOURCE_EXISTS}",
}
# A session change that logs its own entry (outside a turn, under the session's lock): the
# entry takes the session's next seq, counted up in the same statement (`logged`).
_LOG_ENTRY = """INSERT INTO session_events AS e (session_id, seq, last_seq, type, payload,
                                       created_at)
  SELECT {session}, logged.event_seq, logged.event_seq, {type}, %(payload)s, %(now)s
  FROM logged WHERE %(log)s
  RETURNING e.seq"""

# An entry of its own for a change made under the session's lock (memory, insight).
SQL_LOG_EVENT = f"""
WITH logged AS (
  UPDATE sessions AS s SET event_seq = s.event_seq + 1 WHERE {_THIS_SESSION}
  RETURNING s.id, s.event_seq
)
{_LOG_ENTRY.format(session="logged.id", type="%(type)s")}
"""

# A fork is ONE statement (atomic in autocommit). It counts up the parent's next child index:
# concurrent forks under one parent wait for that row, one statement each (not a transaction),
# and a waiter reads the count as the one before it left it. The count is at least the
# siblings' highest index + 1 (nodes made elsewhere: imports, the ORM store); that subquery
# reads the statement's snapshot, which the count covers under concurrency.
SQL_INSERT_CHILD = {
    placement: f"""
WITH par AS (
  UPDATE topology_nodes AS n SET next_child_index = 1 + greatest(n.next_child_index,
    (SELECT coalesce(max(t."index") + 1, 0) FROM topology_nodes t
     WHERE t.parent_id = n.session_id))
  WHERE {where}
  RETURNING n.session_id AS id, n.depth AS depth, n.next_child_index - 1 AS idx
), new_session AS (
  INSERT INTO sessions AS s (id, space_id, label, role, status, scope, metadata,
                             turn_count, record_count, created_at, updated_at, last_active_at)
  SELECT %(id)s, %(space)s, %(label)s, 'standard', 'active', %(scope)s,
         %(metadata)s, 0, %(added)s, %(now)s, %(now)s, %(now)s
  FROM par
  RETURNING s.id
), new_node AS (
  INSERT INTO topology_nodes AS t (session_id, space_id, parent_id, source_session_id, depth,
                                   "index", label)
  SELECT new_session.id, %(space)s, par.id, %(source)s, par.depth + 1, par.idx, %(label)s
  FROM new_session CROSS JOIN par
  RETURNING t.parent_id, t.depth, t."index"
), new_slots AS (
  INSERT INTO session_data AS d (session_id, key, content, updated_at)
  SELECT new_session.id, x.key, x.content, %(now)s
  FROM new_session CROSS JOIN unnest(%(keys)s::text[], %(values)s::text[]) AS x(key, content)
), new_records AS (
  {_INSERT_RECORDS}
  SELECT new_session.id, m.role, m.content, m.calls, m.call_id, %(now)s
  FROM new_session CROSS JOIN {_RECORD_ROWS}
  ORDER BY m.ord
), logged AS (
  UPDATE sessions AS s SET event_seq = s.event_seq + 1
  FROM new_node WHERE s.id = %(source)s AND %(log)s
  RETURNING s.event_seq
), ev AS (
  {_LOG_ENTRY.format(session="%(source)s", type=f"'{SESSION_FORKED}'")}
)
SELECT new_node.parent_id, new_node.depth, new_node."index", (SELECT seq FROM ev)
FROM new_node
"""
    for placement, where in _PARENT_WHERE.items()
}

# Archive / unarchive: the new status (idempotent; the main session is never archived) and the
# fresh meta, in one statement.
SQL_SET_STATUS = f"""
WITH logged AS (
  UPDATE sessions AS s SET status = %(status)s, updated_at = %(now)s,
    event_seq = s.event_seq + CASE WHEN %(log)s THEN 1 ELSE 0 END
  WHERE {_THIS_SESSION} AND s.status <> %(status)s
    AND (%(status)s = 'active' OR s.role <> 'main')
  RETURNING s.id, s.status, s.updated_at, s.event_seq
), ev AS (
  {_LOG_ENTRY.format(session="logged.id", type="%(event)s")}
)
SELECT {_META.replace("s.status", "coalesce(logged.status, s.status)")
              .replace("s.updated_at", "coalesce(logged.updated_at, s.updated_at)")},
  (SELECT seq FROM ev)
FROM {_SESSION_FROM} LEFT JOIN logged ON logged.id = s.id
WHERE {_THIS_SESSION}
"""

SQL_READ_SLOT = f"""
SELECT d.content FROM sessions s
LEFT JOIN session_data d ON d.session_id = s.id AND d.key = %(key)s
WHERE {_THIS_SESSION}
"""
_UPSERT_SLOTS = """INSERT INTO session_data AS d (session_id, key, content, updated_at)
  {rows}
  ON CONFLICT (session_id, key)
  DO UPDATE SET content = EXCLUDED.content, updated_at = EXCLUDED.updated_at"""
# A slot write answers the session's status (no row: no such session); with only_active it
# writes nothing on an archived session.
_WRITABLE = "(src.status = 'active' OR NOT %(only_active)s)"
SQL_WRITE_SLOT = f"""
WITH src AS (
  SELECT s.id, s.status FROM sessions s WHERE {_THIS_SESSION}
), up AS (
  {_UPSERT_SLOTS.format(rows="SELECT src.id, %(key)s, %(content)s, %(now)s FROM src "
                             f"WHERE {_WRITABLE}")}
)
SELECT src.status FROM src
"""
SQL_DELETE_SLOT = f"""
WITH src AS (
  SELECT s.id, s.status FROM sessions s WHERE {_THIS_SESSION}
), del AS (
  DELETE FROM session_data d USING src
  WHERE d.session_id = src.id AND d.key = %(key)s AND {_WRITABLE}
)
SELECT src.status FROM src
"""

SQL_SPACE_PROMPTS = """
SELECT sp.system_prompt, sp.consolidate_prompt, sp.integrate_prompt
FROM spaces sp WHERE sp.id = %(space)s
"""
SQL_MAIN_SESSION = (
    "SELECT s.id FROM sessions s WHERE s.space_id = %(space)s AND s.role = 'main' "
    "ORDER BY s.created_at, s.id LIMIT 1"
)
SQL_COLLECT_MEMORIES = f"""
SELECT s.id, s.label, d.content, s.status = 'archived'
FROM session_data d JOIN sessions s ON s.id = d.session_id
WHERE s.space_id = %(space)s AND s.role = 'standard'
  AND d.key = '{MEMORY}' AND d.content <> ''
ORDER BY s.created_at, s.id
"""
SQL_CONSOLIDATION_INPUT = f"""
SELECT {_META}, s.memory_covered_up_to,
  (SELECT json_object_agg(d.key, d.content) FROM session_data d
    WHERE d.session_id = s.id AND d.key IN ('{MEMORY}', '{CONSOLIDATE_PROMPT}')) AS slots,
  (SELECT sp.consolidate_prompt FROM spaces sp WHERE sp.id = s.space_id) AS space_prompt,
  (SELECT json_agg(json_build_array(r.id, r.role, r.content, r.tool_calls, r.tool_call_id)
                   ORDER BY r.id)
    FROM records r WHERE r.session_id = s.id AND r.id > s.memory_covered_up_to) AS records
FROM {_SESSION_FROM} WHERE {_THIS_SESSION}
"""
# The marker test sits on the updated table itself, so a concurrent save that committed first
# is seen (READ COMMITTED re-checks the row) and the older result is dropped.
SQL_SAVE_CONSOLIDATION = f"""
WITH src AS (
  SELECT s.id FROM sessions s WHERE {_THIS_SESSION}
), upd AS (
  UPDATE sessions AS s SET memory_covered_up_to = %(covered)s FROM src
  WHERE s.id = src.id AND s.memory_covered_up_to < %(covered)s
  RETURNING s.id
), up AS (
  {_UPSERT_SLOTS.format(rows=f"SELECT upd.id, '{MEMORY}', %(content)s, %(now)s FROM upd")}
)
SELECT (SELECT count(*) FROM src), (SELECT count(*) FROM upd)
"""
SQL_SAVE_INTEGRATION = f"""
WITH main AS (
  SELECT s.id FROM sessions s WHERE {_THIS_SESSION}
), slots AS (
  SELECT main.id AS session_id, '{MEMORY}'::text AS key, %(synthesis)s::text AS content
  FROM main
  UNION ALL
  SELECT s.id, '{INSIGHT}'::text, x.content
  FROM unnest(%(ids)s::uuid[], %(contents)s::text[]) AS x(id, content)
  JOIN sessions s ON s.id = x.id AND s.space_id = %(space)s AND s.status = 'active'
  WHERE EXISTS (SELECT 1 FROM main)
), up AS (
  {_UPSERT_SLOTS.format(rows="SELECT slots.session_id, slots.key, slots.content, %(now)s "
                                 "FROM slots")}
)
SELECT count(*) FROM main
"""
SQL_SAVE_CONSOLIDATION_METERED = with_usage(SQL_SAVE_CONSOLIDATION)
SQL_SAVE_INTEGRATION_METERED = with_usage(SQL_SAVE_INTEGRATION)
SQL_BOOTSTRAP = f"""
WITH RECURSIVE anc (id, hops) AS (
  SELECT t.parent_id, 1 FROM topology_nodes t
  WHERE t.session_id = %(sid)s AND t.space_id = %(space)s AND t.parent_id IS NOT NULL
  UNION ALL
  SELECT t.parent_id, anc.hops + 1 FROM anc
  JOIN topology_nodes t ON t.session_id = anc.id AND t.space_id = %(space)s
  WHERE t.parent_id IS NOT NULL
) CYCLE id SET is_cycle USING path
SELECT {_META},
  (SELECT json_agg(d.content ORDER BY anc.hops) FROM anc
   JOIN session_data d ON d.session_id = anc.id
   WHERE NOT anc.is_cycle AND d.key = '{MEMORY}' AND d.content <> '') AS memories,
  (SELECT d.content FROM session_data d
   WHERE d.session_id = s.id AND d.key = '{MEMORY}') AS own_memory,
  (SELECT json_object_agg(c.path, c.value) FROM core_data c WHERE c.space_id = %(space)s) AS core
FROM {_SESSION_FROM} WHERE {_THIS_SESSION}
"""
SQL_CORE_DATA = "SELECT c.path, c.value FROM core_data c WHERE c.space_id = %(space)s"

# One statement: removes what goes (never a key being set, so the upsert below has no row
# deleted under it), then upserts the new values.
SQL_WRITE_CORE = """
WITH removed AS (
  DELETE FROM core_data WHERE space_id = %(space)s
    AND (%(clear)s OR path = ANY(%(delete)s))
    AND NOT (path IN (SELECT jsonb_object_keys(%(values)s::jsonb)))
  RETURNING 1
), written AS (
  INSERT INTO core_data (space_id, path, value)
  SELECT %(space)s, key, value FROM jsonb_each(%(values)s::jsonb)
  ON CONFLICT (space_id, path) DO UPDATE SET value = EXCLUDED.value
  RETURNING 1
)
SELECT (SELECT count(*) FROM removed), (SELECT count(*) FROM written)
"""

SQL_SESSION_TREE = """
SELECT n.session_id::text, n.parent_id::text, n.source_session_id::text, s.label, s.status,
       s.turn_count, s.metadata
FROM topology_nodes n JOIN sessions s ON s.id = n.session_id
WHERE n.space_id = %(space)s
ORDER BY n.depth, n."index"
"""
SQL_SESSION_MESSAGES = f"""
SELECT r.role, r.content, r."timestamp", r.tool_calls, r.tool_call_id, r.id
FROM sessions s LEFT JOIN records r ON r.session_id = s.id
WHERE {_THIS_SESSION}
ORDER BY r.id
"""

SQL_ROOT_SESSION = (
    "INSERT INTO sessions (id, space_id, label, role, status, scope, metadata, turn_count, "
    "record_count, created_at, updated_at, last_active_at) VALUES (%s, %s, %s, 'main', 'active', "
    "NULL, '{}'::jsonb, 0, 0, %s, %s, %s)",
    "INSERT INTO topology_nodes (session_id, space_id, parent_id, source_session_id, depth, "
    '"index", label) VALUES (%s, %s, NULL, NULL, 0, 0, %s)',
    f"INSERT INTO session_data (session_id, key, content, updated_at) VALUES "
    f"(%s, '{SYSTEM_PROMPT}', %s, %s)",
)


# -- helpers ----------------------------------------------------------------------------------

@asynccontextmanager
async def _connection() -> AsyncIterator[psycopg.AsyncConnection]:
    """A pooled connection for one unit of work; no database is ServiceUnavailable (503)."""
    try:
        async with pgpool.connection() as conn:
            yield conn
    except pgpool.DatabaseUnavailable as exc:
        raise ServiceUnavailable() from exc


def _meta(row: Sequence[Any]) -> SessionMeta:
    (sid, space_id, label, role, status, scope, metadata, turn_count, created_at,
     updated_at, last_active_at, parent_id, node_source, depth, index, tags) = row[:_META_WIDTH]
    return SessionMeta(
        id=str(sid),
        space_id=str(space_id),
        label=label,
        role=role,
        status=status,
        scope=scope,
        metadata=metadata or {},
        turn_count=turn_count,
        created_at=created_at,
        updated_at=updated_at,
        last_active_at=last_active_at,
        parent_id=str(parent_id) if parent_id else None,
        source_session_id=source_id(node_source, metadata),
        depth=depth or 0,
        index=index or 0,
        tags=tuple(tags or ()),
    )


def root_session_statements(space: Any) -> list[tuple[str, list[Any]]]:
    """A new space's main session, its topology node and (if the space has one) its
    system_prompt slot, like `receivers.create_root_session` does with the ORM: statements that
    `spaces.services.aspace_create` runs as parts of the space's own INSERT."""
    session_id, now = uuid.uuid4(), timezone.now()
    session, node, prompt = SQL_ROOT_SESSION
    statements = [
        (session, [session_id, space.id, space.label, now, now, now]),
        (node, [session_id, space.id, space.label]),
    ]
    if space.system_prompt:
        statements.append((prompt, [session_id, space.system_prompt, now]))
    return statements


_FORK_ATTEMPTS = 3  # the count orders forks; a sibling made by the ORM meanwhile costs a retry

# -- the store --------------------------------------------------------------------------------

from .pg_approvals import PgApprovals  # noqa: E402  (they build their SQL from the above)
from .pg_conversations import PgConversations  # noqa: E402


def _turn_context(row: Sequence[Any] | None, history_after: int | None) -> TurnContext:
    """A turn context from its row (SQL_TURN_CONTEXT); no row: the session is not found."""
    if row is None:
        raise SessionNotFound()
    meta = _meta(row)
    record_count, event_seq, running, waiting, slots, last_id, history = row[_META_WIDTH:]
    slots = slots or {}
    is_main = meta.role == "main"
    return TurnContext(
        session=meta,
        system_prompt=slots.get(SYSTEM_PROMPT),
        insight=None if is_main else slots.get(INSIGHT),
        synthesis=slots.get(MEMORY) if is_main else None,
        history=tuple(message_from_row(*r) for r in history or ()),
        skills=skills_of(slots.get(SESSION_CONFIG)),
        config=json_object(slots.get(SESSION_CONFIG)),
        compression=compression_of(slots.get(COMPRESSION)),
        history_after=history_after,
        record_count=record_count,
        last_record_id=last_id or 0,
        event_seq=event_seq,
        running_turns=tuple(str(t) for t in running or ()),
        waiting_turns=tuple(str(t) for t in waiting or ()),
    )


class PgSpaceStore(PgConversations, PgApprovals):
    """Storage for one space on PostgreSQL (see `engine.ports.SpaceStore` for the guarantees)."""

    def __init__(self, space_id: str, *, on_turn: TurnListener | None = None) -> None:
        self.space_id = str(space_id)
        self._space = parse_uuid(space_id)
        self._on_turn = on_turn

    def _params(self, session_id: str | None = None, **more: Any) -> dict[str, Any]:
        params: dict[str, Any] = {"space": self._space, **more}
        if session_id is not None:
            sid = parse_uuid(session_id)
            if sid is None or self._space is None:
                raise SessionNotFound()
            params["sid"] = sid
        return params

    async def _one(self, sql: str, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """One write statement: not retried, since a lost connection leaves its outcome
        unknown (the kept history notices a save that did happen)."""
        async with _connection() as conn:
            return await conn.fetch(sql, params)

    async def _one_grouped(self, sql: str, params: Mapping[str, Any]
                           ) -> tuple[Any, ...] | None:
        """`_one`, committed with the writes of other sessions that wait meanwhile
        (`pgpool.GroupCommit`)."""
        try:
            return await pgpool.group_commit(sql, params)
        except pgpool.DatabaseUnavailable as exc:
            raise ServiceUnavailable() from exc

    async def _read(self, sql: str, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """One read-only statement, retried once on a lost connection."""
        try:
            return await pgpool.fetchone(sql, params)
        except pgpool.DatabaseUnavailable as exc:
            raise ServiceUnavailable() from exc

    async def _read_all(self, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        try:
            return await pgpool.fetchall(sql, params)
        except pgpool.DatabaseUnavailable as exc:
            raise ServiceUnavailable() from exc

    # -- SpaceStore ----------------------------------------------------------------------------
    async def get_session(self, session_id: str) -> SessionMeta:
        row = await self._read(SQL_GET_SESSION, self._params(session_id))
        if row is None:
            raise SessionNotFound()
        return _meta(row)

    async def load_turn_context(
        self, session_id: str, *, history_after: int | None = 0
    ) -> TurnContext:
        params = self._params(session_id, after=history_after or 0)
        sql = SQL_TURN_CONTEXT_NO_HISTORY if history_after is None else SQL_TURN_CONTEXT
        return _turn_context(await self._read(sql, params), history_after)

    def turn_context_read(self, session_id: str, *, history_after: int) -> LockedRead:
        # The session-lock connection sends it right after the lock's statement (the
        # lock's round trip carries it: runtime/locks.py).
        return LockedRead(SQL_TURN_CONTEXT, self._params(session_id, after=history_after),
                          functools.partial(_turn_context, history_after=history_after))

    async def save_call(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        consumed_insight: str | None = None,
        end_turn: bool = False,
        usage: Sequence[CallUsage] = (),
        turn: TurnWrite | None = None,
    ) -> SaveResult:
        params = self._params(
            session_id, now=timezone.now(), consumed=consumed_insight, added=len(messages),
            end_turn=end_turn, **record_rows(messages),
        )
        sql = SQL_SAVE_CALL
        if turn is not None:
            sql = SQL_SAVE_TURN_CALL
            turn_pk = parse_uuid(turn.turn_id)
            params.update(
                turn=turn_pk, status=turn.status, input=storable(turn.input),
                result=None if turn.result is None else stored_jsonb(turn.result),
                event_seq=turn.event_seq, stale_error=ABANDONED_ERROR,
                abandoned=[a for a in map(parse_uuid, turn.abandoned) if a],
                prune_to=prune_to(turn.event_seq) if end_turn else 0,
                **event_rows(turn.events),
            )
        if usage:  # the calls' usage rides in the same statement: no round trip of its own
            params.update(usage_params(usage))
            sql = METERED[sql]
        row = await self._one_grouped(sql, params)
        if row is None:
            raise SessionNotFound()
        result = SaveResult(turn_count=row[0], record_count=row[1], last_record_id=row[2])
        if end_turn and self._on_turn is not None:  # autocommit: the statement has committed
            self._on_turn(self.space_id, str(params["sid"]), result.turn_count)
        return result

    async def create_child(self, child: NewChild, *, logged: Logged | None = None
                           ) -> SessionMeta:
        params = self._params(child.source_id)
        source = params.pop("sid")
        now = timezone.now()
        label, scope = storable(child.label), storable(child.scope)
        metadata = fork_metadata(str(source), child.from_message)
        slots = {SYSTEM_PROMPT: storable(child.system_prompt)}
        if child.session_config:
            slots[SESSION_CONFIG] = session_config_text(child.session_config)
        slots = {k: v for k, v in slots.items() if v is not None}
        new_id = uuid.uuid4()
        params.update(
            source=source, id=new_id, label=label, scope=scope, metadata=Jsonb(metadata),
            added=len(child.records), now=now, keys=list(slots), values=list(slots.values()),
            log=logged is not None, **record_rows(child.records),
        )
        payload = forked_payload(str(new_id), label, scope)
        params["payload"] = Jsonb(payload)
        sql = SQL_INSERT_CHILD[child.placement]
        for attempt in range(_FORK_ATTEMPTS):
            try:
                row = await self._one(sql, params)
                break
            except psycopg.errors.UniqueViolation as exc:
                if exc.diag.constraint_name != "unique_sibling_index" or (
                    attempt == _FORK_ATTEMPTS - 1
                ):
                    raise
        if row is None:
            raise SessionNotFound()
        parent_id, depth, index, seq = row
        if logged is not None and seq is not None:  # autocommit: the statement has committed
            logged(LogEvent(seq, SESSION_FORKED, payload))
        return SessionMeta(
            id=str(new_id), space_id=self.space_id, label=label, role="standard",
            status="active", scope=scope, metadata=metadata, turn_count=0,
            created_at=now, updated_at=now, last_active_at=now, parent_id=str(parent_id),
            source_session_id=str(source), depth=depth, index=index,
        )

    async def archive(self, session_id: str, *, logged: Logged | None = None) -> SessionMeta:
        return await self._set_status(session_id, "archived", SESSION_ARCHIVED, logged)

    async def unarchive(self, session_id: str, *, logged: Logged | None = None) -> SessionMeta:
        return await self._set_status(session_id, "active", SESSION_UNARCHIVED, logged)

    async def _set_status(self, session_id: str, status: str, event: str,
                          logged: Logged | None) -> SessionMeta:
        params = self._params(session_id, status=status, now=timezone.now(), event=event,
                              log=logged is not None, payload=Jsonb({}))
        row = await self._one(SQL_SET_STATUS, params)
        if row is None:
            raise SessionNotFound()
        seq = row[_META_WIDTH]
        if logged is not None and seq is not None:
            logged(LogEvent(seq, event, {}))
        return _meta(row)

    async def log_event(self, session_id: str, type_: str,
                        payload: Mapping[str, Any]) -> LogEvent:
        row = await self._one(SQL_LOG_EVENT, self._params(
            session_id, type=type_, payload=stored_jsonb(payload), now=timezone.now(),
            log=True))
        if row is None:
            raise SessionNotFound()
        return LogEvent(row[0], type_, payload)

    async def read_slot(self, session_id: str, key: str) -> str | None:
        row = await self._read(SQL_READ_SLOT, self._params(session_id, key=key))
        if row is None:
            raise SessionNotFound()
        return row[0]

    async def write_slot(
        self, session_id: str, key: str, content: str | None, *, only_active: bool = False
    ) -> None:
        if content is None:
            params = self._params(session_id, key=key, only_active=only_active)
            row = await self._one(SQL_DELETE_SLOT, params)
        else:
            params = self._params(session_id, key=key, content=storable(content),
                                  now=timezone.now(), only_active=only_active)
            row = await self._one(SQL_WRITE_SLOT, params)
        if row is None:
            raise SessionNotFound()
        if only_active and row[0] != "active":
            raise SessionArchived(session_id)

    async def save_compression(self, session_id: str, cache: CompressionCache) -> None:
        await self.write_slot(session_id, COMPRESSION, compression_text(cache))

    async def space_prompts(self) -> SpacePrompts:
        row = await self._read(SQL_SPACE_PROMPTS, self._params()) if self._space else None
        if row is None:
            raise SpaceNotFound()
        return SpacePrompts(*row)

    async def main_session_id(self) -> str:
        row = await self._read(SQL_MAIN_SESSION, self._params()) if self._space else None
        if row is None:
            raise SpaceNotFound()
        return str(row[0])

    async def collect_memories(self) -> list[ChildMemory]:
        if self._space is None:
            return []
        rows = await self._read_all(SQL_COLLECT_MEMORIES, self._params())
        return [
            ChildMemory(str(sid), label, memory, archived=archived)
            for sid, label, memory, archived in rows
        ]

    async def load_consolidation_input(self, session_id: str) -> ConsolidationInput:
        row = await self._read(SQL_CONSOLIDATION_INPUT, self._params(session_id))
        if row is None:
            raise SessionNotFound()
        covered, slots, space_prompt, records = row[_META_WIDTH:]
        slots = slots or {}
        return ConsolidationInput(
            session=_meta(row),
            memory=slots.get(MEMORY),
            session_prompt=slots.get(CONSOLIDATE_PROMPT),
            space_prompt=space_prompt,
            covered_up_to=covered,
            records=tuple((r[0], message_from_row(*r[1:])) for r in records or ()),
        )

    async def save_consolidation(self, session_id: str, memory: str, covered_up_to: int,
                                 *, usage: Sequence[CallUsage] = ()) -> bool:
        params = self._params(session_id, covered=covered_up_to, content=storable(memory),
                              now=timezone.now())
        if usage:
            params.update(usage_params(usage))
        row = await self._one(SQL_SAVE_CONSOLIDATION_METERED if usage else SQL_SAVE_CONSOLIDATION,
                              params)
        if not row or not row[0]:
            raise SessionNotFound()
        return bool(row[1])

    async def save_integration(
        self, main_session_id: str, synthesis: str, insights: Sequence[Insight],
        *, usage: Sequence[CallUsage] = (),
    ) -> None:
        wanted = {pk: i.content for i in insights if (pk := parse_uuid(i.session_id))}
        params = self._params(
            main_session_id, synthesis=storable(synthesis), now=timezone.now(),
            ids=list(wanted), contents=[storable(c) for c in wanted.values()],
        )
        if usage:
            params.update(usage_params(usage))
        row = await self._one(SQL_SAVE_INTEGRATION_METERED if usage else SQL_SAVE_INTEGRATION,
                              params)
        if not row or not row[0]:
            raise SessionNotFound()

    async def record_usage(self, calls: Sequence[CallUsage]) -> None:
        if calls:
            await self._one(SQL_RECORD_USAGE, self._params(**usage_params(calls)))

    async def load_bootstrap(self, session_id: str) -> Bootstrap:
        row = await self._read(SQL_BOOTSTRAP, self._params(session_id))
        if row is None:
            raise SessionNotFound()
        memories, own_memory, core = row[_META_WIDTH:]
        meta = _meta(row)
        return Bootstrap(
            core=core or {},
            memories=tuple(memories or ()),
            current_memory=own_memory,
            scope=meta.scope,
            session=meta,
        )

    async def core_data(self) -> Mapping[str, Any]:
        if self._space is None:
            return {}
        return dict(await self._read_all(SQL_CORE_DATA, self._params()))

    async def write_core(
        self, values: Mapping[str, Any], *, delete: Sequence[str] = (), clear: bool = False
    ) -> None:
        if self._space is None:
            raise SpaceNotFound()
        params = self._params(values=stored_jsonb(values), delete=list(delete),
                              clear=clear)
        await self._one(SQL_WRITE_CORE, params)

    async def finish_turn(
        self, session_id: str, turn: TurnWrite, *, error: str | None, discard: bool
    ) -> None:
        params = self._params(
            session_id, now=timezone.now(), turn=parse_uuid(turn.turn_id), status=turn.status,
            input=storable(turn.input), error=storable(error), discard=discard,
            event_seq=turn.event_seq, **event_rows(turn.events),
        )
        if await self._one(SQL_FINISH_TURN, params) is None:
            raise SessionNotFound()

    async def get_turn(self, session_id: str, turn_id: str) -> TurnInfo:
        turn = parse_uuid(turn_id)
        row = await self._read(SQL_GET_TURN, self._params(session_id, turn=turn)) \
            if turn else None
        if row is None:
            await self.get_session(session_id)  # an unknown session says so first
            raise TurnNotFound()
        return turn_info(*row)

    async def list_turns(self, session_id: str, *, limit: int = 100) -> list[TurnInfo]:
        rows = await self._read_all(SQL_LIST_TURNS, self._params(session_id, limit=limit))
        if not rows:
            raise SessionNotFound()
        return [turn_info(*r[:-1]) for r in rows if r[0] is not None]

    async def read_events(self, session_id: str, since: int, *, limit: int = 1000) -> EventPage:
        row = await self._read(SQL_READ_EVENTS, self._params(session_id, since=since,
                                                              limit=limit))
        if row is None:
            raise SessionNotFound()
        current, first, entries = row
        return event_page(current, first or 0, entries or (), since)

    # -- REST reads (not part of the engine port) ----------------------------------------------
    async def session_tree(self) -> dict[str, Any]:
        """The space's sessions as one recursive tree from the main session."""
        rows = await self._read_all(SQL_SESSION_TREE, self._params()) if self._space else []
        return session_tree_from_rows(rows)

    async def session_messages(self, session_id: str) -> list[dict[str, Any]]:
        """The session's records as the REST API lists them; SessionNotFound unless the
        session is in this space."""
        rows = await self._read_all(SQL_SESSION_MESSAGES, self._params(session_id))
        if not rows:
            raise SessionNotFound()
        return [message_json(*r) for r in rows if r[0] is not None]
