"""Per-session locks: in-process, and across processes through PostgreSQL advisory locks taken
on one lock connection per process."""

from __future__ import annotations

import asyncio

import pytest

from sessions_app.engine.errors import ServiceUnavailable, SessionBusy
from sessions_app.engine.types import LockedRead
from sessions_app.runtime import locks as locks_module
from sessions_app.runtime.locks import LocalSessionLocks, PostgresSessionLocks
from spaces import pgpool


async def test_one_session_runs_one_operation_at_a_time() -> None:
    locks = LocalSessionLocks(timeout=5)
    order: list[str] = []

    async def operation(name: str) -> None:
        async with locks.hold("s1"):
            order.append(f"{name} start")
            await asyncio.sleep(0.01)
            order.append(f"{name} end")

    await asyncio.gather(operation("a"), operation("b"))
    assert order == ["a start", "a end", "b start", "b end"]


async def test_different_sessions_run_in_parallel() -> None:
    locks = LocalSessionLocks(timeout=5)
    both_inside = asyncio.Event()
    inside = 0

    async def operation(session_id: str) -> None:
        nonlocal inside
        async with locks.hold(session_id):
            inside += 1
            if inside == 2:
                both_inside.set()
            await asyncio.wait_for(both_inside.wait(), 2)

    await asyncio.gather(operation("s1"), operation("s2"))


async def test_waiting_longer_than_the_timeout_is_session_busy() -> None:
    locks = LocalSessionLocks(timeout=0.05)
    async with locks.hold("s1"):
        with pytest.raises(SessionBusy, match="session busy"):
            async with locks.hold("s1"):
                pass
    async with locks.hold("s1"):  # free again afterwards
        pass


async def test_a_zero_timeout_takes_a_free_lock_and_refuses_a_held_one() -> None:
    locks = LocalSessionLocks(timeout=0)
    async with locks.hold("s1"):
        with pytest.raises(SessionBusy):
            async with locks.hold("s1"):
                pass


@pytest.fixture
def conninfo(db) -> str:
    info = pgpool.conninfo()
    assert info is not None
    return info


async def held_advisory_locks(conninfo: str) -> int:
    import psycopg

    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        cursor = await conn.execute(
            # This test database only: other runs share the server.
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND database "
            "= (SELECT oid FROM pg_database WHERE datname = current_database())")
        return (await cursor.fetchone())[0]


@pytest.mark.postgres
async def test_advisory_locks_serialise_across_processes(conninfo: str) -> None:
    process_a = PostgresSessionLocks(conninfo, timeout=0.3)
    process_b = PostgresSessionLocks(conninfo, timeout=0.3)
    try:
        async with process_a.hold("shared-session"):
            with pytest.raises(SessionBusy):
                async with process_b.hold("shared-session"):
                    pass
            async with process_b.hold("another-session"):
                pass
        async with process_b.hold("shared-session"):  # released by A
            pass
    finally:
        await process_a.aclose()
        await process_b.aclose()


@pytest.mark.postgres
async def test_a_waiter_of_another_process_gets_the_lock_when_it_is_released(
    conninfo: str,
) -> None:
    process_a = PostgresSessionLocks(conninfo, timeout=5)
    process_b = PostgresSessionLocks(conninfo, timeout=5)
    order: list[str] = []
    try:
        async def a() -> None:
            async with process_a.hold("s"):
                order.append("a in")
                await asyncio.sleep(0.2)
                order.append("a out")

        async def b() -> None:
            await asyncio.sleep(0.05)
            async with process_b.hold("s"):
                order.append("b in")

        await asyncio.gather(a(), b())
        assert order == ["a in", "a out", "b in"]
    finally:
        await process_a.aclose()
        await process_b.aclose()


@pytest.mark.postgres
async def test_one_connection_holds_the_locks_of_hundreds_of_sessions(conninfo: str) -> None:
    """No connection per operation: 300 sessions locked at once by one process, through its
    lock connection. Tries and unlocks asked for while a statement is in flight go together in
    the next one: the 300 operations cost a few round trips, not 600 (each try and each unlock
    a statement of its own before)."""
    locks = PostgresSessionLocks(conninfo, timeout=5)
    everyone_in, counted = asyncio.Event(), asyncio.Event()
    inside = 0

    async def operation(n: int) -> None:
        nonlocal inside
        async with locks.hold(f"session-{n}"):
            inside += 1
            if inside == 300:
                everyone_in.set()
            await asyncio.wait_for(counted.wait(), 10)

    try:
        async with locks.hold("warm-up"):
            pass
        await locks.settled()
        before = await held_advisory_locks(conninfo)
        pgpool.round_trips.reset()
        task = asyncio.gather(*(operation(n) for n in range(300)))
        await asyncio.wait_for(everyone_in.wait(), 10)
        assert await held_advisory_locks(conninfo) == before + 300
        counted.set()
        await task
        await locks.settled()
        assert pgpool.round_trips.count <= 4  # the tries in one or two, the unlocks too
        assert await held_advisory_locks(conninfo) == before
    finally:
        await locks.aclose()


@pytest.mark.postgres
async def test_a_hold_costs_two_round_trips(conninfo: str) -> None:
    locks = PostgresSessionLocks(conninfo, timeout=5)
    try:
        async with locks.hold("warm-up"):
            pass
        await locks.settled()
        pgpool.round_trips.reset()
        async with locks.hold("s"):
            pass
        await locks.settled()
        assert pgpool.round_trips.count == 2  # pg_try_advisory_lock, pg_advisory_unlock
    finally:
        await locks.aclose()


# The session's advisory lock as the read's own connection holds it right then: 1 when the
# read runs after the lock is taken (and on the lock's connection), 0 before.
HELD_HERE = """SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
  AND pid = pg_backend_pid() AND objsubid = 1
  AND objid::bigint = hashtextextended(%(key)s, 0) & 4294967295"""


def held_here(session_id: str) -> LockedRead:
    return LockedRead(HELD_HERE, {"key": session_id}, lambda row: row[0])


@pytest.mark.postgres
async def test_a_first_read_rides_with_the_try_and_sees_the_session_held(conninfo) -> None:
    locks = PostgresSessionLocks(conninfo, timeout=5)
    asked: list[str] = []

    def first_read() -> LockedRead:
        asked.append("s")
        return held_here("s")

    try:
        async with locks.hold("warm-up"):
            pass
        await locks.settled()
        pgpool.round_trips.reset()
        async with locks.hold("s", first_read=first_read) as prefetched:
            assert prefetched is not None and prefetched.value() == 1
        await locks.settled()
        assert asked == ["s"]
        assert pgpool.round_trips.count == 2  # the try with the read, the unlock
        async with locks.hold("s") as nothing:  # no first read asked: none made
            assert nothing is None
    finally:
        await locks.aclose()


@pytest.mark.postgres
async def test_a_first_read_after_waiting_for_another_process_is_made_again(conninfo) -> None:
    locks = PostgresSessionLocks(conninfo, timeout=5)
    other = PostgresSessionLocks(conninfo, timeout=5)
    inside, leave = asyncio.Event(), asyncio.Event()
    try:
        async def holder() -> None:
            async with other.hold("s"):
                inside.set()
                await leave.wait()

        task = asyncio.ensure_future(holder())
        await asyncio.wait_for(inside.wait(), 5)
        asyncio.get_running_loop().call_later(0.05, leave.set)
        # The first tries fail (the other process holds it) with their reads; the read that
        # comes back is the one made with the try that took the lock.
        async with locks.hold("s", first_read=lambda: held_here("s")) as prefetched:
            assert prefetched is not None and prefetched.value() == 1
        await task
    finally:
        await locks.aclose()
        await other.aclose()


@pytest.mark.postgres
async def test_a_batch_carries_only_its_first_few_reads(conninfo, monkeypatch) -> None:
    monkeypatch.setattr(locks_module, "MAX_READS", 2)
    locks = PostgresSessionLocks(conninfo, timeout=5)
    everyone_in = asyncio.Event()
    got: list[int | None] = []

    async def operation(n: int) -> None:
        async with locks.hold(f"s{n}", first_read=lambda: held_here(f"s{n}")) as prefetched:
            got.append(None if prefetched is None else prefetched.value())
            if len(got) == 5:
                everyone_in.set()
            await asyncio.wait_for(everyone_in.wait(), 5)

    try:
        async with locks.hold("warm-up"):
            pass
        await locks.settled()
        await asyncio.gather(*(operation(n) for n in range(5)))  # their tries: one batch
        # Two reads carried (and made under the lock); the other three left to their callers.
        assert sorted(got, key=str) == [1, 1, None, None, None]
    finally:
        await locks.aclose()


@pytest.mark.postgres
async def test_a_first_read_that_fails_leaves_the_lock_to_the_caller(conninfo) -> None:
    locks = PostgresSessionLocks(conninfo, timeout=5)
    broken = LockedRead("SELECT 1 / %(zero)s", {"zero": 0}, lambda row: row)
    try:
        async with locks.hold("s", first_read=lambda: broken) as prefetched:
            assert prefetched is None  # the caller reads again and meets the error itself
            assert await held_advisory_locks(conninfo) >= 1
        async with locks.hold("s", first_read=lambda: held_here("s")) as prefetched:
            assert prefetched is not None and prefetched.value() == 1  # the line still works
        await locks.settled()
    finally:
        await locks.aclose()


@pytest.mark.postgres
async def test_a_cancelled_operation_gives_its_lock_back(conninfo: str) -> None:
    locks = PostgresSessionLocks(conninfo, timeout=5)
    other = PostgresSessionLocks(conninfo, timeout=0.5)
    inside = asyncio.Event()
    try:
        async def operation() -> None:
            async with locks.hold("s"):
                inside.set()
                await asyncio.sleep(60)

        task = asyncio.ensure_future(operation())
        await asyncio.wait_for(inside.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with other.hold("s"):  # free again, for another process too
            pass
    finally:
        await locks.aclose()
        await other.aclose()


async def test_an_unreachable_lock_database_is_service_unavailable_not_busy() -> None:
    import socket

    with socket.socket() as probe:  # a loopback port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # An hour of lock timeout: a design that waited for it instead of failing would hang here
    # (the wait_for guard turns that into a failure).
    locks = PostgresSessionLocks(f"host=127.0.0.1 port={port} dbname=x user=x", timeout=3600)

    async def hold() -> None:
        async with locks.hold("s"):
            pass

    with pytest.raises(ServiceUnavailable):
        await asyncio.wait_for(hold(), 30)
    await locks.aclose()


@pytest.mark.postgres
async def test_a_lock_whose_connection_was_lost_is_not_released_on_its_replacement(
        conninfo: str, caplog) -> None:
    """PostgreSQL dropped the locks with the connection: the release after it is not sent to
    the new connection (where it would find nothing and warn), and the session can be held
    again at once."""
    import psycopg

    locks = PostgresSessionLocks(conninfo, timeout=5)
    try:
        async with locks.hold("lost"):
            pid = locks._conns[0].info.backend_pid
            async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as admin:
                await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            for _ in range(100):  # until the client sees the connection closed
                if not locks._usable(locks._conns[0]):
                    break
                await asyncio.sleep(0.01)
        await locks.settled()
        assert "not held at release" not in caplog.text
        async with locks.hold("lost"):
            assert await held_advisory_locks(conninfo) >= 1
        await locks.settled()
    finally:
        await locks.aclose()
