"""Prompt assembly: order per role, insight consumption, L2 never shown, history hygiene,
compression."""

from __future__ import annotations

import pytest

from sessions_app.engine.compression import SUMMARY_HEADER
from sessions_app.engine.errors import LLMError
from sessions_app.engine.history import drop_incomplete_tool_groups
from sessions_app.engine.memory import default_compress_prompt
from sessions_app.engine.tools import tool
from sessions_app.engine.types import Message, ToolCall

from .fakes import InMemoryStore, ScriptedLLM, call, make_agent, reply


def roles_and_texts(messages: tuple[Message, ...] | list[Message]) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in messages]


@tool(name="noop", description="does nothing")
def noop(args: dict, context: object) -> str:
    return "done"


async def test_standard_prompt_order_is_system_insight_history_user() -> None:
    h = make_agent(llm=ScriptedLLM("first", "second"))
    child = await h.child(systemPrompt="You are a child.")
    await h.agent.turn(child, "hello")
    h.store.set_slot(child, "insight", "Look at the budget.")

    await h.agent.turn(child, "again")

    assert roles_and_texts(h.llm.calls[1].messages) == [
        ("system", "You are a child."),
        ("system", "Look at the budget."),
        ("user", "hello"),
        ("assistant", "first"),
        ("user", "again"),
    ]


async def test_main_prompt_order_is_system_synthesis_history_user() -> None:
    h = make_agent(store=InMemoryStore(system_prompt="Space prompt."), llm=ScriptedLLM("a", "b"))
    await h.agent.turn(h.root_id, "one")
    h.store.set_slot(h.root_id, "memory", "The synthesis.")
    h.store.set_slot(h.root_id, "insight", "never for main")

    await h.agent.turn(h.root_id, "two")

    assert roles_and_texts(h.llm.calls[1].messages) == [
        ("system", "Space prompt."),
        ("system", "The synthesis."),
        ("user", "one"),
        ("assistant", "a"),
        ("user", "two"),
    ]
    assert h.store.slot(h.root_id, "insight") == "never for main"  # the main never consumes


async def test_empty_system_prompt_and_insight_are_left_out() -> None:
    h = make_agent(llm=ScriptedLLM("ok"))
    child = await h.child(systemPrompt="")
    h.store.set_slot(child, "insight", "")

    await h.agent.turn(child, "hi")

    assert roles_and_texts(h.llm.calls[0].messages) == [("user", "hi")]


async def test_own_memory_is_never_in_the_prompt_even_in_tool_rounds() -> None:
    h = make_agent(tools=[noop], llm=ScriptedLLM(reply(None, call("noop")), "done"))
    child = await h.child(systemPrompt="S")
    h.store.set_slot(child, "memory", "SECRET L2")

    await h.agent.turn(child, "go")

    assert len(h.llm.calls) == 2
    for llm_call in h.llm.calls:
        assert all("SECRET L2" not in m.content for m in llm_call.messages)


async def test_insight_is_consumed_after_the_call_succeeded_and_kept_for_the_turn() -> None:
    h = make_agent(tools=[noop], llm=ScriptedLLM(reply(None, call("noop")), "done", "later"))
    child = await h.child()
    h.store.set_slot(child, "insight", "Hint.")

    await h.agent.turn(child, "go")

    assert [m.content for m in h.llm.calls[0].messages][:1] == ["Hint."]
    assert [m.content for m in h.llm.calls[1].messages][:1] == ["Hint."]  # same turn
    assert h.store.slot(child, "insight") is None
    assert [c.consumed_insight for c in h.store.saved_calls] == ["Hint.", None]

    await h.agent.turn(child, "next")
    assert all(m.content != "Hint." for m in h.llm.calls[2].messages)


async def test_a_failed_call_keeps_the_insight_for_the_next_turn() -> None:
    h = make_agent(llm=ScriptedLLM())
    child = await h.child()
    h.store.set_slot(child, "insight", "Hint.")
    h.llm.fail_next()

    with pytest.raises(LLMError):
        await h.agent.turn(child, "go")
    assert h.store.slot(child, "insight") == "Hint."

    h.llm.push("ok")
    await h.agent.turn(child, "go again")
    assert h.llm.calls[1].messages[0] == Message("system", "Hint.")
    assert h.store.slot(child, "insight") is None


async def test_incomplete_tool_groups_are_dropped_from_the_prompt() -> None:
    h = make_agent(llm=ScriptedLLM("ok"))
    child = await h.child()
    dangling = Message("assistant", "", tool_calls=(ToolCall("t1", "noop", {}),))
    h.store.add_records(child, Message("user", "before"), dangling)

    await h.agent.turn(child, "after")

    assert roles_and_texts(h.llm.calls[0].messages) == [("user", "before"), ("user", "after")]
    assert dangling in h.store.records(child)  # storage keeps it


def test_drop_incomplete_tool_groups_keeps_complete_groups_only() -> None:
    two_calls = Message(
        "assistant", "", tool_calls=(ToolCall("a", "x", {}), ToolCall("b", "y", {}))
    )
    one_call = Message("assistant", "", tool_calls=(ToolCall("c", "x", {}),))
    result_a = Message("tool", "ra", tool_call_id="a")
    result_b = Message("tool", "rb", tool_call_id="b")
    result_c = Message("tool", "rc", tool_call_id="c")
    orphan = Message("tool", "lost", tool_call_id="zzz")
    user = Message("user", "u")

    assert drop_incomplete_tool_groups([user, two_calls, result_a, result_b]) == [
        user,
        two_calls,
        result_a,
        result_b,
    ]
    # A missing result drops the whole group, including the results that are there.
    assert drop_incomplete_tool_groups([user, two_calls, result_a, user]) == [user, user]
    # Orphan tool messages go, wherever they are.
    assert drop_incomplete_tool_groups([orphan, user, one_call, result_c, orphan]) == [
        user,
        one_call,
        result_c,
    ]
    # A trailing assistant tool-call message without results goes.
    assert drop_incomplete_tool_groups([user, one_call]) == [user]
    assert drop_incomplete_tool_groups([]) == []


async def test_long_history_is_compressed_with_the_memory_llm_and_the_cache_persisted() -> None:
    llm = ScriptedLLM("fresh answer", max_context_tokens=200)
    h = make_agent(llm=llm, memory_llm=ScriptedLLM("SUMMARY"))
    child = await h.child(systemPrompt="S")
    for i in range(20):
        h.store.add_records(child, Message("user", f"question {i} " + "x" * 60))
        h.store.add_records(child, Message("assistant", f"answer {i} " + "y" * 60))

    await h.agent.turn(child, "latest")

    prompt = h.llm.calls[0].messages
    assert prompt[0] == Message("system", "S")
    assert prompt[1] == Message("system", SUMMARY_HEADER + "SUMMARY")
    assert prompt[-1] == Message("user", "latest")
    assert len(prompt) < 20
    assert h.memory_llm.calls[0].messages[0] == Message(
        "system", default_compress_prompt(h.agent.settings.memory_language)
    )
    cache = h.store.compression_of(child)
    assert cache is not None and cache.summary == "SUMMARY"
