"""Per-session serialisation (the engine's `SessionLocks` port).

`LocalSessionLocks` serialises within one process (one event loop): enough for the embedded
single-process mode. `PostgresSessionLocks` adds a PostgreSQL session-level advisory lock on a
dedicated autocommit connection, so operations on one session run one at a time across every
server process sharing the database, without holding a transaction open during the LLM call.
If a process dies, PostgreSQL drops its connection and so its locks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..engine.errors import SessionBusy


class LocalSessionLocks:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    @asynccontextmanager
    async def hold(self, session_id: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(session_id, asyncio.Lock())
        self._users[session_id] = self._users.get(session_id, 0) + 1
        try:
            if self.timeout <= 0 and lock.locked():
                raise SessionBusy()  # a zero timeout means "only if free right now"
            try:
                await asyncio.wait_for(lock.acquire(), self.timeout if self.timeout > 0 else None)
            except TimeoutError:
                raise SessionBusy() from None
            try:
                yield
            finally:
                lock.release()
        finally:
            self._users[session_id] -= 1
            if not self._users[session_id]:  # forget idle sessions: the dict stays small
                del self._users[session_id]
                del self._locks[session_id]


class PostgresSessionLocks:
    """Local lock first (waiters of one process queue in memory and use one connection),
    then `pg_advisory_lock` with `lock_timeout` for the time that is left."""

    def __init__(self, conninfo: str, timeout: float, *, max_connections: int = 20) -> None:
        self.timeout = timeout
        self._local = LocalSessionLocks(timeout)
        self._conninfo = conninfo
        self._max = max_connections
        self._pool = None

    async def _connections(self):
        if self._pool is None:
            from psycopg_pool import AsyncConnectionPool

            self._pool = AsyncConnectionPool(
                self._conninfo, min_size=0, max_size=self._max, open=False,
                kwargs={"autocommit": True},
            )
            await self._pool.open()
        return self._pool

    @asynccontextmanager
    async def hold(self, session_id: str) -> AsyncIterator[None]:
        started = time.monotonic()
        async with self._local.hold(session_id):
            pool = await self._connections()
            left = max(self.timeout - (time.monotonic() - started), 0.001)
            try:
                conn_cm = pool.connection(timeout=left)
                conn = await conn_cm.__aenter__()
            except Exception as exc:  # pool exhausted for the whole wait
                raise SessionBusy() from exc
            try:
                await self._lock(conn, session_id, left)
                try:
                    yield
                finally:
                    await self._unlock(conn, session_id)
            finally:
                await conn_cm.__aexit__(None, None, None)

    @staticmethod
    async def _lock(conn, session_id: str, wait_seconds: float) -> None:
        import psycopg

        milliseconds = max(int(wait_seconds * 1000), 1)
        try:
            # set_config(..., false) lasts for the connection; reset it on every use.
            await conn.execute("SELECT set_config('lock_timeout', %s, false)",
                               (f"{milliseconds}ms",))
            await conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (session_id,))
        except psycopg.errors.LockNotAvailable:
            raise SessionBusy() from None
        except BaseException:
            # Interrupted (cancelled, connection lost): the lock may or may not be ours now.
            # Closing the connection is the one way to be sure it is not left held.
            await conn.close()
            raise

    @staticmethod
    async def _unlock(conn, session_id: str) -> None:
        try:
            await conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))",
                               (session_id,))
        except BaseException:
            await conn.close()  # closing releases every advisory lock of the connection
            raise

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
