"""The async PostgreSQL pool of the hot paths (psycopg 3's `AsyncConnectionPool`).

Requests that must be fast, or that wait on an LLM or a session lock, talk to PostgreSQL through
this pool with hand-written SQL, on the event loop: no thread hand-off, and a connection is held
only for the few milliseconds of one unit of work (never while waiting on anything else). The
Django models and migrations stay the one schema; the ORM serves the admin, the commands and
the embedded SQLite default.

Turns' saves and new spaces are committed in groups (`GroupCommit`, at the end): the writes
that arrive while one batch is in flight go together in the next, one round trip and one
commit for all.

The pool is loop-bound, so the registry keeps one per event loop, created inside the running
loop on first use (a server has one loop; tests may have several). `round_trips` counts every
wait on the server (one per statement outside a pipeline, one per pipeline sync), so tests can
hold each hot path at its minimum.

A PostgreSQL restart closes every pooled connection. A connection is checked before it is lent
(`is_lost`, without a round trip) and dead ones are replaced, and reads (`fetchone`,
`fetchall`) are retried once if their connection breaks while they run, so a restart fails no
request; while the server is down, `DatabaseUnavailable` becomes a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import select
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import psycopg
import psycopg.types.json
from django.conf import settings
from psycopg import pq
from psycopg._queries import PostgresQuery  # psycopg's own query conversion (pinned version)
from psycopg.adapt import Transformer
from psycopg.errors import error_from_result
from psycopg_pool import AsyncConnectionPool, PoolTimeout, TooManyRequests

from .errors import ServiceUnavailable

logger = logging.getLogger("stello.pgpool")


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
    """A psycopg connection that counts its round trips to the server (`round_trips`), and runs
    `execute` on one cursor of its own: psycopg builds a new cursor's adapters and transformer
    for every `execute`, about a third of a statement's CPU (callgrind: 195k to 133k
    instructions a statement). The cursor is the same object from one statement to the next, so
    read a statement's rows before the next statement (every caller here does); a pipeline,
    which answers statements later, gets a cursor per statement as usual."""

    _reused: psycopg.AsyncCursor[Any] | None = None
    _lean: LeanStatements | None = None

    async def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None,
                      binary: bool = False) -> psycopg.AsyncCursor[Any]:
        if self._pipeline is not None or binary:
            return await super().execute(query, params, prepare=prepare, binary=binary)
        cursor = self._reused
        if cursor is None or cursor.closed:
            cursor = self._reused = self.cursor()
        return await cursor.execute(query, params, prepare=prepare)

    async def fetch(self, query: str, params: Any, *, all_rows: bool = False) -> Any:
        """A statement's first row (None if none), or every row with `all_rows`: what
        `execute` then `fetchone` / `fetchall` give, by the hot path's lean route (see
        `LeanStatements`). Inside a pipeline, through `execute`."""
        if self._pipeline is not None:
            cursor = await self.execute(query, params)
            return await (cursor.fetchall() if all_rows else cursor.fetchone())
        async with self.lock:
            return await self._lean_statements().fetch(query, params, all_rows)

    async def fetch_pipelined(self, statements: list[tuple[str, Any]]) -> list[Any]:
        """The first row (None if none) of each statement, sent together in one pipeline: one
        round trip for all. They run in order in ONE transaction (PostgreSQL's implicit one,
        committed at the pipeline's sync), each seeing what the ones before it did (a read
        after a lock sees the state under the lock). A statement that failed gives its error
        instead of a row, and so does every one after it (PostgreSQL skips the rest of a
        pipeline after an error); the ones before it are rolled back (session-level effects,
        such as advisory locks, stay)."""
        async with self.lock:
            return await self._lean_statements().fetch_pipelined(statements)

    def _lean_statements(self) -> LeanStatements:
        lean = self._lean
        if lean is None:
            lean = self._lean = LeanStatements(self)
        return lean

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


_TUPLES_OK, _COMMAND_OK = pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK
_PIPELINE_SYNC, _PIPELINE_ABORTED = pq.ExecStatus.PIPELINE_SYNC, pq.ExecStatus.PIPELINE_ABORTED


class LeanStatements:
    """Statements of the hot paths on one connection, straight on libpq (`pgconn`), with
    psycopg's own query conversion, adapters and errors. A cursor's `execute` drives the same
    protocol through psycopg's generic layers (cursor state, prepared-statement manager,
    generator-driven waits): about 60 us of CPU more per statement here, and a turn runs three
    to four. Every statement is prepared on first use (with its first execution, in one round
    trip: psycopg prepares on the fifth and waits for the preparation); past
    `MAX_PREPARED` distinct statements on a connection, the rest run unprepared."""

    MAX_PREPARED = 64

    __slots__ = ("conn", "tx", "names")

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        self.conn = conn
        self.tx = Transformer(conn)
        self.names: dict[tuple[bytes, tuple[int, ...]], bytes] = {}

    async def fetch(self, query: str, params: Any, all_rows: bool) -> Any:
        query_ = PostgresQuery(self.tx)
        query_.convert(query, params)
        key = (query_.query, query_.types)
        name = self.names.get(key)
        pgconn = self.conn.pgconn
        round_trips.count += 1
        try:
            if name is not None:
                pgconn.send_query_prepared(name, query_.params, param_formats=query_.formats)
                result = await self._result()
            elif len(self.names) >= self.MAX_PREPARED:
                pgconn.send_query_params(query_.query, query_.params,
                                         param_formats=query_.formats,
                                         param_types=query_.types)
                result = await self._result()
            else:
                name = b"_stello_%d" % len(self.names)
                pgconn.enter_pipeline_mode()
                pgconn.send_prepare(name, query_.query, param_types=query_.types)
                pgconn.send_query_prepared(name, query_.params, param_formats=query_.formats)
                pgconn.pipeline_sync()
                prepared, result = await self._pipeline_results()  # (two commands)
                pgconn.exit_pipeline_mode()
                if prepared.status != _COMMAND_OK:  # and the execution was not run
                    result = prepared
                else:
                    self.names[key] = name
        except BaseException:
            # Cancelled or broken mid-statement: what is left on the wire is unknown, so the
            # connection goes (the pool replaces it); psycopg's cursor would cancel and drain.
            await self.conn.close()
            raise
        status = result.status
        if status != _TUPLES_OK:
            if status == _COMMAND_OK:
                return [] if all_rows else None
            raise error_from_result(result, encoding=self.tx.encoding)
        tx = self.tx
        tx.set_pgresult(result)
        if all_rows:
            return tx.load_rows(0, result.ntuples, tuple)
        return tx.load_row(0, tuple) if result.ntuples else None

    async def fetch_pipelined(self, statements: list[tuple[str, Any]]) -> list[Any]:
        """See `CountingConnection.fetch_pipelined`. Statements not prepared yet are prepared
        in the same pipeline (once, however often they occur in it)."""
        pgconn = self.conn.pgconn
        tx = self.tx
        sent: list[int | None] = []  # per result to come: the statement it answers (None:
        # a preparation)
        preparing: dict[bytes, tuple[bytes, tuple[int, ...]]] = {}
        round_trips.count += 1
        try:
            pgconn.enter_pipeline_mode()
            for index, (sql, params) in enumerate(statements):
                query_ = PostgresQuery(tx)
                query_.convert(sql, params)
                key = (query_.query, query_.types)
                name = self.names.get(key)
                if name is None and len(self.names) < self.MAX_PREPARED:
                    name = self.names[key] = b"_stello_%d" % len(self.names)
                    preparing[name] = key
                    pgconn.send_prepare(name, query_.query, param_types=query_.types)
                    sent.append(None)
                if name is not None:
                    pgconn.send_query_prepared(name, query_.params,
                                               param_formats=query_.formats)
                else:
                    pgconn.send_query_params(query_.query, query_.params,
                                             param_formats=query_.formats,
                                             param_types=query_.types)
                sent.append(index)
            pgconn.pipeline_sync()
            results = await self._pipeline_results()
            pgconn.exit_pipeline_mode()
        except BaseException:
            await self.conn.close()  # what is left on the wire is unknown (as in `fetch`)
            raise
        rows: list[Any] = [None] * len(statements)
        names = iter(preparing)
        failed_preparing: pq.abc.PGresult | None = None
        for answers, result in zip(sent, results, strict=True):
            if answers is None:  # a preparation: kept only if it worked
                name = next(names)
                if result.status != _COMMAND_OK:
                    self.names.pop(preparing[name], None)
                    failed_preparing = result  # the statement's own error
                continue
            if failed_preparing is not None:
                result, failed_preparing = failed_preparing, None
            status = result.status
            if status == _TUPLES_OK:
                tx.set_pgresult(result)
                rows[answers] = tx.load_row(0, tuple) if result.ntuples else None
            elif status != _COMMAND_OK:
                rows[answers] = (error_from_result(result, encoding=tx.encoding)
                                 if status != _PIPELINE_ABORTED
                                 else psycopg.errors.PipelineAborted("skipped after an error"))
        return rows

    async def _flushed(self) -> None:
        pgconn = self.conn.pgconn
        while pgconn.flush():
            await self._ready(writing=True)

    async def _ready(self, *, writing: bool = False) -> None:
        loop = asyncio.get_running_loop()
        fd = self.conn.pgconn.socket
        ready = loop.create_future()
        add, remove = ((loop.add_writer, loop.remove_writer) if writing
                       else (loop.add_reader, loop.remove_reader))
        add(fd, ready.set_result, None)
        try:
            await ready
        finally:
            remove(fd)

    async def _next(self) -> pq.abc.PGresult | None:
        """The next result, waiting for the server as needed (None ends a statement's)."""
        pgconn = self.conn.pgconn
        while pgconn.is_busy():
            await self._ready()
            pgconn.consume_input()
        return pgconn.get_result()

    async def _result(self) -> pq.abc.PGresult:
        """The last result of the one statement sent."""
        await self._flushed()
        result = None
        while (got := await self._next()) is not None:
            result = got
        assert result is not None
        return result

    async def _pipeline_results(self) -> list[pq.abc.PGresult]:
        """The result of every command sent in pipeline mode, up to the sync."""
        await self._flushed()
        results: list[pq.abc.PGresult] = []
        while True:
            got = await self._next()
            if got is None:
                continue  # the end of one statement's results
            if got.status == _PIPELINE_SYNC:  # not followed by a None
                return results
            results.append(got)


class DatabaseUnavailable(ServiceUnavailable):
    """No connection could be had (pool exhausted, server down): 503. The client sees the
    generic message; `detail` (the driver's) is for the logs."""

    def __init__(self, detail: str) -> None:
        super().__init__()
        self.detail = detail


class ConnectionLost(DatabaseUnavailable):
    """The connection broke while a statement ran (e.g. PostgreSQL restarted): a read may be
    retried once on another connection; a write's outcome is unknown."""


POSTGRESQL = "django.db.backends.postgresql"
# Keys of a Django OPTIONS dict that Django consumes itself; the others are connection
# parameters, as in `DatabaseWrapper.get_connection_params`.
_DJANGO_OPTIONS = frozenset({"pool", "assume_role", "isolation_level", "server_side_binding"})


def enabled() -> bool:
    """Whether the default database is PostgreSQL, so the hot paths use this pool (else they
    use the ORM on the embedded SQLite default)."""
    return conninfo() is not None


def conninfo() -> str | None:
    """The libpq connection string of the default database, or None when it is not PostgreSQL:
    the same parameters as Django's own connections (name, user, password, host, port and every
    connection option of DATABASE_URL, such as sslmode or connect_timeout), so the hot-path
    pool and the session-lock connections connect exactly like the ORM. Asked on every hot-path
    request: the string is built once per set of settings."""
    return conninfo_of(settings.DATABASES["default"])


def conninfo_of(db: dict[str, Any]) -> str | None:
    """The libpq connection string of a Django DATABASES entry (None unless PostgreSQL)."""
    if db["ENGINE"] != POSTGRESQL:
        return None
    options = tuple(sorted((k, str(v)) for k, v in (db.get("OPTIONS") or {}).items()
                           if k not in _DJANGO_OPTIONS))
    # Under pytest-django, NAME already names the test database.
    return _conninfo(db["NAME"], db.get("HOST") or None,
                     str(db["PORT"]) if db.get("PORT") else None,
                     db.get("USER") or None, db.get("PASSWORD") or None, options)


@functools.lru_cache(maxsize=8)
def _conninfo(dbname: str, host: str | None, port: str | None, user: str | None,
              password: str | None, options: tuple[tuple[str, str], ...] = ()) -> str:
    parts = {"dbname": dbname, "host": host, "port": port, "user": user, "password": password}
    return psycopg.conninfo.make_conninfo(
        **dict(options), **{k: v for k, v in parts.items() if v}
    )


def is_lost(conn: psycopg.AsyncConnection | psycopg.Connection) -> bool:
    """Whether an idle connection is unusable, without a round trip. An idle connection must
    have nothing to read: a server that restarts or ends the connection sends a FATAL message
    and closes it, which makes the socket readable while the connection waits in a pool.
    (psycopg_pool's own `check_connection` costs a round trip per checkout.)"""
    if conn.closed or conn.broken:
        return True
    poller = select.poll()  # poll, not select: a process may hold thousands of sockets
    poller.register(conn.fileno(), select.POLLIN)
    return bool(poller.poll(0))


class OrmPoolCheck:
    """Has Django's own pool test its idle connections (`ConnectionPool.check`, in a worker
    thread) once this pool has found connections closed by the server: they died with the same
    restart. Django's pool tests a connection before lending it too (CONN_HEALTH_CHECKS), but
    each dead one it meets there costs the request a growing back-off delay (1 s, 2 s, ...)."""

    def __init__(self) -> None:
        self._running: asyncio.Future | None = None

    def start(self) -> None:
        if self._running is not None and not self._running.done():
            return
        from django.db import connections

        pool = connections["default"].pool
        if pool is not None and not pool.closed:
            self._running = asyncio.get_running_loop().run_in_executor(None, self._check, pool)

    @staticmethod
    def _check(pool: Any) -> None:
        try:
            pool.check()
        except Exception:  # the database may be down again: the pool recovers by itself
            logger.warning("could not check the ORM's pooled connections", exc_info=True)


orm_pool_check = OrmPoolCheck()


class PoolRegistry:
    """One pool per event loop (lazy, resettable for tests)."""

    def __init__(self) -> None:
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncConnectionPool] = (
            weakref.WeakKeyDictionary()
        )
        self._group_commits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                                       GroupCommit] = weakref.WeakKeyDictionary()
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

    def group_commit(self) -> GroupCommit:
        """This loop's `GroupCommit` line."""
        loop = asyncio.get_running_loop()
        line = self._group_commits.get(loop)
        if line is None:
            line = self._group_commits[loop] = GroupCommit()
        return line

    async def aclose_current(self) -> None:
        loop = asyncio.get_running_loop()
        line = self._group_commits.pop(loop, None)
        if line is not None:  # its writes go first: their callers wait for them
            await line.settled()
        pool = self._pools.pop(loop, None)
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


async def _checkout(pool: AsyncConnectionPool) -> psycopg.AsyncConnection:
    """A live connection from the pool. Connections the server has closed meanwhile (all of
    them after a PostgreSQL restart) are discarded at once, and the pool opens new ones."""
    for _ in range(pool.max_size + 1):
        conn = await pool.getconn()
        if not is_lost(conn):
            return conn
        await conn.close()
        await pool.putconn(conn)  # a closed connection is dropped and replaced by the pool
        orm_pool_check.start()
    raise DatabaseUnavailable("every pooled connection was closed by the server")


@asynccontextmanager
async def connection() -> AsyncIterator[psycopg.AsyncConnection]:
    """A pooled autocommit connection for one unit of work. Pool exhaustion and an unreachable
    server raise `DatabaseUnavailable` (503), a connection that breaks meanwhile
    `ConnectionLost`: never a 500 or a long hang."""
    pool = await pools.get()
    try:
        conn = await _checkout(pool)
    except (PoolTimeout, TooManyRequests, psycopg.OperationalError) as exc:
        raise DatabaseUnavailable(str(exc)) from exc
    try:
        async with conn:  # as the pool's own `connection()` does
            yield conn
    except psycopg.OperationalError as exc:
        if conn.broken or conn.closed:
            raise ConnectionLost(str(exc)) from exc
        raise DatabaseUnavailable(str(exc)) from exc
    finally:
        await pool.putconn(conn)


async def fetchone(sql: str, params: Any = None) -> tuple[Any, ...] | None:
    """The first row of a read-only statement, retried once on a lost connection (running a
    read again does no harm), so a server restarting under it fails no request."""
    try:
        return await _fetch(sql, params, all_rows=False)
    except ConnectionLost:
        return await _fetch(sql, params, all_rows=False)


async def fetchall(sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Every row of a read-only statement; retried once on a lost connection."""
    try:
        return await _fetch(sql, params, all_rows=True)
    except ConnectionLost:
        return await _fetch(sql, params, all_rows=True)


async def _fetch(sql: str, params: Any, *, all_rows: bool) -> Any:
    async with connection() as conn:
        return await conn.fetch(sql, params, all_rows=all_rows)


# -- group commit ---------------------------------------------------------------------------

GROUP_MAX_STATEMENTS = 32  # per transaction: a burst of hundreds is several batches
# How long a batch may wait for a lock before its statements go alone (see `GroupCommit`).
GROUP_LOCK_TIMEOUT = "50ms"
_GROUP_LOCK_TIMEOUT = ("SELECT set_config('lock_timeout', %(timeout)s, true)",
                       {"timeout": GROUP_LOCK_TIMEOUT})

_Write = tuple[str, Any, "asyncio.Future[Any]"]


class GroupCommit:
    """Write statements committed together: the ones that arrive while a batch is in flight
    wait for it and then go as the next batch, in one pipeline and ONE transaction, so a batch
    costs one round trip and one commit (one WAL flush) however many statements it holds. A
    turn's `save_call` is most of PostgreSQL's work per turn, and its commit a good part of
    that; under load the batches grow and a turn's share of both shrinks. Alone, a write goes
    at once, as a batch of one. One batch is in flight at a time, on a pooled connection held
    for its round trip only.

    Each caller still gets its own statement's outcome, as if it had run alone. A batch that
    fails in part is rolled back whole (a transaction), and each of its statements then runs
    alone, on a pooled connection of its own, in its own transaction: only the failing one
    raises. A batch must not make one write wait for another's lock, nor stall the line behind
    a lock: it waits at most `GROUP_LOCK_TIMEOUT` for any lock and then goes the same way (a
    statement alone waits as long as it takes, as it always did). That also keeps a batch,
    which holds the row locks of all its statements until it commits, from closing a cycle with
    a transaction over several sessions (deleting a space) that a statement alone could not.

    For statements that each stand alone (no write depends on another's) and have no effect
    outside the database. A caller cancelled before its batch was sent takes its statement back
    (it never runs); once it was sent, the caller waits for its outcome before the
    cancellation goes on, so whatever the caller does next (a cancelled turn discards its
    records) comes after it."""

    def __init__(self) -> None:
        self._waiting: list[_Write] = []
        self._sender: asyncio.Task[None] | None = None
        self._alone: set[asyncio.Task[None]] = set()

    async def fetch(self, sql: str, params: Any) -> Any:
        """The first row of `sql` (None if none), committed; `DatabaseUnavailable` (503) when
        no connection could be had, `ConnectionLost` when it broke meanwhile (the outcome is
        unknown), a statement's own error as psycopg raises it."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        write = (sql, params, done)
        self._waiting.append(write)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.ensure_future(self._send())
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            if write in self._waiting:  # not sent: it never runs
                self._waiting.remove(write)
                raise
            done.add_done_callback(_retrieved)  # cancelled again, nobody would read its error
            with contextlib.suppress(Exception):  # sent: its outcome first
                await asyncio.shield(done)
            raise

    async def settled(self) -> None:
        """Wait until every statement handed in has its outcome (shutdown, tests)."""
        while (self._sender is not None and not self._sender.done()) or self._alone:
            await asyncio.wait([t for t in (self._sender, *self._alone) if t is not None])

    async def _send(self) -> None:
        while self._waiting:
            batch = self._waiting[:GROUP_MAX_STATEMENTS]
            del self._waiting[:GROUP_MAX_STATEMENTS]
            try:
                async with connection() as conn:
                    rows = await conn.fetch_pipelined(
                        [_GROUP_LOCK_TIMEOUT, *((sql, params) for sql, params, _ in batch)])
            except DatabaseUnavailable as exc:  # no connection, or it broke: outcomes unknown
                for _, _, done in batch:
                    _settle(done, error=type(exc)(exc.detail))  # one each: raised in each caller
                continue
            except Exception as exc:  # pragma: no cover - a bug: every caller hears of it
                for _, _, done in batch:
                    _settle(done, error=exc)
                continue
            if any(isinstance(row, Exception) for row in rows):  # rolled back: one by one
                for write in batch:
                    task = asyncio.ensure_future(self._run_alone(write))
                    self._alone.add(task)
                    task.add_done_callback(self._alone.discard)
                continue
            for (_, _, done), row in zip(batch, rows[1:], strict=True):
                _settle(done, row)

    @staticmethod
    async def _run_alone(write: _Write) -> None:
        sql, params, done = write
        try:
            row = await _fetch(sql, params, all_rows=False)
        except Exception as exc:
            _settle(done, error=exc)
        else:
            _settle(done, row)


def _retrieved(done: asyncio.Future[Any]) -> None:
    if not done.cancelled():
        done.exception()  # read: asyncio does not log it as never retrieved


def _settle(done: asyncio.Future[Any], row: Any = None, *,
            error: BaseException | None = None) -> None:
    if done.done():  # settled once (callers never cancel it: they wait under a shield)
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(row)


async def group_commit(sql: str, params: Any) -> Any:
    """The first row of the write statement `sql`, committed with the writes of other requests
    that wait meanwhile (see `GroupCommit`). Not retried: a lost connection leaves its outcome
    unknown."""
    return await pools.group_commit().fetch(sql, params)
