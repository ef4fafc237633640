"""Per-API-key rate limiting (off unless STELLO_RATE_LIMIT is set, e.g. "600/min").

Counts live in Django's cache: Redis when REDIS_URL is set, so every process shares them.
"""

from __future__ import annotations

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

    def get_cache_key(self, request, view) -> str | None:
        key = request.auth
        ident = getattr(key, "pk", None)
        return None if ident is None else self.cache_format % {"scope": self.scope, "ident": ident}
