"""Fork with context "compress" (the memory model's summary in a <parent_context> block) and
the optional <session_identity> note of child sessions."""

from __future__ import annotations

import pytest

from sessions_app.engine.errors import InvalidInput
from sessions_app.engine.types import LLMResponse

from .fakes import ScriptedLLM, call, make_agent, reply


class LockCheckingLLM(ScriptedLLM):
    """Records whether the source session's lock was held while the model answered."""

    def __init__(self, *steps, locks=None, session_id=None) -> None:
        super().__init__(*steps)
        self.locks, self.session_id, self.held = locks, session_id, []

    async def complete(self, messages, *, tools=()) -> LLMResponse:
        self.held.append(self.locks.is_held(self.session_id))
        return await super().complete(messages, tools=tools)


async def test_compress_puts_the_summary_in_the_childs_system_prompt() -> None:
    h = make_agent(llm=ScriptedLLM(reply("Paris is the capital."), reply("child answer")))
    source = await h.child("Source", systemPrompt="You are a geographer.")
    await h.agent.turn(source, "What is the capital of France?")
    memory = LockCheckingLLM("The user asked about France; answer: Paris.",
                             locks=h.locks, session_id=source)
    h.agent.memory_llm = memory

    child = await h.child("Summary child", source_id=source, context="compress")

    assert h.store.records(child) == []  # the history itself is not copied
    prompt = h.store._get(child).slots["system_prompt"]
    assert prompt == ("You are a geographer.\n\n<parent_context>\nThe user asked about "
                      "France; answer: Paris.\n</parent_context>")
    transcript = "\n".join(m.content for m in memory.calls[0].messages)
    assert "What is the capital of France?" in transcript
    assert memory.held == [False]  # the model is never called under the session's lock

    await h.agent.turn(child, "and Germany?")
    system = [m.content for m in h.llm.calls[-1].messages if m.role == "system"]
    assert "<parent_context>" in system[0]


async def test_compress_of_an_empty_source_calls_no_model() -> None:
    h = make_agent()
    child = await h.child("Empty", context="compress")
    assert h.memory_llm.calls == []
    assert "<parent_context>" not in (h.store._get(child).slots.get("system_prompt") or "")


async def test_the_llms_own_tool_cannot_compress() -> None:
    h = make_agent(llm=ScriptedLLM(
        reply(None, call("stello_create_session", "c1", label="K", context="compress")),
        reply("ok")))
    source = await h.child()
    await h.agent.turn(source, "branch")
    tool = [m for m in h.store.records(source) if m.role == "tool"][0]
    assert 'context "compress" is not available to this tool' in tool.content
    assert h.memory_llm.calls == []


async def test_a_child_knows_who_it_is_only_when_enabled() -> None:
    h = make_agent(llm=ScriptedLLM(reply("a"), reply("b"), reply("c")))
    child = await h.child("Flights", scope="book the flights")
    await h.agent.turn(child, "hi")
    assert not any("<session_identity>" in m.content for m in h.llm.calls[-1].messages)

    h.agent.settings = type(h.agent.settings)(session_identity=True)
    await h.agent.turn(child, "hi")
    notes = [m.content for m in h.llm.calls[-1].messages
             if m.role == "system" and "<session_identity>" in m.content]
    assert len(notes) == 1
    assert 'the session "Flights"' in notes[0] and "book the flights" in notes[0]
    await h.agent.turn(h.root_id, "root")  # the main session gets no such note
    assert not any("<session_identity>" in m.content for m in h.llm.calls[-1].messages)


async def test_an_unknown_context_is_refused() -> None:
    h = make_agent()
    with pytest.raises(InvalidInput, match='context must be "none", "inherit" or "compress"'):
        await h.child("X", context="everything")
