"""The WebSocket endpoint `/spaces/<spaceId>/ws`: an authorising wrapper, then a consumer that
reads frames into a queue and handles them with one worker task.

Connect (`Authenticated`, before any consumer exists): the API key comes from the `X-API-Key`
(or `Authorization: Bearer`) header of the upgrade or, for browsers that cannot set headers,
from a `Sec-WebSocket-Protocol` value that looks like a key (the connection is then accepted
with that subprotocol, as browsers require). A missing or bad key, an unknown space and
another user's space refuse the upgrade: with the ASGI WebSocket Denial Response extension
(`scope["extensions"]["websocket.http.response"]`, e.g. uvicorn, hypercorn) the client gets
401 / 404 / 403 and the JSON error body of the REST API; without it (daphne) the socket is
closed before accept, which the server answers with 403. A refused client never gets a
consumer, a channel-layer channel or a registry entry. No greeting follows a successful upgrade.
The decision stays on the event loop: a cached key costs nothing, and the space is read with
`aspace_id_for_user` (one round trip on PostgreSQL unless this process checked that space
recently).

Frames: the consumer's reader (Channels' dispatch loop) only files each incoming frame in the
connection's queue and goes back to reading, so the socket is read while a turn or a stream
runs. ONE worker task per connection takes the frames off the queue in order and handles each
to the end before the next: `protocol.parse_client_frame`, then the handler of its type
(`HANDLERS`), which calls the engine through the per-process runtime. Answers therefore come in
the order of the frames. A binary or oversized frame is refused through the queue too (its
error is queued in its place, without its text), so its answer keeps its place in that order.
Every failure becomes an `error` frame and the connection stays open. Nothing here hops to a
thread: the engine's store is async, and Channels' per-message `aclose_old_connections()`
(a thread hop per frame) is skipped because the paths that still use Django's connections
(`database_sync_to_async`, the ORM store's units of work) recycle them around each unit.

The queue is bounded: at most `MAX_PENDING_FRAMES` frames wait behind the one being handled. A
frame that finds the queue full is not queued: it is answered at once with `error`
HANDLER_ERROR `too many pending frames` (this refusal is sent right away, so it may come before
the answers of the frames still waiting), and the connection stays open. We refuse instead of
applying backpressure (not reading) so that the reader always sees the client's frames, and
because not reading bounds nothing under servers that buffer without limit (daphne).

Disconnect: when the client goes away, the consumer returns at once; the frame being handled
runs to completion (a turn or a stream is completed and persisted; its frames are dropped),
frames still waiting in the queue are dropped unhandled, and the worker then releases the
connection's registry entry and group membership. Sending to a closed socket never raises.
The worker is kept in `operations` (strong references), so it outlives its consumer;
`operations.shutdown()` stops every connection that way and waits for the workers.

Revocation: the connection keeps its key and re-checks it, and that the space is still the
user's, before each frame and each `session.updated`, through the same per-process caches as
the upgrade (`STELLO_AUTH_CACHE_SECONDS`): a warm cache costs no round trip, so the database is
asked at most once per that interval per key and space. A key that stopped working (revoked,
deleted, its user deactivated) closes the socket with CLOSE_KEY_INVALID (4401); a deleted space
with CLOSE_SPACE_GONE (4404); a space that now belongs to someone else with CLOSE_FORBIDDEN
(4403). The frame that found out is not handled and the frames waiting are dropped. Until the
caches learn of the change (at once in the process that made it, within the cache time in the
others) frames are handled as usual: on a deleted space they answer `error` HANDLER_ERROR
(e.g. `Session not found`).

Live updates (our addition to the protocol, opt-in): a connection that entered session S with
`"watch": true` gets a channel-layer channel (only then) and joins the group `session.<S>`
(left on leave and on release); other connections never touch the channel layer. After every
committed turn on S, through REST or any WebSocket connection in any process, the store
announces it to the group (`events.announce_turn`), and each member gets
`{"type": "session.updated", "sessionId", "turnCount"}`, except the connection that made the
turn: the worker sets `events.origin` to the connection's id around each handler, and the
announcement carries it. Updates are sent as they arrive, also while a frame is being handled;
turns on one session are serialised, so in practice they arrive between the watcher's answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import aclosing
from typing import Any, TypeVar

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings

from spaces.apikeys import looks_like_key
from spaces.auth import HEADER, aauthenticate_credentials, aauthenticate_key, key_from_headers
from spaces.errors import Forbidden, QuotaExceeded, Unauthenticated
from spaces.selectors import aspace_id_for_user, parse_uuid
from spaces.throttling import ahit as rate_limit_hit

from .. import events, live
from ..accounting.quotas import admit_turn
from ..api.errors import error_body
from ..engine.agent import SpaceAgent
from ..engine.errors import NotFound, SessionNotFound, StelloError, TurnCancelled
from ..engine.types import LogEvent, StreamChunk, TurnResult
from ..events import session_group
from ..live import busy_policy
from ..runtime.pool import runtimes
from ..wire import bootstrap_json, fork_child_json
from . import idempotent
from . import protocol as p
from .connections import connections
from .resume import ResumeMixin

logger = logging.getLogger("stello.ws")

T = TypeVar("T")
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]

DENIAL_EXTENSION = "websocket.http.response"
INTERNAL_ERROR = "Internal server error"

# Close codes of an accepted connection that lost its right to the space (see the docstring).
CLOSE_KEY_INVALID = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_SPACE_GONE = 4404


# -- tasks ----------------------------------------------------------------------------------------


class Operations:
    """The connections' worker tasks, with strong references so they finish even after their
    consumer is gone (RUF006). Each worker comes with an `idle` event (set while it has no
    frame to handle) and a `stop` callback (the socket is gone: finish the current frame, drop
    the rest, release). `drain()` waits until every worker is idle or done (tests);
    `shutdown()` stops them all, then drains (server shutdown, test teardown)."""

    def __init__(self) -> None:
        self._tasks: dict[asyncio.Task[Any], tuple[asyncio.Event, Callable[[], None]]] = {}

    def start(self, work: Coroutine[Any, Any, T], *, idle: asyncio.Event,
              stop: Callable[[], None]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks[task] = (idle, stop)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            logger.error("WebSocket operation failed", exc_info=task.exception())

    @property
    def size(self) -> int:
        return len(self._tasks)

    def _of_this_loop(self) -> list[tuple[asyncio.Task[Any], asyncio.Event, Callable[[], None]]]:
        loop = asyncio.get_running_loop()
        return [(t, idle, stop) for t, (idle, stop) in self._tasks.items() if t.get_loop() is loop]

    async def drain(self) -> None:
        """Wait until every worker of the running loop is idle or done (frames may arrive
        meanwhile), then until the announcements made meanwhile have been sent."""
        while busy := [idle for task, idle, _ in self._of_this_loop()
                       if not idle.is_set() and not task.done()]:
            await asyncio.wait([asyncio.ensure_future(idle.wait()) for idle in busy])
        await live.drain()

    async def shutdown(self) -> None:
        """Stop every connection of the running loop, let the frames being handled finish,
        and wait for the workers to end."""
        for _, _, stop in self._of_this_loop():
            stop()
        while tasks := [task for task, _, _ in self._of_this_loop()]:
            await asyncio.wait(tasks)
        await live.drain()


operations = Operations()


# -- the upgrade ---------------------------------------------------------------------------------


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def credentials(scope: dict[str, Any]) -> tuple[str | None, str | None]:
    """(raw key, subprotocol to accept with). A header wins (`X-API-Key`, else `Authorization:
    Bearer`); a key offered as a subprotocol is used (and echoed, as browsers require) only when
    there is no header."""
    header = key_from_headers(_header(scope, HEADER.lower().encode()),
                              _header(scope, b"authorization"))
    if header is not None:
        return header, None
    offered = next((s for s in scope.get("subprotocols", ()) if looks_like_key(s)), None)
    return offered, offered


async def authorize(scope: dict[str, Any]) -> dict[str, Any]:
    """`{"user_id", "space_id", "subprotocol", "apikey_id",
    "key"}` for the upgrade of `scope`, or the
    StelloError that refuses it, as REST would: 401 missing / invalid key, then 404 unknown or
    malformed space, 403 another user's space (503 without a database)."""
    key, subprotocol = credentials(scope)
    user, apikey = await aauthenticate_credentials(key)  # a cached key costs no query
    space_id = await aspace_id_for_user(user_id=user.pk,
                                        space_id=scope["url_route"]["kwargs"]["space_id"])
    return {"user_id": str(user.pk), "space_id": space_id, "subprotocol": subprotocol,
            "apikey_id": apikey.pk, "key": key}


async def lost_access(key: str | None, space_id: str) -> int | None:
    """The close code for a connection whose key or space no longer holds, else None. Cached
    like the upgrade's checks; an unreachable database is not a reason to close (the frame
    meets it anyway and says so)."""
    try:
        user = await aauthenticate_key(key)
        await aspace_id_for_user(user_id=user.pk, space_id=space_id)
    except Unauthenticated:
        return CLOSE_KEY_INVALID
    except NotFound:
        return CLOSE_SPACE_GONE
    except Forbidden:
        return CLOSE_FORBIDDEN
    except Exception:
        logger.warning("could not re-check the key of a WebSocket (space %s)", space_id,
                       exc_info=True)
    return None


async def refuse(scope: dict[str, Any], send: Send, refusal: StelloError) -> None:
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
        except StelloError as refusal:
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
        await refuse(scope, send, NotFound())


def _too_large(text: str, limit: int) -> bool:
    # A str has at most 4 UTF-8 bytes per character: only long frames are encoded to count.
    return len(text) > limit or (len(text) * 4 > limit and
                                 len(text.encode("utf-8", "surrogatepass")) > limit)


# -- the consumer -------------------------------------------------------------------------------

TOO_MANY_PENDING = "too many pending frames"
RATE_LIMITED_TYPES = frozenset({"session.message", "session.stream", "session.fork",
                                "tool.approve"})
STOP = None  # queued to tell the worker that the socket is gone

QueueItem = str | p.ErrorMessage | None  # a text frame to handle, a refusal to send, or STOP


class SessionConsumer(ResumeMixin, AsyncWebsocketConsumer):
    MAX_PENDING_FRAMES = 16  # frames waiting behind the one being handled (see the docstring)

    connection_id: str | None = None
    space_id: str = ""
    channel_name: str | None = None  # set only once the connection watches a session

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._closed = False  # the socket is gone: frames are dropped
        self._stopped = False  # no frame is queued any more (`_stop`)
        self._released = False  # registry entry and group membership are gone
        self._queue: asyncio.Queue[QueueItem] = asyncio.Queue(self.MAX_PENDING_FRAMES)
        self._worker: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()  # the worker has nothing to do (`operations.drain`)
        self._idle.set()
        self._watched: str | None = None  # the session whose group this connection is in
        self._listener: asyncio.Task[None] | None = None  # reads the channel layer once watching

    # -- the reader --------------------------------------------------------------------------------

    async def __call__(self, scope, receive, send) -> None:
        """Channels' consumer loop, reading the client's messages only: the channel layer is
        listened to once the connection watches a session (`_watch`), never before."""
        self.scope = scope
        self.base_send = send
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass
        finally:
            self._stop()

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch without its `aclose_old_connections()` (a thread hop per message;
        see the module docstring)."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        """The upgrade was authorised by `Authenticated`: register, start the worker, accept."""
        stello = self.scope["stello"]
        self.space_id = stello["space_id"]
        self.connection_id = str(uuid.uuid4())
        connections.bind(self.connection_id, stello["user_id"], self.space_id)
        self._worker = operations.start(self._work(), idle=self._idle, stop=self._stop)
        await self.accept(stello["subprotocol"])

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        raise StopConsumer()  # `__call__` stops the worker, which releases the connection

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """File the frame for the worker (refusals too, so they keep their place in the order).
        A later message that must act on the frame being handled (e.g. a cancel) is the one
        thing to look at here, before queueing."""
        if text_data is None:
            await self._enqueue(p.error(p.PARSE_ERROR, "Binary frames are not supported"))
            return
        limit = settings.STELLO["WS_MAX_FRAME_BYTES"]
        if _too_large(text_data, limit):
            await self._enqueue(p.error(p.HANDLER_ERROR,
                                        f"frame too large: at most {limit} bytes"))
            return
        if (('"turn.cancel"' in text_data or '"tool.approve"' in text_data)
                and self.handle_out_of_band(text_data)):
            return  # it acts on the frame being handled (a turn): it cannot wait behind it
        await self._enqueue(text_data)

    async def _enqueue(self, item: QueueItem) -> None:
        if self._stopped:
            return
        try:
            self._queue.put_nowait(item)
            self._idle.clear()
        except asyncio.QueueFull:
            await self.reply(p.error(p.HANDLER_ERROR, TOO_MANY_PENDING))

    def _stop(self) -> None:
        """The socket is gone (or the server cancelled us, or shuts down): drop the frames
        still waiting; the worker finishes the one it is handling, then releases the
        connection."""
        if self._stopped:
            return
        self._stopped = self._closed = True
        if self._worker is None:  # never accepted: nothing was registered
            return
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(STOP)

    # -- the worker --------------------------------------------------------------------------------

    async def _work(self) -> None:
        try:
            while (item := await self._queue.get()) is not STOP:
                try:
                    if await self._lost_access():
                        continue  # the queue now holds only STOP
                    if isinstance(item, str):
                        await self.handle_frame(item)
                    else:
                        await self.reply(item)
                except Exception:  # pragma: no cover - handle_frame answers every failure
                    logger.exception("WebSocket frame failed (space %s)", self.space_id)
                if self._queue.empty():
                    self._idle.set()
        finally:
            await self._release()
            self._idle.set()

    async def _release(self) -> None:
        if self._released:
            return
        self._released = self._closed = True
        if self.connection_id is not None:
            connections.unbind(self.connection_id)
        await self._unwatch()
        await self.stop_following()
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.wait([self._listener])

    async def _lost_access(self) -> bool:
        """Re-check the key and the space; if either no longer holds, close the socket with its
        code and stop (the waiting frames are dropped)."""
        code = await lost_access(self.scope["stello"]["key"], self.space_id)
        if code is None:
            return False
        if not self._closed:
            try:
                await self.close(code=code)
            except Exception:  # already gone
                logger.debug("closing a WebSocket that was gone", exc_info=True)
        self._stop()
        return True

    async def handle_frame(self, text: str) -> None:
        try:
            message = p.parse_client_frame(text)
        except p.ProtocolError as exc:
            # For a known type the connection-state rule is reported first, like the original
            # (`session.message` without input while not entered -> NOT_ENTERED).
            refusal = self.state_refusal(exc.message_type) if exc.message_type else None
            await self.reply(refusal or p.error(exc.code, exc.message))
            return
        refusal = self.state_refusal(message["type"]) or await self.rate_refusal(message["type"])
        if refusal is not None:
            await self.reply(refusal)
            return
        made_by = events.origin.set(self.connection_id)  # so we are not told of our own turns
        try:
            handler = HANDLERS[message["type"]]
            if "requestId" in message:  # at most once per user and id (ws/idempotent.py)
                await idempotent.run_once(self, message, text, handler)
            else:
                await handler(self, message)
        except QuotaExceeded as exc:
            await self.reply(p.quota_exceeded(exc.message, exc.retry_after))
        except TurnCancelled as exc:
            if self.resumed:  # after the turn's events, `turn.cancelled` included
                await self.own_answer(p.error(p.HANDLER_ERROR, exc.message), exc.seq)
            else:
                await self.reply(p.error(p.HANDLER_ERROR, exc.message))
        except StelloError as exc:
            await self.reply(p.error(p.HANDLER_ERROR, exc.message))
        except Exception:
            logger.exception("WebSocket handler %s failed (space %s)", message["type"],
                             self.space_id)
            await self.reply(p.error(p.HANDLER_ERROR, INTERNAL_ERROR))
        finally:
            events.origin.reset(made_by)

    def state_refusal(self, message_type: str) -> p.ErrorMessage | None:
        entered = self.session_id is not None
        if message_type in p.ENTERING and entered:
            return p.error(p.ALREADY_ENTERED, p.ALREADY_ENTERED_MESSAGE)
        if message_type in p.NEEDS_SESSION and not entered:
            return p.error(p.NOT_ENTERED, p.NOT_ENTERED_MESSAGE)
        return None

    async def rate_refusal(self, message_type: str) -> p.ErrorMessage | None:
        """Turns, streams and forks count against the API key's STELLO_RATE_LIMIT, on the same
        counter as its REST requests."""
        if message_type not in RATE_LIMITED_TYPES:
            return None
        decision = await rate_limit_hit(self.scope["stello"]["apikey_id"])
        if decision.allowed:
            return None
        return p.error(p.RATE_LIMITED, f"Request was throttled. Expected available in "
                                       f"{decision.retry_after} seconds.")

    async def reply(self, message: p.ServerMessage) -> None:
        """Send one frame; dropped silently once the socket is closed."""
        capture = idempotent.capturing.get()
        if capture is not None:  # kept for a retry even if the client has gone
            message = capture.mark(message)
        if self._closed:
            return
        try:
            # The server's send itself: Channels' `send(text_data=...)` only wraps it in two
            # more coroutines, for every streamed chunk.
            await self.base_send({"type": "websocket.send", "text": p.encode(message)})
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

    # -- live updates (opt-in) -------------------------------------------------------------------

    async def _watch(self, session_id: str) -> None:
        """Join the group of `session_id`; the first time, get a channel and listen to it."""
        layer = self.channel_layer
        if layer is None:  # no channel layer configured: there is nothing to hear
            return
        if self.channel_name is None:
            self.channel_name = await layer.new_channel()
            self._listener = asyncio.get_running_loop().create_task(self._listen())
        await layer.group_add(session_group(session_id), self.channel_name)
        self._watched = session_id

    async def _unwatch(self) -> None:
        session_id, self._watched = self._watched, None
        if session_id is None or self.channel_layer is None or self.channel_name is None:
            return
        try:
            await self.channel_layer.group_discard(session_group(session_id), self.channel_name)
        except Exception:  # membership expires with the layer's group_expiry anyway
            logger.warning("could not leave group of session %s", session_id, exc_info=True)

    async def _listen(self) -> None:
        """Dispatch the channel layer's events for this connection until it is released."""
        assert self.channel_layer is not None and self.channel_name is not None
        while not self._released:
            try:
                await self.dispatch(await self.channel_layer.receive(self.channel_name))
            except Exception:
                # redis-py may turn our cancellation (at release) into a TimeoutError.
                if self._released:
                    return
                logger.warning("WebSocket event failed (space %s)", self.space_id, exc_info=True)
                await asyncio.sleep(1)  # e.g. Redis is away: try again, not in a busy loop

    async def session_updated(self, event: dict[str, Any]) -> None:
        """`events.announce_turn`: forward it to a watcher, unless the turn was this
        connection's own."""
        await self._tell_watcher(event, lambda: p.session_updated(event["sessionId"],
                                                                  event["turnCount"]))

    async def tool_approval_required(self, event: dict[str, Any]) -> None:
        """`events.announce_approval_required`: forward it to a watcher, unless the turn is
        this connection's own (it was told directly) or the connection follows the log."""
        if not self.resumed:
            await self._tell_watcher(event, lambda: p.tool_approval_required(event["payload"]))

    async def _tell_watcher(self, event: dict[str, Any],
                            frame: Callable[[], p.ServerMessage]) -> None:
        """Send `frame()` while the connection watches the event's session, unless the event
        came from this connection (`events.origin`)."""
        session_id = event.get("sessionId")
        if event.get("origin") == self.connection_id:
            return
        if session_id == self._watched and session_id == self.session_id:
            if not await self._lost_access():
                await self.reply(frame())

    # -- handlers (one per client message type) ------------------------------------------------

    async def on_enter(self, message: p.SessionEnter) -> None:
        parsed = parse_uuid(message["sessionId"])
        if parsed is None:
            raise SessionNotFound()
        session_id = str(parsed)
        if message["watch"]:
            # Join first, read second: a turn that commits after the bootstrap was read is heard.
            await self._watch(session_id)
        try:
            bootstrap = await (await self.agent()).bootstrap(session_id)  # this space only
        except BaseException:
            await self._unwatch()
            raise
        # Even if the client left meanwhile, `_release` runs only after this frame and undoes it.
        connections.attach_session(self.connection_id, session_id)
        await self.reply(p.session_entered(session_id, bootstrap_json(bootstrap)))

    async def on_leave(self, message: p.SessionLeave) -> None:
        session_id = connections.detach_session(self.connection_id)
        assert session_id is not None  # state_refusal checked it
        await self._unwatch()
        await self.stop_following()
        try:
            await (await self.agent()).leave(session_id)  # may schedule consolidation
        except StelloError as exc:  # e.g. the session was deleted: leaving still succeeds
            logger.info("leave hook of session %s failed: %s", session_id, exc.message)
        await self.reply(p.session_left(session_id))

    async def admit_turn(self) -> None:
        """Refuse a turn over the user's quota (QUOTA_EXCEEDED), like REST's 429."""
        await admit_turn(self.scope["stello"]["user_id"], self.scope["stello"]["apikey_id"])

    def _turn_events(self) -> Callable[[LogEvent], None] | None:
        """What this connection is told of its own turn besides its answer: a tool call that
        waits for a human (a resumed connection gets every event from the log instead)."""
        if self.resumed:
            return None

        def tell(event: LogEvent) -> None:
            if event.type == "tool.approval_required":
                self.send_soon(p.tool_approval_required(dict(event.payload)))

        return tell

    async def on_message(self, message: p.SessionMessage) -> None:
        await self.admit_turn()
        agent = await self.agent()
        wait = await busy_policy(agent, self._current(), message.get("ifBusy"))
        result = await agent.turn(self._current(), message["input"], wait=wait,
                                  on_event=self._turn_events())
        if self.resumed:  # the turn's events come through the log; the answer after them
            await self.own_answer(p.turn_complete(result.to_json()), result.seq)
            return
        await self.reply(p.turn_complete(result.to_json()))

    async def on_stream(self, message: p.SessionStream) -> None:
        result: TurnResult | None = None
        await self.admit_turn()
        agent = await self.agent()
        wait = await busy_policy(agent, self._current(), message.get("ifBusy"))
        stream = agent.stream(self._current(), message["input"], wait=wait,
                              on_event=self._turn_events())
        resumed = self.resumed
        async with aclosing(stream) as items:
            async for item in items:
                if isinstance(item, StreamChunk):
                    if item.text and not resumed:
                        await self.reply(p.stream_delta(item.text))
                else:
                    result = item
        if result is None:  # pragma: no cover - the engine always ends with the result
            raise RuntimeError("the stream ended without a result")
        if resumed:
            await self.own_answer(p.stream_end(result.to_json()), result.seq)
            return
        await self.reply(p.stream_end(result.to_json()))

    async def on_fork(self, message: p.SessionFork) -> None:
        child = await (await self.agent()).fork(self._current(), message["options"])
        await self.reply(p.session_forked(fork_child_json(child)))  # we stay in the parent

    def _current(self) -> str:
        session_id = self.session_id
        assert session_id is not None  # state_refusal checked it
        return session_id


Handler = Callable[[SessionConsumer, Any], Awaitable[None]]

HANDLERS: dict[str, Handler] = {
    "session.enter": SessionConsumer.on_enter,
    "session.leave": SessionConsumer.on_leave,
    "session.message": SessionConsumer.on_message,
    "session.stream": SessionConsumer.on_stream,
    "session.fork": SessionConsumer.on_fork,
    "session.resume": SessionConsumer.on_resume,
}
