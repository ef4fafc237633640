"""The hot-path pool's connections run every `execute` on one cursor of their own
(`spaces.pgpool.CountingConnection`): psycopg would build a cursor, its adapters and its
transformer for each statement. A pipeline still gets a cursor per statement, since it reads
the answers later."""

from __future__ import annotations

import psycopg
import pytest

from spaces import pgpool

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


async def test_statements_on_a_pooled_connection_share_one_cursor() -> None:
    try:
        async with pgpool.connection() as conn:
            first = await conn.execute("SELECT %s::int", (1,))
            assert await first.fetchone() == (1,)
            second = await conn.execute("SELECT %(x)s::text, 2", {"x": "two"})
            assert second is first
            assert await second.fetchall() == [("two", 2)]
            with pytest.raises(psycopg.errors.DivisionByZero):
                await conn.execute("SELECT 1/0")
            after = await conn.execute("SELECT 3")  # the cursor goes on after an error
            assert after is first and await after.fetchone() == (3,)
    finally:
        await pgpool.pools.aclose_current()


async def test_a_pipeline_keeps_a_cursor_per_statement() -> None:
    try:
        async with pgpool.connection() as conn:
            async with conn.pipeline():
                one = await conn.execute("SELECT 1")
                two = await conn.execute("SELECT 2")
            assert one is not two
            assert (await one.fetchone(), await two.fetchone()) == ((1,), (2,))
    finally:
        await pgpool.pools.aclose_current()
