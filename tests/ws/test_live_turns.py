"""Live turns over the WebSocket, in one process (the real ASGI app, the offline LLM):
`session.resume`, seq-numbered events, turn ids. Across processes: test_live_turns_servers.py."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from sessions_app import live
from sessions_app.models import Session, SessionEvent, Turn
from sessions_app.runtime.pool import runtimes
from spaces.services import space_create
from tests.ws.conftest import finish_ws_work
from tests.ws.test_consumer import (
    ask,
    bounded,
    enter,
    nothing_more,
    open_ws,
    recv,
)

pytestmark = pytest.mark.django_db(transaction=True)


async def resume(communicator, session_id: str, since: int) -> dict:
    reply = await ask(communicator, {"type": "session.resume", "sessionId": session_id,
                                     "since": since})
    assert reply["type"] == "session.entered", reply
    assert reply["seq"] == since and reply["sessionId"] == session_id
    return reply


async def frames_until(communicator, last_type: str) -> list[dict]:
    frames = []
    while True:
        frame = await recv(communicator)
        frames.append(frame)
        if frame["type"] == last_type:
            return frames


@bounded(40)
async def test_a_resumed_connection_gets_every_event_with_its_seq(space_id, root_id,
                                                                  alice_key) -> None:
    ws = await open_ws(space_id, alice_key)
    await resume(ws, root_id, 0)
    await ws.send_json_to({"type": "session.stream", "input": "hello big world"})
    frames = await frames_until(ws, "stream.end")
    types = [f["type"] for f in frames]
    assert types == ["turn.started", *["stream.delta"] * 4, "turn.completed", "stream.end"]
    assert [f["seq"] for f in frames] == [1, 2, 3, 4, 5, 6, 6]
    turn_id = frames[0]["turnId"]
    assert frames[0]["input"] == "hello big world"
    assert "".join(f["chunk"] for f in frames[1:5]) == "echo: hello big world"
    assert {f["turnId"] for f in frames[:6]} == {turn_id}
    assert frames[-1]["result"]["turnId"] == turn_id == frames[-2]["result"]["turnId"]
    await nothing_more(ws)

    # A late client: everything from the log (the round was stored as ONE packed entry: its
    # start, its deltas coalesced, its end).
    stored = [e async for e in SessionEvent.objects.filter(session_id=root_id)]
    assert [(e.type, e.seq, e.last_seq) for e in stored] == [("log.packed", 1, 6)]
    assert [entry[:3] for entry in stored[0].payload["entries"]] == [
        [1, 1, "turn.started"], [2, 5, "stream.delta"], [6, 6, "turn.completed"]]
    late = await open_ws(space_id, alice_key)
    await resume(late, root_id, 0)
    replay = [await recv(late) for _ in range(6)]
    assert [(f["type"], f["seq"]) for f in replay] == [(f["type"], f["seq"])
                                                       for f in frames[:6]]
    assert [f.get("chunk") for f in replay] == [f.get("chunk") for f in frames[:6]]
    # ... and, resuming mid-stream, exactly what it missed.
    mid = await open_ws(space_id, alice_key)
    await resume(mid, root_id, 3)
    assert [(f := await recv(mid))["seq"] for _ in range(3)] == [4, 5, 6]
    assert f["type"] == "turn.completed"
    await nothing_more(mid)

    # The late connection hears the next turn live (made by another connection).
    await ws.send_json_to({"type": "session.message", "input": "again"})
    assert [(f["type"], f["seq"]) for f in await frames_until(ws, "turn.complete")] == [
        ("turn.started", 7), ("turn.completed", 8), ("turn.complete", 8)]
    assert [(f["type"], f["seq"]) for f in [await recv(late), await recv(late)]] == [
        ("turn.started", 7), ("turn.completed", 8)]
    turn = await Turn.objects.aget(pk=turn_id)
    assert (turn.status, turn.input) == ("completed", "hello big world")
    for c in (ws, late, mid):
        await c.disconnect()


@bounded()
async def test_an_original_client_sees_only_an_added_turn_id(space_id, root_id,
                                                             alice_key) -> None:
    ws = await open_ws(space_id, alice_key)
    await enter(ws, root_id)
    await ws.send_json_to({"type": "session.stream", "input": "hi"})
    frames = await frames_until(ws, "stream.end")
    assert [f["type"] for f in frames] == ["stream.delta", "stream.delta", "stream.end"]
    assert all("seq" not in f for f in frames)
    assert set(frames[-1]["result"]) == {"turn", "turnId"}
    assert await Turn.objects.filter(pk=frames[-1]["result"]["turnId"]).aexists()
    await nothing_more(ws)
    await ws.disconnect()


@bounded()
@pytest.mark.parametrize("since", [-1, "x", 1.5, True, None, "", "-2", 1 << 70])
async def test_a_bad_since_is_a_handler_error_and_nothing_is_entered(space_id, root_id,
                                                                     alice_key, since) -> None:
    ws = await open_ws(space_id, alice_key)
    frame = {"type": "session.resume", "sessionId": root_id, "since": since}
    reply = await ask(ws, frame)
    assert reply == {"type": "error", "code": "HANDLER_ERROR",
                     "message": "since must be a non-negative integer"}
    reply = await ask(ws, {"type": "session.resume", "sessionId": root_id})
    assert reply["code"] == "HANDLER_ERROR" and reply["message"] == "since is required"
    # Not entered: a turn is refused.
    assert (await ask(ws, {"type": "session.message", "input": "x"}))["code"] == "NOT_ENTERED"
    await ws.disconnect()


@bounded()
async def test_resume_refuses_the_future_and_other_spaces(space_id, root_id, alice_key,
                                                          bob) -> None:
    bobs_space = await sync_to_async(space_create)(owner=bob, label="Bob's")
    bobs_root = str((await Session.objects.aget(space=bobs_space, role="main")).pk)
    ws = await open_ws(space_id, alice_key)
    reply = await ask(ws, {"type": "session.resume", "sessionId": root_id, "since": 5})
    assert reply["code"] == "HANDLER_ERROR" and "ahead" in reply["message"]
    for other in (str(uuid.uuid4()), "not-a-uuid", bobs_root):
        reply = await ask(ws, {"type": "session.resume", "sessionId": other, "since": 0})
        assert reply == {"type": "error", "code": "HANDLER_ERROR",
                         "message": "Session not found"}
    await resume(ws, root_id, 0)
    reply = await ask(ws, {"type": "session.resume", "sessionId": root_id, "since": 0})
    assert reply["code"] == "ALREADY_ENTERED"
    await ws.disconnect()


@bounded()
async def test_a_resume_from_a_pruned_seq_gets_gap_then_the_snapshot(space_id, root_id,
                                                                     alice_key,
                                                                     settings) -> None:
    settings.STELLO = {**settings.STELLO, "EVENT_RETENTION": 2}
    ws = await open_ws(space_id, alice_key)
    await enter(ws, root_id)
    for text in ("one", "two"):
        assert (await ask(ws, {"type": "session.message", "input": text}))["type"] == \
            "turn.complete"
    # Each turn's two events are one packed entry: the second turn's (3..4) is kept.
    assert [(e.seq, e.last_seq) async for e in
            SessionEvent.objects.filter(session_id=root_id)] == [(3, 4)]
    late = await open_ws(space_id, alice_key)
    await resume(late, root_id, 1)
    gap = await recv(late)
    assert (gap["type"], gap["since"], gap["seq"]) == ("gap", 1, 4)
    assert gap["bootstrap"]["session"]["id"] == root_id  # the snapshot to start again from
    await nothing_more(late)
    # From a seq still kept: no gap.
    kept = await open_ws(space_id, alice_key)
    await resume(kept, root_id, 2)
    assert [(await recv(kept))["seq"] for _ in range(2)] == [3, 4]
    for c in (ws, late, kept):
        await c.disconnect()


@bounded()
async def test_a_slow_follower_gets_gap_and_holds_no_more_than_its_buffer(space_id, root_id,
                                                                          alice_key) -> None:
    from sessions_app import live
    from sessions_app.engine.types import LogEvent
    from sessions_app.store import space_store

    ws = await open_ws(space_id, alice_key)
    await enter(ws, root_id)
    assert (await ask(ws, {"type": "session.message", "input": "x"}))["type"] == "turn.complete"
    async with live.Follower(space_store(space_id), root_id, 2, queue_limit=3) as follower:
        for seq in range(3, 13):  # a burst the follower does not read
            live.publish(root_id, LogEvent(seq, "stream.delta", {"chunk": str(seq)}))
        await live.drain()
        for _ in range(100):  # on Redis, pub/sub delivers a moment later
            if follower._overflow:
                break
            await asyncio.sleep(0.02)
        assert follower._overflow and follower._queue.qsize() <= 3
        first = await anext(aiter(follower))
        assert first.type == "gap" and first.payload["since"] == 2
    await live.buffer().write(root_id, [], clear=True)
    await ws.disconnect()


@bounded()
async def test_the_live_buffer_appends_clears_and_holds_any_number_of_events() -> None:
    """One write clears (when asked) and appends in one step, on Redis as in memory, however
    many events a batch holds (more than Lua's unpack takes at once: deltas pile up while
    the buffer is slow)."""
    session = str(uuid.uuid4())
    store = live.buffer()

    def events(first: int, count: int) -> list[dict]:
        return [{"seq": n, "type": "stream.delta", "payload": {"text": f"d{n}"}}
                for n in range(first, first + count)]

    await store.write(session, events(1, 3), clear=True)
    await store.write(session, events(4, 9000), clear=False)
    assert [e.seq for e in await store.read(session)] == list(range(1, 9004))
    await store.write(session, events(9004, 1), clear=True)
    assert [(e.seq, e.payload) for e in await store.read(session)] == [(9004, {"text": "d9004"})]
    await store.write(session, [], clear=True)
    assert await store.read(session) == []


@bounded()
async def test_the_newest_seq_counts_a_turn_that_ends_while_it_is_read(space_id, root_id,
                                                                        monkeypatch) -> None:
    """A resume checks `since` against the newest seq. A turn that ends between the two reads
    of that check commits its events, then clears the live buffer: read database first, buffer
    second, both missed them, and a client resuming from the delta it had just seen was told
    its `since` was ahead (seen once in CI, two processes)."""
    from sessions_app.engine.types import EventPage, LogEvent
    from sessions_app.store import space_store

    store = space_store(space_id)
    live.publish(root_id, LogEvent(1, "turn.started", {"turnId": "t"}))
    live.publish(root_id, LogEvent(2, "stream.delta", {"turnId": "t", "chunk": "a"}))
    await live.drain()

    async def read_events_as_the_turn_ends(session_id, since):
        # The database as read just before the turn's commit; the clear follows at once.
        await live.buffer().write(session_id, [], clear=True)
        return EventPage((), 0, 1)

    monkeypatch.setattr(store, "read_events", read_events_as_the_turn_ends)
    async with live.Follower(store, root_id, 0) as follower:
        assert await follower.newest() == 2
    await live.buffer().write(root_id, [], clear=True)


@bounded(40)
async def test_a_streamed_turn_is_published_in_two_batches_however_many_deltas(
        space_id, root_id, alice_key, settings, monkeypatch) -> None:
    """A turn's start goes out at once (a cancel from another process finds it); the rest
    waits up to STELLO_EVENT_FLUSH_MS and goes as one batch, with the watchers'
    `session.updated`. Before batching, each delta cost a buffer write and a publish of its
    own, and the announcement one more."""
    from sessions_app import live
    from sessions_app.events import session_group

    settings.STELLO = {**settings.STELLO, "EVENT_FLUSH_MS": 1000}
    store = live.buffer()
    sent: list[live.BufferWrite] = []
    real_send = store.send

    async def counted_send(writes):
        sent.extend(w for w in writes if w.session_id == root_id)
        await real_send(writes)

    monkeypatch.setattr(store, "send", counted_send)
    ws = await open_ws(space_id, alice_key)
    await enter(ws, root_id)
    await ws.send_json_to({"type": "session.stream", "input": "one two three four five six"})
    frames = await frames_until(ws, "stream.end")
    assert sum(f["type"] == "stream.delta" for f in frames) >= 4
    await live.drain()
    # The start (with the deltas told before the loop got to it) clears the buffer and keeps
    # its events until the turn's end is saved; the rest goes as one batch, which only
    # clears the buffer (everything is saved by then).
    assert len(sent) == 2, sent
    assert sent[0].events[0]["type"] == "turn.started" and sent[0].clear is True
    assert (sent[1].events, sent[1].clear) == ([], True)
    assert [m["type"] for _, m in sent[1].messages] == ["session.events", "session.updated"]
    assert [group for group, _ in sent[1].messages] == [live.events_group(root_id),
                                                        session_group(root_id)]
    assert await live.buffer().read(root_id) == []
    await ws.disconnect()


@pytest.mark.redis
@bounded(40)
async def test_on_redis_a_batch_of_several_sessions_is_one_round_trip_and_is_heard(
        space_id, root_id, alice_key) -> None:
    """The buffers of every session in a batch and the messages for their followers and
    watchers go out in one script: one round trip, however many sessions, events and
    messages (three round trips per session before). What it publishes is what the channel
    layer's own group send would: a follower and a watcher hear it."""
    from channels.layers import get_channel_layer

    from sessions_app.engine.types import LogEvent
    from sessions_app.events import session_group
    from sessions_app.store import space_store

    store = live.buffer()
    assert isinstance(store, live.RedisBuffer) and store._layer is not None
    layer = get_channel_layer()
    watcher = await layer.new_channel()
    await layer.group_add(session_group(root_id), watcher)
    others = [str(uuid.uuid4()) for _ in range(3)]
    calls = 0
    real_script = store._run_script

    async def counted(*args, **kwargs):
        nonlocal calls
        calls += 1
        return await real_script(*args, **kwargs)

    store._run_script = counted
    try:
        async with live.Follower(space_store(space_id), root_id, 0) as follower:
            for session_id in [root_id, *others]:
                live.publish(session_id, LogEvent(1, "turn.started", {"turnId": "t"}))
                live.publish(session_id, LogEvent(2, "stream.delta", {"chunk": "a"}))
            live.notify(root_id, session_group(root_id), {
                "type": "session.updated", "sessionId": root_id, "turnCount": 7})
            await live.drain()
            assert calls == 1
            for session_id in others:
                assert [e.seq for e in await store.read(session_id)] == [1, 2]
            async with asyncio.timeout(5):
                heard = [await anext(aiter(follower)) for _ in range(2)]
                told = await layer.receive(watcher)
            assert [(e.seq, e.type) for e in heard] == [(1, "turn.started"), (2, "stream.delta")]
            assert told == {"type": "session.updated", "sessionId": root_id, "turnCount": 7}
    finally:
        store._run_script = real_script
        await layer.group_discard(session_group(root_id), watcher)
        for session_id in [root_id, *others]:
            await store.write(session_id, [], clear=True)


def test_a_batch_command_is_packed_as_redis_py_packs_it() -> None:
    from redis.asyncio.connection import Connection

    parts = ("EVALSHA", "0123abcd", 2, "p:live:a", "p:live:b", 3600, 1, '[{"chunk":"é"}]',
             0, "", "channel!", b"\x00\xff\r\n binary", "x" * 10_000)
    assert live.resp_command(*parts) == b"".join(Connection().pack_command(*parts))


@pytest.mark.redis
@bounded(40)
async def test_on_redis_a_batch_survives_a_lost_script_and_a_dropped_connection(
        space_id, root_id, alice_key) -> None:
    """The batches go out on a connection of their own: after Redis forgot the script
    (SCRIPT FLUSH, a restart) and after that connection was dropped (CLIENT KILL), the next
    batch is still written, on a new connection."""
    from sessions_app.engine.types import LogEvent

    store = live.buffer()
    assert isinstance(store, live.RedisBuffer)
    session_id = str(uuid.uuid4())
    try:
        await store.write(session_id, [live._encode(LogEvent(1, "turn.started", {}))],
                          clear=True)
        await store._redis.script_flush()
        await store.write(session_id, [live._encode(LogEvent(2, "stream.delta", {}))],
                          clear=False)
        assert [e.seq for e in await store.read(session_id)] == [1, 2]

        await store._line.send_command("CLIENT", "ID")
        line_id = await store._line.read_response()
        assert await store._redis.client_kill_filter(_id=line_id) == 1
        await store.write(session_id, [live._encode(LogEvent(3, "stream.delta", {}))],
                          clear=False)
        assert [e.seq for e in await store.read(session_id)] == [1, 2, 3]
    finally:
        await store.write(session_id, [], clear=True)


@pytest.mark.redis
@bounded(40)
async def test_on_redis_a_batch_starts_no_task(space_id, root_id, alice_key) -> None:
    """A batch is sent and answered on the drain's own task (redis-py with a socket timeout
    wraps every send in `asyncio.wait_for`, a task per batch)."""
    from sessions_app.engine.types import LogEvent

    store = live.buffer()
    assert isinstance(store, live.RedisBuffer)
    session_id = str(uuid.uuid4())
    loop = asyncio.get_running_loop()
    started: list[object] = []

    def counting(loop, coro, **kwargs):
        started.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    await store.write(session_id, [live._encode(LogEvent(1, "turn.started", {}))], clear=True)
    loop.set_task_factory(counting)
    try:
        await store.write(session_id, [live._encode(LogEvent(2, "stream.delta", {}))],
                          clear=False)
    finally:
        loop.set_task_factory(None)
        await store.write(session_id, [], clear=True)
    assert started == []


async def test_a_batch_to_a_redis_that_never_answers_fails_in_bounded_time(monkeypatch) -> None:
    """The batches' connection has no socket timeout of its own: each exchange is bounded by
    `LINE_TIMEOUT_SECONDS`, tried twice, then the error goes to the drain (never a hang)."""
    from sessions_app.engine.types import LogEvent

    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing, answers nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setattr(live, "LINE_TIMEOUT_SECONDS", 0.2)
    store = live.RedisBuffer(f"redis://127.0.0.1:{port}/0", "silent")
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(TimeoutError):
            await store.write("s", [live._encode(LogEvent(1, "turn.started", {}))], clear=True)
        assert loop.time() - started < 2
        assert len(accepted) == 2  # a second try on a new connection
    finally:
        await store.aclose()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


@bounded()
async def test_a_resume_from_newest_starts_at_the_newest_saved_event(space_id, root_id,
                                                                    alice_key) -> None:
    """A client with no position (a console opening a session) follows from now on and learns
    the seq from `session.entered`."""
    ws = await open_ws(space_id, alice_key)
    await enter(ws, root_id)
    assert (await ask(ws, {"type": "session.message", "input": "x"}))["type"] == "turn.complete"
    await ws.disconnect()
    ws = await open_ws(space_id, alice_key)
    entered = await ask(ws, {"type": "session.resume", "sessionId": root_id, "since": "newest"})
    assert entered["type"] == "session.entered" and entered["seq"] == 2  # started, completed
    await nothing_more(ws)  # nothing replayed
    await ws.send_json_to({"type": "session.message", "input": "y"})
    frames = await frames_until(ws, "turn.complete")
    assert [f.get("seq") for f in frames] == [3, 4, 4]
    refused = await ask(await open_ws(space_id, alice_key),
                        {"type": "session.resume", "sessionId": root_id, "since": "oldest"})
    assert refused["type"] == "error" and "since" in refused["message"]
    await ws.disconnect()


@bounded(40)
async def test_the_space_default_busy_policy_and_a_frame_that_overrides_it(
        space, root_id, alice_key, settings) -> None:
    runtime = runtimes.current()
    settings.STELLO = {**settings.STELLO, "SESSION_LOCK_TIMEOUT_SECONDS": 30.0,
                       "IF_BUSY": "enqueue"}
    space.config = {"ifBusy": "reject"}  # before the space's agent is built
    await space.asave(update_fields=["config"])
    ws = await open_ws(str(space.pk), alice_key)
    await enter(ws, root_id)
    clock = asyncio.get_running_loop().time
    async with runtime.locks.hold(root_id):
        started = clock()
        for frame_type in ("session.message", "session.stream"):
            reply = await ask(ws, {"type": frame_type, "input": "no"})
            assert reply["type"] == "error" and reply["message"] == "session busy", reply
        assert clock() - started < 5  # at once, not after the 30 s wait
        await ws.send_json_to({"type": "session.message", "input": "wait",
                               "ifBusy": "enqueue"})
        assert await ws.receive_nothing(0.3)  # waiting for the lock
    reply = await recv(ws)
    assert reply["type"] == "turn.complete"
    assert reply["result"]["turn"]["finalContent"] == "echo: wait"
    await ws.disconnect()
    await finish_ws_work()


# -- session changes in the log (fork, archive) ----------------------------------------------


@bounded(40)
async def test_forks_and_archives_are_logged_for_followers(space_id, root_id, alice_key,
                                                           settings, tmp_path) -> None:
    # The LLM's first call forks through its tool; every later call echoes.
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"content": None, "toolCalls": [
        {"id": "c1", "name": "stello_create_session", "input": {"label": "By the LLM"}}]}]))
    settings.STELLO = {**settings.STELLO, "MEMORY_LLM": None, "CONSOLIDATE_EVERY_N_TURNS": 0,
                       "CONSOLIDATE_ON_ARCHIVE": False,
                       "LLM": {**settings.STELLO["LLM"], "provider": "offline",
                               "script_path": str(script)}}
    follower = await open_ws(space_id, alice_key)
    await resume(follower, root_id, 0)
    plain = await open_ws(space_id, alice_key)
    await enter(plain, root_id)

    # A turn whose tool forks: the entry is the turn's, between its tool call and result.
    await plain.send_json_to({"type": "session.message", "input": "branch"})
    reply = await recv(plain)
    assert reply["type"] == "turn.complete", reply
    frames = await frames_until(follower, "turn.completed")
    assert [(f["type"], f["seq"]) for f in frames] == [
        ("turn.started", 1), ("tool.call", 2), ("session.forked", 3), ("tool.result", 4),
        ("turn.completed", 5)]
    by_llm = frames[2]["child"]
    assert by_llm["label"] == "By the LLM" and frames[2]["turnId"] == reply["result"]["turnId"]
    assert await Session.objects.filter(pk=by_llm["id"]).aexists()

    # A WebSocket fork: the original client gets its one answer frame and nothing new.
    answer = await ask(plain, {"type": "session.fork", "options": {"label": "WS"}})
    assert answer["type"] == "session.forked" and "seq" not in answer
    await nothing_more(plain)
    logged = await recv(follower)
    assert (logged["type"], logged["seq"]) == ("session.forked", 6)
    assert logged["child"] == {"id": answer["child"]["id"], "label": "WS", "scope": None}

    # A REST fork: exactly one above the previous event.
    client = AsyncClient()
    headers = {"X-API-Key": alice_key}
    response = await client.post(f"/spaces/{space_id}/sessions/{root_id}/fork",
                                 {"label": "REST", "scope": "s"},
                                 content_type="application/json", headers=headers)
    assert response.status_code == 201
    logged = await recv(follower)
    assert (logged["type"], logged["seq"]) == ("session.forked", 7)
    assert logged["child"] == {"id": response.json()["id"], "label": "REST", "scope": "s"}
    await live.drain()
    assert await live.recover(root_id) == []  # committed before told: never in the buffer

    # Archive and unarchive a child: logged on the child, for its followers.
    child_id = response.json()["id"]
    child_follower = await open_ws(space_id, alice_key)
    await resume(child_follower, child_id, 0)
    for action in ("archive", "unarchive"):
        response = await client.post(f"/spaces/{space_id}/sessions/{child_id}/{action}",
                                     content_type="application/json", headers=headers)
        assert response.status_code == 200
    assert [(f["type"], f["seq"]) for f in [await recv(child_follower),
                                            await recv(child_follower)]] == [
        ("session.archived", 1), ("session.unarchived", 2)]

    # A late follower replays all of it from the database, in order.
    late = await open_ws(space_id, alice_key)
    await resume(late, root_id, 5)
    assert [(f := await recv(late))["seq"] for _ in range(2)] == [6, 7]
    assert f["child"]["label"] == "REST"
    for ws in (follower, plain, child_follower, late):
        await nothing_more(ws)
        await ws.disconnect()
    await finish_ws_work()


@bounded(40)
async def test_memory_and_insight_changes_are_logged_for_followers(space_id, root_id, alice_key,
                                                                   settings) -> None:
    settings.STELLO = {**settings.STELLO, "MEMORY_LLM": None, "CONSOLIDATE_EVERY_N_TURNS": 0,
                       "CONSOLIDATE_ON_ARCHIVE": False,
                       "LLM": {**settings.STELLO["LLM"], "provider": "offline",
                               "script_path": None}}
    client, headers = AsyncClient(), {"X-API-Key": alice_key}
    base = f"/spaces/{space_id}/sessions"
    child = (await client.post(f"{base}/{root_id}/fork", {"label": "Kid"}, headers=headers,
                               content_type="application/json")).json()["id"]
    assert (await client.post(f"{base}/{child}/turn", {"input": "remember the tea"},
                              headers=headers, content_type="application/json")).status_code == 200
    kid, main = await open_ws(space_id, alice_key), await open_ws(space_id, alice_key)
    await resume(kid, child, 2)  # after its turn's started and completed
    await resume(main, root_id, 1)  # after the fork

    # An operator's correction (PUT), then consolidation and integration (their model answers).
    put = await client.put(f"{base}/{child}/memory", {"content": "likes tea"}, headers=headers,
                           content_type="application/json")
    assert put.status_code == 200
    logged = await recv(kid)
    assert logged == {"type": "memory.updated", "seq": 3, "memory": "likes tea"}
    consolidated = await client.post(f"{base}/{child}/consolidate", headers=headers)
    assert consolidated.status_code == 200
    logged = await recv(kid)
    assert (logged["type"], logged["seq"]) == ("memory.updated", 4)
    assert logged["memory"] == consolidated.json()["memory"]
    integrated = await client.post(f"/spaces/{space_id}/integrate", headers=headers)
    assert integrated.status_code == 200, integrated.json()
    synthesis = await recv(main)
    assert (synthesis["type"], synthesis["seq"]) == ("memory.updated", 2)
    assert synthesis["memory"] == integrated.json()["synthesis"]
    insight = await recv(kid)
    assert (insight["type"], insight["seq"]) == ("insight.updated", 5)
    assert insight["insight"] == integrated.json()["insights"][0]["content"]
    corrected = await client.put(f"{base}/{child}/insight", {"content": "be brief"},
                                 headers=headers, content_type="application/json")
    assert corrected.status_code == 200
    assert await recv(kid) == {"type": "insight.updated", "seq": 6, "insight": "be brief"}
    # Six events in five entries: the turn's start and end are one packed entry.
    assert await SessionEvent.objects.filter(session_id=child).acount() == 5
    await kid.disconnect()
    await main.disconnect()
    await finish_ws_work()
