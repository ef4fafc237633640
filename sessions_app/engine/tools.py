"""Tools the LLM may call: the Tool value, the `@tool` decorator, loading by dotted path and
the runner of one round of tool calls (a failing tool is isolated: its error goes back to the LLM).

The calls of one round run concurrently, at most `ToolBox.max_parallel` at a time; each is
settled on its own (one failure does not cancel the others) and the results keep call order.
Cancelling the round cancels every call still running.

A tool function is called as `fn(args, context)`: `args` is the parsed JSON arguments (a dict),
`context` a `ToolContext`. It may be sync (run in a thread) or async, and returns any JSON-able
value. If it raises, the error text goes back to the LLM and the turn goes on.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .ports import ToolFunction
from .types import Message, ToolCall, ToolSpec, dumps_compact

EMPTY_SCHEMA: Mapping[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True, slots=True)
class ToolContext:
    """Where a tool runs: the space and the session of the current turn."""

    space_id: str
    session_id: str


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    input_schema: Mapping[str, Any]
    fn: ToolFunction

    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.input_schema)


def tool(
    *, name: str, description: str, input_schema: Mapping[str, Any] | None = None
) -> Callable[[ToolFunction], Tool]:
    """Turn `fn(args, context)` into a Tool (the decorated name is then the Tool)."""

    def decorate(fn: ToolFunction) -> Tool:
        schema = input_schema if input_schema is not None else dict(EMPTY_SCHEMA)
        return Tool(name=name, description=description, input_schema=schema, fn=fn)

    return decorate


def load_tools(dotted_paths: Sequence[str]) -> list[Tool]:
    """Import each `package.module.attr` (or `package.module:attr`); each must be a Tool."""
    return [_load_tool(path) for path in dotted_paths]


def _load_tool(path: str) -> Tool:
    module_name, sep, attr = path.rpartition(":") if ":" in path else path.rpartition(".")
    if not sep or not module_name or not attr:
        raise ValueError(f"tool path {path!r} is not of the form 'package.module.name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"tool path {path!r}: cannot import {module_name!r}: {exc}") from exc
    found = getattr(module, attr, None)
    if not isinstance(found, Tool):
        raise ValueError(f"tool path {path!r} does not name a Tool (use the @tool decorator)")
    return found


@dataclass(frozen=True, slots=True)
class ToolResult:
    tool_call_id: str
    tool_name: str
    success: bool
    data: Any = None
    error: str | None = None

    def content(self) -> str:
        """The tool message text."""
        if not self.success:
            return self.error or ""
        if self.data is None:
            return ""
        if isinstance(self.data, str):
            return self.data
        return dumps_compact(self.data)

    def to_message(self) -> Message:
        return Message("tool", self.content(), tool_call_id=self.tool_call_id)


@dataclass(frozen=True, slots=True)
class ToolBox:
    """The tools of one turn by name, and the specs the LLM sees (in order)."""

    tools: Mapping[str, Tool] = field(default_factory=dict)
    max_parallel: int = 8  # calls of one round running at the same time (1: one by one)

    @classmethod
    def of(cls, tools: Sequence[Tool], *, max_parallel: int = 8) -> ToolBox:
        """The first tool of a name wins (built-ins come first)."""
        by_name: dict[str, Tool] = {}
        for t in tools:
            by_name.setdefault(t.name, t)
        return cls(by_name, max(1, max_parallel))

    def specs(self) -> list[ToolSpec]:
        return [t.spec() for t in self.tools.values()]

    async def run_all(self, calls: Sequence[ToolCall], context: ToolContext) -> list[ToolResult]:
        """Run the calls of one round concurrently (bounded); the results in call order."""
        if len(calls) <= 1 or self.max_parallel <= 1:
            return [await self.run(call, context) for call in calls]
        gate = asyncio.Semaphore(self.max_parallel)

        async def bounded(call: ToolCall) -> ToolResult:
            async with gate:
                return await self.run(call, context)

        # `run` turns every failure into a result, so gather never fails part-way; a
        # cancellation of the round reaches every call through gather.
        return list(await asyncio.gather(*(bounded(call) for call in calls)))

    async def run(self, call: ToolCall, context: ToolContext) -> ToolResult:
        found = self.tools.get(call.name)
        if found is None:
            return ToolResult(call.id, call.name, False, error=f"Unknown tool: {call.name}")
        try:
            data = await _invoke(found.fn, dict(call.input), context)
        except Exception as exc:  # any tool failure is reported to the LLM, not raised
            return ToolResult(call.id, call.name, False, error=str(exc) or type(exc).__name__)
        return ToolResult(call.id, call.name, True, data=data)


async def _invoke(fn: ToolFunction, args: dict[str, Any], context: ToolContext) -> Any:
    if inspect.iscoroutinefunction(fn):
        return await fn(args, context)
    result = await asyncio.to_thread(fn, args, context)
    if inspect.isawaitable(result):  # e.g. a sync wrapper around a coroutine function
        return await result
    return result
