"""Core memory (L1): REST round trips, limits, isolation, the admin, prompts and the agent's
own tools."""

from __future__ import annotations

import json

import pytest

from sessions_app.models import CoreData

from .conftest import HOT_PATH_DB, SessionApi, reply, tool_call

pytestmark = HOT_PATH_DB


@pytest.fixture
def core(alice_client, space):
    base = f"/spaces/{space['id']}/core"

    class Core:
        client = alice_client
        url = base

        def get(self, key: str | None = None):
            return alice_client.get(base + (f"/{key}" if key else ""))

        def put(self, body, key: str | None = None):
            return alice_client.put(base + (f"/{key}" if key else ""), body, format="json")

        def patch(self, body):
            return alice_client.patch(base, body, format="json")

        def delete(self, key: str | None = None):
            return alice_client.delete(base + (f"/{key}" if key else ""))

    return Core()


def stored(space_id: str) -> dict:
    return dict(CoreData.objects.filter(space_id=space_id).values_list("path", "value"))


class TestRest:
    def test_the_core_round_trips(self, core, space) -> None:
        assert core.get().json() == {}
        response = core.put({"user": {"name": "Ada", "langs": ["en", "fr"]}, "tz": "UTC"})
        assert response.status_code == 200
        assert core.get().json() == {"user": {"name": "Ada", "langs": ["en", "fr"]}, "tz": "UTC"}
        assert core.patch({"tz": None, "goal": 3}).json() == {
            "user": {"name": "Ada", "langs": ["en", "fr"]}, "goal": 3}
        assert core.get("goal").json() == {"key": "goal", "value": 3}
        assert core.put({"value": [1, {"a": None}]}, key="goal").json() == {
            "key": "goal", "value": [1, {"a": None}]}
        assert core.delete("goal").status_code == 204
        assert stored(space["id"]) == {"user": {"name": "Ada", "langs": ["en", "fr"]}}
        assert core.put({"only": True}).json() == {"only": True}  # PUT replaces the whole
        assert core.delete().status_code == 204
        assert core.get().json() == {} and stored(space["id"]) == {}

    def test_a_missing_key_is_404(self, core) -> None:
        for response in (core.get("nope"), core.delete("nope")):
            assert response.status_code == 404
            assert response.json() == {"error": 'Core key "nope" not found',
                                       "code": "CORE_KEY_NOT_FOUND"}

    @pytest.mark.parametrize("call", [
        lambda c: c.put({"value": "x" * 20_000}, key="big"),
        lambda c: c.patch({"big": "x" * 20_000}),
        lambda c: c.put({"big": "x" * 20_000}),
        lambda c: c.put(["not", "an", "object"]),
        lambda c: c.put({"no value": 1}, key="k"),
        lambda c: c.put({"value": 1}, key="bad key!"),
        lambda c: c.patch({"bad key!": 1}),
    ])
    def test_bad_input_is_400_and_changes_nothing(self, core, space, call) -> None:
        core.put({"keep": "me"})
        response = call(core)
        assert response.status_code == 400
        assert response.json()["code"] == "INVALID_INPUT"
        assert stored(space["id"]) == {"keep": "me"}

    def test_the_value_limit_is_named(self, core) -> None:
        response = core.put({"value": "x" * 20_000}, key="big")
        assert response.json()["error"] == ('core value "big" is 20002 bytes; at most 16384 '
                                            "are allowed")

    def test_the_total_limit_counts_every_key(self, core, space, settings) -> None:
        settings.STELLO = {**settings.STELLO, "CORE_MAX_TOTAL_BYTES": 1000}
        assert core.put({"value": "x" * 600}, key="a").status_code == 200
        response = core.put({"value": "y" * 600}, key="b")
        assert response.status_code == 400
        assert response.json()["error"].startswith("the core would be")
        assert set(stored(space["id"])) == {"a"}

    def test_another_users_core_is_403_and_unknown_space_404(self, core, bob_client,
                                                              space) -> None:
        core.put({"secret": 1})
        for method in ("get", "put", "patch", "delete"):
            response = getattr(bob_client, method)(core.url, {"x": 1}, format="json")
            assert response.status_code == 403, method
        assert bob_client.get(core.url + "/secret").status_code == 403
        assert stored(space["id"]) == {"secret": 1}
        unknown = core.client.get("/spaces/00000000-0000-0000-0000-000000000000/core")
        assert unknown.status_code == 404


class TestAgentSide:
    def test_prompts_carry_the_core_when_enabled(self, core, space, settings,
                                                 monkeypatch) -> None:
        from sessions_app.engine.llm.offline import OfflineLLM

        seen: list[str] = []
        respond = OfflineLLM._respond

        def recording(llm, messages, tools):
            seen.append("\n".join(m.content for m in messages if m.role == "system"))
            return respond(llm, messages, tools)

        monkeypatch.setattr(OfflineLLM, "_respond", recording)
        core.put({"fact": "the user is left-handed"})
        api = SessionApi(core.client, space["id"])
        root = api.tree().json()["id"]
        api.said(root, "hi")
        assert "left-handed" not in seen[-1]  # off by default
        settings.STELLO = {**settings.STELLO, "CORE_IN_PROMPT": True}
        api.said(root, "hi")
        assert '<core_memory>\n{"fact":"the user is left-handed"}\n</core_memory>' in seen[-1]

    def test_the_agent_updates_the_core_with_its_tools(self, core, space, settings,
                                                       llm_script) -> None:
        settings.STELLO = {**settings.STELLO, "CORE_TOOLS": True}
        llm_script(
            reply(None, tool_call("c1", "core_memory_update",
                                  {"key": "name", "value": "Ada"})),
            reply(None, tool_call("c2", "core_memory_read", {}),
                  tool_call("c3", "core_memory_update", {"key": "bad key!", "value": 1})),
            reply("Noted."))
        api = SessionApi(core.client, space["id"])
        root = api.tree().json()["id"]
        assert api.said(root, "I am Ada")["finalContent"] == "Noted."
        assert core.get("name").json() == {"key": "name", "value": "Ada"}
        tools = [m for m in api.messages(root).json() if m["role"] == "tool"]
        assert tools[0]["content"] == 'Saved "name" in core memory.'
        assert json.loads(tools[1]["content"]) == {"name": "Ada"}
        assert "core key must be" in tools[2]["content"]  # refused, told to the LLM


def test_the_admin_edits_the_core_within_the_limits(admin_client, space) -> None:
    url = "/admin/sessions_app/coredata/add/"
    response = admin_client.post(url, {"space": space["id"], "path": "motto",
                                       "value": '"be kind"'})
    assert response.status_code == 302, response.content[:2000]
    assert stored(space["id"]) == {"motto": "be kind"}
    response = admin_client.post(url, {"space": space["id"], "path": "bad key!",
                                       "value": "1"})
    assert response.status_code == 200 and b"core key must be" in response.content
    big = json.dumps("x" * 20_000)
    response = admin_client.post(url, {"space": space["id"], "path": "big", "value": big})
    assert response.status_code == 200 and b"at most 16384" in response.content
    assert stored(space["id"]) == {"motto": "be kind"}
