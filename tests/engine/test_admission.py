"""Admission (engine/admission.py): many turns at once wait for their models together, but only
`limit` of them read their context or save their records at the same time."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from sessions_app.engine.types import LLMResponse, Message, StreamChunk, ToolSpec

from .fakes import InMemoryStore, ScriptedLLM, make_agent

TURNS = 8


class Busy:
    """Counts the callers inside at once (the most at any time)."""

    def __init__(self) -> None:
        self.now = self.most = 0

    async def inside(self, seconds: float) -> None:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.now -= 1


class SlowStore(InMemoryStore):
    """Each context read and save takes a moment, counted in `busy`."""

    busy: Busy

    async def load_turn_context(self, *args: Any, **kwargs: Any) -> Any:
        await self.busy.inside(0.01)
        return await super().load_turn_context(*args, **kwargs)

    async def save_call(self, *args: Any, **kwargs: Any) -> Any:
        await self.busy.inside(0.01)
        return await super().save_call(*args, **kwargs)


class SlowModel(ScriptedLLM):
    """Answers after a moment, counting the calls it holds at once in `busy`."""

    def __init__(self) -> None:
        super().__init__()
        self.busy = Busy()

    async def complete(self, messages: Sequence[Message], *,
                       tools: Sequence[ToolSpec] = ()) -> LLMResponse:
        await self.busy.inside(0.05)
        return LLMResponse(content="ok")


async def admitted_agent(llm: ScriptedLLM, limit: int) -> tuple[Any, SlowStore, list[str]]:
    """An agent letting `limit` turns into their busy steps, and TURNS children to turn on."""
    store = SlowStore()
    store.busy = Busy()
    h = make_agent(store=store, llm=llm)
    h.agent.admission = asyncio.Semaphore(limit)
    children = [await h.child(f"c{n}") for n in range(TURNS)]
    store.busy = Busy()  # the forks' reads are not turns
    return h.agent, store, children


async def run_turns(limit: int) -> tuple[SlowStore, SlowModel, list[Any]]:
    model = SlowModel()
    agent, store, children = await admitted_agent(model, limit)
    results = await asyncio.gather(*(agent.turn(c, "hi") for c in children))
    return store, model, results


async def test_only_the_admitted_turns_read_and_save_at_once() -> None:
    store, model, results = await run_turns(limit=2)
    assert [r.final_content for r in results] == ["ok"] * TURNS
    assert store.busy.most == 2
    assert model.busy.most == TURNS  # the models' waits are not held back


async def test_without_a_low_limit_every_turn_reads_at_once() -> None:
    store, _, _ = await run_turns(limit=TURNS)
    assert store.busy.most > 2  # what the limit above prevents


@pytest.mark.parametrize("limit", [1, 3])
async def test_a_stream_is_admitted_like_a_turn(limit: int) -> None:
    agent, store, children = await admitted_agent(ScriptedLLM(*["streamed"] * TURNS), limit)

    async def stream(child: str) -> str:
        return "".join([item.text async for item in agent.stream(child, "hi")
                        if isinstance(item, StreamChunk)])

    assert await asyncio.gather(*(stream(c) for c in children)) == ["streamed"] * TURNS
    assert store.busy.most == limit
