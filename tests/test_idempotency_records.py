"""The pieces of `spaces.idempotency`: key rules, fingerprints, what is stored, and the records
store of the configured database (hand-written SQL on PostgreSQL, the ORM on SQLite)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from spaces import idempotency
from spaces.errors import InvalidIdempotencyKey
from spaces.idempotency import Answer, Request, fingerprint, parse_key, records, storable
from spaces.models import IdempotencyRecord


@pytest.mark.parametrize("key", ["a", "K" * 255, "order 42", "~!#$%&'()*+,-./:;<=>?@[]^_`{|}"])
def test_visible_ascii_keys_up_to_255_characters_are_accepted(key: str) -> None:
    assert parse_key(key) == key


@pytest.mark.parametrize("key", ["", "   ", "K" * 256, "naïve", "a\nb", "a\tb", "\x00", None, 5])
def test_other_keys_are_refused(key: object) -> None:
    with pytest.raises(InvalidIdempotencyKey) as refused:
        parse_key(key)
    assert (refused.value.status, refused.value.code) == (400, "INVALID_IDEMPOTENCY_KEY")


def test_the_fingerprint_covers_method_path_and_body_without_ambiguity() -> None:
    base = fingerprint("POST", "/spaces", b'{"label":"a"}')
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert base == fingerprint("POST", "/spaces", b'{"label":"a"}')
    assert len({base, fingerprint("PUT", "/spaces", b'{"label":"a"}'),
                fingerprint("POST", "/spaces/", b'{"label":"a"}'),
                fingerprint("POST", "/spaces", b'{"label":"b"}')}) == 4
    assert fingerprint("POST", "/a", b"b") != fingerprint("POST", "/ab", b"")


def test_success_and_lasting_client_errors_are_stored_retryable_answers_are_not() -> None:
    assert [s for s in (200, 201, 204, 400, 403, 404, 413, 422) if storable(s)] == [
        200, 201, 204, 400, 403, 404, 413, 422]
    assert [s for s in (408, 409, 425, 429, 500, 502, 503, 302, 100) if storable(s)] == []


def test_the_hand_written_sql_names_only_model_columns() -> None:
    columns = {f.column for f in IdempotencyRecord._meta.concrete_fields}
    assert IdempotencyRecord._meta.db_table == "idempotency_records"
    assert set(idempotency._COLUMNS) <= columns
    for sql in (idempotency._SELECT, idempotency._UPSERT, idempotency._SWEEP):
        assert "idempotency_records" in sql
        named = set(re.findall(r"\b([a-z_]+)\b", sql)) - {
            "idempotency_records", "on", "s", "excluded"}
        assert named - columns - {"select", "from", "where", "and", "insert", "into", "values",
                                  "conflict", "do", "update", "set", "delete"} == set(), sql


def request(user_id: int, key: str, fp: str = "f" * 64) -> Request:
    return Request(user_id, key, "POST", "/spaces", fp)


@pytest.mark.django_db(transaction=True)
async def test_the_records_store_gets_puts_and_sweeps(alice, bob) -> None:
    store = records()
    now = timezone.now()
    assert await store.aget(alice.id, "k", now=now) is None

    await store.aput(request(alice.id, "k"), Answer(201, "application/json", b'{"a":1}'),
                     now=now)
    await store.aput(request(bob.id, "k", "e" * 64), Answer(400, "application/json", b"{}"),
                     now=now)

    assert await store.aget(alice.id, "k", now=now) == (
        "f" * 64, Answer(201, "application/json", b'{"a":1}'))
    assert await store.aget(bob.id, "k", now=now) == ("e" * 64,
                                                      Answer(400, "application/json", b"{}"))
    ttl = idempotency.ttl()
    assert await store.aget(alice.id, "k", now=now + ttl) is None  # expired: not replayed

    # An expired key is taken over by the next answer.
    await store.aput(request(alice.id, "k", "d" * 64), Answer(200, "text/plain", b"x"),
                     now=now + ttl)
    assert await store.aget(alice.id, "k", now=now + ttl) == ("d" * 64,
                                                              Answer(200, "text/plain", b"x"))

    assert await store.asweep(now=now + ttl) == 1  # bob's
    assert await store.asweep(now=now + ttl) == 0
    assert await store.aget(alice.id, "k", now=now + ttl) is not None


@pytest.mark.django_db
def test_the_command_sweeps_only_expired_records(alice) -> None:
    from io import StringIO

    from django.core.management import call_command

    now = timezone.now()
    for key, expires in (("old", now - timedelta(seconds=1)), ("live", now + timedelta(hours=1))):
        IdempotencyRecord.objects.create(user=alice, key=key, fingerprint="0" * 64,
                                         method="POST", path="/spaces", status=201, body=b"{}",
                                         created_at=now, expires_at=expires)
    out = StringIO()
    call_command("sweepidempotencykeys", stdout=out)
    assert out.getvalue() == "Deleted 1 expired idempotency record(s).\n"
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["live"]


@pytest.mark.django_db
def test_the_admin_lists_records_read_only(admin_client, alice) -> None:
    now = timezone.now()
    record = IdempotencyRecord.objects.create(
        user=alice, key="order-7", fingerprint="0" * 64, method="POST", path="/spaces",
        status=201, body=b'{"secret": 1}', created_at=now, expires_at=now + timedelta(days=1))

    listing = admin_client.get("/admin/spaces/idempotencyrecord/")
    detail = admin_client.get(f"/admin/spaces/idempotencyrecord/{record.pk}/change/")

    assert listing.status_code == 200 and b"order-7" in listing.content
    assert detail.status_code == 200 and b"secret" not in detail.content
    assert admin_client.get("/admin/spaces/idempotencyrecord/add/").status_code == 403
    admin_client.post(f"/admin/spaces/idempotencyrecord/{record.pk}/change/",
                      {"key": "forged", "status": 200})
    assert IdempotencyRecord.objects.get(pk=record.pk).key == "order-7"
