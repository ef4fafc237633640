"""One environment per store implementation, for the contract suite.

`env` is parametrized over the three stores: the engine tests' InMemoryStore, DjangoSpaceStore
on whatever database the run uses, and PgSpaceStore (PostgreSQL only). Each gets a fresh space
with a main session, a system prompt and a consolidate prompt, plus a second space whose
sessions the first store must not see.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from spaces import pgpool
from tests.engine.fakes import InMemoryStore

SYSTEM_PROMPT = "You are the space."
CONSOLIDATE_PROMPT = "Consolidate carefully."
CORE = {"user.name": "Ada", "prefs": {"lang": "en"}, "empty": None}

DATABASE_STORES = ["orm", pytest.param("pg", marks=pytest.mark.postgres)]
STORES = ["memory", *DATABASE_STORES]


@dataclass
class Env:
    kind: str
    store: Any
    space_id: str
    root_id: str
    other_space_session: str  # a session of another space (the fake: one it does not know)
    turns: list[tuple[str, str, int]] = field(default_factory=list)
    make_store: Callable[[], Any] | None = None  # another store instance on the same space
    set_core: Callable[[dict[str, Any]], Awaitable[None]] | None = None

    @property
    def db(self) -> bool:
        return self.kind != "memory"


def _make_space(label: str, **prompts: Any):
    from django.contrib.auth import get_user_model

    from sessions_app.models import Session
    from spaces.services import space_create

    user = get_user_model().objects.create_user(username=f"u-{uuid.uuid4().hex[:12]}")
    space = space_create(owner=user, label=label, **prompts)
    root = Session.objects.get(space=space, role="main")
    return str(space.id), str(root.id)


def _set_core(space_id: str, values: dict[str, Any]) -> None:
    from sessions_app.models import CoreData

    for path, value in values.items():
        CoreData.objects.create(space_id=space_id, path=path, value=value)


async def make_env(kind: str) -> Env:
    turns: list[tuple[str, str, int]] = []

    def on_turn(space_id: str, session_id: str, turn_count: int) -> None:
        turns.append((space_id, session_id, turn_count))

    if kind == "memory":
        store = InMemoryStore(space_id="space-1", system_prompt=SYSTEM_PROMPT,
                              consolidate_prompt=CONSOLIDATE_PROMPT, on_turn=on_turn)

        async def set_core(values: dict[str, Any]) -> None:
            store.core.update(values)

        return Env(kind, store, store.space_id, store.root_id, "s999", turns,
                   make_store=lambda: store, set_core=set_core)

    from sessions_app.store import DjangoSpaceStore, PgSpaceStore

    space_id, root_id = await sync_to_async(_make_space)(
        "Space", system_prompt=SYSTEM_PROMPT, consolidate_prompt=CONSOLIDATE_PROMPT
    )
    _, other_root = await sync_to_async(_make_space)("Other")
    cls = PgSpaceStore if kind == "pg" else DjangoSpaceStore

    async def set_core_db(values: dict[str, Any]) -> None:
        await sync_to_async(_set_core)(space_id, values)

    return Env(kind, cls(space_id, on_turn=on_turn), space_id, root_id, other_root, turns,
               make_store=lambda: cls(space_id), set_core=set_core_db)


@pytest.fixture(params=STORES)
async def env(request) -> Env:
    yield await make_env(request.param)
    await pgpool.pools.aclose_current()


@pytest.fixture(params=DATABASE_STORES)
async def db_env(request) -> Env:
    """The stores on a database only (for what is not part of the engine port)."""
    yield await make_env(request.param)
    await pgpool.pools.aclose_current()
