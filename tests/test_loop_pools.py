"""The suite's own guard (tests/conftest.py): an async test's event loop never ends with the
hot-path pool open, whose worker tasks could then keep the loop's end waiting forever."""

from __future__ import annotations

import pytest

from spaces import pgpool

pytestmark = pytest.mark.postgres

opened: list = []


async def test_a_test_that_leaves_the_pool_open() -> None:
    pool = await pgpool.pools.get()
    async with pool.connection() as conn:  # the pool now returns a connection: a worker task
        await conn.execute("SELECT 1")
    opened.append(pool)


def test_the_pool_it_left_was_closed_when_it_ended() -> None:
    assert len(opened) == 1 and opened[0].closed
