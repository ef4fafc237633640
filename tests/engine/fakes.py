"""In-memory fakes of the engine's ports, shared by the engine tests (and reusable elsewhere).

- InMemoryStore: a faithful SpaceStore for one space (root created with the space).
- ScriptedLLM: answers from a queue and records every call.
- AsyncioLocks: per-session asyncio.Lock with a timeout -> SessionBusy.
- InlineJobs: collects submitted jobs; tests run them with `await jobs.run_all()`.
- make_agent(): a SpaceAgent wired to fresh fakes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sessions_app.engine.agent import SpaceAgent
from sessions_app.engine.errors import (
    LLMError,
    SessionArchived,
    SessionBusy,
    SessionNotFound,
    TurnNotFound,
)
from sessions_app.engine.skills import Skill
from sessions_app.engine.tools import Tool
from sessions_app.engine.types import (
    Bootstrap,
    ChildMemory,
    CompressionCache,
    ConsolidationInput,
    EngineSettings,
    EventPage,
    Insight,
    LLMResponse,
    LogEvent,
    MemoryJob,
    Message,
    NewChild,
    SaveResult,
    SessionMeta,
    SpacePrompts,
    StreamDelta,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    TurnContext,
    TurnInfo,
    TurnWrite,
)
from sessions_app.engine.usage import CallUsage

# --------------------------------------------------------------------------------------------
# Store


@dataclass
class StoredSession:
    meta: SessionMeta
    slots: dict[str, str] = field(default_factory=dict)
    records: list[Message] = field(default_factory=list)
    record_ids: list[int] = field(default_factory=list)  # parallel to `records`
    record_turns: list[str | None] = field(default_factory=list)  # parallel to `records`
    memory_covered_up_to: int = 0
    event_seq: int = 0
    events: list[LogEvent] = field(default_factory=list)  # stored entries, by seq
    turns: dict[str, TurnInfo] = field(default_factory=dict)


@dataclass(frozen=True)
class SavedCall:
    """One save_call, as the store received it (for assertions)."""

    session_id: str
    messages: tuple[Message, ...]
    consumed_insight: str | None
    end_turn: bool


def _storable(value: Any) -> Any:
    """What a database store keeps of a value: NUL becomes U+FFFD (as `store.storable`)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    return value


def _stored_message(message: Message) -> Message:
    calls = json.dumps([c.to_json() for c in message.tool_calls])  # NUL is written \u0000
    if "\x00" not in message.content + (message.tool_call_id or "") and "\\u0000" not in calls:
        return message
    return Message(
        role=message.role,
        content=_storable(message.content),
        tool_calls=tuple(
            ToolCall(_storable(c.id), _storable(c.name), _storable(dict(c.input)))
            for c in message.tool_calls
        ),
        tool_call_id=_storable(message.tool_call_id) or None,
    )


def _json_object(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# (space_id, session_id, turn_count), called after a save_call that ended a turn
TurnListener = Callable[[str, str, int], None]


class InMemoryStore:
    """A SpaceStore over dicts, for one space whose root session exists from the start."""

    def __init__(
        self,
        *,
        space_id: str = "space-1",
        system_prompt: str | None = None,
        consolidate_prompt: str | None = None,
        integrate_prompt: str | None = None,
        core: Mapping[str, Any] | None = None,
        root_label: str = "Main",
        on_turn: TurnListener | None = None,
    ) -> None:
        self.space_id = space_id
        self.prompts = SpacePrompts(system_prompt, consolidate_prompt, integrate_prompt)
        self.core: dict[str, Any] = dict(core or {})
        self.sessions: dict[str, StoredSession] = {}
        self.saved_calls: list[SavedCall] = []
        self.usage: list[CallUsage] = []  # every metered call recorded, in order
        self.on_turn = on_turn
        self.event_retention = 0  # log entries kept per session (0: all)
        self._ids = itertools.count(1)
        self._record_ids = itertools.count(1)  # one sequence for the store, like a table's
        now = _now()
        self.root_id = self._new_id()
        root = SessionMeta(
            id=self.root_id,
            space_id=space_id,
            label=root_label,
            role="main",
            status="active",
            scope=None,
            metadata={},
            turn_count=0,
            created_at=now,
            updated_at=now,
            last_active_at=now,
        )
        self.sessions[root.id] = StoredSession(root)
        if system_prompt is not None:
            self.sessions[root.id].slots["system_prompt"] = system_prompt

    # -- test helpers (synchronous) ------------------------------------------------------------

    def _new_id(self) -> str:
        return f"s{next(self._ids)}"

    def _get(self, session_id: str) -> StoredSession:
        stored = self.sessions.get(session_id)
        if stored is None:
            raise SessionNotFound()
        return stored

    def meta(self, session_id: str) -> SessionMeta:
        return self._get(session_id).meta

    def records(self, session_id: str) -> list[Message]:
        return list(self._get(session_id).records)

    def slot(self, session_id: str, key: str) -> str | None:
        return self._get(session_id).slots.get(key)

    def set_slot(self, session_id: str, key: str, content: str | None) -> None:
        slots = self._get(session_id).slots
        if content is None:
            slots.pop(key, None)
        else:
            slots[key] = _storable(content)

    def add_records(self, session_id: str, *messages: Message, turn_id: str | None = None) -> None:
        stored = self._get(session_id)
        for message in messages:
            stored.records.append(_stored_message(message))
            stored.record_ids.append(next(self._record_ids))
            stored.record_turns.append(turn_id)

    def _drop_turn_records(self, stored: StoredSession, turn_ids: set[str]) -> None:
        keep = [i for i, t in enumerate(stored.record_turns) if t not in turn_ids]
        stored.records = [stored.records[i] for i in keep]
        stored.record_ids = [stored.record_ids[i] for i in keep]
        stored.record_turns = [stored.record_turns[i] for i in keep]

    def _write_turn(self, stored: StoredSession, turn: TurnWrite, *, error: str | None = None,
                    result: Any = None) -> None:
        now = _now()
        old = stored.turns.get(turn.turn_id)
        stored.turns[turn.turn_id] = TurnInfo(
            id=turn.turn_id, session_id=stored.meta.id, status=turn.status,
            input=old.input if old else _storable(turn.input), result=result, error=error,
            created_at=old.created_at if old else now, updated_at=now)
        stored.events.extend(turn.events)
        stored.event_seq = max(stored.event_seq, turn.event_seq)

    def replace_records(self, session_id: str, messages: Sequence[Message]) -> None:
        """Rewrite a session's history behind the store's back (new records, new ids)."""
        stored = self._get(session_id)
        stored.records.clear()
        stored.record_ids.clear()
        stored.record_turns.clear()
        self.add_records(session_id, *messages)

    def children_of(self, session_id: str) -> list[SessionMeta]:
        kids = [s.meta for s in self.sessions.values() if s.meta.parent_id == session_id]
        return sorted(kids, key=lambda m: m.index)

    def compression_of(self, session_id: str) -> CompressionCache | None:
        cache = _json_object(self._get(session_id).slots.get("compression"))
        return CompressionCache(**cache) if cache else None

    def _update(self, session_id: str, **changes: Any) -> SessionMeta:
        stored = self._get(session_id)
        stored.meta = replace(stored.meta, **changes)
        return stored.meta

    # -- SpaceStore ------------------------------------------------------------------------------

    async def get_session(self, session_id: str) -> SessionMeta:
        return self.meta(session_id)

    def turn_context_read(self, session_id: str, *, history_after: int) -> None:
        return None  # the fake locks make no reads

    async def load_turn_context(
        self, session_id: str, *, history_after: int | None = 0
    ) -> TurnContext:
        stored = self._get(session_id)
        is_main = stored.meta.role == "main"
        skills = _json_object(stored.slots.get("session_config")).get("skills")
        if history_after is None:
            history: tuple[Message, ...] = ()
        else:
            history = tuple(
                m for i, m in zip(stored.record_ids, stored.records, strict=True)
                if i > history_after
            )
        return TurnContext(
            session=stored.meta,
            system_prompt=stored.slots.get("system_prompt"),
            insight=None if is_main else stored.slots.get("insight"),
            synthesis=stored.slots.get("memory") if is_main else None,
            history=history,
            skills=tuple(skills) if isinstance(skills, list) else None,
            config=_json_object(stored.slots.get("session_config")),
            compression=self.compression_of(session_id),
            history_after=history_after,
            record_count=len(stored.records),
            last_record_id=stored.record_ids[-1] if stored.record_ids else 0,
            event_seq=stored.event_seq,
            running_turns=tuple(t.id for t in stored.turns.values() if t.status == "running"),
        )

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
        stored = self._get(session_id)
        self.usage.extend(usage)
        self.saved_calls.append(SavedCall(session_id, tuple(messages), consumed_insight, end_turn))
        if turn is not None:
            stale = {t for t in turn.abandoned
                     if t in stored.turns and stored.turns[t].status == "running"}
            for t in stale:
                stored.turns[t] = replace(stored.turns[t], status="failed",
                                          error="the server process running the turn stopped")
            self._drop_turn_records(stored, stale)
            self._write_turn(stored, turn, result=_storable(dict(turn.result))
                             if turn.result is not None else None)
            if end_turn and self.event_retention:
                below = turn.event_seq - self.event_retention
                stored.events = [e for e in stored.events if e.seq > below]
        self.add_records(session_id, *messages, turn_id=turn.turn_id if turn else None)
        if consumed_insight is not None and stored.slots.get("insight") == consumed_insight:
            del stored.slots["insight"]
        if end_turn:
            now = _now()
            self._update(
                session_id,
                turn_count=stored.meta.turn_count + 1,
                last_active_at=now,
                updated_at=now,
            )
        result = SaveResult(
            turn_count=stored.meta.turn_count,
            record_count=len(stored.records),
            last_record_id=stored.record_ids[-1] if stored.record_ids else 0,
        )
        if end_turn and self.on_turn is not None:
            self.on_turn(self.space_id, session_id, result.turn_count)
        return result

    async def finish_turn(
        self, session_id: str, turn: TurnWrite, *, error: str | None, discard: bool
    ) -> None:
        stored = self._get(session_id)
        if discard:
            self._drop_turn_records(stored, {turn.turn_id})
        self._write_turn(stored, turn, error=_storable(error))

    async def get_turn(self, session_id: str, turn_id: str) -> TurnInfo:
        turn = self._get(session_id).turns.get(str(turn_id))
        if turn is None:
            raise TurnNotFound()
        return turn

    async def list_turns(self, session_id: str, *, limit: int = 100) -> list[TurnInfo]:
        turns = list(self._get(session_id).turns.values())
        return sorted(turns, key=lambda t: t.created_at, reverse=True)[:limit]

    async def read_events(self, session_id: str, since: int, *, limit: int = 1000) -> EventPage:
        stored = self._get(session_id)
        entries = sorted((e for e in stored.events if e.end > since), key=lambda e: e.seq)
        first = min((e.seq for e in stored.events), default=0)
        events = [x for e in entries[:limit] for x in e.expand() if x.seq > since]
        return EventPage(tuple(events), stored.event_seq, first)

    async def log_event(self, session_id: str, type_: str, payload) -> LogEvent:
        stored = self._get(session_id)
        stored.event_seq += 1
        event = LogEvent(stored.event_seq, type_, dict(payload))
        stored.events.append(event)
        return event

    def _log(self, session_id: str, kind: str, payload: dict, logged) -> None:
        if logged is None:
            return
        stored = self._get(session_id)
        stored.event_seq += 1
        event = LogEvent(stored.event_seq, kind, payload)
        stored.events.append(event)
        logged(event)

    async def create_child(self, child: NewChild, *, logged=None) -> SessionMeta:
        source = self.meta(child.source_id)
        parent = self.meta(self.root_id) if child.placement == "flat" else source
        now = _now()
        label, scope = _storable(child.label), _storable(child.scope)
        meta = SessionMeta(
            id=self._new_id(),
            space_id=self.space_id,
            label=label,
            role="standard",
            status="active",
            scope=scope,
            metadata={"sourceSessionId": source.id} | (
                {} if child.from_message is None else {"sourceMessageId": child.from_message}),
            turn_count=0,
            created_at=now,
            updated_at=now,
            last_active_at=now,
            parent_id=parent.id,
            source_session_id=source.id,
            depth=parent.depth + 1,
            index=len(self.children_of(parent.id)),
        )
        stored = StoredSession(meta)
        self.sessions[meta.id] = stored
        self.add_records(meta.id, *child.records)
        if child.system_prompt is not None:
            stored.slots["system_prompt"] = _storable(child.system_prompt)
        if child.session_config:
            stored.slots["session_config"] = json.dumps(_storable(dict(child.session_config)))
        self._log(source.id, "session.forked",
                  {"child": {"id": meta.id, "label": label, "scope": scope}}, logged)
        return meta

    async def archive(self, session_id: str, *, logged=None) -> SessionMeta:
        meta = self.meta(session_id)
        if meta.status == "archived" or meta.role == "main":
            return meta  # idempotent; the main session is never archived
        meta = self._update(session_id, status="archived", updated_at=_now())
        self._log(session_id, "session.archived", {}, logged)
        return meta

    async def unarchive(self, session_id: str, *, logged=None) -> SessionMeta:
        if self.meta(session_id).status == "active":
            return self.meta(session_id)
        meta = self._update(session_id, status="active", updated_at=_now())
        self._log(session_id, "session.unarchived", {}, logged)
        return meta

    async def read_slot(self, session_id: str, key: str) -> str | None:
        return self.slot(session_id, key)

    async def write_slot(
        self, session_id: str, key: str, content: str | None, *, only_active: bool = False
    ) -> None:
        if only_active and self.meta(session_id).status != "active":
            raise SessionArchived(session_id)
        self.set_slot(session_id, key, content)

    async def save_compression(self, session_id: str, cache: CompressionCache) -> None:
        payload = {"covered": cache.covered, "digest": cache.digest, "summary": cache.summary}
        self.set_slot(session_id, "compression", json.dumps(payload))

    async def space_prompts(self) -> SpacePrompts:
        return self.prompts

    async def main_session_id(self) -> str:
        return self.root_id

    async def collect_memories(self) -> list[ChildMemory]:
        return [
            ChildMemory(s.meta.id, s.meta.label, s.slots["memory"],
                        archived=s.meta.status == "archived")
            for s in self.sessions.values()
            if s.meta.role == "standard" and s.slots.get("memory")
        ]

    async def load_consolidation_input(self, session_id: str) -> ConsolidationInput:
        stored = self._get(session_id)
        covered = stored.memory_covered_up_to
        return ConsolidationInput(
            session=stored.meta,
            memory=stored.slots.get("memory"),
            session_prompt=stored.slots.get("consolidate_prompt"),
            space_prompt=self.prompts.consolidate_prompt,
            covered_up_to=covered,
            records=tuple(
                (rid, m) for rid, m in zip(stored.record_ids, stored.records, strict=True)
                if rid > covered
            ),
        )

    async def record_usage(self, calls: Sequence[CallUsage]) -> None:
        self.usage.extend(calls)

    async def save_consolidation(self, session_id: str, memory: str, covered_up_to: int,
                                 *, usage: Sequence[CallUsage] = ()) -> bool:
        stored = self._get(session_id)
        self.usage.extend(usage)
        if stored.memory_covered_up_to >= covered_up_to:
            return False
        stored.memory_covered_up_to = covered_up_to
        self.set_slot(session_id, "memory", memory)
        return True

    async def save_integration(
        self, main_session_id: str, synthesis: str, insights: Sequence[Insight],
        *, usage: Sequence[CallUsage] = (),
    ) -> None:
        self.set_slot(main_session_id, "memory", synthesis)
        self.usage.extend(usage)
        for insight in insights:
            known = self.sessions.get(insight.session_id)
            if known is not None and known.meta.status == "active":  # like the stores
                self.set_slot(insight.session_id, "insight", insight.content)

    async def load_bootstrap(self, session_id: str) -> Bootstrap:
        stored = self._get(session_id)
        memories: list[str] = []
        parent_id = stored.meta.parent_id
        while parent_id is not None:  # nearest ancestor first
            parent = self._get(parent_id)
            if parent.slots.get("memory"):
                memories.append(parent.slots["memory"])
            parent_id = parent.meta.parent_id
        return Bootstrap(
            core=dict(self.core),
            memories=tuple(memories),
            current_memory=stored.slots.get("memory"),
            scope=stored.meta.scope,
            session=stored.meta,
        )

    async def core_data(self) -> Mapping[str, Any]:
        return dict(self.core)

    async def record_stretch(
        self, session_id: str, record_id: int | None = None
    ) -> list[tuple[int, Message]]:
        return self._stretch(session_id, record_id, through=False)

    async def history_through(self, session_id: str, record_id: int) -> list[tuple[int, Message]]:
        return self._stretch(session_id, record_id, through=True)

    def _stretch(
        self, session_id: str, record_id: int | None, *, through: bool
    ) -> list[tuple[int, Message]]:
        stored = self._get(session_id)
        pairs = list(zip(stored.record_ids, stored.records, strict=True))
        ids = [rid for rid, _ in pairs]
        if not pairs or (record_id is not None and record_id not in ids):
            return []
        at = ids.index(record_id) if record_id is not None else len(pairs) - 1
        start = 0
        if not through:
            start = max((i for i in range(at + 1) if pairs[i][1].role == "user"), default=0)
        end = next((i for i in range(at + 1, len(pairs)) if pairs[i][1].role == "user"),
                   len(pairs))
        return pairs[start:end]

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
        stored = self._get(session_id)
        if stored.meta.status != "active":
            raise SessionArchived(session_id)
        kept = [(i, m, t) for i, m, t in zip(stored.record_ids, stored.records,
                                               stored.record_turns, strict=True)
                if i not in set(remove)]
        stored.record_ids[:] = [i for i, _, _ in kept]
        stored.records[:] = [m for _, m, _ in kept]
        stored.record_turns[:] = [t for _, _, t in kept]
        self.add_records(session_id, *messages)
        if consumed_insight is not None and stored.slots.get("insight") == consumed_insight:
            del stored.slots["insight"]
        now = _now()
        turns = max(stored.meta.turn_count - turns_removed, 0) + (1 if end_turn else 0)
        changes: dict[str, Any] = {"turn_count": turns, "updated_at": now}
        if end_turn:
            changes["last_active_at"] = now
        self._update(session_id, **changes)
        result = SaveResult(
            turn_count=turns, record_count=len(stored.records),
            last_record_id=stored.record_ids[-1] if stored.record_ids else 0,
        )
        if end_turn and self.on_turn is not None:
            self.on_turn(self.space_id, session_id, result.turn_count)
        return result

    async def write_core(
        self, values: Mapping[str, Any], *, delete: Sequence[str] = (), clear: bool = False
    ) -> None:
        if clear:
            self.core.clear()
        for path in delete:
            self.core.pop(path, None)
        self.core.update(_storable(dict(values)))


def _now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------------------------
# LLM


@dataclass(frozen=True)
class LLMCall:
    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...]
    streamed: bool

    @property
    def tool_names(self) -> list[str]:
        return [t.name for t in self.tools]


# A scripted step: a response, plain text (a response with that content), the exact deltas of a
# streamed call, or an exception to raise.
Step = LLMResponse | str | Sequence[StreamDelta] | Exception


def reply(content: str | None = None, *calls: ToolCall, usage: Any = None) -> LLMResponse:
    return LLMResponse(content=content, tool_calls=tuple(calls), usage=usage)


def call(tool_name: str, call_id: str = "c1", /, **args: Any) -> ToolCall:
    return ToolCall(id=call_id, name=tool_name, input=args)


class ScriptedLLM:
    """An LLM that plays back scripted steps and records every call it gets."""

    provider = "scripted"
    model = "scripted-1"

    def __init__(self, *steps: Step, max_context_tokens: int = 100_000) -> None:
        self.max_context_tokens = max_context_tokens
        self._steps: deque[Step] = deque(steps)
        self.calls: list[LLMCall] = []
        self.closed = False

    def push(self, *steps: Step) -> None:
        self._steps.extend(steps)

    def fail_next(self, message: str = "upstream failed") -> None:
        """The next call raises LLMError (before any scripted step is used)."""
        self._steps.appendleft(LLMError(message))

    @property
    def remaining(self) -> int:
        return len(self._steps)

    def _next(self, messages: Sequence[Message], tools: Sequence[ToolSpec], streamed: bool) -> Step:
        self.calls.append(LLMCall(tuple(messages), tuple(tools), streamed))
        if not self._steps:
            raise AssertionError("ScriptedLLM: no scripted response left")
        step = self._steps.popleft()
        if isinstance(step, Exception):
            raise step
        return step

    async def complete(
        self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = ()
    ) -> LLMResponse:
        step = self._next(messages, tools, streamed=False)
        if isinstance(step, str):
            return LLMResponse(content=step)
        if isinstance(step, LLMResponse):
            return step
        raise AssertionError("ScriptedLLM: raw stream deltas scripted for a complete() call")

    async def stream(
        self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[StreamDelta]:
        step = self._next(messages, tools, streamed=True)
        if isinstance(step, str):
            step = LLMResponse(content=step)
        deltas = to_deltas(step) if isinstance(step, LLMResponse) else list(step)
        for delta in deltas:
            await asyncio.sleep(0)
            yield delta

    async def aclose(self) -> None:
        self.closed = True


def to_deltas(response: LLMResponse) -> list[StreamDelta]:
    """How a provider would stream `response`: an empty opening delta (like OpenAI's role chunk),
    the text word by word, each tool call as a head piece then its arguments in two halves,
    and the usage on a last delta."""
    deltas = [StreamDelta()]
    deltas += [StreamDelta(text=word) for word in re.findall(r"\S+\s*|\s+", response.content or "")]
    for index, tool_call in enumerate(response.tool_calls):
        arguments = json.dumps(dict(tool_call.input))
        half = len(arguments) // 2
        deltas.append(
            StreamDelta(tool_calls=(ToolCallDelta(index, id=tool_call.id, name=tool_call.name),))
        )
        deltas.append(StreamDelta(tool_calls=(ToolCallDelta(index, arguments=arguments[:half]),)))
        deltas.append(StreamDelta(tool_calls=(ToolCallDelta(index, arguments=arguments[half:]),)))
    if response.usage is not None:
        deltas.append(StreamDelta(usage=response.usage))
    return deltas


# --------------------------------------------------------------------------------------------
# Locks and background jobs


class AsyncioLocks:
    """Per-session asyncio.Lock; waiting longer than `timeout` seconds raises SessionBusy."""

    def __init__(self, timeout: float = 1.0) -> None:
        self.timeout = timeout
        self._locks: dict[str, asyncio.Lock] = {}

    def is_held(self, session_id: str) -> bool:
        lock = self._locks.get(session_id)
        return lock is not None and lock.locked()

    @asynccontextmanager
    async def hold(self, session_id: str, *, wait: bool = True,
                   first_read: Any = None) -> AsyncIterator[None]:
        lock = self._locks.setdefault(session_id, asyncio.Lock())
        if not wait and lock.locked():
            raise SessionBusy()
        try:
            await asyncio.wait_for(lock.acquire(), self.timeout)
        except TimeoutError:
            raise SessionBusy() from None
        try:
            yield
        finally:
            lock.release()


class InlineJobs:
    """Collects submitted jobs (no coalescing: that is the real runners' job); `run_all` runs
    them through the agent (`run`, set by make_agent)."""

    def __init__(self) -> None:
        self.pending: deque[MemoryJob] = deque()
        self.submitted: list[str] = []  # every key ever submitted, in order
        self.errors: list[tuple[str, BaseException]] = []
        self.run: Callable[[MemoryJob], Awaitable[Any]] | None = None

    async def submit(self, job: MemoryJob) -> None:
        self.submitted.append(job.key)
        self.pending.append(job)

    @property
    def pending_keys(self) -> list[str]:
        return [job.key for job in self.pending]

    async def run_all(self, *, expect_errors: bool = False) -> list[str]:
        """Run pending jobs, including the ones they submit, until none is left; returns the
        keys run. A failing job is recorded in `errors`; unless `expect_errors`, the first
        failure is raised once everything ran."""
        assert self.run is not None
        ran: list[str] = []
        while self.pending:
            job = self.pending.popleft()
            ran.append(job.key)
            try:
                await self.run(job)
            except Exception as exc:
                self.errors.append((job.key, exc))
        if self.errors and not expect_errors:
            raise self.errors[0][1]
        return ran


# --------------------------------------------------------------------------------------------
# Agent


@dataclass
class Harness:
    agent: SpaceAgent
    store: InMemoryStore
    llm: ScriptedLLM
    memory_llm: ScriptedLLM
    locks: AsyncioLocks
    jobs: InlineJobs

    @property
    def root_id(self) -> str:
        return self.store.root_id

    async def child(self, label: str = "Child", source_id: str | None = None, **raw: Any) -> str:
        """Fork a child (from the root by default) and return its id."""
        from sessions_app.engine.fork import parse_fork_options

        options = parse_fork_options({"label": label, **raw})
        meta = await self.agent.fork(source_id or self.store.root_id, options)
        return meta.id


def make_agent(
    *,
    store: InMemoryStore | None = None,
    llm: ScriptedLLM | None = None,
    memory_llm: ScriptedLLM | None = None,
    tools: Sequence[Tool] = (),
    skills: Mapping[str, Skill] | None = None,
    settings: EngineSettings | None = None,
    **setting_overrides: Any,
) -> Harness:
    """A SpaceAgent over fresh fakes; keyword overrides change EngineSettings fields."""
    store = store or InMemoryStore()
    llm = llm or ScriptedLLM()
    memory_llm = memory_llm or ScriptedLLM()
    locks, jobs = AsyncioLocks(), InlineJobs()
    settings = replace(settings or EngineSettings(), **setting_overrides)
    agent = SpaceAgent(
        space_id=store.space_id,
        store=store,
        llm=llm,
        memory_llm=memory_llm,
        tools=tools,
        skills=skills or {},
        locks=locks,
        jobs=jobs,
        settings=settings,
    )
    jobs.run = agent.run_job
    return Harness(agent, store, llm, memory_llm, locks, jobs)
