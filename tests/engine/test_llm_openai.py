"""OpenAICompatLLM against a real loopback HTTP server speaking the OpenAI protocol."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import pytest

from sessions_app.engine.errors import LLMError
from sessions_app.engine.llm import LLMSettings, build_llm, describe
from sessions_app.engine.llm.openai_compat import OpenAICompatLLM
from sessions_app.engine.types import Message, ToolCall, ToolSpec, Usage
from tests.support.llm_servers import (
    OpenAIServer,
    assemble_tool_calls,
    collect_stream,
    tool_call,
)

pytest_plugins = ["tests.support.llm_fixtures"]

Mode = Literal["complete", "stream"]
MakeLLM = Callable[..., OpenAICompatLLM]

SEARCH = ToolSpec(
    name="search",
    description="Search the web",
    input_schema={"type": "object", "properties": {"q": {"type": "string"}}},
)
HELLO = [Message("user", "hello")]


@pytest.fixture
async def make_llm(openai_server: OpenAIServer) -> AsyncIterator[MakeLLM]:
    """Adapters on the loopback server (small timeout, fast retries), closed after the test."""
    made: list[OpenAICompatLLM] = []

    def make(**overrides: Any) -> OpenAICompatLLM:
        options: dict[str, Any] = {
            "model": "gpt-test",
            "base_url": openai_server.base_url,
            "api_key": "test-key",
            "max_output_tokens": 256,
            "timeout_seconds": 0.5,
            "max_retries": 2,
        }
        options.update(overrides)
        llm = OpenAICompatLLM(**options)
        made.append(llm)
        return llm

    yield make
    for llm in made:
        await llm.aclose()


async def call(llm: OpenAICompatLLM, mode: Mode, messages: list[Message] = HELLO) -> Any:
    if mode == "complete":
        return await llm.complete(messages)
    return await collect_stream(llm, messages)


# --- the request -------------------------------------------------------------------------------


async def test_request_shape(openai_server: OpenAIServer, make_llm: MakeLLM) -> None:
    messages = [
        Message("system", "You are helpful."),
        Message("system", "Be brief."),
        Message("user", "find cats"),
        Message(
            "assistant",
            "",
            tool_calls=(
                ToolCall("call_1", "search", {"q": "cats"}),
                ToolCall("call_2", "search", {"q": "kittens", "n": 2}),
            ),
        ),
        Message("tool", '{"hits": 3}', tool_call_id="call_1"),
        Message("tool", '{"hits": 0}', tool_call_id="call_2"),
        Message("assistant", "Found 3.", tool_calls=(ToolCall("call_3", "search", {}),)),
        Message("tool", "none", tool_call_id="call_3"),
        Message("system", "A later system note."),
        Message("user", "thanks"),
    ]
    await make_llm().complete(messages, tools=[SEARCH])

    request = openai_server.last_request
    assert request.method == "POST"
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer test-key"
    assert request.body == {
        "model": "gpt-test",
        "max_tokens": 256,
        "messages": [
            {"role": "system", "content": "You are helpful.\n\nBe brief."},
            {"role": "user", "content": "find cats"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "search", "arguments": '{"q":"cats"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "search", "arguments": '{"q":"kittens","n":2}'},
                    },
                ],
            },
            {"role": "tool", "content": '{"hits": 3}', "tool_call_id": "call_1"},
            {"role": "tool", "content": '{"hits": 0}', "tool_call_id": "call_2"},
            {
                "role": "assistant",
                "content": "Found 3.",
                "tool_calls": [
                    {
                        "id": "call_3",
                        "type": "function",
                        "function": {"name": "search", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "content": "none", "tool_call_id": "call_3"},
            {"role": "system", "content": "A later system note."},
            {"role": "user", "content": "thanks"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "search",
                    "description": "Search the web",
                    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
                },
            }
        ],
    }


async def test_no_tools_key_without_tools(openai_server: OpenAIServer, make_llm: MakeLLM) -> None:
    await make_llm().complete([Message("assistant", ""), Message("user", "hi")])
    body = openai_server.last_request.body
    assert "tools" not in body
    assert body["messages"] == [
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "hi"},
    ]


async def test_stream_request_asks_for_usage(
    openai_server: OpenAIServer, make_llm: MakeLLM
) -> None:
    await collect_stream(make_llm(), HELLO, [SEARCH])
    body = openai_server.last_request.body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 256
    assert [t["function"]["name"] for t in body["tools"]] == ["search"]


async def test_a_call_skips_the_sdks_parameter_walk(
    openai_server: OpenAIServer, make_llm: MakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The body goes out as built: `chat.completions.create` would first walk it against the
    SDK's parameter types (most of a call's CPU), which the next test shows changes nothing."""
    from openai._utils import _transform

    walked: list[object] = []
    walk = _transform._async_transform_recursive

    async def counted(data: object, **kwargs: Any) -> object:
        walked.append(data)
        return await walk(data, **kwargs)

    monkeypatch.setattr(_transform, "_async_transform_recursive", counted)
    llm = make_llm()
    await llm.complete(HELLO, tools=[SEARCH])
    await collect_stream(llm, HELLO, [SEARCH])
    assert openai_server.last_request.body["stream"] is True  # both calls reached the server
    assert walked == []


@pytest.mark.parametrize("streaming", [False, True])
async def test_the_sdks_parameter_walk_would_send_the_same_body(streaming: bool) -> None:
    """Every kind of message and field we send, through the walk `create` does: unchanged."""
    from openai._utils import async_maybe_transform
    from openai.types.chat import completion_create_params as params

    llm = OpenAICompatLLM(model="gpt-test", base_url="http://127.0.0.1:9/v1", api_key="k")
    llm.temperature = 0.3
    messages = [
        Message("system", "You are helpful."),
        Message("user", "find cats"),
        Message("assistant", "", tool_calls=(ToolCall("call_1", "search", {"q": "cats"}),)),
        Message("tool", '{"hits": 3}', tool_call_id="call_1"),
        Message("assistant", "Found 3.", tool_calls=(ToolCall("call_2", "search", {}),)),
        Message("tool", "none"),
        Message("user", "thanks \u00e9\U0001F600"),
    ]
    body = llm._request(messages, [SEARCH])
    if streaming:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    kind = (params.CompletionCreateParamsStreaming if streaming
            else params.CompletionCreateParamsNonStreaming)
    try:
        assert await async_maybe_transform(body, kind) == body
    finally:
        await llm.aclose()


# --- complete ----------------------------------------------------------------------------------


async def test_complete_text_and_usage(openai_server: OpenAIServer, make_llm: MakeLLM) -> None:
    openai_server.reply("Hello there", usage=(12, 3))
    response = await make_llm().complete(HELLO)
    assert response.content == "Hello there"
    assert response.tool_calls == ()
    assert response.usage == Usage(prompt_tokens=12, completion_tokens=3)


async def test_complete_tool_calls(openai_server: OpenAIServer, make_llm: MakeLLM) -> None:
    openai_server.reply(
        None,
        tool_calls=[
            tool_call("call_a", "search", {"q": "cats", "filters": {"age": [1, 2]}}),
            tool_call("call_b", "clock", raw_arguments=""),
        ],
    )
    response = await make_llm().complete(HELLO, tools=[SEARCH])
    assert response.content is None
    assert response.tool_calls == (
        ToolCall("call_a", "search", {"q": "cats", "filters": {"age": [1, 2]}}),
        ToolCall("call_b", "clock", {}),
    )


async def test_complete_without_usage(openai_server: OpenAIServer, make_llm: MakeLLM) -> None:
    openai_server.reply("no usage here", usage=None)
    response = await make_llm().complete(HELLO)
    assert response.content == "no usage here"
    assert response.usage is None


# --- stream ------------------------------------------------------------------------------------


async def test_stream_text_chunks(openai_server: OpenAIServer, make_llm: MakeLLM) -> None:
    openai_server.reply("Hello streaming world", usage=(7, 4))
    deltas = await collect_stream(make_llm(), HELLO)
    texts = [d.text for d in deltas if d.text]
    assert texts == ["Hello", " streaming", " world"]
    assert all(d.text or d.tool_calls or d.usage for d in deltas)
    assert deltas[-1].usage == Usage(prompt_tokens=7, completion_tokens=4)


async def test_stream_tool_calls(openai_server: OpenAIServer, make_llm: MakeLLM) -> None:
    openai_server.reply(
        "Let me look.",
        tool_calls=[
            tool_call("call_a", "search", {"q": "cats"}),
            tool_call("call_b", "search", {"q": "dogs", "limit": 5}),
        ],
    )
    deltas = await collect_stream(make_llm(), HELLO, [SEARCH])
    assert "".join(d.text for d in deltas) == "Let me look."
    heads = [p for d in deltas for p in d.tool_calls if p.id]
    assert [(p.index, p.id, p.name) for p in heads] == [
        (0, "call_a", "search"),
        (1, "call_b", "search"),
    ]
    fragments = [p.arguments for d in deltas for p in d.tool_calls if p.index == 1 and p.arguments]
    assert len(fragments) >= 2
    assert assemble_tool_calls(deltas) == [
        {"id": "call_a", "name": "search", "input": {"q": "cats"}},
        {"id": "call_b", "name": "search", "input": {"q": "dogs", "limit": 5}},
    ]


async def test_stream_tolerates_servers_without_usage(
    openai_server: OpenAIServer, make_llm: MakeLLM
) -> None:
    openai_server.reply("fine", usage=None)
    deltas = await collect_stream(make_llm(), HELLO)
    assert [d.text for d in deltas] == ["fine"]
    assert all(d.usage is None for d in deltas)


async def test_stream_closed_early_by_the_consumer(
    openai_server: OpenAIServer, make_llm: MakeLLM
) -> None:
    openai_server.reply("one two three four")
    llm = make_llm()
    stream = llm.stream(HELLO)
    async for delta in stream:
        assert delta.text == "one"
        break
    await stream.aclose()  # type: ignore[attr-defined]
    assert (await llm.complete(HELLO)).content == "echo: hello"


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["complete", "stream"])
@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_client_errors_are_not_retried(
    openai_server: OpenAIServer, make_llm: MakeLLM, status: int, mode: Mode
) -> None:
    openai_server.error(status, f"problem number {status}", times=3)
    with pytest.raises(LLMError) as caught:
        await call(make_llm(), mode)
    assert (
        caught.value.message
        == f"OpenAI-compatible API error (HTTP {status}): problem number {status}"
    )
    assert caught.value.transient is False
    assert len(openai_server.requests) == 1


@pytest.mark.parametrize("mode", ["complete", "stream"])
@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503])
async def test_transient_errors_are_retried_then_reported(
    openai_server: OpenAIServer, make_llm: MakeLLM, status: int, mode: Mode
) -> None:
    openai_server.error(status, "try again later", times=5)
    with pytest.raises(LLMError) as caught:
        await call(make_llm(max_retries=2), mode)
    assert f"(HTTP {status}): try again later" in caught.value.message
    assert caught.value.transient is True
    assert len(openai_server.requests) == 3  # max_retries + 1


@pytest.mark.parametrize("max_retries", [0, 1, 3])
async def test_max_retries_is_configured(
    openai_server: OpenAIServer, make_llm: MakeLLM, max_retries: int
) -> None:
    openai_server.error(429, "slow down", times=10)
    with pytest.raises(LLMError):
        await make_llm(max_retries=max_retries).complete(HELLO)
    assert len(openai_server.requests) == max_retries + 1
    counts = [r.headers["x-stainless-retry-count"] for r in openai_server.requests]
    assert counts == [str(n) for n in range(max_retries + 1)]


@pytest.mark.parametrize("mode", ["complete", "stream"])
async def test_503_then_200_succeeds(
    openai_server: OpenAIServer, make_llm: MakeLLM, mode: Mode
) -> None:
    openai_server.error(503, "warming up").reply("ready now")
    result = await call(make_llm(), mode)
    text = result.content if mode == "complete" else "".join(d.text for d in result)
    assert text == "ready now"
    assert len(openai_server.requests) == 2
    assert openai_server.requests[0].body == openai_server.requests[1].body


@pytest.mark.parametrize("mode", ["complete", "stream"])
async def test_timeout_is_transient(
    openai_server: OpenAIServer, make_llm: MakeLLM, mode: Mode
) -> None:
    openai_server.delay(5, times=2)
    with pytest.raises(LLMError) as caught:
        await call(make_llm(timeout_seconds=0.3, max_retries=1), mode)
    assert "timed out" in caught.value.message
    assert caught.value.transient is True
    assert len(openai_server.requests) == 2


async def test_timeout_then_success(openai_server: OpenAIServer, make_llm: MakeLLM) -> None:
    openai_server.delay(5).reply("second try")
    response = await make_llm(timeout_seconds=0.3, max_retries=1).complete(HELLO)
    assert response.content == "second try"
    assert len(openai_server.requests) == 2


@pytest.mark.parametrize("mode", ["complete", "stream"])
async def test_malformed_body(openai_server: OpenAIServer, make_llm: MakeLLM, mode: Mode) -> None:
    openai_server.malformed('{"choices": [{"message": ')
    with pytest.raises(LLMError) as caught:
        await call(make_llm(), mode)
    assert "malformed response" in caught.value.message
    assert len(openai_server.requests) == 1


async def test_body_without_choices(openai_server: OpenAIServer, make_llm: MakeLLM) -> None:
    openai_server.malformed('{"id": "x", "object": "chat.completion", "choices": []}')
    with pytest.raises(LLMError, match="without choices"):
        await make_llm().complete(HELLO)


async def test_stream_cut_midway(openai_server: OpenAIServer, make_llm: MakeLLM) -> None:
    openai_server.cut("this answer will be cut off before the end")
    received: list[str] = []
    with pytest.raises(LLMError) as caught:
        async for delta in make_llm().stream(HELLO):
            received.append(delta.text)
    assert received  # some text arrived before the cut
    assert "connection error" in caught.value.message
    assert caught.value.transient is True
    assert len(openai_server.requests) == 1  # never retried once bytes were streamed


async def test_stream_cut_in_a_tool_call(openai_server: OpenAIServer, make_llm: MakeLLM) -> None:
    openai_server.cut(None, tool_calls=[tool_call("call_a", "search", {"q": "a long query"})])
    with pytest.raises(LLMError) as caught:
        await collect_stream(make_llm(), HELLO, [SEARCH])
    assert caught.value.transient is True


async def test_json_body_cut_midway(openai_server: OpenAIServer, make_llm: MakeLLM) -> None:
    openai_server.cut("a reply whose body stops half-way", times=2)
    with pytest.raises(LLMError) as caught:
        await make_llm(max_retries=1).complete(HELLO)
    assert "connection error" in caught.value.message
    assert caught.value.transient is True
    assert len(openai_server.requests) == 2  # a cut before the body is complete is retried


async def test_error_event_inside_stream(openai_server: OpenAIServer, make_llm: MakeLLM) -> None:
    openai_server.stream_error("The server had an error while processing your request.")
    with pytest.raises(LLMError) as caught:
        await collect_stream(make_llm(), HELLO)
    assert "The server had an error while processing your request." in caught.value.message


@pytest.mark.parametrize("mode", ["complete", "stream"])
@pytest.mark.parametrize("arguments", ['{"q": "unterminated', "[1, 2]", "not json at all"])
async def test_tool_arguments_not_json(
    openai_server: OpenAIServer, make_llm: MakeLLM, mode: Mode, arguments: str
) -> None:
    openai_server.reply(tool_calls=[tool_call("call_a", "search", raw_arguments=arguments)])
    with pytest.raises(LLMError) as caught:
        await call(make_llm(), mode)
    assert caught.value.message.startswith(
        "LLM returned tool-call arguments that are not valid JSON"
    )
    assert "'search'" in caught.value.message


async def test_connection_refused_is_transient() -> None:
    with OpenAIServer() as server:
        base_url = server.base_url
    llm = OpenAICompatLLM(
        model="gpt-test", base_url=base_url, api_key="k", timeout_seconds=0.5, max_retries=0
    )
    try:
        with pytest.raises(LLMError) as caught:
            await llm.complete(HELLO)
    finally:
        await llm.aclose()
    assert "connection error" in caught.value.message
    assert caught.value.transient is True


# --- factory -----------------------------------------------------------------------------------


async def test_build_llm_uses_the_settings(openai_server: OpenAIServer) -> None:
    settings = LLMSettings(
        provider="openai",
        model="my-model",
        base_url=openai_server.base_url,
        api_key="sk-very-secret",
        max_context_tokens=32000,
        max_output_tokens=77,
        timeout_seconds=0.5,
        max_retries=0,
    )
    llm = build_llm(settings)
    try:
        assert isinstance(llm, OpenAICompatLLM)
        assert (llm.provider, llm.model, llm.max_context_tokens) == ("openai", "my-model", 32000)
        openai_server.error(503, "down")
        with pytest.raises(LLMError):
            await llm.complete(HELLO)
        assert len(openai_server.requests) == 1  # max_retries=0 reached the SDK
        await llm.complete(HELLO)
        request = openai_server.last_request
        assert request.body["model"] == "my-model"
        assert request.body["max_tokens"] == 77
        assert request.headers["authorization"] == "Bearer sk-very-secret"
    finally:
        await llm.aclose()
    line = describe(settings)
    assert "provider=openai" in line and "model=my-model" in line
    assert openai_server.base_url in line
    assert "sk-very-secret" not in line


# --- cached tokens (usage accounting) ------------------------------------------------------


async def test_cached_tokens_come_from_the_prompt_details(
    openai_server: OpenAIServer, make_llm: MakeLLM
) -> None:
    openai_server.reply("cached", usage=(100, 5, 60))
    response = await make_llm().complete(HELLO)
    assert response.usage == Usage(prompt_tokens=100, completion_tokens=5, cached_tokens=60)
    assert openai_server.requests[-1].body.get("stream_options") is None


async def test_a_stream_reports_cached_tokens_in_its_usage_chunk(
    openai_server: OpenAIServer, make_llm: MakeLLM
) -> None:
    openai_server.reply("cached stream", usage=(90, 4, 30))
    deltas = await collect_stream(make_llm(), HELLO)
    assert deltas[-1].usage == Usage(prompt_tokens=90, completion_tokens=4, cached_tokens=30)
