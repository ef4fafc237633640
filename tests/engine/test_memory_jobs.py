"""Consolidation never holds the session while the memory model answers, sends only what the
memory does not cover yet, works a long backlog through within the model's budget, and keeps
the result that covered more when two run at once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sessions_app.engine.types import LLMResponse, Message, ToolSpec

from .fakes import ScriptedLLM, make_agent


class GatedLLM(ScriptedLLM):
    """A ScriptedLLM whose calls each wait for `release()` (the slow memory model)."""

    def __init__(self, *steps, **kwargs) -> None:
        super().__init__(*steps, **kwargs)
        self.called = asyncio.Event()
        self._gate = asyncio.Event()

    def release(self) -> None:
        self._gate.set()

    async def complete(
        self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = ()
    ) -> LLMResponse:
        response = await super().complete(messages, tools=tools)
        self.called.set()
        await self._gate.wait()
        return response


def transcript(call) -> str:
    return call.messages[1].content


async def test_a_turn_completes_while_its_sessions_consolidation_waits_on_the_model() -> None:
    h = make_agent(llm=ScriptedLLM("echo: q1", "echo: q2"), memory_llm=GatedLLM("L2 of q1"))
    child = await h.child()
    await h.agent.turn(child, "q1")

    consolidation = asyncio.create_task(h.agent.consolidate(child))
    await h.memory_llm.called.wait()
    assert not h.locks.is_held(child)  # before: the lock was held for the whole LLM call

    result = await h.agent.turn(child, "q2")  # before: SessionBusy after the lock timeout

    assert result.final_content == "echo: q2"
    assert not consolidation.done()  # the turn finished first: the model is still answering
    h.memory_llm.release()
    assert await consolidation == "L2 of q1"
    # It covered what it read (q1 and its answer); q2 waits for the next consolidation.
    assert h.store.slot(child, "memory") == "L2 of q1"
    h.memory_llm.push("L2 of q1 and q2")
    assert await h.agent.consolidate(child) == "L2 of q1 and q2"
    assert transcript(h.memory_llm.calls[1]) == (
        "Current summary:\nL2 of q1\n\nConversation:\nuser: q2\nassistant: echo: q2"
    )


async def test_nothing_new_means_no_call_and_the_memory_stays() -> None:
    h = make_agent(llm=ScriptedLLM("a"), memory_llm=ScriptedLLM("first"))
    child = await h.child()
    await h.agent.turn(child, "q")
    assert await h.agent.consolidate(child) == "first"
    assert await h.agent.consolidate(child) == "first"
    assert len(h.memory_llm.calls) == 1


async def test_a_backlog_longer_than_the_models_context_is_consolidated_in_parts() -> None:
    # 100 tokens of context (80 usable): each 60-token record needs a call of its own. Before,
    # the whole history went into one call, which a real model refuses forever.
    memory_llm = ScriptedLLM("m1", "m2", "m3", max_context_tokens=100)
    h = make_agent(memory_llm=memory_llm)
    child = await h.child()
    words = ["a" * 240, "b" * 240, "c" * 240]
    h.store.add_records(child, *(Message("user", w) for w in words))

    assert await h.agent.consolidate(child) == "m3"

    sent = [transcript(c) for c in memory_llm.calls]
    assert sent == [
        "Conversation:\nuser: " + words[0],
        "Current summary:\nm1\n\nConversation:\nuser: " + words[1],
        "Current summary:\nm2\n\nConversation:\nuser: " + words[2],
    ]
    assert h.store.slot(child, "memory") == "m3"


async def test_of_two_concurrent_consolidations_the_one_that_covered_more_stands() -> None:
    h = make_agent(memory_llm=GatedLLM("slow, covers q1"))
    child = await h.child()
    h.store.add_records(child, Message("user", "q1"))
    slow = asyncio.create_task(h.agent.consolidate(child))
    await h.memory_llm.called.wait()

    # Meanwhile more is said and a second consolidation (another process) covers it all.
    h.store.add_records(child, Message("user", "q2"))
    other = make_agent(store=h.store, memory_llm=ScriptedLLM("fast, covers q1 and q2"))
    assert await other.agent.consolidate(child) == "fast, covers q1 and q2"

    h.memory_llm.release()
    assert await slow == "fast, covers q1 and q2"  # the stale result was not written
    assert h.store.slot(child, "memory") == "fast, covers q1 and q2"
    assert len(h.memory_llm.calls) == 1
