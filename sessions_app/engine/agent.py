"""SpaceAgent: the engine facade for one space, called by REST, WebSocket and background work.

It keeps no correctness state in memory: every call reads what it needs from the store, so an
agent can be evicted and rebuilt at any time. Operations on one session run under that
session's lock; background work (consolidation, integration) only goes through `jobs.submit`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, aclosing
from typing import Any, Literal, Protocol

from . import compression, memory
from .admission import ADMITTED
from .agent_config import configured_llm, effective_config, space_if_busy
from .approval import ApprovalPolicy
from .approval import now as approval_now
from .builtins import turn_toolbox
from .context import PromptBuilder
from .core import CoreMemory, core_prompt_block, core_tools
from .editing import history_up_to
from .errors import (
    InvalidInput,
    MainSessionNotArchivable,
    SessionArchived,
    SessionBusy,
    StelloError,
    required_text,
)
from .fork import plan_child
from .history import History, HistoryCache, drop_incomplete_tool_groups
from .ports import LLM, ApprovalWakeups, BackgroundJobs, SessionLocks, SpaceStore, ToolSource
from .skills import Skill, visible_skills
from .tools import Tool, ToolContext
from .turn import Resumption, TurnLoop
from .types import (
    SESSION_FORKED,
    Bootstrap,
    EngineSettings,
    ForkOptions,
    IntegrationResult,
    LogEvent,
    Logged,
    MemoryJob,
    Prefetched,
    SessionMeta,
    StreamChunk,
    TurnContext,
    TurnResult,
    TurnWrite,
    forked_payload,
)
from .usage import PriceFunction, UsageScope, no_price


class EventSink(Protocol):
    """Where a session's log goes live (`sessions_app.live.publish`); `saved`: the entry is
    committed already (told after a fork or archive, not by a running turn)."""

    def __call__(self, session_id: str, event: LogEvent, *, saved: bool = False) -> None: ...


MEMORY_UPDATED, INSIGHT_UPDATED = "memory.updated", "insight.updated"
ARCHIVED_WHILE_WAITING = "the session was archived while the turn waited for approvals"
# Slot writes that are logged (PUT .../memory, PUT .../insight, the admin).
SLOT_EVENTS = {"memory": MEMORY_UPDATED, "insight": INSIGHT_UPDATED}


def session_identity(session: SessionMeta) -> str:
    """A child session's note of who it is in the tree (STELLO_SESSION_IDENTITY)."""
    scope = f" Its scope: {session.scope}." if session.scope else ""
    return (f'<session_identity>\nThis conversation is the session "{session.label}", a '
            f"branch at depth {session.depth} of a larger session tree; other sessions "
            f"handle other topics.{scope}\n</session_identity>")


def validate_input(value: object) -> str:
    """The user's input: a non-empty string (the same rule as REST's and the WebSocket's)."""
    return required_text({"input": value}, "input")


class SpaceAgent:
    def __init__(
        self,
        *,
        space_id: str,
        store: SpaceStore,
        llm: LLM,
        memory_llm: LLM,
        tools: Sequence[Tool],
        skills: Mapping[str, Skill],
        locks: SessionLocks,
        jobs: BackgroundJobs,
        settings: EngineSettings,
        space_config: Mapping[str, Any] | None = None,
        llm_profiles: Mapping[str, LLM] | None = None,
        tool_source: ToolSource | None = None,
        price: PriceFunction = no_price,
        on_event: EventSink | None = None,
        recover_events: Callable[[str], Awaitable[Sequence[LogEvent]]] | None = None,
        wakeups: ApprovalWakeups | None = None,
        admission: asyncio.Semaphore | None = None,
    ) -> None:
        self.space_id = space_id
        self.store = store
        self.llm = llm
        self.memory_llm = memory_llm
        self.tools = tuple(tools)
        self.skills = dict(skills)
        self.locks = locks
        # Turns in their busy steps at once (engine/admission.py): the process's, when given.
        self.admission = admission or asyncio.Semaphore(ADMITTED)
        self.jobs = jobs
        self.settings = settings
        # The space's `config` as it was when this agent was built (a space update evicts it).
        self.space_config = dict(space_config or {})
        # The space's default busy policy: read with the config, so a turn pays no read for it.
        self.if_busy = space_if_busy(self.space_config)
        self.llm_profiles = dict(llm_profiles or {})  # provider profile name -> LLM
        self.tool_source = tool_source  # the space's MCP servers, if it uses any
        self.price = price  # what a call costs (usage accounting)
        self._histories = HistoryCache()
        self.on_event = on_event  # (session_id, event): the session's event log, live
        # The events a dead process told but never saved (its turn is still marked running).
        self.recover_events = recover_events
        # How a turn waiting for tool approvals hears the answers (None: nothing is gated).
        self.wakeups = wakeups

    def _event_sink(
        self, session_id: str, also: Callable[[LogEvent], None] | None
    ) -> Callable[[LogEvent], None] | None:
        publish = self.on_event
        if publish is None:
            return also
        if also is None:
            return functools.partial(publish, session_id)  # called per streamed chunk

        def both(event: LogEvent) -> None:
            publish(session_id, event)
            also(event)

        return both

    def _logged(self, session_id: str) -> Logged:
        """For a session write that logs its own entry (fork, archive): the entry, committed
        already, goes to the session's followers."""
        publish = self.on_event

        def tell(event: LogEvent) -> None:
            if publish is not None:
                publish(session_id, event, saved=True)

        return tell

    # -- turns -----------------------------------------------------------------------------

    async def turn(self, session_id: str, input: str, *, turn_id: str | None = None,
                   on_event: Callable[[LogEvent], None] | None = None,
                   wait: bool = True) -> TurnResult:
        """One turn; `wait=False` refuses at once (SessionBusy) if the session is busy."""
        text = validate_input(input)
        extra, notes = await self._extra_tools(), await self._extra_system()
        usage = self._usage_scope(session_id)
        try:
            async with self._hold_for_turn(session_id, wait) as prefetched:
                ctx, history = await self._context_for_new_turn(session_id, prefetched)
                loop = self._turn_loop(ctx, history, text, usage, turn_id=turn_id,
                                       on_event=on_event, recovered=await self._recovered(ctx),
                                       extra_tools=extra, extra_system=notes)
                result = await loop.run()
        except BaseException:
            await usage.flush(self.store, quietly=True)  # calls made before the failure
            raise
        await self._after_turn(ctx, loop.turn_count)
        return result

    async def stream(
        self, session_id: str, input: str, *, turn_id: str | None = None,
        on_event: Callable[[LogEvent], None] | None = None, wait: bool = True,
    ) -> AsyncIterator[StreamChunk | TurnResult]:
        """StreamChunks of every round, then the TurnResult last. The session stays locked for
        the whole stream; closing the generator early releases it. `on_event` is told every
        event of the turn's log as it happens (besides the agent's own sink)."""
        text = validate_input(input)
        extra, notes = await self._extra_tools(), await self._extra_system()
        usage = self._usage_scope(session_id)
        try:
            async with self._hold_for_turn(session_id, wait) as prefetched:
                ctx, history = await self._context_for_new_turn(session_id, prefetched)
                loop = self._turn_loop(ctx, history, text, usage, turn_id=turn_id,
                                       on_event=on_event, recovered=await self._recovered(ctx),
                                       extra_tools=extra, extra_system=notes)
                async with aclosing(loop.stream()) as items:
                    async for item in items:
                        yield item
        finally:
            await usage.flush(self.store, quietly=True)  # calls a failed or closed stream made
        await self._after_turn(ctx, loop.turn_count)

    async def resume_waiting(self, session_id: str, turn_id: str) -> TurnResult | None:
        """Go on with a turn that waited for tool approvals after its process stopped, once
        every call is answered (or the deadline passed). None when there is nothing to do
        here: the turn is not waiting, answers are missing, or the session is held (by the
        turn's own process, which goes on by itself)."""
        extra, notes = await self._extra_tools(), await self._extra_system()
        usage = self._usage_scope(session_id)
        try:
            async with self.locks.hold(session_id, wait=False):
                ctx, history = await self._histories.load(self.store, session_id)
                if turn_id not in ctx.waiting_turns:
                    return None
                if ctx.session.status == "archived":  # read-only now: the turn cannot go on
                    await self._end_waiting(ctx, turn_id, "failed", ARCHIVED_WHILE_WAITING)
                    return None
                approvals = await self.store.list_approvals(session_id, turn_id)
                if any(a.decision is None and a.deadline > approval_now() for a in approvals):
                    return None
                before, own = history.split_open()
                resume = Resumption.of(own)
                if resume is None:  # pragma: no cover - a waiting turn ends with its calls
                    return None
                loop = self._turn_loop(ctx, before, own[0].content, usage, turn_id=turn_id,
                                       extra_tools=extra, extra_system=notes, resume=resume)
                result = await loop.run()
        except SessionBusy:
            return None
        except BaseException:
            await usage.flush(self.store, quietly=True)
            raise
        await self._after_turn(ctx, loop.turn_count)
        return result

    async def cancel_orphaned(self, session_id: str, turn_id: str | None) -> str | None:
        """Cancel a turn (`turn_id`, or the session's) that waits for approvals after its
        process stopped, like a cancel of a running turn: nothing of it is kept, its row and
        log say cancelled. None when there is no such turn, or when a live process holds the
        session (the caller then reaches the turn there)."""
        try:
            async with self.locks.hold(session_id, wait=False):
                ctx = await self.store.load_turn_context(session_id, history_after=None)
                waiting = [t for t in ctx.waiting_turns if turn_id in (None, t)]
                if not waiting:
                    return None
                await self._end_waiting(ctx, waiting[0], "cancelled")
        except SessionBusy:
            return None
        return waiting[0]

    async def _end_waiting(self, ctx: TurnContext, turn_id: str,
                           status: Literal["cancelled", "failed"],
                           error: str | None = None) -> None:
        """End a waiting turn that no process holds (we hold the lock): nothing of it stays in
        the history, its row and log (`turn.cancelled` / `turn.failed`) say why."""
        done = LogEvent(ctx.event_seq + 1, f"turn.{status}", {"turnId": turn_id} | (
            {"error": error} if error else {}))
        await self.store.finish_turn(
            ctx.session.id, TurnWrite(turn_id, "", status, None, (done,), done.seq),
            error=error, discard=True)
        self._histories.forget(ctx.session.id)
        self._logged(ctx.session.id)(done)

    def _usage_scope(self, session_id: str | None) -> UsageScope:
        return UsageScope(session_id=session_id, price=self.price)

    async def _active_context(self, session_id: str, prefetched: Prefetched | None = None
                              ) -> tuple[TurnContext, History]:
        ctx, history = await self._histories.load(self.store, session_id, prefetched)
        if ctx.session.status == "archived":
            raise SessionArchived(session_id)
        return ctx, history

    def _hold_for_turn(self, session_id: str, wait: bool
                       ) -> AbstractAsyncContextManager[Prefetched | None]:
        """The session's lock for a new turn, with the turn's context read in the lock's own
        round trip where the lock can (PostgreSQL)."""
        return self.locks.hold(session_id, wait=wait,
                               first_read=self._histories.first_read(self.store, session_id))

    async def _context_for_new_turn(self, session_id: str, prefetched: Prefetched | None
                                    ) -> tuple[TurnContext, History]:
        """A turn that waits for approvals keeps the session busy, even when the process
        that ran it has stopped (it goes on once answered). A busy step: admitted."""
        async with self.admission:
            ctx, history = await self._active_context(session_id, prefetched)
        if ctx.waiting_turns:
            raise SessionBusy(f"session busy: turn {ctx.waiting_turns[0]} waits for the "
                              "approval of its tool calls")
        return ctx, history

    async def _extra_tools(self) -> Sequence[Tool]:
        # Listed before the session lock is taken: a slow MCP server never holds the session.
        tools = list(await self.tool_source.tools()) if self.tool_source is not None else []
        if self.settings.core_tools:
            tools[:0] = core_tools(self.core())
        return tools

    async def _extra_system(self) -> tuple[str, ...]:
        # One more read per turn, only when the core memory is enabled in prompts.
        if not self.settings.core_in_prompt:
            return ()
        block = core_prompt_block(await self.store.core_data())
        return (block,) if block else ()

    def core(self) -> CoreMemory:
        """The space's core memory (L1), with the configured limits."""
        return CoreMemory(self.store, max_value_bytes=self.settings.core_max_value_bytes,
                          max_total_bytes=self.settings.core_max_total_bytes)

    async def aclose(self) -> None:
        """Release what the agent holds outside the database (its MCP connections)."""
        if self.tool_source is not None:
            await self.tool_source.aclose()

    async def _recovered(self, ctx: TurnContext) -> tuple[LogEvent, ...]:
        """Only after a process died mid-turn (rare): what it told and never saved, so the
        log keeps the seqs its clients saw."""
        if not ctx.running_turns or self.recover_events is None:
            return ()
        try:
            told = await self.recover_events(ctx.session.id)
        except Exception:  # the turn goes on; the dead turn's unsaved events are lost
            return ()
        return tuple(sorted((e for e in told if e.seq > ctx.event_seq), key=lambda e: e.seq))

    def _turn_loop(self, ctx: TurnContext, history: History, text: str,
                   usage: UsageScope, store: SpaceStore | None = None, *,
                   turn_id: str | None = None,
                   on_event: Callable[[LogEvent], None] | None = None,
                   recovered: Sequence[LogEvent] = (),
                   extra_tools: Sequence[Tool] = (),
                   extra_system: Sequence[str] = (),
                   resume: Resumption | None = None) -> TurnLoop:
        session_id = ctx.session.id

        async def fork_from_current(options: ForkOptions) -> SessionMeta:
            child = await self._fork_unlocked(session_id, options)  # the turn holds the lock
            # Logged by the turn, in its seq order (see TurnLoop.log), not by the store.
            loop.log(SESSION_FORKED, forked_payload(child.id, child.label, child.scope))
            return child

        if self.settings.session_identity and ctx.session.role == "standard":
            extra_system = (*extra_system, session_identity(ctx.session))
        config = effective_config(self.space_config, ctx.config)
        llm = configured_llm(self.llm_profiles.get(config.provider or "", self.llm), config)
        toolbox = turn_toolbox(
            fork_from_current=fork_from_current,
            visible_skills=visible_skills(self.skills, config.skills),
            user_tools=(*self.tools, *extra_tools),
            max_forks=self.settings.max_forks_per_turn,
            max_parallel=self.settings.max_parallel_tools,
            allowed=config.tools,
        )
        prompt = PromptBuilder(
            ctx,
            history=history,
            llm=llm,
            memory_llm=usage.metered(self.memory_llm, "compression"),
            store=self.store,
            memory_language=self.settings.memory_language,
            extra_system=extra_system,
        )
        loop = TurnLoop(
            session_id=session_id,
            user_input=text,
            insight=ctx.insight if ctx.session.role == "standard" else None,
            prompt=prompt,
            llm=usage.metered(llm, "turn"),
            store=store or self.store,  # a message edit's first save rewrites the old turn
            toolbox=toolbox,
            tool_context=ToolContext(space_id=self.space_id, session_id=session_id),
            max_tool_rounds=self.settings.max_tool_rounds,
            on_saved=lambda messages, saved: self._histories.saved(session_id, messages, saved),
            usage=usage,
            turn_id=turn_id,
            event_seq=ctx.event_seq,
            abandoned=ctx.running_turns,  # we hold the lock: nobody is running them
            recovered=recovered,
            on_event=self._event_sink(session_id, on_event),
            approvals=ApprovalPolicy(config.approve_tools,
                                     self.settings.approval_timeout_seconds),
            wakeups=self.wakeups,
            resume=resume,
            admission=self.admission,
        )
        return loop

    async def _after_turn(self, ctx: TurnContext, turn_count: int | None) -> None:
        every = self.settings.consolidate_every_n_turns
        if ctx.session.role != "standard" or every <= 0 or not turn_count:
            return
        if turn_count % every == 0:
            await self.jobs.submit(MemoryJob("consolidate", ctx.session.id))

    # -- tree ------------------------------------------------------------------------------

    async def fork(self, source_id: str, options: ForkOptions) -> SessionMeta:
        """Fork a child from `source_id` (an archived source is allowed, like the reference).
        With context "compress" the memory model summarises the source's history first,
        without the source's lock (the model is never called under a session lock); the
        child gets the summary of the history as it was read."""
        if options.context == "compress":
            self._check_provider(options)
            source = await self.store.load_turn_context(source_id, history_after=0)
            usage = self._usage_scope(source_id)  # the summary is charged to the source
            try:
                summary = await self._summarise_for_child(
                    source, usage.metered(self.memory_llm, "fork"))
            finally:
                await usage.flush(self.store, quietly=True)
            async with self.locks.hold(source_id):
                child = plan_child(source, options, self.settings.fork_strategy,
                                   parent_context=summary)
                return await self.store.create_child(child, logged=self._logged(source_id))
        async with self.locks.hold(source_id):
            return await self._fork_unlocked(source_id, options,
                                             logged=self._logged(source_id))

    async def _summarise_for_child(self, source: TurnContext, memory_llm: LLM) -> str | None:
        history = [m for m in drop_incomplete_tool_groups(source.history)
                   if m.role in ("user", "assistant") and m.content]
        if not history:
            return None
        prompt = memory.default_compress_prompt(self.settings.memory_language)
        return await compression.summarize(memory_llm, prompt, history,
                                           self.settings.memory_language)

    def _check_provider(self, options: ForkOptions) -> None:
        provider = (options.config or {}).get("provider")
        if provider is not None and provider not in self.llm_profiles:
            known = ", ".join(sorted(self.llm_profiles)) or "none are configured"
            raise InvalidInput(f"config.provider must name an LLM profile of this server "
                               f"({known})")

    async def _fork_unlocked(self, source_id: str, options: ForkOptions, *,
                             logged: Logged | None = None) -> SessionMeta:
        self._check_provider(options)
        if options.context == "compress":  # only the REST/WebSocket fork summarises
            raise InvalidInput('context "compress" is not available here')
        # Without inherited context the child needs nothing of the source's history.
        inherit = options.context == "inherit"
        if options.from_message is not None:  # a branch from one message
            source = await history_up_to(self.store, source_id, options.from_message)
        else:
            source = await self.store.load_turn_context(source_id,
                                                        history_after=0 if inherit else None)
        child = plan_child(source, options, self.settings.fork_strategy)
        return await self.store.create_child(child, logged=logged)

    async def archive(self, session_id: str) -> SessionMeta:
        """Archive a child: it becomes read-only (turns, consolidation and prompt writes answer
        SessionArchived) until `unarchive`; reads and forks from it stay allowed. The main
        session is never archived (the store leaves it as it is)."""
        async with self.locks.hold(session_id):
            meta = await self.store.archive(session_id, logged=self._logged(session_id))
        if meta.role == "main":
            raise MainSessionNotArchivable()
        if self.settings.consolidate_on_archive:
            # Finalises the archived session's L2 (which the next integration still reads).
            await self.jobs.submit(MemoryJob("consolidate", session_id, allow_archived=True))
        return meta

    async def unarchive(self, session_id: str) -> SessionMeta:
        """Make an archived session active again (an active one stays as it is)."""
        async with self.locks.hold(session_id):
            return await self.store.unarchive(session_id, logged=self._logged(session_id))

    async def bootstrap(self, session_id: str) -> Bootstrap:
        return await self.store.load_bootstrap(session_id)

    async def leave(self, session_id: str) -> None:
        if not self.settings.consolidate_on_leave:
            return
        meta = await self.store.get_session(session_id)
        if meta.role == "standard" and meta.status == "active":
            await self.jobs.submit(MemoryJob("consolidate", session_id))

    # -- memory ----------------------------------------------------------------------------

    async def consolidate(self, session_id: str, *, allow_archived: bool = False) -> str | None:
        """L3 -> L2 for a standard session; returns its memory.

        The memory model sees the current memory and only the records it does not cover yet,
        as many as fit its context; a longer backlog takes several calls. No lock is held: a
        turn on the session never waits for the model, and a result is written only if no
        other consolidation covered more records meanwhile (then that one's memory stands).
        A session with nothing new keeps its memory (no LLM call)."""
        usage = self._usage_scope(session_id)
        try:
            return await self._consolidate(session_id, allow_archived, usage)
        finally:
            await usage.flush(self.store, quietly=True)  # memory work is charged to the session

    async def _consolidate(self, session_id: str, allow_archived: bool,
                           usage: UsageScope) -> str | None:
        memory_llm = usage.metered(self.memory_llm, "consolidation")
        language = self.settings.memory_language
        while True:
            data = await self.store.load_consolidation_input(session_id)
            if data.session.role == "main":
                raise InvalidInput("the main session integrates; it does not consolidate")
            if data.session.status == "archived" and not allow_archived:
                raise SessionArchived(session_id)
            if not data.records:
                return data.memory
            prompt = memory.resolve_prompt(
                data.session_prompt,
                data.space_prompt,
                memory.default_consolidate_prompt(language),
            )
            pending = [message for _, message in data.records]
            count = memory.records_within_budget(
                memory_llm, prompt, data.memory, pending, language
            )
            new_memory = await memory.consolidate(
                memory_llm, prompt, data.memory, pending[:count], language
            )
            calls = tuple(usage.pending)
            written = await self.store.save_consolidation(
                session_id, new_memory, data.records[count - 1][0], usage=calls
            )
            del usage.pending[:len(calls)]  # stored with the memory
            if written:
                await self._log_change(session_id, MEMORY_UPDATED, {"memory": new_memory})
            if written and count == len(pending):
                return new_memory
            # Either more records wait, or another consolidation moved the marker: read again.

    async def integrate(self) -> IntegrationResult:
        """Every child's L2 -> the main session's synthesis + one insight per active child.

        Archived children's final memories inform the synthesis (so what an archived branch
        settled is not lost) but get no insight. Like consolidation, no lock is held while
        the model answers: the synthesis written is the one computed from what was read."""
        main_id = await self.store.main_session_id()
        usage = self._usage_scope(main_id)  # integration serves the main session
        try:
            return await self._integrate(main_id, usage)
        finally:
            await usage.flush(self.store, quietly=True)

    async def _integrate(self, main_id: str, usage: UsageScope) -> IntegrationResult:
        memory_llm = usage.metered(self.memory_llm, "integration")
        main = await self.store.get_session(main_id)
        if main.status == "archived":
            raise SessionArchived(main_id)
        children = await self.store.collect_memories()
        space = await self.store.space_prompts()
        language = self.settings.memory_language
        prompt = memory.resolve_prompt(
            await self.store.read_slot(main_id, "integrate_prompt"),
            space.integrate_prompt,
            memory.default_integrate_prompt(language),
        )
        synthesis = await self.store.read_slot(main_id, "memory")
        result = await memory.integrate(memory_llm, prompt, children, synthesis, language)
        calls = tuple(usage.pending)
        await self.store.save_integration(main_id, result.synthesis, result.insights, usage=calls)
        del usage.pending[:len(calls)]  # stored with the synthesis
        await self._log_change(main_id, MEMORY_UPDATED, {"memory": result.synthesis})
        for insight in result.insights:
            await self._log_change(insight.session_id, INSIGHT_UPDATED,
                                   {"insight": insight.content})
        return result

    async def _log_change(self, session_id: str, type_: str, payload: dict[str, Any]) -> None:
        """Log a memory or insight written without the session's lock (the model is never
        called under it): the entry needs the lock, since a running turn numbers the
        session's events. Waits for a running turn (bounded by the lock timeout); the change
        itself is stored either way, so an entry that could not be had is only skipped."""
        try:
            async with self.locks.hold(session_id):
                event = await self.store.log_event(session_id, type_, payload)
        except StelloError:  # SessionBusy past the timeout, the session deleted meanwhile
            return
        self._logged(session_id)(event)

    async def write_slot(self, session_id: str, key: str, content: str | None) -> None:
        """Replace a data slot (a prompt, the memory, the insight) under the session's lock, so
        an edit never lands in the middle of a turn or a consolidation of that session. REST's
        `PUT .../<slot>` and the admin both write through here. An archived session is
        read-only: SessionArchived, nothing written."""
        async with self.locks.hold(session_id):
            await self.store.write_slot(session_id, key, content, only_active=True)
            logged = SLOT_EVENTS.get(key)
            if logged is not None:
                event = await self.store.log_event(session_id, logged, {key: content})
        if logged is not None:
            self._logged(session_id)(event)

    async def effective_prompt(self, session_id: str, key: str) -> tuple[str, str]:
        """The consolidation (`key` "consolidate_prompt") or integration ("integrate_prompt")
        prompt that the next such call would use for `session_id`, and where it comes from
        ("session", "space" or "default"; see `memory.prompt_with_source`). Integration runs
        on the main session, so its prompt is the main session's, whichever session asks."""
        own = await self.store.read_slot(session_id, key)  # also: the session is in this space
        if key == "integrate_prompt":
            own = await self.store.read_slot(await self.store.main_session_id(), key)
            default = memory.default_integrate_prompt(self.settings.memory_language)
        else:
            default = memory.default_consolidate_prompt(self.settings.memory_language)
        space = await self.store.space_prompts()
        return memory.prompt_with_source(own, getattr(space, key), default)

    # -- background ------------------------------------------------------------------------

    async def run_job(self, job: MemoryJob) -> None:
        """Do one background memory job (the runners call this, in or out of process)."""
        try:
            if job.kind == "integrate":
                await self.integrate()
                return
            assert job.session_id is not None
            await self.consolidate(job.session_id, allow_archived=job.allow_archived)
        except SessionArchived:
            # Archived since the job was submitted (its memory stays as it was), or a main
            # session archived by an older release (it integrates nothing until unarchived):
            # that is the session's state, not a failure to retry.
            return
        if self.settings.integrate_after_consolidate:
            await self.jobs.submit(MemoryJob("integrate"))
