"""Environment-variable parsers for settings. Each fails loudly, naming the variable."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from urllib.parse import unquote, urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}


@contextmanager
def configuration_errors_in_one_line() -> Iterator[None]:
    """For the entry points (manage.py, the ASGI app): a bad setting ends the process with one
    line naming the variable, instead of a long traceback through Django's start-up."""
    try:
        yield
    except ImproperlyConfigured as exc:
        raise SystemExit(f"Configuration error: {exc}") from None


_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str | None = None, environ: Mapping[str, str] = os.environ):
    value = environ.get(name)
    return default if value is None or value == "" else value


def env_int(name: str, default: int, *, minimum: int | None = None,
            environ: Mapping[str, str] = os.environ) -> int:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None,
              environ: Mapping[str, str] = os.environ) -> float:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def env_bool(name: str, default: bool, environ: Mapping[str, str] = os.environ) -> bool:
    raw = environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false/1/0), got {raw!r}")


def env_choice(name: str, default: str, choices: Sequence[str],
               environ: Mapping[str, str] = os.environ) -> str:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}; got {raw!r}")
    return value


def env_list(name: str, default: Sequence[str] = (), *, separator: str = ",",
             environ: Mapping[str, str] = os.environ) -> list[str]:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return list(default)
    return [item.strip() for item in raw.split(separator) if item.strip()]


def database_from_url(name: str, url: str, *, pool_min: int, pool_max: int,
                      pool_timeout: float = 30.0) -> dict:
    """A Django DATABASES entry from a postgres:// (psycopg 3 pool) or sqlite:// URL. The query
    string of a PostgreSQL URL (`sslmode`, `connect_timeout`, `options`, ...) becomes libpq
    connection parameters, which every connection of the process uses (see `spaces.pgpool`)."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        path = unquote(urlsplit(url).path)
        return sqlite_database(path[1:] if path.startswith("//") else path or "db.sqlite3")
    if scheme not in ("postgres", "postgresql"):
        raise ImproperlyConfigured(f"{name} must be a postgresql:// or sqlite:// URL, got {url!r}")
    try:
        db = dj_database_url.parse(url, conn_max_age=0, conn_health_checks=True)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} is not a valid URL: {exc}") from None
    if not db["NAME"]:
        raise ImproperlyConfigured(f"{name} must name a database, e.g. postgresql://host/db")
    db["PORT"] = str(db["PORT"] or "")
    # Django's psycopg pool; CONN_MAX_AGE must stay 0 with it (and in async code).
    # CONN_HEALTH_CHECKS makes the pool test a connection before lending it, so connections
    # left dead by a PostgreSQL restart are replaced instead of failing one request each.
    db["OPTIONS"] = {**db.get("OPTIONS", {}),
                     "pool": {"min_size": pool_min, "max_size": pool_max,
                              "timeout": pool_timeout}}
    return db


def sqlite_database(path: str) -> dict:
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": path,
        "OPTIONS": {
            # Writers queue instead of failing with "database is locked".
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }
