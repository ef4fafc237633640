"""The WebSocket consumer, through the real ASGI application (`stello_project.asgi`).

Personas (tests/conftest.py): alice owns the space `space` (with its root session `root_id`);
bob owns nothing here, so his key is refused on alice's space.

The LLM is the offline provider (`echo: <input>`), or `GatedLLM` where a test needs a turn
that stays in flight until the test lets it go. Consolidation is off so no background job
touches the sessions under test. Every test is bounded by `bounded()` and every receive by
its own timeout.
"""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from asgiref.sync import AsyncToSync, SyncToAsync, sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient

from sessions_app import live
from sessions_app.engine.errors import LLMError
from sessions_app.engine.llm.offline import OfflineLLM
from sessions_app.engine.types import LLMResponse, Message, StreamDelta, ToolCall, ToolSpec
from sessions_app.events import session_group
from sessions_app.models import CoreData, Record, Session, SessionData, TopologyNode
from sessions_app.runtime.pool import Runtime, runtimes
from sessions_app.ws.connections import connections
from sessions_app.ws.consumer import SessionConsumer, operations
from spaces.services import space_create
from stello_project.asgi import application
from tests.ws.conftest import finish_ws_work

pytestmark = pytest.mark.django_db(transaction=True)

WAIT = 5  # seconds for one frame to arrive
QUIET = 0.2  # how long "nothing arrives" is watched


def bounded(seconds: float = 20) -> Callable:
    """A per-test time limit for an async test."""

    def decorate(test: Callable) -> Callable:
        @functools.wraps(test)
        async def run(*args: Any, **kwargs: Any) -> None:
            async with asyncio.timeout(seconds):
                await test(*args, **kwargs)

        return run

    return decorate


class RestClient:
    """The REST API on the test's own event loop (the sync client would run each request on
    a loop and a thread of its own, beside the consumer's)."""

    def __init__(self, key: str) -> None:
        self._client, self._headers = AsyncClient(), {"X-API-Key": key}

    async def get(self, path: str) -> Any:
        return await self._client.get(path, headers=self._headers)

    async def post(self, path: str, data: dict[str, Any], **kwargs: Any) -> Any:
        return await self._client.post(path, data, headers=self._headers, **kwargs)


# -- fakes ---------------------------------------------------------------------------------------


class GatedLLM(OfflineLLM):
    """The offline model, with a gate: while it is closed, a streamed answer stops after its
    first piece and a plain answer does not start. `waiting` is set once a call is held."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = asyncio.Event()

    def close_gate(self) -> None:
        self.gate.clear()
        self.waiting.clear()

    async def _at_gate(self) -> None:
        if not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()

    async def complete(self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = ()):
        await self._at_gate()
        return await super().complete(messages, tools=tools)

    async def stream(
        self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[StreamDelta]:
        first = True
        async for delta in super().stream(messages, tools=tools):
            yield delta
            if first:
                first = False
                await self._at_gate()


class BreaksMidStreamLLM(OfflineLLM):
    """Streams its first piece, then the upstream fails."""

    async def stream(
        self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[StreamDelta]:
        async for delta in super().stream(messages, tools=tools):
            yield delta
            raise LLMError("upstream failed mid-stream")


# -- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_consolidation(settings) -> None:
    settings.STELLO = {**settings.STELLO, "CONSOLIDATE_EVERY_N_TURNS": 0,
                       "CONSOLIDATE_ON_ARCHIVE": False}


@pytest.fixture(autouse=True)
async def runtime(no_consolidation) -> AsyncIterator[Runtime]:
    """This test's runtime; afterwards every frame task and background job has finished."""
    current = runtimes.current()
    yield current
    await finish_ws_work()


@pytest.fixture
def gated(runtime: Runtime) -> GatedLLM:
    runtime.llm = runtime.memory_llm = GatedLLM()  # before the space's agent is built
    return runtime.llm


def ws_path(space_id: str) -> str:
    return f"/spaces/{space_id}/ws"


def key_header(key: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-api-key", key.encode())]


async def open_ws(space_id: str, key: str, *, path: str | None = None) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, path or ws_path(space_id),
                                         headers=key_header(key))
    connected, _ = await communicator.connect(timeout=WAIT)
    assert connected
    return communicator


async def recv(communicator: WebsocketCommunicator) -> dict[str, Any]:
    return await communicator.receive_json_from(timeout=WAIT)


async def ask(communicator: WebsocketCommunicator, frame: dict[str, Any] | str) -> dict[str, Any]:
    if isinstance(frame, str):
        await communicator.send_to(text_data=frame)
    else:
        await communicator.send_json_to(frame)
    return await recv(communicator)


async def enter(communicator: WebsocketCommunicator, session_id: str) -> dict[str, Any]:
    reply = await ask(communicator, {"type": "session.enter", "sessionId": session_id})
    assert reply["type"] == "session.entered", reply
    return reply


async def watch(communicator: WebsocketCommunicator, session_id: str) -> dict[str, Any]:
    reply = await ask(communicator, {"type": "session.enter", "sessionId": session_id,
                                     "watch": True})
    assert reply["type"] == "session.entered", reply
    return reply


async def group_members(session_id: str) -> list[str]:
    """The channels in the group of `session_id` (in-memory or Redis channel layer)."""
    layer = get_channel_layer()
    group = session_group(session_id)
    if isinstance(layer, InMemoryChannelLayer):
        return sorted(layer.groups.get(group, {}))
    # channels_redis' pub/sub layer keeps a group's members in the process that subscribed
    loop_layer = layer._get_layer()
    return sorted(loop_layer.groups.get(loop_layer._get_group_channel_name(group), ()))


async def nothing_more(communicator: WebsocketCommunicator) -> None:
    assert await communicator.receive_nothing(timeout=QUIET)


def error(code: str, message: str) -> dict[str, str]:
    return {"type": "error", "code": code, "message": message}


@sync_to_async
def records_of(session_id: str) -> list[tuple[str, str]]:
    return list(Record.objects.filter(session_id=session_id).values_list("role", "content"))


@sync_to_async
def turn_count_of(session_id: str) -> int:
    return Session.objects.get(pk=session_id).turn_count


def refused_with_status(path: str, headers: list[tuple[bytes, bytes]]):
    """Connect through a server that supports the WebSocket Denial Response extension."""

    async def with_denial(scope, receive, send):
        extensions = {**scope.get("extensions", {}), "websocket.http.response": {}}
        return await application({**scope, "extensions": extensions}, receive, send)

    async def run() -> tuple[int, dict[str, str], dict[str, Any]]:
        communicator = WebsocketCommunicator(with_denial, path, headers=headers)
        await communicator.send_input({"type": "websocket.connect"})
        start = await communicator.receive_output(WAIT)
        body = await communicator.receive_output(WAIT)
        await communicator.wait(WAIT)  # the consumer has stopped
        assert start["type"] == "websocket.http.response.start"
        assert body["type"] == "websocket.http.response.body"
        headers_out = {k.decode(): v.decode() for k, v in start["headers"]}
        return start["status"], headers_out, json.loads(body["body"])

    return run()


# -- connect ---------------------------------------------------------------------------------


@bounded()
async def test_the_owner_connects_and_gets_no_greeting(space_id, alice_key) -> None:
    communicator = await open_ws(space_id, alice_key)
    await nothing_more(communicator)
    await communicator.disconnect()


@pytest.mark.parametrize("suffix", ["/", "?client=web", "/?a=1&b=2"])
@bounded()
async def test_a_trailing_slash_and_a_query_string_are_accepted(space_id, alice_key,
                                                                 suffix: str) -> None:
    communicator = await open_ws(space_id, alice_key, path=ws_path(space_id) + suffix)
    await communicator.disconnect()


@bounded()
async def test_a_browser_may_send_the_key_as_a_subprotocol(space_id, alice_key) -> None:
    communicator = WebsocketCommunicator(application, ws_path(space_id),
                                         subprotocols=["stello.v1", alice_key])
    connected, subprotocol = await communicator.connect(timeout=WAIT)
    assert connected
    assert subprotocol == alice_key  # browsers fail a connection with no chosen subprotocol
    await communicator.disconnect()


@bounded()
async def test_the_header_wins_over_a_subprotocol(space_id, alice_key, bob_key) -> None:
    communicator = WebsocketCommunicator(application, ws_path(space_id),
                                         headers=key_header(alice_key), subprotocols=[bob_key])
    connected, subprotocol = await communicator.connect(timeout=WAIT)
    assert (connected, subprotocol) == (True, None)
    await communicator.disconnect()


@bounded()
async def test_the_key_may_come_as_an_authorization_bearer_header(space_id, alice_key) -> None:
    bearer = [(b"authorization", f"Bearer {alice_key}".encode())]
    communicator = WebsocketCommunicator(application, ws_path(space_id), headers=bearer)
    connected, _ = await communicator.connect(timeout=WAIT)
    assert connected
    await communicator.disconnect()


@bounded()
async def test_a_key_in_the_query_string_of_the_upgrade_is_never_read(space_id, alice_key) -> None:
    communicator = WebsocketCommunicator(application, f"{ws_path(space_id)}?api_key={alice_key}")
    connected, _ = await communicator.connect(timeout=WAIT)
    assert not connected


REFUSALS = {
    # case: (key, space id, status, body)
    "no key": (None, "own", 401, "Missing API key", "UNAUTHENTICATED"),
    "empty key": ("", "own", 401, "Missing API key", "UNAUTHENTICATED"),
    "invalid key": ("invalid-key", "own", 401, "Invalid API key", "UNAUTHENTICATED"),
    "unknown key": ("stello_AAAAAAAA_" + "b" * 43, "own", 401, "Invalid API key",
                    "UNAUTHENTICATED"),
    "another user's space": ("bob", "own", 403, "Forbidden", "FORBIDDEN"),
    "unknown space": ("alice", str(uuid.uuid4()), 404, "Space not found", "SPACE_NOT_FOUND"),
    "malformed space id": ("alice", "not-a-uuid", 404, "Space not found", "SPACE_NOT_FOUND"),
}


def _refusal_case(case: str, space_id: str, alice_key: str, bob_key: str):
    key, target, status, message, code = REFUSALS[case]
    key = {"alice": alice_key, "bob": bob_key}.get(key, key)
    headers = [] if key is None else key_header(key)
    return headers, ws_path(space_id if target == "own" else target), status, message, code


@pytest.mark.parametrize("case", list(REFUSALS))
@bounded()
async def test_the_upgrade_is_refused(case: str, space_id, alice_key, bob_key) -> None:
    headers, path, *_ = _refusal_case(case, space_id, alice_key, bob_key)
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await communicator.connect(timeout=WAIT)
    assert connected is False  # closed before accept: daphne answers 403
    await communicator.wait(WAIT)
    assert connections.size == 0


@pytest.mark.parametrize("case", list(REFUSALS))
@bounded()
async def test_with_the_denial_extension_the_refusal_has_the_rest_status_and_body(
    case: str, space_id, alice_key, bob_key
) -> None:
    headers, path, status, message, code = _refusal_case(case, space_id, alice_key, bob_key)
    got_status, got_headers, body = await refused_with_status(path, headers)
    assert (got_status, body) == (status, {"error": message, "code": code})
    assert got_headers["content-type"] == "application/json"
    if status == 401:
        assert got_headers["www-authenticate"] == "X-API-Key"


@bounded()
async def test_another_path_is_refused_as_not_found(alice_key) -> None:
    communicator = WebsocketCommunicator(application, "/spaces/ws", headers=key_header(alice_key))
    connected, _ = await communicator.connect(timeout=WAIT)
    assert connected is False
    status, _, body = await refused_with_status("/nope", [])
    assert (status, body) == (404, {"error": "Not Found", "code": "NOT_FOUND"})


# -- errors that keep the connection open ----------------------------------------------------


@bounded()
async def test_every_protocol_error_is_answered_and_the_connection_stays(
    space_id, root_id, alice_key
) -> None:
    communicator = await open_ws(space_id, alice_key)
    frames_and_errors = [
        ("not json", error("PARSE_ERROR", "Invalid JSON")),
        ('{"type":"unknown.type"}', error("UNKNOWN_TYPE", "Unknown message type: unknown.type")),
        ("123", error("UNKNOWN_TYPE", "Message must be a JSON object")),
        ("null", error("UNKNOWN_TYPE", "Message must be a JSON object")),
        ("{}", error("UNKNOWN_TYPE", "type is required")),
        ('{"type":5}', error("UNKNOWN_TYPE", "type must be a string")),
        ('{"type":"session.leave"}', error("NOT_ENTERED", "Not in a session")),
        ('{"type":"session.message","input":"hello"}', error("NOT_ENTERED", "Not in a session")),
        ('{"type":"session.stream","input":"hello"}', error("NOT_ENTERED", "Not in a session")),
        ('{"type":"session.fork","options":{"label":"C"}}',
         error("NOT_ENTERED", "Not in a session")),
        # the state rule comes before the payload check, like the original
        ('{"type":"session.message"}', error("NOT_ENTERED", "Not in a session")),
        ('{"type":"session.enter"}', error("HANDLER_ERROR", "sessionId is required")),
    ]
    for frame, expected in frames_and_errors:
        assert await ask(communicator, frame) == expected, frame
    await enter(communicator, root_id)
    entered_errors = [
        ({"type": "session.enter", "sessionId": root_id},
         error("ALREADY_ENTERED", "Already in a session, leave first")),
        ({"type": "session.enter"}, error("ALREADY_ENTERED", "Already in a session, leave first")),
        ({"type": "session.message"}, error("HANDLER_ERROR", "input is required")),
        ({"type": "session.stream", "input": ""},
         error("HANDLER_ERROR", "input must not be empty")),
        ({"type": "session.message", "input": 5}, error("HANDLER_ERROR", "input must be a string")),
        ({"type": "session.fork"}, error("HANDLER_ERROR", "label is required")),
        ({"type": "session.fork", "options": {"scope": "x"}},
         error("HANDLER_ERROR", "label is required")),
    ]
    for frame, expected in entered_errors:
        assert await ask(communicator, frame) == expected, frame
    assert (await ask(communicator, {"type": "session.message", "input": "still here"}))[
        "type"] == "turn.complete"
    await communicator.disconnect()


@bounded()
async def test_binary_and_oversized_frames_are_errors(space_id, alice_key, settings) -> None:
    settings.STELLO = {**settings.STELLO, "WS_MAX_FRAME_BYTES": 2048}
    communicator = await open_ws(space_id, alice_key)
    await communicator.send_to(bytes_data=b'{"type":"session.leave"}')
    assert await recv(communicator) == error("PARSE_ERROR", "Binary frames are not supported")
    big = json.dumps({"type": "session.message", "input": "x" * 2100})
    assert await ask(communicator, big) == error("HANDLER_ERROR",
                                                 "frame too large: at most 2048 bytes")
    multibyte = json.dumps({"type": "session.message", "input": "é" * 1100},
                           ensure_ascii=False)  # 1100+ characters, 2200+ bytes
    assert await ask(communicator, multibyte) == error("HANDLER_ERROR",
                                                       "frame too large: at most 2048 bytes")
    assert await ask(communicator, '{"type":"session.leave"}') == error("NOT_ENTERED",
                                                                       "Not in a session")
    await communicator.disconnect()


@bounded()
async def test_an_unknown_session_is_not_entered(space_id, alice_key, bob) -> None:
    other_space = await sync_to_async(space_create)(owner=bob, label="Bob's")
    other_root = await sync_to_async(
        lambda: str(Session.objects.get(space=other_space, role="main").pk))()
    communicator = await open_ws(space_id, alice_key)
    for session_id in [str(uuid.uuid4()), "not-a-uuid", other_root]:  # another space's too
        reply = await ask(communicator, {"type": "session.enter", "sessionId": session_id})
        assert reply == error("HANDLER_ERROR", "Session not found"), session_id
    assert await ask(communicator, {"type": "session.message", "input": "hi"}) == error(
        "NOT_ENTERED", "Not in a session")
    await communicator.disconnect()


@bounded()
async def test_an_archived_session_refuses_turns_with_the_engine_message(
    space_id, root_id, alice_key, runtime
) -> None:
    child = await (await runtime.agent(space_id)).fork(root_id, _options("Child"))
    await (await runtime.agent(space_id)).archive(child.id)
    communicator = await open_ws(space_id, alice_key)
    await enter(communicator, child.id)
    archived = f'Session "{child.id}" is archived and cannot be modified'
    for kind in ["session.message", "session.stream"]:
        assert await ask(communicator, {"type": kind, "input": "hi"}) == error(
            "HANDLER_ERROR", archived)
    await communicator.disconnect()


@bounded()
async def test_an_unexpected_failure_is_a_generic_handler_error(
    space_id, root_id, alice_key, runtime, monkeypatch
) -> None:
    agent = await runtime.agent(space_id)

    async def broken(session_id: str, text: str):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(agent, "turn", broken)
    communicator = await open_ws(space_id, alice_key)
    await enter(communicator, root_id)
    assert await ask(communicator, {"type": "session.message", "input": "hi"}) == error(
        "HANDLER_ERROR", "Internal server error")
    assert (await ask(communicator, {"type": "session.stream", "input": "hi"}))[
        "type"] == "stream.delta"
    await communicator.disconnect()


def _options(label: str):
    from sessions_app.engine.fork import parse_fork_options

    return parse_fork_options({"label": label})


# -- the five messages -----------------------------------------------------------------------


@bounded()
async def test_enter_sends_the_bootstrap_of_the_session(space, space_id, alice_key) -> None:
    @sync_to_async
    def build_tree() -> dict[str, str]:
        root = Session.objects.get(space=space, role="main")
        a = Session.objects.create(space=space, label="A")
        b = Session.objects.create(space=space, label="B", scope="B scope",
                                   metadata={"k": "v"})
        root_node = TopologyNode.objects.get(session=root)
        a_node = TopologyNode.objects.create(session=a, space=space, parent=root_node, depth=1,
                                             label="A")
        TopologyNode.objects.create(session=b, space=space, parent=a_node, depth=2, label="B")
        SessionData.objects.bulk_create([
            SessionData(session=root, key="memory", content="root memory"),
            SessionData(session=a, key="memory", content="A memory"),
            SessionData(session=b, key="memory", content="B memory"),
        ])
        CoreData.objects.create(space=space, path="profile.name", value="Alice")
        CoreData.objects.create(space=space, path="prefs", value={"lang": "en"})
        return {"root": str(root.pk), "a": str(a.pk), "b": str(b.pk)}

    ids = await build_tree()
    communicator = await open_ws(space_id, alice_key)
    reply = await enter(communicator, ids["b"].upper())  # any spelling of the UUID
    detail = await RestClient(alice_key).get(f"/spaces/{space_id}/sessions/{ids['b']}")
    assert reply == {
        "type": "session.entered",
        "sessionId": ids["b"],
        "bootstrap": {
            "context": {
                "core": {"profile.name": "Alice", "prefs": {"lang": "en"}},
                "memories": ["A memory", "root memory"],  # ancestors, nearest first
                "currentMemory": "B memory",
                "scope": "B scope",
            },
            "session": detail.json(),  # the REST SessionMeta
        },
    }
    await ask(communicator, {"type": "session.leave"})
    root = (await enter(communicator, ids["root"]))["bootstrap"]["context"]
    assert (root["memories"], root["currentMemory"], root["scope"]) == ([], "root memory", None)
    await communicator.disconnect()


@bounded()
async def test_message_completes_a_turn_like_rest(space_id, root_id, alice_key) -> None:
    communicator = await open_ws(space_id, alice_key)
    await enter(communicator, root_id)
    reply = await ask(communicator, {"type": "session.message", "input": "hello"})
    assert reply["type"] == "turn.complete"
    turn = reply["result"]["turn"]
    assert (turn["finalContent"], turn["toolRoundCount"], turn["toolCallsExecuted"]) == (
        "echo: hello", 0, 0)
    rest = await RestClient(alice_key).post(
        f"/spaces/{space_id}/sessions/{root_id}/turn", {"input": "hello"},
        content_type="application/json")
    assert set(rest.json()) == set(reply["result"]) == {"turn", "turnId"}  # turnId: added
    assert set(rest.json()["turn"]) == set(turn)
    assert json.loads(turn["rawResponse"])["content"] == "echo: hello"
    assert await records_of(root_id) == [("user", "hello"), ("assistant", "echo: hello")] * 2
    await communicator.disconnect()


@bounded()
async def test_stream_sends_deltas_then_the_result(space_id, root_id, alice_key) -> None:
    communicator = await open_ws(space_id, alice_key)
    await enter(communicator, root_id)
    await communicator.send_json_to({"type": "session.stream", "input": "hello big world"})
    chunks = []
    while (frame := await recv(communicator))["type"] == "stream.delta":
        assert frame["chunk"]  # never empty
        chunks.append(frame["chunk"])
    assert frame["type"] == "stream.end"
    assert chunks == ["echo:", " hello", " big", " world"]
    assert frame["result"]["turn"]["finalContent"] == "".join(chunks)
    await nothing_more(communicator)  # exactly the original protocol: no session.updated
    assert await turn_count_of(root_id) == 1
    await communicator.disconnect()


@bounded()
async def test_a_stream_streams_every_round_and_ends_with_the_last_rounds_answer(
    space_id, root_id, alice_key, runtime
) -> None:
    runtime.llm = OfflineLLM(script=[
        LLMResponse(content="forking", tool_calls=(ToolCall("c1", "no_such_tool", {}),)),
        LLMResponse(content="tool done"),
    ])
    communicator = await open_ws(space_id, alice_key)
    await enter(communicator, root_id)
    await communicator.send_json_to({"type": "session.stream", "input": "go"})
    chunks = []
    while (frame := await recv(communicator))["type"] == "stream.delta":
        chunks.append(frame["chunk"])
    assert chunks == ["forking", "tool", " done"]  # the engine streams every round
    turn = frame["result"]["turn"]
    assert (turn["finalContent"], turn["toolRoundCount"], turn["toolCallsExecuted"]) == (
        "tool done", 1, 1)  # authoritative: the last round's answer
    await communicator.disconnect()


@bounded()
async def test_a_stream_that_fails_midway_keeps_its_deltas_and_ends_with_an_error(
    space_id, root_id, alice_key, runtime
) -> None:
    runtime.llm = BreaksMidStreamLLM()
    communicator = await open_ws(space_id, alice_key)
    await enter(communicator, root_id)
    await communicator.send_json_to({"type": "session.stream", "input": "hello"})
    assert await recv(communicator) == {"type": "stream.delta", "chunk": "echo:"}
    assert await recv(communicator) == error("HANDLER_ERROR", "upstream failed mid-stream")
    await nothing_more(communicator)  # no stream.end, no session.updated
    assert (await records_of(root_id), await turn_count_of(root_id)) == ([], 0)
    assert (await ask(communicator, {"type": "session.leave"}))["type"] == "session.left"
    await communicator.disconnect()


@bounded()
async def test_fork_creates_a_child_and_the_connection_stays_in_the_parent(
    space_id, root_id, alice_key
) -> None:
    communicator = await open_ws(space_id, alice_key)
    await enter(communicator, root_id)
    reply = await ask(communicator, {"type": "session.fork",
                                     "options": {"label": "Child", "scope": "docs"}})
    assert reply["type"] == "session.forked"
    child = reply["child"]
    assert (child["label"], child["scope"], child["parentId"], child["sourceSessionId"],
            child["depth"], child["turnCount"]) == ("Child", "docs", root_id, root_id, 1, 0)
    assert child["metadata"] == {"sourceSessionId": root_id}
    rest = await RestClient(alice_key).post(
        f"/spaces/{space_id}/sessions/{root_id}/fork", {"label": "Second"},
        content_type="application/json")
    assert set(rest.json()) == set(child)  # the REST fork response's shape
    assert (await ask(communicator, {"type": "session.enter", "sessionId": child["id"]}))[
        "code"] == "ALREADY_ENTERED"
    await ask(communicator, {"type": "session.message", "input": "parent?"})
    assert (await turn_count_of(root_id), await turn_count_of(child["id"])) == (1, 0)
    await communicator.disconnect()


@bounded()
async def test_leave_then_leave_again(space_id, root_id, alice_key) -> None:
    communicator = await open_ws(space_id, alice_key)
    await enter(communicator, root_id)
    assert await ask(communicator, {"type": "session.leave"}) == {"type": "session.left",
                                                                  "sessionId": root_id}
    assert await ask(communicator, {"type": "session.leave"}) == error("NOT_ENTERED",
                                                                       "Not in a session")
    await enter(communicator, root_id)  # entering again is fine
    await communicator.disconnect()


# -- ordering and concurrency ----------------------------------------------------------------


@bounded()
async def test_frames_of_one_connection_are_answered_in_order(space_id, root_id,
                                                              alice_key) -> None:
    communicator = await open_ws(space_id, alice_key)
    frames = [
        {"type": "session.enter", "sessionId": root_id},
        {"type": "session.message", "input": "one"},
        {"type": "session.stream", "input": "two"},
        {"type": "session.fork", "options": {"label": "C"}},
        {"type": "session.message", "input": "three"},
        {"type": "session.enter", "sessionId": root_id},
        {"type": "session.leave"},
        {"type": "session.leave"},
    ]
    for frame in frames:  # all sent before the first answer is read
        await communicator.send_json_to(frame)
    answers = [await recv(communicator) for _ in range(10)]
    await nothing_more(communicator)
    assert [m["type"] if m["type"] != "error" else m["code"] for m in answers] == [
        "session.entered", "turn.complete", "stream.delta", "stream.delta", "stream.end",
        "session.forked", "turn.complete", "ALREADY_ENTERED", "session.left", "NOT_ENTERED",
    ]
    assert [a["result"]["turn"]["finalContent"] for a in answers if "result" in a] == [
        "echo: one", "echo: two", "echo: three"]
    assert await records_of(root_id) == [
        ("user", "one"), ("assistant", "echo: one"), ("user", "two"), ("assistant", "echo: two"),
        ("user", "three"), ("assistant", "echo: three"),
    ]
    await communicator.disconnect()


@bounded()
async def test_a_turn_waits_for_a_stream_on_the_same_session(space_id, root_id, alice_key,
                                                             gated: GatedLLM) -> None:
    streamer = await open_ws(space_id, alice_key)
    talker = await open_ws(space_id, alice_key)
    await enter(streamer, root_id)
    await enter(talker, root_id)
    gated.close_gate()
    await streamer.send_json_to({"type": "session.stream", "input": "long story"})
    assert await recv(streamer) == {"type": "stream.delta", "chunk": "echo:"}
    await gated.waiting.wait()  # the stream is in flight and holds the session
    await talker.send_json_to({"type": "session.message", "input": "quick question"})
    await nothing_more(talker)  # the turn waits for the stream
    gated.gate.set()
    assert [(await recv(streamer))["type"] for _ in range(3)] == [
        "stream.delta", "stream.delta", "stream.end"]
    assert (await recv(talker))["result"]["turn"]["finalContent"] == "echo: quick question"
    await nothing_more(talker)  # neither watches: no session.updated, for either turn
    await nothing_more(streamer)
    assert await records_of(root_id) == [
        ("user", "long story"), ("assistant", "echo: long story"),
        ("user", "quick question"), ("assistant", "echo: quick question"),
    ]
    assert await turn_count_of(root_id) == 2
    await streamer.disconnect()
    await talker.disconnect()


# -- disconnects -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["session.stream", "session.message"])
@bounded()
async def test_a_turn_in_flight_is_persisted_when_the_client_leaves(
    space_id, root_id, alice_key, gated: GatedLLM, kind: str
) -> None:
    communicator = await open_ws(space_id, alice_key)
    await enter(communicator, root_id)
    gated.close_gate()
    await communicator.send_json_to({"type": kind, "input": "do not lose me"})
    if kind == "session.stream":
        assert (await recv(communicator))["chunk"] == "echo:"
    await gated.waiting.wait()
    await communicator.disconnect(timeout=WAIT)  # the consumer returns at once
    assert connections.size == 1  # released only once the turn is done
    gated.gate.set()
    await operations.drain()
    assert await records_of(root_id) == [("user", "do not lose me"),
                                         ("assistant", "echo: do not lose me")]
    assert await turn_count_of(root_id) == 1
    assert connections.size == 0


@bounded()
async def test_a_turn_in_flight_survives_the_server_cancelling_the_consumer(
    space_id, root_id, alice_key, gated: GatedLLM
) -> None:
    communicator = await open_ws(space_id, alice_key)
    await enter(communicator, root_id)
    gated.close_gate()
    await communicator.send_json_to({"type": "session.stream", "input": "cancelled under me"})
    assert (await recv(communicator))["chunk"] == "echo:"
    await gated.waiting.wait()
    communicator.future.cancel()  # what a server does to an application that does not exit
    await asyncio.wait([communicator.future])
    assert connections.size == 1
    gated.gate.set()
    await operations.drain()
    assert await records_of(root_id) == [("user", "cancelled under me"),
                                         ("assistant", "echo: cancelled under me")]
    assert connections.size == 0


@bounded()
async def test_sending_to_a_socket_that_is_gone_does_not_raise(space_id, root_id,
                                                               alice_key) -> None:
    broken = asyncio.Event()

    async def app_with_a_dying_socket(scope, receive, send):
        async def dying_send(message):
            if broken.is_set() and message["type"] == "websocket.send":
                raise OSError("connection reset by peer")
            await send(message)

        return await application(scope, receive, dying_send)

    communicator = WebsocketCommunicator(app_with_a_dying_socket, ws_path(space_id),
                                         headers=key_header(alice_key))
    assert (await communicator.connect(timeout=WAIT))[0]
    await enter(communicator, root_id)
    broken.set()
    await communicator.send_json_to({"type": "session.stream", "input": "into the void"})
    await communicator.send_json_to({"type": "session.message", "input": "again"})
    await nothing_more(communicator)
    await operations.drain()
    assert not communicator.future.done()  # the consumer did not crash
    assert await turn_count_of(root_id) == 2
    await communicator.disconnect()


# -- live updates ----------------------------------------------------------------------------


@bounded()
async def test_only_watching_connections_hear_of_turns_and_never_of_their_own(
    space_id, root_id, alice_key, runtime
) -> None:
    child = await (await runtime.agent(space_id)).fork(root_id, _options("Elsewhere"))
    first = await open_ws(space_id, alice_key)
    second = await open_ws(space_id, alice_key)
    plain = await open_ws(space_id, alice_key)
    elsewhere = await open_ws(space_id, alice_key)
    await watch(first, root_id)
    await watch(second, root_id)
    await enter(plain, root_id)  # no watch: a client of the original protocol
    await watch(elsewhere, child.id)

    assert (await ask(first, {"type": "session.message", "input": "hi"}))["type"] == (
        "turn.complete")
    update = {"type": "session.updated", "sessionId": root_id, "turnCount": 1}
    assert await recv(second) == update
    await nothing_more(first)  # its own turn: the answer said it all

    response = await RestClient(alice_key).post(
        f"/spaces/{space_id}/sessions/{root_id}/turn", {"input": "from rest"},
        content_type="application/json")
    assert response.status_code == 200
    assert await recv(first) == {**update, "turnCount": 2}
    assert await recv(second) == {**update, "turnCount": 2}

    assert (await ask(plain, {"type": "session.message", "input": "plain"}))["type"] == (
        "turn.complete")
    assert await recv(first) == {**update, "turnCount": 3}
    assert await recv(second) == {**update, "turnCount": 3}

    await ask(second, {"type": "session.leave"})
    await enter(second, root_id)  # entered again, without watch
    await ask(first, {"type": "session.message", "input": "after leave"})
    for communicator in (first, second, plain, elsewhere):
        await nothing_more(communicator)  # plain and elsewhere never heard anything
    for communicator in (first, second, plain, elsewhere):
        await communicator.disconnect()


@bounded()
async def test_watch_must_be_a_boolean(space_id, root_id, alice_key) -> None:
    communicator = await open_ws(space_id, alice_key)
    for watch_value in ["yes", 1, None, {}]:
        assert await ask(communicator, {"type": "session.enter", "sessionId": root_id,
                                        "watch": watch_value}) == error(
            "HANDLER_ERROR", "watch must be a boolean")
    reply = await ask(communicator, {"type": "session.enter", "sessionId": root_id,
                                     "watch": False})
    assert reply["type"] == "session.entered"
    assert await ask(communicator, {"type": "session.enter", "sessionId": root_id,
                                    "watch": "x"}) == error(
        "ALREADY_ENTERED", "Already in a session, leave first")  # the state rule first
    await communicator.disconnect()


@bounded()
async def test_a_strict_client_sees_exactly_the_pages_frames_while_another_streams(
    space_id, root_id, alice_key, gated: GatedLLM
) -> None:
    strict = await open_ws(space_id, alice_key)
    other = await open_ws(space_id, alice_key)
    await enter(strict, root_id)
    await watch(other, root_id)
    gated.close_gate()
    await other.send_json_to({"type": "session.stream", "input": "long story"})
    assert await recv(other) == {"type": "stream.delta", "chunk": "echo:"}
    await gated.waiting.wait()
    await strict.send_json_to({"type": "session.message", "input": "meanwhile"})
    gated.gate.set()
    assert [(await recv(other))["type"] for _ in range(3)] == [
        "stream.delta", "stream.delta", "stream.end"]
    assert (await recv(strict))["type"] == "turn.complete"
    assert await recv(other) == {"type": "session.updated", "sessionId": root_id,
                                 "turnCount": 2}  # the strict client's turn
    await strict.send_json_to({"type": "session.stream", "input": "my own"})
    types = []
    while (frame := await recv(strict))["type"] == "stream.delta":
        types.append(frame["type"])
    assert (types, frame["type"]) == (["stream.delta"] * 3, "stream.end")
    assert (await recv(other))["turnCount"] == 3
    response = await RestClient(alice_key).post(
        f"/spaces/{space_id}/sessions/{root_id}/turn", {"input": "rest"},
        content_type="application/json")
    assert response.status_code == 200
    assert (await recv(other))["turnCount"] == 4
    await nothing_more(strict)  # no frame the original protocol does not have, ever
    await nothing_more(other)
    await strict.disconnect()
    await other.disconnect()


@bounded()
async def test_only_a_watching_connection_uses_the_channel_layer(
    space_id, root_id, alice_key, monkeypatch
) -> None:
    calls: list[str] = []
    layer = get_channel_layer()
    # The process's one listener for turn cancels (sessions_app/live.py) joins its group once,
    # with the first turn; it is not a connection's: start it before counting.
    live.listen_for_turn_signals()
    await asyncio.sleep(0.2)
    for name in ("new_channel", "group_add", "group_discard", "receive"):
        original = getattr(layer, name)

        def counted(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(layer, name, counted)
    plain = await open_ws(space_id, alice_key)
    await enter(plain, root_id)
    await ask(plain, {"type": "session.message", "input": "hi"})
    await ask(plain, {"type": "session.leave"})
    await plain.disconnect()
    await operations.drain()
    assert calls == []  # no channel, no group, no round trip to Redis

    watching = await open_ws(space_id, alice_key)
    await watch(watching, root_id)
    await ask(watching, {"type": "session.leave"})
    await watch(watching, root_id)
    await watching.disconnect()
    await operations.drain()
    assert [c for c in calls if c != "receive"] == [
        "new_channel", "group_add", "group_discard", "group_add", "group_discard"]
    assert await group_members(root_id) == []


# -- the queue and the worker ----------------------------------------------------------------


@bounded()
async def test_frames_sent_during_a_stream_are_answered_after_it_in_order(
    space_id, root_id, alice_key, gated: GatedLLM, settings
) -> None:
    settings.STELLO = {**settings.STELLO, "WS_MAX_FRAME_BYTES": 2048}
    communicator = await open_ws(space_id, alice_key)
    await enter(communicator, root_id)
    gated.close_gate()
    await communicator.send_json_to({"type": "session.stream", "input": "first"})
    assert (await recv(communicator))["chunk"] == "echo:"
    await gated.waiting.wait()
    await communicator.send_to(text_data=json.dumps({"type": "session.message",
                                                     "input": "x" * 2100}))
    await communicator.send_to(bytes_data=b"binary")
    await communicator.send_json_to({"type": "session.message", "input": "second"})
    await communicator.send_json_to({"type": "nope"})
    await nothing_more(communicator)  # all wait behind the stream, even the refusals
    gated.gate.set()
    frames = [await recv(communicator) for _ in range(6)]
    assert [f["type"] for f in frames[:2]] == ["stream.delta", "stream.end"]
    assert frames[2:4] == [error("HANDLER_ERROR", "frame too large: at most 2048 bytes"),
                           error("PARSE_ERROR", "Binary frames are not supported")]
    assert frames[4]["result"]["turn"]["finalContent"] == "echo: second"
    assert frames[5] == error("UNKNOWN_TYPE", "Unknown message type: nope")
    await nothing_more(communicator)
    await communicator.disconnect()


@bounded()
async def test_the_queue_is_bounded_and_the_socket_is_read_while_a_stream_runs(
    space_id, root_id, alice_key, gated: GatedLLM, monkeypatch
) -> None:
    monkeypatch.setattr(SessionConsumer, "MAX_PENDING_FRAMES", 2)
    communicator = await open_ws(space_id, alice_key)
    await enter(communicator, root_id)
    gated.close_gate()
    await communicator.send_json_to({"type": "session.stream", "input": "hold"})
    assert (await recv(communicator))["chunk"] == "echo:"
    await gated.waiting.wait()
    for n in range(4):
        await communicator.send_json_to({"type": "session.message", "input": f"q{n}"})
    # Read while the stream is still held: the two frames over the bound are refused at once.
    too_many = error("HANDLER_ERROR", "too many pending frames")
    assert [await recv(communicator), await recv(communicator)] == [too_many, too_many]
    await nothing_more(communicator)
    gated.gate.set()
    frames = [await recv(communicator) for _ in range(4)]
    assert [f["type"] for f in frames] == ["stream.delta", "stream.end", "turn.complete",
                                           "turn.complete"]
    assert [f["result"]["turn"]["finalContent"] for f in frames[2:]] == ["echo: q0", "echo: q1"]
    await nothing_more(communicator)
    assert (await ask(communicator, {"type": "session.leave"}))["type"] == "session.left"
    await communicator.disconnect()
    assert await turn_count_of(root_id) == 3


@bounded()
async def test_a_watcher_that_leaves_mid_stream_is_released_after_the_turn_is_saved(
    space_id, root_id, alice_key, gated: GatedLLM
) -> None:
    communicator = await open_ws(space_id, alice_key)
    await watch(communicator, root_id)
    gated.close_gate()
    await communicator.send_json_to({"type": "session.stream", "input": "keep me"})
    assert (await recv(communicator))["chunk"] == "echo:"
    await gated.waiting.wait()
    await communicator.send_json_to({"type": "session.message", "input": "dropped"})
    await communicator.disconnect(timeout=WAIT)
    assert connections.size == 1 and len(await group_members(root_id)) == 1
    gated.gate.set()
    await operations.drain()
    assert await records_of(root_id) == [("user", "keep me"), ("assistant", "echo: keep me")]
    assert await turn_count_of(root_id) == 1  # the frame still queued was not handled
    assert connections.size == 0 and await group_members(root_id) == []


# -- the registry ----------------------------------------------------------------------------


@bounded()
async def test_the_registry_tracks_each_open_connection(space_id, root_id, alice, alice_key,
                                                        bob_key) -> None:
    assert connections.size == 0
    first = await open_ws(space_id, alice_key)
    second = await open_ws(space_id, alice_key)
    assert connections.size == 2
    refused = WebsocketCommunicator(application, ws_path(space_id), headers=key_header(bob_key))
    assert (await refused.connect(timeout=WAIT))[0] is False
    assert connections.size == 2

    await enter(first, root_id)
    states = connections.states()
    assert sorted((s.user_id, s.space_id, s.session_id or "") for s in states) == [
        (str(alice.pk), space_id, ""), (str(alice.pk), space_id, root_id)]
    assert all(connections.get_state(s.connection_id) is s for s in states)
    await ask(first, {"type": "session.leave"})
    assert [s.session_id for s in connections.states()] == [None, None]

    await first.disconnect()
    assert connections.size == 1
    await second.disconnect()
    assert connections.size == 0


# -- database connections --------------------------------------------------------------------


def pooled_connections_in_use() -> int:
    from django.db import connections as databases

    stats = databases["default"].pool.get_stats()
    return stats["pool_size"] - stats["pool_available"]


@pytest.mark.postgres
@bounded(60)
async def test_connections_and_frames_give_their_database_connections_back(
    space_id, root_id, alice_key, bob_key
) -> None:
    """Connects (a key looked up in the database) and frames must not keep pooled database
    connections (Django's pool holds at most 20 by default)."""
    await sync_to_async(pooled_connections_in_use)()  # the test's own thread holds one
    before = await sync_to_async(pooled_connections_in_use)()
    for _ in range(6):  # a leak of two per round fails the count, under the pool size
        unknown_key = "stello_AAAAAAAA_" + "c" * 43  # looked up in the database, then refused
        for key in (unknown_key, bob_key):
            refused = WebsocketCommunicator(application, ws_path(space_id),
                                            headers=key_header(key))
            assert (await refused.connect(timeout=WAIT))[0] is False
        communicator = await open_ws(space_id, alice_key)
        await enter(communicator, root_id)
        assert (await ask(communicator, {"type": "session.enter", "sessionId": str(uuid.uuid4())}
                          ))["type"] == "error"
        await communicator.disconnect()
    await operations.drain()
    assert await sync_to_async(pooled_connections_in_use)() <= before


# -- thread hops -----------------------------------------------------------------------------


class ThreadHops:
    """Counts every crossing between the event loop and a thread through asgiref (ours,
    Channels' and Django's alike), by the name of what crossed."""

    def __init__(self, monkeypatch) -> None:
        self.counting = False
        self.crossed: list[str] = []
        for cls in (SyncToAsync, AsyncToSync):
            original = cls.__call__

            def counted(bridge, *args: Any, _original: Any = original, **kwargs: Any):
                if self.counting:
                    func = getattr(bridge, "func", None) or getattr(bridge, "awaitable", None)
                    self.crossed.append(
                        f"{type(bridge).__name__}({getattr(func, '__qualname__', func)})")
                return _original(bridge, *args, **kwargs)

            monkeypatch.setattr(cls, "__call__", counted)


async def hot_path_cycle(space_id: str, root_id: str, key: str) -> None:
    """Connect, enter, stream, message, fork, disconnect: what a WebSocket client does most."""
    communicator = await open_ws(space_id, key)
    await enter(communicator, root_id)
    await communicator.send_json_to({"type": "session.stream", "input": "stream"})
    while (await recv(communicator))["type"] == "stream.delta":
        pass
    assert (await ask(communicator, {"type": "session.message", "input": "message"}))[
        "type"] == "turn.complete"
    assert (await ask(communicator, {"type": "session.fork", "options": {"label": "Kid"}}))[
        "type"] == "session.forked"
    await communicator.disconnect()
    await operations.drain()


@pytest.mark.postgres
@bounded(60)
async def test_the_websocket_hot_paths_make_no_thread_hop(space_id, root_id, alice_key,
                                                          monkeypatch) -> None:
    hops = ThreadHops(monkeypatch)
    await hot_path_cycle(space_id, root_id, alice_key)  # caches the key, builds the agent
    hops.counting = True
    await hot_path_cycle(space_id, root_id, alice_key)
    hops.counting = False
    assert hops.crossed == []
