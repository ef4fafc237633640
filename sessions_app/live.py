"""The live side of a session's event log: publishing a running turn's events, and following a
session from a seq (WebSocket `session.resume`, the SSE endpoint).

A turn's events get their seq in the engine, under the session's lock, and reach the database
with the round's `save_call` (deltas coalesced per round). Until then they live here:

- `publish(session_id, event)` (the agent's event sink; sync, never raises into the turn) files
  the event in the process's outbox. ONE task drains it in batches, one in flight at a time,
  at most every STELLO_EVENT_FLUSH_MS (a turn's start and end are not held back: the end
  flushes the rest). A batch holds what every session filed meanwhile: each session's part is
  written to its live buffer first (a Redis list shared by every process; a dict in the
  one-process embedded mode), then sent to the channel-layer group `events.<session>`.
  `notify` files a message for another group of a session (a watcher's `session.updated`)
  that goes out with the next batch. On Redis a batch, all its sessions and messages, is ONE
  round trip however much it holds: one script writes the buffers and publishes (the pub/sub
  layer's group send is a plain `PUBLISH`; a publish nobody hears costs nothing more). Under
  load the batches grow, so a turn's share of that round trip shrinks. A turn's last event
  (`turn.completed` / `failed` / `cancelled`) is told after its commit, so once it is in a
  batch the database holds everything before it: the buffer is cleared rather than written,
  and keeps only what follows (a next turn's events).
- `Follower` joins the group FIRST, then reads the buffer, then the database. An event published
  before the join is in the buffer or (once cleared) in the database; one published after is
  heard live. Merging by seq gives every event after `since` once, in order, gap-free; a live
  event beyond the next expected seq triggers the same catch-up read. A subscriber whose queue
  overflows (a slow reader) gets `gap` and continues from the newest seq (bounded memory).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
import weakref
from collections.abc import AsyncIterator
from typing import Any

import orjson
from channels.layers import get_channel_layer
from django.conf import settings

from .engine.agent import SpaceAgent
from .engine.agent_config import IF_BUSY
from .engine.errors import InvalidInput, SessionNotFound, TurnNotRunning
from .engine.ports import SpaceStore
from .engine.turn import RUNNING
from .engine.types import LogEvent
from .events import announce_approval_required
from .store.common import json_text

logger = logging.getLogger("stello.live")

TERMINAL = frozenset({"turn.completed", "turn.failed", "turn.cancelled"})
BUFFER_TTL_SECONDS = 3600  # a buffer a dead process left behind expires
LINE_TIMEOUT_SECONDS = 5.0  # one batch's exchange with Redis (redis-py's default timeout)


def parse_since(value: Any) -> int:
    """A resume position: a non-negative integer (a digit string too: SSE and query strings)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 19:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 62:
        raise InvalidInput("since must be a non-negative integer")
    return value


def _stopping() -> bool:
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def session_key(session_id: str) -> str:
    """The session id as the groups and keys spell it; anything but a UUID is not found."""
    try:
        return str(uuid.UUID(str(session_id)))
    except ValueError:
        raise SessionNotFound() from None


def events_group(session_id: str) -> str:
    return f"events.{session_id}"


def _encode(event: LogEvent) -> dict[str, Any]:
    return {"seq": event.seq, "type": event.type, "payload": dict(event.payload)}


def _decode(data: dict[str, Any]) -> LogEvent:
    return LogEvent(int(data["seq"]), str(data["type"]), data.get("payload") or {})


# -- the live buffer ------------------------------------------------------------------------


Messages = list[tuple[str, dict[str, Any]]]  # (channel-layer group, message) to send


@dataclasses.dataclass
class BufferWrite:
    """One session's part of a batch: clear its buffer first (when `clear`), append `events`
    (encoded), then send `messages`."""

    session_id: str
    events: list[dict[str, Any]]
    clear: bool
    messages: Messages = dataclasses.field(default_factory=list)


async def _group_send(messages: Messages) -> None:
    layer = get_channel_layer()
    if layer is not None:
        for group, message in messages:
            await layer.group_send(group, message)


class LocalBuffer:
    """One process (no Redis): the running turns' unsaved events in memory."""

    def __init__(self) -> None:
        self._events: dict[str, list[dict[str, Any]]] = {}

    async def write(self, session_id: str, events: list[dict[str, Any]], *,
                    clear: bool) -> None:
        await self.send([BufferWrite(session_id, events, clear)])

    async def send(self, writes: list[BufferWrite]) -> None:
        """Each write's buffer change, then its messages through the channel layer."""
        for write in writes:
            if write.clear:
                self._events.pop(write.session_id, None)
            if write.events:
                self._events.setdefault(write.session_id, []).extend(write.events)
            await _group_send(write.messages)

    async def read(self, session_id: str) -> list[LogEvent]:
        return [_decode(e) for e in self._events.get(session_id, ())]


# KEYS: the buffers. ARGV: the TTL in seconds, then per key: clear first (1/0) and the events to
# append as one JSON array ('' for none); then (pub/sub channel, message) pairs to publish once
# the buffers hold their events (a follower that hears an event ahead of what it has reads the
# buffer for the rest).
_SEND_SCRIPT = """
local a = 2
for k = 1, #KEYS do
  if ARGV[a] == '1' then redis.call('DEL', KEYS[k]) end
  if ARGV[a + 1] ~= '' then
    redis.call('RPUSH', KEYS[k], ARGV[a + 1])
    redis.call('EXPIRE', KEYS[k], ARGV[1])
  end
  a = a + 2
end
for i = a, #ARGV, 2 do redis.call('PUBLISH', ARGV[i], ARGV[i + 1]) end
return 0
"""


def resp_command(*parts: str | bytes | int) -> bytes:
    """A Redis command as it goes on the wire (RESP: an array of bulk strings). redis-py packs
    each argument through its encoder; a batch has a dozen or more, for every batch."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = (part.encode() if isinstance(part, str)
                else b"%d" % part if isinstance(part, int) else part)
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RedisBuffer:
    """Every process: a Redis list per session with a running turn. `layer`: the channel
    layer when it is the pub/sub layer on this same Redis, so a batch and its messages go out
    in one script (None: through the layer, after the buffers are written)."""

    def __init__(self, url: str, prefix: str, layer: Any = None) -> None:
        import redis.asyncio as redis

        self._redis = redis.from_url(url)
        self._prefix = prefix
        self._layer = layer
        self._script = self._redis.register_script(_SEND_SCRIPT)
        # The batches' own connection: one drain per process sends one batch at a time, so it
        # needs no pool, and skips the client's per-command pool checkout and bookkeeping
        # (with `resp_command`: 147 to about 80 us of CPU per batch).
        # Without a socket timeout of its own (redis-py then starts a task for every send,
        # `asyncio.wait_for`): `_run_script` bounds each exchange with `asyncio.timeout`.
        pool = self._redis.connection_pool
        self._line = pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": None})

    def _key(self, session_id: str) -> str:
        return f"{self._prefix}:live:{session_id}"

    async def write(self, session_id: str, events: list[dict[str, Any]], *,
                    clear: bool) -> None:
        """Clear the list first when `clear`, then append `events`: one round trip."""
        await self.send([BufferWrite(session_id, events, clear)])

    async def send(self, writes: list[BufferWrite]) -> None:
        """Every write, several sessions' alike: one round trip on the pub/sub layer (one
        script: atomic, and the least client packing and parsing, which runs for every batch
        of every turn); none when there is nothing to do."""
        keys: list[str] = []
        args: list[Any] = [BUFFER_TTL_SECONDS]
        for write in writes:
            if write.events or write.clear:
                keys.append(self._key(write.session_id))
                # A batch is one element of the list (one argument to pack, not one per event).
                args += (1 if write.clear else 0,
                         json_text(write.events) if write.events else "")
        messages = [m for write in writes for m in write.messages]
        if self._layer is not None:
            for group, message in messages:
                # The layer's own group send, spelled out: a PUBLISH of the serialised message
                # on the group's channel (tests/ws/test_live_turns.py checks it is heard).
                args += (self._layer._get_group_channel_name(group),
                         self._layer.serialize(message))
            messages = []
        if len(args) > 1:
            await self._run_script(keys, args)
        await _group_send(messages)

    async def _run_script(self, keys: list[str], args: list[Any]) -> None:
        """EVALSHA on the batches' connection; the script is loaded again if Redis lost it, and
        a connection that broke (Redis restarted, an idle connection dropped) is opened again
        for one more try, as the client's own retry would. A batch sent twice does no harm:
        followers take each seq once."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import NoScriptError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        line = self._line

        async def ask(command: bytes) -> None:
            async with asyncio.timeout(LINE_TIMEOUT_SECONDS):
                await line.send_packed_command(command)
                await line.read_response()

        evalsha = resp_command("EVALSHA", self._script.sha, len(keys), *keys, *args)
        for attempt in (1, 2):
            try:
                try:
                    await ask(evalsha)
                except NoScriptError:
                    await ask(resp_command("SCRIPT", "LOAD", _SEND_SCRIPT))
                    await ask(evalsha)
                return
            except (RedisConnectionError, RedisTimeoutError, TimeoutError):
                await line.disconnect()
                if attempt == 2:
                    raise
            except BaseException:  # an answer may still be on its way: start afresh next time
                await line.disconnect()
                raise

    async def read(self, session_id: str) -> list[LogEvent]:
        return [_decode(e) for batch in await self._redis.lrange(self._key(session_id), 0, -1)
                for e in orjson.loads(batch)]

    async def aclose(self) -> None:
        await self._line.disconnect()
        await self._redis.aclose()


_buffers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
    weakref.WeakKeyDictionary())


def buffer() -> LocalBuffer | RedisBuffer:
    """The live buffer of the running loop (loop-bound: a Redis client belongs to its loop)."""
    loop = asyncio.get_running_loop()
    found = _buffers.get(loop)
    if found is None:
        url = settings.STELLO.get("REDIS_URL")
        prefix = settings.CHANNEL_LAYERS["default"].get("CONFIG", {}).get("prefix", "stello")
        found = RedisBuffer(url, prefix, _pubsub_layer_on(url)) if url else _shared_local
        _buffers[loop] = found
    return found


def _pubsub_layer_on(url: str) -> Any:
    """The channel layer when it is channels-redis' pub/sub layer on one Redis, `url` (its
    group send is then one PUBLISH, which the buffer's script can make), else None."""
    from channels_redis.pubsub import RedisPubSubChannelLayer

    layer = get_channel_layer()
    hosts = settings.CHANNEL_LAYERS["default"].get("CONFIG", {}).get("hosts", [])
    address = hosts[0].get("address") if len(hosts) == 1 and isinstance(hosts[0], dict) else None
    if isinstance(layer, RedisPubSubChannelLayer) and address == url:
        return layer
    return None


_shared_local = LocalBuffer()  # embedded mode: one process, every loop sees the same turns


# -- publishing -----------------------------------------------------------------------------


# Events that go out at once: a turn's start (a cancel or resume from another process finds
# the running turn by it) and its end (nothing follows to wait for; a cancel waits for it).
URGENT = TERMINAL | {"turn.started"}


class _Filed:
    """What one session has filed for the next batch."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []
        self.saved: set[int] = set()  # seqs of events committed before they were told
        self.messages: Messages = []  # for other groups of the session (see notify)


class _Outbox:
    """The process's: one drain sends what every session filed, one batch in flight at a
    time (what is filed meanwhile goes with the next)."""

    def __init__(self) -> None:
        self.sessions: dict[str, _Filed] = {}
        self.urgent = False  # something filed must not wait for the flush timer
        self.task: asyncio.Task[None] | None = None
        self.wakeup: asyncio.Future[None] | None = None  # ends the drain's wait early


def _wake(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


_outbox = _Outbox()
pending: set[asyncio.Task[None]] = set()


def publish(session_id: str, event: LogEvent, *, saved: bool = False) -> None:
    """File `event` for the session's followers; the turn never waits for it. `saved`: the
    event is committed already (a fork or archive logs its entry with its own write), so it
    is only sent, never buffered."""
    kind = event.type
    if kind == "turn.started":
        listen_for_turn_signals()
    elif kind == "tool.approval_required":  # watchers hear of it too (a human answers)
        announce_approval_required(session_id, dict(event.payload))
    outbox = _outbox
    filed = outbox.sessions.get(session_id)  # (runs for every delta: no throwaway _Filed)
    if filed is None:
        filed = outbox.sessions[session_id] = _Filed()
    filed.events.append(event)
    if saved:
        filed.saved.add(event.seq)
    _start_drain(urgent=saved or kind in URGENT)


def notify(session_id: str, group: str, message: dict[str, Any]) -> None:
    """Send `message` to a channel-layer group of the session with the next batch (at once if
    none is due): on Redis no round trip of its own. Never raises."""
    _outbox.sessions.setdefault(session_id, _Filed()).messages.append((group, message))
    _start_drain(urgent=True)


def _start_drain(*, urgent: bool) -> None:
    outbox = _outbox
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # pragma: no cover - the engine always runs on a loop
        outbox.sessions.clear()
        return
    if urgent:
        outbox.urgent = True
        if outbox.wakeup is not None and outbox.wakeup.get_loop() is loop:
            _wake(outbox.wakeup)
    # A drain left by a loop that has gone (a one-call loop: the sync test client, the admin)
    # never runs again: start one on this loop.
    if outbox.task is None or outbox.task.done() or outbox.task.get_loop() is not loop:
        outbox.task = loop.create_task(_drain(outbox))
        pending.add(outbox.task)
        outbox.task.add_done_callback(pending.discard)


async def _drain(outbox: _Outbox) -> None:
    flush = settings.STELLO.get("EVENT_FLUSH_MS", 20) / 1000
    loop = asyncio.get_running_loop()
    try:
        while outbox.sessions:
            # Let the batch fill (what is told meanwhile goes with it) unless it holds an
            # urgent or committed event or a message, or one arrives meanwhile.
            if flush and not outbox.urgent:
                outbox.wakeup = loop.create_future()
                timer = loop.call_later(flush, _wake, outbox.wakeup)
                try:
                    await outbox.wakeup
                finally:
                    timer.cancel()
                    outbox.wakeup = None
            batch, outbox.sessions, outbox.urgent = outbox.sessions, {}, False
            try:
                await buffer().send([_buffer_write(session_id, filed)
                                     for session_id, filed in batch.items()])
            except Exception:  # a follower catches up from the database; the turn goes on
                logger.warning("could not publish the events of %d session(s)", len(batch),
                               exc_info=True)
    finally:
        # No await since the loop saw the outbox empty: nothing was filed meanwhile.
        if outbox.task is asyncio.current_task():
            outbox.task = None


def _buffer_write(session_id: str, filed: _Filed) -> BufferWrite:
    """What a session's filed events and messages do to its buffer and who hears them."""
    batch = filed.events
    if not batch:
        return BufferWrite(session_id, [], False, filed.messages)
    encoded = [_encode(e) for e in batch]
    ended = max((i for i, e in enumerate(batch) if e.type in TERMINAL), default=-1)
    # Buffered: what no commit has saved yet, i.e. what follows the batch's last turn end
    # (less the events committed before they were told). The buffer is cleared at a turn's
    # end (saved by then) and at a fresh turn's start (what it still holds is saved: a turn
    # after a dead one tells that turn's `turn.failed` first).
    clear = ended >= 0 or batch[0].type == "turn.started"
    unsaved = [data for data, event in zip(encoded[ended + 1:], batch[ended + 1:], strict=True)
               if event.seq not in filed.saved]
    return BufferWrite(session_id, unsaved, clear, [(events_group(session_id), {
        "type": "session.events", "sessionId": session_id, "events": encoded}),
        *filed.messages])


async def recover(session_id: str) -> list[LogEvent]:
    """The events in the session's live buffer (a dead process's unsaved ones among them)."""
    return await buffer().read(session_id)


async def drain() -> None:
    """Wait until the running loop's events have been published (tests, shutdown)."""
    loop = asyncio.get_running_loop()
    while waiting := [t for t in pending if t.get_loop() is loop]:
        await asyncio.wait(waiting)


# -- following ------------------------------------------------------------------------------


class Gap(Exception):
    """Events after the follower's position are gone (pruned, or it fell behind)."""


class Follower:
    """Every event of one session after `since`, in order, without gaps or duplicates, then
    live. Use `async with Follower(...) as f: async for event in f: ...`; a `gap` event (type
    "gap") says events were lost, and the follower continues from the newest seq."""

    def __init__(self, store: SpaceStore, session_id: str, since: int, *,
                 queue_limit: int | None = None) -> None:
        self.store = store
        self.session_id = session_key(session_id)
        self.position = since
        limit = queue_limit or settings.STELLO.get("EVENT_SUBSCRIBER_BUFFER", 1000)
        self._queue: asyncio.Queue[LogEvent] = asyncio.Queue(limit)
        self._overflow = False
        self._wake = asyncio.Event()
        self._channel: str | None = None
        self._listener: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Follower:
        layer = get_channel_layer()
        if layer is not None:
            self._channel = await layer.new_channel()
            await layer.group_add(events_group(self.session_id), self._channel)
            self._listener = asyncio.get_running_loop().create_task(self._listen(layer))
        return self

    async def __aexit__(self, *exc: object) -> None:
        layer = get_channel_layer()
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.wait([self._listener])
        if layer is not None and self._channel is not None:
            try:
                await layer.group_discard(events_group(self.session_id), self._channel)
            except Exception:  # expires with the layer's group_expiry anyway
                logger.debug("could not leave the events group", exc_info=True)

    async def _listen(self, layer: Any) -> None:
        while True:
            try:
                message = await layer.receive(self._channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                if _stopping():  # redis-py may turn our cancellation into another error
                    return
                logger.warning("event listener failed (session %s)", self.session_id,
                               exc_info=True)
                await asyncio.sleep(0.5)
                continue
            for data in message.get("events", ()):
                try:
                    self._queue.put_nowait(_decode(data))
                except asyncio.QueueFull:
                    self._overflow = True
            self._wake.set()

    async def newest(self) -> int:
        """The newest seq known: saved, or told live by a running turn. The buffer is read
        first: a turn that ends meanwhile commits its events before it clears the buffer, so
        the database read after it has them (read the other way round, an end between the two
        reads hid a running turn's events from both)."""
        live = await buffer().read(self.session_id)
        page = await self.store.read_events(self.session_id, 1 << 62)
        return max([page.current, *(e.seq for e in live)])

    async def catch_up(self) -> list[LogEvent]:
        """The events after `position` from the live buffer and the database (in that order:
        see the module docstring). Raises Gap when some of them are gone."""
        live = await buffer().read(self.session_id)
        page = await self.store.read_events(self.session_id, self.position)
        merged = {e.seq: e for e in page.events}
        for event in live:
            if event.seq > self.position:
                merged.setdefault(event.seq, event)
        events = [merged[seq] for seq in sorted(merged)]
        if events and events[0].seq != self.position + 1:
            raise Gap()
        if not events and page.current > self.position:
            raise Gap()
        # Only the contiguous run: a hole means a batch still on its way (heard live later).
        run: list[LogEvent] = []
        for event in events:
            if event.seq != self.position + len(run) + 1:
                break
            run.append(event)
        return run

    def __aiter__(self) -> AsyncIterator[LogEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[LogEvent]:
        caught_up = False
        while True:
            if self._overflow:
                yield await self._gap()
                caught_up = False
            if not caught_up:
                caught_up = True
                try:
                    for event in await self.catch_up():
                        self.position = event.seq
                        yield event
                except Gap:
                    yield await self._gap()
                    continue
            try:
                event = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                self._wake.clear()
                if self._queue.empty() and not self._overflow:
                    await self._wake.wait()
                continue
            if event.seq > self.position + 1:
                # Heard ahead of what we have: what came first is in the buffer or the
                # database (published in order, each batch buffered before it is sent).
                try:
                    for missed in await self.catch_up():
                        self.position = missed.seq
                        yield missed
                except Gap:
                    yield await self._gap()
                    continue
                if event.seq > self.position + 1:
                    yield await self._gap()
                    continue
            if event.seq <= self.position:
                continue
            self.position = event.seq
            yield event

    async def _gap(self) -> LogEvent:
        """Drop what is queued and continue from the newest seq."""
        self._overflow = False
        while not self._queue.empty():
            self._queue.get_nowait()
        since = self.position
        self.position = await self.newest()
        return LogEvent(self.position, "gap", {"since": since})



# -- cancel -----------------------------------------------------------------------------------

# Signals to the turns of every process: cancel requests, and approvals answered (approvals.py).
TURN_SIGNALS = "stello.turn-cancels"
ANSWERED = "turn.answered"  # the signal that wakes a turn waiting for approvals
CANCEL_WAIT_SECONDS = 5.0
_signal_listeners: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = (
    weakref.WeakKeyDictionary())


def listen_for_turn_signals() -> None:
    """Once per loop (when it first runs a turn): hear cancel requests and approval answers
    from every process. One group for all turns: a turn costs nothing, a signal one publish."""
    loop = asyncio.get_running_loop()
    if loop in _signal_listeners or get_channel_layer() is None:
        return
    _signal_listeners[loop] = loop.create_task(_turn_signal_listener())


async def _turn_signal_listener() -> None:
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(TURN_SIGNALS, channel)
    while True:
        try:
            message = await layer.receive(channel)
        except asyncio.CancelledError:
            raise
        except Exception:
            if _stopping():  # redis-py may turn our cancellation into another error
                return
            logger.warning("turn-signal listener failed", exc_info=True)
            await asyncio.sleep(0.5)
            continue
        turn_id = str(message.get("turnId"))
        if message.get("type") == ANSWERED:
            from .approvals import wakeups

            wakeups().wake(turn_id)
            continue
        running = RUNNING.get(turn_id)
        if running is not None:
            running.cancel()


def _live_turns(events: list[LogEvent]) -> tuple[dict[str, bool], str | None]:
    """From the live buffer: the turns it mentions (True = ended) and the one running."""
    turns: dict[str, bool] = {}
    current = None
    for event in sorted(events, key=lambda e: e.seq):
        turn_id = event.payload.get("turnId")
        if event.type == "turn.started":
            turns[turn_id], current = False, turn_id
        elif event.type in TERMINAL and turn_id is not None:
            turns[turn_id] = True
            current = None if current == turn_id else current
    return turns, current


async def cancel(agent: SpaceAgent, session_id: str, turn_id: str | None) -> str:
    """Cancel the session's running turn (`turn_id`, or whichever runs), in any process; wait
    until it has stopped and return its id. TurnNotFound for a turn this session does not
    know, TurnNotRunning for one that has ended (or no running turn). A turn that does not
    run here may wait for approvals after its process stopped: that one the agent cancels
    itself (`SpaceAgent.cancel_orphaned`)."""
    session_id = session_key(session_id)
    store = agent.store
    runs_here = (turn_id in RUNNING if turn_id is not None
                 else any(t.session_id == session_id for t in RUNNING.values()))
    if not runs_here:
        cancelled = await agent.cancel_orphaned(session_id, turn_id)
        if cancelled is not None:
            return cancelled
    live_turns, current = _live_turns(await buffer().read(session_id))
    if turn_id is None:
        local = next((t for t in RUNNING.values() if t.session_id == session_id), None)
        turn_id = local.turn_id if local is not None else current
        if turn_id is None:
            await store.get_session(session_id)  # SessionNotFound first
            raise TurnNotRunning()
    elif turn_id not in live_turns and turn_id not in RUNNING:
        turn = await store.get_turn(session_id, turn_id)  # SessionNotFound, TurnNotFound
        if turn.status not in ("running", "waiting"):
            raise TurnNotRunning(f"Turn {turn_id} has already ended ({turn.status})")
    elif live_turns.get(turn_id):
        raise TurnNotRunning(f"Turn {turn_id} has already ended")
    async with Follower(store, session_id, await _newest_saved(store, session_id)) as follower:
        local = RUNNING.get(turn_id)
        if local is not None and local.session_id == session_id:
            local.cancel()
        else:
            layer = get_channel_layer()
            if layer is not None:
                await layer.group_send(TURN_SIGNALS, {"type": "turn.cancel", "turnId": turn_id})
        try:
            async with asyncio.timeout(CANCEL_WAIT_SECONDS):
                async for event in follower:
                    if event.payload.get("turnId") != turn_id or event.type not in TERMINAL:
                        continue
                    if event.type == "turn.cancelled":
                        return turn_id
                    raise TurnNotRunning(f"Turn {turn_id} ended before it could be cancelled")
        except TimeoutError:
            pass
    raise TurnNotRunning(f"Turn {turn_id} did not stop within {CANCEL_WAIT_SECONDS:g}s")


# -- busy policy ------------------------------------------------------------------------------

def parse_if_busy(value: Any) -> str | None:
    """A turn's `ifBusy` (None when not given: the space's default, else STELLO_IF_BUSY)."""
    if value is None:
        return None
    if value not in IF_BUSY:
        raise InvalidInput("ifBusy must be one of reject, enqueue, interrupt")
    return value


async def busy_policy(agent: SpaceAgent, session_id: str, if_busy: str | None) -> bool:
    """Apply `ifBusy` before a turn takes the session's lock; returns whether the turn may
    wait for the lock. `reject`: no wait (SESSION_BUSY at once); `enqueue`: wait, bounded by
    the lock timeout; `interrupt`: cancel the running (or waiting) turn first, then wait. The
    turn's own value wins, then the space's (`config.ifBusy`), then STELLO_IF_BUSY."""
    policy = if_busy or agent.if_busy or settings.STELLO.get("IF_BUSY", "enqueue")
    if policy == "interrupt":
        try:
            await cancel(agent, session_id, None)
        except TurnNotRunning:
            pass
    return policy != "reject"


async def _newest_saved(store: SpaceStore, session_id: str) -> int:
    return (await store.read_events(session_id, 1 << 62)).current
