"""Background work owned by the server process (the engine's `BackgroundJobs` port).

Every task is referenced until it is done; two submits for a key while its job runs coalesce
into one follow-up run; transient LLM errors are retried a bounded number of times; every
failure is logged with the job's key (which names the space and session).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..engine.errors import LLMError

logger = logging.getLogger("stello.jobs")

Job = Callable[[], Awaitable[Any]]


class BackgroundRunner:
    def __init__(self, *, retries: int = 2, retry_delay: float = 0.5) -> None:
        self.retries = retries
        self.retry_delay = retry_delay
        self._tasks: set[asyncio.Task] = set()
        self._running: set[str] = set()
        self._follow_up: dict[str, Job] = {}

    def submit(self, key: str, job: Job) -> None:
        if key in self._running:
            self._follow_up[key] = job  # at most one follow-up, whatever the number of submits
            return
        self._running.add(key)
        # A fresh context: the job outlives the request that submitted it, and must not use
        # that request's context (asgiref's per-request thread is gone once it has answered).
        task = asyncio.get_running_loop().create_task(
            self._run(key, job), name=f"stello:{key}", context=contextvars.Context()
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: str, job: Job) -> None:
        try:
            while True:
                await self._attempt(key, job)
                next_job = self._follow_up.pop(key, None)
                if next_job is None:
                    return
                job = next_job
        finally:
            self._running.discard(key)

    async def _attempt(self, key: str, job: Job) -> None:
        for attempt in range(self.retries + 1):
            try:
                await job()
                return
            except LLMError as exc:
                if exc.transient and attempt < self.retries:
                    logger.warning("background %s: transient LLM error, retrying: %s", key, exc)
                    await asyncio.sleep(self.retry_delay * (attempt + 1))
                    continue
                logger.error("background %s failed: %s", key, exc)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("background %s failed", key)
                return

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def drain(self) -> None:
        """Wait until every job (and follow-up) is done."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)


class SpaceJobs:
    """The runner seen by one space's agent: keys are prefixed with the space id for the logs."""

    def __init__(self, runner: BackgroundRunner, space_id: str) -> None:
        self._runner = runner
        self._space_id = space_id

    def submit(self, key: str, job: Job) -> None:
        self._runner.submit(f"space={self._space_id} {key}", job)
