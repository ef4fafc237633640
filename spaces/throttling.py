"""Per-API-key rate limiting (off unless STELLO_RATE_LIMIT is set, e.g. "600/min").

Each key has one counter per window: the key's first request starts a window of the rate's
duration, every request adds one, and a request that takes the count past the limit is refused
until the window ends (`Retry-After` says when). Every REST request (`ApiKeyRateThrottle`) and
every WebSocket turn, stream and fork (the consumer) draws on the same counter.

The increment is atomic, so concurrent requests cannot slip past the limit:

- with Redis (`REDIS_URL`), one Lua script increments the counter, sets its expiry on the first
  hit and reads the time left: one round trip, on the event loop (redis-py's asyncio client, no
  thread hop), shared by every server process;
- without Redis (the embedded default, one process), a dict in the process, changed without an
  `await` between reading and writing.

When Redis cannot be reached the request is let through and a warning logged: an outage of the
limiter must not take the API down with it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import weakref
from dataclasses import dataclass

import redis.asyncio as aredis
from django.conf import settings
from rest_framework.throttling import BaseThrottle

logger = logging.getLogger("stello.ratelimit")

PERIOD_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
REDIS_TIMEOUT_SECONDS = 2.0  # a request waits at most this long on the limiter
REDIS_MAX_CONNECTIONS = 50  # per process and event loop; requests queue for one beyond that

# KEYS[1]: the counter; ARGV[1]: the window in ms. Returns {count, ms left in the window}.
# The PEXPIRE guard also repairs a counter that lost its expiry (it would block the key forever).
HIT_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
local left = redis.call('PTTL', KEYS[1])
if count == 1 or left < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  left = tonumber(ARGV[1])
end
return {count, left}
"""


@dataclass(frozen=True)
class Rate:
    limit: int
    seconds: int

    @classmethod
    def parse(cls, rate: str) -> Rate:
        """`600/min`, `10/s`, ... (validated by the settings)."""
        count, _, period = rate.partition("/")
        return cls(int(count), PERIOD_SECONDS[period.strip()[0]])


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: int  # whole seconds until the window ends; 0 when allowed


def configured_rate() -> Rate | None:
    rate = settings.STELLO.get("RATE_LIMIT")
    return Rate.parse(rate) if rate else None


def _redis_cache() -> tuple[str, str] | None:
    """(Redis URL, key prefix) of the Django cache when it is Redis (REDIS_URL), else None."""
    cache = settings.CACHES.get("default", {})
    if not cache.get("BACKEND", "").endswith("RedisCache"):
        return None
    return cache["LOCATION"], cache.get("KEY_PREFIX") or "stello"


class RateLimiter:
    """The counters (see the module doc). `ahit` counts one request of an API key."""

    def __init__(self) -> None:
        # Without Redis: key id -> (count, window end on the monotonic clock).
        self._local: dict[str, tuple[int, float]] = {}
        self._local_lock = threading.Lock()  # uncontended on the loop; guards test threads
        # With Redis: one client per event loop (its connections belong to that loop).
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aredis.Redis] = (
            weakref.WeakKeyDictionary()
        )

    async def ahit(self, key_id: object, rate: Rate) -> Decision:
        redis_cache = _redis_cache()
        if redis_cache is None:
            return self._local_hit(str(key_id), rate)
        url, prefix = redis_cache
        try:
            count, left_ms = await self._client(url).eval(
                HIT_SCRIPT, 1, f"{prefix}:ratelimit:{key_id}", rate.seconds * 1000)
        except (aredis.RedisError, OSError) as exc:
            logger.warning("rate limit not applied, Redis is unavailable: %s", exc)
            return Decision(True, 0)
        return self._decide(int(count), int(left_ms) / 1000, rate)

    def _local_hit(self, key_id: str, rate: Rate) -> Decision:
        now = time.monotonic()
        with self._local_lock:
            count, ends = self._local.get(key_id, (0, 0.0))
            if ends <= now:
                count, ends = 0, now + rate.seconds
                if len(self._local) > 10_000:  # drop ended windows, so the dict stays small
                    self._local = {k: v for k, v in self._local.items() if v[1] > now}
            self._local[key_id] = (count + 1, ends)
        return self._decide(count + 1, ends - now, rate)

    @staticmethod
    def _decide(count: int, seconds_left: float, rate: Rate) -> Decision:
        if count <= rate.limit:
            return Decision(True, 0)
        return Decision(False, max(1, math.ceil(seconds_left)))

    def _client(self, url: str) -> aredis.Redis:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            pool = aredis.BlockingConnectionPool.from_url(
                url, max_connections=REDIS_MAX_CONNECTIONS, timeout=REDIS_TIMEOUT_SECONDS,
                socket_timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS)
            client = self._clients[loop] = aredis.Redis(connection_pool=pool)
        return client

    async def aclose_current(self) -> None:
        """Close the Redis client of the running loop (a loop made for one call, shutdown)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    async def areset(self) -> None:
        """Forget every count (tests)."""
        with self._local_lock:
            self._local.clear()
        redis_cache = _redis_cache()
        if redis_cache is not None:
            client = self._client(redis_cache[0])
            async for name in client.scan_iter(match=f"{redis_cache[1]}:ratelimit:*"):
                await client.delete(name)
            await self.aclose_current()


rate_limiter = RateLimiter()


async def ahit(key_id: object) -> Decision:
    """Count one request of API key `key_id` against STELLO_RATE_LIMIT (allowed if unset)."""
    rate = configured_rate()
    if rate is None:
        return Decision(True, 0)
    return await rate_limiter.ahit(key_id, rate)


class ApiKeyRateThrottle(BaseThrottle):
    """DRF's side of the limiter: the async viewsets (`spaces.viewsets`) await `aallow_request`.
    A request without a key is not counted (it is refused by authentication, or it is a public
    page such as the schema)."""

    def __init__(self) -> None:
        self.retry_after: int | None = None

    async def aallow_request(self, request, view) -> bool:
        key_id = getattr(request.auth, "pk", None)
        if key_id is None:
            return True
        decision = await ahit(key_id)
        self.retry_after = decision.retry_after or None
        return decision.allowed

    def allow_request(self, request, view) -> bool:
        # Only the sync views use this: the public schema pages, which need no key.
        return True

    def wait(self) -> int | None:
        return self.retry_after
