"""AnthropicLLM against a real loopback HTTP server speaking the Anthropic Messages protocol."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import pytest

from sessions_app.engine.errors import LLMError
from sessions_app.engine.llm import LLMSettings, build_llm, describe
from sessions_app.engine.llm.anthropic_adapter import AnthropicLLM
from sessions_app.engine.types import Message, ToolCall, ToolSpec, Usage
from tests.support.llm_servers import (
    AnthropicServer,
    assemble_tool_calls,
    collect_stream,
    tool_call,
)

pytest_plugins = ["tests.support.llm_fixtures"]

Mode = Literal["complete", "stream"]
MakeLLM = Callable[..., AnthropicLLM]

SEARCH = ToolSpec(
    name="search",
    description="Search the web",
    input_schema={"type": "object", "properties": {"q": {"type": "string"}}},
)
HELLO = [Message("user", "hello")]


@pytest.fixture
async def make_llm(anthropic_server: AnthropicServer) -> AsyncIterator[MakeLLM]:
    """Adapters on the loopback server (small timeout, fast retries), closed after the test."""
    made: list[AnthropicLLM] = []

    def make(**overrides: Any) -> AnthropicLLM:
        options: dict[str, Any] = {
            "model": "claude-test",
            "base_url": anthropic_server.base_url,
            "api_key": "test-key",
            "max_output_tokens": 256,
            "timeout_seconds": 0.5,
            "max_retries": 2,
        }
        options.update(overrides)
        llm = AnthropicLLM(**options)
        made.append(llm)
        return llm

    yield make
    for llm in made:
        await llm.aclose()


async def call(llm: AnthropicLLM, mode: Mode, messages: list[Message] = HELLO) -> Any:
    if mode == "complete":
        return await llm.complete(messages)
    return await collect_stream(llm, messages)


# --- the request -------------------------------------------------------------------------------


async def test_request_shape(anthropic_server: AnthropicServer, make_llm: MakeLLM) -> None:
    messages = [
        Message("system", "You are helpful."),
        Message("system", "Be brief."),
        Message("user", "find cats"),
        Message(
            "assistant",
            "",
            tool_calls=(
                ToolCall("toolu_1", "search", {"q": "cats"}),
                ToolCall("toolu_2", "search", {"q": "kittens", "n": 2}),
            ),
        ),
        Message("tool", '{"hits": 3}', tool_call_id="toolu_1"),
        Message("tool", '{"hits": 0}', tool_call_id="toolu_2"),
        Message("assistant", "Found 3.", tool_calls=(ToolCall("toolu_3", "search", {}),)),
        Message("tool", "none", tool_call_id="toolu_3"),
        Message("user", "and dogs?"),
        Message("assistant", "Plenty of dogs."),
        Message("system", "A later system note."),
        Message("user", "thanks"),
    ]
    await make_llm().complete(messages, tools=[SEARCH])

    request = anthropic_server.last_request
    assert request.method == "POST"
    assert request.path == "/v1/messages"
    assert request.headers["authorization"] == "Bearer test-key"
    assert "anthropic-version" in request.headers
    assert request.body == {
        "model": "claude-test",
        "max_tokens": 256,
        "system": "You are helpful.\n\nBe brief.\n\nA later system note.",
        "messages": [
            {"role": "user", "content": "find cats"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "search", "input": {"q": "cats"}},
                    {
                        "type": "tool_use",
                        "id": "toolu_2",
                        "name": "search",
                        "input": {"q": "kittens", "n": 2},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": '{"hits": 3}'},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": '{"hits": 0}'},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Found 3."},
                    {"type": "tool_use", "id": "toolu_3", "name": "search", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_3", "content": "none"}],
            },
            {"role": "user", "content": "and dogs?"},
            {"role": "assistant", "content": "Plenty of dogs."},
            {"role": "user", "content": "thanks"},
        ],
        "tools": [
            {
                "name": "search",
                "description": "Search the web",
                "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
            }
        ],
    }


async def test_no_system_and_no_tools_when_absent(
    anthropic_server: AnthropicServer, make_llm: MakeLLM
) -> None:
    await make_llm().complete(HELLO)
    body = anthropic_server.last_request.body
    assert "system" not in body
    assert "tools" not in body
    assert body["messages"] == [{"role": "user", "content": "hello"}]


async def test_stream_request(anthropic_server: AnthropicServer, make_llm: MakeLLM) -> None:
    await collect_stream(make_llm(), HELLO, [SEARCH])
    body = anthropic_server.last_request.body
    assert body["stream"] is True
    assert body["max_tokens"] == 256
    assert [t["name"] for t in body["tools"]] == ["search"]


# --- complete ----------------------------------------------------------------------------------


async def test_complete_text_and_usage(
    anthropic_server: AnthropicServer, make_llm: MakeLLM
) -> None:
    anthropic_server.reply("Hello there", usage=(12, 3))
    response = await make_llm().complete(HELLO)
    assert response.content == "Hello there"
    assert response.tool_calls == ()
    assert response.usage == Usage(prompt_tokens=12, completion_tokens=3)


async def test_complete_tool_calls(anthropic_server: AnthropicServer, make_llm: MakeLLM) -> None:
    anthropic_server.reply(
        "Let me search.",
        tool_calls=[
            tool_call("toolu_a", "search", {"q": "cats", "filters": {"age": [1, 2]}}),
            tool_call("toolu_b", "clock"),
        ],
    )
    response = await make_llm().complete(HELLO, tools=[SEARCH])
    assert response.content == "Let me search."
    assert response.tool_calls == (
        ToolCall("toolu_a", "search", {"q": "cats", "filters": {"age": [1, 2]}}),
        ToolCall("toolu_b", "clock", {}),
    )


async def test_complete_only_tool_calls_has_no_content(
    anthropic_server: AnthropicServer, make_llm: MakeLLM
) -> None:
    anthropic_server.reply(None, tool_calls=[tool_call("toolu_a", "search", {"q": "x"})])
    response = await make_llm().complete(HELLO, tools=[SEARCH])
    assert response.content is None
    assert [c.name for c in response.tool_calls] == ["search"]


# --- stream ------------------------------------------------------------------------------------


async def test_stream_text_chunks(anthropic_server: AnthropicServer, make_llm: MakeLLM) -> None:
    anthropic_server.reply("Hello streaming world", usage=(7, 4))
    deltas = await collect_stream(make_llm(), HELLO)
    texts = [d.text for d in deltas if d.text]
    assert texts == ["Hello", " streaming", " world"]
    assert all(d.text or d.tool_calls or d.usage for d in deltas)
    assert deltas[-1].usage == Usage(prompt_tokens=7, completion_tokens=4)


async def test_stream_tool_calls_carry_id_and_name(
    anthropic_server: AnthropicServer, make_llm: MakeLLM
) -> None:
    anthropic_server.reply(
        "Let me look.",
        tool_calls=[
            tool_call("toolu_a", "search", {"q": "cats"}),
            tool_call("toolu_b", "search", {"q": "dogs", "limit": 5}),
        ],
    )
    deltas = await collect_stream(make_llm(), HELLO, [SEARCH])
    assert "".join(d.text for d in deltas) == "Let me look."
    heads = [p for d in deltas for p in d.tool_calls if p.id]
    # indices are the content-block indices (block 0 is the text)
    assert [(p.index, p.id, p.name) for p in heads] == [
        (1, "toolu_a", "search"),
        (2, "toolu_b", "search"),
    ]
    fragments = [p.arguments for d in deltas for p in d.tool_calls if p.index == 2 and p.arguments]
    assert len(fragments) >= 2
    assert assemble_tool_calls(deltas) == [
        {"id": "toolu_a", "name": "search", "input": {"q": "cats"}},
        {"id": "toolu_b", "name": "search", "input": {"q": "dogs", "limit": 5}},
    ]


async def test_stream_without_usage(anthropic_server: AnthropicServer, make_llm: MakeLLM) -> None:
    anthropic_server.reply("fine", usage=None)
    deltas = await collect_stream(make_llm(), HELLO)
    assert "".join(d.text for d in deltas) == "fine"
    assert all(d.usage is None for d in deltas)


async def test_stream_closed_early_by_the_consumer(
    anthropic_server: AnthropicServer, make_llm: MakeLLM
) -> None:
    anthropic_server.reply("one two three four")
    llm = make_llm()
    stream = llm.stream(HELLO)
    async for delta in stream:
        assert delta.text == "one"
        break
    await stream.aclose()  # type: ignore[attr-defined]
    assert (await llm.complete(HELLO)).content == "echo: hello"


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["complete", "stream"])
@pytest.mark.parametrize("status", [400, 401, 403, 404, 413])
async def test_client_errors_are_not_retried(
    anthropic_server: AnthropicServer, make_llm: MakeLLM, status: int, mode: Mode
) -> None:
    anthropic_server.error(status, f"problem number {status}", times=3)
    with pytest.raises(LLMError) as caught:
        await call(make_llm(), mode)
    assert caught.value.message == f"Anthropic API error (HTTP {status}): problem number {status}"
    assert caught.value.transient is False
    assert len(anthropic_server.requests) == 1


@pytest.mark.parametrize("mode", ["complete", "stream"])
@pytest.mark.parametrize("status", [408, 409, 429, 500, 503, 529])
async def test_transient_errors_are_retried_then_reported(
    anthropic_server: AnthropicServer, make_llm: MakeLLM, status: int, mode: Mode
) -> None:
    anthropic_server.error(status, "try again later", times=5)
    with pytest.raises(LLMError) as caught:
        await call(make_llm(max_retries=2), mode)
    assert f"(HTTP {status}): try again later" in caught.value.message
    assert caught.value.transient is True
    assert len(anthropic_server.requests) == 3  # max_retries + 1


@pytest.mark.parametrize("max_retries", [0, 1, 3])
async def test_max_retries_is_configured(
    anthropic_server: AnthropicServer, make_llm: MakeLLM, max_retries: int
) -> None:
    anthropic_server.error(429, "slow down", times=10)
    with pytest.raises(LLMError):
        await make_llm(max_retries=max_retries).complete(HELLO)
    assert len(anthropic_server.requests) == max_retries + 1
    counts = [r.headers["x-stainless-retry-count"] for r in anthropic_server.requests]
    assert counts == [str(n) for n in range(max_retries + 1)]


@pytest.mark.parametrize("mode", ["complete", "stream"])
async def test_503_then_200_succeeds(
    anthropic_server: AnthropicServer, make_llm: MakeLLM, mode: Mode
) -> None:
    anthropic_server.error(503, "warming up").reply("ready now")
    result = await call(make_llm(), mode)
    text = result.content if mode == "complete" else "".join(d.text for d in result)
    assert text == "ready now"
    assert len(anthropic_server.requests) == 2
    assert anthropic_server.requests[0].body == anthropic_server.requests[1].body


@pytest.mark.parametrize("mode", ["complete", "stream"])
async def test_timeout_is_transient(
    anthropic_server: AnthropicServer, make_llm: MakeLLM, mode: Mode
) -> None:
    anthropic_server.delay(5, times=2)
    with pytest.raises(LLMError) as caught:
        await call(make_llm(timeout_seconds=0.3, max_retries=1), mode)
    assert "timed out" in caught.value.message
    assert caught.value.transient is True
    assert len(anthropic_server.requests) == 2


async def test_timeout_then_success(anthropic_server: AnthropicServer, make_llm: MakeLLM) -> None:
    anthropic_server.delay(5).reply("second try")
    response = await make_llm(timeout_seconds=0.3, max_retries=1).complete(HELLO)
    assert response.content == "second try"
    assert len(anthropic_server.requests) == 2


@pytest.mark.parametrize("mode", ["complete", "stream"])
async def test_malformed_body(
    anthropic_server: AnthropicServer, make_llm: MakeLLM, mode: Mode
) -> None:
    anthropic_server.malformed('{"content": [{"type": ')
    with pytest.raises(LLMError) as caught:
        await call(make_llm(), mode)
    assert "malformed response" in caught.value.message
    assert len(anthropic_server.requests) == 1


async def test_body_without_content(anthropic_server: AnthropicServer, make_llm: MakeLLM) -> None:
    anthropic_server.malformed('{"id": "msg_1", "type": "message", "role": "assistant"}')
    with pytest.raises(LLMError, match="without content blocks"):
        await make_llm().complete(HELLO)


async def test_stream_cut_midway(anthropic_server: AnthropicServer, make_llm: MakeLLM) -> None:
    anthropic_server.cut("this answer will be cut off before the end")
    received: list[str] = []
    with pytest.raises(LLMError) as caught:
        async for delta in make_llm().stream(HELLO):
            received.append(delta.text)
    assert received  # some text arrived before the cut
    assert "connection error" in caught.value.message
    assert caught.value.transient is True
    assert len(anthropic_server.requests) == 1  # never retried once bytes were streamed


async def test_stream_cut_in_a_tool_call(
    anthropic_server: AnthropicServer, make_llm: MakeLLM
) -> None:
    anthropic_server.cut(None, tool_calls=[tool_call("toolu_a", "search", {"q": "long query"})])
    with pytest.raises(LLMError) as caught:
        await collect_stream(make_llm(), HELLO, [SEARCH])
    assert caught.value.transient is True


async def test_json_body_cut_midway(anthropic_server: AnthropicServer, make_llm: MakeLLM) -> None:
    anthropic_server.cut("a reply whose body stops half-way", times=2)
    with pytest.raises(LLMError) as caught:
        await make_llm(max_retries=1).complete(HELLO)
    assert "connection error" in caught.value.message
    assert caught.value.transient is True
    assert len(anthropic_server.requests) == 2  # a cut before the body is complete is retried


@pytest.mark.parametrize(
    ("error_type", "transient"), [("overloaded_error", True), ("invalid_request_error", False)]
)
async def test_error_event_inside_stream(
    anthropic_server: AnthropicServer, make_llm: MakeLLM, error_type: str, transient: bool
) -> None:
    anthropic_server.stream_error("Overloaded right now", error_type=error_type)
    with pytest.raises(LLMError) as caught:
        await collect_stream(make_llm(), HELLO)
    assert (
        caught.value.message == f"Anthropic API stream error ({error_type}): Overloaded right now"
    )
    assert caught.value.transient is transient


@pytest.mark.parametrize("mode", ["complete", "stream"])
@pytest.mark.parametrize("arguments", ['{"q": "unterminated', "[1, 2]", "not json at all"])
async def test_tool_arguments_not_json(
    anthropic_server: AnthropicServer, make_llm: MakeLLM, mode: Mode, arguments: str
) -> None:
    anthropic_server.reply(tool_calls=[tool_call("toolu_a", "search", raw_arguments=arguments)])
    with pytest.raises(LLMError) as caught:
        await call(make_llm(), mode)
    assert caught.value.message.startswith(
        "LLM returned tool-call arguments that are not valid JSON"
    )
    assert "'search'" in caught.value.message


async def test_connection_refused_is_transient() -> None:
    with AnthropicServer() as server:
        base_url = server.base_url
    llm = AnthropicLLM(
        model="claude-test", base_url=base_url, api_key="k", timeout_seconds=0.5, max_retries=0
    )
    try:
        with pytest.raises(LLMError) as caught:
            await llm.complete(HELLO)
    finally:
        await llm.aclose()
    assert "connection error" in caught.value.message
    assert caught.value.transient is True


# --- factory -----------------------------------------------------------------------------------


async def test_build_llm_uses_the_settings(anthropic_server: AnthropicServer) -> None:
    settings = LLMSettings(
        provider="anthropic",
        model="claude-x",
        base_url=anthropic_server.base_url,
        api_key="sk-ant-very-secret",
        max_context_tokens=200000,
        max_output_tokens=77,
        timeout_seconds=0.5,
        max_retries=0,
    )
    llm = build_llm(settings)
    try:
        assert isinstance(llm, AnthropicLLM)
        assert (llm.provider, llm.model, llm.max_context_tokens) == (
            "anthropic",
            "claude-x",
            200000,
        )
        anthropic_server.error(503, "down")
        with pytest.raises(LLMError):
            await llm.complete(HELLO)
        assert len(anthropic_server.requests) == 1  # max_retries=0 reached the SDK
        await llm.complete(HELLO)
        request = anthropic_server.last_request
        assert request.body["model"] == "claude-x"
        assert request.body["max_tokens"] == 77
        assert request.headers["authorization"] == "Bearer sk-ant-very-secret"
    finally:
        await llm.aclose()
    line = describe(settings)
    assert "provider=anthropic" in line and "model=claude-x" in line
    assert "sk-ant-very-secret" not in line


# --- cached tokens (usage accounting) ------------------------------------------------------


async def test_cache_reads_count_as_input_and_as_cached(
    anthropic_server: AnthropicServer, make_llm: MakeLLM
) -> None:
    # The server sends input_tokens=40 and cache_read_input_tokens=60: 100 input tokens in all.
    anthropic_server.reply("cached", usage=(100, 5, 60))
    response = await make_llm().complete(HELLO)
    assert response.usage == Usage(prompt_tokens=100, completion_tokens=5, cached_tokens=60)


async def test_a_stream_takes_cached_tokens_from_message_start(
    anthropic_server: AnthropicServer, make_llm: MakeLLM
) -> None:
    anthropic_server.reply("cached stream", usage=(90, 4, 30))
    deltas = await collect_stream(make_llm(), HELLO)
    assert deltas[-1].usage == Usage(prompt_tokens=90, completion_tokens=4, cached_tokens=30)
