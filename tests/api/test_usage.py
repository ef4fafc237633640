"""Usage accounting and quotas over REST: what the provider reported is what gets recorded and
reported, per tenant; a spent quota refuses the next turn until its period ends."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from sessions_app.accounting.models import LLMCall, UsageDaily, UsageQuota
from sessions_app.accounting.quotas import quotas_changed
from sessions_app.engine.usage import clock
from sessions_app.models import Session
from tests.api.conftest import HOT_PATH_DB, SessionApi, openai_llm
from tests.support.llm_servers import OpenAIServer, tool_call

pytestmark = HOT_PATH_DB

NOON = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)
PRICES = {"test-model": {"input": 1.0, "output": 2.0, "cached": 0.5}}


@pytest.fixture(autouse=True)
def fixed_clock() -> Iterator[None]:
    clock.set(NOON)
    quotas_changed()
    yield
    clock.set(None)
    quotas_changed()


@pytest.fixture
def priced(settings) -> None:
    settings.STELLO = {**settings.STELLO, "PRICES": PRICES}


@pytest.fixture
def server(use_llm) -> Iterator[OpenAIServer]:
    with OpenAIServer() as server:
        use_llm(openai_llm(server.base_url))
        yield server


def usage(client, path: str = "/usage", **params: str) -> dict[str, Any]:
    response = client.get(path, params)
    assert response.status_code == 200, response.content
    return response.json()


def test_totals_equal_the_tokens_the_provider_reported(
    api: SessionApi, alice_client, root_id: str, server: OpenAIServer, priced: None
) -> None:
    child = api.child(root_id, "research")["id"]
    server.reply(tool_calls=[tool_call("c1", "lookup", {"q": "x"})], usage=(100, 20, 40))
    server.reply("done", usage=(150, 10))
    server.reply("the summary", usage=(300, 30))  # the consolidation (memory work)

    turn = api.said(child, "go")
    assert turn["toolRoundCount"] == 1
    assert turn["usage"] == {"calls": 2, "inputTokens": 250, "outputTokens": 30,
                             "cachedTokens": 40,
                             "cost": pytest.approx((210 * 1.0 + 40 * 0.5 + 30 * 2.0) / 1e6)}
    assert api.consolidate(child).status_code == 200
    assert len(server.requests) == 3

    report = usage(alice_client, groupBy="session")
    cost = (510 * 1.0 + 40 * 0.5 + 60 * 2.0) / 1e6
    assert report["totals"] == {"calls": 3, "inputTokens": 550, "outputTokens": 60,
                                "cachedTokens": 40, "cost": pytest.approx(cost),
                                "durationMs": report["totals"]["durationMs"]}
    assert [(g["key"], g["calls"]) for g in report["groups"]] == [(child, 3)]
    assert (report["from"], report["to"]) == ("2026-02-13", "2026-03-14")
    kinds = sorted(LLMCall.objects.values_list("kind", "api_key_id"))
    assert [k for k, _ in kinds] == ["consolidation", "turn", "turn"]
    assert all(key for kind, key in kinds if kind == "turn")  # charged to alice's key
    assert UsageDaily.objects.get().calls == 3  # one rollup row for the day


def test_grouping_by_day_model_and_key(api: SessionApi, alice_client, root_id: str) -> None:
    api.said(root_id, "hello")
    clock.set(datetime(2026, 3, 15, 9, 0, tzinfo=UTC))
    api.said(root_id, "again")
    by_day = usage(alice_client, to="2026-03-15", groupBy="day")
    assert [(g["key"], g["calls"]) for g in by_day["groups"]] == [("2026-03-14", 1),
                                                                   ("2026-03-15", 1)]
    by_model = usage(alice_client, to="2026-03-15", groupBy="model")
    assert [(g["key"], g["calls"]) for g in by_model["groups"]] == [("offline-echo", 2)]
    by_key = usage(alice_client, to="2026-03-15", groupBy="key")
    assert len(by_key["groups"]) == 1 and by_key["groups"][0]["key"] is not None
    only_first = usage(alice_client, **{"from": "2026-03-14", "to": "2026-03-14"})
    assert only_first["totals"]["calls"] == 1
    assert usage(alice_client)["groups"] == []  # no groupBy: totals only


def test_offline_usage_is_deterministic(api: SessionApi, root_id: str) -> None:
    first = api.said(root_id, "same words")["usage"]
    assert first["calls"] == 1 and first["inputTokens"] > 0 and first["outputTokens"] > 0
    assert first["cost"] == 0  # no price table


def test_tenants_see_only_their_own_usage(api: SessionApi, root_id: str, alice_client,
                                          bob_client, space: dict[str, Any]) -> None:
    api.said(root_id, "hello")
    assert usage(alice_client, f"/spaces/{space['id']}/usage")["totals"]["calls"] == 1
    assert usage(bob_client)["totals"]["calls"] == 0
    response = bob_client.get(f"/spaces/{space['id']}/usage")
    assert response.status_code == 403 and response.json()["code"] == "FORBIDDEN"
    missing = alice_client.get("/spaces/00000000-0000-0000-0000-000000000000/usage")
    assert missing.status_code == 404


@pytest.mark.parametrize("params", [
    {"from": "2026-13-01"}, {"to": "yesterday"}, {"from": "2026-03-10", "to": "2026-03-01"},
    {"groupBy": "hour"}, {"from": "20260301"}, {"from": "1900-01-01"},
])
def test_bad_query_parameters_are_400(alice_client, params: dict[str, str]) -> None:
    response = alice_client.get("/usage", params)
    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_INPUT"


def test_a_spent_quota_stops_the_next_turn_until_the_period_ends(
    api: SessionApi, root_id: str, alice, server: OpenAIServer
) -> None:
    UsageQuota.objects.create(user=alice, period="day", max_tokens=100)
    quotas_changed()  # what the admin does when it saves one
    server.reply("first", usage=(80, 30))  # 110 tokens: the budget is spent by this turn
    api.said(root_id, "one")

    refused = api.turn(root_id, "two")
    assert refused.status_code == 429
    assert refused.json()["code"] == "QUOTA_EXCEEDED"
    assert refused["Retry-After"] == str(12 * 3600)  # noon to midnight UTC
    assert len(server.requests) == 1  # no LLM call
    assert Session.objects.get(pk=root_id).turn_count == 1  # nothing changed

    clock.set(datetime(2026, 3, 15, 0, 0, 1, tzinfo=UTC))  # the next day: a new budget
    assert api.turn(root_id, "three").status_code == 200


def test_a_cost_quota_per_key_and_per_month(api: SessionApi, root_id: str, alice,
                                            alice_client, server: OpenAIServer,
                                            priced: None) -> None:
    key = alice.api_keys.get()
    UsageQuota.objects.create(user=alice, api_key=key, period="month", max_cost="0.0001")
    quotas_changed()
    server.reply("big", usage=(100_000, 0))  # 0.1 USD
    api.said(root_id, "one")
    refused = api.turn(root_id, "two")
    assert refused.status_code == 429 and refused.json()["code"] == "QUOTA_EXCEEDED"
    assert refused["Retry-After"] == str(int((datetime(2026, 4, 1, tzinfo=UTC)
                                              - NOON).total_seconds()))
    clock.set(datetime(2026, 4, 1, tzinfo=UTC))
    assert api.turn(root_id, "three").status_code == 200


def test_other_users_quotas_do_not_apply(api: SessionApi, root_id: str, bob) -> None:
    UsageQuota.objects.create(user=bob, period="day", max_tokens=0)
    quotas_changed()
    api.said(root_id, "one")
    assert api.turn(root_id, "two").status_code == 200


def test_a_grouped_report_is_one_scan_of_the_rollup_with_the_same_totals(
        api: SessionApi, alice_client, root_id: str, django_assert_num_queries) -> None:
    """The totals of a grouped report are its groups' sums: one query, not a second aggregate
    (which doubled the cost of a report over millions of calls)."""
    api.said(root_id, "hello")
    clock.set(datetime(2026, 3, 15, 9, 0, tzinfo=UTC))
    api.said(root_id, "again")
    plain = usage(alice_client, to="2026-03-15")
    alice_client.get("/usage")  # authentication cached from here on
    with django_assert_num_queries(1):
        grouped = usage(alice_client, to="2026-03-15", groupBy="day")
    assert grouped["totals"] == plain["totals"]
    assert grouped["totals"]["calls"] == sum(g["calls"] for g in grouped["groups"]) == 2
    assert grouped["totals"]["inputTokens"] == sum(g["inputTokens"] for g in grouped["groups"])
