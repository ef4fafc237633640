"""SpaceAgent: the engine facade for one space, called by REST, WebSocket and background work.

It keeps no correctness state in memory: every call reads what it needs from the store, so an
agent can be evicted and rebuilt at any time. Operations on one session run under that
session's lock; background work (consolidation, integration) only goes through `jobs.submit`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing

from . import memory
from .builtins import turn_toolbox
from .context import PromptBuilder
from .errors import InvalidInput, MainSessionNotArchivable, SessionArchived, required_text
from .fork import plan_child
from .history import History, HistoryCache
from .ports import LLM, BackgroundJobs, SessionLocks, SpaceStore
from .skills import Skill, visible_skills
from .tools import Tool, ToolContext
from .turn import TurnLoop
from .types import (
    Bootstrap,
    EngineSettings,
    ForkOptions,
    IntegrationResult,
    LogEvent,
    MemoryJob,
    SessionMeta,
    StreamChunk,
    TurnContext,
    TurnResult,
)


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
        on_event: Callable[[str, LogEvent], None] | None = None,
        recover_events: Callable[[str], Awaitable[Sequence[LogEvent]]] | None = None,
    ) -> None:
        self.space_id = space_id
        self.store = store
        self.llm = llm
        self.memory_llm = memory_llm
        self.tools = tuple(tools)
        self.skills = dict(skills)
        self.locks = locks
        self.jobs = jobs
        self.settings = settings
        self._histories = HistoryCache()
        self.on_event = on_event  # (session_id, event): the session's event log, live
        # The events a dead process told but never saved (its turn is still marked running).
        self.recover_events = recover_events

    def _event_sink(
        self, session_id: str, also: Callable[[LogEvent], None] | None
    ) -> Callable[[LogEvent], None] | None:
        publish = self.on_event
        if publish is None:
            return also
        if also is None:
            return lambda event: publish(session_id, event)

        def both(event: LogEvent) -> None:
            publish(session_id, event)
            also(event)

        return both

    # -- turns -----------------------------------------------------------------------------

    async def turn(self, session_id: str, input: str, *, turn_id: str | None = None,
                   on_event: Callable[[LogEvent], None] | None = None,
                   wait: bool = True) -> TurnResult:
        """One turn; `wait=False` refuses at once (SessionBusy) if the session is busy."""
        text = validate_input(input)
        async with self.locks.hold(session_id, wait=wait):
            ctx, history = await self._active_context(session_id)
            loop = self._turn_loop(ctx, history, text, turn_id, on_event,
                                   await self._recovered(ctx))
            result = await loop.run()
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
        async with self.locks.hold(session_id, wait=wait):
            ctx, history = await self._active_context(session_id)
            loop = self._turn_loop(ctx, history, text, turn_id, on_event,
                                   await self._recovered(ctx))
            async with aclosing(loop.stream()) as items:
                async for item in items:
                    yield item
        await self._after_turn(ctx, loop.turn_count)

    async def _active_context(self, session_id: str) -> tuple[TurnContext, History]:
        ctx, history = await self._histories.load(self.store, session_id)
        if ctx.session.status == "archived":
            raise SessionArchived(session_id)
        return ctx, history

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
                   turn_id: str | None = None,
                   on_event: Callable[[LogEvent], None] | None = None,
                   recovered: Sequence[LogEvent] = ()) -> TurnLoop:
        session_id = ctx.session.id

        async def fork_from_current(options: ForkOptions) -> SessionMeta:
            return await self._fork_unlocked(session_id, options)  # the turn holds the lock

        toolbox = turn_toolbox(
            fork_from_current=fork_from_current,
            visible_skills=visible_skills(self.skills, ctx.skills),
            user_tools=self.tools,
            max_forks=self.settings.max_forks_per_turn,
        )
        prompt = PromptBuilder(
            ctx,
            history=history,
            llm=self.llm,
            memory_llm=self.memory_llm,
            store=self.store,
            memory_language=self.settings.memory_language,
        )
        return TurnLoop(
            session_id=session_id,
            user_input=text,
            insight=ctx.insight if ctx.session.role == "standard" else None,
            prompt=prompt,
            llm=self.llm,
            store=self.store,
            toolbox=toolbox,
            tool_context=ToolContext(space_id=self.space_id, session_id=session_id),
            max_tool_rounds=self.settings.max_tool_rounds,
            on_saved=lambda messages, saved: self._histories.saved(session_id, messages, saved),
            turn_id=turn_id,
            event_seq=ctx.event_seq,
            abandoned=ctx.running_turns,  # we hold the lock: nobody is running them
            recovered=recovered,
            on_event=self._event_sink(session_id, on_event),
        )

    async def _after_turn(self, ctx: TurnContext, turn_count: int | None) -> None:
        every = self.settings.consolidate_every_n_turns
        if ctx.session.role != "standard" or every <= 0 or not turn_count:
            return
        if turn_count % every == 0:
            await self.jobs.submit(MemoryJob("consolidate", ctx.session.id))

    # -- tree ------------------------------------------------------------------------------

    async def fork(self, source_id: str, options: ForkOptions) -> SessionMeta:
        """Fork a child from `source_id` (an archived source is allowed, like the reference)."""
        async with self.locks.hold(source_id):
            return await self._fork_unlocked(source_id, options)

    async def _fork_unlocked(self, source_id: str, options: ForkOptions) -> SessionMeta:
        # Without inherited context the child needs nothing of the source's history.
        inherit = options.context == "inherit"
        source = await self.store.load_turn_context(source_id,
                                                    history_after=0 if inherit else None)
        child = plan_child(source, options, self.settings.fork_strategy)
        return await self.store.create_child(child)

    async def archive(self, session_id: str) -> SessionMeta:
        """Archive a child: it becomes read-only (turns, consolidation and prompt writes answer
        SessionArchived) until `unarchive`; reads and forks from it stay allowed. The main
        session is never archived (the store leaves it as it is)."""
        async with self.locks.hold(session_id):
            meta = await self.store.archive(session_id)
        if meta.role == "main":
            raise MainSessionNotArchivable()
        if self.settings.consolidate_on_archive:
            # Finalises the archived session's L2 (which the next integration still reads).
            await self.jobs.submit(MemoryJob("consolidate", session_id, allow_archived=True))
        return meta

    async def unarchive(self, session_id: str) -> SessionMeta:
        """Make an archived session active again (an active one stays as it is)."""
        async with self.locks.hold(session_id):
            return await self.store.unarchive(session_id)

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
                self.memory_llm, prompt, data.memory, pending, language
            )
            new_memory = await memory.consolidate(
                self.memory_llm, prompt, data.memory, pending[:count], language
            )
            written = await self.store.save_consolidation(
                session_id, new_memory, data.records[count - 1][0]
            )
            if written and count == len(pending):
                return new_memory
            # Either more records wait, or another consolidation moved the marker: read again.

    async def integrate(self) -> IntegrationResult:
        """Every child's L2 -> the main session's synthesis + one insight per active child.

        Archived children's final memories inform the synthesis (so what an archived branch
        settled is not lost) but get no insight. Like consolidation, no lock is held while
        the model answers: the synthesis written is the one computed from what was read."""
        main_id = await self.store.main_session_id()
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
        result = await memory.integrate(self.memory_llm, prompt, children, synthesis, language)
        await self.store.save_integration(main_id, result.synthesis, result.insights)
        return result

    async def write_slot(self, session_id: str, key: str, content: str | None) -> None:
        """Replace a data slot (a prompt, the memory, the insight) under the session's lock, so
        an edit never lands in the middle of a turn or a consolidation of that session. REST's
        `PUT .../<slot>` and the admin both write through here. An archived session is
        read-only: SessionArchived, nothing written."""
        async with self.locks.hold(session_id):
            await self.store.write_slot(session_id, key, content, only_active=True)

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
