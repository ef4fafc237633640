"""The SpaceStore contract for turns and the event log, on every implementation (`env`)."""

from __future__ import annotations

import uuid

import pytest
from django.conf import settings
from django.test import override_settings

from sessions_app.engine.errors import SessionNotFound, TurnNotFound
from sessions_app.engine.types import LogEvent, Message, TurnWrite

from .conftest import Env
from .test_contract import child, fork, say

pytestmark = pytest.mark.django_db(transaction=True)


def started(seq: int, turn_id: str, text: str = "q") -> LogEvent:
    return LogEvent(seq, "turn.started", {"turnId": turn_id, "input": text})


async def test_a_turn_row_its_records_and_events_come_with_the_calls(env: Env) -> None:
    sid = await fork(env)
    tid = str(uuid.uuid4())
    first = TurnWrite(tid, "q", "running", None, (
        started(1, tid),
        LogEvent(2, "stream.delta", {"turnId": tid, "round": 0, "chunks": ["a", "b", "c"]}, 4),
        LogEvent(5, "tool.call", {"turnId": tid, "round": 0, "calls": []}),
    ), 5)
    await env.store.save_call(sid, [Message("user", "q"), Message("assistant", "abc")],
                              turn=first)
    turn = await env.store.get_turn(sid, tid)
    assert (turn.id, turn.session_id, turn.status, turn.input) == (tid, sid, "running", "q")
    assert (await env.store.load_turn_context(sid)).running_turns == (tid,)

    result = {"turn": {"finalContent": "done"}, "turnId": tid}
    last = TurnWrite(tid, "q", "completed", result,
                     (LogEvent(6, "turn.completed", {"turnId": tid, "result": result}),), 6)
    await env.store.save_call(sid, say("done")[:1], end_turn=True, turn=last)
    turn = await env.store.get_turn(sid, tid)
    assert (turn.status, turn.result, turn.error) == ("completed", result, None)
    ctx = await env.store.load_turn_context(sid)
    assert (ctx.event_seq, ctx.running_turns) == (6, ())

    page = await env.store.read_events(sid, 0)
    assert [e.seq for e in page.events] == [1, 2, 3, 4, 5, 6]
    assert [e.payload.get("chunk") for e in page.events[1:4]] == ["a", "b", "c"]
    assert (page.current, page.first) == (6, 1)
    mid = await env.store.read_events(sid, 3)  # inside the coalesced entry
    assert [(e.seq, e.type) for e in mid.events] == [(4, "stream.delta"), (5, "tool.call"),
                                                     (6, "turn.completed")]
    assert mid.events[0].payload["chunk"] == "c"
    assert (await env.store.read_events(sid, 6)).events == ()
    assert [t.id for t in await env.store.list_turns(sid)] == [tid]


async def test_unknown_turns_and_sessions(env: Env) -> None:
    sid = await fork(env)
    for bad in (str(uuid.uuid4()), "nope", ""):
        with pytest.raises(TurnNotFound):
            await env.store.get_turn(sid, bad)
    tid = str(uuid.uuid4())
    await env.store.save_call(sid, say("q"), turn=TurnWrite(tid, "q", event_seq=0))
    other = await fork(env, label="Other")
    with pytest.raises(TurnNotFound):  # a turn of another session
        await env.store.get_turn(other, tid)
    for method in ("get_turn", "list_turns", "read_events"):
        with pytest.raises(SessionNotFound):
            call = getattr(env.store, method)
            await (call(env.other_space_session, tid) if method == "get_turn"
                   else call(env.other_space_session, 0) if method == "read_events"
                   else call(env.other_space_session))


async def test_finish_turn_cancelled_discards_the_turns_records(env: Env) -> None:
    sid = await fork(env)
    await env.store.save_call(sid, say("before"), end_turn=True)
    tid = str(uuid.uuid4())
    await env.store.save_call(sid, say("q", "calling"), turn=TurnWrite(tid, "q", event_seq=1,
                                                                       events=(started(1, tid),)))
    assert (await env.store.load_turn_context(sid)).record_count == 3
    await env.store.finish_turn(sid, TurnWrite(tid, "q", "cancelled", events=(
        LogEvent(2, "turn.cancelled", {"turnId": tid}),), event_seq=2), error=None, discard=True)
    ctx = await env.store.load_turn_context(sid)
    assert [m.content for m in ctx.history] == ["before"]
    assert (ctx.record_count, ctx.event_seq, ctx.running_turns) == (1, 2, ())
    assert (await env.store.get_turn(sid, tid)).status == "cancelled"
    # A turn that saved nothing gets its row from finish_turn alone.
    failed = str(uuid.uuid4())
    await env.store.finish_turn(sid, TurnWrite(failed, "x", "failed", event_seq=3, events=(
        LogEvent(3, "turn.failed", {"turnId": failed, "error": "boom"}),)),
        error="boom", discard=False)
    turn = await env.store.get_turn(sid, failed)
    assert (turn.status, turn.error, turn.input) == ("failed", "boom", "x")
    assert [e.type for e in (await env.store.read_events(sid, 0)).events] == [
        "turn.started", "turn.cancelled", "turn.failed"]


async def test_an_abandoned_turn_fails_and_loses_its_records(env: Env) -> None:
    sid = await fork(env)
    await env.store.save_call(sid, say("kept"), end_turn=True)
    dead = str(uuid.uuid4())
    await env.store.save_call(sid, say("q", "half"), turn=TurnWrite(dead, "q", event_seq=1,
                                                                    events=(started(1, dead),)))
    ctx = await env.store.load_turn_context(sid)
    assert ctx.running_turns == (dead,)
    tid = str(uuid.uuid4())
    result = await env.store.save_call(sid, say("next"), end_turn=True, turn=TurnWrite(
        tid, "next", "completed", {"turn": {}}, (
            LogEvent(2, "turn.failed", {"turnId": dead, "error": "gone"}),
            started(3, tid, "next")), 3, abandoned=(dead,)))
    assert result.record_count == 2
    ctx = await env.store.load_turn_context(sid)
    assert [m.content for m in ctx.history] == ["kept", "next"]
    assert ctx.record_count == 2 and ctx.last_record_id == result.last_record_id
    assert (await env.store.get_turn(sid, dead)).status == "failed"


async def three_turns_kept_by(env: Env, retention: int) -> str:
    """A session with three ended turns of two events each (seqs 1..6) under `retention`."""
    sid = await fork(env)
    env.store.event_retention = retention  # the fake's setting
    with override_settings(STELLO={**settings.STELLO, "EVENT_RETENTION": retention}):
        for n in range(1, 4):
            tid = str(uuid.uuid4())
            await env.store.save_call(sid, say(f"q{n}"), end_turn=True, turn=TurnWrite(
                tid, f"q{n}", "completed", {}, (
                    started(2 * n - 1, tid),
                    LogEvent(2 * n, "turn.completed", {"turnId": tid, "result": {}})), 2 * n))
    return sid


async def test_retention_prunes_old_entries_at_the_end_of_a_turn(env: Env) -> None:
    sid = await three_turns_kept_by(env, 2)
    page = await env.store.read_events(sid, 0)
    assert [e.seq for e in page.events] == [5, 6]
    assert (page.first, page.current) == (5, 6)


async def test_retention_keeps_at_least_the_newest_events_when_entries_are_packed(
        env: Env) -> None:
    # A turn's events are one stored entry on the SQL stores (the turn's start and end here):
    # an entry the retention line cuts through is kept whole, never dropped with newer events.
    sid = await three_turns_kept_by(env, 3)
    page = await env.store.read_events(sid, 0)
    seqs = [e.seq for e in page.events]
    assert seqs in ([3, 4, 5, 6], [4, 5, 6])
    assert (page.first, page.current) == (seqs[0], 6)
    assert [e.type for e in page.events][-3:] == ["turn.completed", "turn.started",
                                                  "turn.completed"]


# -- entries a session change logs itself (fork, archive), outside a turn ----------------------


async def test_a_fork_logs_session_forked_on_its_source_with_the_next_seq(env: Env) -> None:
    source = await fork(env, label="Source")
    tid = str(uuid.uuid4())
    await env.store.save_call(source, say("q", "a"), end_turn=True, turn=TurnWrite(
        tid, "q", "completed", {}, (started(1, tid), LogEvent(2, "turn.completed",
                                                              {"turnId": tid})), 2))
    told: list[LogEvent] = []
    meta = await env.store.create_child(child(source, "Kid", scope="s"), logged=told.append)
    expected = LogEvent(3, "session.forked",
                        {"child": {"id": meta.id, "label": "Kid", "scope": "s"}})
    assert told == [expected]
    [read] = (await env.store.read_events(source, 2)).events
    assert (read.seq, read.end, read.type, read.payload) == (3, 3, "session.forked",
                                                             expected.payload)
    assert (await env.store.load_turn_context(source)).event_seq == 3
    # The child's own log is empty; a fork without `logged` (a turn's tool: the turn logs
    # it) writes no entry.
    assert (await env.store.read_events(meta.id, 0)).current == 0
    await env.store.create_child(child(source, "Quiet"))
    assert (await env.store.read_events(source, 0)).current == 3


async def test_a_flat_fork_logs_on_its_source_not_on_the_parent(env: Env) -> None:
    source = await fork(env, label="Source")
    told: list[LogEvent] = []
    meta = await env.store.create_child(child(source, "Flat", placement="flat"),
                                        logged=told.append)
    assert meta.parent_id == env.root_id
    assert [(e.seq, e.type) for e in told] == [(1, "session.forked")]
    assert (await env.store.read_events(env.root_id, 0)).current == 0
    assert (await env.store.read_events(source, 0)).events[0].payload["child"]["id"] == meta.id


async def test_archive_and_unarchive_log_a_change_only(env: Env) -> None:
    sid = await fork(env)
    told: list[LogEvent] = []
    await env.store.archive(sid, logged=told.append)
    await env.store.archive(sid, logged=told.append)  # already archived: no entry
    await env.store.unarchive(sid, logged=told.append)
    await env.store.unarchive(sid, logged=told.append)
    assert [(e.seq, e.type, dict(e.payload)) for e in told] == [
        (1, "session.archived", {}), (2, "session.unarchived", {})]
    page = await env.store.read_events(sid, 0)
    assert [(e.seq, e.type) for e in page.events] == [(1, "session.archived"),
                                                      (2, "session.unarchived")]
    assert page.current == 2
    # The main session is never archived: nothing logged.
    await env.store.archive(env.root_id, logged=told.append)
    assert len(told) == 2 and (await env.store.read_events(env.root_id, 0)).current == 0
    # Without `logged` the status changes and nothing is logged.
    meta = await env.store.archive(sid)
    assert meta.status == "archived" and (await env.store.read_events(sid, 0)).current == 2


async def test_logged_writes_refuse_unknown_sessions_and_tell_nothing(env: Env) -> None:
    told: list[LogEvent] = []
    for bad in (str(uuid.uuid4()), env.other_space_session):
        for call in (env.store.archive(bad, logged=told.append),
                     env.store.unarchive(bad, logged=told.append),
                     env.store.create_child(child(bad, "X"), logged=told.append)):
            with pytest.raises(SessionNotFound):
                await call
    assert told == []
