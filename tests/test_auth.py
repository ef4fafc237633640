"""X-API-Key authentication over HTTP, and the plain (and async) functions the WebSocket reuses.

Personas: `alice` owns `alice_key`; `anonymous_client` sends no key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from unittest import mock

import pytest
from asgiref.sync import SyncToAsync, sync_to_async
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from spaces import pgpool
from spaces.apikeys import apikey_create, apikey_revoke, auth_cache, hash_key
from spaces.auth import ApiKeyError, aauthenticate_key, authenticate_credentials, authenticate_key
from spaces.models import ApiKey
from tests.conftest import HAS_POSTGRES, HOT_PATH_DB, client_for, make_user

pytestmark = HOT_PATH_DB

UNAUTHENTICATED_MISSING = {"error": "Missing API key", "code": "UNAUTHENTICATED"}
UNAUTHENTICATED_INVALID = {"error": "Invalid API key", "code": "UNAUTHENTICATED"}


@pytest.fixture(autouse=True)
def empty_auth_cache() -> Iterator[None]:
    auth_cache.clear()
    yield
    auth_cache.clear()


def api_key_queries(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if "api_keys" in q["sql"]]


# --- Over HTTP ----------------------------------------------------------------------------------


def test_a_valid_key_lists_its_owners_spaces(alice_client: APIClient) -> None:
    response = alice_client.get("/spaces")

    assert response.status_code == 200
    assert response.json() == []


def test_a_request_without_a_key_is_401_missing_api_key(anonymous_client: APIClient) -> None:
    response = anonymous_client.get("/spaces")

    assert response.status_code == 401
    assert response.json() == UNAUTHENTICATED_MISSING
    assert response["WWW-Authenticate"] == "X-API-Key"


def test_the_key_may_come_as_an_authorization_bearer_header(alice, alice_key) -> None:
    for scheme in ("Bearer", "bearer"):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"{scheme} {alice_key}")
        response = client.get("/spaces")
        assert response.status_code == 200, (scheme, response.content)


def test_x_api_key_wins_over_authorization_and_other_schemes_carry_no_key(
        alice_key, bob_key) -> None:
    both = APIClient()
    both.credentials(HTTP_X_API_KEY="stello_not_a_real_key",
                     HTTP_AUTHORIZATION=f"Bearer {alice_key}")
    assert both.get("/spaces").json() == UNAUTHENTICATED_INVALID

    basic = APIClient()
    basic.credentials(HTTP_AUTHORIZATION=f"Basic {alice_key}")
    assert basic.get("/spaces").json() == UNAUTHENTICATED_MISSING
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Bearer stello_not_a_real_key")
    assert bad.get("/spaces").status_code == 401


def test_a_key_in_the_query_string_is_never_read(alice_key) -> None:
    """No key is taken from the URL (where access logs would print it)."""
    for name in ("api_key", "apiKey", "key", "x-api-key", "token", "access_token"):
        response = APIClient().get(f"/spaces?{name}={alice_key}")
        assert response.json() == UNAUTHENTICATED_MISSING, name


@pytest.mark.parametrize("header", ["", "   "], ids=["empty", "blank"])
def test_an_empty_key_header_is_401_missing_api_key(db, header: str) -> None:
    response = client_for(header).get("/spaces")

    assert response.status_code == 401
    assert response.json() == UNAUTHENTICATED_MISSING


@pytest.mark.parametrize(
    "key", ["stello_AAAAAAAA_" + "B" * 43, "hello"], ids=["well-formed", "garbage"]
)
def test_an_unknown_key_is_401_invalid_api_key(alice_key: str, key: str) -> None:
    response = client_for(key).get("/spaces")

    assert response.status_code == 401
    assert response.json() == UNAUTHENTICATED_INVALID


def test_a_revoked_key_is_401_invalid_api_key(alice_client: APIClient) -> None:
    assert alice_client.get("/spaces").status_code == 200  # now in the auth cache too
    apikey_revoke(prefix=ApiKey.objects.get().prefix)

    response = alice_client.get("/spaces")

    assert response.status_code == 401
    assert response.json() == UNAUTHENTICATED_INVALID


def test_a_post_without_a_key_creates_nothing(anonymous_client: APIClient) -> None:
    response = anonymous_client.post("/spaces", {"label": "x"}, format="json")

    assert response.status_code == 401
    assert response.json() == UNAUTHENTICATED_MISSING


def test_an_unknown_path_under_spaces_without_a_key_is_401(
    anonymous_client: APIClient,
) -> None:
    response = anonymous_client.get("/spaces/x/y/z")

    assert response.status_code == 401
    assert response.json() == UNAUTHENTICATED_MISSING


def test_an_unknown_path_under_spaces_with_a_key_is_a_json_404(alice_client: APIClient) -> None:
    response = alice_client.get("/spaces/x/y/z")

    assert response.status_code == 404
    assert response.json() == {"error": "Not Found", "code": "NOT_FOUND"}


def auth_cost(client: APIClient) -> tuple[list[str], int]:
    """What authenticating one `GET /spaces` costs the database: the ORM statements on the keys
    table (the embedded SQLite default) and the async pool's round trips (PostgreSQL, where the
    listing itself is a cold path on the ORM, so the pool serves only the key lookup)."""
    pgpool.round_trips.reset()
    with CaptureQueriesContext(connection) as orm:
        response = client.get("/spaces")
    assert response.status_code == 200
    return [sql.split()[0].upper() for sql in api_key_queries(orm)], pgpool.round_trips.count


def test_a_second_request_within_the_cache_ttl_makes_no_auth_query(
    alice_client: APIClient,
) -> None:
    first, second = auth_cost(alice_client), auth_cost(alice_client)

    if HAS_POSTGRES:  # one statement: the lookup and the last-used UPDATE
        assert first == ([], 1)
    else:
        assert first == (["SELECT", "UPDATE"], 0)
    assert second == ([], 0)


def test_last_used_is_recorded_once_then_not_again_within_a_minute(
    alice_client: APIClient,
) -> None:
    assert ApiKey.objects.get().last_used_at is None

    alice_client.get("/spaces")
    first_use = ApiKey.objects.get().last_used_at
    auth_cache.clear()  # force a database lookup: it must still not write
    later = auth_cost(alice_client)

    assert first_use is not None
    assert ApiKey.objects.get().last_used_at == first_use
    assert later == (([], 1) if HAS_POSTGRES else (["SELECT"], 0))


# --- The plain functions (shared with the WebSocket consumer) -----------------------------------


def test_authenticate_key_returns_the_owner(alice, alice_key: str) -> None:
    assert authenticate_key(alice_key) == alice


def test_authenticate_credentials_returns_the_owner_and_the_key_row(alice, alice_key: str) -> None:
    user, apikey = authenticate_credentials(alice_key)

    assert (user, apikey.key_hash) == (alice, hash_key(alice_key))


@pytest.mark.parametrize("raw", [None, "", " "], ids=["none", "empty", "blank"])
def test_authenticate_key_without_a_key_raises_missing(
    db, raw: str | None, django_assert_num_queries
) -> None:
    with django_assert_num_queries(0), pytest.raises(ApiKeyError) as raised:
        authenticate_key(raw)

    assert raised.value.message == "Missing API key"


def test_authenticate_key_with_an_unknown_key_raises_invalid(alice_key: str) -> None:
    with pytest.raises(ApiKeyError) as raised:
        authenticate_key(alice_key + "x")

    assert raised.value.message == "Invalid API key"


def test_authenticate_key_caches_success_so_the_next_call_makes_no_query(
    alice_key: str, django_assert_num_queries
) -> None:
    with django_assert_num_queries(2):
        authenticate_key(alice_key)
    with django_assert_num_queries(0):
        authenticate_key(alice_key)


def test_failures_are_not_cached(alice, django_assert_num_queries) -> None:
    unknown = "stello_AAAAAAAA_" + "B" * 43
    for _ in range(2):
        with django_assert_num_queries(1), pytest.raises(ApiKeyError):
            authenticate_key(unknown)


def test_a_zero_cache_ttl_looks_every_key_up(
    alice_key: str, settings, django_assert_num_queries
) -> None:
    settings.STELLO = {**settings.STELLO, "AUTH_CACHE_SECONDS": 0}
    authenticate_key(alice_key)

    with django_assert_num_queries(1):
        authenticate_key(alice_key)


def test_a_cache_hit_records_a_use_once_the_last_one_is_a_minute_old(
    alice_key: str, django_assert_num_queries
) -> None:
    _, apikey = authenticate_credentials(alice_key)
    apikey.last_used_at = timezone.now() - timedelta(minutes=2)  # the cached copy

    with django_assert_num_queries(1) as captured:
        authenticate_key(alice_key)

    assert captured.captured_queries[0]["sql"].upper().startswith("UPDATE")
    assert timezone.now() - ApiKey.objects.get().last_used_at < timedelta(minutes=1)


def test_another_processes_revocation_is_seen_once_the_cache_entry_expires(
    alice, alice_key: str
) -> None:
    authenticate_key(alice_key)
    ApiKey.objects.update(revoked=True)  # as another process would, without touching our cache

    assert authenticate_key(alice_key) == alice  # still cached here, within the TTL
    auth_cache.clear()  # the TTL elapses
    with pytest.raises(ApiKeyError):
        authenticate_key(alice_key)


# --- The async twin -----------------------------------------------------------------------------


@pytest.fixture
async def close_worker_connections() -> AsyncIterator[None]:
    """sync_to_async runs the ORM in a worker thread whose connection no request cycle closes:
    close it, or PostgreSQL cannot drop the test database at the end of the run."""
    yield
    await sync_to_async(connections.close_all)()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_worker_connections")
async def test_aauthenticate_key_stays_on_the_loop_but_for_a_cache_miss_on_sqlite() -> None:
    alice = await sync_to_async(make_user)("alice")
    _, raw_key = await sync_to_async(apikey_create)(user=alice)

    with mock.patch.object(SyncToAsync, "__call__", autospec=True,
                           side_effect=SyncToAsync.__call__) as hop:
        first = await aauthenticate_key(raw_key)
        misses = hop.call_count
        second = await aauthenticate_key(raw_key)

    assert first.pk == second.pk == alice.pk
    # A miss: one statement on the loop (PostgreSQL), one hop to the ORM (SQLite); a hit: none.
    assert misses == (0 if HAS_POSTGRES else 1)
    assert hop.call_count == misses


async def test_aauthenticate_key_without_a_key_raises_missing() -> None:
    with pytest.raises(ApiKeyError) as raised:
        await aauthenticate_key("")

    assert raised.value.message == "Missing API key"


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_worker_connections")
async def test_aauthenticate_key_with_a_revoked_key_raises_invalid() -> None:
    alice = await sync_to_async(make_user)("alice")
    apikey, raw_key = await sync_to_async(apikey_create)(user=alice)
    await aauthenticate_key(raw_key)
    await sync_to_async(apikey_revoke)(prefix=apikey.prefix)

    with pytest.raises(ApiKeyError) as raised:
        await aauthenticate_key(raw_key)

    assert raised.value.message == "Invalid API key"
