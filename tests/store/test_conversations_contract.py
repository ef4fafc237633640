"""The store contract of conversations as data: message stretches, history up to a message and
record rewrites (engine port: every store, the in-memory fake included), then message pages,
session edits, subtree deletion and the flat listing (the database stores)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from sessions_app.engine.errors import SessionArchived, SessionNotFound
from sessions_app.engine.types import Message, ToolCall
from sessions_app.store.orm_conversations import MainSessionNotDeletable

from .conftest import Env
from .test_contract import child, fork

pytestmark = pytest.mark.django_db(transaction=True)

CALL = ToolCall("c1", "lookup", {"q": "x"})
CONVERSATION = [
    Message("user", "u1"),
    Message("assistant", "", tool_calls=(CALL,)),
    Message("tool", "result", tool_call_id="c1"),
    Message("assistant", "a1"),
    Message("user", "u2"),
    Message("assistant", "a2"),
]


async def seeded(env: Env, session_id: str | None = None) -> tuple[str, list[int]]:
    sid = session_id or await fork(env)
    await env.store.save_call(sid, CONVERSATION[:4], end_turn=True)
    await env.store.save_call(sid, CONVERSATION[4:], end_turn=True)
    data = await env.store.load_consolidation_input(sid)
    return sid, [rid for rid, _ in data.records]


def contents(pairs) -> list[str]:
    return [m.content for _, m in pairs]


# -- engine port ----------------------------------------------------------------------------

async def test_a_stretch_runs_from_a_user_message_to_the_next(env: Env) -> None:
    sid, ids = await seeded(env)
    assert contents(await env.store.record_stretch(sid)) == ["u2", "a2"]
    tool_stretch = await env.store.record_stretch(sid, ids[2])
    assert [rid for rid, _ in tool_stretch] == ids[:4]
    assert tool_stretch[1][1].tool_calls == (CALL,)
    assert tool_stretch[2][1].tool_call_id == "c1"
    assert contents(await env.store.record_stretch(sid, ids[0])) == ["u1", "", "result", "a1"]
    assert await env.store.record_stretch(sid, ids[-1] + 1000) == []
    assert await env.store.record_stretch(env.root_id) == []  # no records yet


async def test_history_through_reads_from_the_first_record(env: Env) -> None:
    sid, ids = await seeded(env)
    assert [rid for rid, _ in await env.store.history_through(sid, ids[1])] == ids[:4]
    assert [rid for rid, _ in await env.store.history_through(sid, ids[4])] == ids
    assert await env.store.history_through(sid, ids[-1] + 1000) == []


async def test_a_record_of_another_session_is_not_found_there(env: Env) -> None:
    sid, ids = await seeded(env)
    other, _ = await seeded(env)
    assert await env.store.record_stretch(other, ids[0]) == []
    assert await env.store.history_through(other, ids[0]) == []
    before = len((await env.store.load_turn_context(sid)).history)
    result = await env.store.rewrite_records(other, [ids[0]])
    assert result.record_count == 6
    assert len((await env.store.load_turn_context(sid)).history) == before


async def test_rewrite_removes_and_appends_in_one_go(env: Env) -> None:
    sid, ids = await seeded(env)
    removed = await env.store.rewrite_records(sid, ids[1:3])
    assert (removed.turn_count, removed.record_count, removed.last_record_id) == (2, 4, ids[-1])
    ctx = await env.store.load_turn_context(sid)
    assert [m.content for m in ctx.history] == ["u1", "a1", "u2", "a2"]
    assert (ctx.record_count, ctx.session.turn_count) == (4, 2)
    env.turns.clear()
    replaced = await env.store.rewrite_records(
        sid, ids[4:], [Message("user", "u2'"), Message("assistant", "a2'")],
        end_turn=True, turns_removed=1)
    assert (replaced.turn_count, replaced.record_count) == (2, 4)
    assert replaced.last_record_id > ids[-1]
    ctx = await env.store.load_turn_context(sid)
    assert [m.content for m in ctx.history] == ["u1", "a1", "u2'", "a2'"]
    assert ctx.last_record_id == replaced.last_record_id
    assert [t[1:] for t in env.turns] == [(sid, 2)]


async def test_rewrite_never_takes_the_turn_count_below_zero(env: Env) -> None:
    sid = await fork(env)
    result = await env.store.rewrite_records(sid, [], turns_removed=5)
    assert result.turn_count == 0 and result.record_count == 0


async def test_rewrite_consumes_the_insight_it_used(env: Env) -> None:
    sid, ids = await seeded(env)
    await env.store.write_slot(sid, "insight", "hint")
    await env.store.rewrite_records(sid, ids[4:], [Message("user", "x")],
                                    consumed_insight="hint")
    assert await env.store.read_slot(sid, "insight") is None


async def test_an_archived_session_is_not_rewritten(env: Env) -> None:
    sid, ids = await seeded(env)
    await env.store.archive(sid)
    with pytest.raises(SessionArchived):
        await env.store.rewrite_records(sid, ids[:2], [Message("user", "x")], end_turn=True)
    ctx = await env.store.load_turn_context(sid)
    assert (ctx.record_count, ctx.session.turn_count, len(ctx.history)) == (6, 2, 6)


@pytest.mark.parametrize("method", ["record_stretch", "history_through", "rewrite_records"])
async def test_unknown_and_foreign_sessions_are_not_found(env: Env, method) -> None:
    calls = {
        "record_stretch": lambda sid: env.store.record_stretch(sid),
        "history_through": lambda sid: env.store.history_through(sid, 1),
        "rewrite_records": lambda sid: env.store.rewrite_records(sid, [1], [Message("user", "x")]),
    }
    for bad in [str(uuid.uuid4()), "not-a-uuid", "", env.other_space_session]:
        with pytest.raises(SessionNotFound):
            await calls[method](bad)


async def test_a_branch_records_the_message_it_came_from(env: Env) -> None:
    meta = await env.store.create_child(child(env.root_id, records=(Message("user", "u"),),
                                              from_message=7))
    assert meta.metadata == {"sourceSessionId": env.root_id, "sourceMessageId": 7}
    assert (await env.store.get_session(meta.id)).metadata["sourceMessageId"] == 7


# -- REST-side methods (database stores) ----------------------------------------------------

async def test_message_pages_in_both_directions(db_env: Env) -> None:
    sid, ids = await seeded(db_env)
    store = db_env.store
    newest, more = await store.message_page(sid, limit=4)
    assert [m["id"] for m in newest] == ids[2:] and more
    older, more = await store.message_page(sid, limit=4, before=ids[2])
    assert [m["id"] for m in older] == ids[:2] and not more
    forward, more = await store.message_page(sid, limit=5, after=0)
    assert [m["id"] for m in forward] == ids[:5] and more
    rest, more = await store.message_page(sid, limit=5, after=ids[4])
    assert [m["id"] for m in rest] == ids[5:] and not more
    assert rest[0]["role"] == "assistant" and rest[0]["content"] == "a2"
    assert forward[1]["toolCalls"] == [{"id": "c1", "name": "lookup", "input": {"q": "x"}}]
    assert await store.message_page(db_env.root_id, limit=3) == ([], False)
    for bad in [str(uuid.uuid4()), "not-a-uuid", db_env.other_space_session]:
        with pytest.raises(SessionNotFound):
            await store.message_page(bad, limit=3)


async def test_update_session_keeps_the_servers_metadata(db_env: Env) -> None:
    sid = await fork(db_env)
    meta = await db_env.store.update_session(sid, {"label": "New", "tags": ["t"],
                                                   "metadata": {"k": 1}, "scope": "s"})
    assert (meta.label, meta.tags, meta.scope) == ("New", ("t",), "s")
    assert meta.metadata == {"k": 1, "sourceSessionId": db_env.root_id}
    assert await db_env.store.get_session(sid) == meta
    with pytest.raises(SessionNotFound):
        await db_env.store.update_session(db_env.other_space_session, {"label": "x"})


async def test_delete_session_takes_its_subtree(db_env: Env) -> None:
    parent = await fork(db_env)
    kid = (await db_env.store.create_child(child(parent, placement="tree"))).id
    keep = await fork(db_env)
    await seeded(db_env, kid)
    deleted = await db_env.store.delete_session(parent)
    assert deleted == [parent, kid]
    for gone in deleted:
        with pytest.raises(SessionNotFound):
            await db_env.store.get_session(gone)
    assert (await db_env.store.get_session(keep)).id == keep
    with pytest.raises(MainSessionNotDeletable):
        await db_env.store.delete_session(db_env.root_id)
    with pytest.raises(SessionNotFound):
        await db_env.store.delete_session(db_env.other_space_session)


async def test_list_sessions_filters_and_pages(db_env: Env) -> None:
    a = await fork(db_env, label="Alpha")
    b = await fork(db_env, label="beta")
    await db_env.store.update_session(b, {"tags": ["x", "y"]})
    await db_env.store.archive(a)
    store = db_env.store
    everything, more = await store.list_sessions(limit=10)
    assert [m.id for m in everything] == [a, b, db_env.root_id] and not more
    assert [m.id for m in (await store.list_sessions(limit=10, tag="y"))[0]] == [b]
    assert [m.id for m in (await store.list_sessions(limit=10, status="archived"))[0]] == [a]
    assert [m.id for m in (await store.list_sessions(limit=10, text="ALP"))[0]] == [a]
    later = everything[0].updated_at + timedelta(seconds=1)
    assert (await store.list_sessions(limit=10, updated_since=later))[0] == []
    first, more = await store.list_sessions(limit=2)
    assert more
    last = first[-1]
    second, more = await store.list_sessions(limit=2, after=(last.updated_at, last.id))
    assert [m.id for m in first + second] == [m.id for m in everything] and not more
