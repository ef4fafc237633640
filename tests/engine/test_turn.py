"""The tool loop: rounds, limit, tool errors, persistence per call, turn_count."""

from __future__ import annotations

import asyncio
import json

import pytest

from sessions_app.engine.errors import InvalidInput, LLMError, ToolLoopLimit
from sessions_app.engine.tools import ToolContext, tool
from sessions_app.engine.turn import loop_limit_result
from sessions_app.engine.types import Message, ToolCall, TurnResult, Usage

from .fakes import ScriptedLLM, call, make_agent, reply

order: list[str] = []


def assert_every_tool_call_has_its_result(records: list[Message]) -> None:
    """Each assistant tool call is followed by the tool results of all its calls."""
    for n, message in enumerate(records):
        if message.tool_calls:
            answered = [m.tool_call_id for m in records[n + 1:n + 1 + len(message.tool_calls)]]
            assert answered == [c.id for c in message.tool_calls], records


@tool(
    name="add",
    description="adds a and b",
    input_schema={"type": "object", "properties": {"a": {}, "b": {}}},
)
def add(args: dict, context: ToolContext) -> dict:
    order.append("add")
    return {"sum": args["a"] + args["b"]}


@tool(name="slow_async", description="an async tool")
async def slow_async(args: dict, context: ToolContext) -> str:
    await asyncio.sleep(0)
    order.append("slow_async")
    return f"async in {context.session_id}"


@tool(name="explode", description="always fails")
def explode(args: dict, context: ToolContext) -> str:
    raise RuntimeError("kaboom")


async def test_a_turn_without_tools_persists_user_and_assistant_and_counts_once() -> None:
    h = make_agent(llm=ScriptedLLM(reply("Hello!", usage=Usage(10, 3))))
    child = await h.child()

    result = await h.agent.turn(child, "Hi")

    assert result == TurnResult(
        final_content="Hello!",
        tool_round_count=0,
        tool_calls_executed=0,
        raw_response='{"content":"Hello!","toolCalls":[],"usage":{"promptTokens":10,"completionTokens":3}}',
    )
    assert h.store.records(child) == [Message("user", "Hi"), Message("assistant", "Hello!")]
    assert h.store.meta(child).turn_count == 1
    assert [c.end_turn for c in h.store.saved_calls] == [True]


async def test_tool_rounds_feed_results_back_as_typed_tool_messages() -> None:
    order.clear()
    h = make_agent(
        tools=[add, slow_async],
        llm=ScriptedLLM(
            reply("thinking", call("add", "c1", a=1, b=2), call("slow_async", "c2")),
            reply(None, call("add", "c3", a=5, b=5)),
            reply("The sum is 3."),
        ),
    )
    child = await h.child()

    result = await h.agent.turn(child, "add things")

    assert order == ["add", "slow_async", "add"]  # in order, one after the other
    assert result.final_content == "The sum is 3."
    assert result.tool_round_count == 2
    assert result.tool_calls_executed == 3
    assert json.loads(result.raw_response) == {"content": "The sum is 3.", "toolCalls": []}

    first_reply = Message(
        "assistant",
        "thinking",
        tool_calls=(ToolCall("c1", "add", {"a": 1, "b": 2}), ToolCall("c2", "slow_async", {})),
    )
    second_reply = Message("assistant", "", tool_calls=(ToolCall("c3", "add", {"a": 5, "b": 5}),))
    results_1 = [
        Message("tool", '{"sum":3}', tool_call_id="c1"),
        Message("tool", f"async in {child}", tool_call_id="c2"),
    ]
    results_2 = [Message("tool", '{"sum":10}', tool_call_id="c3")]
    # The second call sees the first reply and its results as typed messages.
    assert list(h.llm.calls[1].messages) == [Message("user", "add things"), first_reply, *results_1]
    assert all(m.role != "user" or m.content == "add things" for m in h.llm.calls[2].messages)
    # One save per call, in order.
    assert [list(c.messages) for c in h.store.saved_calls] == [
        [Message("user", "add things"), first_reply],
        [*results_1, second_reply],
        [*results_2, Message("assistant", "The sum is 3.")],
    ]
    assert [c.end_turn for c in h.store.saved_calls] == [False, False, True]
    assert h.store.meta(child).turn_count == 1


async def test_the_llm_sees_builtins_first_then_user_tools() -> None:
    shadow = tool(name="stello_create_session", description="user copy")(lambda a, c: "x")
    h = make_agent(tools=[add, shadow], llm=ScriptedLLM("ok"))

    await h.agent.turn(h.root_id, "hi")

    tools = h.llm.calls[0].tools
    assert [t.name for t in tools] == ["stello_create_session", "add"]
    assert tools[0].description != "user copy"
    assert tools[1].input_schema == add.input_schema


async def test_a_tool_that_raises_reports_the_error_and_the_turn_goes_on() -> None:
    h = make_agent(tools=[explode], llm=ScriptedLLM(reply(None, call("explode", "e1")), "Sorry."))

    result = await h.agent.turn(h.root_id, "try")

    assert result.final_content == "Sorry."
    assert result.tool_calls_executed == 1
    assert h.llm.calls[1].messages[-1] == Message("tool", "kaboom", tool_call_id="e1")


async def test_an_unknown_tool_gets_an_error_result() -> None:
    h = make_agent(llm=ScriptedLLM(reply(None, call("nope", "u1")), "ok"))

    await h.agent.turn(h.root_id, "try")

    assert h.llm.calls[1].messages[-1] == Message("tool", "Unknown tool: nope", tool_call_id="u1")


async def test_exceeding_the_tool_round_limit_raises_and_keeps_completed_calls() -> None:
    asks_again = reply(None, call("add", "c", a=1, b=1))
    h = make_agent(
        tools=[add], llm=ScriptedLLM(asks_again, asks_again, asks_again), max_tool_rounds=2
    )
    child = await h.child()

    with pytest.raises(ToolLoopLimit) as raised:
        await h.agent.turn(child, "loop")

    assert "2" in raised.value.message
    assert len(h.llm.calls) == 3  # max + 1 calls
    assert len(h.store.saved_calls) == 3
    assert not any(c.end_turn for c in h.store.saved_calls)
    assert h.store.meta(child).turn_count == 0
    assert h.store.records(child)[0] == Message("user", "loop")
    assert h.jobs.submitted == []
    # The last reply's call was not run; it is stored with a result saying so, so the stored
    # history has no tool call without its result.
    assert h.store.records(child)[-2:] == [
        Message("assistant", "", tool_calls=asks_again.tool_calls),
        Message("tool", loop_limit_result(2), tool_call_id="c"),
    ]
    assert_every_tool_call_has_its_result(h.store.records(child))


async def test_zero_tool_rounds_allows_only_the_first_call() -> None:
    h = make_agent(
        tools=[add], llm=ScriptedLLM(reply(None, call("add", a=1, b=1))), max_tool_rounds=0
    )

    with pytest.raises(ToolLoopLimit):
        await h.agent.turn(h.root_id, "x")
    assert len(h.llm.calls) == 1


async def test_a_failed_llm_call_persists_nothing_and_the_session_stays_usable() -> None:
    h = make_agent(llm=ScriptedLLM())
    child = await h.child()
    h.llm.fail_next("upstream 500")

    with pytest.raises(LLMError) as raised:
        await h.agent.turn(child, "hi")

    assert raised.value.message == "upstream 500"
    assert h.store.records(child) == []
    assert h.store.meta(child).turn_count == 0
    h.llm.push("fine")
    assert (await h.agent.turn(child, "hi")).final_content == "fine"


async def test_a_failure_in_a_later_round_keeps_the_earlier_calls_only() -> None:
    h = make_agent(tools=[add], llm=ScriptedLLM(reply(None, call("add", "c1", a=1, b=1))))
    child = await h.child()
    h.llm.push(LLMError("down"))

    with pytest.raises(LLMError):
        await h.agent.turn(child, "hi")

    # The tool ran, so its result is kept: no stored tool call is left without its result.
    assert [m.role for m in h.store.records(child)] == ["user", "assistant", "tool"]
    assert_every_tool_call_has_its_result(h.store.records(child))
    assert h.store.meta(child).turn_count == 0
    h.llm.push("recovered")
    await h.agent.turn(child, "again")
    assert [m.role for m in h.llm.calls[-1].messages] == ["user", "assistant", "tool", "user"]


async def test_turn_count_grows_by_one_per_completed_turn() -> None:
    h = make_agent(
        tools=[add],
        llm=ScriptedLLM("a", reply(None, call("add", a=1, b=2)), "b", "c"),
        consolidate_every_n_turns=0,
    )
    child = await h.child()
    for text in ("one", "two", "three"):
        await h.agent.turn(child, text)
    assert h.store.meta(child).turn_count == 3


@pytest.mark.parametrize(("bad", "message"), [("", "input must not be empty"),
                                              (None, "input must be a string"),
                                              (42, "input must be a string"),
                                              (["x"], "input must be a string")])
async def test_input_is_validated_before_anything_else(bad: object, message: str) -> None:
    h = make_agent()
    with pytest.raises(InvalidInput, match=message):
        await h.agent.turn("no-such-session", bad)  # type: ignore[arg-type]
    assert h.llm.calls == []
