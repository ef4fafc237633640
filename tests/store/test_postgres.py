"""PostgreSQL only: the round trips of every PgSpaceStore method, the async space creation, and
503 when the database cannot be reached."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import uuid

import pytest
from asgiref.sync import sync_to_async
from psycopg import pq

from sessions_app.engine.errors import ServiceUnavailable
from sessions_app.engine.types import CompressionCache, Insight, Message, NewChild
from sessions_app.store import DjangoSpaceStore, PgSpaceStore, space_store
from spaces import pgpool

from .conftest import Env, make_env

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
async def pg() -> Env:
    yield await make_env("pg")
    await pgpool.pools.aclose_current()


async def _empty_unit_of_work() -> None:
    async with pgpool.connection():
        pass


async def round_trips(call) -> int:
    """The waits on the server that `call` costs (taking and returning a pooled connection
    costs none: checked here each time)."""
    await _empty_unit_of_work()  # the pool is open and has a connection ready
    pgpool.round_trips.reset()
    await _empty_unit_of_work()
    assert pgpool.round_trips.count == 0
    await call
    return pgpool.round_trips.count


@contextlib.asynccontextmanager
async def traced_connection(frontend: list[str]):
    """Stands in for `pgpool.connection`: a fresh connection whose protocol traffic is traced,
    so a test can count what the client sent (each Sync or simple Query is one wait for the
    server's ReadyForQuery, i.e. one round trip)."""
    conn = await pgpool.CountingConnection.connect(pgpool.conninfo(), autocommit=True)
    with tempfile.TemporaryFile() as trace:
        conn.pgconn.trace(trace.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            yield conn
        finally:
            conn.pgconn.untrace()
            await conn.close()
            trace.seek(0)
            frontend.extend(
                line.split("\t")[2].strip() for line in trace.read().decode().splitlines()
                if line.startswith("F\t")
            )


async def server_round_trips(call, monkeypatch) -> int:
    """The Syncs and simple Queries `call` sends to the server."""
    sent: list[str] = []
    monkeypatch.setattr(pgpool, "connection", lambda: traced_connection(sent))
    try:
        await call
    finally:
        monkeypatch.undo()
    return sum(message in ("Sync", "Query") for message in sent)


def new_child(source_id: str, placement: str = "flat") -> NewChild:
    return NewChild(
        source_id=source_id, label="Child", scope="a scope", system_prompt="prompt",
        records=(Message("user", "q"), Message("assistant", "a")), placement=placement,
        session_config={"skills": ["x"]},
    )


def method_calls(store: PgSpaceStore, root: str, sid: str) -> dict:
    two = [Message("user", "q"), Message("assistant", "a")]
    return {
        "get_session": lambda: store.get_session(sid),
        "load_turn_context": lambda: store.load_turn_context(sid),
        "load_turn_context(after)": lambda: store.load_turn_context(sid, history_after=1),
        "load_turn_context(None)": lambda: store.load_turn_context(sid, history_after=None),
        "save_call": lambda: store.save_call(sid, two, consumed_insight="i", end_turn=True),
        "create_child(flat)": lambda: store.create_child(new_child(sid)),
        "create_child(tree)": lambda: store.create_child(new_child(sid, "tree")),
        "archive": lambda: store.archive(sid),
        "unarchive": lambda: store.unarchive(sid),
        "read_slot": lambda: store.read_slot(sid, "memory"),
        "write_slot": lambda: store.write_slot(sid, "memory", "m"),
        "write_slot(None)": lambda: store.write_slot(sid, "memory", None),
        "write_slot(only_active)": lambda: store.write_slot(sid, "memory", "m", only_active=True),
        "save_compression": lambda: store.save_compression(sid, CompressionCache(1, "d", "s")),
        "space_prompts": lambda: store.space_prompts(),
        "main_session_id": lambda: store.main_session_id(),
        "collect_memories": lambda: store.collect_memories(),
        "save_integration": lambda: store.save_integration(root, "s", [Insight(sid, "i")]),
        "load_bootstrap": lambda: store.load_bootstrap(sid),
        "core_data": lambda: store.core_data(),
        "session_tree": lambda: store.session_tree(),
        "session_messages": lambda: store.session_messages(sid),
    }


async def test_every_method_is_one_round_trip(pg: Env, monkeypatch) -> None:
    await pg.set_core({"a": 1})
    sid = (await pg.store.create_child(new_child(pg.root_id))).id
    await pg.store.save_call(sid, [Message("user", "q"), Message("assistant", "a")])
    calls = method_calls(pg.store, pg.root_id, sid)
    counted = {name: await round_trips(call()) for name, call in calls.items()}
    assert counted == dict.fromkeys(calls, 1)
    sent = {name: await server_round_trips(call(), monkeypatch) for name, call in calls.items()}
    assert sent == dict.fromkeys(calls, 1)


async def test_unknown_sessions_cost_nothing_when_malformed(pg: Env) -> None:
    from sessions_app.engine.errors import SessionNotFound

    with pytest.raises(SessionNotFound):
        assert await round_trips(pg.store.get_session("nope")) == 0
    assert pgpool.round_trips.count == 0


async def test_space_store_picks_the_sql_store_on_postgresql(pg: Env) -> None:
    assert isinstance(space_store(pg.space_id), PgSpaceStore)


async def test_the_rest_reads_match_the_selectors(pg: Env) -> None:
    from sessions_app import selectors

    store = pg.store
    a = (await store.create_child(new_child(pg.root_id, "tree"))).id
    await store.create_child(new_child(a, "tree"))
    await store.save_call(a, [Message("assistant", "", tool_calls=()),
                              Message("tool", "r", tool_call_id="c1")])
    orm = DjangoSpaceStore(pg.space_id)
    tree = await sync_to_async(selectors.session_tree)(space_id=pg.space_id)
    assert await store.session_tree() == await orm.session_tree() == tree
    messages = await sync_to_async(selectors.session_messages)(space_id=pg.space_id,
                                                               session_id=a)
    assert await store.session_messages(a) == await orm.session_messages(a) == messages
    assert await store.session_messages(pg.root_id) == []


# -- the database unreachable -----------------------------------------------------------------

PORT_CLOSED = "host=127.0.0.1 port=1 dbname=none user=none connect_timeout=1"


async def test_no_database_is_service_unavailable_from_every_method(
    pg: Env, settings, monkeypatch
) -> None:
    await pgpool.pools.aclose_current()
    settings.STELLO = {**settings.STELLO, "ASYNC_POOL_TIMEOUT_SECONDS": 0.2}
    monkeypatch.setattr(pgpool, "conninfo", lambda: PORT_CLOSED)
    store, sid = PgSpaceStore(pg.space_id), pg.root_id
    calls = [
        store.get_session(sid), store.load_turn_context(sid),
        store.save_call(sid, [Message("user", "q")], end_turn=True),
        store.create_child(new_child(sid)), store.archive(sid), store.unarchive(sid),
        store.read_slot(sid, "memory"),
        store.write_slot(sid, "memory", "m"), store.write_slot(sid, "memory", None),
        store.save_compression(sid, CompressionCache(1, "d", "s")), store.space_prompts(),
        store.main_session_id(), store.collect_memories(),
        store.save_integration(sid, "s", ()), store.load_bootstrap(sid), store.core_data(),
        store.session_tree(), store.session_messages(sid),
    ]
    try:
        for call in calls:
            with pytest.raises(ServiceUnavailable):
                await call
    finally:
        await pgpool.pools.aclose_current()


# -- spaces created on the event loop -----------------------------------------------------------

def _space_rows(space_id: str) -> dict:
    from sessions_app.models import Record, Session, SessionData, TopologyNode

    session = Session.objects.values().get(space_id=space_id)
    node = TopologyNode.objects.values().get(space_id=space_id)
    slots = list(SessionData.objects.filter(session__space_id=space_id)
                 .values("key", "content").order_by("key"))
    records = Record.objects.filter(session__space_id=space_id).count()
    for row in (session, node):
        for key in ("id", "session_id", "space_id", "created_at", "updated_at",
                    "last_active_at"):
            row.pop(key, None)
    return {"session": session, "node": node, "slots": slots, "records": records}


@pytest.mark.parametrize("system_prompt", ["The prompt.", None, ""])
async def test_aspace_create_creates_what_space_create_creates(
    pg: Env, system_prompt, monkeypatch
) -> None:
    from django.contrib.auth import get_user_model

    from sessions_app.models import Session
    from sessions_app.receivers import root_session_rows
    from spaces.models import Space
    from spaces.services import aspace_create, space_create
    from spaces.signals import space_rows

    user = await sync_to_async(get_user_model().objects.create_user)(username="owner")
    fields = {"label": "A space", "system_prompt": system_prompt}
    expected = await sync_to_async(space_create)(owner=user, **fields)
    count = await server_round_trips(aspace_create(owner_id=user.pk, **fields), monkeypatch)
    # The root session rides in the space's statement: it adds no round trip of its own.
    space_rows.disconnect(root_session_rows)
    try:
        bare = await server_round_trips(aspace_create(owner_id=user.pk, label="Bare"),
                                        monkeypatch)
    finally:
        space_rows.connect(root_session_rows)
    assert count == bare == 1  # one statement: the space and its root session
    space = await Space.objects.exclude(pk=expected.pk).aget(label="A space")
    created = await sync_to_async(_space_rows)(str(space.id))
    assert created == await sync_to_async(_space_rows)(str(expected.id))
    root = await Session.objects.aget(space_id=space.id)
    assert root.created_at.tzinfo is not None and root.label == "A space"
    store = PgSpaceStore(str(space.id))
    assert await store.main_session_id() == str(root.id)
    assert (await store.load_turn_context(str(root.id))).system_prompt == (system_prompt or None)
    assert uuid.UUID(str(space.id))


@pytest.mark.parametrize("placement", ["flat", "tree"])
async def test_concurrent_forks_under_one_parent_cost_one_statement_each(pg: Env,
                                                                        placement) -> None:
    """They wait for the parent's row in turn instead of colliding on the sibling index and
    retrying (which multiplied the statements under load)."""
    await _empty_unit_of_work()
    pgpool.round_trips.reset()
    metas = await asyncio.gather(*(
        PgSpaceStore(pg.space_id).create_child(new_child(pg.root_id, placement))
        for _ in range(16)))
    assert sorted(m.index for m in metas) == list(range(16))
    assert pgpool.round_trips.count == 16
