"""One user turn: the LLM / tool loop and its streamed form.

Every successful LLM call is persisted at once with ONE `store.save_call`: the first call saves
the user message and the assistant reply, a continuation call the tool results and the reply.
The last call (no tool calls) ends the turn. A failed call saves nothing and raises.
Tool results reach the next call as typed `tool` messages, never as JSON typed into user text.

The stored history stays well-formed: every stored tool call has its result. When the tool
round limit ends the turn, the calls of the last reply are not run; each is stored with a result
that says so (`loop_limit_result`). When a later call fails, the results of the tools that ran
before it are stored on the way out (the tools did run: a session they created exists).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncGenerator, Callable, Collection, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any

from . import approval
from .approval import NO_ANSWER, ApprovalPolicy, denied_result, stored_id
from .context import PromptBuilder
from .errors import LLMError, ToolLoopLimit, TurnCancelled, TurnSuspended
from .llm import clean_json
from .ports import LLM, ApprovalWakeups, SpaceStore
from .tools import ToolBox, ToolContext, ToolResult
from .types import (
    Approval,
    LLMResponse,
    LogEvent,
    Message,
    SaveResult,
    StreamChunk,
    StreamDelta,
    ToolCall,
    TurnResult,
    TurnWrite,
    Usage,
    dumps_compact,
)
from .usage import UsageScope

ABANDONED = "the server process running the turn stopped"

# The turns running in this process, by turn id (what a cancel request looks up).
RUNNING: dict[str, TurnLoop] = {}


def loop_limit_result(max_rounds: int) -> str:
    """The stored result of a tool call that was not run because the turn hit the limit."""
    return (f"Not run: the tool loop limit ({max_rounds} rounds) was reached and the turn "
            "ended.")


def raw_response(response: LLMResponse) -> str:
    """The JSON text of one call, as the original serialised it ("usage" only when given)."""
    raw: dict[str, Any] = {
        "content": response.content,
        "toolCalls": [
            {"id": call.id, "name": call.name, "args": dict(call.input)}
            for call in response.tool_calls
        ],
    }
    if response.usage is not None:
        raw["usage"] = {
            "promptTokens": response.usage.prompt_tokens,
            "completionTokens": response.usage.completion_tokens,
        }
    return dumps_compact(raw)


@dataclass(frozen=True, slots=True)
class Resumption:
    """Where a turn that waited for approvals stands (read back from the store): its messages
    so far (its user message first, the round whose calls wait last), its tool rounds and the
    calls it ran."""

    tail: tuple[Message, ...]
    rounds: int
    executed: int

    @classmethod
    def of(cls, tail: Sequence[Message]) -> Resumption | None:
        """From the turn's stored messages; None unless they end with a round of calls."""
        if not tail or tail[0].role != "user" or not tail[-1].tool_calls:
            return None
        rounds = sum(1 for m in tail if m.role == "assistant" and m.tool_calls) - 1
        return cls(tuple(tail), rounds, sum(1 for m in tail if m.role == "tool"))


@dataclass
class _PendingToolCall:
    id: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)


class StreamAssembler:
    """Collects the deltas of one streamed call into an LLMResponse."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._calls: dict[int, _PendingToolCall] = {}
        self._usage: Usage | None = None

    def add(self, delta: StreamDelta) -> None:
        self._text.append(delta.text)
        for piece in delta.tool_calls:
            pending = self._calls.setdefault(piece.index, _PendingToolCall())
            pending.id = piece.id or pending.id
            pending.name = piece.name or pending.name
            pending.arguments.append(piece.arguments)
        if delta.usage is not None:
            self._usage = delta.usage

    def response(self) -> LLMResponse:
        calls = tuple(
            ToolCall(
                id=pending.id or f"tool_{index}",
                name=pending.name or "unknown_tool",
                input=_parse_arguments("".join(pending.arguments)),
            )
            for index, pending in sorted(self._calls.items())
        )
        return LLMResponse(content="".join(self._text), tool_calls=calls, usage=self._usage)


def _parse_arguments(text: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        parsed = None
    if not isinstance(parsed, dict):
        raise LLMError("LLM returned tool-call arguments that are not valid JSON")
    return clean_json(parsed)  # an escaped lone surrogate becomes U+FFFD


class TurnLoop:
    """Runs one turn of one session; `turn_count` holds the session's count once it ended."""

    def __init__(
        self,
        *,
        session_id: str,
        user_input: str,
        insight: str | None,
        prompt: PromptBuilder,
        llm: LLM,
        store: SpaceStore,
        toolbox: ToolBox,
        tool_context: ToolContext,
        max_tool_rounds: int,
        admission: asyncio.Semaphore,
        on_saved: Callable[[Sequence[Message], SaveResult], None] | None = None,
        usage: UsageScope | None = None,
        turn_id: str | None = None,
        event_seq: int = 0,
        abandoned: Sequence[str] = (),
        on_event: Callable[[LogEvent], None] | None = None,
        recovered: Sequence[LogEvent] = (),
        approvals: ApprovalPolicy | None = None,
        wakeups: ApprovalWakeups | None = None,
        resume: Resumption | None = None,
    ) -> None:
        self._session_id = session_id
        self._user_message = Message("user", user_input)
        self._insight = insight
        self._prompt = prompt
        self._llm = llm
        self._store = store
        self._toolbox = toolbox
        self._tool_context = tool_context
        self._max_tool_rounds = max_tool_rounds
        self._on_saved = on_saved  # told of every persisted call (the agent's history cache)
        self._usage = usage  # the metered calls, stored with the save of each call
        self.turn_count: int | None = None
        # The turn as a resource and its part of the session's event log: seqs are handed out
        # here, under the session's lock, from the session's event_seq; the events are told
        # to `on_event` live and written with the round's save_call (no write of their own).
        self.turn_id = turn_id or str(uuid.uuid4())
        self._user_input = user_input
        self._seq = event_seq
        self._abandoned = tuple(abandoned)
        self._on_event = on_event
        self._task: asyncio.Task[Any] | None = None
        self._cancel_requested = False
        self._at_yield = False
        self._chunks: list[str] = []
        self._round = 0
        # Events a dead process told and never saved: written with our first call.
        self._unsaved_events: list[LogEvent] = list(recovered)
        self._seq = max([self._seq, *(e.end for e in recovered)])
        # Human approval of tool calls (engine/approval.py); without wake-ups nobody could
        # answer, so nothing is gated.
        self._approvals = approvals if wakeups is not None else None
        self._wakeups = wakeups
        self._resume = resume
        self._admission = admission  # the agent's (engine/admission.py)

    def _event(self, type_: str, payload: dict[str, Any], *, emit: bool = True) -> LogEvent:
        self._seq += 1
        event = LogEvent(self._seq, type_, payload)
        self._unsaved_events.append(event)
        if emit:
            self._tell(event)
        return event

    def log(self, type_: str, payload: dict[str, Any]) -> LogEvent:
        """An event of something the turn's tools did (a fork): numbered in the turn's own
        sequence (a separate write would race the turn for the seq), told at once and saved
        with the round, or with the turn's end if it fails."""
        return self._event(type_, {**payload, "turnId": self.turn_id})

    def _tell(self, event: LogEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)

    def _turn_write(self, status: str, result: dict[str, Any] | None = None,
                    *, first: bool = False) -> TurnWrite:
        events, self._unsaved_events = tuple(self._unsaved_events), []
        return TurnWrite(self.turn_id, self._user_input, status,  # type: ignore[arg-type]
                         result, events, self._seq, self._abandoned if first else ())

    async def run(self) -> TurnResult:
        async with aclosing(self._rounds(streaming=False)) as items:
            async for item in items:
                if isinstance(item, TurnResult):
                    return item
        raise AssertionError("the tool loop ended without a result")  # unreachable

    def stream(self) -> AsyncGenerator[StreamChunk | TurnResult, None]:
        """StreamChunks of every round, then the TurnResult as the last item."""
        return self._rounds(streaming=True)

    @property
    def session_id(self) -> str:
        return self._session_id

    def cancel(self) -> bool:
        """Stop the turn where it is (the LLM call is abandoned and its stream closed); it
        then keeps nothing, tells `turn.cancelled` and raises TurnCancelled."""
        task = self._task
        if task is None or task.done() or self._cancel_requested:
            return False
        self._cancel_requested = True
        if not self._at_yield:
            task.cancel()
        # At a yield the caller's task is busy with our chunk (e.g. sending it): cancelling
        # it there would hit the caller, so the turn stops as soon as it is resumed.
        return True

    async def _rounds(self, *, streaming: bool) -> AsyncGenerator[StreamChunk | TurnResult, None]:
        self._task = asyncio.current_task()
        RUNNING[self.turn_id] = self
        try:
            async with aclosing(self._rounds_inner(streaming=streaming)) as items:
                async for item in items:
                    self._at_yield = True
                    try:
                        yield item
                    finally:
                        self._at_yield = False
                    if self._cancel_requested:
                        raise asyncio.CancelledError()
        except asyncio.CancelledError:
            if not self._cancel_requested:
                raise
            if self._task is not None and self._task.cancelling():
                self._task.uncancel()
            raise TurnCancelled(self.turn_id, await self._cancelled()) from None
        finally:
            RUNNING.pop(self.turn_id, None)

    async def _cancelled(self) -> int:
        """Nothing of the turn stays in the history (its user message included); its row
        and events say it was cancelled."""
        if self._chunks:  # the deltas of the round that was cut: clients saw their seqs
            self._coalesce(self._chunks, self._round)
        done = self._event("turn.cancelled", {"turnId": self.turn_id}, emit=False)
        write = self._turn_write("cancelled")
        try:
            await asyncio.shield(self._store.finish_turn(self._session_id, write, error=None,
                                                         discard=True))
        except Exception:  # the caller learns of the cancel either way
            pass
        self._tell(done)
        return done.seq

    async def _rounds_inner(
        self, *, streaming: bool
    ) -> AsyncGenerator[StreamChunk | TurnResult, None]:
        specs = self._toolbox.specs()
        tail: list[Message] = [self._user_message]  # this turn's messages, in prompt order
        unsaved: list[Message] = [self._user_message]  # what the next save_call starts with
        rounds = executed = 0
        turn_id = self.turn_id
        if self._resume is not None:  # it waited for approvals: their round's calls first
            tail, unsaved = list(self._resume.tail), []
            rounds, executed = self._resume.rounds, self._resume.executed
            self._round = rounds
            results = await self._run_tools(tail[-1].tool_calls, gated=None)
            executed, unsaved, rounds = self._ran(results, executed, rounds)
            tail.extend(unsaved)
        else:
            for stale in self._abandoned:  # left running by a process that died
                self._event("turn.failed", {"turnId": stale, "error": ABANDONED})
            self._event("turn.started", {"turnId": turn_id, "input": self._user_input})
        while True:
            chunks: list[str] = []
            self._chunks = chunks  # a cancel mid-round keeps their seqs in the log
            try:
                async with self._admission:
                    messages = await self._prompt.build(tail)
                if streaming:
                    assembler = StreamAssembler()
                    tell = self._on_event
                    async for delta in self._llm.stream(messages, tools=specs):
                        assembler.add(delta)
                        if text := delta.text:
                            seq = self._seq = self._seq + 1
                            chunks.append(text)
                            if tell is not None:
                                tell(LogEvent(seq, "stream.delta", {
                                    "turnId": turn_id, "round": rounds, "chunk": text}))
                            yield StreamChunk(text, rounds, seq)
                    response = assembler.response()
                else:
                    response = await self._llm.complete(messages, tools=specs)
            except Exception as exc:
                self._chunks = []
                self._coalesce(chunks, rounds)
                if rounds:  # `unsaved` holds the results of tools that ran: keep them
                    await self._save_quietly(unsaved)
                await self._fail_quietly(exc)
                raise
            self._chunks = []
            self._coalesce(chunks, rounds)

            reply = Message("assistant", response.content or "", tool_calls=response.tool_calls)
            final = not response.tool_calls
            out_of_rounds = not final and rounds >= self._max_tool_rounds
            saved = [*unsaved, reply]
            if out_of_rounds:
                not_run = loop_limit_result(self._max_tool_rounds)
                saved.extend(Message("tool", not_run, tool_call_id=call.id)
                              for call in response.tool_calls)
            if final:
                turn = TurnResult(response.content, rounds, executed, raw_response(response),
                                  turn_id=turn_id, usage=(self._usage.summary() if self._usage
                                                          is not None else None))
                completed = self._event("turn.completed",
                                        {"turnId": turn_id, "result": turn.to_json()},
                                        emit=False)  # told once committed
                write = self._turn_write("completed", turn.to_json(), first=rounds == 0)
            else:
                self._event("tool.call", {"turnId": turn_id, "round": rounds,
                                          "calls": [c.to_json() for c in response.tool_calls]})
                gated = ([] if out_of_rounds or self._approvals is None
                         else self._approvals.gated(response.tool_calls))
                asks = [self._event("tool.approval_required", {
                    "turnId": turn_id, "callId": c.id, "name": c.name,
                    "arguments": dict(c.input)}, emit=False) for c in gated]  # told once stored
                write = self._turn_write("running", first=rounds == 0)
            try:
                result = await self._save(saved, first_call=rounds == 0, end_turn=final,
                                          turn=write)
            except Exception as exc:
                self._unsaved_events = [*write.events, *self._unsaved_events]
                await self._fail_quietly(exc)
                raise
            if final:
                self.turn_count = result.turn_count
                self._tell(completed)
                yield replace(turn, seq=completed.seq)
                return
            if out_of_rounds:
                limit = ToolLoopLimit(self._max_tool_rounds)
                await self._fail_quietly(limit)
                raise limit

            if gated:
                assert self._approvals is not None
                await self._store.request_approvals(self._session_id, turn_id, gated,
                                                    self._approvals.deadline())
                for ask in asks:
                    self._tell(ask)
            results = await self._run_tools(response.tool_calls, gated=[c.id for c in gated])
            executed, unsaved, rounds = self._ran(results, executed, rounds)
            tail.extend([reply, *unsaved])

    async def _run_tools(self, calls: Sequence[ToolCall], *,
                         gated: Collection[str] | None = ()) -> list[ToolResult]:
        """The round's calls. Those in `gated` (None: those with stored approvals, when a
        stopped turn goes on) wait until every one is decided; a gated call runs only with an
        approval recorded for it, the others are not run and their result says why."""
        blocked: dict[str, Approval | None] = {}
        if gated is None or gated:
            assert self._wakeups is not None
            stored = {a.call_id: a for a in await approval.decisions(
                self._store, self._wakeups, self._session_id, self.turn_id)}
            if not await self._store.claim_waiting_turn(self._session_id, self.turn_id):
                raise TurnSuspended()  # another process resumed it: it is theirs now
            if gated is None:
                gated = [c.id for c in calls if stored_id(c.id) in stored]
            for call_id in gated:
                answer = stored.get(stored_id(call_id))
                approved = answer is not None and answer.decision == "approved"
                self._event("tool.approval_decided", {
                    "turnId": self.turn_id, "callId": call_id, "approved": approved,
                    "reason": answer.reason if answer is not None else NO_ANSWER})
                if not approved:
                    blocked[call_id] = answer
        ran = iter(await self._toolbox.run_all([c for c in calls if c.id not in blocked],
                                               self._tool_context))
        return [denied_result(c, blocked[c.id]) if c.id in blocked else next(ran)
                for c in calls]

    def _ran(self, results: list[ToolResult], executed: int,
             rounds: int) -> tuple[int, list[Message], int]:
        """Log one round's results; the counts after it and the messages to save next."""
        messages = [result.to_message() for result in results]
        self._event("tool.result", {"turnId": self.turn_id, "round": rounds, "results": [
            {"toolCallId": m.tool_call_id, "content": m.content} for m in messages]})
        self._round = rounds + 1
        return executed + len(results), messages, rounds + 1

    def _coalesce(self, chunks: list[str], round_: int) -> None:
        """The round's deltas, told one by one, are written as ONE log entry."""
        if chunks:
            first = self._seq - len(chunks) + 1
            self._unsaved_events.append(LogEvent(first, "stream.delta", {
                "turnId": self.turn_id, "round": round_, "chunks": chunks}, self._seq))

    async def _fail_quietly(self, exc: BaseException) -> None:
        """The turn failed: its row says why, and the events clients saw are kept, with
        `turn.failed` last. The caller gets the turn's error, never one from here."""
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        failed = self._event("turn.failed", {"turnId": self.turn_id, "error": message},
                             emit=False)
        write = self._turn_write("failed")
        with contextlib.suppress(Exception):
            await self._store.finish_turn(self._session_id, write, error=message,
                                          discard=False)
        self._tell(failed)

    async def _save(
        self, messages: list[Message], *, first_call: bool, end_turn: bool,
        turn: TurnWrite | None = None,
    ) -> SaveResult:
        # The calls are charged to this turn too (the usage rows carry its id).
        calls = tuple(replace(c, turn_id=c.turn_id or self.turn_id)
                      for c in self._usage.pending) if self._usage is not None else ()
        async with self._admission:
            result = await self._store.save_call(
                self._session_id,
                messages,
                consumed_insight=self._insight if first_call else None,  # the first call used it
                end_turn=end_turn,
                usage=calls,
                turn=turn,
            )
        if calls:  # stored with the call; what a failed save leaves pending is kept
            del self._usage.pending[:len(calls)]  # type: ignore[union-attr]
        if self._on_saved is not None:
            self._on_saved(messages, result)
        return result

    async def _save_quietly(self, tool_results: list[Message]) -> None:
        # The turn is failing already: the caller gets that error, not a second one from here.
        with contextlib.suppress(Exception):
            await self._save(tool_results, first_call=False, end_turn=False,
                             turn=self._turn_write("running"))
