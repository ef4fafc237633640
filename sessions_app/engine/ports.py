"""The engine's ports: everything it needs from the outside world, as Protocols.

Implementations: `sessions_app.store.DjangoSpaceStore` (storage), `sessions_app.runtime`
(locks, background work), `engine.llm` adapters (LLM). Tests use in-memory fakes.
Every store method is one unit of work: it reads a consistent snapshot or writes in one
transaction, and never holds a transaction open across calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from .types import (
    Approval,
    Bootstrap,
    ChildMemory,
    CompressionCache,
    ConsolidationInput,
    EventPage,
    Insight,
    LLMResponse,
    LockedRead,
    LogEvent,
    Logged,
    MemoryJob,
    Message,
    NewChild,
    Prefetched,
    SaveResult,
    SessionMeta,
    SpacePrompts,
    StreamDelta,
    ToolCall,
    ToolSpec,
    TurnContext,
    TurnInfo,
    TurnWrite,
)

if TYPE_CHECKING:
    from .usage import CallUsage


class LLM(Protocol):
    """A chat model. Failures raise `errors.LLMError` (transient ones already retried)."""

    provider: str
    model: str
    max_context_tokens: int

    async def complete(
        self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = ()
    ) -> LLMResponse:
        """One call; tool-call arguments come back parsed (non-JSON arguments raise LLMError)."""
        ...

    def stream(
        self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[StreamDelta]:
        """The same call streamed: text deltas and tool-call pieces (id and name included)."""
        ...

    async def aclose(self) -> None: ...


class ToolSource(Protocol):
    """Tools that come from outside the process (MCP servers): listed per turn, connections
    kept between turns and closed with the agent."""

    async def tools(self) -> Sequence[Any]:
        """The Tools available now (a source that fails leaves its tools out)."""
        ...

    async def aclose(self) -> None: ...


class SpaceStore(Protocol):
    """Storage for ONE space. Every session id is checked to belong to that space:
    a session of another space is `SessionNotFound`, exactly like an unknown one."""

    async def get_session(self, session_id: str) -> SessionMeta:
        """The session's meta; raises SessionNotFound."""
        ...

    async def load_turn_context(
        self, session_id: str, *, history_after: int | None = 0
    ) -> TurnContext:
        """Meta, system prompt, insight (standard) or synthesis (main), the skills whitelist,
        the compression cache, the session's record_count and last_record_id, and its history
        in order: every record when `history_after` is 0, only the records with an id greater
        than `history_after` when it is positive (the caller holds the earlier ones), none when
        it is None. ONE read (one round trip on PostgreSQL); raises SessionNotFound."""
        ...

    def turn_context_read(self, session_id: str, *, history_after: int) -> LockedRead | None:
        """`load_turn_context` as a read a session lock may make with its own statement
        (`SessionLocks.hold(first_read=...)`), or None when this store has no such read."""
        ...

    async def save_call(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        consumed_insight: str | None = None,
        end_turn: bool = False,
        usage: Sequence[CallUsage] = (),
        turn: TurnWrite | None = None,
    ) -> SaveResult:
        """Persist one successful LLM call in ONE transaction: append `messages` in order
        (record_count += len(messages)); if `consumed_insight` is given, delete the insight slot
        (only if it still holds that text); if `end_turn`, turn_count += 1 and last_active_at =
        updated_at = now, and after commit announce the completed turn to listeners; record the
        metered `usage` calls like `record_usage`. With
        `turn`: the records carry its id, the turn row is created or updated (status, result),
        its log entries are written and the session's event_seq set; turns in
        `turn.abandoned` still running become failed and lose their records; at `end_turn`
        log entries past STELLO_EVENT_RETENTION are pruned. Returns the counts after the
        write. One round trip on PostgreSQL."""
        ...

    async def finish_turn(
        self, session_id: str, turn: TurnWrite, *, error: str | None, discard: bool
    ) -> None:
        """ONE transaction for a turn that ends without completing: the turn row with its
        status and `error`, its log entries, event_seq; with `discard`, the turn's records
        are removed (record_count follows)."""
        ...

    async def log_event(self, session_id: str, type_: str,
                        payload: Mapping[str, Any]) -> LogEvent:
        """Log one entry with the session's next seq, in one transaction. Only under the
        session's lock (a running turn numbers its own events)."""
        ...

    async def get_turn(self, session_id: str, turn_id: str) -> TurnInfo:
        """Raises SessionNotFound, then TurnNotFound (unknown, malformed, other session)."""
        ...

    async def list_turns(self, session_id: str, *, limit: int = 100) -> list[TurnInfo]:
        """The session's turns, newest first."""
        ...

    async def request_approvals(self, session_id: str, turn_id: str,
                                calls: Sequence[ToolCall], deadline: datetime) -> None:
        """ONE transaction: the turn (saved already) becomes `waiting`, with one pending
        approval per call."""
        ...

    async def list_approvals(self, session_id: str, turn_id: str) -> list[Approval]:
        """The turn's approvals in call order; SessionNotFound, then TurnNotFound."""
        ...

    async def decide_approval(self, session_id: str, turn_id: str, call_id: str, *,
                              approve: bool, reason: str | None) -> Approval:
        """Record one decision, once: SessionNotFound, TurnNotFound, TurnNotWaiting (the turn
        is not waiting), ApprovalNotFound (no such call), ApprovalAnswered (decided)."""
        ...

    async def expire_approvals(self, session_id: str, turn_id: str, reason: str) -> None:
        """Deny, with `reason`, every approval of the turn that is still pending."""
        ...

    async def claim_waiting_turn(self, session_id: str, turn_id: str) -> bool:
        """The waiting turn becomes `running` again; False when it was not waiting (so one
        resumer wins)."""
        ...

    async def read_events(self, session_id: str, since: int, *, limit: int = 1000) -> EventPage:
        """The logged events after `since` (coalesced deltas expanded), the session's
        event_seq and the oldest seq kept. ONE read."""
        ...

    async def create_child(self, child: NewChild, *, logged: Logged | None = None
                           ) -> SessionMeta:
        """Create a forked session in ONE transaction: the session row (role standard, status
        active, metadata.sourceSessionId), its topology node (parent = the root for "flat", the
        source for "tree"; sibling index unique even under concurrent forks), the system_prompt
        and scope slots, session_config, and the records. With `logged` (the caller holds the
        source's lock and runs no turn on it): also `session.forked` (`forked_payload`) in the
        source's log, numbered source.event_seq + 1 (which it becomes), in the same
        transaction; `logged` is told the entry after the commit."""
        ...

    async def archive(self, session_id: str, *, logged: Logged | None = None) -> SessionMeta:
        """Set status archived (idempotent) and return the fresh meta. The main session is
        never archived: its meta comes back unchanged (the caller refuses the request). With
        `logged`, a change also logs `session.archived` (payload {}) like `create_child`."""
        ...

    async def unarchive(self, session_id: str, *, logged: Logged | None = None) -> SessionMeta:
        """Set status active (idempotent) and return the fresh meta; with `logged`, a change
        logs `session.unarchived`."""
        ...

    async def read_slot(self, session_id: str, key: str) -> str | None: ...

    async def write_slot(
        self, session_id: str, key: str, content: str | None, *, only_active: bool = False
    ) -> None:
        """Upsert a slot; None deletes it. With `only_active`, an archived session raises
        SessionArchived and nothing is written (checked in the same statement)."""
        ...

    async def save_compression(self, session_id: str, cache: CompressionCache) -> None: ...

    async def space_prompts(self) -> SpacePrompts:
        """The space's prompt columns as they are now (prompts resolve at call time)."""
        ...

    async def main_session_id(self) -> str: ...

    async def collect_memories(self) -> list[ChildMemory]:
        """Every standard session of the space that has a non-empty memory slot, archived ones
        marked, oldest first."""
        ...

    async def load_consolidation_input(self, session_id: str) -> ConsolidationInput:
        """One read: the session, its memory and consolidate_prompt slots, the space's prompt
        and the records after `memory_covered_up_to`."""
        ...

    async def save_consolidation(self, session_id: str, memory: str, covered_up_to: int,
                                 *, usage: Sequence[CallUsage] = ()) -> bool:
        """ONE transaction: write the memory slot and the marker, but only if the stored marker
        is below `covered_up_to` (no newer consolidation covered more). True when written. The
        metered `usage` is recorded either way (like `record_usage`): the calls were made."""
        ...

    async def save_integration(
        self, main_session_id: str, synthesis: str, insights: Sequence[Insight],
        *, usage: Sequence[CallUsage] = (),
    ) -> None:
        """ONE transaction: the synthesis into the main memory slot, each insight into its
        session's insight slot, and the metered `usage` (like `record_usage`)."""
        ...

    async def record_usage(self, calls: Sequence[CallUsage]) -> None:
        """ONE transaction: a row per metered LLM call, charged to the space's owner, and the
        daily rollup of (day, user, space, session, key, provider, model) increased by them."""
        ...

    async def load_bootstrap(self, session_id: str) -> Bootstrap: ...

    async def core_data(self) -> Mapping[str, Any]: ...

    # -- conversations as data (message edits, branches) ----------------------------------------

    async def record_stretch(
        self, session_id: str, record_id: int | None = None
    ) -> list[tuple[int, Message]]:
        """(record id, message) of the stretch holding `record_id` (None: the newest record):
        from the nearest user message at or before it (else the first record) up to the next
        user message, excluded. Tool-call groups never cross a user message, so each group the
        stretch touches is whole. [] when the session has no such record."""
        ...

    async def history_through(self, session_id: str, record_id: int) -> list[tuple[int, Message]]:
        """Every record from the first up to the end of `record_id`'s stretch; [] when the
        session has no such record."""
        ...

    async def rewrite_records(
        self,
        session_id: str,
        remove: Sequence[int],
        messages: Sequence[Message] = (),
        *,
        consumed_insight: str | None = None,
        end_turn: bool = False,
        turns_removed: int = 0,
    ) -> SaveResult:
        """ONE transaction: delete the session's records listed in `remove`, append
        `messages` (record_count follows), turn_count -= `turns_removed` (never below 0) and,
        like save_call, `consumed_insight` and `end_turn`; updated_at = now. An archived
        session raises SessionArchived and nothing is written."""

    async def write_core(
        self, values: Mapping[str, Any], *, delete: Sequence[str] = (), clear: bool = False
    ) -> None:
        """Change the space's core data (L1) in one transaction: set every key of `values`,
        remove the keys in `delete`, and with `clear` every other key too."""
        ...


class SessionLocks(Protocol):
    """Serialises operations on one session, across every server process."""

    def hold(
        self, session_id: str, *, wait: bool = True,
        first_read: Callable[[], LockedRead | None] | None = None,
    ) -> AbstractAsyncContextManager[Prefetched | None]:
        """Hold the session until the block exits; raises SessionBusy when the lock could not
        be had within the configured timeout (at once when not `wait`). `first_read` (asked
        once the session is held in this process) names the operation's first read: a lock
        that can make it in the same round trip as its own statement, after the session is
        held, gives the block its result; otherwise (or if that read failed) the block gets
        None and reads as usual."""
        ...


class ApprovalWakeups(Protocol):
    """How a turn that waits for approvals learns that an answer arrived (in any process)."""

    def watch(self, turn_id: str) -> AbstractContextManager[Callable[[float], Awaitable[None]]]:
        """While the block runs, answers for `turn_id` are noticed; `woken(seconds)` returns
        at the next one or after `seconds`. Both raise TurnSuspended when the process stops
        (the turn stays waiting, stored)."""
        ...


class BackgroundJobs(Protocol):
    """Memory work that must not slow or fail the request that triggered it."""

    async def submit(self, job: MemoryJob) -> None:
        """Have `agent.run_job(job)` run soon, outside the request. A job not yet started
        absorbs later submits with the same key. Transient LLM failures are retried with
        backoff; where the deployment has a durable queue, the job survives the process."""
        ...


# A tool implementation: receives the parsed arguments and a ToolContext, returns any
# JSON-able value (or raises: the error goes back to the LLM, the turn goes on).
ToolFunction = Callable[..., Any]
