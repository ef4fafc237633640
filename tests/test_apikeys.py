"""The API-key service: keys exist only hashed, revocation is immediate here, use is recorded
about once a minute, and the per-process auth cache is bounded and expires."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from spaces.apikeys import (
    LAST_USED_RESOLUTION,
    AuthCache,
    apikey_authenticate,
    apikey_create,
    apikey_rename,
    apikey_revoke,
    apikey_touch,
    auth_cache,
    hash_key,
)
from spaces.models import ApiKey

KEY_SHAPE = re.compile(r"^stello_(?P<prefix>[A-Za-z0-9]{8})_(?P<secret>[A-Za-z0-9]{43})$")


@pytest.fixture(autouse=True)
def empty_auth_cache() -> Iterator[None]:
    auth_cache.clear()
    yield
    auth_cache.clear()


def test_a_new_key_reads_stello_prefix_secret_and_its_prefix_names_the_row(alice) -> None:
    apikey, raw_key = apikey_create(user=alice, name="laptop")

    match = KEY_SHAPE.match(raw_key)
    assert match is not None
    assert apikey.prefix == match["prefix"]
    assert apikey.name == "laptop"
    assert apikey.user == alice
    assert apikey.revoked is False
    assert apikey.last_used_at is None


def test_the_database_keeps_only_the_hash_of_a_key_never_the_key(alice) -> None:
    apikey, raw_key = apikey_create(user=alice)
    secret = KEY_SHAPE.match(raw_key)["secret"]

    dump = io.StringIO()
    call_command("dumpdata", stdout=dump)

    assert raw_key not in dump.getvalue()
    assert secret not in dump.getvalue()
    assert ApiKey.objects.get().key_hash == hash_key(raw_key) == apikey.key_hash


def test_two_keys_never_share_a_prefix_or_a_secret(alice) -> None:
    keys = [apikey_create(user=alice)[1] for _ in range(5)]

    assert len({KEY_SHAPE.match(k)["prefix"] for k in keys}) == 5
    assert len({KEY_SHAPE.match(k)["secret"] for k in keys}) == 5


def test_a_key_authenticates_as_its_owner(alice) -> None:
    apikey, raw_key = apikey_create(user=alice)

    assert apikey_authenticate(raw_key) == (alice, apikey)


@pytest.mark.parametrize(
    "raw_key",
    ["", "nonsense", "stello_", "stello_AAAAAAAA_" + "B" * 43, "x" * 10_000],
    ids=["empty", "not-our-shape", "bare-start", "well-formed-but-unknown", "huge"],
)
def test_a_key_that_was_never_issued_authenticates_nobody(alice, raw_key: str) -> None:
    apikey_create(user=alice)

    assert apikey_authenticate(raw_key) is None


def test_a_revoked_key_authenticates_nobody(alice) -> None:
    apikey, raw_key = apikey_create(user=alice)

    revoked = apikey_revoke(prefix=apikey.prefix)

    assert revoked.revoked is True
    assert ApiKey.objects.get().revoked is True
    assert apikey_authenticate(raw_key) is None


def test_a_key_of_a_deactivated_user_authenticates_nobody(alice) -> None:
    _, raw_key = apikey_create(user=alice)
    alice.is_active = False
    alice.save()

    assert apikey_authenticate(raw_key) is None


def test_revoking_an_unknown_prefix_raises_does_not_exist(db) -> None:
    with pytest.raises(ApiKey.DoesNotExist):
        apikey_revoke(prefix="nosuchpf")


def test_revoking_twice_is_harmless(alice) -> None:
    apikey, _ = apikey_create(user=alice)
    apikey_revoke(prefix=apikey.prefix)

    assert apikey_revoke(prefix=apikey.prefix).revoked is True


def test_revoking_drops_the_key_from_this_process_auth_cache(alice) -> None:
    apikey, raw_key = apikey_create(user=alice)
    auth_cache.put(hash_key(raw_key), (alice, apikey))

    apikey_revoke(prefix=apikey.prefix)

    assert auth_cache.get(hash_key(raw_key)) is None


def test_renaming_a_key_changes_only_its_name(alice) -> None:
    apikey, raw_key = apikey_create(user=alice, name="old")

    apikey_rename(apikey=apikey, name="new")

    stored = ApiKey.objects.get()
    assert (stored.name, stored.key_hash) == ("new", hash_key(raw_key))


def test_first_authentication_records_the_use_with_one_update(
    alice, django_assert_num_queries
) -> None:
    _, raw_key = apikey_create(user=alice)

    with django_assert_num_queries(2) as captured:  # the lookup, then the last-used UPDATE
        apikey_authenticate(raw_key)

    assert captured.captured_queries[1]["sql"].upper().startswith("UPDATE")
    assert ApiKey.objects.get().last_used_at is not None


def test_use_within_a_minute_is_not_written_again(alice, django_assert_num_queries) -> None:
    _, raw_key = apikey_create(user=alice)
    apikey_authenticate(raw_key)
    first_use = ApiKey.objects.get().last_used_at

    with django_assert_num_queries(1):  # the lookup only
        apikey_authenticate(raw_key)

    assert ApiKey.objects.get().last_used_at == first_use


def test_use_after_a_minute_is_written_again(alice, django_assert_num_queries) -> None:
    apikey, raw_key = apikey_create(user=alice)
    long_ago = timezone.now() - LAST_USED_RESOLUTION - timedelta(seconds=1)
    ApiKey.objects.filter(pk=apikey.pk).update(last_used_at=long_ago)

    with django_assert_num_queries(2):
        apikey_authenticate(raw_key)

    assert ApiKey.objects.get().last_used_at > long_ago


def test_touch_does_not_overwrite_a_more_recent_use_recorded_elsewhere(alice) -> None:
    apikey, _ = apikey_create(user=alice)
    now = timezone.now()
    ApiKey.objects.filter(pk=apikey.pk).update(last_used_at=now)  # another process just wrote

    apikey_touch(apikey=apikey, now=now + timedelta(seconds=5))  # this copy still says None

    assert ApiKey.objects.get().last_used_at == now


def test_the_auth_cache_forgets_entries_after_its_ttl(alice, settings) -> None:
    settings.STELLO = {**settings.STELLO, "AUTH_CACHE_SECONDS": 5}
    clock = [1000.0]
    cache = AuthCache(clock=lambda: clock[0])
    apikey, _ = apikey_create(user=alice)
    cache.put("h", (alice, apikey))

    clock[0] += 4.9
    assert cache.get("h") == (alice, apikey)
    clock[0] += 0.2
    assert cache.get("h") is None
    assert len(cache) == 0


def test_a_zero_ttl_disables_the_auth_cache(alice, settings) -> None:
    settings.STELLO = {**settings.STELLO, "AUTH_CACHE_SECONDS": 0}
    cache = AuthCache()
    apikey, _ = apikey_create(user=alice)

    cache.put("h", (alice, apikey))

    assert cache.get("h") is None
    assert len(cache) == 0


def test_the_auth_cache_is_bounded_and_drops_its_oldest_entry_first(alice) -> None:
    cache = AuthCache(max_entries=3)
    apikey, _ = apikey_create(user=alice)

    for key_hash in ("a", "b", "c", "d"):
        cache.put(key_hash, (alice, apikey))

    assert len(cache) == 3
    assert cache.get("a") is None
    assert all(cache.get(h) is not None for h in ("b", "c", "d"))


def test_the_auth_cache_drops_expired_entries_before_live_ones_when_full(alice) -> None:
    clock = [0.0]
    cache = AuthCache(max_entries=2, clock=lambda: clock[0])
    apikey, _ = apikey_create(user=alice)
    cache.put("old", (alice, apikey))
    clock[0] += 4.0
    cache.put("live", (alice, apikey))
    clock[0] += 2.0  # "old" has expired, "live" has not

    cache.put("new", (alice, apikey))

    assert cache.get("live") is not None
    assert cache.get("new") is not None
