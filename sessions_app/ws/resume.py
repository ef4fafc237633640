"""`session.resume` for the WebSocket consumer (opt-in; docs/live-turns.md).

A connection that resumes instead of entering gets `session.entered` (with `seq`), then every
event of the session's log after `since` as frames `{"type": <event>, "seq", ...payload}`, in
order, then live: turns made anywhere (REST, other connections, other processes) included,
and its own. Its own turn's answer (`stream.end` / `turn.complete`, with the seq of the turn's
`turn.completed`) comes after the turn's events, so the deltas of its own streams arrive as
`stream.delta` event frames (with `chunk`, as the original frame, plus `seq`, `turnId`,
`round`). Connections that entered the original way see none of this.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Coroutine
from typing import Any

from spaces.selectors import parse_uuid

from .. import approvals, live
from ..engine.errors import InvalidInput, SessionNotFound, StelloError, TurnNotWaiting
from ..engine.types import LogEvent
from ..runtime.pool import runtimes
from ..wire import bootstrap_json
from . import protocol as p
from .connections import connections

logger = logging.getLogger("stello.ws")

OWN_ANSWER_WAIT_SECONDS = 5.0  # how long an own turn's answer waits for its events to be out


class ResumeMixin:
    """Mixed into SessionConsumer (which provides `agent`, `reply`, `connection_id`)."""

    _follower: live.Follower | None = None
    _forwarder: asyncio.Task[None] | None = None
    _sent_seq: int = 0
    _seq_moved: asyncio.Event | None = None
    _aside: set[asyncio.Task[None]] | None = None  # out-of-band frames, frames sent soon

    @property
    def resumed(self) -> bool:
        return self._follower is not None

    # -- turn.cancel, tool.approve (out of band: they act on the frame being handled) ---------

    def handle_out_of_band(self, text: str) -> bool:
        try:
            message = p.parse_client_frame(text)
        except p.ProtocolError:
            return False  # the worker answers it in its place
        if message["type"] == "turn.cancel":
            self.run_aside(self._on_cancel(message))
        elif message["type"] == "tool.approve":
            self.run_aside(self._on_approve(message))
        else:
            return False
        return True

    def run_aside(self, work: Coroutine[Any, Any, None], *, fresh_context: bool = False) -> None:
        """Run `work` beside the worker (kept referenced until done); `fresh_context`: without
        the caller's context variables (e.g. an idempotent frame's capture)."""
        if self._aside is None:
            self._aside = set()
        task = asyncio.get_running_loop().create_task(
            work, context=contextvars.Context() if fresh_context else None)
        self._aside.add(task)
        task.add_done_callback(self._aside.discard)

    def send_soon(self, message: p.ServerMessage) -> None:
        """Send a frame from sync code (an engine callback), in the order of the calls."""
        self.run_aside(self.reply(message), fresh_context=True)  # type: ignore[attr-defined]

    async def _on_approve(self, message: p.ToolApprove) -> None:
        # A write, like REST's POST: it counts against the key's rate limit.
        refusal = (self.state_refusal(message["type"])  # type: ignore[attr-defined]
                   or await self.rate_refusal(message["type"]))  # type: ignore[attr-defined]
        if refusal is not None:
            await self.reply(refusal)  # type: ignore[attr-defined]
            return
        session_id = self.session_id  # type: ignore[attr-defined]
        try:
            agent = await self.agent()  # type: ignore[attr-defined]
            turn_id = message["turnId"]
            if turn_id is None:
                waiting = (await agent.store.load_turn_context(
                    session_id, history_after=None)).waiting_turns
                if not waiting:
                    raise TurnNotWaiting("No turn of this session waits for an approval")
                turn_id = waiting[0]
            decided = await approvals.answer(
                agent, session_id, turn_id, message["callId"], approve=message["approve"],
                reason=message["reason"], spawn=runtimes.current().spawn)
        except StelloError as exc:
            await self.reply(p.error(p.HANDLER_ERROR, exc.message))  # type: ignore
            return
        except Exception:
            logger.exception("tool.approve failed")
            await self.reply(p.error(p.HANDLER_ERROR, "Internal server error"))  # type: ignore
            return
        await self.reply(p.tool_approval(turn_id, decided.to_json()))  # type: ignore

    async def _on_cancel(self, message: p.TurnCancel) -> None:
        refusal = self.state_refusal(message["type"])  # type: ignore[attr-defined]
        if refusal is not None:
            await self.reply(refusal)  # type: ignore[attr-defined]
            return
        try:
            agent = await self.agent()  # type: ignore[attr-defined]
            turn_id = await live.cancel(agent, self.session_id,  # type: ignore[attr-defined]
                                        message["turnId"])
        except StelloError as exc:
            await self.reply(p.error(p.HANDLER_ERROR, exc.message))  # type: ignore
            return
        except Exception:
            logger.exception("turn.cancel failed")
            await self.reply(p.error(p.HANDLER_ERROR, "Internal server error"))  # type: ignore
            return
        await self.reply({"type": "turn.cancelled", "turnId": turn_id})  # type: ignore

    async def on_resume(self, message: p.SessionResume) -> None:
        parsed = parse_uuid(message["sessionId"])
        if parsed is None:
            raise SessionNotFound()
        session_id, since = str(parsed), message["since"]
        agent = await self.agent()  # type: ignore[attr-defined]
        follower = live.Follower(agent.store, session_id, since or 0)
        await follower.__aenter__()  # join first, read second (see live.py)
        try:
            newest = await follower.newest()  # this space only: SessionNotFound otherwise
            if since is None:
                saved = await agent.store.read_events(session_id, 1 << 62)
                follower.position = since = saved.current
            elif since > newest:
                raise InvalidInput(f"since is ahead of the session's newest event ({newest})")
            bootstrap = await agent.bootstrap(session_id)
        except BaseException:
            await follower.__aexit__(None, None, None)
            raise
        connections.attach_session(self.connection_id, session_id)  # type: ignore[attr-defined]
        self._follower, self._sent_seq, self._seq_moved = follower, since, asyncio.Event()
        entered: dict[str, Any] = {**p.session_entered(session_id, bootstrap_json(bootstrap)),
                                   "seq": since}
        await self.reply(entered)  # type: ignore[attr-defined]
        self._forwarder = asyncio.get_running_loop().create_task(self._forward(follower))

    async def _forward(self, follower: live.Follower) -> None:
        try:
            async for event in follower:
                await self.reply(await self._event_frame(follower, event))  # type: ignore
                self._sent_seq = event.seq
                assert self._seq_moved is not None
                self._seq_moved.set()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("forwarding events of session %s failed", follower.session_id)

    async def _event_frame(self, follower: live.Follower, event: LogEvent) -> dict[str, Any]:
        frame = event.to_json()
        if event.type == "gap":  # what was missed is gone: here is the session as it is now
            agent = await self.agent()  # type: ignore[attr-defined]
            frame["bootstrap"] = bootstrap_json(await agent.bootstrap(follower.session_id))
        return frame

    async def own_answer(self, frame: dict[str, Any], seq: int) -> None:
        """Send an own turn's answer once the turn's events (up to `seq`) are out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + OWN_ANSWER_WAIT_SECONDS
        while self._sent_seq < seq and self._seq_moved is not None:
            self._seq_moved.clear()
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(self._seq_moved.wait(), left)
            except TimeoutError:
                break
        await self.reply({**frame, "seq": seq})  # type: ignore[attr-defined]

    async def stop_following(self) -> None:
        follower, forwarder = self._follower, self._forwarder
        self._follower = self._forwarder = None
        if forwarder is not None:
            forwarder.cancel()
            await asyncio.wait([forwarder])
        if follower is not None:
            await follower.__aexit__(None, None, None)
