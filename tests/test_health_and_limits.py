"""Health endpoints, request-size limits and per-key rate limiting."""

from __future__ import annotations

import asyncio

import pytest
from django.test import AsyncClient

from sessions_app.health import readiness
from tests.conftest import HOT_PATH_DB


@pytest.mark.django_db(transaction=True)
async def test_healthz_answers_without_a_key() -> None:
    response = await AsyncClient().get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.django_db(transaction=True)
async def test_readyz_checks_database_channel_layer_and_llm() -> None:
    response = await AsyncClient().get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {
        "database": "ok", "channelLayer": "ok", "llm": "ok"}}


@pytest.mark.django_db(transaction=True)
async def test_concurrent_readyz_callers_share_one_check_and_reuse_its_verdict(
        monkeypatch) -> None:
    """A flood of anonymous callers costs one round of checks, not one per caller."""
    # The verdict outlives the flood however slow the host (200 requests took over the
    # production second on a slow one, and the reuse below then saw a fresh check).
    monkeypatch.setattr("sessions_app.health.VERDICT_SECONDS", 60.0)
    readiness.forget()
    before = readiness.checks_run
    responses = await asyncio.gather(*(AsyncClient().get("/readyz") for _ in range(200)))
    assert [r.status_code for r in responses] == [200] * 200
    assert readiness.checks_run == before + 1
    assert (await AsyncClient().get("/readyz")).status_code == 200  # within the second: cached
    assert readiness.checks_run == before + 1


@pytest.mark.django_db(transaction=True)
async def test_a_readyz_caller_that_goes_away_does_not_cancel_the_shared_check() -> None:
    readiness.forget()
    before = readiness.checks_run
    first = asyncio.ensure_future(readiness.verdict())
    second = asyncio.ensure_future(readiness.verdict())
    await asyncio.sleep(0)
    first.cancel()
    assert (await second)["status"] == "ready"
    assert first.cancelled() and readiness.checks_run == before + 1


@pytest.mark.django_db(transaction=True)
async def test_readyz_is_503_when_the_llm_endpoint_is_unreachable(settings) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.STELLO = {**settings.STELLO, "LLM": {
        **settings.STELLO["LLM"], "provider": "openai", "base_url": f"http://127.0.0.1:{port}/v1"}}
    response = await AsyncClient().get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable" and body["checks"]["llm"].startswith("error")
    assert body["checks"]["database"] == "ok"


@HOT_PATH_DB
def test_a_body_over_the_limit_is_413_and_creates_nothing(alice_client, settings) -> None:
    from spaces.models import Space

    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    response = alice_client.post("/spaces", {"label": "x" * 5000}, format="json")
    assert response.status_code == 413
    assert response.json()["error"].startswith("Request body too large")
    assert not Space.objects.exists()
    assert alice_client.post("/spaces", {"label": "ok"}, format="json").status_code == 201


@HOT_PATH_DB
def test_rate_limiting_is_per_key_with_retry_after(alice_client, bob_client, settings) -> None:
    from asgiref.sync import async_to_sync

    from spaces.throttling import rate_limiter

    async_to_sync(rate_limiter.areset)()  # counts of earlier runs (Redis outlives them)
    settings.STELLO = {**settings.STELLO, "RATE_LIMIT": "3/min"}
    statuses = [alice_client.get("/spaces").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = alice_client.get("/spaces")
    assert limited.status_code == 429 and int(limited["Retry-After"]) >= 1
    assert limited.json()["code"] == "RATE_LIMITED"
    assert bob_client.get("/spaces").status_code == 200  # another key has its own budget


@HOT_PATH_DB
def test_without_a_rate_limit_nothing_is_throttled(alice_client) -> None:
    assert {alice_client.get("/spaces").status_code for _ in range(20)} == {200}


async def test_an_unreachable_redis_lets_requests_through_with_a_warning(settings,
                                                                       caplog) -> None:
    import socket

    from spaces.throttling import ahit, rate_limiter

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once the socket is closed
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": f"redis://127.0.0.1:{port}/0"}}
    settings.STELLO = {**settings.STELLO, "RATE_LIMIT": "1/min"}
    try:
        decisions = [await ahit("no-redis") for _ in range(3)]
    finally:
        await rate_limiter.aclose_current()
    assert all(d.allowed for d in decisions)
    assert "rate limit not applied, Redis is unavailable" in caplog.text
