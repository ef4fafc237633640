"""Announcements to WebSocket listeners, through the channel layer (Redis across processes).

Sent after commit only, so a rolled-back turn never reaches a client.
"""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

logger = logging.getLogger("stello.events")


def session_group(session_id: str) -> str:
    return f"session.{session_id}"


def announce_turn(space_id: str, session_id: str, turn_count: int) -> None:
    """Tell every connection watching `session_id` (in any process) that a turn completed."""
    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": "session.updated", "sessionId": session_id, "turnCount": turn_count}
    try:
        async_to_sync(layer.group_send)(session_group(session_id), message)
    except Exception:  # a notification must never fail the turn that is already committed
        logger.exception("could not announce turn of session %s (space %s)", session_id, space_id)
