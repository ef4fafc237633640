"""REST /spaces: shapes, status codes, validation, side effects and tenant isolation."""

from __future__ import annotations

import re
import uuid

import pytest

from sessions_app.models import CoreData, Record, Session, SessionData, TopologyNode
from spaces.models import Space
from tests.conftest import HOT_PATH_DB

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SPACE_KEYS = ["id", "userId", "label", "systemPrompt", "consolidatePrompt", "integratePrompt",
              "config", "createdAt", "updatedAt"]


def create_space(client, **body):
    response = client.post("/spaces", body or {"label": "S"}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def root_of(space_id: str) -> Session:
    return Session.objects.get(space_id=space_id, role="main")


@HOT_PATH_DB
class TestCreate:
    def test_creating_a_space_returns_the_space_json(self, alice, alice_client) -> None:
        body = create_space(alice_client, label="Test Space", systemPrompt="Be helpful",
                            consolidatePrompt="C", integratePrompt="I", config={"a": 1})
        assert list(body) == SPACE_KEYS
        assert body["label"] == "Test Space"
        assert body["userId"] == str(alice.id)
        assert (body["systemPrompt"], body["consolidatePrompt"], body["integratePrompt"]) == (
            "Be helpful", "C", "I")
        assert body["config"] == {"a": 1}
        assert uuid.UUID(body["id"])
        assert TIMESTAMP.match(body["createdAt"]) and TIMESTAMP.match(body["updatedAt"])

    def test_creating_a_space_creates_its_root_session_node_and_prompt_slot(
        self, alice_client
    ) -> None:
        body = create_space(alice_client, label="Tree", systemPrompt="You are helpful.")
        root = root_of(body["id"])
        assert (root.label, root.role, root.status, root.turn_count) == ("Tree", "main",
                                                                          "active", 0)
        node = TopologyNode.objects.get(session=root)
        assert (node.parent_id, node.depth, node.index, node.label) == (None, 0, 0, "Tree")
        slots = dict(SessionData.objects.filter(session=root).values_list("key", "content"))
        assert slots == {"system_prompt": "You are helpful."}

    def test_a_space_without_prompts_has_nulls_and_no_prompt_slot(self, alice_client) -> None:
        body = create_space(alice_client, label="Minimal")
        assert body["systemPrompt"] is None and body["config"] == {}
        assert not SessionData.objects.filter(session=root_of(body["id"])).exists()

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            ({}, "label is required"),
            ({"label": ""}, "label must not be empty"),
            ({"label": None}, "label must be a string"),
            ({"label": 42}, "label must be a string"),
            ({"label": "x", "systemPrompt": 3}, "systemPrompt must be a string or null"),
            ({"label": "x", "consolidatePrompt": ["a"]},
             "consolidatePrompt must be a string or null"),
            ({"label": "x", "config": []}, "config must be an object"),
            ({"label": "x", "config": "a"}, "config must be an object"),
            ([1, 2], "Request body must be a JSON object"),
            ("label", "Request body must be a JSON object"),
        ],
    )
    def test_invalid_bodies_are_rejected_with_400_and_create_nothing(
        self, alice_client, body, message
    ) -> None:
        response = alice_client.post("/spaces", body, format="json")
        assert response.status_code == 400
        assert response.json()["error"] == message
        assert Space.objects.count() == 0 and Session.objects.count() == 0

    def test_malformed_json_is_a_400_even_without_a_json_content_type(self, alice_client) -> None:
        for content_type in ("application/json", "text/plain"):
            response = alice_client.post("/spaces", "not-json", content_type=content_type)
            assert response.status_code == 400
            assert response.json()["error"] == "Invalid JSON body"
        assert Space.objects.count() == 0

    def test_a_json_body_is_parsed_whatever_the_content_type(self, alice_client) -> None:
        response = alice_client.post("/spaces", '{"label": "plain"}', content_type="text/plain")
        assert response.status_code == 201 and response.json()["label"] == "plain"

    def test_nul_characters_are_refused_up_front(self, alice_client) -> None:
        response = alice_client.post("/spaces", {"label": "a\x00b"}, format="json")
        assert response.status_code == 400
        assert Space.objects.count() == 0

    def test_a_trailing_slash_is_accepted(self, alice_client) -> None:
        assert alice_client.post("/spaces/", {"label": "s"}, format="json").status_code == 201
        assert alice_client.get("/spaces/").status_code == 200


@HOT_PATH_DB
class TestReadAndList:
    def test_list_returns_own_spaces_in_creation_order(self, alice_client) -> None:
        create_space(alice_client, label="Space 1")
        create_space(alice_client, label="Space 2")
        response = alice_client.get("/spaces")
        assert response.status_code == 200
        assert [s["label"] for s in response.json()] == ["Space 1", "Space 2"]

    def test_users_never_see_each_others_spaces(self, alice_client, bob_client) -> None:
        create_space(alice_client, label="My Space")
        assert bob_client.get("/spaces").json() == []

    def test_get_returns_the_space(self, alice_client) -> None:
        space = create_space(alice_client, label="Detail")
        response = alice_client.get(f"/spaces/{space['id']}")
        assert response.status_code == 200 and response.json() == space

    @pytest.mark.parametrize("space_id", [str(uuid.UUID(int=0)), "not-a-uuid", "123"])
    def test_unknown_or_malformed_ids_are_404(self, alice_client, space_id) -> None:
        for method in ("get", "patch", "delete"):
            response = getattr(alice_client, method)(f"/spaces/{space_id}")
            assert response.status_code == 404
            assert response.json()["error"] == "Space not found"

    def test_another_users_space_is_403_for_every_method(self, alice_client, bob_client) -> None:
        space = create_space(alice_client, label="Private", systemPrompt="secret")
        path = f"/spaces/{space['id']}"
        assert bob_client.get(path).status_code == 403
        response = bob_client.patch(path, {"label": "pwned", "systemPrompt": None}, format="json")
        assert response.status_code == 403 and response.json()["error"] == "Forbidden"
        assert bob_client.delete(path).status_code == 403
        stored = Space.objects.get(pk=space["id"])
        assert (stored.label, stored.system_prompt) == ("Private", "secret")
        assert SessionData.objects.get(session=root_of(space["id"])).content == "secret"

    def test_a_bad_body_on_another_users_space_is_403_not_400(self, alice_client,
                                                               bob_client) -> None:
        """Ownership is decided before the body is parsed (found by the REST fuzzer)."""
        space = create_space(alice_client, label="Private")
        response = bob_client.generic("PATCH", f"/spaces/{space['id']}", "{not json",
                                      content_type="application/json")
        assert response.status_code == 403 and response.json()["code"] == "FORBIDDEN"


@HOT_PATH_DB
class TestPatch:
    def test_patch_updates_label_and_bumps_updated_at(self, alice_client) -> None:
        space = create_space(alice_client, label="Old")
        response = alice_client.patch(f"/spaces/{space['id']}", {"label": "New"}, format="json")
        assert response.status_code == 200
        body = response.json()
        assert body["label"] == "New" and body["updatedAt"] >= space["updatedAt"]
        assert root_of(space["id"]).label == "Old"  # the root label is not synced (reference)

    def test_patch_system_prompt_syncs_the_root_slot(self, alice_client) -> None:
        space = create_space(alice_client, label="S", systemPrompt="Original")
        alice_client.patch(f"/spaces/{space['id']}", {"systemPrompt": "Updated prompt"},
                           format="json")
        slot = SessionData.objects.get(session=root_of(space["id"]), key="system_prompt")
        assert slot.content == "Updated prompt"

    def test_patch_system_prompt_null_clears_column_and_slot(self, alice_client) -> None:
        space = create_space(alice_client, label="S", systemPrompt="Original")
        response = alice_client.patch(f"/spaces/{space['id']}", {"systemPrompt": None},
                                      format="json")
        assert response.status_code == 200 and response.json()["systemPrompt"] is None
        assert not SessionData.objects.filter(session=root_of(space["id"])).exists()

    def test_patch_sets_a_prompt_on_a_space_created_without_one(self, alice_client) -> None:
        space = create_space(alice_client, label="S")
        alice_client.patch(f"/spaces/{space['id']}", {"systemPrompt": "new"}, format="json")
        assert SessionData.objects.get(session=root_of(space["id"])).content == "new"

    def test_patch_other_fields_and_config(self, alice_client) -> None:
        space = create_space(alice_client, label="S")
        body = alice_client.patch(
            f"/spaces/{space['id']}",
            {"consolidatePrompt": "New consolidate", "integratePrompt": "New integrate",
             "config": {"b": 2}, "unknown": "ignored"},
            format="json",
        ).json()
        assert body["consolidatePrompt"] == "New consolidate"
        assert body["integratePrompt"] == "New integrate"
        assert body["config"] == {"b": 2}

    def test_an_empty_patch_only_bumps_updated_at(self, alice_client) -> None:
        space = create_space(alice_client, label="S", systemPrompt="p")
        body = alice_client.patch(f"/spaces/{space['id']}", {}, format="json").json()
        assert {k: v for k, v in body.items() if k != "updatedAt"} == {
            k: v for k, v in space.items() if k != "updatedAt"}

    @pytest.mark.parametrize(
        "body",
        [{"label": None}, {"label": ""}, {"label": 1}, {"systemPrompt": 5}, {"config": None},
         {"config": [1]}, [], "x"],
    )
    def test_invalid_patches_are_400_and_change_nothing(self, alice_client, body) -> None:
        space = create_space(alice_client, label="Keep", systemPrompt="keep")
        response = alice_client.patch(f"/spaces/{space['id']}", body, format="json")
        assert response.status_code == 400
        assert alice_client.get(f"/spaces/{space['id']}").json() == space
        assert SessionData.objects.get(session=root_of(space["id"])).content == "keep"

    def test_malformed_json_patch_is_400(self, alice_client) -> None:
        space = create_space(alice_client, label="Keep")
        response = alice_client.patch(f"/spaces/{space['id']}", "{bad", content_type="text/plain")
        assert response.status_code == 400 and response.json()["error"] == "Invalid JSON body"


@HOT_PATH_DB
class TestDelete:
    def test_delete_is_204_then_the_space_is_gone(self, alice_client) -> None:
        space = create_space(alice_client, label="Delete Me")
        response = alice_client.delete(f"/spaces/{space['id']}")
        assert response.status_code == 204 and response.content == b""
        assert alice_client.get(f"/spaces/{space['id']}").status_code == 404

    def test_delete_cascades_to_everything_under_the_space(self, alice_client) -> None:
        space = create_space(alice_client, label="Cascade", systemPrompt="p")
        other = create_space(alice_client, label="Other", systemPrompt="q")
        root = root_of(space["id"])
        Record.objects.create(session=root, role="user", content="hi",
                              timestamp=root.created_at)
        CoreData.objects.create(space_id=space["id"], path="k", value={"v": 1})
        alice_client.delete(f"/spaces/{space['id']}")
        assert not Session.objects.filter(space_id=space["id"]).exists()
        assert not TopologyNode.objects.filter(space_id=space["id"]).exists()
        assert not Record.objects.filter(session=root).exists()
        assert not SessionData.objects.filter(session=root).exists()
        assert not CoreData.objects.filter(space_id=space["id"]).exists()
        assert Session.objects.filter(space_id=other["id"]).count() == 1


@HOT_PATH_DB
class TestRoutingAndAuth:
    def test_missing_or_empty_key_is_401(self, anonymous_client) -> None:
        assert anonymous_client.get("/spaces").json()["error"] == "Missing API key"
        response = anonymous_client.get("/spaces", HTTP_X_API_KEY="")
        assert response.status_code == 401 and response.json()["error"] == "Missing API key"

    def test_an_invalid_key_is_401(self, anonymous_client) -> None:
        response = anonymous_client.get("/spaces", HTTP_X_API_KEY="invalid-key")
        assert response.status_code == 401 and response.json()["error"] == "Invalid API key"

    def test_unknown_routes_are_json_404_after_auth(self, alice_client, anonymous_client) -> None:
        assert anonymous_client.get("/spaces/a/b/c").status_code == 401
        response = alice_client.get("/spaces/a/b/c")
        assert response.status_code == 404 and response.json()["error"] == "Not Found"
        response = alice_client.get("/nowhere")
        assert response.status_code == 404 and response.json()["error"] == "Not Found"

    def test_an_unsupported_method_is_405(self, alice_client) -> None:
        assert alice_client.put("/spaces", {}, format="json").status_code == 405


@HOT_PATH_DB
def test_database_constraints_allow_one_main_session_per_space(alice_client) -> None:
    from django.db import IntegrityError, transaction

    space = create_space(alice_client, label="S")
    with pytest.raises(IntegrityError), transaction.atomic():
        Session.objects.create(space_id=space["id"], label="second root", role="main")


@HOT_PATH_DB
def test_big_numbers_in_a_config_are_stored_and_read_back(alice_client) -> None:
    """JSON numbers beyond 64-bit integers (orjson reads them as floats; PostgreSQL's jsonb
    gives them back as integers) never make a read fail."""
    config = {"big": 1e20, "huge": 1.5e300, "nested": [{"n": -1e19}]}
    space = create_space(alice_client, label="numbers", config=config)
    for response in (alice_client.get(f"/spaces/{space['id']}"), alice_client.get("/spaces"),
                     alice_client.patch(f"/spaces/{space['id']}", {"label": "renamed"},
                                        format="json")):
        assert response.status_code == 200, response.content
    read = alice_client.get(f"/spaces/{space['id']}").json()["config"]
    assert read == config  # the same numbers (1e20 == 100000000000000000000)
