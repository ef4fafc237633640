"""The hot paths' statements go straight to libpq (`spaces.pgpool.LeanStatements`, through
`CountingConnection.fetch`): the same rows, errors and round trips as psycopg's own cursor,
each statement prepared on its first use in the same round trip, and a connection left in an
unknown state (a statement cancelled or broken midway) closed rather than lent again."""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
import uuid

import psycopg
import pytest
from psycopg import pq
from psycopg.types.json import Jsonb

from spaces import pgpool

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

# Parameters of every kind the store sends: uuids, text (with non-ASCII), NULLs, jsonb,
# timestamps, integers, booleans and arrays.
STATEMENT = """SELECT %(id)s::uuid, %(text)s::text, %(none)s::text, %(doc)s::jsonb,
  %(at)s::timestamptz, %(n)s::bigint, %(flag)s::boolean, %(ids)s::uuid[], %(words)s::text[]"""


def params(**more):
    return {"id": uuid.uuid4(), "text": "héllo \u2603", "none": None,
            "doc": Jsonb({"a": [1, "b"]}), "at": dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
            "n": 2**40, "flag": True, "ids": [uuid.uuid4()], "words": ["x", "y"]} | more


async def connect() -> pgpool.CountingConnection:
    return await pgpool.CountingConnection.connect(pgpool.conninfo(), autocommit=True)


async def prepared(conn: psycopg.AsyncConnection) -> list[str]:
    cursor = await conn.execute("SELECT name FROM pg_prepared_statements WHERE name LIKE "
                                "'\\_stello\\_%%' ORDER BY name")
    return [name for (name,) in await cursor.fetchall()]


async def test_fetch_gives_what_a_cursor_gives_first_time_and_prepared() -> None:
    conn = await connect()
    try:
        for _ in range(3):  # the first run prepares, the next ones use the prepared statement
            values = params()
            expected = await (await conn.execute(STATEMENT, values)).fetchone()
            assert await conn.fetch(STATEMENT, values) == expected
            assert await conn.fetch(STATEMENT, values, all_rows=True) == [expected]
        rows = "SELECT g, g::text FROM generate_series(1, %(n)s) g"
        assert await conn.fetch(rows, {"n": 3}, all_rows=True) == [(1, "1"), (2, "2"), (3, "3")]
        assert await conn.fetch(rows, {"n": 0}) is None
        assert await conn.fetch(rows, {"n": 0}, all_rows=True) == []
        assert await conn.fetch("SELECT %s::int + %s::int", (1, 2)) == (3,)
        # One prepared statement per statement text and parameter types.
        assert len(await prepared(conn)) == 3
    finally:
        await conn.close()


async def test_a_statement_costs_one_round_trip_prepared_or_not() -> None:
    conn = await connect()
    try:
        with tempfile.TemporaryFile() as trace:
            conn.pgconn.trace(trace.fileno())
            conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
            before = pgpool.round_trips.count
            await conn.fetch(STATEMENT, params())
            await conn.fetch(STATEMENT, params())
            conn.pgconn.untrace()
            trace.seek(0)
            sent = [line.split("\t")[2].strip() for line in trace.read().decode().splitlines()
                    if line.startswith("F\t")]
        assert pgpool.round_trips.count - before == 2
        assert sent.count("Sync") == 2
        assert sent.count("Parse") == 1  # prepared with its first execution, not again
    finally:
        await conn.close()


async def test_server_errors_are_psycopgs_and_leave_the_connection_usable() -> None:
    conn = await connect()
    try:
        await conn.execute("CREATE TEMPORARY TABLE lean_t (k int PRIMARY KEY)")
        insert = "INSERT INTO lean_t VALUES (%(k)s) RETURNING k"
        assert await conn.fetch(insert, {"k": 1}) == (1,)
        with pytest.raises(psycopg.errors.UniqueViolation) as raised:
            await conn.fetch(insert, {"k": 1})
        assert raised.value.diag.constraint_name == "lean_t_pkey"
        with pytest.raises(psycopg.errors.SyntaxError):  # fails at its preparation
            await conn.fetch("SELEC %(k)s", {"k": 1})
        with pytest.raises(psycopg.errors.DivisionByZero):  # fails at its first execution
            await conn.fetch("SELECT 1 / %(k)s", {"k": 0})
        assert not conn.closed
        assert await conn.fetch("SELECT 1 / %(k)s", {"k": 1}) == (1,)
        assert await conn.fetch(insert, {"k": 2}) == (2,)
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
    finally:
        await conn.close()


async def test_a_pipeline_gives_each_statements_row_in_one_round_trip() -> None:
    conn = await connect()
    try:
        await conn.execute("CREATE TEMPORARY TABLE lean_p (k int PRIMARY KEY)")
        insert = "INSERT INTO lean_p VALUES (%(k)s) RETURNING k"
        count = "SELECT count(*) FROM lean_p WHERE k <= %(k)s"
        values = params()
        expected = await (await conn.execute(STATEMENT, values)).fetchone()
        with tempfile.TemporaryFile() as trace:
            conn.pgconn.trace(trace.fileno())
            conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
            before = pgpool.round_trips.count
            rows = await conn.fetch_pipelined([
                (insert, {"k": 1}), (count, {"k": 9}), (insert, {"k": 2}), (count, {"k": 9}),
                (STATEMENT, values), ("SELECT k FROM lean_p WHERE k > %(k)s", {"k": 5}),
            ])
            conn.pgconn.untrace()
            trace.seek(0)
            sent = [line.split("\t")[2].strip() for line in trace.read().decode().splitlines()
                    if line.startswith("F\t")]
        # Each statement sees the ones before it; a statement without rows gives None.
        assert rows == [(1,), (1,), (2,), (2,), expected, None]
        assert pgpool.round_trips.count - before == 1
        assert sent.count("Sync") == 1
        assert sent.count("Parse") == 4  # each distinct statement prepared once
        # ... and used prepared afterwards, by a pipeline or a single statement.
        assert await conn.fetch(count, {"k": 1}) == (1,)
        assert await conn.fetch_pipelined([(insert, {"k": 3})]) == [(3,)]
        assert len(await prepared(conn)) == 4
    finally:
        await conn.close()


async def test_a_pipeline_error_skips_the_rest_and_leaves_the_connection_usable() -> None:
    conn = await connect()
    try:
        rows = await conn.fetch_pipelined([
            ("SELECT %(k)s::int", {"k": 1}),
            ("SELECT 1 / %(k)s", {"k": 0}),  # fails at its first execution
            ("SELECT %(k)s::int + 1", {"k": 1}),
        ])
        assert rows[0] == (1,)
        assert isinstance(rows[1], psycopg.errors.DivisionByZero)
        assert isinstance(rows[2], psycopg.errors.PipelineAborted)
        rows = await conn.fetch_pipelined([("SELEC %(k)s", {"k": 1}),  # fails at preparing
                                           ("SELECT %(k)s::int", {"k": 2})])
        assert isinstance(rows[0], psycopg.errors.SyntaxError)
        assert isinstance(rows[1], psycopg.errors.PipelineAborted)
        assert not conn.closed
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
        # What failed to prepare is not taken for prepared; what was skipped is run now.
        assert await conn.fetch_pipelined([("SELECT %(k)s::int + 1", {"k": 5}),
                                           ("SELECT 1 / %(k)s", {"k": 1})]) == [(6,), (1,)]
        with pytest.raises(psycopg.errors.SyntaxError):
            await conn.fetch("SELEC %(k)s", {"k": 1})
    finally:
        await conn.close()


async def test_a_statement_cancelled_midway_closes_its_connection() -> None:
    conn = await connect()
    try:
        sleeping = asyncio.ensure_future(conn.fetch("SELECT pg_sleep(%(s)s)", {"s": 5}))
        await asyncio.sleep(0.2)
        sleeping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sleeping
        assert conn.closed  # never lent again with an answer still on the wire
        assert pgpool.is_lost(conn)
    finally:
        await conn.close()


async def test_past_the_prepared_limit_statements_run_unprepared(monkeypatch) -> None:
    monkeypatch.setattr(pgpool.LeanStatements, "MAX_PREPARED", 2)
    conn = await connect()
    try:
        for n in range(4):
            assert await conn.fetch(f"SELECT {n} + %(k)s::int", {"k": 1}) == (n + 1,)
            assert await conn.fetch(f"SELECT {n} + %(k)s::int", {"k": 2}) == (n + 2,)
        assert len(await prepared(conn)) == 2
    finally:
        await conn.close()


async def test_a_broken_connection_under_a_read_is_replaced_and_the_read_retried() -> None:
    try:
        async with pgpool.connection() as conn:
            pid = conn.info.backend_pid
            assert await conn.fetch("SELECT 1", None) == (1,)
        admin = await connect()
        try:
            await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        finally:
            await admin.close()
        # The dead connection may be lent again before the pool notices: the read goes on.
        for _ in range(3):
            assert await pgpool.fetchone("SELECT pg_backend_pid() <> %(p)s", {"p": pid}) == (
                True,)
    finally:
        await pgpool.pools.aclose_current()
