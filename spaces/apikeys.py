"""The API-key service: create, revoke, rename and look up keys, plus this process's auth cache.

A key reads `stello_<prefix>_<secret>`. The prefix (8 alphanumerics) is public: it names the key
in listings, the admin and `revokeapikey`. The secret (43 alphanumerics, about 256 bits) exists
only in the value returned by `apikey_create`: the database keeps the SHA-256 hex digest of the
whole key and the prefix, never the key. Lookups go by hash, so there is no string comparison
of secrets to time.

`last_used_at` is bookkeeping, not an audit log: it moves at most about once a minute per key
(`LAST_USED_RESOLUTION`), with one conditional `UPDATE ... WHERE id = ...`.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import string
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Generic, TypeAlias, TypeVar

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .models import ApiKey

KEY_START = "stello_"
PREFIX_LENGTH = 8
SECRET_LENGTH = 43  # 43 * log2(62) ~ 256 bits, like secrets.token_urlsafe(32)
MAX_KEY_LENGTH = 256  # anything longer is not one of ours: rejected without hashing or a query
LAST_USED_RESOLUTION = timedelta(seconds=60)
AUTH_CACHE_MAX_ENTRIES = 1024

_ALPHANUMERICS = string.ascii_letters + string.digits

Credentials: TypeAlias = tuple[AbstractBaseUser, ApiKey]
V = TypeVar("V")


def _random_alphanumerics(length: int) -> str:
    return "".join(secrets.choice(_ALPHANUMERICS) for _ in range(length))


def hash_key(raw_key: str) -> str:
    """The stored form of a key: SHA-256 hex of its UTF-8 bytes."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


def looks_like_key(raw_key: str) -> bool:
    """Cheap shape check, so garbage is turned away without a query."""
    return raw_key.startswith(KEY_START) and len(raw_key) <= MAX_KEY_LENGTH


# --- Write paths --------------------------------------------------------------------------------


@transaction.atomic
def apikey_create(*, user: AbstractBaseUser, name: str = "") -> tuple[ApiKey, str]:
    """Create a key for `user`. Returns the row and the plaintext key: the only time it exists."""
    prefix = _random_alphanumerics(PREFIX_LENGTH)
    while ApiKey.objects.filter(prefix=prefix).exists():  # 62**8 prefixes: practically never
        prefix = _random_alphanumerics(PREFIX_LENGTH)
    raw_key = f"{KEY_START}{prefix}_{_random_alphanumerics(SECRET_LENGTH)}"
    apikey = ApiKey(user=user, name=name, prefix=prefix, key_hash=hash_key(raw_key))
    apikey.full_clean()
    apikey.save(force_insert=True)
    return apikey, raw_key


@transaction.atomic
def apikey_revoke(*, prefix: str) -> ApiKey:
    """Revoke the key with this prefix (idempotent). Raises ApiKey.DoesNotExist if unknown.

    This process stops accepting the key at once; other processes stop within
    STELLO["AUTH_CACHE_SECONDS"] (their auth cache entries expire).
    """
    apikey = ApiKey.objects.select_for_update().get(prefix=prefix)
    if not apikey.revoked:
        apikey.revoked = True
        apikey.full_clean()
        apikey.save(update_fields=["revoked"])
    key_hash = apikey.key_hash
    auth_cache.discard(key_hash)
    # Again after commit: a concurrent request may have re-cached the row as last committed
    # (not yet revoked) in between.
    transaction.on_commit(lambda: auth_cache.discard(key_hash))
    return apikey


@transaction.atomic
def apikey_rename(*, apikey: ApiKey, name: str) -> ApiKey:
    """Change a key's display name (the only editable field of a key)."""
    apikey.name = name
    apikey.full_clean()
    apikey.save(update_fields=["name"])
    return apikey


def apikey_touch(*, apikey: ApiKey, now: datetime | None = None) -> bool:
    """Record a use of `apikey` if its last recorded use is older than LAST_USED_RESOLUTION.

    One conditional UPDATE (so concurrent processes do not pile up writes) and only when due
    according to `apikey.last_used_at`; the in-memory value is moved forward either way.
    Returns whether a query was made.
    """
    now = now or timezone.now()
    if not _touch_due(apikey, now):
        return False
    _touch_queryset(apikey, now).update(last_used_at=now)
    apikey.last_used_at = now
    return True


async def apikey_atouch(*, apikey: ApiKey, now: datetime | None = None) -> bool:
    """Async twin of `apikey_touch`: no thread hop at all unless the UPDATE is due."""
    from . import pgpool

    now = now or timezone.now()
    if not _touch_due(apikey, now):
        return False
    if not pgpool.enabled():
        await _touch_queryset(apikey, now).aupdate(last_used_at=now)  # one hop (SQLite)
    else:
        async with pgpool.connection() as conn:
            await conn.execute(
                f"UPDATE {ApiKey._meta.db_table} SET last_used_at = %(now)s WHERE id = %(id)s "
                "AND (last_used_at IS NULL OR last_used_at <= %(stale)s)",
                {"now": now, "id": apikey.pk, "stale": now - LAST_USED_RESOLUTION},
            )
    apikey.last_used_at = now
    return True


def _touch_due(apikey: ApiKey, now: datetime) -> bool:
    return apikey.last_used_at is None or now - apikey.last_used_at >= LAST_USED_RESOLUTION


def _touch_queryset(apikey: ApiKey, now: datetime):
    stale = Q(last_used_at__isnull=True) | Q(last_used_at__lte=now - LAST_USED_RESOLUTION)
    return ApiKey.objects.filter(stale, pk=apikey.pk)


# --- Read path ----------------------------------------------------------------------------------


def apikey_authenticate(raw_key: str) -> Credentials | None:
    """The (user, key) a raw key belongs to, or None if it is unknown, revoked, or its user is
    inactive. Always reads the database (the cached path is `spaces.auth.authenticate_key`),
    and records the use (see `apikey_touch`)."""
    if not looks_like_key(raw_key):
        return None
    apikey = (
        ApiKey.objects.select_related("user")
        .filter(key_hash=hash_key(raw_key), revoked=False, user__is_active=True)
        .first()
    )
    if apikey is None:
        return None
    apikey_touch(apikey=apikey)
    return apikey.user, apikey


_KEY_COLUMNS = ("id", "name", "prefix", "key_hash", "created_at", "last_used_at", "revoked")
_USER_COLUMNS = ("id", "username", "is_active", "is_staff", "is_superuser")


@functools.cache
def _lookup_sql() -> str:
    user_table = get_user_model()._meta.db_table
    keys = ", ".join(f"k.{c} AS k_{c}" for c in _KEY_COLUMNS)
    users = ", ".join(f"u.{c} AS u_{c}" for c in _USER_COLUMNS)
    # One statement: the key with its user, and the last-used UPDATE when it is due.
    return (
        f"WITH found AS (SELECT {keys}, {users} FROM {ApiKey._meta.db_table} k "
        f"JOIN {user_table} u ON u.id = k.user_id "
        "WHERE k.key_hash = %(hash)s AND NOT k.revoked AND u.is_active), "
        f"touched AS (UPDATE {ApiKey._meta.db_table} SET last_used_at = %(now)s FROM found "
        f"WHERE {ApiKey._meta.db_table}.id = found.k_id AND (found.k_last_used_at IS NULL "
        "OR found.k_last_used_at <= %(stale)s) RETURNING 1) "
        "SELECT *, (SELECT count(*) FROM touched) FROM found"
    )


async def apikey_aauthenticate(raw_key: str) -> Credentials | None:
    """Async twin of `apikey_authenticate`: on PostgreSQL one round trip on the event loop
    (lookup and the due last-used UPDATE in one statement); on the embedded SQLite default one
    thread hop."""
    from . import pgpool

    if not looks_like_key(raw_key):
        return None
    if not pgpool.enabled():
        from asgiref.sync import sync_to_async

        return await sync_to_async(apikey_authenticate)(raw_key)
    now = timezone.now()
    params = {"hash": hash_key(raw_key), "now": now, "stale": now - LAST_USED_RESOLUTION}
    # Retried once on a lost connection: its last-used update is idempotent.
    row = await pgpool.fetchone(_lookup_sql(), params)
    if row is None:
        return None
    key_values = dict(zip(_KEY_COLUMNS, row[: len(_KEY_COLUMNS)], strict=True))
    user_values = dict(zip(_USER_COLUMNS, row[len(_KEY_COLUMNS):-1], strict=True))
    user = get_user_model()(**user_values)
    apikey = ApiKey(user_id=user.pk, **key_values)
    apikey.user = user
    for instance in (user, apikey):
        instance._state.adding, instance._state.db = False, "default"
    if row[-1]:
        apikey.last_used_at = now
    return user, apikey


# --- This process's auth cache ------------------------------------------------------------------


class LookupCache(Generic[V]):
    """Successful lookups, keyed by key hash, for STELLO["AUTH_CACHE_SECONDS"] (0 disables).
    (Also the cache of space owners, `spaces.selectors.space_owners`, under the same rules.)

    Per process and bounded (AUTH_CACHE_MAX_ENTRIES; expired entries go first, then the oldest).
    `apikey_revoke` drops the revoked key here; other processes keep accepting it until their
    entry expires, i.e. for at most the TTL. The same holds for a user deactivated or deleted
    outside the service. The cached user and key objects are shared by the requests that hit
    them: treat them as read-only.
    """

    def __init__(
        self, max_entries: int = AUTH_CACHE_MAX_ENTRIES, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, V]] = {}
        self._lock = threading.Lock()  # held only for dict operations, never around I/O

    @staticmethod
    def ttl() -> float:
        return float(settings.STELLO.get("AUTH_CACHE_SECONDS", 5.0))

    def get(self, key_hash: str) -> V | None:
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        expires_at, credentials = entry
        if expires_at <= self._clock() or self.ttl() <= 0:
            self.discard(key_hash)
            return None
        return credentials

    def put(self, key_hash: str, credentials: V) -> None:
        ttl = self.ttl()
        if ttl <= 0:
            return
        now = self._clock()
        with self._lock:
            self._entries.pop(key_hash, None)
            if len(self._entries) >= self.max_entries:
                for stale in [h for h, (exp, _) in self._entries.items() if exp <= now]:
                    del self._entries[stale]
            while len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]
            self._entries[key_hash] = (now + ttl, credentials)

    def discard(self, key_hash: str) -> None:
        with self._lock:
            self._entries.pop(key_hash, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


AuthCache = LookupCache  # the name the key cache was born with
auth_cache: LookupCache[Credentials] = LookupCache()
