"""The durable memory queue takes over the jobs of dead workers, also when the same work was
queued again meanwhile (one waiting job per key: the dead one is not run twice)."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from asgiref.sync import sync_to_async
from django.db import connection

from sessions_app.engine.errors import LLMError
from sessions_app.engine.types import MemoryJob
from sessions_app.runtime.jobs import MemoryQueue
from spaces import pgpool

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


class RecordingAgent:
    def __init__(self) -> None:
        self.ran: list[MemoryJob] = []

    async def run_job(self, job: MemoryJob) -> None:
        self.ran.append(job)


def _statuses(space_id: str) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT status FROM procrastinate_jobs WHERE args->>'space_id' = %s"
                       " ORDER BY id", [space_id])
        return [status for (status,) in cursor.fetchall()]


async def _settled(space_id: str, expected: list[str]) -> list[str]:
    """The space's job statuses once they are `expected` (or after 20 s)."""
    for _ in range(400):
        if (found := await sync_to_async(_statuses)(space_id)) == expected:
            return found
        await asyncio.sleep(0.05)
    return await sync_to_async(_statuses)(space_id)


def _cut_by_a_dead_worker(space_id: str) -> None:
    """What a killed process leaves: its job running, owned by no live worker."""
    with connection.cursor() as cursor:
        cursor.execute("UPDATE procrastinate_jobs SET status = 'doing', worker_id = NULL"
                       " WHERE args->>'space_id' = %s", [space_id])


async def test_a_dead_workers_job_whose_work_is_queued_again_ends_aborted(caplog) -> None:
    space_id = str(uuid.uuid4())  # the agent is a stand-in: no space row is read
    agent = RecordingAgent()

    async def get_agent(_: str) -> RecordingAgent:
        return agent

    def queue() -> MemoryQueue:
        return MemoryQueue(pgpool.conninfo(), get_agent, retries=0, retry_delay=0,  # type: ignore[arg-type]
                           stall_seconds=0.5, shutdown_grace_seconds=1)

    integrate = MemoryJob("integrate")
    first = queue()
    await first.app.open_async()
    await first.submit(space_id, integrate)
    await sync_to_async(_cut_by_a_dead_worker)(space_id)
    await first.submit(space_id, integrate)  # the same work, queued while the first "runs"
    await first.app.close_async()
    assert await sync_to_async(_statuses)(space_id) == ["doing", "todo"]

    caplog.set_level(logging.WARNING, logger="stello")
    second = queue()
    await second.start()
    try:  # the stall check runs at start, then every 0.25 s
        assert await _settled(space_id, ["aborted", "succeeded"]) == ["aborted", "succeeded"]
    finally:
        await second.aclose()
    assert agent.ran == [integrate]  # once: the queued job did the dead one's work
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "the same work is queued again already" in caplog.text


async def test_a_retry_whose_work_was_queued_again_meanwhile_leaves_it_to_that_job() -> None:
    """A transient LLM error asks for a retry; if the same work was queued while the job ran,
    the retry cannot be queued (one waiting job per key). The job must end then, so the
    queued one runs: left `doing`, its lock would hold every later job of its key."""
    space_id = str(uuid.uuid4())
    job = MemoryJob("consolidate", "s1")
    runs: list[str] = []
    queue: MemoryQueue | None = None

    class FlakyAgent:
        async def run_job(self, ran: MemoryJob) -> None:
            runs.append(ran.key)
            if len(runs) == 1:
                await queue.submit(space_id, job)  # a turn asks for the same work meanwhile
                raise LLMError("upstream hiccup", transient=True)

    async def get_agent(_: str) -> FlakyAgent:
        return FlakyAgent()

    queue = MemoryQueue(pgpool.conninfo(), get_agent, retries=2, retry_delay=0,  # type: ignore[arg-type]
                        stall_seconds=30, shutdown_grace_seconds=1)
    await queue.start()
    try:
        await queue.submit(space_id, job)
        assert await _settled(space_id, ["failed", "succeeded"]) == ["failed", "succeeded"]
    finally:
        await queue.aclose()
    assert runs == [job.key, job.key]  # the second run is the queued job's
