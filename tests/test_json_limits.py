"""JSON limits of the REST API: bodies nested deeper than STELLO_MAX_JSON_DEPTH, NUL and lone
surrogates are a 400 that saves nothing, whatever the depth (no recursion to exhaust), and no
stored value can make a read fail, not even one written before the limit existed."""

from __future__ import annotations

import json

import pytest
from django.db import connection

from spaces.models import Space
from tests.conftest import HOT_PATH_DB

TOO_DEEP = "JSON nested too deeply (at most 64 levels)"


def nested_config(levels: int) -> str:
    """A config of `levels` nested lists: the body nests one more (the object around it)."""
    return "[" * levels + "]" * levels


def body_with_config(levels: int) -> str:
    """A POST /spaces body nesting `levels` levels: the body, the config, then lists."""
    return '{"label": "Deep", "config": {"x": ' + nested_config(levels - 2) + "}}"


def post(client, path: str, raw: str):
    return client.generic("POST", path, raw, content_type="application/json")


def deep_list(levels: int) -> list:
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


@HOT_PATH_DB
class TestDepthAtParseTime:
    @pytest.mark.parametrize("levels", [65, 254, 300, 1000, 1024, 5000, 200_000])
    def test_a_config_nested_too_deeply_is_400_and_creates_nothing(
        self, alice_client, levels
    ) -> None:
        response = post(alice_client, "/spaces", body_with_config(levels))
        assert response.status_code == 400
        assert response.json() == {"error": TOO_DEEP, "code": "INVALID_JSON"}
        assert not Space.objects.exists()
        assert alice_client.get("/spaces").json() == []

    def test_the_deepest_accepted_body_round_trips(self, alice_client) -> None:
        response = post(alice_client, "/spaces", body_with_config(64))  # config itself: 63
        assert response.status_code == 201, response.content
        space_id = response.json()["id"]
        assert alice_client.get(f"/spaces/{space_id}").json()["config"] == {"x": deep_list(62)}

    def test_the_limit_is_a_setting(self, alice_client, settings) -> None:
        settings.STELLO = {**settings.STELLO, "MAX_JSON_DEPTH": 8}
        response = post(alice_client, "/spaces", body_with_config(9))
        assert response.status_code == 400
        assert response.json()["error"] == "JSON nested too deeply (at most 8 levels)"
        assert post(alice_client, "/spaces", body_with_config(8)).status_code == 201

    def test_a_deep_patch_is_400_and_changes_nothing(self, alice_client) -> None:
        space = alice_client.post("/spaces", {"label": "Keep", "config": {"a": 1}},
                                  format="json").json()
        response = alice_client.generic("PATCH", f"/spaces/{space['id']}",
                                        '{"config": {"x": ' + nested_config(2000) + "}}",
                                        content_type="application/json")
        assert response.status_code == 400 and response.json()["error"] == TOO_DEEP
        assert alice_client.get(f"/spaces/{space['id']}").json() == space

    def test_a_deep_turn_body_is_400(self, alice_client) -> None:
        space = alice_client.post("/spaces", {"label": "T"}, format="json").json()
        root = alice_client.get(f"/spaces/{space['id']}/sessions").json()["id"]
        response = post(alice_client, f"/spaces/{space['id']}/sessions/{root}/turn",
                        '{"input": "hi", "x": ' + nested_config(3000) + "}")
        assert response.status_code == 400 and response.json()["error"] == TOO_DEEP
        assert alice_client.get(f"/spaces/{space['id']}/sessions/{root}").json()["turnCount"] == 0

    @pytest.mark.parametrize("raw", ['{"label": "\\ud800"}', '{"label": "ok", "config": '
                                     '{"\\udc00": 1}}'])
    def test_lone_surrogates_are_400(self, alice_client, raw) -> None:
        response = post(alice_client, "/spaces", raw)
        assert response.status_code == 400 and response.json()["error"] == "Invalid JSON body"
        assert not Space.objects.exists()

    def test_nul_deep_inside_a_config_is_400(self, alice_client) -> None:
        raw = '{"label": "n", "config": {"a": [[[{"b\\u0000": 1}]]]}}'
        response = post(alice_client, "/spaces", raw)
        assert response.status_code == 400
        assert response.json()["error"] == "JSON must not contain NUL characters (\\u0000)"
        assert not Space.objects.exists()


@HOT_PATH_DB
class TestStoredValuesAlwaysRender:
    """Rows written before the limit existed (the old parser accepted a few hundred levels):
    orjson writes at most 254, so reading them once answered 500, forever."""

    def test_a_deep_config_written_in_the_database_is_readable(self, alice_client) -> None:
        space = alice_client.post("/spaces", {"label": "Legacy"}, format="json").json()
        deep = {"x": deep_list(400), "text": "caf\u00e9"}
        Space.objects.filter(pk=space["id"]).update(config=deep)
        listed = alice_client.get("/spaces")
        assert listed.status_code == 200
        assert json.loads(listed.content)[0]["config"] == deep
        one = alice_client.get(f"/spaces/{space['id']}")
        assert one.status_code == 200 and json.loads(one.content)["config"] == deep
        patched = alice_client.patch(f"/spaces/{space['id']}", {"label": "Renamed"},
                                     format="json")
        assert patched.status_code == 200 and patched.json()["config"] == deep

    @pytest.mark.postgres
    def test_a_config_as_deep_as_the_jsonb_reader_allows_is_readable(self, alice_client) -> None:
        space = alice_client.post("/spaces", {"label": "Legacy"}, format="json").json()
        with connection.cursor() as cursor:
            cursor.execute("UPDATE spaces SET config = %s::jsonb WHERE id = %s",
                           ['{"x": ' + nested_config(1000) + "}", space["id"]])
        response = alice_client.get(f"/spaces/{space['id']}")
        assert response.status_code == 200
        assert response.content.startswith(b'{"id"') and b"[" * 1000 + b"]" * 1000 in (
            response.content)
