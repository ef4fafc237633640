"""psycopg parses a statement's `%(name)s` placeholders on every execution unless the statement
is at most 4 KiB, in which case the parse is cached per process. A turn's save statement grew
past that once (usage rows and the event log joined it) and spent about a tenth of a turn's CPU
re-parsing itself: every statement the store sends must stay cacheable."""

from __future__ import annotations

from psycopg import _queries

from sessions_app.accounting import record
from sessions_app.store import pg_conversations, postgres


def statements() -> dict[str, str]:
    found = {}
    for module in (postgres, pg_conversations, record):
        for name, value in vars(module).items():
            if name.startswith("SQL_") and isinstance(value, str):
                found[f"{module.__name__}.{name}"] = value
            elif name.startswith("SQL_") and isinstance(value, dict):
                found.update({f"{module.__name__}.{name}[{k}]": v for k, v in value.items()})
    found.update({f"METERED[{k[:30]!r}]": v for k, v in postgres.METERED.items()})
    return found


def test_every_statement_of_the_store_is_short_enough_for_psycopgs_parse_cache() -> None:
    limit = _queries.MAX_CACHED_STATEMENT_LENGTH
    assert limit == 4096  # if psycopg changes it, re-read this test's reason
    found = statements()
    assert len(found) > 30
    too_long = {name: len(sql.encode()) for name, sql in found.items()
                if len(sql.encode()) > limit}
    assert too_long == {}
