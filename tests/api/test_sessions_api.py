"""REST /spaces/<id>/sessions: the tree, SessionMeta, messages, turns, forks and archive."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from django.test import AsyncClient
from django.utils import timezone

from sessions_app.models import Record, Session, SessionData, TopologyNode
from sessions_app.runtime.pool import runtimes
from tests.support.llm_servers import OpenAIServer

from .conftest import (
    HOT_PATH_DB,
    SESSION_META_KEYS,
    SPACE_PROMPT,
    TIMESTAMP,
    TOPOLOGY_KEYS,
    closed_port,
    create_space,
    openai_llm,
    reply,
    root_of,
    tool_call,
)

CONTEXT_MESSAGE = 'context must be "none", "inherit" or "compress"'
pytestmark = HOT_PATH_DB

UNKNOWN_IDS = [str(uuid.UUID(int=0)), "not-a-uuid", "123"]


def record_roles(session_id: str) -> list[str]:
    return list(Record.objects.filter(session_id=session_id).values_list("role", flat=True))


def turn_count(session_id: str) -> int:
    return Session.objects.get(pk=session_id).turn_count


class TestTree:
    def test_a_fresh_space_is_a_lone_active_root_named_after_the_space(
        self, api, root_id
    ) -> None:
        response = api.tree()
        assert response.status_code == 200
        assert response.json() == {"id": root_id, "label": "Research", "status": "active",
                                   "turnCount": 0, "children": []}
        assert "sourceSessionId" not in response.json()

    def test_forks_from_the_root_are_children_in_index_order_with_their_source(
        self, api, root_id
    ) -> None:
        first = api.child(root_id, "Child A")
        second = api.child(root_id, "Child B")
        tree = api.tree().json()
        assert tree["children"] == [
            {"id": first["id"], "label": "Child A", "status": "active", "turnCount": 0,
             "children": [], "sourceSessionId": root_id},
            {"id": second["id"], "label": "Child B", "status": "active", "turnCount": 0,
             "children": [], "sourceSessionId": root_id},
        ]
        assert (first["index"], second["index"]) == (0, 1)

    def test_forking_from_a_child_puts_the_grandchild_under_the_root_flat(
        self, api, root_id
    ) -> None:
        child = api.child(root_id, "Child A")
        grandchild = api.child(child["id"], "Child of A")
        assert (grandchild["parentId"], grandchild["depth"], grandchild["index"]) == (
            root_id, 1, 1)
        assert grandchild["sourceSessionId"] == child["id"]
        tree = api.tree().json()
        assert [(n["label"], n.get("sourceSessionId")) for n in tree["children"]] == [
            ("Child A", root_id), ("Child of A", child["id"])]
        assert all(n["children"] == [] for n in tree["children"])

    def test_the_tree_strategy_puts_a_grandchild_under_its_source(
        self, api, root_id, settings
    ) -> None:
        settings.STELLO = {**settings.STELLO, "FORK_STRATEGY": "tree"}
        child = api.child(root_id, "Child A")
        grandchild = api.child(child["id"], "Child of A")
        assert (grandchild["parentId"], grandchild["depth"], grandchild["index"]) == (
            child["id"], 2, 0)
        tree = api.tree().json()
        assert tree["children"][0]["children"][0]["id"] == grandchild["id"]

    def test_an_archived_session_stays_in_the_tree_with_status_archived(
        self, api, root_id
    ) -> None:
        child = api.child(root_id, "Done")
        api.archive(child["id"])
        assert api.tree().json()["children"][0]["status"] == "archived"

    def test_turn_counts_show_in_the_tree(self, api, root_id) -> None:
        api.said(root_id, "hello")
        assert api.tree().json()["turnCount"] == 1


class TestSessionMeta:
    def test_meta_of_the_root_is_the_session_meta_union_without_tree_fields(
        self, api, root_id
    ) -> None:
        response = api.meta(root_id)
        assert response.status_code == 200
        body = response.json()
        assert set(body) == SESSION_META_KEYS
        assert {k: body[k] for k in ("id", "label", "role", "status", "scope", "tags",
                                     "metadata", "turnCount")} == {
            "id": root_id, "label": "Research", "role": "main", "status": "active",
            "scope": None, "tags": [], "metadata": {}, "turnCount": 0}
        assert all(TIMESTAMP.match(body[k]) for k in ("createdAt", "updatedAt", "lastActiveAt"))

    def test_meta_of_a_child_is_standard_with_its_scope_and_source_in_metadata(
        self, api, root_id
    ) -> None:
        child = api.child(root_id, "Scoped", scope="only the methods section")
        body = api.meta(child["id"]).json()
        assert set(body) == SESSION_META_KEYS
        assert (body["role"], body["scope"], body["metadata"]) == (
            "standard", "only the methods section", {"sourceSessionId": root_id})

    @pytest.mark.parametrize("session_id", UNKNOWN_IDS)
    def test_an_unknown_or_malformed_session_is_404(self, api, session_id) -> None:
        response = api.meta(session_id)
        assert response.status_code == 404
        assert response.json()["error"] == "Session not found"

    def test_a_session_of_another_space_of_the_same_user_is_404(
        self, api, alice_client
    ) -> None:
        other_root = root_of(create_space(alice_client, label="Other")["id"])
        response = api.meta(other_root)
        assert response.status_code == 404
        assert response.json()["error"] == "Session not found"

    def test_a_trailing_slash_is_accepted(self, api, root_id) -> None:
        assert api.client.get(api.path(root_id) + "/").status_code == 200


class TestMessages:
    def test_a_new_session_has_no_messages(self, api, root_id) -> None:
        response = api.messages(root_id)
        assert response.status_code == 200 and response.json() == []

    def test_a_turn_records_the_user_message_then_the_reply(self, api, root_id) -> None:
        api.said(root_id, "hello")
        messages = api.messages(root_id).json()
        assert [(m["role"], m["content"], m["metadata"]) for m in messages] == [
            ("user", "hello", None), ("assistant", "echo: hello", None)]
        assert all(set(m) == {"id", "role", "content", "timestamp", "metadata"} for m in messages)
        assert messages[0]["id"] < messages[1]["id"]  # record ids, in order
        assert all(TIMESTAMP.match(m["timestamp"]) for m in messages)

    def test_tool_calls_and_tool_call_ids_appear_only_where_set(
        self, api, root_id, llm_script
    ) -> None:
        llm_script(
            reply("Let me open a branch.", tool_call(
                "call_1", "stello_create_session", {"label": "Branch"})),
            reply("Done."),
        )
        api.said(root_id, "branch off")
        child_id = Session.objects.get(label="Branch").id
        messages = api.messages(root_id).json()
        assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
        user, calling, tool, final = messages
        assert "toolCalls" not in user and "toolCallId" not in user
        assert calling["toolCalls"] == [
            {"id": "call_1", "name": "stello_create_session", "input": {"label": "Branch"}}]
        assert "toolCallId" not in calling
        assert tool["toolCallId"] == "call_1" and "toolCalls" not in tool
        assert json.loads(tool["content"]) == {"sessionId": str(child_id), "label": "Branch"}
        assert set(final) == {"id", "role", "content", "timestamp", "metadata"}
        assert all(m["metadata"] is None for m in messages)

    @pytest.mark.parametrize("session_id", UNKNOWN_IDS)
    def test_messages_of_an_unknown_or_malformed_session_are_404(
        self, api, session_id
    ) -> None:
        response = api.messages(session_id)
        assert response.status_code == 404
        assert response.json()["error"] == "Session not found"


class TestTurn:
    def test_a_turn_returns_exactly_the_engine_turn_result(self, api, root_id) -> None:
        response = api.turn(root_id, "hello")
        assert response.status_code == 200
        body = response.json()
        assert list(body) == ["turn", "turnId"]  # turnId: an added field (live turns)
        assert set(body["turn"]) == {"finalContent", "toolRoundCount", "toolCallsExecuted",
                                     "rawResponse", "usage"}  # usage: an added field
        assert (body["turn"]["finalContent"], body["turn"]["toolRoundCount"],
                body["turn"]["toolCallsExecuted"]) == ("echo: hello", 0, 0)
        raw = json.loads(body["turn"]["rawResponse"])
        assert set(raw) == {"content", "toolCalls", "usage"}
        assert (raw["content"], raw["toolCalls"]) == ("echo: hello", [])
        assert set(raw["usage"]) == {"promptTokens", "completionTokens"}

    def test_a_turn_counts_and_moves_last_active_at(self, api, root_id) -> None:
        long_ago = timezone.now() - timedelta(days=1)
        Session.objects.filter(pk=root_id).update(last_active_at=long_ago)
        before = api.meta(root_id).json()
        api.said(root_id, "one")
        after = api.meta(root_id).json()
        assert (before["turnCount"], after["turnCount"]) == (0, 1)
        assert after["lastActiveAt"] > before["lastActiveAt"]
        api.said(root_id, "two")
        assert api.meta(root_id).json()["turnCount"] == 2

    def test_a_turn_on_a_child_uses_the_childs_history(self, api, root_id) -> None:
        child = api.child(root_id, "Child")
        assert api.said(child["id"], "in the child")["finalContent"] == "echo: in the child"
        assert record_roles(child["id"]) == ["user", "assistant"]
        assert record_roles(root_id) == []

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            ({}, "input is required"),
            ({"input": ""}, "input must not be empty"),
            ({"input": None}, "input must be a string"),
            ({"input": 42}, "input must be a string"),
            ({"input": ["hello"]}, "input must be a string"),
            ({"text": "hello"}, "input is required"),
            (["hello"], "Request body must be a JSON object"),
            ("hello", "Request body must be a JSON object"),
        ],
    )
    def test_an_invalid_body_is_400_and_persists_nothing(
        self, api, root_id, body, message
    ) -> None:
        response = api.turn(root_id, body=body)
        assert response.status_code == 400
        assert response.json()["error"] == message
        assert record_roles(root_id) == [] and turn_count(root_id) == 0

    def test_an_absent_body_is_400_input_is_required(self, api, root_id) -> None:
        response = api.client.post(api.path(root_id, "turn"))
        assert response.status_code == 400
        assert response.json()["error"] == "input is required"

    def test_malformed_json_is_400_and_persists_nothing(self, api, root_id) -> None:
        response = api.client.post(api.path(root_id, "turn"), "{not json",
                                   content_type="application/json")
        assert response.status_code == 400
        assert response.json()["error"] == "Invalid JSON body"
        assert record_roles(root_id) == []

    def test_a_json_body_is_read_whatever_the_content_type(self, api, root_id) -> None:
        response = api.client.post(api.path(root_id, "turn"), '{"input": "plain"}',
                                   content_type="text/plain")
        assert response.status_code == 200
        assert response.json()["turn"]["finalContent"] == "echo: plain"

    @pytest.mark.parametrize("session_id", UNKNOWN_IDS)
    def test_a_turn_on_an_unknown_session_is_404(self, api, session_id) -> None:
        response = api.turn(session_id, "hello")
        assert response.status_code == 404
        assert response.json()["error"] == "Session not found"
        assert Record.objects.count() == 0


class TestRouting:
    @pytest.mark.parametrize(("method", "suffix"), [
        ("get", "turn"), ("get", "fork"), ("get", "archive"), ("post", "messages"),
        ("post", ""), ("put", ""),
    ])
    def test_an_unsupported_method_is_405(self, api, root_id, method, suffix) -> None:
        response = getattr(api.client, method)(api.path(root_id, suffix))
        assert response.status_code == 405
        assert response.json()["code"] == "METHOD_NOT_ALLOWED"
        assert Session.objects.get(pk=root_id).status == "active"

    def test_an_unknown_session_route_is_a_json_404(self, api, root_id) -> None:
        response = api.client.get(api.path(root_id, "nowhere"))
        assert response.status_code == 404
        assert response.json()["error"] == "Not Found"


class TestToolCallingTurn:
    @pytest.fixture
    def creates_a_session(self, llm_script) -> None:
        llm_script(
            reply("", tool_call("call_1", "stello_create_session",
                                {"label": "Literature review",
                                 "systemPrompt": "You review papers."})),
            reply("I opened a session for the literature review."),
        )

    def test_the_result_counts_one_round_and_one_executed_call(
        self, api, root_id, creates_a_session
    ) -> None:
        result = api.said(root_id, "start a literature review")
        assert (result["finalContent"], result["toolRoundCount"],
                result["toolCallsExecuted"]) == (
            "I opened a session for the literature review.", 1, 1)
        raw = json.loads(result["rawResponse"])
        assert raw["content"] == "I opened a session for the literature review."
        assert raw["toolCalls"] == []

    def test_the_child_is_created_under_the_root_with_the_given_system_prompt(
        self, api, root_id, creates_a_session
    ) -> None:
        api.said(root_id, "start a literature review")
        children = api.tree().json()["children"]
        assert [(c["label"], c["sourceSessionId"]) for c in children] == [
            ("Literature review", root_id)]
        child_id = children[0]["id"]
        assert api.slot(child_id, "system-prompt").json() == {"content": "You review papers."}
        assert api.meta(child_id).json()["role"] == "standard"
        assert TopologyNode.objects.get(session_id=child_id).parent_id == uuid.UUID(root_id)

    def test_the_source_history_is_user_call_tool_result_reply_and_counts_one_turn(
        self, api, root_id, creates_a_session
    ) -> None:
        api.said(root_id, "start a literature review")
        child_id = api.tree().json()["children"][0]["id"]
        messages = api.messages(root_id).json()
        assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
        assert messages[0]["content"] == "start a literature review"
        assert messages[1]["toolCalls"][0]["name"] == "stello_create_session"
        assert json.loads(messages[2]["content"]) == {"sessionId": child_id,
                                                      "label": "Literature review"}
        assert messages[3]["content"] == "I opened a session for the literature review."
        assert api.meta(root_id).json()["turnCount"] == 1
        assert api.messages(child_id).json() == []


    def test_a_tool_that_fails_is_reported_to_the_llm_and_the_turn_completes(
        self, api, root_id, llm_script
    ) -> None:
        llm_script(reply("", tool_call("call_1", "stello_create_session", {"label": ""})),
                   reply("Sorry, that did not work."))
        result = api.said(root_id, "make a nameless session")
        assert (result["finalContent"], result["toolCallsExecuted"]) == (
            "Sorry, that did not work.", 1)
        tool = api.messages(root_id).json()[2]
        assert tool["role"] == "tool" and "label must not be empty" in tool["content"]
        assert Session.objects.count() == 1

    def test_running_out_of_tool_rounds_is_502_and_does_not_count_the_turn(
        self, api, root_id, llm_script, settings
    ) -> None:
        settings.STELLO = {**settings.STELLO, "MAX_TOOL_ROUNDS": 1}
        llm_script(
            reply("", tool_call("call_1", "stello_create_session", {"label": "One"})),
            reply("", tool_call("call_2", "stello_create_session", {"label": "Two"})),
        )
        response = api.turn(root_id, "keep calling tools")
        assert response.status_code == 502
        assert response.json()["error"] == "tool loop exceeded the limit: at most 1 rounds"
        assert api.meta(root_id).json()["turnCount"] == 0
        assert [c["label"] for c in api.tree().json()["children"]] == ["One"]
        # Every stored tool call has its result: the one not run says why.
        messages = api.messages(root_id).json()
        assert [(m["role"], m.get("toolCallId")) for m in messages] == [
            ("user", None), ("assistant", None), ("tool", "call_1"), ("assistant", None),
            ("tool", "call_2")]
        assert messages[-1]["content"] == (
            "Not run: the tool loop limit (1 rounds) was reached and the turn ended.")

    def test_the_llm_creates_at_most_the_per_turn_cap_of_sessions(
        self, api, root_id, llm_script, settings
    ) -> None:
        settings.STELLO = {**settings.STELLO, "MAX_FORKS_PER_TURN": 2}
        llm_script(
            reply("", *[tool_call(f"c{n}", "stello_create_session", {"label": f"S{n}"})
                        for n in range(20)]),
            reply("Made what I could."),
        )
        result = api.said(root_id, "make twenty sessions")
        assert (result["finalContent"], result["toolCallsExecuted"]) == (
            "Made what I could.", 20)
        assert [c["label"] for c in api.tree().json()["children"]] == ["S0", "S1"]
        assert Session.objects.count() == 3
        refused = [m for m in api.messages(root_id).json()
                   if m["role"] == "tool" and m["content"].startswith("Not created")]
        assert len(refused) == 18
        assert "at most 2 sessions may be created per turn" in refused[0]["content"]

    @pytest.mark.parametrize(
        "script",
        [
            [reply("a reply with a NUL \x00 inside")],
            [reply("", tool_call("call_1", "stello_create_session", {"label": "x\x00y"})),
             reply("done")],
        ],
        ids=["in-the-reply", "in-tool-arguments"],
    )
    def test_a_nul_character_from_the_llm_is_never_a_server_error(
        self, api, root_id, llm_script, script
    ) -> None:
        # Requests cannot carry NUL (refused up front), but LLM output can; PostgreSQL text
        # and jsonb cannot store it.
        llm_script(*script)
        response = api.turn(root_id, "hello")
        assert response.status_code in (200, 502), response.content
        llm_script()
        assert api.said(root_id, "still there?")["finalContent"] == "echo: still there?"


class TestFork:
    def test_fork_returns_201_with_the_topology_and_session_meta_union(
        self, api, root_id
    ) -> None:
        response = api.fork(root_id, label="Child A")
        assert response.status_code == 201
        body = response.json()
        assert set(body) == TOPOLOGY_KEYS | SESSION_META_KEYS
        assert {k: body[k] for k in ("parentId", "children", "refs", "depth", "index", "label",
                                     "sourceSessionId", "role", "status", "scope", "tags",
                                     "turnCount")} == {
            "parentId": root_id, "children": [], "refs": [], "depth": 1, "index": 0,
            "label": "Child A", "sourceSessionId": root_id, "role": "standard",
            "status": "active", "scope": None, "tags": [], "turnCount": 0}
        assert body["metadata"] == {"sourceSessionId": root_id}
        assert uuid.UUID(body["id"])
        assert all(TIMESTAMP.match(body[k]) for k in ("createdAt", "updatedAt", "lastActiveAt"))

    def test_fork_response_matches_the_childs_meta(self, api, root_id) -> None:
        body = api.child(root_id, "Child A", scope="methods")
        assert api.meta(body["id"]).json() == {k: body[k] for k in SESSION_META_KEYS}

    def test_the_scope_is_stored_once_on_the_session(self, api, root_id) -> None:
        child = api.child(root_id, "Scoped", scope="only statistics")
        assert child["scope"] == "only statistics"
        assert api.meta(child["id"]).json()["scope"] == "only statistics"
        assert Session.objects.get(pk=child["id"]).scope == "only statistics"
        assert not SessionData.objects.filter(session_id=child["id"], key="scope").exists()

    def test_a_child_inherits_the_system_prompt_of_its_source(self, api, root_id) -> None:
        child = api.child(root_id, "Child")
        assert api.slot(child["id"], "system-prompt").json() == {"content": SPACE_PROMPT}
        api.put_slot(child["id"], "system-prompt", {"content": "Child prompt"})
        grandchild = api.child(child["id"], "Grandchild")
        assert api.slot(grandchild["id"], "system-prompt").json() == {"content": "Child prompt"}

    def test_a_given_system_prompt_replaces_the_inherited_one(self, api, root_id) -> None:
        child = api.child(root_id, "Child", systemPrompt="You are a statistician.")
        assert api.slot(child["id"], "system-prompt").json() == {
            "content": "You are a statistician."}

    def test_a_new_child_starts_with_an_empty_history_by_default(self, api, root_id) -> None:
        api.said(root_id, "hello")
        child = api.child(root_id, "Fresh")
        assert api.messages(child["id"]).json() == []

    def test_context_inherit_copies_the_source_history(self, api, root_id) -> None:
        api.said(root_id, "hello")
        child = api.child(root_id, "Copy", context="inherit")
        assert [(m["role"], m["content"]) for m in api.messages(child["id"]).json()] == [
            ("user", "hello"), ("assistant", "echo: hello")]
        assert api.meta(child["id"]).json()["turnCount"] == 0

    def test_a_prompt_adds_an_opening_assistant_message_after_inherited_ones(
        self, api, root_id
    ) -> None:
        api.said(root_id, "hello")
        child = api.child(root_id, "Opened", context="inherit", prompt="Shall we begin?")
        assert [(m["role"], m["content"]) for m in api.messages(child["id"]).json()] == [
            ("user", "hello"), ("assistant", "echo: hello"), ("assistant", "Shall we begin?")]

    def test_a_fork_changes_nothing_on_its_source(self, api, root_id) -> None:
        api.said(root_id, "hello")
        before = api.meta(root_id).json()
        api.child(root_id, "Child", context="inherit")
        assert api.meta(root_id).json() == before
        assert record_roles(root_id) == ["user", "assistant"]

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            ({}, "label is required"),
            ({"label": ""}, "label must not be empty"),
            ({"label": "   "}, "label must not be blank"),
            ({"label": None}, "label must be a string"),
            ({"label": 7}, "label must be a string"),
            ({"label": ["x"]}, "label must be a string"),
            ({"label": "x", "context": "everything"}, CONTEXT_MESSAGE),
            ({"label": "x", "context": 1}, CONTEXT_MESSAGE),
            ({"label": "x", "scope": 3}, "scope must be a string or null"),
            ({"label": "x", "systemPrompt": {"a": 1}}, "systemPrompt must be a string or null"),
            ([], "Request body must be a JSON object"),
        ],
    )
    def test_an_invalid_fork_is_400_and_creates_nothing(
        self, api, root_id, body, message
    ) -> None:
        response = api.fork(root_id, body=body)
        assert response.status_code == 400
        assert response.json()["error"] == message
        assert Session.objects.count() == 1

    def test_malformed_json_is_400(self, api, root_id) -> None:
        response = api.client.post(api.path(root_id, "fork"), "label=x",
                                   content_type="application/json")
        assert response.status_code == 400
        assert response.json()["error"] == "Invalid JSON body"

    @pytest.mark.parametrize("session_id", UNKNOWN_IDS)
    def test_forking_an_unknown_session_is_404(self, api, session_id) -> None:
        response = api.fork(session_id, label="Orphan")
        assert response.status_code == 404
        assert response.json()["error"] == "Session not found"
        assert Session.objects.count() == 1

    def test_forking_from_an_archived_session_is_allowed(self, api, root_id) -> None:
        child = api.child(root_id, "Archived")
        api.archive(child["id"])
        response = api.fork(child["id"], label="From archived")
        assert response.status_code == 201
        assert response.json()["sourceSessionId"] == child["id"]
        assert response.json()["status"] == "active"


class TestArchive:
    def test_archive_returns_the_session_id_and_meta_with_status_archived(
        self, api, root_id
    ) -> None:
        child = api.child(root_id, "Finished")
        response = api.archive(child["id"])
        assert response.status_code == 200
        body = response.json()
        assert set(body) == SESSION_META_KEYS | {"sessionId"}
        assert (body["sessionId"], body["id"], body["status"], body["label"]) == (
            child["id"], child["id"], "archived", "Finished")
        assert Session.objects.get(pk=child["id"]).status == "archived"

    def test_archive_is_idempotent(self, api, root_id) -> None:
        child = api.child(root_id, "Finished")
        first = api.archive(child["id"]).json()
        second = api.archive(child["id"])
        assert second.status_code == 200
        assert second.json()["status"] == "archived"
        assert second.json()["updatedAt"] == first["updatedAt"]

    def test_a_turn_on_an_archived_session_is_409_and_persists_nothing(
        self, api, root_id
    ) -> None:
        child = api.child(root_id, "Finished")
        api.archive(child["id"])
        response = api.turn(child["id"], "are you there?")
        assert response.status_code == 409
        assert response.json()["error"] == (
            f'Session "{child["id"]}" is archived and cannot be modified')
        assert record_roles(child["id"]) == [] and turn_count(child["id"]) == 0

    def test_archiving_does_not_cascade_to_other_sessions(self, api, root_id) -> None:
        child = api.child(root_id, "Parent-ish")
        other = api.child(child["id"], "Sibling")
        api.archive(child["id"])
        assert api.meta(other["id"]).json()["status"] == "active"
        assert api.meta(root_id).json()["status"] == "active"

    def test_the_main_session_cannot_be_archived(self, api, root_id) -> None:
        before = api.meta(root_id).json()
        response = api.archive(root_id)
        assert response.status_code == 409
        assert response.json() == {"error": "The main session cannot be archived",
                                   "code": "MAIN_SESSION_NOT_ARCHIVABLE"}
        assert api.meta(root_id).json() == before
        assert api.turn(root_id, "still here").status_code == 200

    @pytest.mark.parametrize("session_id", UNKNOWN_IDS)
    def test_archiving_an_unknown_session_is_404(self, api, session_id) -> None:
        response = api.archive(session_id)
        assert response.status_code == 404
        assert response.json()["error"] == "Session not found"


class TestUnarchive:
    def test_unarchive_makes_an_archived_session_active_and_usable_again(
        self, api, root_id
    ) -> None:
        child = api.child(root_id, "Paused")
        api.archive(child["id"])
        response = api.unarchive(child["id"])
        assert response.status_code == 200
        body = response.json()
        assert set(body) == SESSION_META_KEYS | {"sessionId"}
        assert (body["sessionId"], body["status"]) == (child["id"], "active")
        assert api.said(child["id"], "back again")["finalContent"] == "echo: back again"
        assert api.put_slot(child["id"], "system-prompt", {"content": "x"}).status_code == 200
        assert api.tree().json()["children"][0]["status"] == "active"

    def test_unarchiving_an_active_session_changes_nothing(self, api, root_id) -> None:
        child = api.child(root_id, "Active")
        before = api.meta(child["id"]).json()
        response = api.unarchive(child["id"])
        assert response.status_code == 200
        assert {k: v for k, v in response.json().items() if k != "sessionId"} == before

    def test_a_main_session_archived_by_an_older_release_can_be_unarchived(
        self, api, root_id
    ) -> None:
        Session.objects.filter(pk=root_id).update(status="archived")
        assert api.turn(root_id, "hello").status_code == 409
        assert api.unarchive(root_id).json()["status"] == "active"
        assert api.said(root_id, "hello")["finalContent"] == "echo: hello"

    @pytest.mark.parametrize("session_id", UNKNOWN_IDS)
    def test_unarchiving_an_unknown_session_is_404(self, api, session_id) -> None:
        response = api.unarchive(session_id)
        assert response.status_code == 404
        assert response.json()["error"] == "Session not found"


class TestUpstreamLLMFailure:
    def test_an_unreachable_llm_is_502_and_persists_nothing(
        self, api, root_id, use_llm
    ) -> None:
        use_llm(openai_llm(f"http://127.0.0.1:{closed_port()}/v1"))
        response = api.turn(root_id, "hello")
        assert response.status_code == 502
        assert response.json()["error"].startswith("OpenAI-compatible API connection error")
        assert response.json()["code"] == "LLM_ERROR"
        assert record_roles(root_id) == []
        assert api.meta(root_id).json()["turnCount"] == 0

    def test_the_providers_error_message_reaches_the_client(self, api, root_id, use_llm) -> None:
        with OpenAIServer() as server:
            server.error(400, "This model does not accept such long inputs")
            use_llm(openai_llm(server.base_url))
            response = api.turn(root_id, "hello")
        assert response.status_code == 502
        assert "This model does not accept such long inputs" in response.json()["error"]
        assert record_roles(root_id) == []

    def test_the_session_is_usable_after_a_failed_call(self, api, root_id, use_llm) -> None:
        use_llm(openai_llm(f"http://127.0.0.1:{closed_port()}/v1"))
        assert api.turn(root_id, "lost").status_code == 502
        use_llm(None)
        assert api.said(root_id, "hello again")["finalContent"] == "echo: hello again"
        assert [(m["role"], m["content"]) for m in api.messages(root_id).json()] == [
            ("user", "hello again"), ("assistant", "echo: hello again")]
        assert api.meta(root_id).json()["turnCount"] == 1

    def test_a_failure_in_a_later_round_keeps_the_completed_call_and_its_tool_results(
        self, api, root_id, use_llm
    ) -> None:
        with OpenAIServer() as server:
            server.reply("", tool_calls=[tool_call("c1", "stello_create_session",
                                                   {"label": "Half"})])
            server.error(400, "context window exceeded")
            use_llm(openai_llm(server.base_url))
            response = api.turn(root_id, "branch then fail")
        assert response.status_code == 502
        assert "context window exceeded" in response.json()["error"]
        # Each successful call is saved at once, with the results of the tools it ran (the
        # child exists); the failed continuation saved nothing and counts no turn.
        assert record_roles(root_id) == ["user", "assistant", "tool"]
        assert api.messages(root_id).json()[2]["toolCallId"] == "c1"
        assert [c["label"] for c in api.tree().json()["children"]] == ["Half"]
        assert api.meta(root_id).json()["turnCount"] == 0
        use_llm(None)
        assert api.said(root_id, "next")["finalContent"] == "echo: next"
        assert api.meta(root_id).json()["turnCount"] == 1


@pytest.mark.django_db(transaction=True)
class TestBusySession:
    """The ASGI test client runs the view's engine work on the test's own event loop, so the
    test can hold a session's lock through the very runtime that serves the request."""

    @pytest.fixture
    def short_lock_wait(self, settings) -> None:
        settings.STELLO = {**settings.STELLO, "SESSION_LOCK_TIMEOUT_SECONDS": 0.2}

    @pytest.fixture
    async def runtime(self, short_lock_wait):
        runtime = runtimes.current()
        yield runtime
        await runtimes.aclose_current()

    @pytest.fixture
    def post(self, alice_key):
        """`await post(path, body)` as alice through the ASGI handler."""
        client = AsyncClient()

        async def post(path: str, body: dict):
            return await client.post(path, body, content_type="application/json",
                                     headers={"X-API-Key": alice_key})

        return post

    @pytest.mark.parametrize(
        ("suffix", "body"),
        [("turn", {"input": "hello"}), ("fork", {"label": "Child"}), ("archive", {})],
    )
    async def test_an_operation_on_a_locked_session_is_409_session_busy(
        self, api, root_id, runtime, post, suffix, body
    ) -> None:
        async with runtime.locks.hold(root_id):
            response = await post(api.path(root_id, suffix), body)
        assert response.status_code == 409
        assert response.json() == {"error": "session busy", "code": "SESSION_BUSY"}
        assert await Record.objects.filter(session_id=root_id).acount() == 0
        assert await Session.objects.acount() == 1
        assert (await Session.objects.aget(pk=root_id)).status == "active"

    async def test_the_session_works_again_once_the_lock_is_free(
        self, api, root_id, runtime, post
    ) -> None:
        async with runtime.locks.hold(root_id):
            busy = await post(api.path(root_id, "turn"), {"input": "first"})
        response = await post(api.path(root_id, "turn"), {"input": "second"})
        assert busy.status_code == 409
        assert response.status_code == 200
        assert response.json()["turn"]["finalContent"] == "echo: second"
        assert (await Session.objects.aget(pk=root_id)).turn_count == 1

    async def test_another_session_is_not_blocked_by_a_locked_one(
        self, api, root_id, runtime, post
    ) -> None:
        child = await post(api.path(root_id, "fork"), {"label": "Child"})
        async with runtime.locks.hold(root_id):
            response = await post(api.path(child.json()["id"], "turn"), {"input": "free"})
        assert response.status_code == 200
        assert response.json()["turn"]["finalContent"] == "echo: free"


class TestQueryCounts:
    def test_reading_the_tree_costs_a_bounded_number_of_queries(
        self, api, root_id, django_assert_max_num_queries
    ) -> None:
        for label in ("A", "B", "C"):
            child = api.child(root_id, label)
            api.child(child["id"], f"{label} child")
        api.tree()  # authentication is cached from here on
        with django_assert_max_num_queries(2):
            assert api.tree().status_code == 200

    def test_reading_meta_costs_a_bounded_number_of_queries(
        self, api, root_id, django_assert_max_num_queries
    ) -> None:
        api.meta(root_id)
        with django_assert_max_num_queries(2):
            assert api.meta(root_id).status_code == 200

    def test_reading_messages_costs_a_bounded_number_of_queries(
        self, api, root_id, django_assert_max_num_queries
    ) -> None:
        for n in range(5):
            api.said(root_id, f"message {n}")
        api.messages(root_id)
        with django_assert_max_num_queries(2):
            assert len(api.messages(root_id).json()) == 10
