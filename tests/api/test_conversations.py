"""Conversations as data over REST: message pages, session edits and deletion, the flat listing,
spaces in pages, message edits (edit, regenerate, delete) and branches from a message.

Runs on the configured database (SQLite by default, PostgreSQL with DATABASE_URL)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.test import AsyncClient

from sessions_app.models import Record, Session, SessionData, TopologyNode
from sessions_app.runtime.pool import runtimes
from tests.support.llm_servers import OpenAIServer

from .conftest import (
    HOT_PATH_DB,
    SESSION_META_KEYS,
    closed_port,
    create_space,
    openai_llm,
    reply,
    root_of,
    tool_call,
)

pytestmark = HOT_PATH_DB

BAD_LIMITS = ["0", "-1", "1000000000", "abc", "", "2.5"]


def said_many(api, session_id: str, n: int) -> None:
    for i in range(n):
        api.said(session_id, f"m{i}")


def page(api, session_id: str, **params: Any):
    return api.client.get(api.path(session_id, "messages"), params)


def snapshot(session_id: str) -> tuple[list[tuple[int, str, str]], int, int]:
    records = list(Record.objects.filter(session_id=session_id)
                   .values_list("id", "role", "content"))
    session = Session.objects.get(pk=session_id)
    return records, session.turn_count, session.record_count


class TestMessagePages:
    def test_without_paging_parameters_the_plain_list_is_unchanged(self, api, root_id) -> None:
        said_many(api, root_id, 2)
        messages = api.messages(root_id).json()
        assert isinstance(messages, list) and len(messages) == 4

    def test_backward_pages_walk_from_the_newest_to_the_oldest(self, api, root_id) -> None:
        said_many(api, root_id, 5)  # 10 records
        everything = api.messages(root_id).json()
        seen: list[dict[str, Any]] = []
        response = page(api, root_id, limit=3)
        pages = 0
        while True:
            assert response.status_code == 200, response.content
            body = response.json()
            assert set(body) == {"messages", "nextCursor"}
            assert len(body["messages"]) <= 3
            seen = body["messages"] + seen  # each page is oldest first
            pages += 1
            if body["nextCursor"] is None:
                break
            response = page(api, root_id, limit=3, before=body["nextCursor"])
        assert seen == everything and pages == 4

    def test_forward_pages_walk_from_the_oldest_and_continue_with_new_messages(
        self, api, root_id
    ) -> None:
        said_many(api, root_id, 2)
        first = page(api, root_id, limit=3, direction="forward").json()
        assert [m["content"] for m in first["messages"]] == ["m0", "echo: m0", "m1"]
        second = page(api, root_id, limit=3, after=first["nextCursor"]).json()
        assert [m["content"] for m in second["messages"]] == ["echo: m1"]
        empty = page(api, root_id, limit=3, after=second["nextCursor"]).json()
        assert empty["messages"] == [] and empty["nextCursor"] == second["nextCursor"]
        api.said(root_id, "later")
        newer = page(api, root_id, after=empty["nextCursor"]).json()
        assert [m["content"] for m in newer["messages"]] == ["later", "echo: later"]

    def test_a_limit_alone_answers_the_newest_page(self, api, root_id) -> None:
        said_many(api, root_id, 3)
        body = page(api, root_id, limit=2).json()
        assert [m["content"] for m in body["messages"]] == ["m2", "echo: m2"]
        assert body["nextCursor"] is not None

    def test_an_empty_session_has_an_empty_page(self, api, root_id) -> None:
        assert page(api, root_id, limit=5).json() == {"messages": [], "nextCursor": None}

    @pytest.mark.parametrize("limit", BAD_LIMITS)
    def test_a_bad_limit_is_400(self, api, root_id, limit) -> None:
        response = page(api, root_id, limit=limit)
        assert response.status_code == 400
        assert response.json()["code"] == "INVALID_INPUT"

    def test_a_tampered_cursor_is_400_invalid_cursor(self, api, root_id) -> None:
        said_many(api, root_id, 3)
        cursor = page(api, root_id, limit=2).json()["nextCursor"]
        for bad in [cursor[:-1] + ("A" if cursor[-1] != "A" else "B"), "x" * 20, "",
                    cursor.replace(":", ";", 1), "a" * 600]:
            for direction in ("before", "after"):
                response = page(api, root_id, **{direction: bad})
                assert response.status_code == 400, (bad, response.content)
                assert response.json()["code"] == "INVALID_CURSOR"

    def test_a_cursor_of_another_session_is_400(self, api, root_id) -> None:
        child = api.child(root_id, "Child")["id"]
        said_many(api, root_id, 2)
        said_many(api, child, 2)
        cursor = page(api, root_id, limit=1).json()["nextCursor"]
        response = page(api, child, before=cursor)
        assert response.status_code == 400 and response.json()["code"] == "INVALID_CURSOR"

    def test_before_and_after_together_are_400(self, api, root_id) -> None:
        said_many(api, root_id, 2)
        cursor = page(api, root_id, limit=1).json()["nextCursor"]
        response = page(api, root_id, before=cursor, after=cursor)
        assert response.status_code == 400
        assert page(api, root_id, direction="sideways").status_code == 400

    def test_another_users_session_is_not_readable_in_pages(
        self, api, root_id, bob_client
    ) -> None:
        said_many(api, root_id, 1)
        response = bob_client.get(api.path(root_id, "messages"), {"limit": 5})
        assert response.status_code in (403, 404)
        bob_space = create_space(bob_client, label="Bob")
        response = bob_client.get(
            f"/spaces/{bob_space['id']}/sessions/{root_id}/messages", {"limit": 5})
        assert response.status_code == 404


class TestSpacePages:
    def test_spaces_page_oldest_first_and_the_plain_list_stays(
        self, alice_client, bob_client
    ) -> None:
        ids = [create_space(alice_client, label=f"S{i}")["id"] for i in range(5)]
        create_space(bob_client, label="Bob's")
        plain = alice_client.get("/spaces").json()
        assert [s["id"] for s in plain] == ids
        seen, body = [], alice_client.get("/spaces", {"limit": 2}).json()
        while True:
            seen += [s["id"] for s in body["spaces"]]
            if body["nextCursor"] is None:
                break
            body = alice_client.get("/spaces", {"limit": 2, "cursor": body["nextCursor"]}).json()
        assert seen == ids

    @pytest.mark.parametrize("limit", BAD_LIMITS)
    def test_a_bad_limit_is_400(self, alice_client, limit) -> None:
        assert alice_client.get("/spaces", {"limit": limit}).status_code == 400

    def test_a_tampered_or_foreign_cursor_is_400(self, alice_client, bob_client) -> None:
        for i in range(3):
            create_space(bob_client, label=f"B{i}")
        cursor = bob_client.get("/spaces", {"limit": 1}).json()["nextCursor"]
        response = alice_client.get("/spaces", {"cursor": cursor})
        assert response.status_code == 400 and response.json()["code"] == "INVALID_CURSOR"
        assert alice_client.get("/spaces", {"cursor": cursor + "x"}).status_code == 400


class TestSessionEdits:
    def test_patch_sets_label_tags_metadata_and_scope(self, api, root_id) -> None:
        child = api.child(root_id, "Child")
        response = api.client.patch(api.path(child["id"]), {
            "label": "Renamed", "tags": ["a", "b", "a"], "metadata": {"color": "blue"},
            "scope": "sources"}, format="json")
        assert response.status_code == 200, response.content
        body = response.json()
        assert set(body) == SESSION_META_KEYS
        assert (body["label"], body["tags"], body["scope"]) == ("Renamed", ["a", "b"], "sources")
        # The server's own key (the fork's source) is kept.
        assert body["metadata"] == {"color": "blue", "sourceSessionId": root_id}
        assert api.meta(child["id"]).json() == body
        assert api.tree().json()["children"][0]["label"] == "Renamed"
        assert TopologyNode.objects.get(session_id=child["id"]).label == "Renamed"
        # Other keys are ignored; the server's metadata keys keep their values.
        same = api.client.patch(api.path(child["id"]), {"nope": 1}, format="json")
        assert same.status_code == 200 and same.json()["label"] == "Renamed"
        kept = api.client.patch(api.path(child["id"]), {"metadata": {
            "sourceSessionId": "forged", "k": 2}}, format="json").json()
        assert kept["metadata"] == {"k": 2, "sourceSessionId": root_id}
        partial = api.client.patch(api.path(child["id"]), {"scope": None}, format="json").json()
        assert (partial["label"], partial["tags"], partial["scope"]) == ("Renamed", ["a", "b"],
                                                                         None)

    @pytest.mark.parametrize("body", [
        {"label": ""}, {"label": "  "}, {"label": 3}, {"tags": "a"},
        {"tags": [1]}, {"tags": [""]}, {"tags": ["x" * 65]}, {"tags": [f"t{i}" for i in range(33)]},
        {"metadata": []}, {"scope": 5}, [1],
    ])
    def test_a_bad_patch_is_400_and_changes_nothing(self, api, root_id, body) -> None:
        child = api.child(root_id, "Child")["id"]
        before = api.meta(child).json()
        response = api.client.patch(api.path(child), body, format="json")
        assert response.status_code == 400, response.content
        assert response.json()["code"] == "INVALID_INPUT"
        assert api.meta(child).json() == before

    def test_patching_a_session_of_another_space_or_user_is_refused(
        self, api, root_id, alice_client, bob_client
    ) -> None:
        other = create_space(alice_client, label="Other")
        other_root = root_of(other["id"])
        response = api.client.patch(api.path(other_root), {"label": "x"}, format="json")
        assert response.status_code == 404
        assert bob_client.patch(api.path(root_id), {"label": "x"},
                                format="json").status_code == 403
        assert Session.objects.get(pk=other_root).label == "Other"

    def test_delete_removes_the_session_and_its_subtree(self, api, root_id, settings) -> None:
        settings.STELLO = {**settings.STELLO, "FORK_STRATEGY": "tree"}
        child = api.child(root_id, "Child")["id"]
        grandchild = api.fork(child, label="Grandchild", context="inherit")
        api.said(child, "hello")
        sibling = api.child(root_id, "Sibling")["id"]
        grandchild_id = Session.objects.get(label="Grandchild").pk
        assert grandchild.status_code == 201
        response = api.client.delete(api.path(child))
        assert response.status_code == 200, response.content
        assert set(response.json()["deleted"]) == {child, str(grandchild_id)}
        assert response.json()["deleted"][0] == child
        assert not Session.objects.filter(pk__in=[child, grandchild_id]).exists()
        assert not Record.objects.filter(session_id=child).exists()
        assert not SessionData.objects.filter(session_id__in=[child, grandchild_id]).exists()
        assert not TopologyNode.objects.filter(session_id__in=[child, grandchild_id]).exists()
        assert [c["id"] for c in api.tree().json()["children"]] == [sibling]
        assert api.meta(child).status_code == 404
        assert api.client.delete(api.path(child)).status_code == 404

    def test_the_main_session_cannot_be_deleted(self, api, root_id) -> None:
        response = api.client.delete(api.path(root_id))
        assert response.status_code == 409
        assert response.json()["code"] == "MAIN_SESSION_NOT_DELETABLE"
        assert Session.objects.filter(pk=root_id).exists()

    def test_deleting_another_users_session_is_refused(self, api, root_id, bob_client) -> None:
        child = api.child(root_id, "Child")["id"]
        assert bob_client.delete(api.path(child)).status_code == 403
        assert Session.objects.filter(pk=child).exists()


class TestFlatListing:
    def test_filters_and_pages(self, api, root_id) -> None:
        a = api.child(root_id, "Alpha notes")["id"]
        b = api.child(root_id, "Beta")["id"]
        c = api.child(root_id, "alpha two")["id"]
        api.client.patch(api.path(b), {"tags": ["x"]}, format="json")
        api.archive(c)
        flat = api.client.get(api.path() + "/flat").json()
        assert {s["id"] for s in flat["sessions"]} == {root_id, a, b, c}
        assert flat["sessions"][0]["id"] == c  # most recently updated first
        assert flat["nextCursor"] is None
        get = lambda **p: {s["id"] for s in api.client.get(api.path() + "/flat", p)  # noqa: E731
                           .json()["sessions"]}
        assert get(status="archived") == {c}
        assert get(tag="x") == {b}
        assert get(tag="y") == set()
        assert get(q="ALPHA") == {a, c}
        assert get(q="alpha", status="active") == {a}
        latest = Session.objects.get(pk=c).updated_at.isoformat()
        assert get(updatedSince=latest) == {c}
        seen, body = [], api.client.get(api.path() + "/flat", {"limit": 3}).json()
        while True:
            seen += [s["id"] for s in body["sessions"]]
            if body["nextCursor"] is None:
                break
            body = api.client.get(api.path() + "/flat",
                                  {"limit": 3, "cursor": body["nextCursor"]}).json()
        assert sorted(seen) == sorted([root_id, a, b, c]) and len(seen) == 4

    @pytest.mark.parametrize("params", [
        {"limit": "0"}, {"status": "gone"}, {"updatedSince": "yesterday"},
        {"updatedSince": "2026-01-01T00:00:00"}, {"cursor": "bogus"}, {"q": "x" * 201},
        {"updatedSince": "9999-12-31T23:00:00-05:00"},  # past the last representable time
    ])
    def test_bad_parameters_are_400(self, api, root_id, params) -> None:
        assert api.client.get(api.path() + "/flat", params).status_code == 400

    def test_an_offset_beyond_what_postgresql_takes_is_read_in_utc(self, api, root_id) -> None:
        # ISO 8601 allows offsets up to 23:59, PostgreSQL up to 15:59: this answered 500 there.
        response = api.client.get(api.path() + "/flat",
                                  {"updatedSince": "0603-06-14T10:46:49.0-23:45"})
        assert response.status_code == 200, response.content
        assert [s["id"] for s in response.json()["sessions"]] == [root_id]

    def test_only_the_spaces_own_sessions_are_listed(self, api, root_id, alice_client) -> None:
        other = create_space(alice_client, label="Other")
        ids = {s["id"] for s in api.client.get(api.path() + "/flat").json()["sessions"]}
        assert ids == {root_id} and root_of(other["id"]) not in ids


class TestMessageEdits:
    def test_regenerate_replaces_the_last_turn(self, api, root_id, llm_script) -> None:
        api.said(root_id, "first")
        api.said(root_id, "second")
        old = api.messages(root_id).json()
        llm_script(reply("another answer"))
        response = api.client.post(api.path(root_id, "regenerate"))
        assert response.status_code == 200, response.content
        assert response.json()["turn"]["finalContent"] == "another answer"
        new = api.messages(root_id).json()
        assert [(m["role"], m["content"]) for m in new] == [
            ("user", "first"), ("assistant", "echo: first"),
            ("user", "second"), ("assistant", "another answer")]
        assert new[:2] == old[:2] and new[2]["id"] > old[3]["id"]
        assert api.meta(root_id).json()["turnCount"] == 2

    def test_edit_the_last_user_message_runs_the_turn_again(self, api, root_id) -> None:
        api.said(root_id, "first")
        api.said(root_id, "secnod")
        last_user = api.messages(root_id).json()[2]["id"]
        response = api.client.put(api.path(root_id, f"messages/{last_user}"),
                                    {"content": "second"}, format="json")
        assert response.status_code == 200, response.content
        assert [(m["role"], m["content"]) for m in api.messages(root_id).json()] == [
            ("user", "first"), ("assistant", "echo: first"),
            ("user", "second"), ("assistant", "echo: second")]
        assert Session.objects.get(pk=root_id).record_count == 4
        assert api.meta(root_id).json()["turnCount"] == 2

    def test_only_the_last_user_message_is_editable(self, api, root_id) -> None:
        api.said(root_id, "first")
        api.said(root_id, "second")
        messages = api.messages(root_id).json()
        before = snapshot(root_id)
        for record in (messages[0], messages[3]):
            response = api.client.put(api.path(root_id, f"messages/{record['id']}"),
                                        {"content": "x"}, format="json")
            assert response.status_code == 409
            assert response.json()["code"] == "MESSAGE_NOT_EDITABLE"
        assert snapshot(root_id) == before

    def test_a_failed_rerun_changes_nothing(self, api, root_id, use_llm) -> None:
        api.said(root_id, "first")
        before = snapshot(root_id)
        use_llm(openai_llm(f"http://127.0.0.1:{closed_port()}/v1"))
        assert api.client.post(api.path(root_id, "regenerate")).status_code == 502
        last_user = before[0][0][0]
        response = api.client.put(api.path(root_id, f"messages/{last_user}"),
                                    {"content": "other"}, format="json")
        assert response.status_code == 502
        assert snapshot(root_id) == before

    def test_regenerating_nothing_is_409(self, api, root_id) -> None:
        response = api.client.post(api.path(root_id, "regenerate"))
        assert response.status_code == 409
        assert response.json()["code"] == "NOTHING_TO_REGENERATE"

    def test_delete_keeps_a_tool_call_group_whole(self, api, root_id, llm_script) -> None:
        llm_script(reply("", tool_call("c1", "stello_create_session", {"label": "B"})),
                   reply("Done."))
        api.said(root_id, "branch")
        llm_script()
        api.said(root_id, "after")
        messages = api.messages(root_id).json()
        assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant",
                                                 "user", "assistant"]
        tool_id = messages[2]["id"]
        response = api.client.delete(api.path(root_id, f"messages/{tool_id}"))
        assert response.status_code == 200, response.content
        assert response.json() == {"deleted": [messages[1]["id"], tool_id]}
        assert [m["content"] for m in api.messages(root_id).json()] == [
            "branch", "Done.", "after", "echo: after"]
        session = Session.objects.get(pk=root_id)
        assert (session.turn_count, session.record_count) == (2, 4)
        plain = api.messages(root_id).json()[0]["id"]
        assert api.client.delete(api.path(root_id, f"messages/{plain}")).json() == {
            "deleted": [plain]}

    @pytest.mark.parametrize("message_id", ["999999999", "abc", "-1", "1" * 30])
    def test_an_unknown_message_is_404(self, api, root_id, message_id) -> None:
        api.said(root_id, "hi")
        before = snapshot(root_id)
        response = api.client.delete(api.path(root_id, f"messages/{message_id}"))
        assert response.status_code == 404
        assert response.json()["code"] == "MESSAGE_NOT_FOUND"
        response = api.client.put(api.path(root_id, f"messages/{message_id}"),
                                    {"content": "x"}, format="json")
        assert response.status_code == 404
        assert snapshot(root_id) == before

    def test_a_message_of_another_session_is_404(self, api, root_id) -> None:
        child = api.child(root_id, "Child")["id"]
        api.said(child, "theirs")
        api.said(root_id, "mine")
        theirs = api.messages(child).json()[0]["id"]
        before = snapshot(child)
        assert api.client.delete(api.path(root_id, f"messages/{theirs}")).status_code == 404
        response = api.client.put(api.path(root_id, f"messages/{theirs}"),
                                    {"content": "x"}, format="json")
        assert response.status_code == 404
        assert snapshot(child) == before

    def test_an_archived_session_refuses_edits(self, api, root_id) -> None:
        child = api.child(root_id, "Child")["id"]
        api.said(child, "hi")
        api.archive(child)
        before = snapshot(child)
        first = api.messages(child).json()[0]["id"]
        for response in (
            api.client.post(api.path(child, "regenerate")),
            api.client.delete(api.path(child, f"messages/{first}")),
            api.client.put(api.path(child, f"messages/{first}"), {"content": "x"},
                             format="json"),
        ):
            assert response.status_code == 409
            assert response.json()["code"] == "SESSION_ARCHIVED"
        assert snapshot(child) == before

    @pytest.mark.parametrize("body", [{}, {"content": ""}, {"content": 3}, ["x"]])
    def test_a_bad_edit_body_is_400(self, api, root_id, body) -> None:
        api.said(root_id, "hi")
        before = snapshot(root_id)
        last_user = before[0][0][0]
        response = api.client.put(api.path(root_id, f"messages/{last_user}"), body,
                                    format="json")
        assert response.status_code == 400
        assert snapshot(root_id) == before


class TestBranchFromMessage:
    def test_the_child_gets_the_history_up_to_the_message(self, api, root_id) -> None:
        for text in ("one", "two", "three"):
            api.said(root_id, text)
        messages = api.messages(root_id).json()
        response = api.fork(root_id, label="Branch", fromMessage=messages[3]["id"])
        assert response.status_code == 201, response.content
        child = response.json()
        assert child["metadata"] == {"sourceSessionId": root_id,
                                     "sourceMessageId": messages[3]["id"]}
        assert [m["content"] for m in api.messages(child["id"]).json()] == [
            "one", "echo: one", "two", "echo: two"]
        assert api.meta(child["id"]).json()["metadata"]["sourceMessageId"] == messages[3]["id"]
        assert len(api.messages(root_id).json()) == 6  # the source is untouched

    def test_a_tool_call_group_is_copied_whole(self, api, root_id, llm_script) -> None:
        llm_script(reply("", tool_call("c1", "stello_create_session", {"label": "B"})),
                   reply("Done."))
        api.said(root_id, "branch")
        messages = api.messages(root_id).json()
        child = api.fork(root_id, label="X", fromMessage=messages[1]["id"]).json()
        assert [m["role"] for m in api.messages(child["id"]).json()] == [
            "user", "assistant", "tool"]

    @pytest.mark.parametrize("value", ["1", 0, -3, 1.5, True, {"id": 1}])
    def test_a_malformed_from_message_is_400(self, api, root_id, value) -> None:
        response = api.fork(root_id, label="X", fromMessage=value)
        assert response.status_code == 400
        assert Session.objects.count() == 1

    def test_a_message_of_another_session_or_space_is_400(
        self, api, root_id, alice_client
    ) -> None:
        child = api.child(root_id, "Child")["id"]
        api.said(child, "theirs")
        other = create_space(alice_client, label="Other")
        other_root = root_of(other["id"])
        alice_client.post(f"/spaces/{other['id']}/sessions/{other_root}/turn", {"input": "o"},
                          format="json")
        count = Session.objects.count()
        for foreign in (api.messages(child).json()[0]["id"],
                        Record.objects.filter(session_id=other_root).first().id):
            response = api.fork(root_id, label="X", fromMessage=foreign)
            assert response.status_code == 400, response.content
        assert Session.objects.count() == count

    def test_context_none_with_from_message_is_400(self, api, root_id) -> None:
        api.said(root_id, "one")
        first = api.messages(root_id).json()[0]["id"]
        assert api.fork(root_id, label="X", fromMessage=first,
                        context="none").status_code == 400


class _KeyedClient:
    def __init__(self, key: str) -> None:
        self._client, self._key = AsyncClient(), key

    async def post(self, path: str, body: Any = None, **kwargs: Any):
        return await self._client.post(path, body or {}, content_type="application/json",
                                       headers={"X-API-Key": self._key})

    async def delete(self, path: str):
        return await self._client.delete(path, headers={"X-API-Key": self._key})


@pytest.mark.django_db(transaction=True)
class TestEditsAndRunningTurns:
    """A real slow LLM (loopback HTTP) keeps a turn running while an edit arrives through the
    ASGI handler on the same runtime."""

    @pytest.fixture
    def client(self, alice_key):
        return _KeyedClient(alice_key)

    @pytest.fixture
    def slow_llm(self, use_llm, settings):
        """`async with slow_llm(lock_wait) as server`: the runtime of the test's loop talks to
        a loopback LLM server (built after the settings change, so it uses them)."""
        from contextlib import asynccontextmanager

        @asynccontextmanager
        async def start(lock_wait: float):
            settings.STELLO = {**settings.STELLO, "SESSION_LOCK_TIMEOUT_SECONDS": lock_wait}
            with OpenAIServer() as server:
                use_llm(openai_llm(server.base_url))
                runtimes.current()
                try:
                    yield server
                finally:
                    await runtimes.aclose_current()

        return start

    async def _start_slow_turn(self, client, api, root_id, server) -> asyncio.Task:
        server.delay(1.0, text="slow answer")
        turn = asyncio.ensure_future(client.post(api.path(root_id, "turn"), {"input": "q"}))
        for _ in range(100):  # until the LLM has the request: the turn holds the lock
            if server.requests:
                break
            await asyncio.sleep(0.02)
        assert server.requests
        return turn

    async def test_a_regenerate_waits_for_the_running_turn(
        self, api, root_id, client, slow_llm
    ) -> None:
        async with slow_llm(10) as server:
            turn = await self._start_slow_turn(client, api, root_id, server)
            server.reply("regenerated")
            regen = await client.post(api.path(root_id, "regenerate"))
            assert turn.done()  # it waited for the turn, never ran inside it
            assert (await turn).status_code == 200
            assert regen.status_code == 200, regen.content
            # The regenerate's prompt held the whole question, once.
            last = server.requests[-1].body
            assert [m["content"] for m in last["messages"] if m["role"] == "user"] == ["q"]
        rows = [(r.role, r.content) async for r in Record.objects.filter(session_id=root_id)]
        assert rows == [("user", "q"), ("assistant", "regenerated")]
        assert (await Session.objects.aget(pk=root_id)).turn_count == 1

    async def test_an_edit_that_cannot_wait_is_refused_and_changes_nothing(
        self, api, root_id, client, slow_llm
    ) -> None:
        async with slow_llm(0.2) as server:
            turn = await self._start_slow_turn(client, api, root_id, server)
            busy = [await client.post(api.path(root_id, "regenerate")),
                    await client.delete(api.path(root_id, "messages/1")),
                    await client.delete(api.path(root_id))]
            assert (await turn).status_code == 200
        assert [r.status_code for r in busy] == [409, 409, 409]
        assert all(r.json()["code"] == "SESSION_BUSY" for r in busy)
        rows = [(r.role, r.content) async for r in Record.objects.filter(session_id=root_id)]
        assert rows == [("user", "q"), ("assistant", "slow answer")]
