"""Health endpoints for load balancers (no authentication).

`/healthz`: the process is alive. `/readyz`: the database, the channel layer and the configured
LLM endpoint are reachable; 503 with the failing checks otherwise.

Anyone may call `/readyz`, as often as they like, so it must not be a way to starve the
process: the checks run at most once at a time per process (callers that arrive meanwhile
share the running check's verdict), a verdict is reused for `VERDICT_SECONDS`, and each check
is bounded by `CHECK_TIMEOUT`. A flood of callers therefore costs one check per
`VERDICT_SECONDS`: one `SELECT 1`, one Redis `PUBLISH` and one TCP connect, whatever the
number of callers, and never a pooled connection per caller.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.db import close_old_connections, connection
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from .conf import llm_settings

DEFAULT_HOSTS = {"openai": ("api.openai.com", 443), "anthropic": ("api.anthropic.com", 443)}
CHECK_TIMEOUT = 3.0  # seconds for each check
VERDICT_SECONDS = 1.0  # a verdict is reused this long
PROBE_CHANNEL = "stello.readyz"  # published to, never listened to


@csrf_exempt  # no cookies, no state: any method but GET/HEAD must get its 405
@require_http_methods(["GET", "HEAD"])
async def healthz(request) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@csrf_exempt
@require_http_methods(["GET", "HEAD"])
async def readyz(request) -> JsonResponse:
    body = await readiness.verdict()
    return JsonResponse(body, status=200 if body["status"] == "ready" else 503)


class Readiness:
    """The last verdict of this process, and the check that is running, if any (single-flight).

    A verdict belongs to the configuration it checked (the database, the LLM endpoint, the
    channel layer), so changing any of them (tests do) is never answered from the cache.
    """

    def __init__(self) -> None:
        self._verdict: dict[str, Any] | None = None
        self._checked_at = 0.0
        self._checked: tuple[Any, ...] = ()
        self._running: asyncio.Future[dict[str, Any]] | None = None
        self.checks_run = 0  # how many checks this process has run (tests)

    async def verdict(self) -> dict[str, Any]:
        subject = _subject()
        fresh = time.monotonic() - self._checked_at < VERDICT_SECONDS
        if self._verdict is not None and fresh and subject == self._checked:
            return self._verdict
        loop = asyncio.get_running_loop()
        if self._running is None or self._running.get_loop() is not loop:
            self._running = loop.create_task(self._check(subject))
        # A caller that goes away must not cancel the check the others are waiting for.
        return await asyncio.shield(self._running)

    async def _check(self, subject: tuple[Any, ...]) -> dict[str, Any]:
        try:
            self.checks_run += 1
            names = ("database", "channelLayer", "llm")
            results = await asyncio.gather(
                *(asyncio.wait_for(check(), CHECK_TIMEOUT)
                  for check in (_database, _channel_layer, _llm)),
                return_exceptions=True,
            )
            checks = {name: "ok" if result is None else f"error: {_describe(result)}"
                      for name, result in zip(names, results, strict=True)}
            ready = all(value == "ok" for value in checks.values())
            verdict = {"status": "ready" if ready else "unavailable", "checks": checks}
            self._verdict, self._checked_at, self._checked = verdict, time.monotonic(), subject
            return verdict
        finally:
            self._running = None

    def forget(self) -> None:
        """Drop the cached verdict (tests)."""
        self._verdict = None


readiness = Readiness()


def _subject() -> tuple[Any, ...]:
    db = settings.DATABASES["default"]
    llm = settings.STELLO["LLM"]
    return (db.get("NAME"), db.get("HOST"), db.get("PORT"), llm.get("provider"),
            llm.get("base_url"), id(get_channel_layer()))


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return f"no answer within {CHECK_TIMEOUT:g}s"
    return str(error) or type(error).__name__


def _ping_database() -> None:
    close_old_connections()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        close_old_connections()


async def _database() -> None:
    await sync_to_async(_ping_database)()


async def _channel_layer() -> None:
    """One publish through the layer's own connection. The in-memory layer lives in this
    process, so it is reachable whenever the process answers."""
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")
    if isinstance(layer, InMemoryChannelLayer):
        return
    await layer.send(PROBE_CHANNEL, {"type": "readyz.ping"})


async def _llm() -> None:
    llm = llm_settings()
    if llm.provider == "offline":
        return
    if llm.base_url:
        parts = urlsplit(llm.base_url)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    else:
        host, port = DEFAULT_HOSTS[llm.provider]
    _, writer = await asyncio.open_connection(host, port)
    writer.close()
    await writer.wait_closed()
