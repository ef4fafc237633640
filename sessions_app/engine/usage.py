"""Usage accounting inside the engine: every LLM call is metered and attributed.

A `UsageScope` is opened for one unit of work that calls the LLM (a turn, a consolidation, an
integration). The LLMs of that work are wrapped in `MeteredLLM`, which times each call and
adds a `CallUsage` to the scope. The work hands the scope's pending calls to the store with
the write it makes anyway (`save_call(usage=...)`), so recording costs no round trip of its
own; what is left when the work ends (memory work, a failed turn) goes to
`store.record_usage`.

Who caused the work (the API key) is not known to the engine: the caller sets `current_api_key`
before calling the agent (a context variable, so it follows the call into the tasks it starts).
The space's owner and the price come from the store when it writes the rows.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from .ports import LLM
from .types import LLMResponse, Message, StreamDelta, ToolSpec, Usage

CallKind = Literal["turn", "stream", "compression", "consolidation", "integration", "fork"]
CALL_KINDS: tuple[str, ...] = ("turn", "stream", "compression", "consolidation", "integration",
                               "fork")

# The id of the API key whose request runs now (None: background work, the admin, a command).
current_api_key: ContextVar[int | None] = ContextVar("stello_current_api_key", default=None)


def _system_now() -> datetime:
    return datetime.now(UTC)


class Clock:
    """The wall clock of usage accounting and quotas: which day a call counts for, and when a
    quota period ends. Tests move it (`set`) to cross a period without waiting."""

    def __init__(self) -> None:
        self._now: Callable[[], datetime] = _system_now

    def now(self) -> datetime:
        return self._now()

    def set(self, now: Callable[[], datetime] | datetime | None) -> None:
        """A fixed time, a function giving the time, or None for the system clock again."""
        if now is None:
            self._now = _system_now
        elif isinstance(now, datetime):
            self._now = lambda: now
        else:
            self._now = now


clock = Clock()


@dataclass(frozen=True, slots=True)
class CallUsage:
    """One LLM call: what the provider reported and whom it is charged to."""

    kind: str  # one of CALL_KINDS
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    duration_ms: int
    at: datetime
    session_id: str | None = None
    turn_id: str | None = None
    api_key_id: int | None = None
    cost_nanos: int = 0  # billionths of the price table's currency unit (USD by convention)


# What a call costs, in billionths: given by the deployment's price table.
PriceFunction = Callable[[str, str, int, int, int], int]  # (provider, model, in, out, cached)


def no_price(provider: str, model: str, input_tokens: int, output_tokens: int,
             cached_tokens: int) -> int:
    return 0


@dataclass(slots=True)
class UsageScope:
    """The calls of one unit of work. `pending` are not stored yet; `calls` are all of them."""

    session_id: str | None = None
    turn_id: str | None = None
    api_key_id: int | None = field(default_factory=current_api_key.get)
    price: PriceFunction = no_price
    calls: list[CallUsage] = field(default_factory=list)
    pending: list[CallUsage] = field(default_factory=list)

    def add(self, call: CallUsage) -> None:
        self.calls.append(call)
        self.pending.append(call)

    def drain(self) -> tuple[CallUsage, ...]:
        """The pending calls, now handed to a store write."""
        taken, self.pending = tuple(self.pending), []
        return taken

    async def flush(self, store: Any, *, quietly: bool = False) -> None:
        """Store what no other write took (`store.record_usage`). `quietly` when the work is
        failing already: its caller gets that error, not one from here."""
        calls = self.drain()
        if not calls:
            return
        try:
            await store.record_usage(calls)
        except Exception:
            if not quietly:
                raise

    def metered(self, llm: LLM, kind: str) -> MeteredLLM:
        return MeteredLLM(llm, self, kind)

    def summary(self) -> dict[str, Any]:
        """The turn result's `usage` object: totals over every call of this scope."""
        return usage_summary(self.calls)


def usage_summary(calls: Sequence[CallUsage]) -> dict[str, Any]:
    return {
        "calls": len(calls),
        "inputTokens": sum(c.input_tokens for c in calls),
        "outputTokens": sum(c.output_tokens for c in calls),
        "cachedTokens": sum(c.cached_tokens for c in calls),
        "cost": sum(c.cost_nanos for c in calls) / 1e9,
    }


class MeteredLLM:
    """An `LLM` that adds each call's usage to a scope. A call that fails records nothing (the
    provider reported nothing); a call whose provider sent no usage records zero tokens, so the
    call itself is still counted."""

    def __init__(self, llm: LLM, scope: UsageScope, kind: str) -> None:
        self._llm = llm
        self._scope = scope
        self._kind = kind
        self.provider = llm.provider
        self.model = llm.model
        self.max_context_tokens = llm.max_context_tokens

    def __getattr__(self, name: str) -> Any:  # e.g. OfflineLLM.calls for tests
        return getattr(self._llm, name)

    async def complete(
        self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = ()
    ) -> LLMResponse:
        started = time.monotonic()
        response = await self._llm.complete(messages, tools=tools)
        self._record(self._kind, response.usage, started)
        return response

    async def stream(
        self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[StreamDelta]:
        started = time.monotonic()
        usage: Usage | None = None
        async for delta in self._llm.stream(messages, tools=tools):
            if delta.usage is not None:
                usage = delta.usage
            yield delta
        kind = "stream" if self._kind == "turn" else self._kind
        self._record(kind, usage, started)

    async def aclose(self) -> None:
        return None  # the wrapped model belongs to the agent

    def _record(self, kind: str, usage: Usage | None, started: float) -> None:
        scope = self._scope
        tokens = ((usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)
                  if usage else (0, 0, 0))
        scope.add(CallUsage(
            kind=kind,
            provider=self.provider,
            model=self.model,
            input_tokens=tokens[0],
            output_tokens=tokens[1],
            cached_tokens=tokens[2],
            cost_nanos=scope.price(self.provider, self.model, *tokens),
            duration_ms=int((time.monotonic() - started) * 1000),
            at=clock.now(),
            session_id=scope.session_id,
            turn_id=scope.turn_id,
            api_key_id=scope.api_key_id,
        ))
