"""Provider text with lone surrogates (JSON `"\\ud800"` escapes, which Python decodes but no
UTF-8 output can hold) leaves every adapter as U+FFFD: replies, streamed deltas, tool names and
tool-call arguments, from the real loopback servers; offline scripts alike."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Literal

import pytest

from sessions_app.engine.llm import clean_json, clean_text, load_script
from sessions_app.engine.llm.anthropic_adapter import AnthropicLLM
from sessions_app.engine.llm.offline import OfflineLLM
from sessions_app.engine.llm.openai_compat import OpenAICompatLLM
from sessions_app.engine.turn import _parse_arguments
from sessions_app.engine.types import Message
from tests.support.llm_servers import (
    AnthropicServer,
    OpenAIServer,
    assemble_tool_calls,
    collect_stream,
    tool_call,
)

pytest_plugins = ["tests.support.llm_fixtures"]

HELLO = [Message("user", "hello")]
LONE = "a\ud800b\udfffc"  # sent by the servers as "a\ud800b\udfffc" JSON escapes
CLEAN = "a\ufffdb\ufffdc"
Provider = Literal["openai", "anthropic"]


def utf8_safe(value: Any) -> bool:
    json.dumps(value, ensure_ascii=False).encode("utf-8")  # raises on a lone surrogate
    return True


@pytest.fixture(params=["openai", "anthropic"])
async def adapter(request, openai_server: OpenAIServer, anthropic_server: AnthropicServer
                  ) -> AsyncIterator[tuple[Any, Any]]:
    """(loopback server, adapter on it) for each provider."""
    server: Any
    if request.param == "openai":
        server = openai_server
        llm: Any = OpenAICompatLLM(model="m", base_url=server.base_url, api_key="k",
                                   max_retries=0)
    else:
        server = anthropic_server
        llm = AnthropicLLM(model="m", base_url=server.base_url, api_key="k", max_retries=0)
    yield server, llm
    await llm.aclose()


async def test_a_reply_with_lone_surrogates_is_cleaned(adapter) -> None:
    server, llm = adapter
    server.reply(LONE)
    response = await llm.complete(HELLO)
    assert response.content == CLEAN


async def test_streamed_text_with_lone_surrogates_is_cleaned(adapter) -> None:
    server, llm = adapter
    server.reply(f"{LONE} and {LONE}")
    deltas = await collect_stream(llm, HELLO)
    assert "".join(d.text for d in deltas) == f"{CLEAN} and {CLEAN}"
    assert all(utf8_safe(d.text) for d in deltas)


async def test_tool_calls_with_lone_surrogates_are_cleaned(adapter) -> None:
    server, llm = adapter
    server.reply(tool_calls=[tool_call("id\ud800", "search\udc00", {"q\ud800": [LONE]})])
    response = await llm.complete(HELLO)
    (call,) = response.tool_calls
    assert (call.id, call.name, dict(call.input)) == ("id\ufffd", "search\ufffd",
                                                      {"q\ufffd": [CLEAN]})


async def test_streamed_tool_calls_with_lone_surrogates_are_cleaned(adapter) -> None:
    server, llm = adapter
    server.reply(tool_calls=[tool_call("c1", "search\udc00", {"q": LONE})])
    deltas = await collect_stream(llm, HELLO)
    assert all(utf8_safe([p.name, p.id]) for d in deltas for p in d.tool_calls)
    (call,) = assemble_tool_calls(deltas)
    assert call["name"] == "search\ufffd"
    # The engine parses the joined arguments (`turn._parse_arguments`), which cleans them.
    arguments = "".join(p.arguments for d in deltas for p in d.tool_calls)
    assert _parse_arguments(arguments) == {"q": CLEAN}


def test_arguments_with_escaped_lone_surrogates_are_cleaned_when_parsed() -> None:
    assert _parse_arguments('{"k\\ud800": ["\\udc00", {"x": "\\ud83d\\ude00"}]}') == {
        "k\ufffd": ["\ufffd", {"x": "\U0001F600"}]}


def test_clean_text_and_clean_json_keep_clean_values_as_they_are() -> None:
    text = "plain \U0001F600 text"
    assert clean_text(text) is text
    value = {"a": [1, "b", None]}
    assert clean_json(value) is value


async def test_an_offline_script_with_lone_surrogates_is_cleaned(tmp_path) -> None:
    script = tmp_path / "script.json"
    script.write_text('[{"content": "x\\ud800", "toolCalls": [{"id": "c", "name": "n", '
                      '"input": {"k": "\\udc00"}}]}, {"content": "y\\udfff"}]')
    llm = OfflineLLM(script=load_script(str(script)))
    first = await llm.complete(HELLO)
    assert first.content == "x\ufffd" and dict(first.tool_calls[0].input) == {"k": "\ufffd"}
    deltas = await collect_stream(llm, HELLO)
    assert "".join(d.text for d in deltas) == "y\ufffd"


