"""Per-space and per-session agent settings, used for real: the loopback OpenAI server sees the
model, temperature, output limit and tools a space's or session's config chose."""

from __future__ import annotations

import json

import pytest

from sessions_app.models import Session, SessionData
from spaces.models import Space
from tests.support.llm_servers import OpenAIServer
from tests.support.llm_servers import tool_call as server_tool_call

from .conftest import HOT_PATH_DB, create_space, openai_llm, root_of

pytestmark = HOT_PATH_DB


@pytest.fixture
def server(use_llm):
    with OpenAIServer() as server:
        use_llm(openai_llm(server.base_url))
        yield server


def frozen_config(session_id: str) -> dict:
    row = SessionData.objects.filter(session_id=session_id, key="session_config").first()
    return json.loads(row.content) if row else {}


def tool_names(request) -> list[str]:
    return [t["function"]["name"] for t in request.body.get("tools", [])]


class TestSessionModel:
    def test_a_session_with_its_own_model_sends_that_model_name(self, api, root_id,
                                                                server) -> None:
        child = api.fork(root_id, label="Own model", config={
            "model": "child-model-7", "temperature": 0.25, "maxOutputTokens": 64}).json()
        assert api.turn(child["id"], "hi").status_code == 200
        body = server.last_request.body
        assert body["model"] == "child-model-7"
        assert body["temperature"] == 0.25 and body["max_tokens"] == 64

        assert api.turn(root_id, "hi").status_code == 200  # the root keeps the server's model
        body = server.last_request.body
        assert body["model"] == "test-model" and "temperature" not in body
        assert body["max_tokens"] == 256

    def test_unknown_fork_config_keys_are_ignored(self, api, root_id) -> None:
        child = api.fork(root_id, label="K", config={"model": "m", "mcpServers": ["x"],
                                                     "colour": "red"}).json()
        assert frozen_config(child["id"]) == {"model": "m"}

    def test_forks_inherit_the_settings_and_may_override_them(self, api, root_id,
                                                              server) -> None:
        child = api.fork(root_id, label="A", config={"model": "m-a", "temperature": 1}).json()
        grandchild = api.fork(child["id"], label="B", config={"temperature": 0.5}).json()
        reset = api.fork(grandchild["id"], label="C", config={"model": None}).json()
        assert frozen_config(grandchild["id"]) == {"model": "m-a", "temperature": 0.5}
        api.turn(grandchild["id"], "x")
        assert server.last_request.body["model"] == "m-a"
        assert server.last_request.body["temperature"] == 0.5
        api.turn(reset["id"], "x")  # null: back to the space's (here the server's) model
        assert server.last_request.body["model"] == "test-model"

    def test_the_space_config_sets_the_default_and_a_session_wins(self, alice_client,
                                                                  server) -> None:
        space = create_space(alice_client, label="Configured",
                             config={"model": "space-model", "maxOutputTokens": 99,
                                     "team": "blue"})
        assert space["config"]["team"] == "blue"  # other keys stay the client's own
        from .conftest import SessionApi

        api = SessionApi(alice_client, space["id"])
        root = root_of(space["id"])
        api.turn(root, "x")
        assert server.last_request.body["model"] == "space-model"
        assert server.last_request.body["max_tokens"] == 99
        child = api.fork(root, label="Own", config={"model": "own"}).json()
        api.turn(child["id"], "x")
        assert server.last_request.body["model"] == "own"
        assert server.last_request.body["max_tokens"] == 99

        patched = alice_client.patch(f"/spaces/{space['id']}", {"config": {"model": "new"}},
                                     format="json")
        assert patched.status_code == 200
        api.turn(root, "x")
        assert server.last_request.body["model"] == "new"

    def test_the_llm_cannot_choose_its_childrens_settings(self, api, root_id, server) -> None:
        child = api.fork(root_id, label="Narrow", config={"tools": ["stello_create_session"]})
        child_id = child.json()["id"]
        server.reply("", tool_calls=[server_tool_call(
            "c1", "stello_create_session",
            {"label": "Wider", "config": {"tools": None, "model": "chosen-by-llm"}})])
        server.reply("done")
        assert api.turn(child_id, "branch").status_code == 200
        kid = Session.objects.get(label="Wider")
        assert frozen_config(str(kid.id)) == {"tools": ["stello_create_session"]}


class TestAllowlists:
    def test_a_tool_allowlist_limits_what_the_llm_sees(self, api, root_id, server) -> None:
        none = api.fork(root_id, label="None", config={"tools": []}).json()
        api.turn(none["id"], "x")
        assert "tools" not in server.last_request.body
        one = api.fork(root_id, label="One", config={"tools": ["stello_create_session"]}).json()
        api.turn(one["id"], "x")
        assert tool_names(server.last_request) == ["stello_create_session"]
        api.turn(root_id, "x")
        assert "stello_create_session" in tool_names(server.last_request)

    def test_a_call_to_a_tool_outside_the_allowlist_is_refused_to_the_llm(
        self, api, root_id, server
    ) -> None:
        none = api.fork(root_id, label="None", config={"tools": []}).json()
        server.reply("", tool_calls=[server_tool_call("c1", "stello_create_session",
                                                      {"label": "Sneaky"})])
        server.reply("ok")
        assert api.turn(none["id"], "x").status_code == 200
        assert not Session.objects.filter(label="Sneaky").exists()
        tool_message = api.messages(none["id"]).json()[2]
        assert tool_message["content"] == "Unknown tool: stello_create_session"


class TestProfiles:
    def test_a_provider_profile_sends_the_turn_to_that_llm(self, api, root_id, server,
                                                           settings) -> None:
        with OpenAIServer() as other:
            settings.STELLO = {**settings.STELLO, "LLM_PROFILES": {
                "second": {"base_url": other.base_url, "model": "second-model"}}}
            child = api.fork(root_id, label="P", config={"provider": "second"}).json()
            before = len(server.requests)
            assert api.turn(child["id"], "x").status_code == 200
            assert other.last_request.body["model"] == "second-model"
            assert len(server.requests) == before

    def test_an_unknown_profile_is_refused_at_write_time(self, api, root_id,
                                                         alice_client) -> None:
        response = api.fork(root_id, label="P", config={"provider": "nope"})
        assert response.status_code == 400
        assert response.json()["error"].startswith("config.provider must name an LLM profile")
        assert not Session.objects.filter(label="P").exists()
        response = alice_client.post("/spaces", {"label": "S", "config": {"provider": "nope"}},
                                     format="json")
        assert response.status_code == 400 and "config.provider" in response.json()["error"]


class TestInvalidConfig:
    @pytest.mark.parametrize(("config", "field"), [
        ({"temperature": 3}, "config.temperature"),
        ({"temperature": "hot"}, "config.temperature"),
        ({"maxOutputTokens": 0}, "config.maxOutputTokens"),
        ({"maxOutputTokens": 1.5}, "config.maxOutputTokens"),
        ({"model": ""}, "config.model"),
        ({"tools": "all"}, "config.tools"),
        ({"skills": [1]}, "config.skills"),
        ({"mcpServers": ["unknown"]}, "config.mcpServers"),
    ])
    def test_a_space_config_is_refused_with_the_field_named(self, alice_client, space,
                                                            config, field) -> None:
        count = Space.objects.count()
        response = alice_client.post("/spaces", {"label": "Bad", "config": config},
                                     format="json")
        assert response.status_code == 400
        assert response.json()["code"] == "INVALID_INPUT"
        assert response.json()["error"].startswith(field)
        assert Space.objects.count() == count
        before = Space.objects.get(pk=space["id"]).config
        response = alice_client.patch(f"/spaces/{space['id']}", {"config": config},
                                      format="json")
        assert response.status_code == 400 and response.json()["error"].startswith(field)
        assert Space.objects.get(pk=space["id"]).config == before

    @pytest.mark.parametrize(("config", "field"), [
        ({"temperature": -1}, "config.temperature"),
        ({"maxOutputTokens": True}, "config.maxOutputTokens"),
        ("fast", "config"),
    ])
    def test_a_fork_config_is_refused_with_the_field_named(self, api, root_id, config,
                                                           field) -> None:
        response = api.fork(root_id, label="Bad", config=config)
        assert response.status_code == 400
        assert response.json()["code"] == "INVALID_INPUT"
        assert response.json()["error"].startswith(field)
        assert not Session.objects.filter(label="Bad").exists()
