"""Exactly-once mutating requests: the `Idempotency-Key` header (and the WebSocket `requestId`).

A mutating request (POST, PUT, PATCH, DELETE) that carries `Idempotency-Key` runs at most once
per user and key while its stored answer lives (`STELLO_IDEMPOTENCY_KEY_TTL_SECONDS`):

- the first one runs, and its answer (status, content type, body) is stored with a fingerprint of
  the request (SHA-256 of method, path with query string, and the raw body bytes);
- a repeat with the same fingerprint gets the stored answer without running anything, marked
  `Idempotent-Replayed: true`; with another fingerprint, 422 `IDEMPOTENCY_KEY_REUSED`;
- a repeat that arrives while the first still runs waits for it (the key's lock: a PostgreSQL
  advisory lock, so across every server process; an in-process lock on SQLite) and then gets
  the stored answer; past the lock timeout, 409 `IDEMPOTENCY_KEY_IN_USE` (nothing ran).

What is stored: 2xx answers and the 4xx answers that a retry would get again. Not stored, so the
key may be retried: 5xx (the server failed, or a dependency was down), 408, 409 (a busy session,
a state that may change), 425 and 429 (throttled). An operation that fails with an unexpected
error stores nothing either.

The operation runs in a task of its own under the key's lock: a client that hangs up does not
stop it, and its answer is stored for the retry (as REST turns already run to the end).

Requests without the header never reach this module: the only cost on the hot paths is one
dictionary lookup in the viewset's dispatch.

On PostgreSQL the records are read and written with hand-written SQL on the async pool (one
round trip each); elsewhere through the ORM (one worker-thread hop each). Expired records are
never replayed, and are deleted by `manage.py sweepidempotencykeys` and by a sweep that each
server process starts at most once an hour, after storing an answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from . import pgpool
from .errors import IdempotencyKeyInUse, IdempotencyKeyReused, InvalidIdempotencyKey

HEADER = "Idempotency-Key"
META_HEADER = "HTTP_IDEMPOTENCY_KEY"
REPLAYED_HEADER = "Idempotent-Replayed"
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_KEY_LENGTH = 255
_VALID_KEY = re.compile(r"[\x20-\x7e]{1,255}")
# Answers that a retry may see change: not stored, so the key can be retried.
_RETRYABLE_4XX = frozenset({408, 409, 425, 429})
SWEEP_INTERVAL_SECONDS = 3600.0


def parse_key(value: object) -> str:
    """The key, if it is 1 to 255 visible ASCII characters (spaces inside allowed, not only
    spaces); InvalidIdempotencyKey (400) otherwise."""
    if not isinstance(value, str) or not _VALID_KEY.fullmatch(value) or not value.strip():
        raise InvalidIdempotencyKey()
    return value


def fingerprint(method: str, path: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))  # unambiguous: no separator to forge
        digest.update(part)
    return digest.hexdigest()


def storable(status: int) -> bool:
    return 200 <= status < 300 or (400 <= status < 500 and status not in _RETRYABLE_4XX)


def ttl() -> timedelta:
    return timedelta(seconds=settings.STELLO["IDEMPOTENCY_KEY_TTL_SECONDS"])


@dataclass(frozen=True)
class Answer:
    """What a request answered, as stored and replayed."""

    status: int
    content_type: str
    body: bytes


@dataclass(frozen=True)
class Request:
    """What identifies one request under a key."""

    user_id: int
    key: str
    method: str
    path: str
    fingerprint: str


# -- the records ----------------------------------------------------------------------------------

_COLUMNS = ("user_id", "key", "fingerprint", "method", "path", "status", "content_type", "body",
            "created_at", "expires_at")
_SELECT = ("SELECT fingerprint, status, content_type, body FROM idempotency_records "
           "WHERE user_id = %s AND key = %s AND expires_at > %s")
_UPSERT = (f"INSERT INTO idempotency_records ({', '.join(_COLUMNS)}) "
           f"VALUES ({', '.join(['%s'] * len(_COLUMNS))}) "
           "ON CONFLICT (user_id, key) DO UPDATE SET "
           + ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS[2:]))
_SWEEP = "DELETE FROM idempotency_records WHERE expires_at <= %s"


class PgRecords:
    """Records on the async pool: one round trip per method."""

    async def aget(self, user_id: int, key: str, *, now: datetime) -> tuple[str, Answer] | None:
        row = await pgpool.fetchone(_SELECT, (user_id, key, now))
        if row is None:
            return None
        return row[0], Answer(row[1], row[2], bytes(row[3]))

    async def aput(self, request: Request, answer: Answer, *, now: datetime) -> None:
        async with pgpool.connection() as conn:
            await conn.execute(_UPSERT, (
                request.user_id, request.key, request.fingerprint, request.method, request.path,
                answer.status, answer.content_type, answer.body, now, now + ttl()))

    async def asweep(self, *, now: datetime) -> int:
        async with pgpool.connection() as conn:
            cursor = await conn.execute(_SWEEP, (now,))
            return cursor.rowcount


class OrmRecords:
    """Records through the ORM (the embedded SQLite default): one thread hop per method."""

    async def aget(self, user_id: int, key: str, *, now: datetime) -> tuple[str, Answer] | None:
        from .models import IdempotencyRecord

        row = await IdempotencyRecord.objects.filter(
            user_id=user_id, key=key, expires_at__gt=now,
        ).values_list("fingerprint", "status", "content_type", "body").afirst()
        if row is None:
            return None
        return row[0], Answer(row[1], row[2], bytes(row[3]))

    async def aput(self, request: Request, answer: Answer, *, now: datetime) -> None:
        from .models import IdempotencyRecord

        await IdempotencyRecord.objects.aupdate_or_create(
            user_id=request.user_id, key=request.key,
            defaults={"fingerprint": request.fingerprint, "method": request.method,
                      "path": request.path, "status": answer.status,
                      "content_type": answer.content_type, "body": answer.body,
                      "created_at": now, "expires_at": now + ttl()})

    async def asweep(self, *, now: datetime) -> int:
        from .models import IdempotencyRecord

        deleted, _ = await IdempotencyRecord.objects.filter(expires_at__lte=now).adelete()
        return deleted


def records() -> PgRecords | OrmRecords:
    return PgRecords() if pgpool.enabled() else OrmRecords()


def sweep_expired(now: datetime | None = None) -> int:
    """Delete every expired record (the management command; sync, through the ORM)."""
    from .models import IdempotencyRecord

    deleted, _ = IdempotencyRecord.objects.filter(expires_at__lte=now or timezone.now()).delete()
    return deleted


# -- the key locks --------------------------------------------------------------------------------

class KeyLocks:
    """One lock object per event loop, made on first use by the factory that `sessions_app`
    registers at start-up (its session-lock implementation: an advisory lock on PostgreSQL,
    through connections of its own; in-process elsewhere), keyed by user and idempotency key.
    Registered, not imported: `spaces` never depends on `sessions_app`. Only requests with a
    key ever build one."""

    def __init__(self) -> None:
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary())
        self._factory: Callable[[], Any] | None = None
        self.busy: type[Exception] = IdempotencyKeyInUse

    def configure(self, factory: Callable[[], Any], *, busy: type[Exception]) -> None:
        """`factory()` makes a lock object whose `hold(name)` is an async context manager that
        raises `busy` past its timeout; it may have `aclose()` and `settled()`."""
        self._factory = factory
        self.busy = busy

    def current(self) -> Any:
        loop = asyncio.get_running_loop()
        locks = self._locks.get(loop)
        if locks is None:
            if self._factory is None:
                raise RuntimeError("no key-lock factory: sessions_app registers it when ready")
            locks = self._locks[loop] = self._factory()
        return locks

    async def aclose_current(self) -> None:
        locks = self._locks.pop(asyncio.get_running_loop(), None)
        if locks is not None and hasattr(locks, "aclose"):
            await locks.aclose()


key_locks = KeyLocks()
# Operations whose caller left: kept referenced until they finish and store their answer.
_running: set[asyncio.Task[Any]] = set()
_next_sweep = 0.0
_sweeps: set[asyncio.Task[Any]] = set()


async def once(request: Request, run: Callable[[], Awaitable[Answer]]) -> tuple[Answer, bool]:
    """The answer to `request`, and whether it is a replay (see the module doc). `run` is
    called at most once per live key, and only when no answer is stored for it."""
    task = asyncio.get_running_loop().create_task(_once(request, run))
    _running.add(task)
    task.add_done_callback(_running.discard)
    return await asyncio.shield(task)  # a caller that is cancelled leaves the operation running


async def _once(request: Request, run: Callable[[], Awaitable[Answer]]) -> tuple[Answer, bool]:
    store = records()
    try:
        async with key_locks.current().hold(f"idempotency:{request.user_id}:{request.key}"):
            stored = await store.aget(request.user_id, request.key, now=timezone.now())
            if stored is not None:
                stored_fingerprint, answer = stored
                if stored_fingerprint != request.fingerprint:
                    raise IdempotencyKeyReused()
                return answer, True
            answer = await run()
            if storable(answer.status):
                await store.aput(request, answer, now=timezone.now())
                _maybe_sweep(store)
            return answer, False
    except key_locks.busy:
        raise IdempotencyKeyInUse() from None


def _maybe_sweep(store: PgRecords | OrmRecords) -> None:
    """Delete expired records in the background, at most once per SWEEP_INTERVAL_SECONDS per
    process (so a busy server keeps the table small without a scheduler)."""
    global _next_sweep
    now = time.monotonic()
    if now < _next_sweep:
        return
    _next_sweep = now + SWEEP_INTERVAL_SECONDS
    task = asyncio.get_running_loop().create_task(_sweep(store))
    _sweeps.add(task)
    task.add_done_callback(_sweeps.discard)


async def _sweep(store: PgRecords | OrmRecords) -> None:
    try:
        await store.asweep(now=timezone.now())
    except Exception:  # the next sweep will do; the request's answer is not concerned
        import logging

        logging.getLogger("stello.idempotency").warning("idempotency sweep failed",
                                                        exc_info=True)


async def settled() -> None:
    """Wait for this loop's operations and sweeps (tests, the end of a one-call loop)."""
    loop = asyncio.get_running_loop()
    while mine := [t for t in _sweeps | _running if t.get_loop() is loop]:
        await asyncio.gather(*mine, return_exceptions=True)
