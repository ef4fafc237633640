"""The async PostgreSQL pool of the hot paths (psycopg 3's `AsyncConnectionPool`).

Requests that must be fast, or that wait on an LLM or a session lock, talk to PostgreSQL through
this pool with hand-written SQL, on the event loop: no thread hand-off, and a connection is held
only for the few milliseconds of one unit of work (never while waiting on anything else). The
Django models and migrations stay the one schema; the ORM serves the admin, the commands and
the embedded SQLite default.

The pool is loop-bound, so the registry keeps one per event loop, created inside the running
loop on first use (a server has one loop; tests may have several). `round_trips` counts every
wait on the server (one per statement outside a pipeline, one per pipeline sync), so tests can
hold each hot path at its minimum.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import psycopg
import psycopg.types.json
from django.conf import settings
from psycopg_pool import AsyncConnectionPool, PoolTimeout, TooManyRequests

from .errors import ServiceUnavailable


class RoundTripCounter:
    """Process-wide count of waits on PostgreSQL through the hot-path pool (for tests)."""

    def __init__(self) -> None:
        self.count = 0

    def reset(self) -> None:
        self.count = 0


round_trips = RoundTripCounter()

# jsonb columns come back parsed by orjson (several times faster than the json module).
psycopg.types.json.set_json_loads(orjson.loads)


# Inside a pipeline, entering it and queueing statements send without waiting for the server;
# these are the steps that wait for its answers.
_PIPELINE_WAITS = frozenset({"_sync_gen", "_exit_gen", "_fetch_gen"})
_IDLE = psycopg.pq.TransactionStatus.IDLE


class CountingConnection(psycopg.AsyncConnection):
    """A psycopg connection that counts its round trips to the server (`round_trips`)."""

    async def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
        if self._pipeline is None or getattr(gen, "__name__", "") in _PIPELINE_WAITS:
            round_trips.count += 1
        return await super().wait(gen, *args, **kwargs)

    async def commit(self) -> None:
        # The pool "commits" every connection it takes back; an idle autocommit connection
        # sends nothing then, so neither wait nor count.
        if self.autocommit and self.info.transaction_status == _IDLE:
            return
        await super().commit()


class DatabaseUnavailable(ServiceUnavailable):
    """No connection could be had (pool exhausted, server down): 503. The client sees the
    generic message; `detail` (the driver's) is for the logs."""

    def __init__(self, detail: str) -> None:
        super().__init__()
        self.detail = detail


def conninfo() -> str | None:
    """The libpq connection string of the default database, or None when it is not PostgreSQL.
    (Asked on every hot-path request: the string is built once per set of settings.)"""
    db = settings.DATABASES["default"]
    if db["ENGINE"] != "django.db.backends.postgresql":
        return None
    # Under pytest-django, NAME already names the test database.
    return _conninfo(db["NAME"], db.get("HOST") or None,
                     str(db["PORT"]) if db.get("PORT") else None,
                     db.get("USER") or None, db.get("PASSWORD") or None)


@functools.lru_cache(maxsize=8)
def _conninfo(dbname: str, host: str | None, port: str | None, user: str | None,
              password: str | None) -> str:
    parts = {"dbname": dbname, "host": host, "port": port, "user": user, "password": password}
    return psycopg.conninfo.make_conninfo(**{k: v for k, v in parts.items() if v})


class PoolRegistry:
    """One pool per event loop (lazy, resettable for tests)."""

    def __init__(self) -> None:
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncConnectionPool] = (
            weakref.WeakKeyDictionary()
        )
        self._opening: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Future] = (
            weakref.WeakKeyDictionary()
        )

    async def get(self) -> AsyncConnectionPool:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is not None:
            return pool
        opening = self._opening.get(loop)
        if opening is None:
            opening = self._opening[loop] = loop.create_future()
            try:
                pool = await _open_pool()
            except BaseException as exc:
                opening.set_exception(exc)
                opening.exception()  # retrieved: waiters (if any) re-raise it themselves
                del self._opening[loop]
                raise
            self._pools[loop] = pool
            opening.set_result(pool)
            del self._opening[loop]
            return pool
        return await asyncio.shield(opening)

    async def aclose_current(self) -> None:
        pool = self._pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool.close()


async def _open_pool() -> AsyncConnectionPool:
    info = conninfo()
    if info is None:
        raise RuntimeError("the async pool needs PostgreSQL (DATABASE_URL)")
    stello = settings.STELLO
    pool = AsyncConnectionPool(
        info,
        min_size=stello["ASYNC_POOL_MIN_SIZE"],
        max_size=stello["ASYNC_POOL_MAX_SIZE"],
        timeout=stello["ASYNC_POOL_TIMEOUT_SECONDS"],
        max_waiting=stello["ASYNC_POOL_MAX_WAITING"],
        connection_class=CountingConnection,
        kwargs={"autocommit": True},
        open=False,
        name="stello-hot-path",
    )
    await pool.open(wait=False)
    return pool


pools = PoolRegistry()


@asynccontextmanager
async def connection() -> AsyncIterator[psycopg.AsyncConnection]:
    """A pooled autocommit connection for one unit of work. Pool exhaustion and an unreachable
    server raise `DatabaseUnavailable` (503), never a 500 or a long hang."""
    pool = await pools.get()
    try:
        async with pool.connection() as conn:
            yield conn
    except (PoolTimeout, TooManyRequests) as exc:
        raise DatabaseUnavailable(str(exc)) from exc
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(str(exc)) from exc
