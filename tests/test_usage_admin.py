"""The admin of usage accounting: quotas are set there (and take effect at once in its
process), calls and the daily rollup are read-only, with totals per user and per space."""

from __future__ import annotations

import uuid
from datetime import date

import pytest
from django.test import Client

from sessions_app.accounting.models import LLMCall, UsageDaily, UsageQuota
from sessions_app.accounting.quotas import quota_book
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


def _rollup(user, space_id: uuid.UUID, tokens: int, nanos: int) -> UsageDaily:
    return UsageDaily.objects.create(day=date(2026, 3, 14), user=user, space_id=space_id,
                                     session_id=uuid.uuid4(), provider="openai", model="m",
                                     calls=1, input_tokens=tokens, output_tokens=1,
                                     cost_nanos=nanos)


def test_the_rollup_list_shows_totals_per_user_and_per_space(admin_client: Client) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    space_a, space_b = uuid.uuid4(), uuid.uuid4()
    _rollup(alice, space_a, 100, 2_000_000_000)
    _rollup(alice, space_a, 50, 1_000_000_000)
    _rollup(bob, space_b, 7, 0)
    response = admin_client.get("/admin/sessions_app/usagedaily/")
    assert response.status_code == 200
    by_user, by_space = (rows for _, rows in response.context["usage_totals"])
    assert [(r["name"], r["calls"], r["input"], r["cost"]) for r in by_user["items"]] == [
        ("alice", 2, 150, "3.000000"), ("bob", 1, 7, "0.000000")]
    assert [(r["name"], r["input"]) for r in by_space["items"]] == [(str(space_a), 150),
                                                                    (str(space_b), 7)]
    assert b"Totals per space" in response.content


def test_calls_and_rollup_are_read_only(admin_client: Client) -> None:
    assert admin_client.get("/admin/sessions_app/llmcall/").status_code == 200
    assert admin_client.get("/admin/sessions_app/llmcall/add/").status_code == 403
    assert admin_client.get("/admin/sessions_app/usagedaily/add/").status_code == 403
    assert LLMCall.objects.count() == 0


def test_a_quota_saved_in_the_admin_applies_at_once(admin_client: Client) -> None:
    carol = make_user("carol")
    assert quota_book.fresh()  # held as read (no quotas)
    response = admin_client.post("/admin/sessions_app/usagequota/add/", {
        "user": carol.pk, "period": "day", "max_tokens": "1000", "max_cost": ""})
    assert response.status_code == 302, response.content
    assert UsageQuota.objects.get().max_tokens == 1000
    assert not quota_book.fresh()  # the next turn reads the quotas again


def test_a_quota_needs_a_budget_and_a_key_of_its_own_user(admin_client: Client) -> None:
    from spaces.apikeys import apikey_create

    carol, dave = make_user("carol"), make_user("dave")
    daves_key = apikey_create(user=dave, name="k")[0]
    for form in ({"user": carol.pk, "period": "day", "max_tokens": "", "max_cost": ""},
                 {"user": carol.pk, "api_key": daves_key.pk, "period": "day",
                  "max_tokens": "5", "max_cost": ""}):
        response = admin_client.post("/admin/sessions_app/usagequota/add/", form)
        assert response.status_code == 200  # the form again, with the error
    assert UsageQuota.objects.count() == 0
