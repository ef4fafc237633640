"""Health endpoints for load balancers (no authentication).

`/healthz`: the process is alive. `/readyz`: the database, the channel layer and the configured
LLM endpoint are reachable; 503 with the failing checks otherwise.
"""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlsplit

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import close_old_connections, connection
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from .conf import llm_settings

DEFAULT_HOSTS = {"openai": ("api.openai.com", 443), "anthropic": ("api.anthropic.com", 443)}
CHECK_TIMEOUT = 3.0


@csrf_exempt  # no cookies, no state: any method but GET/HEAD must get its 405
@require_http_methods(["GET", "HEAD"])
async def healthz(request) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@csrf_exempt
@require_http_methods(["GET", "HEAD"])
async def readyz(request) -> JsonResponse:
    names = ("database", "channelLayer", "llm")
    results = await asyncio.gather(_database(), _channel_layer(), _llm(), return_exceptions=True)
    checks = {
        name: "ok" if result is None else f"error: {result}"
        for name, result in zip(names, results, strict=True)
    }
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ready" if ready else "unavailable", "checks": checks},
                        status=200 if ready else 503)


def _ping_database() -> None:
    close_old_connections()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        close_old_connections()


async def _database() -> None:
    await asyncio.wait_for(sync_to_async(_ping_database)(), CHECK_TIMEOUT)


async def _channel_layer() -> None:
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")
    channel = await layer.new_channel()
    token = uuid.uuid4().hex
    await layer.send(channel, {"type": "readyz.ping", "token": token})
    message = await asyncio.wait_for(layer.receive(channel), CHECK_TIMEOUT)
    if message.get("token") != token:
        raise RuntimeError("unexpected message")


async def _llm() -> None:
    settings = llm_settings()
    if settings.provider == "offline":
        return
    if settings.base_url:
        parts = urlsplit(settings.base_url)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    else:
        host, port = DEFAULT_HOSTS[settings.provider]
    _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CHECK_TIMEOUT)
    writer.close()
    await writer.wait_closed()
