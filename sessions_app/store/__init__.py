"""The engine's storage port, implemented twice over one schema (the Django models):

- `postgres.PgSpaceStore`: hand-written SQL on the async psycopg pool, on the event loop; each
  method is one statement, one round trip (the hot path on PostgreSQL).
- `orm.DjangoSpaceStore`: the ORM in one worker-thread hop per unit of work (SQLite).

`space_store()` picks the one that fits the configured database. Both pass the same contract
suite (tests/store), with the engine tests' in-memory fake.
"""

from __future__ import annotations

from spaces import pgpool

from .common import TurnListener, message_json, session_tree_from_rows, storable
from .orm import DjangoSpaceStore, record_message, session_meta, unit_of_work
from .postgres import PgSpaceStore

__all__ = [
    "DjangoSpaceStore",
    "PgSpaceStore",
    "TurnListener",
    "message_json",
    "record_message",
    "session_meta",
    "session_tree_from_rows",
    "space_store",
    "storable",
    "unit_of_work",
]


def space_store(
    space_id: str, *, on_turn: TurnListener | None = None
) -> PgSpaceStore | DjangoSpaceStore:
    """The store of one space: SQL on the async pool on PostgreSQL, the ORM elsewhere."""
    if pgpool.enabled():
        return PgSpaceStore(space_id, on_turn=on_turn)
    return DjangoSpaceStore(space_id, on_turn=on_turn)
