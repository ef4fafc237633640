"""The per-process runtime: shared LLM clients, locks, background runner and the agent pool.

Loop-bound objects (asyncio locks, HTTP clients, the lock connection pool) are created inside
the running loop, so the registry keeps one `Runtime` per event loop: a production server has
one loop; a sync test client that runs each request in a new loop gets a fresh runtime each
time. Nothing here matters for correctness: everything that matters is in the database.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from functools import cache
from typing import Any, TypeVar

from django.conf import settings

from spaces import pgpool
from spaces.models import Space
from spaces.throttling import rate_limiter

from .. import conf, live
from ..engine.agent import SpaceAgent
from ..engine.errors import SpaceNotFound, StelloError
from ..engine.llm import build_llm
from ..engine.skills import load_skills
from ..engine.tools import load_tools
from ..events import announce_turn
from ..store import space_store
from .jobs import BackgroundRunner, MemoryQueue, SpaceJobs
from .locks import LocalSessionLocks, PostgresSessionLocks

logger = logging.getLogger("stello.runtime")

T = TypeVar("T")


class AgentPool:
    """Lazily built, cached per-space agents with idle eviction (swept on access)."""

    def __init__(self, factory: Callable[[str], Awaitable[SpaceAgent]], *, idle_ttl: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._factory = factory
        self._idle_ttl = idle_ttl
        self._clock = clock
        self._agents: dict[str, SpaceAgent] = {}
        self._last_used: dict[str, float] = {}
        self._building: dict[str, asyncio.Future[SpaceAgent]] = {}

    @property
    def size(self) -> int:
        return len(self._agents)

    async def get(self, space_id: str) -> SpaceAgent:
        now = self._clock()
        self._evict_idle(now)
        self._last_used[space_id] = now
        agent = self._agents.get(space_id)
        if agent is not None:
            return agent
        building = self._building.get(space_id)
        if building is None:  # the first caller builds; concurrent callers share its result
            building = asyncio.ensure_future(self._factory(space_id))
            self._building[space_id] = building
            try:
                self._agents[space_id] = await asyncio.shield(building)
            finally:
                self._building.pop(space_id, None)
        return await asyncio.shield(building)

    def evict(self, space_id: str) -> None:
        self._agents.pop(space_id, None)
        self._last_used.pop(space_id, None)

    def dispose(self) -> None:
        self._agents.clear()
        self._last_used.clear()

    def _evict_idle(self, now: float) -> None:
        for space_id, used in list(self._last_used.items()):
            if now - used > self._idle_ttl:
                self.evict(space_id)


async def _space_exists(space_id: str) -> bool:
    if not pgpool.enabled():
        return await Space.objects.filter(pk=space_id).aexists()  # one hop (embedded SQLite)
    return await pgpool.fetchone("SELECT 1 FROM spaces WHERE id = %s", (space_id,)) is not None


@cache
def _user_tools():
    return tuple(load_tools(settings.STELLO["TOOLS"]))


@cache
def _skills():
    return load_skills(settings.STELLO["SKILLS_DIRS"])


class Runtime:
    """Everything one event loop shares between the spaces' agents. `durable_jobs`: memory
    jobs go through the PostgreSQL queue, worked by this loop (a server's loop). A loop that
    lives for one call (the sync test client, the admin) runs them in process instead: a queue
    worker started and stopped around every call would cost more than the call."""

    def __init__(self, *, durable_jobs: bool = True) -> None:
        stello = settings.STELLO
        self.engine_settings = conf.engine_settings()
        self.llm = build_llm(conf.llm_settings())
        memory = conf.memory_llm_settings()
        self.memory_llm = build_llm(memory) if memory else self.llm
        conninfo = pgpool.conninfo()
        timeout = stello["SESSION_LOCK_TIMEOUT_SECONDS"]
        self.locks = (PostgresSessionLocks(conninfo, timeout) if conninfo
                      else LocalSessionLocks(timeout))
        self.jobs = BackgroundRunner(retries=stello["BACKGROUND_RETRIES"])
        self.queue = MemoryQueue(
            conninfo, self.agent,
            retries=stello["BACKGROUND_RETRIES"],
            retry_delay=stello["BACKGROUND_RETRY_DELAY_SECONDS"],
            stall_seconds=stello["BACKGROUND_STALL_SECONDS"],
            shutdown_grace_seconds=stello["BACKGROUND_SHUTDOWN_GRACE_SECONDS"],
            concurrency=stello["BACKGROUND_CONCURRENCY"],
        ) if conninfo and durable_jobs else None
        self._queue_running = False
        self._queue_start: asyncio.Task[None] | None = None
        # A loop that lives for one call cannot keep listeners (cancels, followers) running:
        # its turns are logged, not published live (followers catch up from the log).
        self.live = durable_jobs
        self.pool = AgentPool(self._build_agent, idle_ttl=stello["AGENT_IDLE_TTL_SECONDS"])
        self.detached: set[asyncio.Task[Any]] = set()

    async def run_detached(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` (a REST turn) as a task of its own and wait for it. If the caller is
        cancelled (the server cancels a request whose client hung up), the work goes on to
        the end: a turn that reached the LLM is saved either way, as on the WebSocket.
        `aclose` (server shutdown) waits for it."""
        task = asyncio.get_running_loop().create_task(work)
        self.detached.add(task)
        task.add_done_callback(self.detached.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_log_unawaited_failure)
            raise

    def start(self) -> None:
        """Start this process's queue worker in the background, once (again after a failure:
        a database that is away must not hold up or fail the requests that trigger this)."""
        if self.queue is not None and self._queue_start is None:
            self._queue_start = asyncio.get_running_loop().create_task(self._start_queue())

    async def _start_queue(self) -> None:
        assert self.queue is not None
        try:
            await self.queue.start()
            self._queue_running = True
        except Exception:
            logger.exception("the memory-job queue could not start; will try again")
            self._queue_start = None

    async def queue_ready(self) -> bool:
        """Wait for the queue's start; False when there is none or it could not start."""
        self.start()
        if self._queue_start is not None:
            await asyncio.shield(self._queue_start)
        return self._queue_running

    async def agent(self, space_id: str) -> SpaceAgent:
        self.start()  # a process that serves also works the queue
        return await self.pool.get(str(space_id))

    async def drain(self) -> None:
        """Wait until every background job is done (the queue's too)."""
        await self.jobs.drain()
        if self.queue is not None and await self.queue_ready():
            await self.queue.drain()

    async def _build_agent(self, space_id: str) -> SpaceAgent:
        if not await _space_exists(space_id):
            raise SpaceNotFound()
        return SpaceAgent(
            space_id=space_id,
            store=space_store(space_id, on_turn=announce_turn),
            llm=self.llm,
            memory_llm=self.memory_llm,
            tools=_user_tools(),
            skills=_skills(),
            locks=self.locks,
            jobs=SpaceJobs(self.jobs, self.queue, space_id, self.agent, self.queue_ready),
            settings=self.engine_settings,
            on_event=live.publish if self.live else None,  # the log, live (live.py)
            recover_events=live.recover if self.live else None,
        )

    async def aclose(self) -> None:
        """Finish detached turns and background work, then release clients and connections."""
        while self.detached:
            await asyncio.wait(list(self.detached))
        await self.jobs.drain()
        if self._queue_start is not None:
            await asyncio.gather(self._queue_start, return_exceptions=True)
        if self._queue_running and self.queue is not None:
            await self.queue.aclose()
        self.pool.dispose()
        if isinstance(self.locks, PostgresSessionLocks):
            await self.locks.aclose()
        await pgpool.pools.aclose_current()
        await rate_limiter.aclose_current()
        for llm in {id(self.llm): self.llm, id(self.memory_llm): self.memory_llm}.values():
            await llm.aclose()


def _log_unawaited_failure(task: asyncio.Task[Any]) -> None:
    """The outcome of detached work whose caller has gone: an engine error (an LLM failure...)
    is an answer nobody waits for any more; anything else is a bug worth a traceback."""
    error = None if task.cancelled() else task.exception()
    if error is not None and not isinstance(error, StelloError):
        logger.error("detached operation failed after its client left", exc_info=error)


class RuntimeRegistry:
    """One Runtime per event loop, built on first use (lazy, resettable for tests)."""

    def __init__(self) -> None:
        self._runtimes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Runtime] = (
            weakref.WeakKeyDictionary()
        )

    def current(self, *, one_call: bool = False) -> Runtime:
        """This loop's runtime; `one_call` when the loop lives for one call (see Runtime)."""
        loop = asyncio.get_running_loop()
        runtime = self._runtimes.get(loop)
        if runtime is None:
            runtime = self._runtimes[loop] = Runtime(durable_jobs=not one_call)
        return runtime

    def evict_everywhere(self, space_id: str) -> None:
        for runtime in list(self._runtimes.values()):
            runtime.pool.evict(space_id)

    async def aclose_current(self, *, drain: bool = False) -> None:
        """Close this loop's runtime; `drain` first waits for the queued jobs too (a loop that
        lives for one call, whose worker would otherwise stop before running them)."""
        runtime = self._runtimes.pop(asyncio.get_running_loop(), None)
        if runtime is not None:
            if drain:
                await runtime.drain()
            await runtime.aclose()


runtimes = RuntimeRegistry()
