"""Usage and quotas on the WebSocket: the turn results carry `usage`, streams are recorded as
such, and a spent quota answers an `error` frame QUOTA_EXCEEDED (with `retryAfter`) before any
LLM call, leaving the connection open."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest
from asgiref.sync import sync_to_async

from sessions_app.accounting.models import LLMCall, UsageQuota
from sessions_app.accounting.quotas import quotas_changed
from sessions_app.engine.usage import clock
from sessions_app.runtime.pool import Runtime, runtimes
from tests.ws.conftest import finish_ws_work
from tests.ws.test_consumer import ask, bounded, enter, open_ws, recv, turn_count_of

pytestmark = pytest.mark.django_db(transaction=True)

NOON = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def fixed_clock(settings) -> Iterator[None]:
    settings.STELLO = {**settings.STELLO, "CONSOLIDATE_EVERY_N_TURNS": 0,
                       "CONSOLIDATE_ON_ARCHIVE": False}
    clock.set(NOON)
    quotas_changed()
    yield
    clock.set(None)
    quotas_changed()


@pytest.fixture(autouse=True)
async def runtime(fixed_clock) -> AsyncIterator[Runtime]:
    yield runtimes.current()
    await finish_ws_work()


@sync_to_async
def recorded_kinds() -> list[str]:
    return sorted(LLMCall.objects.values_list("kind", flat=True))


@bounded()
async def test_turn_results_carry_usage_and_streams_are_recorded(space_id, root_id,
                                                                 alice_key) -> None:
    ws = await open_ws(space_id, alice_key)
    await enter(ws, root_id)
    complete = await ask(ws, {"type": "session.message", "input": "hello"})
    usage = complete["result"]["turn"]["usage"]
    assert usage["calls"] == 1 and usage["inputTokens"] > 0 and usage["outputTokens"] > 0
    await ws.send_json_to({"type": "session.stream", "input": "again"})
    frame = await recv(ws)
    while frame["type"] == "stream.delta":
        frame = await recv(ws)
    assert frame["type"] == "stream.end"
    assert frame["result"]["turn"]["usage"]["calls"] == 1
    assert await recorded_kinds() == ["stream", "turn"]
    await ws.disconnect()


@bounded()
async def test_a_spent_quota_refuses_turns_and_streams_with_an_error_frame(
        space_id, root_id, alice, alice_key) -> None:
    await sync_to_async(UsageQuota.objects.create)(user=alice, period="day", max_tokens=1)
    quotas_changed()
    ws = await open_ws(space_id, alice_key)
    await enter(ws, root_id)
    assert (await ask(ws, {"type": "session.message", "input": "one"}))["type"] == \
        "turn.complete"  # under budget when it started: it runs (and spends the budget)
    for kind in ("session.message", "session.stream"):
        refused = await ask(ws, {"type": kind, "input": "two"})
        assert refused == {"type": "error", "code": "QUOTA_EXCEEDED",
                           "message": refused["message"], "retryAfter": 12 * 3600}
    assert await turn_count_of(root_id) == 1
    clock.set(datetime(2026, 3, 15, tzinfo=UTC))
    assert (await ask(ws, {"type": "session.message", "input": "three"}))["type"] == \
        "turn.complete"  # the same connection, the next day
    await ws.disconnect()
