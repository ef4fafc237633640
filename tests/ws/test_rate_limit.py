"""STELLO_RATE_LIMIT on the WebSocket, in process (the embedded default or PostgreSQL + Redis):
turns, streams, forks and tool approvals count against the key's counter, the REST one; other
frames do not.
The same on real server processes: tests/test_limits_servers.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from django.test import AsyncClient

from spaces.throttling import ahit, rate_limiter
from tests.ws.conftest import finish_ws_work
from tests.ws.test_consumer import ask, enter, open_ws, recv

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def limited(settings) -> AsyncIterator[None]:
    settings.STELLO = {**settings.STELLO, "CONSOLIDATE_EVERY_N_TURNS": 0,
                       "CONSOLIDATE_ON_ARCHIVE": False, "RATE_LIMIT": "3/min"}
    await rate_limiter.areset()
    yield
    await finish_ws_work()
    await rate_limiter.areset()


async def test_turns_streams_and_forks_share_the_keys_rest_budget(space_id, root_id,
                                                                  alice_key) -> None:
    communicator = await open_ws(space_id, alice_key)
    await enter(communicator, root_id)  # not counted
    assert (await ask(communicator, {"type": "session.message", "input": "1"}))["type"] == (
        "turn.complete")
    await communicator.send_json_to({"type": "session.stream", "input": "2"})
    while (frame := await recv(communicator))["type"] == "stream.delta":
        pass
    assert frame["type"] == "stream.end"
    assert (await ask(communicator, {"type": "session.fork", "options": {"label": "3"}}))[
        "type"] == "session.forked"
    refused = await ask(communicator, {"type": "session.message", "input": "4"})
    assert refused["type"] == "error" and refused["code"] == "RATE_LIMITED"
    assert "Expected available in" in refused["message"]
    # Still open; leaving is not counted.
    assert (await ask(communicator, {"type": "session.leave"}))["type"] == "session.left"
    response = await AsyncClient().get("/spaces", headers={"X-API-Key": alice_key})
    assert response.status_code == 429 and int(response["Retry-After"]) >= 1
    await communicator.disconnect()


async def test_concurrent_hits_of_one_key_pass_the_limit_exactly(settings) -> None:
    settings.STELLO = {**settings.STELLO, "RATE_LIMIT": "20/min"}
    decisions = await asyncio.gather(*(ahit("concurrent-key") for _ in range(100)))
    assert sum(d.allowed for d in decisions) == 20
    assert all(1 <= d.retry_after <= 60 for d in decisions if not d.allowed)


async def test_tool_approve_frames_count_like_the_rest_post(space_id, root_id,
                                                            alice_key) -> None:
    communicator = await open_ws(space_id, alice_key)
    await enter(communicator, root_id)
    answers = [await ask(communicator, {"type": "tool.approve", "callId": "c1",
                                        "approve": True}) for _ in range(4)]
    # Nothing waits here, so the first three are refused for that; the fourth by the limit.
    assert [a["message"] for a in answers[:3]] == [
        "No turn of this session waits for an approval"] * 3
    assert answers[3]["code"] == "RATE_LIMITED"
    await communicator.disconnect()
