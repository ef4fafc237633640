"""Announcements to WebSocket listeners, through the channel layer (Redis across processes).

`announce_turn` is called by the store after a turn has committed, so a rolled-back turn never
reaches a client. It is called from async code on the event loop (both stores call it there)
and returns at once: the announcement goes out with the session's next batch of live events
(`live.notify`; the turn's `turn.completed` follows the commit at once, so both leave in one
Redis round trip). The turn never waits for the channel layer, and a failure to announce is
logged, never raised into the turn; `live.drain()` waits until it has been sent.

Watching is opt-in and rare, so most announcements are heard by nobody. On the pub/sub layer
a group send is a single `PUBLISH`, which Redis drops when no process subscribes to the group,
so there is nothing cheaper to ask first; sent with the batch, it costs no round trip of its
own. The in-memory layer answers without I/O either way.

`origin` names the WebSocket connection whose frame is being handled (the consumer sets it
around each engine call; REST and background work leave it unset). The announcement carries
it, so that connection is not told about its own turn (its answer already says so).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any

logger = logging.getLogger("stello.events")

origin: contextvars.ContextVar[str | None] = contextvars.ContextVar("stello_event_origin",
                                                                   default=None)


def session_group(session_id: str) -> str:
    return f"session.{session_id}"


def announce_turn(space_id: str, session_id: str, turn_count: int) -> None:
    """Tell every connection watching `session_id` (in any process) that a turn committed,
    except the connection that made it (`origin`)."""
    _announce(space_id, {"type": "session.updated", "sessionId": session_id,
                         "turnCount": turn_count})


def announce_approval_required(session_id: str, payload: dict[str, Any]) -> None:
    """Tell the connections watching `session_id` that a tool call of its turn waits for a
    human, except the connection running the turn (`origin`: it is told directly)."""
    _announce("", {"type": "tool.approval_required", "sessionId": session_id,
                   "payload": dict(payload)})


def _announce(space_id: str, message: dict[str, Any]) -> None:
    from .live import notify  # (live tells approvals through this module)

    if (made_by := origin.get()) is not None:
        message["origin"] = made_by
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # a programming error, but the turn has committed: never fail it
        logger.error("%s of session %s (space %s) not announced: no running event loop",
                     message["type"], message["sessionId"], space_id)
        return
    session_id = message["sessionId"]
    notify(session_id, session_group(session_id), message)
