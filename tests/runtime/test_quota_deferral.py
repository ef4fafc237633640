"""Background memory work of a user over a usage quota waits for the period's end: deferred
before any LLM call, never dropped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from asgiref.sync import sync_to_async

from sessions_app.accounting.models import UsageDaily, UsageQuota
from sessions_app.accounting.quotas import quotas_changed
from sessions_app.engine.types import MemoryJob
from sessions_app.engine.usage import clock
from sessions_app.runtime.jobs import BackgroundRunner, SpaceJobs
from spaces.models import Space
from tests.conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)

NOON = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
async def fixed_clock() -> AsyncIterator[None]:
    clock.set(NOON)
    quotas_changed()
    yield
    clock.set(None)
    quotas_changed()


def _space_of_spent_user(spent: int) -> str:
    user = make_user("carol")
    space = Space.objects.create(owner=user, label="S")
    UsageQuota.objects.create(user=user, period="day", max_tokens=100)
    UsageDaily.objects.create(day=NOON.date(), user=user, space_id=space.id,
                              session_id=space.id, provider="offline", model="m", calls=1,
                              input_tokens=spent, output_tokens=0)
    return str(space.id)


class RecordingAgent:
    def __init__(self) -> None:
        self.ran: list[MemoryJob] = []

    async def run_job(self, job: MemoryJob) -> None:
        self.ran.append(job)


async def test_an_over_budget_owners_job_waits_for_the_period_end() -> None:
    space_id = await sync_to_async(_space_of_spent_user)(150)
    agent = RecordingAgent()

    async def get_agent(_: str) -> RecordingAgent:
        return agent

    runner = BackgroundRunner()
    job = MemoryJob("consolidate", "s1")
    await SpaceJobs(runner, None, space_id, get_agent).submit(job)  # type: ignore[arg-type]
    await runner.drain()
    assert agent.ran == []  # no LLM work while the budget is spent
    key = f"space={space_id} consolidate:s1"
    _, timer = runner.deferred[key]
    assert 12 * 3600 - 5 <= timer.when() - asyncio.get_running_loop().time() <= 12 * 3600

    clock.set(datetime(2026, 3, 15, 0, 0, 1, tzinfo=UTC))  # the next day: budget renewed
    runner.run_deferred(key)  # what the timer does when it fires
    await runner.drain()
    assert agent.ran == [job] and runner.deferred == {}
    await runner.cancel_all()


async def test_a_job_within_budget_runs_at_once() -> None:
    space_id = await sync_to_async(_space_of_spent_user)(10)
    agent = RecordingAgent()

    async def get_agent(_: str) -> RecordingAgent:
        return agent

    runner = BackgroundRunner()
    await SpaceJobs(runner, None, space_id, get_agent).submit(  # type: ignore[arg-type]
        MemoryJob("integrate"))
    await runner.drain()
    assert agent.ran == [MemoryJob("integrate")] and runner.deferred == {}
