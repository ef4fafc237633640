"""LLM faults on the streaming path, through the WebSocket and the real ASGI application.

The runtime is pointed at a loopback OpenAI (or Anthropic) server that misbehaves on cue
(tests/support/llm_servers.py). The contract (README, "WebSocket API"): if a stream fails
mid-way, the deltas already sent stay sent, an `error` follows, and no `stream.end` comes.
Beyond it, these tests hold the server to what the REST fault tests hold the turn to: the
failed call persists nothing (records and turnCount unchanged; in a later tool round, only the
calls that completed, committed together), no `session.updated` is announced (a second
connection watches the session to hear it), the session's lock is released, and the next
`session.stream` on the same connection works.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from sessions_app.models import Record, Session
from sessions_app.runtime.pool import runtimes
from tests.support.llm_servers import LoopbackLLMServer, OpenAIServer, tool_call
from tests.ws.conftest import SPACE_LABEL, finish_ws_work
from tests.ws.test_consumer import bounded, enter, nothing_more, open_ws, recv

pytest_plugins = ["tests.support.llm_fixtures"]
pytestmark = pytest.mark.django_db(transaction=True)

UseLLM = Callable[..., Awaitable[None]]
PROVIDER = "OpenAI-compatible API"  # how the OpenAI adapter names itself in its errors


# -- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture
async def use_llm(settings) -> AsyncIterator[UseLLM]:
    """`await use_llm(server, retries=..., llm_timeout=...)`: the chat (and memory) LLM is that
    loopback server from the next frame on (the runtime is rebuilt from the settings)."""

    async def use(server: LoopbackLLMServer, *, retries: int = 0,
                  llm_timeout: float = 5.0) -> None:
        provider = "openai" if isinstance(server, OpenAIServer) else "anthropic"
        settings.STELLO = {**settings.STELLO, "LLM": {
            "provider": provider, "model": "test-model", "base_url": server.base_url,
            "api_key": "test-key", "max_context_tokens": 128000, "max_output_tokens": 256,
            "timeout_seconds": llm_timeout, "max_retries": retries, "script_path": None,
        }, "MEMORY_LLM": None, "CONSOLIDATE_EVERY_N_TURNS": 0, "CONSOLIDATE_ON_ARCHIVE": False}
        await runtimes.aclose_current()

    await runtimes.aclose_current()
    yield use
    await finish_ws_work()


@pytest.fixture
async def ws(space_id, root_id, alice_key) -> AsyncIterator[WebsocketCommunicator]:
    """A connection inside the root session; `ws.watcher` is a second one that watches it."""
    communicator = await open_ws(space_id, alice_key)
    await enter(communicator, root_id)
    watcher = await open_ws(space_id, alice_key)
    await watcher.send_json_to({"type": "session.enter", "sessionId": root_id, "watch": True})
    assert (await recv(watcher))["type"] == "session.entered"
    communicator.watcher = watcher
    yield communicator
    assert not communicator.future.done(), "the application stopped"
    await communicator.disconnect()
    await watcher.disconnect()


async def nothing_announced(communicator: WebsocketCommunicator) -> None:
    """Nothing more on the connection, and no `session.updated` on its watcher."""
    await nothing_more(communicator)
    await nothing_more(communicator.watcher)


async def stream(communicator: WebsocketCommunicator, text: str) -> list[dict[str, Any]]:
    """Send `session.stream`; its frames up to and including `stream.end` or `error`."""
    await communicator.send_json_to({"type": "session.stream", "input": text})
    frames = [await recv(communicator)]
    while frames[-1]["type"] == "stream.delta":
        frames.append(await recv(communicator))
    return frames


async def streamed_ok(communicator: WebsocketCommunicator, text: str, session_id: str,
                      turn_count: int) -> str:
    """A successful stream: deltas that make up `finalContent`, `stream.end`; the watcher hears
    the `session.updated` of that turn (the streaming connection does not: its own turn).
    Returns the final content."""
    frames = await stream(communicator, text)
    *deltas, end = frames
    assert end["type"] == "stream.end", frames
    assert deltas and all(d["type"] == "stream.delta" and d["chunk"] for d in deltas), frames
    final = end["result"]["turn"]["finalContent"]
    assert "".join(d["chunk"] for d in deltas) == final
    assert await recv(communicator.watcher) == {"type": "session.updated",
                                                "sessionId": session_id, "turnCount": turn_count}
    return final


@sync_to_async
def rows_of(session_id: str) -> list[tuple[str, str, bool]]:
    """(role, content, has tool calls) of every record, in order."""
    return [(role, content, bool(calls)) for role, content, calls in
            Record.objects.filter(session_id=session_id).values_list("role", "content",
                                                                     "tool_calls")]


@sync_to_async
def turn_count_of(session_id: str) -> int:
    return Session.objects.get(pk=session_id).turn_count


@sync_to_async
def sessions_in(space_id: str) -> list[str]:
    return list(Session.objects.filter(space_id=space_id).values_list("label", flat=True)
                .order_by("created_at"))


def error_frame(frame: dict[str, Any]) -> str:
    """The message of an `error` HANDLER_ERROR frame (fails on anything else)."""
    assert frame["type"] == "error" and frame["code"] == "HANDLER_ERROR", frame
    assert set(frame) == {"type", "code", "message"}, frame
    return frame["message"]


def user_texts_sent(server: LoopbackLLMServer) -> list[str]:
    """The user messages of the last request the LLM received."""
    return [m["content"] for m in server.requests[-1].body["messages"] if m["role"] == "user"]


# -- (a) the SSE stream is cut mid-way -------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai_server", "anthropic_server"])
@bounded(30)
async def test_a_stream_cut_midway_keeps_its_deltas_then_errors_and_saves_nothing(
    use_llm: UseLLM, ws, root_id, request, provider: str
) -> None:
    server: LoopbackLLMServer = request.getfixturevalue(provider)
    await use_llm(server)
    server.reply("first answer")
    assert await streamed_ok(ws, "one", root_id, 1) == "first answer"
    before = await rows_of(root_id)

    server.cut("alpha beta gamma delta epsilon zeta")  # SSE events, then the socket closes
    frames = await stream(ws, "two")
    assert [f.get("chunk") for f in frames[:-1]] == ["alpha", " beta"]  # sent, and they stay
    message = error_frame(frames[-1])
    name = PROVIDER if provider == "openai_server" else "Anthropic API"
    assert message.startswith(f"{name} connection error:"), message  # says who and what
    await nothing_announced(ws)  # no stream.end, no session.updated
    assert await rows_of(root_id) == before == [("user", "one", False),
                                                ("assistant", "first answer", False)]
    assert await turn_count_of(root_id) == 1

    server.reply("recovered fine")
    assert await streamed_ok(ws, "three", root_id, 2) == "recovered fine"
    assert user_texts_sent(server) == ["one", "three"]  # the failed turn left no trace
    assert await rows_of(root_id) == [*before, ("user", "three", False),
                                      ("assistant", "recovered fine", False)]


@bounded(30)
async def test_an_in_band_stream_error_is_an_error_frame(use_llm: UseLLM, openai_server, ws,
                                                         root_id) -> None:
    await use_llm(openai_server)
    openai_server.stream_error("model overloaded", text="partial words here")
    frames = await stream(ws, "hello")
    assert all(f["type"] == "stream.delta" for f in frames[:-1])
    assert "model overloaded" in error_frame(frames[-1])
    await nothing_announced(ws)
    assert (await rows_of(root_id), await turn_count_of(root_id)) == ([], 0)
    openai_server.reply("fine")
    assert await streamed_ok(ws, "again", root_id, 1) == "fine"


# -- (b) tool-call arguments that are not JSON -----------------------------------------------


@bounded(30)
async def test_tool_call_arguments_that_are_not_json_in_the_first_round_save_nothing(
    use_llm: UseLLM, openai_server, ws, space_id, root_id
) -> None:
    await use_llm(openai_server)
    openai_server.reply("let me fork", tool_calls=[
        tool_call("c1", "stello_create_session", raw_arguments='{"label": "Kid"')])
    frames = await stream(ws, "make a child")
    assert [f.get("chunk") for f in frames[:-1]] == ["let", " me", " fork"]
    message = error_frame(frames[-1])
    assert "not valid JSON" in message and "stello_create_session" in message, message
    await nothing_announced(ws)
    assert (await rows_of(root_id), await turn_count_of(root_id)) == ([], 0)
    assert await sessions_in(space_id) == [SPACE_LABEL]  # the tool never ran: no child

    openai_server.reply("no fork after all")
    assert await streamed_ok(ws, "next", root_id, 1) == "no fork after all"
    assert user_texts_sent(openai_server) == ["next"]
    assert await rows_of(root_id) == [("user", "next", False),
                                      ("assistant", "no fork after all", False)]


@bounded(30)
async def test_tool_call_arguments_that_are_not_json_in_a_later_round_keep_completed_calls(
    use_llm: UseLLM, openai_server, ws, space_id, root_id
) -> None:
    await use_llm(openai_server)
    openai_server.reply("forking", tool_calls=[
        tool_call("c1", "stello_create_session", {"label": "Kid"})])
    openai_server.reply("and again", tool_calls=[
        tool_call("c2", "stello_create_session", raw_arguments="{oops")])
    frames = await stream(ws, "two children")
    assert [f.get("chunk") for f in frames[:-1]] == ["forking", "and", " again"]
    assert "not valid JSON" in error_frame(frames[-1])
    await nothing_announced(ws)  # no stream.end, no session.updated
    # The contract of a failed later round (as over REST): the first call is committed as one
    # unit (user input + the assistant's tool call), its tool ran and its result is kept (no
    # stored tool call without its result), nothing of the failed call is saved, and the turn
    # does not count.
    rows = await rows_of(root_id)
    assert rows[:2] == [("user", "two children", False), ("assistant", "forking", True)]
    assert len(rows) == 3 and rows[2][0] == "tool" and '"label":"Kid"' in rows[2][1]
    assert await turn_count_of(root_id) == 0
    assert await sessions_in(space_id) == [SPACE_LABEL, "Kid"]

    openai_server.reply("done now")
    assert await streamed_ok(ws, "next", root_id, 1) == "done now"
    sent = openai_server.requests[-1].body["messages"]
    calls = [n for n, m in enumerate(sent) if m.get("tool_calls")]  # resent with its result
    assert len(calls) == 1 and sent[calls[0] + 1]["tool_call_id"] == "c1"
    assert await sessions_in(space_id) == [SPACE_LABEL, "Kid"]


# -- (c) 429 / 5xx before the stream starts --------------------------------------------------


@bounded(30)
async def test_transient_errors_before_the_stream_are_retried_then_it_streams(
    use_llm: UseLLM, openai_server, ws, root_id
) -> None:
    await use_llm(openai_server, retries=2)
    openai_server.error(429, "slow down").error(503, "busy").reply("third time lucky")
    assert await streamed_ok(ws, "hello", root_id, 1) == "third time lucky"
    assert [r.stream for r in openai_server.requests] == [True, True, True]
    assert await rows_of(root_id) == [("user", "hello", False),
                                      ("assistant", "third time lucky", False)]

    openai_server.error(502, "still down", times=3)  # 1 call + 2 retries, all failing
    frames = await stream(ws, "again")
    assert len(frames) == 1  # no delta was ever sent
    message = error_frame(frames[0])
    assert "HTTP 502" in message and "still down" in message, message
    assert len(openai_server.requests) == 6  # bounded: the client is told after the retries
    await nothing_announced(ws)
    assert (await turn_count_of(root_id), len(await rows_of(root_id))) == (1, 2)


@bounded(30)
async def test_a_client_error_before_the_stream_is_not_retried(
    use_llm: UseLLM, openai_server, ws, root_id
) -> None:
    await use_llm(openai_server, retries=2)
    openai_server.error(400, "prompt too long")
    frames = await stream(ws, "hello")
    assert "prompt too long" in error_frame(frames[0]) and len(frames) == 1
    assert len(openai_server.requests) == 1
    assert await streamed_ok(ws, "again", root_id, 1) == "echo: again"


# -- (d) a timeout ---------------------------------------------------------------------------


@bounded(30)
async def test_a_timeout_is_an_error_frame_and_the_session_recovers(
    use_llm: UseLLM, openai_server, ws, root_id
) -> None:
    await use_llm(openai_server, llm_timeout=0.5)
    openai_server.delay(5)
    frames = await stream(ws, "hello")
    assert len(frames) == 1
    assert "timed out" in error_frame(frames[0])
    await nothing_announced(ws)
    assert (await rows_of(root_id), await turn_count_of(root_id)) == ([], 0)
    openai_server.reply("on time")
    assert await streamed_ok(ws, "again", root_id, 1) == "on time"


@bounded(30)
async def test_a_timeout_is_retried_when_retries_are_configured(
    use_llm: UseLLM, openai_server, ws, root_id
) -> None:
    await use_llm(openai_server, llm_timeout=0.5, retries=1)
    openai_server.delay(5).reply("second try")
    assert await streamed_ok(ws, "hello", root_id, 1) == "second try"
    assert len(openai_server.requests) == 2


# -- the lock is released after every failure ------------------------------------------------


@bounded(30)
async def test_after_a_failed_stream_another_connection_gets_the_session_at_once(
    use_llm: UseLLM, openai_server, ws, space_id, root_id, alice_key
) -> None:
    await use_llm(openai_server)
    openai_server.cut("half of it")
    frames = await stream(ws, "one")
    assert frames[-1]["type"] == "error"
    other = await open_ws(space_id, alice_key)
    await enter(other, root_id)
    await other.send_json_to({"type": "session.message", "input": "are you free?"})
    reply = await recv(other)  # a held lock would keep this waiting (timeout 120 s)
    assert reply["type"] == "turn.complete", reply
    assert reply["result"]["turn"]["finalContent"] == "echo: are you free?"
    assert json.loads(reply["result"]["turn"]["rawResponse"])["content"] == "echo: are you free?"
    await other.disconnect()
