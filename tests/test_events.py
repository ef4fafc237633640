"""Announcements after commit: only sent when someone watches the session."""

from __future__ import annotations

from unittest import mock

import pytest
from channels.layers import get_channel_layer

from sessions_app import events


@pytest.mark.redis
async def test_a_turn_nobody_watches_costs_no_group_send() -> None:
    layer = get_channel_layer()
    with mock.patch.object(layer, "group_send", wraps=layer.group_send) as group_send:
        events.announce_turn("space", "unwatched-session", 1)
        await events.drain()
        assert group_send.call_count == 0

        channel = await layer.new_channel()
        await layer.group_add(events.session_group("watched-session"), channel)
        try:
            events.announce_turn("space", "watched-session", 2)
            await events.drain()
            assert group_send.call_count == 1
            received = await layer.receive(channel)
            assert received["sessionId"] == "watched-session" and received["turnCount"] == 2
        finally:
            await layer.group_discard(events.session_group("watched-session"), channel)
