"""`Idempotency-Key` on the mutating REST routes (in process; SQLite or PostgreSQL).

alice owns `space`; bob owns nothing of alice's and uses the same keys independently.
The multi-process guarantee (50 concurrent requests, two servers) is in
`test_idempotency_multiprocess.py`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from sessions_app.models import Record, Session
from spaces import idempotency
from spaces.models import IdempotencyRecord, Space

from .conftest import HOT_PATH_DB, SessionApi

pytestmark = HOT_PATH_DB


def post(client: APIClient, path: str, body: Any = None, *, key: str | None) -> Any:
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.post(path, body if body is not None else {}, format="json", headers=headers)


def turn_path(api: SessionApi, session_id: str) -> str:
    return api.path(session_id, "turn")


def history(session_id: str) -> list[tuple[str, str]]:
    return list(Record.objects.filter(session_id=session_id).order_by("id")
                .values_list("role", "content"))


def test_a_retried_turn_replays_the_stored_answer_without_running_again(
        api: SessionApi, root_id: str) -> None:
    first = post(api.client, turn_path(api, root_id), {"input": "hello"}, key="turn-1")
    assert first.status_code == 200, first.content
    assert "Idempotent-Replayed" not in first.headers

    again = post(api.client, turn_path(api, root_id), {"input": "hello"}, key="turn-1")

    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Content-Type"] == first.headers["Content-Type"]
    assert again.content == first.content
    assert history(root_id) == [("user", "hello"), ("assistant", "echo: hello")]
    assert Session.objects.get(pk=root_id).turn_count == 1


def test_the_same_key_with_another_body_is_refused_and_runs_nothing(
        api: SessionApi, root_id: str) -> None:
    assert post(api.client, turn_path(api, root_id), {"input": "a"}, key="k").status_code == 200

    other_body = post(api.client, turn_path(api, root_id), {"input": "b"}, key="k")
    other_path = post(api.client, api.path(root_id, "fork"), {"label": "x"}, key="k")

    for response in (other_body, other_path):
        assert response.status_code == 422
        assert response.json() == {
            "error": "This Idempotency-Key was already used for a different request",
            "code": "IDEMPOTENCY_KEY_REUSED"}
    assert history(root_id) == [("user", "a"), ("assistant", "echo: a")]
    assert Session.objects.filter(space_id=api.space_id).count() == 1


def test_a_method_the_route_lacks_is_405_even_with_a_used_key(
        api: SessionApi, root_id: str) -> None:
    assert post(api.client, turn_path(api, root_id), {"input": "a"}, key="k").status_code == 200
    # POST on the system prompt (it has GET and PUT), with the key of another request: the
    # route's 405 comes first, not the key's 422.
    response = post(api.client, api.path(root_id, "system-prompt"), {"content": "x"}, key="k")
    assert response.status_code == 405, response.content


def test_requests_without_a_key_run_every_time(api: SessionApi, root_id: str) -> None:
    for _ in range(2):
        response = post(api.client, turn_path(api, root_id), {"input": "again"}, key=None)
        assert response.status_code == 200
        assert "Idempotent-Replayed" not in response.headers
    assert len(history(root_id)) == 4
    assert not IdempotencyRecord.objects.exists()


def test_a_key_on_a_read_is_ignored(api: SessionApi, root_id: str) -> None:
    response = api.client.get(api.path(root_id), headers={"Idempotency-Key": ""})
    assert response.status_code == 200
    assert not IdempotencyRecord.objects.exists()


@pytest.mark.parametrize("key", ["", " ", "x" * 256, "clé", "tab\there", "line\x7f"])
def test_malformed_keys_are_refused_before_anything_runs(
        api: SessionApi, root_id: str, key: str) -> None:
    response = post(api.client, turn_path(api, root_id), {"input": "hi"}, key=key)

    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_IDEMPOTENCY_KEY"
    assert history(root_id) == []
    assert not IdempotencyRecord.objects.exists()


def test_a_key_of_255_visible_characters_is_accepted(api: SessionApi, root_id: str) -> None:
    key = "K" * 254 + "~"
    assert post(api.client, turn_path(api, root_id), {"input": "x"}, key=key).status_code == 200
    replay = post(api.client, turn_path(api, root_id), {"input": "x"}, key=key)
    assert replay.headers["Idempotent-Replayed"] == "true"


def test_create_space_once(alice_client: APIClient) -> None:
    first = post(alice_client, "/spaces", {"label": "Once"}, key="space-1")
    again = post(alice_client, "/spaces", {"label": "Once"}, key="space-1")

    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert Space.objects.filter(label="Once").count() == 1


def test_fork_archive_and_delete_once(api: SessionApi, root_id: str) -> None:
    forks = [post(api.client, api.path(root_id, "fork"), {"label": "c"}, key="fork")
             for _ in range(2)]
    assert [f.status_code for f in forks] == [201, 201]
    assert forks[0].json() == forks[1].json()
    child = forks[0].json()["id"]
    assert Session.objects.filter(space_id=api.space_id).count() == 2

    archives = [post(api.client, api.path(child, "archive"), key="archive") for _ in range(2)]
    assert archives[0].status_code == 200
    assert archives[1].content == archives[0].content
    assert archives[1].headers["Idempotent-Replayed"] == "true"

    path = f"/spaces/{api.space_id}"
    deletes = [api.client.delete(path, headers={"Idempotency-Key": "del"}) for _ in range(2)]
    assert [d.status_code for d in deletes] == [deletes[0].status_code] * 2
    assert 200 <= deletes[0].status_code < 300
    assert deletes[1].headers["Idempotent-Replayed"] == "true"
    assert not Space.objects.filter(pk=api.space_id).exists()


def test_a_client_error_is_stored_and_replayed(api: SessionApi, root_id: str) -> None:
    bad = post(api.client, turn_path(api, root_id), {"input": 5}, key="bad")
    again = post(api.client, turn_path(api, root_id), {"input": 5}, key="bad")

    assert bad.status_code == again.status_code == 400
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == bad.json()


def test_a_conflict_is_not_stored_so_the_key_can_be_retried(
        api: SessionApi, root_id: str) -> None:
    child = api.child(root_id, "c")["id"]
    assert api.archive(child).status_code == 200
    busy = post(api.client, turn_path(api, child), {"input": "hi"}, key="retry-me")
    assert busy.status_code == 409
    assert not IdempotencyRecord.objects.exists()

    assert api.unarchive(child).status_code == 200
    ran = post(api.client, turn_path(api, child), {"input": "hi"}, key="retry-me")
    assert ran.status_code == 200
    assert "Idempotent-Replayed" not in ran.headers
    assert history(child)[-2:] == [("user", "hi"), ("assistant", "echo: hi")]


def test_a_server_error_is_not_stored(api: SessionApi, root_id: str, use_llm) -> None:
    from .conftest import closed_port, openai_llm

    use_llm(openai_llm(f"http://127.0.0.1:{closed_port()}/v1"))
    failed = post(api.client, turn_path(api, root_id), {"input": "hi"}, key="k5")
    assert failed.status_code >= 500, failed.content
    assert not IdempotencyRecord.objects.exists()
    assert history(root_id) == []  # the failed turn saved nothing: running it again is right

    use_llm(None)
    ran = post(api.client, turn_path(api, root_id), {"input": "hi"}, key="k5")
    assert ran.status_code == 200
    assert "Idempotent-Replayed" not in ran.headers


def test_keys_are_per_user(api: SessionApi, root_id: str, bob_client: APIClient) -> None:
    assert post(api.client, turn_path(api, root_id), {"input": "a"}, key="shared").status_code \
        == 200

    bobs = post(bob_client, "/spaces", {"label": "Bob's"}, key="shared")
    bobs_again = post(bob_client, "/spaces", {"label": "Bob's"}, key="shared")
    # bob cannot replay alice's answer by reusing her key on her route: the route answers 403.
    intruder = post(bob_client, turn_path(api, root_id), {"input": "a"}, key="shared")

    assert bobs.status_code == 201 and "Idempotent-Replayed" not in bobs.headers
    assert bobs_again.headers["Idempotent-Replayed"] == "true"
    assert intruder.status_code == 403
    assert "Idempotent-Replayed" not in intruder.headers
    assert IdempotencyRecord.objects.filter(key="shared").count() == 2


def test_an_expired_key_runs_again_and_the_sweep_deletes_expired_records(
        api: SessionApi, root_id: str) -> None:
    assert post(api.client, turn_path(api, root_id), {"input": "a"}, key="old").status_code \
        == 200
    assert post(api.client, turn_path(api, root_id), {"input": "a"}, key="new").status_code \
        == 200
    IdempotencyRecord.objects.filter(key="old").update(
        expires_at=timezone.now() - timedelta(seconds=1))

    again = post(api.client, turn_path(api, root_id), {"input": "a"}, key="old")
    assert again.status_code == 200 and "Idempotent-Replayed" not in again.headers
    assert len(history(root_id)) == 6  # three turns: the expired key ran again
    assert IdempotencyRecord.objects.get(key="old").expires_at > timezone.now()

    IdempotencyRecord.objects.filter(key="old").update(
        expires_at=timezone.now() - timedelta(seconds=1))
    call_command("sweepidempotencykeys")
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["new"]


def test_a_record_lives_for_the_configured_ttl(api: SessionApi, root_id: str, settings) -> None:
    settings.STELLO = {**settings.STELLO, "IDEMPOTENCY_KEY_TTL_SECONDS": 600}
    before = timezone.now()
    post(api.client, turn_path(api, root_id), {"input": "a"}, key="ttl")
    record = IdempotencyRecord.objects.get(key="ttl")
    assert timedelta(seconds=599) < record.expires_at - before < timedelta(seconds=610)
    assert record.method == "POST" and record.path == turn_path(api, root_id)


def test_storing_an_answer_sweeps_expired_records_at_most_once_an_interval(
        api: SessionApi, root_id: str, alice, monkeypatch) -> None:
    now = timezone.now()
    IdempotencyRecord.objects.create(
        user=alice, key="stale", fingerprint="0" * 64, method="POST", path="/x", status=200,
        body=b"{}", created_at=now - timedelta(days=2), expires_at=now - timedelta(days=1))
    monkeypatch.setattr(idempotency, "_next_sweep", 0.0)

    post(api.client, turn_path(api, root_id), {"input": "a"}, key="fresh")

    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["fresh"]
    IdempotencyRecord.objects.create(
        user=alice, key="stale2", fingerprint="0" * 64, method="POST", path="/x", status=200,
        body=b"{}", created_at=now - timedelta(days=2), expires_at=now - timedelta(days=1))
    post(api.client, turn_path(api, root_id), {"input": "b"}, key="fresh2")
    # Within the interval: no second sweep.
    assert IdempotencyRecord.objects.filter(key="stale2").exists()


def test_a_keyed_body_over_the_limit_is_413_not_500(api: SessionApi, root_id: str,
                                                     settings) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    response = post(api.client, turn_path(api, root_id), {"input": "x" * 2000}, key="big")
    assert response.status_code == 413
    assert response.json()["code"] == "PAYLOAD_TOO_LARGE"
    assert history(root_id) == []


def test_a_bad_key_on_another_users_space_answers_as_without_a_key(
        api: SessionApi, bob_client: APIClient) -> None:
    path = f"/spaces/{api.space_id}"
    for method in ("patch", "delete"):
        response = getattr(bob_client, method)(path, {"label": "mine"}, format="json",
                                               headers={"Idempotency-Key": ""})
        assert response.status_code == 403, (method, response.content)
    unknown = bob_client.patch("/spaces/nope", {}, format="json", headers={"Idempotency-Key": ""})
    assert unknown.status_code == 404
    own = api.client.patch(path, {"label": "x"}, format="json", headers={"Idempotency-Key": ""})
    assert own.status_code == 400
    assert Space.objects.get(pk=api.space_id).label == "Research"
