"""WebSocket hardening, through the real ASGI application: frames that cannot be answered in
UTF-8 or nest too deeply are refused and the connection keeps working; LLM text with lone
surrogates reaches the client as U+FFFD; a revoked key or a deleted space closes the socket
with a documented code.

Personas (tests/conftest.py): alice owns the space `space` (root session `root_id`).
"""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from sessions_app.engine.llm.openai_compat import OpenAICompatLLM
from sessions_app.runtime.pool import runtimes
from spaces.apikeys import apikey_create, apikey_revoke, auth_cache
from spaces.models import ApiKey, Space
from spaces.selectors import space_owners
from tests.support.llm_servers import OpenAIServer, tool_call
from tests.ws.test_consumer import (  # noqa: F401 (fixtures used by name)
    WAIT,
    bounded,
    enter,
    no_consolidation,
    open_ws,
    records_of,
    runtime,  # autouse: every frame and job has finished after each test
)

pytestmark = pytest.mark.django_db(transaction=True)
pytest_plugins = ["tests.support.llm_fixtures"]

SURROGATE = "\ud800"
CLOSE_KEY_INVALID = 4401  # the close codes the README documents
CLOSE_SPACE_GONE = 4404


async def ask_raw(communicator: WebsocketCommunicator, text: str) -> dict[str, Any]:
    """Send `text`, return the answer, checking that it is valid UTF-8 (a real server must
    encode it for the wire: a lone surrogate there fails the send and the socket goes dead)."""
    import json

    await communicator.send_to(text_data=text)
    answer = await communicator.receive_from(timeout=WAIT)
    return json.loads(answer.encode("utf-8"))


async def closed_with(communicator: WebsocketCommunicator) -> int:
    message = await communicator.receive_output(timeout=WAIT)
    assert message["type"] == "websocket.close", message
    return message["code"]


PARSE_ERROR = {"type": "error", "code": "PARSE_ERROR", "message": "Invalid JSON"}


@bounded()
@pytest.mark.parametrize("frame", [
    '{"type": "\\ud800"}',  # escaped: the json module accepts it; UTF-8 cannot carry it
    '{"type": "session.\\udfff"}',
    '{"type": "session.message", "input": "a\\ud800b"}',
    '{"type": "session.stream", "input": "\\udc00"}',
    '{"type": "session.enter", "sessionId": "\\ud800"}',
    '{"type": "session.message", "input": "\ud800"}',  # the character itself
])
async def test_lone_surrogates_are_a_parse_error_and_the_next_frame_is_answered(
    space_id, root_id, alice_key, frame
) -> None:
    communicator = await open_ws(space_id, alice_key)
    await enter(communicator, root_id)
    assert await ask_raw(communicator, frame) == PARSE_ERROR
    answer = await ask_raw(communicator, '{"type": "session.message", "input": "still here"}')
    assert answer["type"] == "turn.complete"
    assert answer["result"]["turn"]["finalContent"] == "echo: still here"
    assert await records_of(root_id) == [("user", "still here"), ("assistant", "echo: still here")]
    await communicator.disconnect()


@bounded()
@pytest.mark.parametrize("depth", [65, 999, 5000, 500_000])
async def test_deep_frames_are_a_parse_error_without_recursion(space_id, root_id, alice_key,
                                                               depth) -> None:
    communicator = await open_ws(space_id, alice_key)
    frame = '{"type": "session.enter", "x": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"
    assert await ask_raw(communicator, frame) == {
        "type": "error", "code": "PARSE_ERROR",
        "message": "JSON nested too deeply (at most 64 levels)"}
    await enter(communicator, root_id)
    await communicator.disconnect()


# -- LLM text with lone surrogates -----------------------------------------------------------


@pytest.fixture
async def loopback_llm(openai_server: OpenAIServer) -> OpenAIServer:
    """The runtime talks to a loopback OpenAI-protocol server (set before the agent is built)."""
    current = runtimes.current()  # the autouse `runtime` fixture's
    current.llm = current.memory_llm = OpenAICompatLLM(
        model="m", base_url=openai_server.base_url, api_key="k", max_retries=0)
    return openai_server


@bounded()
async def test_a_streamed_reply_with_lone_surrogates_arrives_as_replacement_characters(
    space_id, root_id, alice_key, loopback_llm
) -> None:
    loopback_llm.reply(f"bad {SURROGATE} text {chr(0xDC00)}")  # sent as JSON \ud800 escapes
    communicator = await open_ws(space_id, alice_key)
    await enter(communicator, root_id)
    await communicator.send_json_to({"type": "session.stream", "input": "hi"})
    chunks = []
    while (frame := await ask_raw_next(communicator))["type"] == "stream.delta":
        chunks.append(frame["chunk"])
    assert frame["type"] == "stream.end"
    assert "".join(chunks) == "bad \ufffd text \ufffd"
    assert frame["result"]["turn"]["finalContent"] == "bad \ufffd text \ufffd"
    assert await records_of(root_id) == [("user", "hi"), ("assistant", "bad \ufffd text \ufffd")]
    await communicator.disconnect()


@bounded()
async def test_tool_call_arguments_with_lone_surrogates_are_cleaned(
    space_id, root_id, alice_key, loopback_llm
) -> None:
    # The arguments are JSON text inside the JSON reply: "\\ud800" reaches the engine as an
    # escape that only parsing the arguments turns into a lone surrogate.
    loopback_llm.reply(tool_calls=[tool_call("c1", "stello_create_session",
                                             raw_arguments='{"label": "x\\ud800"}')])
    loopback_llm.reply("done")
    communicator = await open_ws(space_id, alice_key)
    await enter(communicator, root_id)
    await communicator.send_json_to({"type": "session.stream", "input": "fork"})
    while (frame := await ask_raw_next(communicator))["type"] == "stream.delta":
        pass
    assert frame["type"] == "stream.end", frame
    assert frame["result"]["turn"]["toolCallsExecuted"] == 1
    labels = await sync_to_async(lambda: sorted(
        Space.objects.get(pk=space_id).sessions.values_list("label", flat=True)))()
    assert "x\ufffd" in labels
    await communicator.disconnect()


async def ask_raw_next(communicator: WebsocketCommunicator) -> dict[str, Any]:
    import json

    return json.loads((await communicator.receive_from(timeout=WAIT)).encode("utf-8"))


# -- access lost while connected -------------------------------------------------------------


@bounded()
async def test_a_key_revoked_in_this_process_closes_the_socket_on_the_next_frame(
    space_id, root_id, alice_key
) -> None:
    communicator = await open_ws(space_id, alice_key)
    await enter(communicator, root_id)
    await sync_to_async(apikey_revoke)(prefix=alice_key.split("_")[1])
    await communicator.send_json_to({"type": "session.message", "input": "after revoke"})
    assert await closed_with(communicator) == CLOSE_KEY_INVALID
    assert await records_of(root_id) == []  # the frame that found out was not handled


@bounded()
async def test_a_key_revoked_elsewhere_closes_the_socket_once_the_cache_expires(
    space_id, root_id, alice_key
) -> None:
    communicator = await open_ws(space_id, alice_key)
    await enter(communicator, root_id)
    # Another process revokes: this process's cache does not know yet.
    await ApiKey.objects.filter(prefix=alice_key.split("_")[1]).aupdate(revoked=True)
    await communicator.send_json_to({"type": "session.message", "input": "cached"})
    assert (await ask_raw_next(communicator))["type"] == "turn.complete"
    auth_cache.clear()  # STELLO_AUTH_CACHE_SECONDS have passed
    await communicator.send_json_to({"type": "session.message", "input": "expired"})
    assert await closed_with(communicator) == CLOSE_KEY_INVALID
    assert [c for _, c in await records_of(root_id)] == ["cached", "echo: cached"]


@bounded()
async def test_a_deleted_space_closes_the_socket_on_the_next_frame(
    space, space_id, root_id, alice_key
) -> None:
    communicator = await open_ws(space_id, alice_key)
    await enter(communicator, root_id)
    from spaces.services import space_delete

    await sync_to_async(space_delete)(space=space)
    await communicator.send_json_to({"type": "session.message", "input": "gone?"})
    assert await closed_with(communicator) == CLOSE_SPACE_GONE
    assert not await Space.objects.filter(pk=space_id).aexists()


@bounded()
async def test_a_space_deleted_elsewhere_answers_errors_until_the_cache_expires(
    space_id, root_id, alice_key
) -> None:
    communicator = await open_ws(space_id, alice_key)
    await enter(communicator, root_id)
    # Another process deletes the space: this process's owner cache does not know yet.
    await Space.objects.filter(pk=space_id).adelete()
    await communicator.send_json_to({"type": "session.message", "input": "lost"})
    answer = await ask_raw_next(communicator)
    assert answer == {"type": "error", "code": "HANDLER_ERROR", "message": "Session not found"}
    assert await records_of(root_id) == []
    space_owners.clear()  # STELLO_AUTH_CACHE_SECONDS have passed
    await communicator.send_json_to({"type": "session.message", "input": "lost again"})
    assert await closed_with(communicator) == CLOSE_SPACE_GONE


@bounded()
async def test_a_watcher_whose_key_was_revoked_is_closed_instead_of_told(
    alice, space_id, root_id, alice_key
) -> None:
    _, other_key = await sync_to_async(apikey_create)(user=alice, name="second")
    watcher = await open_ws(space_id, alice_key)
    await watcher.send_json_to({"type": "session.enter", "sessionId": root_id, "watch": True})
    assert (await ask_raw_next(watcher))["type"] == "session.entered"
    await sync_to_async(apikey_revoke)(prefix=alice_key.split("_")[1])
    talker = await open_ws(space_id, other_key)
    await enter(talker, root_id)
    await talker.send_json_to({"type": "session.message", "input": "news"})
    assert (await ask_raw_next(talker))["type"] == "turn.complete"
    assert await closed_with(watcher) == CLOSE_KEY_INVALID  # no session.updated before it
    await talker.disconnect()
