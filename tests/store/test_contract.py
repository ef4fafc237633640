"""The SpaceStore contract, run against every implementation (see conftest.py: `env`)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

import pytest

from sessions_app.engine.errors import SessionArchived, SessionNotFound
from sessions_app.engine.types import (
    ChildMemory,
    CompressionCache,
    Insight,
    Message,
    NewChild,
    SaveResult,
    ToolCall,
)

from .conftest import CONSOLIDATE_PROMPT, CORE, SYSTEM_PROMPT, Env

pytestmark = pytest.mark.django_db(transaction=True)


def child(source_id: str, label: str = "Child", *, placement: str = "flat", **fields) -> NewChild:
    values = {"scope": None, "system_prompt": None, "records": ()} | fields
    return NewChild(source_id=source_id, label=label, placement=placement, **values)


async def fork(env: Env, source_id: str | None = None, label: str = "Child", **fields) -> str:
    meta = await env.store.create_child(child(source_id or env.root_id, label, **fields))
    return meta.id


def say(*texts: str) -> list[Message]:
    return [Message("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(texts)]


# -- unknown sessions -------------------------------------------------------------------------

def _bad_ids(env: Env) -> list[str]:
    return [str(uuid.uuid4()), "not-a-uuid", "", env.other_space_session]


CALLS = {
    "get_session": lambda s, sid: s.get_session(sid),
    "load_turn_context": lambda s, sid: s.load_turn_context(sid),
    "load_turn_context_after": lambda s, sid: s.load_turn_context(sid, history_after=3),
    "load_turn_context_none": lambda s, sid: s.load_turn_context(sid, history_after=None),
    "save_call": lambda s, sid: s.save_call(sid, say("hi"), end_turn=True),
    "create_child": lambda s, sid: s.create_child(child(sid)),
    "create_child_tree": lambda s, sid: s.create_child(child(sid, placement="tree")),
    "archive": lambda s, sid: s.archive(sid),
    "unarchive": lambda s, sid: s.unarchive(sid),
    "read_slot": lambda s, sid: s.read_slot(sid, "memory"),
    "write_slot": lambda s, sid: s.write_slot(sid, "memory", "x"),
    "write_slot_only_active": lambda s, sid: s.write_slot(sid, "memory", "x", only_active=True),
    "delete_slot": lambda s, sid: s.write_slot(sid, "memory", None),
    "save_compression": lambda s, sid: s.save_compression(sid, CompressionCache(1, "d", "s")),
    "save_integration": lambda s, sid: s.save_integration(sid, "synthesis", ()),
    "load_consolidation_input": lambda s, sid: s.load_consolidation_input(sid),
    "save_consolidation": lambda s, sid: s.save_consolidation(sid, "memory", 1),
    "load_bootstrap": lambda s, sid: s.load_bootstrap(sid),
}


@pytest.mark.parametrize("method", list(CALLS))
async def test_unknown_malformed_and_foreign_sessions_are_not_found(env: Env, method) -> None:
    for bad in _bad_ids(env):
        with pytest.raises(SessionNotFound):
            await CALLS[method](env.store, bad)
    if env.db:  # and nothing was written to the other space
        from sessions_app.store import DjangoSpaceStore

        other = DjangoSpaceStore(await _space_of(env.other_space_session))
        meta = await other.get_session(env.other_space_session)
        assert (meta.turn_count, meta.status) == (0, "active")
        assert await other.read_slot(env.other_space_session, "memory") is None
        assert (await other.load_turn_context(env.other_space_session)).record_count == 0


async def _space_of(session_id: str) -> str:
    from sessions_app.models import Session

    return str((await Session.objects.aget(pk=session_id)).space_id)


# -- get_session / load_turn_context ------------------------------------------------------------

async def test_the_main_session_meta(env: Env) -> None:
    meta = await env.store.get_session(env.root_id)
    assert (meta.id, meta.space_id, meta.role, meta.status) == (
        env.root_id, env.space_id, "main", "active")
    assert (meta.scope, dict(meta.metadata), meta.turn_count) == (None, {}, 0)
    assert (meta.parent_id, meta.source_session_id, meta.depth, meta.index) == (None, None, 0, 0)
    for moment in (meta.created_at, meta.updated_at, meta.last_active_at):
        assert isinstance(moment, datetime) and moment.tzinfo is not None
    assert await env.store.main_session_id() == env.root_id


async def test_turn_context_of_a_new_session(env: Env) -> None:
    ctx = await env.store.load_turn_context(env.root_id)
    assert ctx.session == await env.store.get_session(env.root_id)
    assert (ctx.system_prompt, ctx.insight, ctx.synthesis) == (SYSTEM_PROMPT, None, None)
    assert (ctx.history, ctx.skills, ctx.compression) == ((), None, None)
    assert (ctx.history_after, ctx.record_count, ctx.last_record_id) == (0, 0, 0)


async def test_history_after_reads_the_whole_history_a_tail_or_none(env: Env) -> None:
    sid = await fork(env)
    first = await env.store.save_call(sid, say("q1", "a1"), end_turn=True)
    second = await env.store.save_call(sid, say("q2", "a2", "q3"))
    assert second.record_count == 5 and second.last_record_id > first.last_record_id

    whole = await env.store.load_turn_context(sid)
    assert [m.content for m in whole.history] == ["q1", "a1", "q2", "a2", "q3"]
    assert (whole.history_after, whole.record_count, whole.last_record_id) == (
        0, 5, second.last_record_id)

    tail = await env.store.load_turn_context(sid, history_after=first.last_record_id)
    assert [m.content for m in tail.history] == ["q2", "a2", "q3"]
    assert (tail.history_after, tail.record_count, tail.last_record_id) == (
        first.last_record_id, 5, second.last_record_id)

    up_to_date = await env.store.load_turn_context(sid, history_after=second.last_record_id)
    assert up_to_date.history == () and up_to_date.record_count == 5

    none = await env.store.load_turn_context(sid, history_after=None)
    assert none.history == () and none.history_after is None
    assert (none.record_count, none.last_record_id) == (5, second.last_record_id)
    assert none.session == whole.session and none.system_prompt == whole.system_prompt


async def test_insight_for_standard_sessions_synthesis_for_main(env: Env) -> None:
    sid = await fork(env)
    for session in (sid, env.root_id):
        await env.store.write_slot(session, "insight", f"insight of {session}")
        await env.store.write_slot(session, "memory", f"memory of {session}")
    standard = await env.store.load_turn_context(sid)
    assert (standard.insight, standard.synthesis) == (f"insight of {sid}", None)
    main = await env.store.load_turn_context(env.root_id)
    assert (main.insight, main.synthesis) == (None, f"memory of {env.root_id}")


async def test_skills_whitelist_from_session_config(env: Env) -> None:
    listed = await fork(env, session_config={"skills": ["a", "b"], "other": 1})
    assert (await env.store.load_turn_context(listed)).skills == ("a", "b")
    empty = await fork(env, session_config={"skills": []})
    assert (await env.store.load_turn_context(empty)).skills == ()
    unlisted = await fork(env, session_config={"temperature": 0})
    assert (await env.store.load_turn_context(unlisted)).skills is None
    assert await env.store.read_slot(unlisted, "session_config") is not None
    broken = await fork(env)
    await env.store.write_slot(broken, "session_config", "{not json")
    assert (await env.store.load_turn_context(broken)).skills is None


# -- save_call ----------------------------------------------------------------------------------

async def test_save_call_appends_in_order_and_counts_exactly(env: Env) -> None:
    sid = await fork(env)
    calls = (ToolCall("c1", "lookup", {"q": "x", "n": [1, 2]}),)
    messages = [Message("user", "question"), Message("assistant", "", tool_calls=calls),
                Message("tool", '{"ok": true}', tool_call_id="c1")]
    result = await env.store.save_call(sid, messages)
    assert isinstance(result, SaveResult)
    assert (result.turn_count, result.record_count) == (0, 3) and result.last_record_id > 0
    ctx = await env.store.load_turn_context(sid)
    assert list(ctx.history) == messages
    assert (ctx.record_count, ctx.last_record_id) == (3, result.last_record_id)

    empty = await env.store.save_call(sid, [], end_turn=True)
    assert empty == SaveResult(1, 3, result.last_record_id)


async def test_record_ids_grow_across_sessions_and_calls(env: Env) -> None:
    a, b = await fork(env, label="A"), await fork(env, label="B")
    ra = await env.store.save_call(a, say("1"))
    rb = await env.store.save_call(b, say("1", "2"))
    ra2 = await env.store.save_call(a, say("2"))
    assert ra.last_record_id < rb.last_record_id < ra2.last_record_id
    tail = await env.store.load_turn_context(a, history_after=ra.last_record_id)
    assert [m.content for m in tail.history] == ["2"]


async def test_end_turn_counts_the_turn_and_touches_the_session(env: Env) -> None:
    sid = await fork(env)
    before = await env.store.get_session(sid)
    await asyncio.sleep(0.002)
    result = await env.store.save_call(sid, say("q"))
    assert result.turn_count == 0
    middle = await env.store.get_session(sid)
    assert (middle.turn_count, middle.updated_at, middle.last_active_at) == (
        0, before.updated_at, before.last_active_at)

    result = await env.store.save_call(sid, say("a"), end_turn=True)
    after = await env.store.get_session(sid)
    assert result.turn_count == after.turn_count == 1
    assert after.last_active_at > before.last_active_at
    assert after.updated_at > before.updated_at
    assert after.last_active_at == after.updated_at


async def test_on_turn_is_called_once_per_committed_end_turn(env: Env) -> None:
    sid = await fork(env)
    await env.store.save_call(sid, say("q"))
    await env.store.save_call(sid, say("a"), consumed_insight="x")
    assert env.turns == []
    await env.store.save_call(sid, say("b"), end_turn=True)
    assert env.turns == [(env.space_id, sid, 1)]
    await env.store.save_call(sid, say("c"), end_turn=True)
    assert env.turns == [(env.space_id, sid, 1), (env.space_id, sid, 2)]
    with pytest.raises(SessionNotFound):
        await env.store.save_call(env.other_space_session, say("d"), end_turn=True)
    assert len(env.turns) == 2


async def test_consumed_insight_is_deleted_only_if_unchanged(env: Env) -> None:
    sid = await fork(env)
    await env.store.write_slot(sid, "insight", "Look at the budget.")
    await env.store.save_call(sid, say("q"), consumed_insight="an older insight")
    assert await env.store.read_slot(sid, "insight") == "Look at the budget."
    await env.store.save_call(sid, say("q"))  # nothing consumed
    assert await env.store.read_slot(sid, "insight") == "Look at the budget."
    await env.store.save_call(sid, say("q"), consumed_insight="Look at the budget.")
    assert await env.store.read_slot(sid, "insight") is None
    assert (await env.store.load_turn_context(sid)).insight is None
    await env.store.save_call(sid, say("q"), consumed_insight="gone already")  # no error


# -- create_child -------------------------------------------------------------------------------

async def test_fork_flat_places_every_child_under_the_main_session(env: Env) -> None:
    a = await env.store.create_child(child(env.root_id, "A", scope="area A",
                                           system_prompt="Prompt A"))
    b = await env.store.create_child(child(a.id, "B"))  # flat: still under the root
    for meta, index in ((a, 0), (b, 1)):
        assert (meta.parent_id, meta.depth, meta.index) == (env.root_id, 1, index)
        assert (meta.role, meta.status, meta.turn_count) == ("standard", "active", 0)
        assert meta.space_id == env.space_id
        assert await env.store.get_session(meta.id) == meta
    assert (a.label, a.scope, a.source_session_id) == ("A", "area A", env.root_id)
    assert dict(a.metadata) == {"sourceSessionId": env.root_id}
    assert (b.source_session_id, dict(b.metadata)) == (a.id, {"sourceSessionId": a.id})
    assert (await env.store.get_session(b.id)).scope is None
    assert (await env.store.load_bootstrap(a.id)).scope == "area A"  # one home: the session
    assert await env.store.read_slot(a.id, "scope") is None
    assert await env.store.read_slot(a.id, "system_prompt") == "Prompt A"
    assert await env.store.read_slot(b.id, "system_prompt") is None


async def test_fork_tree_places_the_child_under_its_source(env: Env) -> None:
    a = await env.store.create_child(child(env.root_id, "A", placement="tree"))
    b = await env.store.create_child(child(a.id, "B", placement="tree"))
    c = await env.store.create_child(child(a.id, "C", placement="tree"))
    assert (a.parent_id, a.depth, a.index) == (env.root_id, 1, 0)
    assert (b.parent_id, b.depth, b.index) == (a.id, 2, 0)
    assert (c.parent_id, c.depth, c.index) == (a.id, 2, 1)
    assert await env.store.get_session(c.id) == c


async def test_fork_copies_records_and_counts_them(env: Env) -> None:
    records = (Message("user", "question"), Message("assistant", "answer"))
    sid = await fork(env, records=records, session_config={"skills": ["x"]})
    ctx = await env.store.load_turn_context(sid)
    assert ctx.history == records and ctx.record_count == 2 and ctx.last_record_id > 0
    assert ctx.skills == ("x",)
    result = await env.store.save_call(sid, say("more"))
    assert (result.record_count, result.last_record_id > ctx.last_record_id) == (3, True)
    empty = await env.store.load_turn_context(await fork(env))
    assert (empty.record_count, empty.last_record_id, empty.history) == (0, 0, ())


@pytest.mark.parametrize("placement", ["flat", "tree"])
async def test_concurrent_forks_get_distinct_sibling_indexes(env: Env, placement) -> None:
    stores = [env.make_store() for _ in range(8)]
    metas = await asyncio.gather(*(
        s.create_child(child(env.root_id, f"C{i}", placement=placement))
        for i, s in enumerate(stores)
    ))
    assert sorted(m.index for m in metas) == list(range(8))
    assert {m.parent_id for m in metas} == {env.root_id}
    for meta in metas:
        assert (await env.store.get_session(meta.id)).index == meta.index


# -- archive ------------------------------------------------------------------------------------

async def test_archive_is_idempotent(env: Env) -> None:
    sid = await fork(env)
    before = await env.store.get_session(sid)
    await asyncio.sleep(0.002)
    first = await env.store.archive(sid)
    assert first.status == "archived" and first.updated_at > before.updated_at
    assert first == await env.store.get_session(sid)
    await asyncio.sleep(0.002)
    second = await env.store.archive(sid)
    assert second == first


async def test_the_main_session_is_never_archived(env: Env) -> None:
    before = await env.store.get_session(env.root_id)
    assert await env.store.archive(env.root_id) == before
    assert (await env.store.get_session(env.root_id)).status == "active"


async def test_unarchive_is_idempotent_and_reverses_archive(env: Env) -> None:
    sid = await fork(env)
    archived = await env.store.archive(sid)
    await asyncio.sleep(0.002)
    active = await env.store.unarchive(sid)
    assert active.status == "active" and active.updated_at > archived.updated_at
    assert active == await env.store.get_session(sid)
    assert await env.store.unarchive(sid) == active


async def test_only_active_slot_writes_refuse_an_archived_session(env: Env) -> None:
    sid = await fork(env)
    await env.store.write_slot(sid, "system_prompt", "before", only_active=True)
    await env.store.archive(sid)
    for content in ("after", None):
        with pytest.raises(SessionArchived):
            await env.store.write_slot(sid, "system_prompt", content, only_active=True)
    assert await env.store.read_slot(sid, "system_prompt") == "before"
    await env.store.write_slot(sid, "memory", "final")  # background memory work may write
    assert await env.store.read_slot(sid, "memory") == "final"


async def test_integration_gives_no_insight_to_an_archived_session(env: Env) -> None:
    active, archived = await fork(env, label="A"), await fork(env, label="B")
    await env.store.archive(archived)
    await env.store.save_integration(
        env.root_id, "synthesis", [Insight(active, "for A"), Insight(archived, "for B")])
    assert await env.store.read_slot(active, "insight") == "for A"
    assert await env.store.read_slot(archived, "insight") is None


# -- slots --------------------------------------------------------------------------------------

async def test_slots_upsert_read_and_delete(env: Env) -> None:
    sid = await fork(env)
    assert await env.store.read_slot(sid, "memory") is None
    await env.store.write_slot(sid, "memory", "first")
    await env.store.write_slot(sid, "memory", "second")
    await env.store.write_slot(sid, "consolidate_prompt", "")
    assert await env.store.read_slot(sid, "memory") == "second"
    assert await env.store.read_slot(sid, "consolidate_prompt") == ""
    await env.store.write_slot(sid, "memory", None)
    await env.store.write_slot(sid, "memory", None)  # deleting a missing slot is fine
    assert await env.store.read_slot(sid, "memory") is None
    assert await env.store.read_slot(sid, "consolidate_prompt") == ""


async def test_compression_cache_round_trip(env: Env) -> None:
    sid = await fork(env)
    await env.store.save_compression(sid, CompressionCache(4, "abc", "old summary"))
    cache = CompressionCache(6, "def", "A summary with \u00e9 and \"quotes\".")
    await env.store.save_compression(sid, cache)
    assert (await env.store.load_turn_context(sid)).compression == cache
    assert (await env.store.load_turn_context(sid, history_after=None)).compression == cache
    await env.store.write_slot(sid, "compression", None)
    assert (await env.store.load_turn_context(sid)).compression is None


# -- space-wide reads ---------------------------------------------------------------------------

async def test_space_prompts_and_main_session(env: Env) -> None:
    prompts = await env.store.space_prompts()
    assert (prompts.system_prompt, prompts.consolidate_prompt, prompts.integrate_prompt) == (
        SYSTEM_PROMPT, CONSOLIDATE_PROMPT, None)
    assert await env.store.main_session_id() == env.root_id


async def test_collect_memories_filters_and_orders(env: Env) -> None:
    a = await fork(env, label="A")
    empty = await fork(env, label="Empty")
    archived = await fork(env, label="Archived")
    nothing = await fork(env, label="Nothing")
    b = await fork(env, a, label="B", placement="tree")
    await env.store.write_slot(b, "memory", "B memory")
    await env.store.write_slot(a, "memory", "A memory")
    await env.store.write_slot(empty, "memory", "")
    await env.store.write_slot(archived, "memory", "old")
    await env.store.archive(archived)
    await env.store.write_slot(env.root_id, "memory", "the synthesis")
    await env.store.write_slot(nothing, "insight", "not a memory")
    assert await env.store.collect_memories() == [
        ChildMemory(a, "A", "A memory"),
        ChildMemory(archived, "Archived", "old", archived=True),
        ChildMemory(b, "B", "B memory"),
    ]


async def test_consolidation_input_is_what_the_memory_does_not_cover_yet(env: Env) -> None:
    sid = await fork(env, label="A")
    empty = await env.store.load_consolidation_input(sid)
    assert (empty.session.id, empty.memory, empty.session_prompt, empty.covered_up_to,
            empty.records) == (sid, None, None, 0, ())
    assert empty.space_prompt == CONSOLIDATE_PROMPT

    await env.store.save_call(sid, say("q1", "a1", "q2"), end_turn=True)
    await env.store.write_slot(sid, "consolidate_prompt", "mine")
    first = await env.store.load_consolidation_input(sid)
    assert [m.content for _, m in first.records] == ["q1", "a1", "q2"]
    ids = [rid for rid, _ in first.records]
    assert ids == sorted(ids) and len(set(ids)) == 3 and ids[0] > 0
    assert first.session_prompt == "mine"

    assert await env.store.save_consolidation(sid, "covers a1", ids[1]) is True
    after = await env.store.load_consolidation_input(sid)
    assert (after.memory, after.covered_up_to) == ("covers a1", ids[1])
    assert [m.content for _, m in after.records] == ["q2"]

    # An older result (covering less, or as much) is dropped and changes nothing.
    assert await env.store.save_consolidation(sid, "stale", ids[0]) is False
    assert await env.store.save_consolidation(sid, "same", ids[1]) is False
    assert await env.store.read_slot(sid, "memory") == "covers a1"
    assert (await env.store.load_consolidation_input(sid)).covered_up_to == ids[1]
    assert await env.store.read_slot(env.root_id, "memory") is None  # nobody else touched


async def test_concurrent_consolidations_keep_the_one_that_covered_more(env: Env) -> None:
    sid = await fork(env, label="A")
    await env.store.save_call(sid, say("q1", "a1", "q2", "a2"), end_turn=True)
    ids = [rid for rid, _ in (await env.store.load_consolidation_input(sid)).records]
    second = env.make_store()
    results = await asyncio.gather(
        env.store.save_consolidation(sid, "up to a2", ids[3]),
        second.save_consolidation(sid, "up to a1", ids[1]),
    )
    assert results[0] is True
    data = await env.store.load_consolidation_input(sid)
    assert (data.memory, data.covered_up_to, data.records) == ("up to a2", ids[3], ())


async def test_save_integration_writes_synthesis_and_own_insights(env: Env) -> None:
    a, b = await fork(env, label="A"), await fork(env, label="B")
    await env.store.write_slot(b, "insight", "old insight")
    await env.store.save_integration(env.root_id, "X and Y", [
        Insight(a, "Consider Y"), Insight(b, "Consider X"),
        Insight(env.other_space_session, "not mine"), Insight("not-a-uuid", "nobody"),
        Insight(str(uuid.uuid4()), "nobody either"),
    ])
    assert await env.store.read_slot(env.root_id, "memory") == "X and Y"
    assert await env.store.read_slot(a, "insight") == "Consider Y"
    assert await env.store.read_slot(b, "insight") == "Consider X"
    assert await env.store.read_slot(env.root_id, "insight") is None
    await env.store.save_integration(env.root_id, "Z", [])
    assert await env.store.read_slot(env.root_id, "memory") == "Z"
    assert await env.store.read_slot(a, "insight") == "Consider Y"
    if env.db:
        from sessions_app.store import DjangoSpaceStore

        other = DjangoSpaceStore(await _space_of(env.other_space_session))
        assert await other.read_slot(env.other_space_session, "insight") is None


async def test_bootstrap_reads_ancestors_memories_nearest_first(env: Env) -> None:
    await env.set_core(CORE)
    a = await fork(env, label="A", placement="tree")
    b = await fork(env, a, label="B", placement="tree", scope="area B")
    c = await fork(env, b, label="C", placement="tree", scope="area C")
    await env.store.write_slot(env.root_id, "memory", "root memory")
    await env.store.write_slot(a, "memory", "A memory")
    await env.store.write_slot(b, "memory", "")  # empty: skipped
    await env.store.write_slot(c, "memory", "C memory")
    boot = await env.store.load_bootstrap(c)
    assert boot.memories == ("A memory", "root memory")
    assert (boot.current_memory, boot.scope) == ("C memory", "area C")
    assert dict(boot.core) == CORE
    assert boot.session == await env.store.get_session(c)
    mid = await env.store.load_bootstrap(b)
    assert (mid.memories, mid.current_memory, mid.scope) == (
        ("A memory", "root memory"), "", "area B")
    root = await env.store.load_bootstrap(env.root_id)
    assert (root.memories, root.current_memory, root.scope) == ((), "root memory", None)


async def test_core_data(env: Env) -> None:
    assert dict(await env.store.core_data()) == {}
    await env.set_core(CORE)
    assert dict(await env.store.core_data()) == CORE
    assert dict((await env.store.load_bootstrap(env.root_id)).core) == CORE


async def test_write_core_sets_deletes_and_clears(env: Env) -> None:
    await env.store.write_core({"a": 1, "b": {"x": [1, "two"]}, "c": None})
    assert dict(await env.store.core_data()) == {"a": 1, "b": {"x": [1, "two"]}, "c": None}
    await env.store.write_core({"a": 2}, delete=["c", "missing"])
    assert dict(await env.store.core_data()) == {"a": 2, "b": {"x": [1, "two"]}}
    await env.store.write_core({"d": "new", "a": 3}, clear=True)
    assert dict(await env.store.core_data()) == {"d": "new", "a": 3}
    assert dict((await env.store.load_bootstrap(env.root_id)).core) == {"d": "new", "a": 3}
    await env.store.write_core({}, clear=True)
    assert dict(await env.store.core_data()) == {}
    await env.store.write_core({"nul": "a\x00b"})
    assert dict(await env.store.core_data()) == {"nul": "a\ufffdb"}


# -- what cannot be stored ----------------------------------------------------------------------

async def test_nul_is_stored_as_the_replacement_character(env: Env) -> None:
    meta = await env.store.create_child(child(
        env.root_id, "la\x00bel", scope="sco\x00pe", system_prompt="pro\x00mpt",
        records=(Message("user", "re\x00cord"),),
        session_config={"skills": ["sk\x00ill"]},
    ))
    assert (meta.label, meta.scope) == ("la\ufffdbel", "sco\ufffdpe")
    sid = meta.id
    await env.store.save_call(sid, [
        Message("assistant", "a\x00b", tool_calls=(ToolCall("c\x001", "t", {"k\x00": "v\x00"}),)),
        Message("tool", "x", tool_call_id="c\x001"),
    ])
    await env.store.write_slot(sid, "memory", "me\x00mory")
    ctx = await env.store.load_turn_context(sid)
    assert [m.content for m in ctx.history] == ["re\ufffdcord", "a\ufffdb", "x"]
    assert ctx.history[1].tool_calls == (ToolCall("c\ufffd1", "t", {"k\ufffd": "v\ufffd"}),)
    assert ctx.history[2].tool_call_id == "c\ufffd1"
    assert ctx.system_prompt == "pro\ufffdmpt" and ctx.skills == ("sk\ufffdill",)
    assert ctx.session.label == "la\ufffdbel"
    assert await env.store.read_slot(sid, "memory") == "me\ufffdmory"
    assert (await env.store.get_session(sid)).scope == "sco\ufffdpe"


# -- REST reads (the database stores only: not part of the engine port) ------------------------

async def test_rest_reads_are_the_selectors_shapes(db_env: Env) -> None:
    env = db_env
    from asgiref.sync import sync_to_async

    from sessions_app import selectors

    a = await fork(env, label="A", placement="tree")
    await fork(env, a, label="B", placement="tree")
    await fork(env, label="C")
    calls = (ToolCall("c1", "lookup", {"q": "x"}),)
    await env.store.save_call(a, [Message("user", "q"), Message("assistant", "", calls),
                                  Message("tool", "r", tool_call_id="c1")], end_turn=True)
    await env.store.archive(a)
    tree = await env.store.session_tree()
    assert tree == await sync_to_async(selectors.session_tree)(space_id=env.space_id)
    assert [c["label"] for c in tree["children"]] == ["A", "C"]
    messages = await env.store.session_messages(a)
    assert messages == await sync_to_async(selectors.session_messages)(
        space_id=env.space_id, session_id=a)
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["toolCalls"] == [{"id": "c1", "name": "lookup", "input": {"q": "x"}}]
    assert await env.store.session_messages(env.root_id) == []
    for bad in _bad_ids(env):
        with pytest.raises(SessionNotFound):
            await env.store.session_messages(bad)
