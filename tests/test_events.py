"""Announcements after commit, and the channel layer they travel through on Redis."""

from __future__ import annotations

import asyncio

import pytest
from channels.layers import get_channel_layer

from sessions_app import events, live

REDIS_PY_SOCKET_TIMEOUT = 5  # seconds: redis-py's default, which the layer must never run into


async def test_an_announcement_reaches_the_watchers_and_names_its_origin() -> None:
    layer = get_channel_layer()
    channel = await layer.new_channel()
    group = events.session_group("watched-session")
    await layer.group_add(group, channel)
    try:
        events.announce_turn("space", "unwatched-session", 1)  # heard by nobody, fails nothing
        token = events.origin.set("connection-1")
        try:
            events.announce_turn("space", "watched-session", 2)
        finally:
            events.origin.reset(token)
        await live.drain()
        async with asyncio.timeout(5):
            received = await layer.receive(channel)
        assert received == {"type": "session.updated", "sessionId": "watched-session",
                            "turnCount": 2, "origin": "connection-1"}
    finally:
        await layer.group_discard(group, channel)


@pytest.mark.redis
async def test_a_receive_on_redis_waits_past_the_socket_timeout_and_still_delivers() -> None:
    """The list-based layer blocked 5 s per receive on a connection whose socket timeout is
    5 s, so every idle receive failed with `Timeout reading from ...` after 5 s."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    waiting = asyncio.create_task(layer.receive(channel))
    done, _ = await asyncio.wait([waiting], timeout=REDIS_PY_SOCKET_TIMEOUT + 1.5)
    assert not done, waiting.exception()  # still waiting, no error
    await layer.send(channel, {"type": "probe", "n": 1})
    async with asyncio.timeout(5):
        assert await waiting == {"type": "probe", "n": 1}
