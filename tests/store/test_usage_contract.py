"""The usage part of the SpaceStore contract (every implementation): metered calls handed to
`save_call`, `save_consolidation`, `save_integration` or `record_usage` are recorded once each,
and on the databases the daily rollup adds up to them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from sessions_app.engine.types import Message
from sessions_app.engine.usage import CallUsage

from .conftest import Env
from .test_contract import child

pytestmark = pytest.mark.django_db(transaction=True)

DAY1 = datetime(2026, 3, 14, 23, 59, tzinfo=UTC)
DAY2 = datetime(2026, 3, 15, 0, 1, tzinfo=UTC)


def call(session_id: str, kind: str = "turn", *, tokens: tuple[int, int, int] = (10, 5, 2),
         at: datetime = DAY1, key: int | None = None, cost: int = 7) -> CallUsage:
    return CallUsage(kind=kind, provider="openai", model="m", input_tokens=tokens[0],
                     output_tokens=tokens[1], cached_tokens=tokens[2], duration_ms=3, at=at,
                     session_id=session_id, api_key_id=key, cost_nanos=cost)


@sync_to_async
def _db_calls(space_id: str) -> list[tuple[Any, ...]]:
    from sessions_app.accounting.models import LLMCall

    return sorted(LLMCall.objects.filter(space_id=space_id).values_list(
        "kind", "input_tokens", "output_tokens", "cached_tokens", "cost_nanos"))


@sync_to_async
def _rollup(space_id: str) -> list[tuple[Any, ...]]:
    from sessions_app.accounting.models import UsageDaily

    return sorted((r.day.isoformat(), str(r.session_id), r.api_key_id, r.calls, r.input_tokens,
                   r.output_tokens, r.cached_tokens, r.cost_nanos,
                   r.user_id == _owner(space_id))
                  for r in UsageDaily.objects.filter(space_id=space_id))


def _owner(space_id: str) -> int:
    from spaces.models import Space

    return Space.objects.get(pk=space_id).owner_id


async def recorded(env: Env) -> list[tuple[Any, ...]]:
    if not env.db:
        return sorted((c.kind, c.input_tokens, c.output_tokens, c.cached_tokens, c.cost_nanos)
                      for c in env.store.usage)
    return await _db_calls(env.space_id)


async def test_calls_saved_with_a_turn_are_recorded_once_each(env: Env) -> None:
    sid = env.root_id
    await env.store.save_call(sid, [Message("user", "hi"), Message("assistant", "x")],
                              usage=(call(sid), call(sid, "compression", tokens=(3, 1, 0))))
    await env.store.save_call(sid, [Message("assistant", "y")], end_turn=True,
                              usage=(call(sid, tokens=(20, 2, 0), key=5),))
    assert await recorded(env) == [("compression", 3, 1, 0, 7), ("turn", 10, 5, 2, 7),
                                   ("turn", 20, 2, 0, 7)]
    if env.db:
        assert await _rollup(env.space_id) == [
            ("2026-03-14", sid, 0, 2, 13, 6, 2, 14, True),
            ("2026-03-14", sid, 5, 1, 20, 2, 0, 7, True),
        ]


async def test_memory_work_and_leftovers_are_recorded(env: Env) -> None:
    sid = env.root_id
    await env.store.save_call(sid, [Message("user", "hi"), Message("assistant", "x")])
    child_meta = await env.store.create_child(child(sid))
    await env.store.save_consolidation(child_meta.id, "memory", 10**9,
                                       usage=(call(child_meta.id, "consolidation"),))
    # not written (the marker is past it already), but the call was made: still recorded
    await env.store.save_consolidation(child_meta.id, "older", 1,
                                       usage=(call(child_meta.id, "consolidation", at=DAY2),))
    await env.store.save_integration(sid, "synthesis", (), usage=(call(sid, "integration"),))
    await env.store.record_usage((call(sid, "turn", at=DAY2, cost=0),))
    assert [r[0] for r in await recorded(env)] == ["consolidation", "consolidation",
                                                   "integration", "turn"]
    if env.db:
        days = {(day, session, calls) for day, session, _, calls, *_ in
                await _rollup(env.space_id)}
        assert days == {("2026-03-14", child_meta.id, 1), ("2026-03-15", child_meta.id, 1),
                        ("2026-03-14", sid, 1), ("2026-03-15", sid, 1)}


async def test_nothing_is_recorded_without_usage(env: Env) -> None:
    await env.store.save_call(env.root_id, [Message("user", "hi")])
    await env.store.record_usage(())
    assert await recorded(env) == []
