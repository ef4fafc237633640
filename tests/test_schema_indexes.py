"""The schema's indexes, read back from the migrated database: none is redundant (every index
costs each insert a write), and the migration that dropped the redundant ones goes both ways."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True)

OUR_APPS = ("spaces", "sessions_app")
# What the two `redundant_fk_indexes` migrations dropped: a composite index leading with the
# same column serves each.
DROPPED = {
    "llm_calls": "llm_calls_user_id_915bf921",
    "usage_daily": "usage_daily_user_id_3a5e199e",
    "records": "records_session_id_7d32dbf0",
    "session_events": "session_events_session_id_16b69ca5",
    "turns": "turns_session_id_53e5d3cf",
    "session_data": "session_data_session_id_59c344d8",
    "core_data": "core_data_space_id_fa9027f7",
    "tool_approvals": "tool_approvals_turn_id_ffd4ee85",
    "spaces": "spaces_user_id_2e66fc2b",
    "idempotency_records": "idempotency_records_user_id_a1f45b27",
}
BEFORE = [("sessions_app", "0010_next_child_index"), ("spaces", "0002_idempotency_records")]
AFTER = [("sessions_app", "0011_redundant_fk_indexes"), ("spaces", "0003_redundant_fk_indexes")]


def our_tables() -> list[str]:
    return sorted({model._meta.db_table for app in OUR_APPS
                   for model in apps.get_app_config(app).get_models()})


def partial_indexes() -> set[str]:
    """Names of the indexes with a condition: they cover only some rows, so another index on
    the same leading column does not make them redundant (nor they it)."""
    names = set()
    for app in OUR_APPS:
        for model in apps.get_app_config(app).get_models():
            for item in [*model._meta.indexes, *model._meta.constraints]:
                if getattr(item, "condition", None) is not None:
                    names.add(item.name)
    return names


def indexes(table: str) -> dict[str, dict]:
    with connection.cursor() as cursor:
        found = connection.introspection.get_constraints(cursor, table)
    return {name: info for name, info in found.items() if info["index"] or info["unique"]}


def redundant_indexes() -> list[str]:
    """Plain (not unique, not partial) indexes whose columns begin another full index."""
    partial = partial_indexes()
    redundant = []
    for table in our_tables():
        found = {name: info for name, info in indexes(table).items()
                 if name not in partial and info["columns"]}
        for name, info in found.items():
            if info["unique"] or info["primary_key"]:
                continue
            columns = info["columns"]
            if any(other != name and len(more["columns"]) > len(columns)
                   and more["columns"][:len(columns)] == columns
                   for other, more in found.items()):
                redundant.append(f"{table}.{name} {columns}")
    return redundant


def test_no_index_is_served_by_another_that_leads_with_its_columns() -> None:
    assert redundant_indexes() == []


def test_the_migration_drops_the_redundant_indexes_and_puts_them_back(executor) -> None:
    executor.migrate(BEFORE)
    assert all(name in indexes(table) for table, name in DROPPED.items())
    assert len(redundant_indexes()) == len(DROPPED)

    MigrationExecutor(connection).migrate(AFTER)
    assert not any(name in indexes(table) for table, name in DROPPED.items())
    assert redundant_indexes() == []
