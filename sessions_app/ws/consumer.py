"""The WebSocket endpoint `/spaces/<spaceId>/ws`: an authorising wrapper, then a consumer that
only dispatches.

Connect (`Authenticated`, before any consumer exists): the API key comes from the `X-API-Key`
header of the upgrade or, for browsers that cannot set headers, from a `Sec-WebSocket-Protocol`
value that looks like a key (the connection is then accepted with that subprotocol, as
browsers require). A missing or bad key, an unknown space and another user's space refuse the
upgrade: with the ASGI WebSocket Denial Response extension
(`scope["extensions"]["websocket.http.response"]`, e.g. uvicorn, hypercorn) the client gets
401 / 404 / 403 and the JSON error body of the REST API; without it (daphne) the socket is
closed before accept, which the server answers with 403. A refused client never gets a
consumer, a channel-layer channel or a registry entry. No greeting follows a successful upgrade.

Frames: each text frame is parsed by `protocol.parse_client_frame` and sent to the handler of
its type (`HANDLERS`); every handler calls the engine through the per-process runtime. Frames
of one connection are handled one at a time, in order (Channels dispatches a consumer's
messages sequentially and each handler is awaited). Every failure becomes an `error` frame and
the connection stays open.

Each frame is handled in its own task (`operations`), under its own
`asgiref.sync.ThreadSensitiveContext`: Channels gives consumers no per-request context, and
without one the store's thread-sensitive ORM calls of every connection would queue on one
thread. The database connections that thread opened are closed when the frame is done. The
consumer awaits the task through `asyncio.shield`: when the client goes away and the server
cancels the consumer, the turn or stream still runs to completion and is persisted (its frames
are dropped), and the connection's bookkeeping is released after it. Sending to a closed socket
never raises. Channels' `AsyncConsumer.dispatch` already runs
`channels.db.aclose_old_connections()` before every message, and the store recycles stale
connections around each unit of work, so a connection that sat idle does not reuse a dead
database connection.

Live updates (our addition to the protocol): a connection that entered session S joins the
channel-layer group `session.<S>` (left on leave and on disconnect). After every committed turn
on S, through REST or any WebSocket connection in any process, the store announces it to the
group, and each member gets `{"type": "session.updated", "sessionId", "turnCount"}`. That
includes the connection that made the turn: events are delivered between frames, so it gets
the update after its own `turn.complete` / `stream.end`. This keeps the rule simple (every
watcher of S hears every turn of S); clients that do not care ignore the frame.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import aclosing, asynccontextmanager
from typing import Any, TypeVar

from asgiref.sync import SyncToAsync, ThreadSensitiveContext, sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import close_old_connections
from rest_framework.exceptions import APIException

from spaces.apikeys import looks_like_key
from spaces.auth import HEADER, ApiKeyError, aauthenticate_key
from spaces.selectors import parse_uuid, space_for_user

from ..api.errors import CODE_BY_DRF_CLASS, error_body
from ..engine.agent import SpaceAgent
from ..engine.errors import SessionNotFound, StelloError
from ..engine.types import StreamChunk, TurnResult
from ..events import session_group
from ..runtime.pool import runtimes
from ..wire import bootstrap_json, fork_child_json
from . import protocol as p
from .connections import connections

logger = logging.getLogger("stello.ws")

T = TypeVar("T")
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]

DENIAL_EXTENSION = "websocket.http.response"
INTERNAL_ERROR = "Internal server error"


# -- frame tasks --------------------------------------------------------------------------------


class Operations:
    """Strong references to the tasks that handle frames and release connections, so they
    finish even after their consumer is gone (RUF006). `drain()` waits for them (tests)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(_in_own_thread_context(work))
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("WebSocket operation failed", exc_info=task.exception())

    @property
    def size(self) -> int:
        return len(self._tasks)

    async def drain(self) -> None:
        """Wait until no task of the running loop is left (new ones may start meanwhile)."""
        loop = asyncio.get_running_loop()
        while pending := [t for t in self._tasks if t.get_loop() is loop]:
            await asyncio.wait(pending)


operations = Operations()


@asynccontextmanager
async def own_sync_thread() -> AsyncIterator[None]:
    """Thread-sensitive sync calls inside run on a thread of their own (not the process-wide
    one). On the way out, the database connections left open on that thread are closed: the
    thread ends with the block, and a pooled connection must go back to the pool."""
    async with ThreadSensitiveContext() as context:
        try:
            yield
        finally:
            if context in SyncToAsync.context_to_thread_executor:  # the thread was used
                await sync_to_async(close_old_connections)()


async def _in_own_thread_context(work: Coroutine[Any, Any, T]) -> T:
    async with own_sync_thread():
        return await work


# -- the upgrade ---------------------------------------------------------------------------------


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def credentials(scope: dict[str, Any]) -> tuple[str | None, str | None]:
    """(raw key, subprotocol to accept with). The header wins; a key offered as a subprotocol
    is used (and echoed, as browsers require) only when there is no header."""
    header = _header(scope, HEADER.lower().encode())
    if header is not None:
        return header, None
    offered = next((s for s in scope.get("subprotocols", ()) if looks_like_key(s)), None)
    return offered, offered


class Refused(Exception):
    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


async def authorize(scope: dict[str, Any]) -> dict[str, Any]:
    """`{"user_id", "space_id", "subprotocol"}` for the upgrade of `scope`, or Refused:
    401 missing / invalid key, then (REST's rule) 404 unknown or malformed space, 403 another
    user's space."""
    key, subprotocol = credentials(scope)
    try:
        async with own_sync_thread():
            user = await aauthenticate_key(key)  # a cached key costs no query
            space = await sync_to_async(space_for_user)(
                user_id=user.pk, space_id=scope["url_route"]["kwargs"]["space_id"]
            )
    except ApiKeyError as exc:
        raise Refused(401, exc.message, "UNAUTHENTICATED") from None
    except APIException as exc:  # NotFound / PermissionDenied
        code = next((c for cls, c in CODE_BY_DRF_CLASS.items() if isinstance(exc, cls)), "ERROR")
        raise Refused(exc.status_code, str(exc.detail), code) from None
    return {"user_id": str(user.pk), "space_id": str(space.pk), "subprotocol": subprotocol}


async def refuse(scope: dict[str, Any], send: Send, refusal: Refused) -> None:
    """Answer the upgrade with the refusal's status and JSON body where the server supports the
    WebSocket Denial Response extension; else close before accept (the server sends 403)."""
    if DENIAL_EXTENSION in (scope.get("extensions") or {}):
        headers = [(b"content-type", b"application/json")]
        if refusal.status == 401:
            headers.append((b"www-authenticate", HEADER.encode()))
        await send({"type": "websocket.http.response.start", "status": refusal.status,
                    "headers": headers})
        body = json.dumps(error_body(refusal.message, refusal.code)).encode()
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close"})


class Authenticated:
    """ASGI wrapper that decides the upgrade before the consumer exists: a refused client
    never gets a consumer, a channel-layer channel or a registry entry. On success the consumer
    finds `scope["stello"]` (see `authorize`) and receives the same `websocket.connect`."""

    def __init__(self, inner: ASGIApp) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        connect = await receive()
        if connect["type"] != "websocket.connect":  # gone before the handshake
            return
        try:
            stello = await authorize(scope)
        except Refused as refusal:
            await refuse(scope, send, refusal)
            return
        replayed = False

        async def receive_again() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return connect
            return await receive()

        await self.inner({**scope, "stello": stello}, receive_again, send)


async def not_found(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Every WebSocket path but `/spaces/<spaceId>/ws`."""
    if (await receive())["type"] == "websocket.connect":
        await refuse(scope, send, Refused(404, "Not Found", "NOT_FOUND"))


def _too_large(text: str, limit: int) -> bool:
    # A str has at most 4 UTF-8 bytes per character: only long frames are encoded to count.
    return len(text) > limit or (len(text) * 4 > limit and
                                 len(text.encode("utf-8", "surrogatepass")) > limit)


# -- the consumer -------------------------------------------------------------------------------


class SessionConsumer(AsyncWebsocketConsumer):
    connection_id: str | None = None
    space_id: str = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._closed = False  # the socket is gone: frames are dropped
        self._released = False  # registry entry and group membership are gone
        self._frame: asyncio.Task[None] | None = None

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Normally `disconnect` has released everything. If the server cancelled us (the
            # client left while a frame was being handled), release after that frame's task.
            self._closed = True
            if self.connection_id is not None and not self._released:
                operations.start(self._release_after(self._frame))

    # -- connect / disconnect ------------------------------------------------------------------

    async def connect(self) -> None:
        """The upgrade was authorised by `Authenticated`: register and accept."""
        stello = self.scope["stello"]
        self.space_id = stello["space_id"]
        self.connection_id = str(uuid.uuid4())
        connections.bind(self.connection_id, stello["user_id"], self.space_id)
        await self.accept(stello["subprotocol"])

    async def disconnect(self, code: int) -> None:
        await self._release()

    async def _release_after(self, frame: asyncio.Task[None] | None) -> None:
        if frame is not None:
            await asyncio.wait([frame])
        await self._release()

    async def _release(self) -> None:
        if self._released:
            return
        self._released = self._closed = True
        state = connections.unbind(self.connection_id) if self.connection_id else None
        if state is not None and state.session_id is not None:
            await self._leave_group(state.session_id)

    # -- frames --------------------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is None:
            await self.reply(p.error(p.PARSE_ERROR, "Binary frames are not supported"))
            return
        limit = settings.STELLO["WS_MAX_FRAME_BYTES"]
        if _too_large(text_data, limit):
            await self.reply(p.error(p.HANDLER_ERROR,
                                     f"frame too large: at most {limit} bytes"))
            return
        self._frame = operations.start(self.handle_frame(text_data))
        await asyncio.shield(self._frame)

    async def handle_frame(self, text: str) -> None:
        try:
            message = p.parse_client_frame(text)
        except p.ProtocolError as exc:
            # For a known type the connection-state rule is reported first, like the original
            # (`session.message` without input while not entered -> NOT_ENTERED).
            refusal = self.state_refusal(exc.message_type) if exc.message_type else None
            await self.reply(refusal or p.error(exc.code, exc.message))
            return
        refusal = self.state_refusal(message["type"])
        if refusal is not None:
            await self.reply(refusal)
            return
        try:
            await HANDLERS[message["type"]](self, message)
        except StelloError as exc:
            await self.reply(p.error(p.HANDLER_ERROR, exc.message))
        except Exception:
            logger.exception("WebSocket handler %s failed (space %s)", message["type"],
                             self.space_id)
            await self.reply(p.error(p.HANDLER_ERROR, INTERNAL_ERROR))

    def state_refusal(self, message_type: str) -> p.ErrorMessage | None:
        entered = self.session_id is not None
        if message_type == "session.enter" and entered:
            return p.error(p.ALREADY_ENTERED, p.ALREADY_ENTERED_MESSAGE)
        if message_type in p.NEEDS_SESSION and not entered:
            return p.error(p.NOT_ENTERED, p.NOT_ENTERED_MESSAGE)
        return None

    async def reply(self, message: p.ServerMessage) -> None:
        """Send one frame; dropped silently once the socket is closed."""
        if self._closed:
            return
        try:
            await self.send(text_data=p.encode(message))
        except Exception:  # the socket went away under us (servers differ in how they say it)
            self._closed = True
            logger.debug("dropped a frame for a closed WebSocket", exc_info=True)

    # -- state -----------------------------------------------------------------------------------

    @property
    def session_id(self) -> str | None:
        state = connections.get_state(self.connection_id) if self.connection_id else None
        return state.session_id if state else None

    async def agent(self) -> SpaceAgent:
        return await runtimes.current().agent(self.space_id)

    async def _join_group(self, session_id: str) -> None:
        if self.channel_layer is not None:
            await self.channel_layer.group_add(session_group(session_id), self.channel_name)

    async def _leave_group(self, session_id: str) -> None:
        if self.channel_layer is None:
            return
        try:
            await self.channel_layer.group_discard(session_group(session_id), self.channel_name)
        except Exception:  # membership expires with the layer's group_expiry anyway
            logger.warning("could not leave group of session %s", session_id, exc_info=True)

    # -- handlers (one per client message type) ------------------------------------------------

    async def on_enter(self, message: p.SessionEnter) -> None:
        parsed = parse_uuid(message["sessionId"])
        if parsed is None:
            raise SessionNotFound()
        session_id = str(parsed)
        # Join first, read second: a turn that commits after the bootstrap was read is heard.
        await self._join_group(session_id)
        try:
            bootstrap = await (await self.agent()).bootstrap(session_id)  # this space only
        except BaseException:
            await self._leave_group(session_id)
            raise
        # Even if the client left meanwhile, `_release` runs only after this frame and undoes it.
        connections.attach_session(self.connection_id, session_id)
        await self.reply(p.session_entered(session_id, bootstrap_json(bootstrap)))

    async def on_leave(self, message: p.SessionLeave) -> None:
        session_id = connections.detach_session(self.connection_id)
        assert session_id is not None  # state_refusal checked it
        await self._leave_group(session_id)
        try:
            await (await self.agent()).leave(session_id)  # may schedule consolidation
        except StelloError as exc:  # e.g. the session was deleted: leaving still succeeds
            logger.info("leave hook of session %s failed: %s", session_id, exc.message)
        await self.reply(p.session_left(session_id))

    async def on_message(self, message: p.SessionMessage) -> None:
        result = await (await self.agent()).turn(self._current(), message["input"])
        await self.reply(p.turn_complete(result.to_json()))

    async def on_stream(self, message: p.SessionStream) -> None:
        result: TurnResult | None = None
        stream = (await self.agent()).stream(self._current(), message["input"])
        async with aclosing(stream) as items:
            async for item in items:
                if isinstance(item, StreamChunk):
                    if item.text:
                        await self.reply(p.stream_delta(item.text))
                else:
                    result = item
        if result is None:  # pragma: no cover - the engine always ends with the result
            raise RuntimeError("the stream ended without a result")
        await self.reply(p.stream_end(result.to_json()))

    async def on_fork(self, message: p.SessionFork) -> None:
        child = await (await self.agent()).fork(self._current(), message["options"])
        await self.reply(p.session_forked(fork_child_json(child)))  # we stay in the parent

    def _current(self) -> str:
        session_id = self.session_id
        assert session_id is not None  # state_refusal checked it
        return session_id

    # -- channel-layer events --------------------------------------------------------------------

    async def session_updated(self, event: dict[str, Any]) -> None:
        """`events.announce_turn`: forward it while the connection is in that session."""
        if self.session_id == event.get("sessionId"):
            await self.reply(p.session_updated(event["sessionId"], event["turnCount"]))


Handler = Callable[[SessionConsumer, Any], Awaitable[None]]

HANDLERS: dict[str, Handler] = {
    "session.enter": SessionConsumer.on_enter,
    "session.leave": SessionConsumer.on_leave,
    "session.message": SessionConsumer.on_message,
    "session.stream": SessionConsumer.on_stream,
    "session.fork": SessionConsumer.on_fork,
}
