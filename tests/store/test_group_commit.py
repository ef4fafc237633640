"""Group commit (`spaces.pgpool.GroupCommit`): writes that arrive while a batch is in flight
go together in one pipeline and one transaction, yet each caller gets its own statement's
outcome as if it had run alone: a failing statement fails alone, a batch never makes one
statement wait for another's row lock, and a cancelled caller's statement either never runs
or has run before the cancellation goes on."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

import psycopg
import pytest

from spaces import pgpool
from spaces.services import aspace_create

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

INSERT = "INSERT INTO group_probe (id, v) VALUES (%(id)s, %(v)s) RETURNING id"
UPDATE = "UPDATE group_probe SET v = %(v)s WHERE id = %(id)s RETURNING v"


async def run(sql: str, params: dict) -> object:
    async with pgpool.connection() as conn:
        return await conn.fetch(sql, params, all_rows=True)


@pytest.fixture
async def probe() -> AsyncIterator[None]:
    await run("CREATE TABLE group_probe (id int PRIMARY KEY, v text)", {})
    await run("INSERT INTO group_probe VALUES (1, 'first')", {})
    yield
    await pgpool.pools.group_commit().settled()
    await run("DROP TABLE group_probe", {})
    await pgpool.pools.aclose_current()


async def held_row_lock() -> psycopg.AsyncConnection:
    """Another client in a transaction that holds row 1's lock."""
    other = await psycopg.AsyncConnection.connect(pgpool.conninfo())
    await other.execute("UPDATE group_probe SET v = 'held' WHERE id = 1")
    return other


async def transactions_of(ids: list[int]) -> int:
    rows = await run("SELECT count(DISTINCT xmin::text) FROM group_probe WHERE id = ANY(%(ids)s)",
                     {"ids": ids})
    return rows[0][0]


async def test_writes_that_wait_together_commit_together(probe) -> None:
    before = pgpool.round_trips.count
    ids = list(range(10, 26))
    rows = await asyncio.gather(*(pgpool.group_commit(INSERT, {"id": i, "v": "x"})
                                  for i in ids))
    assert pgpool.round_trips.count - before == 1  # one pipeline for all sixteen
    assert rows == [(i,) for i in ids]  # each caller its own row
    assert await transactions_of(ids) == 1  # one transaction: one commit


async def test_a_write_alone_is_sent_at_once_in_its_own_transaction(probe) -> None:
    assert await pgpool.group_commit(INSERT, {"id": 2, "v": "a"}) == (2,)
    assert await pgpool.group_commit(INSERT, {"id": 3, "v": "b"}) == (3,)
    assert await transactions_of([2, 3]) == 2


async def test_a_failing_write_fails_alone_and_the_others_are_written_once(probe) -> None:
    calls = [pgpool.group_commit(INSERT, {"id": i, "v": "x"}) for i in (10, 11)]
    calls.append(pgpool.group_commit(INSERT, {"id": 1, "v": "duplicate"}))
    calls += [pgpool.group_commit(INSERT, {"id": i, "v": "x"}) for i in (12, 13)]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert outcomes[:2] == [(10,), (11,)] and outcomes[3:] == [(12,), (13,)]
    assert isinstance(outcomes[2], psycopg.errors.UniqueViolation)  # as psycopg raises it
    rows = await run("SELECT id, v FROM group_probe ORDER BY id", {})
    assert rows == [(1, "first"), (10, "x"), (11, "x"), (12, "x"), (13, "x")]


async def test_a_batch_never_makes_a_write_wait_for_another_writes_lock(probe) -> None:
    other = await held_row_lock()
    try:
        blocked = asyncio.ensure_future(pgpool.group_commit(UPDATE, {"id": 1, "v": "mine"}))
        free = asyncio.ensure_future(pgpool.group_commit(INSERT, {"id": 50, "v": "free"}))
        # Sent together; the batch gives up on the lock after GROUP_LOCK_TIMEOUT and runs
        # one by one, so the free write commits while the lock is still held.
        assert await asyncio.wait_for(free, 5) == (50,)
        assert not blocked.done()
    finally:
        await other.rollback()  # the lock is released
        await other.close()
    assert await asyncio.wait_for(blocked, 5) == ("mine",)


async def test_a_caller_cancelled_before_its_batch_was_sent_writes_nothing(probe) -> None:
    in_flight = asyncio.ensure_future(pgpool.group_commit("SELECT pg_sleep(0.5)", {}))
    await asyncio.sleep(0.1)  # sent, and busy: the next writes wait for it
    queued = asyncio.ensure_future(pgpool.group_commit(INSERT, {"id": 60, "v": "late"}))
    await asyncio.sleep(0.05)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    await in_flight
    await pgpool.pools.group_commit().settled()
    assert await run("SELECT id FROM group_probe WHERE id = 60", {}) == []


async def test_a_caller_cancelled_after_its_batch_was_sent_waits_for_its_outcome(probe) -> None:
    other = await held_row_lock()
    try:
        sent = asyncio.ensure_future(pgpool.group_commit(UPDATE, {"id": 1, "v": "mine"}))
        await asyncio.sleep(0.2)  # in flight, waiting for the lock
        sent.cancel()
        await asyncio.sleep(0.2)
        assert not sent.done()  # still waiting: the statement may yet be written
    finally:
        await other.rollback()
        await other.close()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(sent, 5)
    # When the cancellation reached the caller, the write had been made.
    assert await run("SELECT v FROM group_probe WHERE id = 1", {}) == [("mine",)]


async def test_a_connection_lost_under_a_batch_makes_its_outcomes_unknown(probe) -> None:
    other = await held_row_lock()
    try:
        writes = [asyncio.ensure_future(pgpool.group_commit(UPDATE, {"id": 1, "v": "mine"}))]
        await asyncio.sleep(0.2)  # sent alone and waiting; the server ends its connection
        await other.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE query LIKE 'UPDATE group_probe%%' AND pid <> "
                            "pg_backend_pid()")
        outcomes = await asyncio.wait_for(asyncio.gather(*writes, return_exceptions=True), 5)
    finally:
        await other.rollback()
        await other.close()
    assert isinstance(outcomes[0], pgpool.ConnectionLost)


async def test_spaces_created_at_once_commit_together(probe, django_user_model) -> None:
    user = await django_user_model.objects.acreate(username="group-commit")
    spaces = await asyncio.gather(*(aspace_create(owner_id=user.pk, label=f"s{i}")
                                    for i in range(8)))
    ids = [space.id for space in spaces]
    rows = await run("SELECT count(DISTINCT xmin::text) FROM spaces WHERE id = ANY(%(ids)s)",
                     {"ids": ids})
    assert rows[0][0] <= 2  # not eight commits
    roots = await run("SELECT count(*) FROM sessions WHERE space_id = ANY(%(ids)s) "
                      "AND role = 'main'", {"ids": ids})
    assert roots[0][0] == 8  # each space whole, with its main session


async def test_a_caller_that_stops_waiting_leaves_no_unread_error(probe) -> None:
    unread: list[dict] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: unread.append(context))
    other = await held_row_lock()
    try:
        sent = asyncio.ensure_future(pgpool.group_commit(INSERT, {"id": 1, "v": "dup"}))
        await asyncio.sleep(0.2)  # in flight, waiting for row 1 (then a duplicate key)
        sent.cancel()
        await asyncio.sleep(0.05)
        sent.cancel()  # it stops waiting for the outcome
        with pytest.raises(asyncio.CancelledError):
            await sent
    finally:
        await other.rollback()
        await other.close()
    await pgpool.pools.group_commit().settled()
    del sent
    gc.collect()
    await asyncio.sleep(0)
    assert not [c for c in unread if "never retrieved" in c.get("message", "")]
