"""Per-session serialisation (the engine's `SessionLocks` port).

`LocalSessionLocks` serialises within one process (one event loop): enough for the embedded
single-process mode. `PostgresSessionLocks` adds a PostgreSQL session-level advisory lock, so
operations on one session run one at a time across every server process sharing the database.

Advisory locks belong to a connection, not to a transaction, and one connection can hold many:
each process keeps a few lock connections (a session always maps to the same one) and takes the
lock of every session it works on through them, with `pg_try_advisory_lock`. The unlock is sent
without making the operation's answer wait for it. Each lock connection sends its tries and
unlocks in batches: ONE statement takes and releases every lock asked for while the previous
one was in flight (under load a lock costs a fraction of a round trip; alone, one). No
connection is held per operation, so the number of operations in flight is not bound by
connections, and no transaction stays open during an LLM call. A lock held by another process
is retried with a short backoff until the lock timeout (then SessionBusy). An operation may name
its first read (`first_read`): it goes in the same pipeline as the batch, after it, so the lock
and that read cost one round trip together. When a process dies,
PostgreSQL closes its connection and drops its locks at once. A lock connection that PostgreSQL
has closed (a restart) is replaced before its next use, or on the spot if it breaks under a
try; its locks are gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg

from spaces.pgpool import CountingConnection, is_lost

from ..engine.errors import ServiceUnavailable, SessionBusy
from ..engine.types import LockedRead, Prefetched

logger = logging.getLogger("stello.locks")

# Unlocks first, then tries (in their order): a session released and taken again in one batch
# ends up held (advisory locks count, so either order would).
_BATCH = """SELECT
 ARRAY(SELECT pg_advisory_unlock(hashtextextended(k, 0))
       FROM unnest(%(unlock)s::text[]) WITH ORDINALITY AS u(k, n) ORDER BY n),
 ARRAY(SELECT pg_try_advisory_lock(hashtextextended(k, 0))
       FROM unnest(%(lock)s::text[]) WITH ORDINALITY AS l(k, n) ORDER BY n)"""
_FIRST_RETRY, _MAX_RETRY = 0.002, 0.1  # seconds between tries while another process holds it
Taken = tuple[bool, Prefetched | None]  # a try's answer: taken, and its read if any
MAX_READS = 32  # first reads carried by one batch (see PostgresSessionLocks._batch)
LOCK_CONNECTIONS = 1  # per process: one line batches best (see PostgresSessionLocks)


class LocalSessionLocks:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    @asynccontextmanager
    async def hold(self, session_id: str, *, wait: bool = True,
                   first_read: Callable[[], LockedRead | None] | None = None,
                   ) -> AsyncIterator[None]:
        # (No statement of its own to send a first read with: the caller reads as usual.)
        lock = self._locks.setdefault(session_id, asyncio.Lock())
        self._users[session_id] = self._users.get(session_id, 0) + 1
        try:
            if (self.timeout <= 0 or not wait) and lock.locked():
                raise SessionBusy()  # a zero timeout means "only if free right now"
            if self._users[session_id] == 1:  # nobody holds it or waits: taken at once
                await lock.acquire()  # (wait_for would start a task for it)
            else:
                try:
                    await asyncio.wait_for(lock.acquire(),
                                           self.timeout if self.timeout > 0 else None)
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


class _Line:
    """One lock connection's next batch: the unlocks and the tries asked for meanwhile."""

    def __init__(self) -> None:
        self.unlocks: list[str] = []
        self.tries: list[tuple[str, asyncio.Future[Taken], LockedRead | None]] = []
        self.sender: asyncio.Task[None] | None = None


class PostgresSessionLocks:
    """The local lock first (waiters of one process queue in memory and cost no round trip),
    then the session's advisory lock on one of this process's lock connections."""

    def __init__(self, conninfo: str, timeout: float, *, connections: int = LOCK_CONNECTIONS,
                 connect_timeout: float = 5.0) -> None:
        self.timeout = timeout
        self._local = LocalSessionLocks(timeout)
        self._conninfo = conninfo
        # A connect_timeout of DATABASE_URL wins over the default.
        given = psycopg.conninfo.conninfo_to_dict(conninfo)
        self._connect_options = {} if "connect_timeout" in given else {
            "connect_timeout": connect_timeout}
        # A session always maps to the same connection (an advisory lock is released on the
        # connection that took it); each connection batches its statements (`_Line`).
        self._conns: list[psycopg.AsyncConnection | None] = [None] * connections
        self._lines = [_Line() for _ in range(connections)]
        self._connecting: asyncio.Lock | None = None
        self._cleanups: set[asyncio.Task[Any]] = set()

    @asynccontextmanager
    async def hold(self, session_id: str, *, wait: bool = True,
                   first_read: Callable[[], LockedRead | None] | None = None,
                   ) -> AsyncIterator[Prefetched | None]:
        started = time.monotonic()
        slot = hash(session_id) % len(self._conns)
        timeout = self.timeout if wait else 0.0  # not waiting: one try
        async with self._local.hold(session_id, wait=wait):
            # Asked only now: what the caller reads first may depend on what the previous
            # holder in this process did (its kept history, say).
            read = first_read() if first_read is not None else None
            delay = _FIRST_RETRY
            while True:
                taken, prefetched = await self._shielded(self._try_lock(slot, session_id, read),
                                                         slot, session_id)
                if taken:
                    break
                left = timeout - (time.monotonic() - started)
                if left <= 0:
                    raise SessionBusy()
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, _MAX_RETRY)
            try:
                yield prefetched
            finally:
                # Not awaited: the operation's answer need not wait for the unlock. The next
                # holder in this process takes the lock through the same connection, after
                # the unlock or (re-entrant) before it: either way it ends up holding it.
                self._unlock(slot, session_id)

    async def _shielded(self, tried: asyncio.Future[Taken], slot: int, session_id: str
                        ) -> Taken:
        """Wait for one try's answer; a caller cancelled meanwhile does not stop the try (it
        goes with its batch, whose other tries and unlocks must not be lost), and a lock it
        took for that caller is given back."""
        try:
            return await asyncio.shield(tried)
        except asyncio.CancelledError:
            def give_back(done: asyncio.Future[Taken]) -> None:
                if not done.cancelled() and done.exception() is None and done.result()[0]:
                    self._unlock(slot, session_id)

            tried.add_done_callback(give_back)
            raise

    def _keep(self, task: asyncio.Task[Any]) -> None:
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def settled(self) -> None:
        """Wait until every pending unlock has been sent and answered (tests, shutdown)."""
        while self._cleanups:
            await asyncio.gather(*list(self._cleanups), return_exceptions=True)

    @staticmethod
    def _usable(conn: psycopg.AsyncConnection | None) -> bool:
        """False for a connection the server has closed (e.g. after a PostgreSQL restart). The
        check needs an idle connection: one busy with another operation's query is checked
        by that query."""
        if conn is None or conn.closed or conn.broken:
            return False
        return conn.lock.locked() or not is_lost(conn)

    async def _connection(self, slot: int) -> psycopg.AsyncConnection:
        conn = self._conns[slot]
        if self._usable(conn):
            return conn
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            conn = self._conns[slot]
            if not self._usable(conn):
                if conn is not None:
                    logger.warning("session-lock connection lost: reconnecting (locks it held "
                                   "are gone)")
                    await conn.close()
                conn = self._conns[slot] = await CountingConnection.connect(
                    self._conninfo, autocommit=True, **self._connect_options
                )
            return conn

    def _try_lock(self, slot: int, session_id: str, read: LockedRead | None
                  ) -> asyncio.Future[Taken]:
        """Try the session's lock with the next batch of its connection (and make `read`
        right after it): whether it was taken, and the read's row if it was."""
        tried: asyncio.Future[Taken] = asyncio.get_running_loop().create_future()
        self._lines[slot].tries.append((session_id, tried, read))
        self._send_soon(slot)
        return tried

    def _unlock(self, slot: int, session_id: str) -> None:
        """Release the session's lock with the next batch of its connection."""
        self._lines[slot].unlocks.append(session_id)
        self._send_soon(slot)

    def _send_soon(self, slot: int) -> None:
        line = self._lines[slot]
        if line.sender is None or line.sender.done():
            line.sender = asyncio.ensure_future(self._send(slot))
            self._keep(line.sender)

    async def _send(self, slot: int) -> None:
        """Send the line's batches, one in flight at a time, until nothing is asked."""
        line = self._lines[slot]
        while line.unlocks or line.tries:
            unlocks, line.unlocks = line.unlocks, []
            tries, line.tries = line.tries, []
            try:
                try:
                    released, taken, reads = await self._batch(slot, unlocks, tries)
                except asyncio.CancelledError:  # shutdown: nobody waits for an answer any more
                    for _, tried, _ in [*tries, *line.tries]:
                        tried.cancel()
                    raise
                except psycopg.OperationalError:
                    conn = self._conns[slot]
                    if conn is not None and not (conn.closed or conn.broken):
                        raise
                    # The connection broke under the batch (e.g. PostgreSQL restarted): its
                    # locks are gone, and a new one holds nothing, so trying again on it
                    # cannot take a lock twice.
                    unlocks = []
                    released, taken, reads = await self._batch(slot, [], tries)
            except Exception as exc:
                if unlocks:
                    logger.warning("could not release the locks of sessions %s",
                                   ", ".join(unlocks), exc_info=True)
                error = (ServiceUnavailable("the session-lock database connection is "
                                            "unavailable") if isinstance(exc, psycopg.Error)
                         else exc)
                for _, tried, _ in tries:
                    if not tried.done():
                        tried.set_exception(error)
                continue
            for session_id, held in zip(unlocks, released, strict=True):
                if not held:
                    logger.warning("the lock of session %s was not held at release", session_id)
            for (_, tried, _), got, prefetched in zip(tries, taken, reads, strict=True):
                if not tried.done():
                    tried.set_result((bool(got), prefetched if got else None))

    async def _batch(self, slot: int, unlocks: list[str],
                     tries: list[tuple[str, Any, LockedRead | None]]
                     ) -> tuple[list[bool], list[bool], list[Prefetched | None]]:
        """(released, taken, the tries' reads), in the order asked; a read not made, or that
        failed, is None (its caller reads again and meets the error, if any, itself). Unlocks
        meant for a connection that has gone (and its locks with it) are not sent: they count
        as released. The reads go in the same pipeline, after the lock statement: one round
        trip, each read its own statement (so it sees the session as held)."""
        if not unlocks and not tries:
            return [], [], []
        held_by = self._conns[slot]
        conn = await self._connection(slot)
        gone = [True] * len(unlocks) if conn is not held_by else []
        if gone:
            if not tries:
                return gone, [], []
            unlocks = []
        batch = (_BATCH, {"unlock": unlocks, "lock": [s for s, _, _ in tries]})
        reads: list[Prefetched | None] = [None] * len(tries)
        # The first few tries' reads only: a batch's reads are sent, then decoded and handed
        # out in one step of the event loop each; in a burst of hundreds of tries that step
        # would hold up every other request of the process (the others read as usual).
        carried = [i for i, (_, _, read) in enumerate(tries) if read is not None][:MAX_READS]
        if not carried:
            row = await conn.fetch(*batch)
        else:
            row, *read_rows = await conn.fetch_pipelined(
                [batch, *((tries[i][2].statement, tries[i][2].params) for i in carried)])
            if isinstance(row, Exception):
                raise row
            for i, read_row in zip(carried, read_rows, strict=True):
                if not isinstance(read_row, Exception):
                    reads[i] = Prefetched(tries[i][2], read_row)
        assert row is not None
        return gone or list(row[0]), list(row[1]), reads

    async def aclose(self) -> None:
        await self.settled()
        for slot, conn in enumerate(self._conns):
            if conn is not None:
                await conn.close()
                self._conns[slot] = None


def idempotency_key_locks() -> None:
    """Register the locks of `spaces.idempotency` (one per Idempotency-Key): this module's, with
    two lock connections per process on PostgreSQL and the session-lock timeout."""
    from django.conf import settings

    from spaces import idempotency, pgpool

    def make() -> LocalSessionLocks | PostgresSessionLocks:
        conninfo = pgpool.conninfo()
        timeout = settings.STELLO["SESSION_LOCK_TIMEOUT_SECONDS"]
        return (PostgresSessionLocks(conninfo, timeout, connections=2) if conninfo
                else LocalSessionLocks(timeout))

    idempotency.key_locks.configure(make, busy=SessionBusy)
