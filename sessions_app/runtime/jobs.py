"""Background memory work (the engine's `BackgroundJobs` port), run two ways:

- On PostgreSQL, `MemoryQueue`: every job is a row of a procrastinate queue in the database,
  written before the request that asked for it answers. Every server process also runs a
  worker on its own event loop, so a job outlives the process that queued it: a process that is
  killed mid-job stops sending heartbeats, and another process (or the next start) runs the
  job again. Transient LLM errors are retried with backoff; status and attempts show in the
  Django admin (Procrastinate > jobs). On SIGTERM the worker takes no new job and waits for the
  running ones (a grace period); what is still running then is aborted and handed back.
- On the embedded SQLite default, `BackgroundRunner`: in-process tasks (one process, nothing
  survives it). Every task is referenced until it is done; two submits for a key while its job
  runs coalesce into one follow-up run; transient LLM errors are retried a bounded number of
  times; every failure is logged with the job's key (which names the space and session).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import procrastinate
import procrastinate.worker
from procrastinate.exceptions import AlreadyEnqueued, UniqueViolation
from procrastinate.jobs import Status

from spaces import pgpool

from ..accounting.quotas import space_over_budget
from ..engine.agent import SpaceAgent
from ..engine.errors import LLMError, SessionNotFound, SpaceNotFound
from ..engine.types import MemoryJob

logger = logging.getLogger("stello.jobs")

Job = Callable[[], Awaitable[Any]]


class BackgroundRunner:
    def __init__(self, *, retries: int = 2, retry_delay: float = 0.5) -> None:
        self.retries = retries
        self.retry_delay = retry_delay
        self._tasks: set[asyncio.Task] = set()
        self._running: set[str] = set()
        self._follow_up: dict[str, Job] = {}
        # Jobs of users over a usage quota, waiting for the period's end (key -> job, timer).
        self.deferred: dict[str, tuple[Job, asyncio.TimerHandle]] = {}

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

    def defer(self, key: str, job: Job, seconds: float) -> None:
        """Submit `job` again in `seconds` (in-process: lost with the process, like every job
        here). A later deferral of the same key replaces the earlier one."""
        old = self.deferred.pop(key, None)
        if old is not None:
            old[1].cancel()
        handle = asyncio.get_running_loop().call_later(seconds, self.run_deferred, key)
        self.deferred[key] = (job, handle)

    def run_deferred(self, key: str) -> None:
        """Submit a deferred job now (its timer does this when it fires)."""
        entry = self.deferred.pop(key, None)
        if entry is not None:
            entry[1].cancel()
            self.submit(key, entry[0])

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def drain(self) -> None:
        """Wait until every job (and follow-up) is done."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def cancel_all(self) -> None:
        for _, handle in self.deferred.values():
            handle.cancel()
        self.deferred.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)


GetAgent = Callable[[str], Awaitable[SpaceAgent]]

MEMORY_QUEUE = "stello_memory"


class TransientJobError(Exception):
    """A transient LLM failure inside a queued job: the queue runs the job again later."""


class JobSuperseded(Exception):
    """A job that failed while the same work was queued again: not retried, the queued job
    does it."""


class JobDeferred(Exception):
    """The space's owner is over a usage quota: run the job again in `seconds` (when the
    period ends), not now and not never."""

    def __init__(self, seconds: int) -> None:
        super().__init__(f"usage quota spent; deferred by {seconds} s")
        self.seconds = seconds


async def run_memory_job(get_agent: GetAgent, space_id: str, job: MemoryJob) -> None:
    """One job through its space's agent. A space or session deleted since is no error:
    there is nothing left to do. A transient LLM error asks the queue for a retry; a spent
    quota of the space's owner defers the job (JobDeferred) before any LLM call."""
    retry_after = await space_over_budget(space_id)
    if retry_after is not None:
        raise JobDeferred(retry_after)
    try:
        agent = await get_agent(space_id)
        await agent.run_job(job)
    except (SpaceNotFound, SessionNotFound):
        logger.info("background space=%s %s: gone, nothing to do", space_id, job.key)
    except LLMError as exc:
        if exc.transient:
            raise TransientJobError(str(exc)) from exc
        raise


SQL_RECORD_ERROR = """
INSERT INTO memory_job_errors (job_id, attempt, error, failed_at) VALUES (%s, %s, %s, now())
ON CONFLICT (job_id) DO UPDATE
  SET attempt = EXCLUDED.attempt, error = EXCLUDED.error, failed_at = EXCLUDED.failed_at
"""


async def _record_error(job_id: int | None, attempt: int, exc: BaseException) -> None:
    """Keep why the job failed for the admin (best effort: the log has it too)."""
    try:
        async with pgpool.connection() as conn:
            await conn.execute(SQL_RECORD_ERROR, (job_id, attempt, f"{type(exc).__name__}: {exc}"))
    except Exception:
        logger.exception("background job %s: could not record its error", job_id)


class MemoryRetry(procrastinate.BaseRetryStrategy):
    """When a failed job runs again: after a transient LLM error, `retries` times with a
    linear back-off (delay, 2 x delay...); when a shutdown cut it short, at once, whatever
    its runs so far (it is handed back, not failed)."""

    def __init__(self, *, retries: int, delay: int) -> None:
        self.retries = retries
        self.delay = delay

    def get_retry_decision(
        self, *, exception: BaseException, job: procrastinate.jobs.Job
    ) -> procrastinate.RetryDecision | None:
        if isinstance(exception, asyncio.CancelledError):
            return procrastinate.RetryDecision(retry_in={"seconds": 0})
        if isinstance(exception, TransientJobError) and job.attempts < self.retries:
            return procrastinate.RetryDecision(
                retry_in={"seconds": self.delay * (job.attempts + 1)}
            )
        return None


class MemoryQueue:
    """The durable runner on PostgreSQL: a procrastinate app and this process's worker."""

    def __init__(self, conninfo: str, get_agent: GetAgent, *, retries: int, retry_delay: int,
                 stall_seconds: float, shutdown_grace_seconds: float,
                 concurrency: int = 4) -> None:
        self.app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(conninfo=conninfo, min_size=1, max_size=4)
        )
        self._get_agent = get_agent
        self._stall_seconds = stall_seconds
        self._grace = shutdown_grace_seconds
        self._concurrency = concurrency
        self._worker: procrastinate.worker.Worker | None = None
        self._worker_task: asyncio.Task | None = None
        self._working = False  # the worker task has begun: stop it with `Worker.stop`
        self._recovery: asyncio.Task | None = None
        self._deferred: set[int] = set()  # ids of the jobs this process queued (`drain`)
        self._closing = asyncio.Event()
        retry = MemoryRetry(retries=retries, delay=retry_delay)
        @self.app.task(name="stello.memory", queue=MEMORY_QUEUE, retry=retry, pass_context=True)
        async def memory(context: procrastinate.JobContext, space_id: str, kind: str,
                         session_id: str | None, allow_archived: bool) -> None:
            job = MemoryJob(kind, session_id, allow_archived)  # type: ignore[arg-type]
            try:
                await run_memory_job(self._get_agent, space_id, job)
            except JobDeferred as deferred:
                await self.defer_until_quota_renews(space_id, job, deferred.seconds)
            except Exception as exc:  # (a shutdown's CancelledError is not logged as a failure)
                attempt = context.job.attempts + 1
                again = isinstance(exc, TransientJobError) and attempt <= retries
                if again and await self._queued_again(space_id, job):
                    # The retry could not be queued (one waiting job per key) and the job
                    # would stay running, its lock holding the queued one: end it instead.
                    logger.warning("background space=%s %s failed (attempt %d): %s; the same"
                                   " work is queued again and runs next", space_id, job.key,
                                   attempt, exc)
                    await _record_error(context.job.id, attempt, exc)
                    raise JobSuperseded(str(exc)) from exc
                (logger.warning if again else logger.error)(
                    "background space=%s %s failed (attempt %d%s): %s", space_id, job.key,
                    attempt, ", will retry" if again else "", exc)
                await _record_error(context.job.id, attempt, exc)
                raise

        self._task = memory

    async def start(self) -> None:
        await self.app.open_async()
        # Heartbeats well within the stall limit, so no live worker is ever taken for dead.
        # The worker is built here rather than by `app.run_worker_async` so that `aclose` can
        # ask it to stop (`Worker.stop`): a cancellation can be lost while it starts.
        self._worker = procrastinate.worker.Worker(
            app=self.app, queues=[MEMORY_QUEUE], install_signal_handlers=False, wait=True,
            concurrency=self._concurrency,
            update_heartbeat_interval=max(self._stall_seconds / 4, 0.1),
            stalled_worker_timeout=self._stall_seconds,
            fetch_job_polling_interval=min(5.0, max(self._stall_seconds / 4, 0.1)),
            shutdown_graceful_timeout=self._grace,
        )
        self._worker_task = asyncio.create_task(self._work(self._worker),
                                                name="stello:memory-worker")
        self._recovery = asyncio.create_task(self._recover_stalled(), name="stello:recovery")

    async def _work(self, worker: procrastinate.worker.Worker) -> None:
        self._working = True  # from here `worker.stop()` is heard: `run` clears a stale stop
        await worker.run()    # request before its first await, so none can come in between

    async def _recover_stalled(self) -> None:
        """Hand the jobs of dead workers (no heartbeat for `stall_seconds`) back to the queue;
        at start, then as often as a worker could die unnoticed."""
        manager = self.app.job_manager
        while not self._closing.is_set():
            try:
                for job in await manager.get_stalled_jobs(
                    queue=MEMORY_QUEUE, seconds_since_heartbeat=self._stall_seconds
                ):
                    await self._run_again(job)
            except Exception:  # the database may be away for a while: try again later
                logger.exception("background: could not look for stalled jobs")
            # Waiting on the event rather than sleeping: the database driver may absorb a
            # cancellation that arrives during a query, and `aclose` must not wait for that.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self._stall_seconds / 2)

    async def _queued_again(self, space_id: str, job: MemoryJob) -> bool:
        return bool(await self.app.job_manager.list_jobs_async(
            queueing_lock=f"{space_id}:{job.key}", status="todo"))

    async def _run_again(self, job: procrastinate.jobs.Job) -> None:
        """Queue a dead worker's job again; if the same work was queued meanwhile (the queueing
        lock allows one waiting job per key), that job will do it: this one ends as aborted."""
        manager = self.app.job_manager
        try:
            await manager.retry_job(job)
            logger.warning("background job %s: its worker died; running it again", job.id)
        except UniqueViolation:
            await manager.finish_job(job, status=Status.ABORTED,
                                     delete_job=False)
            logger.warning("background job %s: its worker died; the same work is queued again"
                           " already", job.id)

    async def defer_until_quota_renews(self, space_id: str, job: MemoryJob, seconds: int
                                       ) -> None:
        """Queue `job` again to run in `seconds` (it stays in the database meanwhile). Not
        waited for by `drain`: that would wait for the period's end."""
        logger.info("background space=%s %s: usage quota spent, deferred by %d s", space_id,
                    job.key, seconds)
        with contextlib.suppress(AlreadyEnqueued):  # a queued one will do the same work
            await self._task.configure(
                queueing_lock=f"{space_id}:{job.key}", lock=f"{space_id}:{job.key}",
                schedule_in={"seconds": seconds},
            ).defer_async(space_id=space_id, kind=job.kind, session_id=job.session_id,
                          allow_archived=job.allow_archived)

    async def submit(self, space_id: str, job: MemoryJob) -> None:
        try:
            job_id = await self._task.configure(
                queueing_lock=f"{space_id}:{job.key}", lock=f"{space_id}:{job.key}"
            ).defer_async(space_id=space_id, kind=job.kind, session_id=job.session_id,
                          allow_archived=job.allow_archived)
            self._deferred.add(job_id)
        except AlreadyEnqueued:
            pass  # the queued one will read everything this one would
        except Exception:  # the request's own work is done and saved: do not fail it
            logger.exception("background space=%s %s: could not be queued", space_id, job.key)

    async def drain(self) -> None:
        """Wait until every job this process queued, and every job those queued, is done
        (tests, one-shot loops). Jobs of other processes are not waited for: one left behind
        by a dead worker would hold this up until the stall recovery."""
        while self._deferred:
            checked = set(self._deferred)
            self._deferred -= checked - await self._unfinished(checked)  # new ids stay
            if self._deferred:
                await asyncio.sleep(0.05)

    async def _unfinished(self, job_ids: set[int]) -> set[int]:
        async with self.app.connector.pool.connection() as conn:  # type: ignore[attr-defined]
            cursor = await conn.execute(
                "SELECT id FROM procrastinate_jobs WHERE id = ANY(%s)"
                " AND status IN ('todo', 'doing')", (list(job_ids),))
            return {row[0] for row in await cursor.fetchall()}

    async def aclose(self) -> None:
        """Stop taking jobs, let the running ones finish (within the grace period), close. A
        task that does not stop within the grace period (plus a little) is left behind with a
        warning rather than hanging the shutdown; its job comes back through the heartbeat."""
        self._closing.set()
        # The worker is asked to stop, not cancelled: while it starts it waits for pool
        # connections through Python 3.11's `asyncio.wait_for`, which drops a cancellation
        # that lands as the connection arrives, and the worker would then run on. Before its
        # task's first step a cancellation cannot be lost (and `stop` would be).
        if self._worker is not None and self._working:
            self._worker.stop()
        elif self._worker_task is not None:
            self._worker_task.cancel()
        if self._recovery is not None:
            self._recovery.cancel()  # if this cancellation is lost, `_closing` ends its loop
        for task in (self._worker_task, self._recovery):
            if task is not None:
                done, _ = await asyncio.wait({task}, timeout=self._grace + 5)
                if not done:
                    logger.warning("background: %s did not stop in time", task.get_name())
        await self.app.close_async()


class SpaceJobs:
    """The runner seen by one space's agent: the queue when there is one, else in-process."""

    def __init__(self, runner: BackgroundRunner, queue: MemoryQueue | None, space_id: str,
                 get_agent: GetAgent,
                 queue_ready: Callable[[], Awaitable[bool]] | None = None) -> None:
        self._runner = runner
        self._queue = queue
        self._space_id = space_id
        self._get_agent = get_agent
        self._queue_ready = queue_ready

    async def submit(self, job: MemoryJob) -> None:
        if self._queue is not None:
            if self._queue_ready is None or await self._queue_ready():
                await self._queue.submit(self._space_id, job)
            else:
                logger.error("background space=%s %s: not queued, the queue is not running",
                             self._space_id, job.key)
            return

        key = f"space={self._space_id} {job.key}"

        async def run() -> None:
            try:
                await run_memory_job(self._get_agent, self._space_id, job)
            except TransientJobError as exc:
                raise exc.__cause__ from None  # the in-process runner retries LLMErrors
            except JobDeferred as deferred:
                logger.info("background %s: usage quota spent, deferred by %d s", key,
                            deferred.seconds)
                self._runner.defer(key, run, deferred.seconds)

        self._runner.submit(key, run)
