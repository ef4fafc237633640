"""Environment parsing: defaults run as-is, bad values stop start-up naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from django.core.exceptions import ImproperlyConfigured

from stello_project.env import (
    database_from_url,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
)

ROOT = Path(__file__).resolve().parent.parent


def test_env_int_parses_and_defaults() -> None:
    assert env_int("N", 3, environ={}) == 3
    assert env_int("N", 3, environ={"N": " 7 "}) == 7


@pytest.mark.parametrize("raw", ["x", "1.5", "five"])
def test_env_int_rejects_non_integers_naming_the_variable(raw: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="STELLO_MAX_TOOL_ROUNDS"):
        env_int("STELLO_MAX_TOOL_ROUNDS", 5, environ={"STELLO_MAX_TOOL_ROUNDS": raw})


def test_env_int_enforces_the_minimum() -> None:
    with pytest.raises(ImproperlyConfigured, match="at least 0"):
        env_int("N", 1, minimum=0, environ={"N": "-1"})


def test_env_float_and_bool() -> None:
    assert env_float("F", 1.0, environ={"F": "2.5"}) == 2.5
    with pytest.raises(ImproperlyConfigured, match="F"):
        env_float("F", 1.0, environ={"F": "fast"})
    assert env_bool("B", False, environ={"B": "yes"}) is True
    assert env_bool("B", True, environ={"B": "0"}) is False
    with pytest.raises(ImproperlyConfigured, match="B must be a boolean"):
        env_bool("B", True, environ={"B": "maybe"})


def test_env_choice_and_list() -> None:
    assert env_choice("P", "offline", ("offline", "openai"), environ={"P": "OpenAI"}) == "openai"
    with pytest.raises(ImproperlyConfigured, match="P must be one of offline, openai"):
        env_choice("P", "offline", ("offline", "openai"), environ={"P": "gpt"})
    assert env_list("L", environ={"L": "a, b,,c"}) == ["a", "b", "c"]


def test_database_urls() -> None:
    pg = database_from_url("DATABASE_URL", "postgresql://u:p%40ss@db.example:6543/stello",
                           pool_min=1, pool_max=4)
    assert (pg["NAME"], pg["USER"], pg["PASSWORD"], pg["HOST"], pg["PORT"]) == (
        "stello", "u", "p@ss", "db.example", "6543")
    assert pg["OPTIONS"]["pool"]["max_size"] == 4 and pg["CONN_MAX_AGE"] == 0
    sqlite = database_from_url("DATABASE_URL", "sqlite:////tmp/x.db", pool_min=1, pool_max=1)
    assert sqlite["NAME"] == "/tmp/x.db"
    assert sqlite["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL"):
        database_from_url("DATABASE_URL", "mysql://x/y", pool_min=1, pool_max=1)


def test_a_postgresql_url_keeps_its_query_options_for_every_connection() -> None:
    from spaces import pgpool

    url = ("postgresql://u:p%40ss@db.example:6543/stello?sslmode=require&connect_timeout=4"
           "&options=-c%20statement_timeout%3D5000&application_name=stello")
    db = database_from_url("DATABASE_URL", url, pool_min=1, pool_max=4, pool_timeout=3)
    assert {k: db["OPTIONS"][k] for k in ("sslmode", "connect_timeout", "options")} == {
        "sslmode": "require", "connect_timeout": 4, "options": "-c statement_timeout=5000"}
    assert db["OPTIONS"]["pool"] == {"min_size": 1, "max_size": 4, "timeout": 3}
    assert db["CONN_HEALTH_CHECKS"] is True  # Django's pool tests a connection before use
    # The hot-path pool and the session-lock connections connect with the same parameters.
    info = psycopg.conninfo.conninfo_to_dict(pgpool.conninfo_of(db))
    assert info == {"dbname": "stello", "user": "u", "password": "p@ss", "host": "db.example",
                    "port": "6543", "sslmode": "require", "connect_timeout": "4",
                    "options": "-c statement_timeout=5000", "application_name": "stello"}


def test_a_bad_database_url_names_the_variable() -> None:
    for url in ("postgresql://host:notaport/db", "postgresql://host/"):
        with pytest.raises(ImproperlyConfigured, match="DATABASE_URL"):
            database_from_url("DATABASE_URL", url, pool_min=1, pool_max=1)


def _check(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("STELLO_", "DATABASE_"))}
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env={**clean, **env},
        capture_output=True, text=True, timeout=120,
    )


def test_the_defaults_run_as_is() -> None:
    result = _check()
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [("STELLO_LLM_PROVIDER", "gpt"), ("STELLO_MAX_TOOL_ROUNDS", "many"),
     ("STELLO_FORK_STRATEGY", "spiral"), ("STELLO_CONSOLIDATE_EVERY_N_TURNS", "-2"),
     ("STELLO_MAX_JSON_DEPTH", "1"), ("STELLO_MAX_JSON_DEPTH", "deep"),
     ("STELLO_PRICES", "{not json"), ("STELLO_PRICES", '{"m": {"input": -1}}'),
     ("STELLO_PRICES", '{"m": {"inputs": 1}}'), ("STELLO_PRICES", "[1]")],
)
def test_a_bad_value_stops_start_up_naming_the_variable(variable: str, value: str) -> None:
    result = _check(**{variable: value})
    assert result.returncode != 0
    assert variable in result.stderr


def test_the_price_table_parses_with_cached_defaulting_to_input(monkeypatch) -> None:
    from stello_project import settings as project_settings

    monkeypatch.setenv("STELLO_TEST_PRICES", '{"m": {"input": 2, "output": 8}, '
                                             '"*": {"input": 1, "output": 1, "cached": 0.5}}')
    assert project_settings._prices("STELLO_TEST_PRICES") == {
        "m": {"input": 2.0, "output": 8.0, "cached": 2.0},
        "*": {"input": 1.0, "output": 1.0, "cached": 0.5}}
    monkeypatch.delenv("STELLO_TEST_PRICES")
    assert project_settings._prices("STELLO_TEST_PRICES") == {}
