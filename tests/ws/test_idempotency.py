"""`requestId` on WebSocket frames, through the real ASGI application (SQLite or PostgreSQL).

alice owns `space` (root session `root_id`); bob has his own key and space, and uses the same
request ids independently.
"""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async

from sessions_app.runtime.pool import Runtime
from spaces.apikeys import apikey_create
from spaces.models import IdempotencyRecord
from spaces.services import space_create
from tests.ws import test_consumer
from tests.ws.test_consumer import (
    GatedLLM,
    ask,
    bounded,
    enter,
    nothing_more,
    open_ws,
    records_of,
    recv,
    turn_count_of,
)

pytestmark = pytest.mark.django_db(transaction=True)

# The consumer tests' fixtures: no consolidation, this test's runtime (closed afterwards), and
# the gated offline LLM.
no_consolidation = test_consumer.no_consolidation
runtime = test_consumer.runtime
gated = test_consumer.gated


@sync_to_async
def stored_keys() -> list[str]:
    return sorted(IdempotencyRecord.objects.values_list("key", flat=True))


async def eventually_stored(keys: list[str]) -> bool:
    for _ in range(100):
        if await stored_keys() == keys:
            return True
        await asyncio.sleep(0.05)
    return False


@bounded()
async def test_a_repeated_message_is_answered_from_the_store(
        space_id: str, root_id: str, alice_key: str) -> None:
    ws = await open_ws(space_id, alice_key)
    await enter(ws, root_id)
    frame = {"type": "session.message", "input": "hi", "requestId": "m-1"}

    first = await ask(ws, frame)
    again = await ask(ws, {"requestId": "m-1", "input": "hi", "type": "session.message"})

    assert first["type"] == "turn.complete" and first["requestId"] == "m-1"
    assert "replayed" not in first
    assert again == {**first, "replayed": True}
    assert await records_of(root_id) == [("user", "hi"), ("assistant", "echo: hi")]
    await ws.disconnect()


@bounded()
async def test_frames_without_a_request_id_are_unchanged(
        space_id: str, root_id: str, alice_key: str) -> None:
    ws = await open_ws(space_id, alice_key)
    await enter(ws, root_id)
    answer = await ask(ws, {"type": "session.message", "input": "hi"})
    assert set(answer) == {"type", "result"}
    await ws.disconnect()
    assert await stored_keys() == []


@bounded()
async def test_a_repeated_stream_replays_its_end_frame_only(
        space_id: str, root_id: str, alice_key: str) -> None:
    ws = await open_ws(space_id, alice_key)
    await enter(ws, root_id)
    frame = {"type": "session.stream", "input": "tell me", "requestId": "s-1"}
    await ws.send_json_to(frame)
    frames = [await recv(ws)]
    while frames[-1]["type"] != "stream.end":
        frames.append(await recv(ws))
    assert frames[0]["type"] == "stream.delta" and "requestId" not in frames[0]

    replay = await ask(ws, frame)

    assert replay == {**frames[-1], "replayed": True}
    await nothing_more(ws)
    assert await turn_count_of(root_id) == 1
    await ws.disconnect()


@bounded()
async def test_a_repeated_fork_forks_once(space_id: str, root_id: str, alice_key: str) -> None:
    ws = await open_ws(space_id, alice_key)
    await enter(ws, root_id)
    frame = {"type": "session.fork", "options": {"label": "child"}, "requestId": "f-1"}

    first = await ask(ws, frame)
    again = await ask(ws, frame)

    assert first["type"] == "session.forked"
    assert again["child"] == first["child"] and again["replayed"] is True
    assert await stored_keys() == ["f-1"]
    await ws.disconnect()


@bounded()
async def test_the_same_id_with_another_frame_is_refused(
        space_id: str, root_id: str, alice_key: str) -> None:
    ws = await open_ws(space_id, alice_key)
    await enter(ws, root_id)
    await ask(ws, {"type": "session.message", "input": "a", "requestId": "x"})

    refused = await ask(ws, {"type": "session.message", "input": "b", "requestId": "x"})

    assert refused == {"type": "error", "code": "HANDLER_ERROR",
                       "message": "This Idempotency-Key was already used for a different "
                                  "request"}
    assert await records_of(root_id) == [("user", "a"), ("assistant", "echo: a")]
    await ws.disconnect()


@pytest.mark.parametrize("request_id", ["", "x" * 256, "é", 7])
@bounded()
async def test_a_malformed_request_id_is_refused(
        space_id: str, root_id: str, alice_key: str, request_id: object) -> None:
    ws = await open_ws(space_id, alice_key)
    await enter(ws, root_id)
    refused = await ask(ws, {"type": "session.message", "input": "a", "requestId": request_id})
    assert refused == {"type": "error", "code": "HANDLER_ERROR", "message":
                       "requestId must be a string of 1 to 255 visible ASCII characters"}
    assert await records_of(root_id) == []
    await ws.disconnect()


@bounded(30)
async def test_a_stream_retried_after_a_disconnect_gets_the_stored_result(
        space_id: str, root_id: str, alice_key: str, gated: GatedLLM) -> None:
    frame = {"type": "session.stream", "input": "long story", "requestId": "retry-me"}
    first = await open_ws(space_id, alice_key)
    await enter(first, root_id)
    gated.close_gate()
    await first.send_json_to(frame)
    assert (await recv(first))["type"] == "stream.delta"
    await asyncio.wait_for(gated.waiting.wait(), 5)
    await first.disconnect()  # the turn is still held at the gate

    second = await open_ws(space_id, alice_key)
    await enter(second, root_id)
    await second.send_json_to(frame)  # waits for the first run
    await nothing_more(second)
    gated.gate.set()
    replay = await recv(second)

    assert replay["type"] == "stream.end" and replay["replayed"] is True
    assert replay["result"]["turn"]["finalContent"] == "echo: long story"
    assert await turn_count_of(root_id) == 1
    await second.disconnect()


@bounded()
async def test_request_ids_are_per_user(
        space_id: str, root_id: str, alice_key: str, bob, runtime: Runtime) -> None:
    bob_key = (await sync_to_async(apikey_create)(user=bob, name="bob"))[1]
    bob_space = await sync_to_async(space_create)(owner=bob, label="Bob's")
    from sessions_app.models import Session

    bob_root = await sync_to_async(
        lambda: str(Session.objects.get(space=bob_space, role="main").pk))()
    alice_ws = await open_ws(space_id, alice_key)
    bob_ws = await open_ws(str(bob_space.pk), bob_key)
    await enter(alice_ws, root_id)
    await enter(bob_ws, bob_root)

    alices = await ask(alice_ws, {"type": "session.message", "input": "a", "requestId": "r"})
    bobs = await ask(bob_ws, {"type": "session.message", "input": "b", "requestId": "r"})

    assert "replayed" not in alices and "replayed" not in bobs
    assert bobs["result"]["turn"]["finalContent"] == "echo: b"
    # The answer frame goes out before its record is written (a retry waits on the key's lock).
    assert await eventually_stored(["r", "r"])
    await alice_ws.disconnect()
    await bob_ws.disconnect()
