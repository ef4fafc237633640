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

from spaces import idempotency, pgpool
from spaces.models import Space
from spaces.throttling import rate_limiter

from .. import approvals, conf, live
from ..accounting.prices import price_nanos
from ..accounting.quotas import quota_book
from ..engine.admission import ADMITTED
from ..engine.agent import SpaceAgent
from ..engine.errors import SpaceNotFound, StelloError
from ..engine.llm import build_llm
from ..engine.skills import load_skills
from ..engine.tools import load_tools
from ..events import announce_turn
from ..mcp_tools import SpaceMCPTools
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
        self._closing: set[asyncio.Task[None]] = set()  # evicted agents releasing connections
        try:  # the loop the agents' connections belong to (evictions may come from elsewhere)
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

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
        agent = self._agents.pop(space_id, None)
        self._last_used.pop(space_id, None)
        if getattr(agent, "tool_source", None) is not None:
            self._release(agent)

    def dispose(self) -> None:
        for agent in self._agents.values():
            if getattr(agent, "tool_source", None) is not None:
                self._release(agent)
        self._agents.clear()
        self._last_used.clear()

    def _release(self, agent: SpaceAgent) -> None:
        # The connections close in the background on their own loop: eviction is called from
        # sync code, possibly from another thread (a space saved in the admin).
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        loop = self._loop or running
        if loop is None or loop.is_closed():
            return
        if loop is running:
            self._spawn_close(agent)
        else:
            loop.call_soon_threadsafe(self._spawn_close, agent)

    def _spawn_close(self, agent: SpaceAgent) -> None:
        task = asyncio.get_running_loop().create_task(agent.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        """Evict every agent and wait until their connections are closed."""
        self.dispose()
        while self._closing:
            await asyncio.wait(list(self._closing))

    def _evict_idle(self, now: float) -> None:
        for space_id, used in list(self._last_used.items()):
            if now - used > self._idle_ttl:
                self.evict(space_id)


async def _space_config(space_id: str) -> dict[str, Any] | None:
    """The space's `config`, None when there is no such space (one query, at agent build)."""
    if not pgpool.enabled():
        rows = [c async for c in Space.objects.filter(pk=space_id).values_list("config",
                                                                                flat=True)]
        return (rows[0] or {}) if rows else None
    row = await pgpool.fetchone("SELECT config FROM spaces WHERE id = %s", (space_id,))
    return None if row is None else (row[0] or {})


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
        self.llm_profiles = {name: build_llm(profile)
                             for name, profile in conf.llm_profiles().items()}
        self.mcp_servers = conf.mcp_servers()
        conninfo = pgpool.conninfo()
        timeout = stello["SESSION_LOCK_TIMEOUT_SECONDS"]
        self.locks = (PostgresSessionLocks(conninfo, timeout) if conninfo
                      else LocalSessionLocks(timeout))
        self.admission = asyncio.Semaphore(ADMITTED)  # shared by every agent of the loop
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
        # A serving loop runs the retention sweep itself (not a one-call one). Not as a
        # procrastinate periodic task: its deferrer stops the whole worker when the database
        # goes away for a moment (a restart), and memory jobs with it.
        self._sweeps = durable_jobs
        self._sweeper: asyncio.Task[None] | None = None
        self._approval_sweeper: asyncio.Task[None] | None = None
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
        task = self._detach(work)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_log_unawaited_failure)
            raise

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run `work` in the background (e.g. a turn resumed after its approvals); `aclose`
        waits for it, and a failure is logged."""
        self._detach(work).add_done_callback(_log_unawaited_failure)

    def _detach(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(work)
        self.detached.add(task)
        task.add_done_callback(self.detached.discard)
        return task

    def start(self) -> None:
        """Start this process's queue worker in the background, once (again after a failure:
        a database that is away must not hold up or fail the requests that trigger this)."""
        if self.queue is not None and self._queue_start is None:
            self._queue_start = asyncio.get_running_loop().create_task(self._start_queue())
        if self._sweeps and self._sweeper is None:
            from .. import retention
            loop = asyncio.get_running_loop()
            self._sweeper = loop.create_task(retention.run_periodically(self.agent),
                                             name="stello:retention")
            self._approval_sweeper = loop.create_task(approvals.run_periodically(self.agent),
                                                      name="stello:approvals")

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
        await quota_book.load()  # so turns of users without quotas need no round trip for them
        config = await _space_config(space_id)
        if config is None:
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
            space_config=config,
            llm_profiles=self.llm_profiles,
            tool_source=self._mcp_tools(config),
            price=price_nanos,
            on_event=live.publish if self.live else None,  # the log, live (live.py)
            recover_events=live.recover if self.live else None,
            # A loop that lives for one call cannot wait for answers: nothing is gated there.
            wakeups=approvals.wakeups() if self.live else None,
            admission=self.admission,
        )

    def _mcp_tools(self, config: dict[str, Any]) -> SpaceMCPTools | None:
        names = config.get("mcpServers")
        if not isinstance(names, list):
            return None
        specs = [self.mcp_servers[n] for n in names if n in self.mcp_servers]
        if not specs:
            return None
        return SpaceMCPTools(specs, max_result_chars=settings.STELLO["MCP_MAX_RESULT_CHARS"])

    async def aclose(self) -> None:
        """Finish detached turns and background work, then release clients and connections.
        Turns waiting for tool approvals stop waiting (they stay stored as waiting)."""
        approvals.stop_waiting()
        while self.detached:
            await asyncio.wait(list(self.detached))
        for sweeper in (self._sweeper, self._approval_sweeper):
            if sweeper is not None:
                await _cancel_until_done(sweeper)
        await self.jobs.drain()
        if self._queue_start is not None:
            await asyncio.gather(self._queue_start, return_exceptions=True)
        if self._queue_running and self.queue is not None:
            await self.queue.aclose()
        await self.pool.aclose()
        if isinstance(self.locks, PostgresSessionLocks):
            await self.locks.aclose()
        await idempotency.settled()
        await idempotency.key_locks.aclose_current()
        await pgpool.pools.aclose_current()
        await rate_limiter.aclose_current()
        llms = [self.llm, self.memory_llm, *self.llm_profiles.values()]
        for llm in {id(llm): llm for llm in llms}.values():
            await llm.aclose()


async def _cancel_until_done(task: asyncio.Task[Any]) -> None:
    """Cancel a task that has nothing to finish, again every second until it ends: Python
    3.11's `asyncio.wait_for` (in the connection pool) can drop a cancellation."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1)
    if not task.cancelled():
        task.exception()  # retrieved: a sweep's own errors were logged by the sweep


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
