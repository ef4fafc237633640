"""The hand-written SQL of the PostgreSQL store names tables and columns: every one must exist in
the Django models (the one schema), so a model change that breaks the SQL fails here, on every
database, before any query runs."""

from __future__ import annotations

import re

import pytest

from sessions_app.accounting import quotas
from sessions_app.models import (
    CoreData,
    LLMCall,
    Record,
    Session,
    SessionData,
    SessionEvent,
    ToolApproval,
    TopologyNode,
    Turn,
    UsageDaily,
    UsageQuota,
)
from sessions_app.store import pg_approvals, postgres
from spaces.models import Space

MODELS = (Session, TopologyNode, Record, SessionData, CoreData, Space, LLMCall, UsageDaily,
          UsageQuota, Turn, SessionEvent, ToolApproval)
TABLES = {m._meta.db_table: {f.column for f in m._meta.concrete_fields} for m in MODELS}
ALIASES = {"s": "sessions", "n": "topology_nodes", "t": "topology_nodes", "r": "records",
           "d": "session_data", "c": "core_data", "sp": "spaces", "ud": "usage_daily",
           "q": "usage_quotas", "tu": "turns", "e": "session_events", "a": "tool_approvals"}
FUNCTIONS = {"unnest"}


def statements() -> dict[str, str]:
    found: dict[str, str] = {}
    every = {**vars(postgres), **{k: v for module in (quotas, pg_approvals)
                                  for k, v in vars(module).items() if k.startswith("SQL_")}}
    for name, value in every.items():
        if not name.startswith("SQL_"):
            continue
        if isinstance(value, dict):
            found.update({f"{name}[{key}]": sql for key, sql in value.items()})
        elif isinstance(value, tuple):
            found.update({f"{name}[{n}]": sql for n, sql in enumerate(value)})
        else:
            found[name] = value
    return found


def unknown_names(sql: str) -> list[str]:
    """The table and column names in `sql` that the models do not have."""
    problems: list[str] = []
    sql = re.sub(r"\bCYCLE\b.*?\bUSING \w+", "", sql)  # names a column of the recursive CTE
    ctes = set(re.findall(r"(\w+)(?:\s*\([^)]*\))?\s+AS\s*\(", sql))
    for table, alias in re.findall(
        r"\b(?:FROM|JOIN|INTO|UPDATE|USING)\s+(\w+)(?:\s+AS)?\s+(\w+)", sql
    ):
        if table in ctes or table in FUNCTIONS or table.isupper():  # a CTE, unnest, SET
            continue
        if table not in TABLES:
            problems.append(f"table {table}")
        elif alias in ALIASES and ALIASES[alias] != table:
            problems.append(f"alias {alias} for {table}")
    for alias, column in re.findall(r"\b(s|n|t|r|d|c|sp|tu|e)\.\"?(\w+)\"?", sql):
        if column not in TABLES[ALIASES[alias]]:
            problems.append(f"{ALIASES[alias]}.{column}")
    for table, columns in re.findall(r"INSERT INTO (\w+)(?: AS \w+)? \(([^)]*)\)", sql):
        for column in re.findall(r"\"?(\w+)\"?", columns):
            if column not in TABLES.get(table, ()):
                problems.append(f"{table}.{column}")
    for target, clause in re.findall(
        r"(?:UPDATE (\w+)|ON CONFLICT)[^;]*?\bSET\s(.*?)(?=\bFROM\b|\bWHERE\b|\bRETURNING\b|\)\s*$"
        r"|\)\s*SELECT\b|$)", sql, re.S,
    ):
        table = target or re.findall(r"INSERT INTO (\w+)", sql.split(clause)[0])[-1]
        for column in re.findall(r"(?:^|,)\s*\"?(\w+)\"?\s*=", clause.strip()):
            if column not in TABLES[table]:
                problems.append(f"{table}.{column} (SET)")
        for column in re.findall(r"EXCLUDED\.\"?(\w+)\"?", clause):
            if column not in TABLES[table]:
                problems.append(f"{table}.{column} (EXCLUDED)")
    for conflict in re.finditer(r"ON CONFLICT \(([^)]*)\)", sql):  # the INSERT before each
        table = re.findall(r"INSERT INTO (\w+)", sql[:conflict.start()])[-1]
        problems += [f"{table}.{c}" for c in re.findall(r"\w+", conflict[1])
                     if c not in TABLES[table]]
    return problems


@pytest.mark.parametrize("name", sorted(statements()))
def test_every_table_and_column_the_sql_names_exists(name: str) -> None:
    assert unknown_names(statements()[name]) == []


def test_the_check_sees_what_it_should() -> None:
    assert len(statements()) >= 21
    assert unknown_names("SELECT s.nope FROM sessions s") == ["sessions.nope"]
    assert unknown_names("SELECT x.id FROM session s") == ["table session"]
    assert unknown_names("SELECT 1 FROM records d") == ["alias d for records"]
    assert unknown_names("INSERT INTO records AS r (session_id, nope) VALUES (1, 2)") == [
        "records.nope"]
    assert unknown_names("UPDATE sessions AS s SET nope = 1 WHERE s.id = 1") == [
        "sessions.nope (SET)"]
    assert unknown_names(
        "INSERT INTO session_data AS d (session_id, key) VALUES (1, 2) "
        "ON CONFLICT (session_id, nope) DO UPDATE SET content = EXCLUDED.contents"
    ) == ["session_data.contents (EXCLUDED)", "session_data.nope"]
