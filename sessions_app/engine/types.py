"""Value types shared by the engine, its ports and its adapters (immutable dataclasses)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
SessionRole = Literal["main", "standard"]
SessionStatus = Literal["active", "archived"]


def dumps_compact(value: Any) -> str:
    """JSON text the way JavaScript's JSON.stringify writes it (no spaces, UTF-8 kept)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool invocation requested by the LLM; `input` is the parsed JSON arguments."""

    id: str
    name: str
    input: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "input": dict(self.input)}


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message: an L3 record or a message assembled into a prompt."""

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one call as the provider reported them. `prompt_tokens` counts every input
    token, cached ones included; `cached_tokens` is the part served from the provider's cache."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class LLMResponse:
    """The result of one non-streaming LLM call."""

    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call; pieces with the same `index` belong together."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""  # a fragment of the JSON arguments text


# PER_CHUNK: the three types made for every streamed chunk (StreamDelta, LogEvent, StreamChunk)
# are not `frozen`: a frozen dataclass sets each field through `object.__setattr__`, three
# times the cost of a plain one, per chunk. Treat them as values all the same: nothing
# changes one once made.
@dataclass(slots=True)  # not frozen: made per streamed chunk (see PER_CHUNK)
class StreamDelta:
    """One event of a streamed LLM call: some text and/or tool-call pieces."""

    text: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """What the LLM is told about a tool."""

    name: str
    description: str
    input_schema: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class SessionMeta:
    """A session row with its topology placement (the store's view of one session)."""

    id: str
    space_id: str
    label: str
    role: SessionRole
    status: SessionStatus
    scope: str | None
    metadata: Mapping[str, Any]
    turn_count: int
    created_at: datetime
    updated_at: datetime
    last_active_at: datetime
    parent_id: str | None = None
    source_session_id: str | None = None
    depth: int = 0
    index: int = 0
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CompressionCache:
    """A stored summary of the first `covered` history messages (identified by `digest`)."""

    covered: int
    digest: str
    summary: str


@dataclass(frozen=True, slots=True)
class TurnContext:
    """Everything a turn needs from storage, read in one unit of work."""

    session: SessionMeta
    system_prompt: str | None
    insight: str | None  # standard sessions only; None for main
    synthesis: str | None  # main session only (its `memory` slot); None for standard
    history: tuple[Message, ...]  # the records with id > history_after, in order
    skills: tuple[str, ...] | None = None  # per-session whitelist; None = all skills
    config: Mapping[str, Any] = field(default_factory=dict)  # the frozen session_config
    compression: CompressionCache | None = None
    # Where `history` starts: 0 = it is the whole history; N = only the records after record
    # id N (the caller has the earlier ones); None = no history was read (fork, no context).
    history_after: int | None = 0
    record_count: int = 0  # the session's records in all, whatever `history` holds
    last_record_id: int = 0  # the id of the session's newest record (0: none yet)
    event_seq: int = 0  # the seq of the session's last logged event
    # Turns still marked running: under the session's lock, ones a dead process left behind.
    running_turns: tuple[str, ...] = ()
    # Turns paused until their tool calls are approved (see engine/approval.py).
    waiting_turns: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LockedRead:
    """A store read that a session lock may make in the same round trip as its own statement,
    right after the session is held (`SessionLocks.hold(first_read=...)`): the store's own
    statement and parameters (opaque to the engine), and how its row becomes the value."""

    statement: str
    params: Mapping[str, Any]
    decode: Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Prefetched:
    """What a session lock read with its statement: `value()` decodes it, raising what the
    store's own read would (SessionNotFound, say)."""

    read: LockedRead
    row: Any

    def value(self) -> Any:
        return self.read.decode(self.row)


@dataclass(frozen=True, slots=True)
class SaveResult:
    """What `SpaceStore.save_call` wrote: the session's turn count, its record count and the id
    of its newest record, all after the write."""

    turn_count: int
    record_count: int
    last_record_id: int


@dataclass(frozen=True, slots=True)
class ForkOptions:
    """Validated options of a fork, from REST, WebSocket or the built-in tool."""

    label: str
    scope: str | None = None
    system_prompt: str | None = None  # None = inherit the source's system prompt
    prompt: str | None = None  # optional opening assistant message
    context: Literal["none", "inherit", "compress"] = "none"
    skills: tuple[str, ...] | None = None
    from_message: int | None = None  # branch: copy the history up to this record id
    config: Mapping[str, Any] | None = None  # agent settings for the child (agent_config)


@dataclass(frozen=True, slots=True)
class NewChild:
    """What the store must create for a fork, all in one transaction."""

    source_id: str
    label: str
    scope: str | None
    system_prompt: str | None
    records: tuple[Message, ...]  # inherited history, then the opening message if any
    placement: Literal["flat", "tree"]
    session_config: Mapping[str, Any] | None = None  # frozen per-session config, if any
    from_message: int | None = None  # the source's record the history was copied up to


@dataclass(frozen=True, slots=True)
class ChildMemory:
    """One input of integration: a standard session's L2. An archived child's final memory
    still informs the synthesis, but gets no insight."""

    session_id: str
    label: str
    memory: str
    archived: bool = False


@dataclass(frozen=True, slots=True)
class ConsolidationInput:
    """Everything one consolidation reads, in one unit of work: the session, its memory and
    prompts, and the records its memory does not cover yet (with their ids, oldest first)."""

    session: SessionMeta
    memory: str | None
    session_prompt: str | None
    space_prompt: str | None
    covered_up_to: int  # id of the newest record the memory covers (0: none)
    records: tuple[tuple[int, Message], ...]


@dataclass(frozen=True, slots=True)
class MemoryJob:
    """One piece of background memory work, described by plain values so it can be queued."""

    kind: Literal["consolidate", "integrate"]
    session_id: str | None = None  # the session to consolidate
    allow_archived: bool = False  # consolidate a session that is archived (its final L2)

    @property
    def key(self) -> str:
        """Jobs with one key do the same work: a queued one absorbs later submits."""
        return f"consolidate:{self.session_id}" if self.kind == "consolidate" else "integrate"


@dataclass(frozen=True, slots=True)
class Insight:
    session_id: str
    content: str


@dataclass(frozen=True, slots=True)
class IntegrationResult:
    synthesis: str
    insights: tuple[Insight, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "synthesis": self.synthesis,
            "insights": [{"sessionId": i.session_id, "content": i.content} for i in self.insights],
        }


@dataclass(frozen=True, slots=True)
class SpacePrompts:
    """The space-level prompt columns, read at call time."""

    system_prompt: str | None
    consolidate_prompt: str | None
    integrate_prompt: str | None


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """What a WebSocket client receives on `session.entered`."""

    core: Mapping[str, Any]
    memories: tuple[str, ...]  # ancestors' memories, nearest first
    current_memory: str | None
    scope: str | None
    session: SessionMeta


@dataclass(frozen=True, slots=True)
class TurnResult:
    """EngineTurnResult: exactly the four keys of the contract."""

    final_content: str | None
    tool_round_count: int
    tool_calls_executed: int
    raw_response: str  # JSON text of the last LLM call: content, toolCalls, usage when given
    # An added field: what every LLM call of this turn cost (`usage.TurnUsage.to_json()`).
    usage: Mapping[str, Any] | None = field(default=None, compare=False)

    # The turn as a resource (an added top-level `turnId`) and the seq of its `turn.completed`
    # event (not in the JSON); neither is part of what the turn answered, so not compared.
    turn_id: str | None = field(default=None, compare=False)
    seq: int = field(default=0, compare=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "turn": {
                "finalContent": self.final_content,
                "toolRoundCount": self.tool_round_count,
                "toolCallsExecuted": self.tool_calls_executed,
                "rawResponse": self.raw_response,
            }
        }
        if self.usage is not None:
            out["turn"]["usage"] = dict(self.usage)
        if self.turn_id is not None:
            out["turnId"] = self.turn_id
        return out


TurnStatus = Literal["running", "waiting", "completed", "cancelled", "failed"]


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


@dataclass(frozen=True, slots=True)
class Approval:
    """A tool call of a waiting turn and its decision (None: not decided yet)."""

    call_id: str
    name: str
    arguments: Mapping[str, Any]
    decision: Literal["approved", "denied"] | None
    reason: str | None
    deadline: datetime
    created_at: datetime
    decided_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {"callId": self.call_id, "name": self.name, "arguments": dict(self.arguments),
                "status": self.decision or "pending", "reason": self.reason,
                "deadline": iso(self.deadline), "createdAt": iso(self.created_at),
                "decidedAt": iso(self.decided_at)}


@dataclass(slots=True)  # not frozen: made per streamed chunk (see PER_CHUNK)
class LogEvent:
    """One entry of a session's event log. `seq` numbers the session's events one by one;
    a coalesced `stream.delta` entry holds the chunks of one round, numbered `seq` ..
    `last_seq` (payload `chunks`); every other entry has `last_seq == seq`."""

    seq: int
    type: str
    payload: Mapping[str, Any]
    last_seq: int = 0

    @property
    def end(self) -> int:
        return self.last_seq or self.seq

    def expand(self) -> list[LogEvent]:
        """The single events a client sees (a coalesced entry gives one per chunk, a packed
        entry its entries' events)."""
        if self.type == PACKED:
            return [event for seq, last_seq, type_, payload in self.payload["entries"]
                    for event in LogEvent(seq, type_, payload, last_seq).expand()]
        chunks = self.payload.get("chunks") if self.type == "stream.delta" else None
        if chunks is None:
            return [self]
        base = {k: v for k, v in self.payload.items() if k != "chunks"}
        return [LogEvent(self.seq + i, "stream.delta", {**base, "chunk": chunk})
                for i, chunk in enumerate(chunks)]

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "seq": self.seq, **self.payload}


# One stored entry holding several entries of one write (a turn's round: its start, its deltas
# and its end): one row to insert and index instead of three or more. Payload `entries`: the
# entries as [seq, last_seq, type, payload]; the entry is numbered from the first one's seq to
# the last one's end.
PACKED = "log.packed"


def packed(events: Sequence[LogEvent]) -> list[LogEvent]:
    """`events` (consecutive, in order) as the entries to store: one packed entry for several."""
    if len(events) < 2:
        return list(events)
    return [LogEvent(events[0].seq, PACKED, {"entries": [
        [e.seq, e.end, e.type, dict(e.payload)] for e in events]}, events[-1].end)]


# Log entries written with the session change they tell of (not by a turn).
SESSION_FORKED = "session.forked"
SESSION_ARCHIVED = "session.archived"
SESSION_UNARCHIVED = "session.unarchived"


def forked_payload(child_id: str, label: str, scope: str | None) -> dict[str, Any]:
    """`session.forked`'s payload, logged on the source: enough of the child to fetch it."""
    return {"child": {"id": child_id, "label": label, "scope": scope}}


# `logged=` of the store's session writes: told the log entry the write made, once committed.
Logged = Callable[[LogEvent], None]


@dataclass(frozen=True, slots=True)
class TurnWrite:
    """What a `save_call` of a turn also writes, in the same transaction: the turn row (created
    by the first call, then updated), the log entries of the round, and the session's new
    event counter (`event_seq`, the seq of the last event written)."""

    turn_id: str
    input: str
    status: TurnStatus = "running"
    result: Mapping[str, Any] | None = None
    events: tuple[LogEvent, ...] = ()
    event_seq: int = 0
    # Turns a dead process left running: marked failed, their records removed (first call).
    abandoned: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TurnInfo:
    """A turn as a resource."""

    id: str
    session_id: str
    status: TurnStatus
    input: str
    result: Mapping[str, Any] | None
    error: str | None
    created_at: datetime
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "turnId": self.id, "sessionId": self.session_id, "status": self.status,
            "input": self.input, "result": self.result, "error": self.error,
            "createdAt": self.created_at.isoformat().replace("+00:00", "Z"),
            "updatedAt": self.updated_at.isoformat().replace("+00:00", "Z"),
        }


@dataclass(frozen=True, slots=True)
class EventPage:
    """Events after a seq: `events` (expanded, in order), `current` (the session's last seq
    persisted) and `first` (the oldest seq still kept; 0 when none is kept)."""

    events: tuple[LogEvent, ...]
    current: int
    first: int


@dataclass(slots=True)  # not frozen: made per streamed chunk (see PER_CHUNK)
class StreamChunk:
    """A non-empty piece of assistant text streamed during round `round` (0 = first call)."""

    text: str
    round: int = 0
    seq: int = field(default=0, compare=False)  # its seq in the session's event log


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Engine behaviour knobs (from STELLO_* settings)."""

    max_tool_rounds: int = 5
    max_forks_per_turn: int = 3  # sessions `stello_create_session` may create in one turn
    max_parallel_tools: int = 8  # tool calls of one round running at the same time
    approval_timeout_seconds: float = 600.0  # a call's approval; then it is denied
    core_max_value_bytes: int = 16384  # one core memory value (compact JSON, UTF-8)
    core_max_total_bytes: int = 65536  # the whole core memory of a space
    core_in_prompt: bool = False  # every prompt carries the space's core memory
    core_tools: bool = False  # the agent may read and update the core memory
    session_identity: bool = False  # child sessions get a <session_identity> system note
    fork_strategy: Literal["flat", "tree"] = "flat"
    consolidate_every_n_turns: int = 3
    integrate_after_consolidate: bool = True
    consolidate_on_leave: bool = False
    consolidate_on_archive: bool = True
    memory_language: str = "English"
    extra: Mapping[str, Any] = field(default_factory=dict)
