"""Writing metered LLM calls: one `llm_calls` row each, and the `usage_daily` rollup upserted in
the same transaction.

On PostgreSQL the rows ride in the statement the store sends anyway: `USAGE_CTES` are
data-modifying CTEs that `with_usage` puts in front of a store statement (`save_call`'s), so
recording a turn's calls adds no round trip. The rollup groups the calls first, since one
statement cannot update a row twice. On other databases `orm_record` does the same inside the
store's transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC as _UTC
from typing import Any

from django.db import connection, models

from ..engine.usage import CallUsage
from ..store.common import json_rows, storable
from .models import NO_KEY, LLMCall

# The calls from one JSON parameter (`usage_params`).
_USAGE_ROWS = """json_to_recordset(%(usage)s::json)
  AS u(at timestamptz, kind text, provider text, model text, input_tokens bigint,
       output_tokens bigint, cached_tokens bigint, duration_ms bigint, cost_nanos bigint,
       api_key_id bigint, turn_id text, session_id uuid)"""

_CALL_COLUMNS = ("at, kind, provider, model, input_tokens, output_tokens, cached_tokens, "
                 "duration_ms, cost_nanos, api_key_id, turn_id, session_id")
_SUMS = "input_tokens, output_tokens, cached_tokens, duration_ms, cost_nanos"

# The space's owner pays; a space deleted meanwhile records nothing (no owner to charge).
USAGE_CTES = f"""
usage_owner AS (
  SELECT sp.user_id FROM spaces sp WHERE sp.id = %(space)s
), usage_rows AS (
  SELECT * FROM {_USAGE_ROWS}
), usage_calls AS (
  INSERT INTO llm_calls ({_CALL_COLUMNS}, user_id, space_id)
  SELECT {", ".join("u." + c.strip() for c in _CALL_COLUMNS.split(","))},
         o.user_id, %(space)s
  FROM usage_owner o CROSS JOIN usage_rows u
), usage_rollup AS (
  INSERT INTO usage_daily AS ud (day, user_id, space_id, session_id, api_key_id, provider, model,
                                calls, {_SUMS})
  SELECT (u.at AT TIME ZONE 'UTC')::date, o.user_id, %(space)s, u.session_id, u.api_key_id,
         u.provider, u.model, count(*), sum(u.input_tokens), sum(u.output_tokens),
         sum(u.cached_tokens), sum(u.duration_ms), sum(u.cost_nanos)
  FROM usage_owner o CROSS JOIN usage_rows u
  WHERE u.session_id IS NOT NULL
  GROUP BY 1, 2, 4, 5, 6, 7
  ON CONFLICT (day, user_id, space_id, session_id, api_key_id, provider, model) DO UPDATE SET
    calls = ud.calls + EXCLUDED.calls,
    input_tokens = ud.input_tokens + EXCLUDED.input_tokens,
    output_tokens = ud.output_tokens + EXCLUDED.output_tokens,
    cached_tokens = ud.cached_tokens + EXCLUDED.cached_tokens,
    duration_ms = ud.duration_ms + EXCLUDED.duration_ms,
    cost_nanos = ud.cost_nanos + EXCLUDED.cost_nanos
)"""

SQL_RECORD_USAGE = f"WITH {USAGE_CTES}\nSELECT count(*) FROM usage_owner"


def with_usage(statement: str) -> str:
    """`statement` (which starts with WITH) with the usage CTEs in front: they run whether or
    not the rest of the statement reads them, in the same transaction."""
    head, rest = statement.lstrip().split(None, 1)
    assert head.upper() == "WITH", "with_usage needs a statement that starts with WITH"
    return f"WITH {USAGE_CTES},\n{rest}"


def usage_params(calls: Sequence[CallUsage]) -> dict[str, str]:
    """The `usage` parameter `USAGE_CTES` reads (an empty list: nothing recorded)."""
    return {"usage": json_rows([
        {"at": c.at.isoformat(), "kind": c.kind, "provider": storable(c.provider),
         "model": storable(c.model), "input_tokens": c.input_tokens,
         "output_tokens": c.output_tokens, "cached_tokens": c.cached_tokens,
         "duration_ms": c.duration_ms, "cost_nanos": c.cost_nanos,
         "api_key_id": c.api_key_id or NO_KEY, "turn_id": c.turn_id,
         "session_id": None if c.session_id is None else str(c.session_id)}
        for c in calls])}


def orm_record(space_id: Any, owner_id: Any, calls: Sequence[CallUsage]) -> None:
    """The same rows through the ORM; call it inside the store's transaction."""
    if not calls or owner_id is None:
        return
    LLMCall.objects.bulk_create([
        LLMCall(at=c.at, user_id=owner_id, api_key_id=c.api_key_id or NO_KEY,
                space_id=space_id, session_id=c.session_id, turn_id=c.turn_id, kind=c.kind,
                provider=c.provider, model=c.model, input_tokens=c.input_tokens,
                output_tokens=c.output_tokens, cached_tokens=c.cached_tokens,
                duration_ms=c.duration_ms, cost_nanos=c.cost_nanos)
        for c in calls
    ])
    rows = []
    ops = connection.ops
    for c in calls:
        if c.session_id is not None:
            rows.append((ops.adapt_datefield_value(c.at.astimezone(_UTC).date()), owner_id,
                         _uuid(space_id), _uuid(c.session_id), c.api_key_id or NO_KEY,
                         c.provider, c.model, 1,
                         c.input_tokens, c.output_tokens, c.cached_tokens, c.duration_ms,
                         c.cost_nanos))
    if rows:
        # One upsert statement for every row (SQLite has the same ON CONFLICT clause); rows of
        # one key are added up by the database as they come.
        with connection.cursor() as cursor:
            cursor.executemany(_ORM_UPSERT, rows)


_UUID_FIELD = models.UUIDField()


def _uuid(value: Any) -> Any:
    """A UUID as this database's column holds it (32 hex digits on SQLite)."""
    return _UUID_FIELD.get_db_prep_value(uuid.UUID(str(value)), connection)


_ORM_UPSERT = f"""
INSERT INTO usage_daily AS ud (day, user_id, space_id, session_id, api_key_id, provider, model,
                               calls, {_SUMS})
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (day, user_id, space_id, session_id, api_key_id, provider, model) DO UPDATE SET
  calls = ud.calls + excluded.calls,
  input_tokens = ud.input_tokens + excluded.input_tokens,
  output_tokens = ud.output_tokens + excluded.output_tokens,
  cached_tokens = ud.cached_tokens + excluded.cached_tokens,
  duration_ms = ud.duration_ms + excluded.duration_ms,
  cost_nanos = ud.cost_nanos + excluded.cost_nanos
"""
