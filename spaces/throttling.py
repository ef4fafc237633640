"""Per-API-key rate limiting (off unless STELLO_RATE_LIMIT is set, e.g. "600/min").

Counts live in Django's cache: Redis when REDIS_URL is set, so every process shares them.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.conf import settings
from rest_framework.throttling import SimpleRateThrottle


class ApiKeyRateThrottle(SimpleRateThrottle):
    scope = "api_key"

    def get_rate(self) -> str | None:
        return settings.STELLO.get("RATE_LIMIT")

    def allow_request(self, request, view) -> bool:
        if not self.rate:
            return True
        return super().allow_request(request, view)

    async def aallow_request(self, request, view) -> bool:
        """Async twin of `allow_request`, used by the async viewsets (`spaces.viewsets`).

        Without a rate limit (the default) it returns at once: no I/O, no thread hop. With one,
        the read-modify-write of the key's history runs in ONE `sync_to_async` hop: Django's
        cache backends (Redis, local memory) implement their async API (`aget`, `aset`) as a
        hop per call, so awaiting them would cost two hops instead of one.
        """
        if not self.rate:
            return True
        return await sync_to_async(self.allow_request)(request, view)

    def get_cache_key(self, request, view) -> str | None:
        key = request.auth
        ident = getattr(key, "pk", None)
        return None if ident is None else self.cache_format % {"scope": self.scope, "ident": ident}
