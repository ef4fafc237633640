"""A page of messages costs the same in a 100-message and a 100 000-message session on
PostgreSQL: keyset pages on the (session, id) index, one round trip, whatever the length."""

from __future__ import annotations

import uuid

import pytest

from sessions_app.store.pg_conversations import _STRETCH, SQL_PAGE_AFTER, SQL_PAGE_BEFORE
from spaces import pgpool

from .conftest import Env, make_env
from .test_contract import fork
from .test_postgres import round_trips

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

BIG = 100_000


@pytest.fixture
async def pg() -> Env:
    yield await make_env("pg")
    await pgpool.pools.aclose_current()


async def _fill(session_id: str, n: int) -> None:
    """n alternating user/assistant records, straight in SQL (turns would take minutes)."""
    async with pgpool.connection() as conn:
        await conn.execute(
            """INSERT INTO records (session_id, role, content, "timestamp")
               SELECT %(sid)s, CASE WHEN g %% 2 = 0 THEN 'user' ELSE 'assistant' END,
                      'message ' || g, now()
               FROM generate_series(0, %(n)s - 1) g""",
            {"sid": uuid.UUID(session_id), "n": n})
        await conn.execute("UPDATE sessions SET record_count = %(n)s WHERE id = %(sid)s",
                           {"sid": uuid.UUID(session_id), "n": n})
        await conn.execute("ANALYZE records")


async def _plan(sql: str, params: dict) -> str:
    async with pgpool.connection() as conn:
        cur = await conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT TEXT) " + sql, params)
        return "\n".join(r[0] for r in await cur.fetchall())


def _rows_read(plan: str) -> int:
    """The rows the scan of `records` produced (actual), from EXPLAIN ANALYZE."""
    for line in plan.splitlines():
        if " on records r " in line and "actual" in line:
            assert "Seq Scan" not in line, plan
            return int(line.split("rows=")[2].split()[0])
    raise AssertionError(f"no scan of records:\n{plan}")


async def test_a_page_reads_only_its_rows_whatever_the_length(pg: Env) -> None:
    small, big = await fork(pg, label="small"), await fork(pg, label="big")
    await _fill(small, 100)
    await _fill(big, BIG)
    store = pg.store
    for sid, n in ((small, 100), (big, BIG)):
        newest, more = await store.message_page(sid, limit=50)
        assert len(newest) == 50 and more
        assert newest[-1]["content"] == f"message {n - 1}"
        middle, _ = await store.message_page(sid, limit=50, before=newest[0]["id"])
        assert middle[-1]["id"] < newest[0]["id"]
        assert await round_trips(store.message_page(sid, limit=50)) == 1
        base = {"space": uuid.UUID(pg.space_id), "sid": uuid.UUID(sid), "limit": 51}
        # The scan stops after the page (+1 row), both directions, at either end: at most
        # what the small session holds, and in the big one not a row more than the page.
        for sql, key in ((SQL_PAGE_BEFORE, 2**63 - 1), (SQL_PAGE_BEFORE, newest[0]["id"]),
                         (SQL_PAGE_AFTER, 0)):
            most = n if n <= 100 else 51
            assert _rows_read(await _plan(sql, {**base, "key": key})) <= most, (sql, key)
        # The stretch of the newest turn (what regenerate reads) does not scan the history.
        plan = await _plan(_STRETCH, {**base, "rid": None, "through": False})
        assert "Seq Scan on records" not in plan, plan
    tail = await store.record_stretch(big)
    assert [m.content for _, m in tail] == [f"message {BIG - 2}", f"message {BIG - 1}"]
