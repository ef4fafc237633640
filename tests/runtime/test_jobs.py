"""The background runner: coalescing, bounded retries of transient LLM errors, logging."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sessions_app.engine.errors import LLMError
from sessions_app.engine.types import MemoryJob
from sessions_app.runtime.jobs import BackgroundRunner, SpaceJobs


async def test_a_submitted_job_runs_and_the_runner_keeps_it_until_done() -> None:
    runner = BackgroundRunner()
    done = asyncio.Event()

    async def job() -> None:
        done.set()

    runner.submit("k", job)
    assert runner.pending == 1
    await runner.drain()
    assert done.is_set() and runner.pending == 0


async def test_submits_while_a_job_runs_coalesce_into_one_follow_up() -> None:
    runner = BackgroundRunner()
    release = asyncio.Event()
    runs: list[str] = []

    async def slow() -> None:
        runs.append("first")
        await release.wait()

    def follow_up(name: str):
        async def job() -> None:
            runs.append(name)
        return job

    runner.submit("k", slow)
    await asyncio.sleep(0)
    for n in range(5):
        runner.submit("k", follow_up(f"follow-up {n}"))
    release.set()
    await runner.drain()
    assert runs == ["first", "follow-up 4"]


async def test_different_keys_run_independently() -> None:
    runner = BackgroundRunner()
    runs: list[str] = []

    def job(name: str):
        async def run() -> None:
            runs.append(name)
        return run

    runner.submit("a", job("a"))
    runner.submit("b", job("b"))
    await runner.drain()
    assert sorted(runs) == ["a", "b"]


async def test_transient_llm_errors_are_retried_a_bounded_number_of_times(caplog) -> None:
    runner = BackgroundRunner(retries=2, retry_delay=0)
    attempts = 0

    async def flaky() -> None:
        nonlocal attempts
        attempts += 1
        raise LLMError("busy", transient=True)

    with caplog.at_level(logging.WARNING, logger="stello.jobs"):
        runner.submit("space=s1 consolidate:c1", flaky)
        await runner.drain()
    assert attempts == 3
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "space=s1 consolidate:c1" in errors[0].getMessage()


async def test_permanent_failures_are_logged_once_and_not_retried(caplog) -> None:
    runner = BackgroundRunner(retries=5, retry_delay=0)
    attempts = 0

    async def broken() -> None:
        nonlocal attempts
        attempts += 1
        raise ValueError("bug")

    with caplog.at_level(logging.ERROR, logger="stello.jobs"):
        runner.submit("k", broken)
        await runner.drain()
    assert attempts == 1
    assert [r.getMessage() for r in caplog.records] == ["background k failed"]


@pytest.mark.django_db(transaction=True)  # a job first checks its owner's usage quotas
async def test_space_jobs_without_a_queue_run_in_process_with_keys_naming_the_space() -> None:
    runner = BackgroundRunner()
    seen: list[str] = []
    original = runner.submit
    runner.submit = lambda key, job: (seen.append(key), original(key, job))  # type: ignore
    ran: list[tuple[str, MemoryJob]] = []

    class Agent:
        def __init__(self, space_id: str) -> None:
            self.space_id = space_id

        async def run_job(self, job: MemoryJob) -> None:
            ran.append((self.space_id, job))

    async def get_agent(space_id: str) -> Agent:
        return Agent(space_id)

    job = MemoryJob("consolidate", "s")
    await SpaceJobs(runner, None, "space-1", get_agent).submit(job)  # type: ignore[arg-type]
    await runner.drain()
    assert seen == ["space=space-1 consolidate:s"]
    assert ran == [("space-1", job)]


async def test_cancel_all_stops_running_jobs() -> None:
    runner = BackgroundRunner()

    async def forever() -> None:
        await asyncio.Event().wait()

    runner.submit("k", forever)
    await asyncio.sleep(0)
    await runner.cancel_all()
    assert runner.pending == 0
