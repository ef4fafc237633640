"""Streaming (every round streamed, tool rounds included): chunks per round, tool-call assembly,
persistence, the final TurnResult, errors before the first chunk, lock release."""

from __future__ import annotations

import json

import pytest

from sessions_app.engine.errors import (
    InvalidInput,
    LLMError,
    SessionArchived,
    SessionNotFound,
    ToolLoopLimit,
)
from sessions_app.engine.tools import ToolContext, tool
from sessions_app.engine.turn import StreamAssembler, loop_limit_result
from sessions_app.engine.types import (
    Message,
    StreamChunk,
    StreamDelta,
    ToolCall,
    ToolCallDelta,
    TurnResult,
    Usage,
)

from .fakes import ScriptedLLM, call, make_agent, reply


@tool(name="lookup", description="looks up a key")
def lookup(args: dict, context: ToolContext) -> str:
    return f"value of {args['key']}"


async def collect(stream: object) -> list[StreamChunk | TurnResult]:
    return [item async for item in stream]  # type: ignore[attr-defined]


async def test_chunks_of_every_round_then_the_result_last() -> None:
    h = make_agent(
        tools=[lookup],
        llm=ScriptedLLM(
            reply("Let me check.", call("lookup", "k1", key="x")),
            reply("It is value of x."),
        ),
    )
    child = await h.child()

    items = await collect(h.agent.stream(child, "what is x?"))

    chunks, result = items[:-1], items[-1]
    assert all(isinstance(c, StreamChunk) and c.text for c in chunks)
    assert [(c.round, c.text) for c in chunks] == [
        (0, "Let "),
        (0, "me "),
        (0, "check."),
        (1, "It "),
        (1, "is "),
        (1, "value "),
        (1, "of "),
        (1, "x."),
    ]
    assert result == TurnResult(
        final_content="It is value of x.",
        tool_round_count=1,
        tool_calls_executed=1,
        raw_response='{"content":"It is value of x.","toolCalls":[]}',
    )
    assert all(c.streamed for c in h.llm.calls)


async def test_streamed_rounds_are_persisted_like_plain_turns() -> None:
    h = make_agent(
        tools=[lookup],
        llm=ScriptedLLM(reply("", call("lookup", "k1", key="a")), reply("done")),
    )
    child = await h.child()

    await collect(h.agent.stream(child, "go"))

    reply_with_call = Message("assistant", "", tool_calls=(ToolCall("k1", "lookup", {"key": "a"}),))
    assert [list(c.messages) for c in h.store.saved_calls] == [
        [Message("user", "go"), reply_with_call],
        [Message("tool", "value of a", tool_call_id="k1"), Message("assistant", "done")],
    ]
    assert [c.end_turn for c in h.store.saved_calls] == [False, True]
    assert h.store.meta(child).turn_count == 1
    assert h.llm.calls[1].messages[-2:] == (
        reply_with_call,
        Message("tool", "value of a", tool_call_id="k1"),
    )


async def test_a_streamed_turn_keeps_every_tool_call_answered_when_it_fails() -> None:
    asks = reply("", call("lookup", "k1", key="a"))
    h = make_agent(tools=[lookup], llm=ScriptedLLM(asks, asks), max_tool_rounds=1)
    over = await h.child("Over the limit")
    with pytest.raises(ToolLoopLimit):
        await collect(h.agent.stream(over, "loop"))
    assert [(m.role, m.tool_call_id) for m in h.store.records(over)] == [
        ("user", None), ("assistant", None), ("tool", "k1"), ("assistant", None), ("tool", "k1")]
    assert h.store.records(over)[-1].content == loop_limit_result(1)

    h.llm.push(asks, LLMError("down"))
    failed = await h.child("Failed later")
    with pytest.raises(LLMError):
        await collect(h.agent.stream(failed, "fail"))
    assert h.store.records(failed)[-1] == Message("tool", "value of a", tool_call_id="k1")


async def test_usage_from_a_delta_is_kept_in_the_raw_response() -> None:
    h = make_agent(llm=ScriptedLLM(reply("Hi", usage=Usage(4, 1))))

    items = await collect(h.agent.stream(h.root_id, "hello"))

    result = items[-1]
    assert isinstance(result, TurnResult)
    assert json.loads(result.raw_response)["usage"] == {"promptTokens": 4, "completionTokens": 1}


async def test_non_json_streamed_arguments_raise_llm_error_and_persist_nothing() -> None:
    broken = [
        StreamDelta(text="Calling"),
        StreamDelta(tool_calls=(ToolCallDelta(0, id="t", name="lookup", arguments='{"key": '),)),
    ]
    h = make_agent(tools=[lookup], llm=ScriptedLLM(broken))
    child = await h.child()

    received: list[object] = []
    with pytest.raises(LLMError, match="not valid JSON"):
        async for item in h.agent.stream(child, "go"):
            received.append(item)

    assert received == [StreamChunk("Calling", 0)]
    assert h.store.records(child) == []
    assert not h.locks.is_held(child)


def test_the_assembler_joins_tool_call_pieces_by_index_with_defaults() -> None:
    assembler = StreamAssembler()
    assembler.add(StreamDelta(tool_calls=(ToolCallDelta(1, arguments='{"b"'),)))
    assembler.add(StreamDelta(tool_calls=(ToolCallDelta(0, id="first", name="one"),)))
    assembler.add(StreamDelta(text="hi", tool_calls=(ToolCallDelta(1, arguments=": 2}"),)))
    assembler.add(StreamDelta(usage=Usage(1, 2)))

    response = assembler.response()

    assert response.content == "hi"
    assert response.tool_calls == (
        ToolCall("first", "one", {}),
        ToolCall("tool_1", "unknown_tool", {"b": 2}),
    )
    assert response.usage == Usage(1, 2)


@pytest.mark.parametrize("arguments", ["[1, 2]", "not json", '"text"'])
def test_arguments_that_are_not_a_json_object_are_rejected(arguments: str) -> None:
    assembler = StreamAssembler()
    assembler.add(
        StreamDelta(tool_calls=(ToolCallDelta(0, id="a", name="x", arguments=arguments),))
    )
    with pytest.raises(LLMError, match="not valid JSON"):
        assembler.response()


async def test_errors_raise_on_the_first_step_before_any_chunk() -> None:
    h = make_agent(llm=ScriptedLLM("never"))
    child = await h.child()
    await h.agent.archive(child)

    with pytest.raises(InvalidInput):
        await anext(h.agent.stream(child, ""))
    with pytest.raises(SessionNotFound):
        await anext(h.agent.stream("missing", "hi"))
    with pytest.raises(SessionArchived):
        await anext(h.agent.stream(child, "hi"))
    assert h.llm.calls == []


async def test_closing_the_stream_early_releases_the_lock() -> None:
    h = make_agent(llm=ScriptedLLM("one two three", "next"))
    child = await h.child()

    stream = h.agent.stream(child, "hi")
    first = await anext(stream)
    assert first == StreamChunk("one ", 0)
    assert h.locks.is_held(child)
    await stream.aclose()

    assert not h.locks.is_held(child)
    assert (await h.agent.turn(child, "again")).final_content == "next"


async def test_a_completed_stream_triggers_consolidation_like_a_turn() -> None:
    h = make_agent(llm=ScriptedLLM("a"), consolidate_every_n_turns=1)
    child = await h.child()

    await collect(h.agent.stream(child, "hi"))

    assert h.jobs.submitted == [f"consolidate:{child}"]
