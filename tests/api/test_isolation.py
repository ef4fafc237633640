"""Tenant isolation of the session routes: bob can neither read nor change anything of alice's.

Two ways in are tried on every route: alice's space id in the URL (403, the space is not his)
and bob's own space id with one of alice's session ids (404 `Session not found`, as if the
session did not exist). Afterwards alice's data must be exactly as it was.
"""

from __future__ import annotations

from typing import Any

import pytest

from sessions_app.models import Record, Session, SessionData, TopologyNode

from .conftest import (
    HOT_PATH_DB,
    MEMORY_SLOTS,
    SLOTS,
    WRITABLE_SLOTS,
    SessionApi,
    create_space,
    root_of,
)

pytestmark = HOT_PATH_DB

# (method, route suffix, JSON body): every session-scoped route that must be refused.
SESSION_ROUTES: list[tuple[str, str, Any]] = [
    ("get", "", None),
    ("get", "messages", None),
    ("post", "turn", {"input": "tell me alice's secrets"}),
    ("post", "fork", {"label": "stolen", "context": "inherit"}),
    ("post", "archive", None),
    ("post", "unarchive", None),
    ("post", "consolidate", None),
    *[("get", slot, None) for slot in SLOTS],
    *[("put", slot, {"content": "pwned"}) for slot in WRITABLE_SLOTS],
]
ROUTE_IDS = [f"{method} {suffix or 'meta'}" for method, suffix, _ in SESSION_ROUTES]


def call(client, method: str, path: str, body: Any):
    if body is None:
        return getattr(client, method)(path)
    return getattr(client, method)(path, body, format="json")


def snapshot(space_id: str) -> dict[str, Any]:
    """Everything of a space's session tree that a request could change."""
    sessions = Session.objects.filter(space_id=space_id)
    return {
        "sessions": sorted(sessions.values_list("id", "label", "status", "turn_count",
                                                "updated_at", "last_active_at")),
        "nodes": sorted(TopologyNode.objects.filter(space_id=space_id)
                        .values_list("session_id", "parent_id", "index")),
        "records": list(Record.objects.filter(session__space_id=space_id)
                        .values_list("id", "session_id", "role", "content")),
        "slots": sorted(SessionData.objects.filter(session__space_id=space_id)
                        .values_list("session_id", "key", "content", "updated_at")),
    }


@pytest.fixture
def alice_child(api, root_id) -> str:
    """A child of alice's with some history and slots, so there is something to steal."""
    child = api.child(root_id, "Alice's private branch", scope="secret plans")
    api.said(child["id"], "my secret is 42")
    api.put_slot(child["id"], "consolidate-prompt", {"content": "alice's prompt"})
    SessionData.objects.create(session_id=child["id"], key="memory", content="alice's memory")
    SessionData.objects.create(session_id=child["id"], key="insight", content="alice's insight")
    return child["id"]


@pytest.fixture
def bob_space(bob_client) -> dict[str, Any]:
    return create_space(bob_client, label="Bob's space", systemPrompt="Bob's prompt")


class TestAnotherUsersSpace:
    @pytest.mark.parametrize(("method", "suffix", "body"), SESSION_ROUTES, ids=ROUTE_IDS)
    @pytest.mark.parametrize("target", ["root", "child"])
    def test_every_session_route_of_alices_space_is_403_for_bob(
        self, api, bob_client, bob_space, root_id, alice_child, method, suffix, body, target
    ) -> None:
        space_id = api.space_id
        before = snapshot(space_id)
        session_id = root_id if target == "root" else alice_child
        response = call(bob_client, method, SessionApi(bob_client, space_id).path(
            session_id, suffix), body)
        assert response.status_code == 403
        assert response.json()["error"] == "Forbidden"
        assert snapshot(space_id) == before

    @pytest.mark.parametrize("name", MEMORY_SLOTS)
    def test_memory_slot_writes_are_403_before_anything_else(
        self, api, bob_client, bob_space, alice_child, name
    ) -> None:
        before = snapshot(api.space_id)
        response = SessionApi(bob_client, api.space_id).put_slot(alice_child, name,
                                                                 {"content": "x"})
        assert response.status_code == 403
        assert snapshot(api.space_id) == before

    def test_the_tree_and_integration_of_alices_space_are_403_for_bob(
        self, api, bob_client, bob_space, alice_child
    ) -> None:
        before = snapshot(api.space_id)
        bob = SessionApi(bob_client, api.space_id)
        assert bob.tree().status_code == 403
        assert bob_client.post(f"/spaces/{api.space_id}/integrate").status_code == 403
        assert snapshot(api.space_id) == before

    def test_bobs_space_is_equally_closed_to_alice(
        self, alice_client, bob_space
    ) -> None:
        alice = SessionApi(alice_client, bob_space["id"])
        bob_root = root_of(bob_space["id"])
        assert alice.tree().status_code == 403
        assert alice.messages(bob_root).status_code == 403
        assert alice.turn(bob_root, "hi").status_code == 403
        assert not Record.objects.filter(session_id=bob_root).exists()


class TestOwnSpaceWithAnotherUsersSession:
    @pytest.mark.parametrize(("method", "suffix", "body"), SESSION_ROUTES, ids=ROUTE_IDS)
    @pytest.mark.parametrize("target", ["root", "child"])
    def test_every_session_route_is_404_with_alices_session_in_bobs_space(
        self, api, bob_client, bob_space, root_id, alice_child, method, suffix, body, target
    ) -> None:
        before = snapshot(api.space_id)
        bobs_before = snapshot(bob_space["id"])
        session_id = root_id if target == "root" else alice_child
        response = call(bob_client, method, SessionApi(bob_client, bob_space["id"]).path(
            session_id, suffix), body)
        assert response.status_code == 404
        assert response.json()["error"] == "Session not found"
        assert snapshot(api.space_id) == before
        assert snapshot(bob_space["id"]) == bobs_before

    def test_memory_slot_writes_through_bobs_space_are_404_and_touch_nothing(
        self, api, bob_client, bob_space, alice_child
    ) -> None:
        before = snapshot(api.space_id)
        bob = SessionApi(bob_client, bob_space["id"])
        for name in MEMORY_SLOTS:
            response = bob.put_slot(alice_child, name, {"content": "forged"})
            assert response.status_code == 404
            assert response.json()["error"] == "Session not found"
        assert snapshot(api.space_id) == before

    def test_bob_forking_alices_session_into_his_space_gets_nothing_of_hers(
        self, api, bob_client, bob_space, alice_child
    ) -> None:
        bob = SessionApi(bob_client, bob_space["id"])
        assert bob.fork(alice_child, label="copy", context="inherit").status_code == 404
        assert Session.objects.filter(space_id=bob_space["id"]).count() == 1
        assert not Record.objects.filter(session__space_id=bob_space["id"]).exists()

    def test_alices_own_session_through_her_other_space_is_404_too(
        self, api, alice_client, alice_child
    ) -> None:
        other = create_space(alice_client, label="Alice's other space")
        before = snapshot(api.space_id)
        path_api = SessionApi(alice_client, other["id"])
        for method, suffix, body in SESSION_ROUTES:
            response = call(alice_client, method, path_api.path(alice_child, suffix), body)
            assert response.status_code == 404, (method, suffix, response.content)
        assert snapshot(api.space_id) == before

    def test_bobs_own_session_routes_work_meanwhile(self, bob_client, bob_space) -> None:
        bob = SessionApi(bob_client, bob_space["id"])
        bob_root = root_of(bob_space["id"])
        assert bob.said(bob_root, "hi")["finalContent"] == "echo: hi"
        assert bob.slot(bob_root, "system-prompt").json() == {"content": "Bob's prompt"}
