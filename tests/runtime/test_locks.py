"""Per-session locks: in-process, and across processes through PostgreSQL advisory locks."""

from __future__ import annotations

import asyncio

import pytest

from sessions_app.engine.errors import SessionBusy
from sessions_app.runtime.locks import LocalSessionLocks, PostgresSessionLocks


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


@pytest.mark.postgres
@pytest.mark.django_db
async def test_advisory_locks_serialise_across_independent_connections() -> None:
    from sessions_app.conf import postgres_conninfo

    conninfo = postgres_conninfo()
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
