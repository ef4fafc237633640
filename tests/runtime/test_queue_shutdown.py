"""Closing the durable memory queue stops its worker at once, whenever it comes: also while
the worker is still starting, waiting for a connection, where Python 3.11's `wait_for` (in
the connection pool) loses a cancellation that lands as the connection arrives."""

from __future__ import annotations

import asyncio
import time

import pytest

from sessions_app.runtime.jobs import MemoryQueue
from spaces import pgpool

GRACE = 3.0


async def _no_agent(_: str) -> None:
    raise AssertionError("no job runs here")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("steps", range(12))
async def test_a_queue_closed_as_its_starting_worker_gets_a_connection_stops_at_once(
    steps: int, caplog
) -> None:
    queue = MemoryQueue(pgpool.conninfo(), _no_agent, retries=0, retry_delay=0,  # type: ignore[arg-type]
                        stall_seconds=60, shutdown_grace_seconds=GRACE)
    await queue.app.open_async()
    pool = queue.app.connector.pool  # type: ignore[attr-defined]
    held = [await pool.getconn() for _ in range(pool.max_size)]  # the worker's start waits
    await queue.start()
    await asyncio.sleep(0.05)
    await pool.putconn(held.pop())  # a connection arrives...
    for _ in range(steps):  # ...and the close comes `steps` loop steps later
        await asyncio.sleep(0)
    started = time.monotonic()
    await queue.aclose()
    for conn in held:
        await pool.putconn(conn)
    assert time.monotonic() - started < GRACE
    assert "did not stop in time" not in caplog.text


async def test_a_sweeper_that_loses_its_cancellation_is_cancelled_again() -> None:
    from sessions_app.runtime.pool import _cancel_until_done

    lost = 0

    async def sweeper() -> None:  # loses its first cancellation, as a pool wait can
        nonlocal lost
        while True:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                lost += 1
                if lost > 1:
                    raise

    task = asyncio.create_task(sweeper())
    await asyncio.sleep(0)
    await asyncio.wait_for(_cancel_until_done(task), timeout=5)
    assert task.cancelled() and lost == 2
