"""The memory pipeline through the REST API: triggers, manual endpoints, insights, failures.

The sync test client runs each request on a throwaway event loop whose runtime is closed
(background jobs finished) before the response returns, so background work is deterministic.
"""

from __future__ import annotations

import json
import logging
import socket

import pytest

from sessions_app.models import Session, SessionData
from tests.conftest import HOT_PATH_DB


@pytest.fixture
def space(alice_client) -> dict:
    body = alice_client.post("/spaces", {"label": "Memory", "systemPrompt": "sp"},
                             format="json").json()
    body["root"] = alice_client.get(f"/spaces/{body['id']}/sessions").json()["id"]
    return body


def fork(client, space, label: str) -> str:
    response = client.post(f"/spaces/{space['id']}/sessions/{space['root']}/fork",
                           {"label": label}, format="json")
    assert response.status_code == 201
    return response.json()["id"]


def turn(client, space, session_id: str, text: str) -> dict:
    response = client.post(f"/spaces/{space['id']}/sessions/{session_id}/turn", {"input": text},
                           format="json")
    assert response.status_code == 200, response.content
    return response.json()


def slot(client, space, session_id: str, name: str):
    return client.get(f"/spaces/{space['id']}/sessions/{session_id}/{name}").json()["content"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def failing_memory_llm(settings):
    settings.STELLO = {**settings.STELLO, "MEMORY_LLM": {
        "provider": "openai", "model": "m", "base_url": f"http://127.0.0.1:{closed_port()}/v1",
        "api_key": "k", "max_context_tokens": 128000, "max_output_tokens": 64,
        "timeout_seconds": 2.0, "max_retries": 0, "script_path": None,
    }, "BACKGROUND_RETRIES": 0}


@HOT_PATH_DB
class TestTriggers:
    def test_every_third_turn_consolidates_the_child_and_integrates_the_space(
        self, alice_client, space
    ) -> None:
        child = fork(alice_client, space, "Research")
        for n in range(2):
            turn(alice_client, space, child, f"q{n}")
        assert slot(alice_client, space, child, "memory") is None
        turn(alice_client, space, child, "q2")
        memory = slot(alice_client, space, child, "memory")
        assert memory and "Summary of 6 messages" in memory and "q2" in memory
        synthesis = slot(alice_client, space, space["root"], "memory")
        assert synthesis and "Research" in synthesis
        insight = slot(alice_client, space, child, "insight")
        assert insight and "Research" in insight

    def test_the_insight_is_seen_once_then_emptied(self, alice_client, space) -> None:
        child = fork(alice_client, space, "Research")
        for n in range(3):
            turn(alice_client, space, child, f"q{n}")
        assert slot(alice_client, space, child, "insight") is not None
        turn(alice_client, space, child, "next")
        assert slot(alice_client, space, child, "insight") is None

    def test_the_main_session_does_not_consolidate(self, alice_client, space) -> None:
        for n in range(3):
            turn(alice_client, space, space["root"], f"q{n}")
        assert slot(alice_client, space, space["root"], "memory") is None

    def test_zero_disables_automatic_consolidation(self, alice_client, space, settings) -> None:
        settings.STELLO = {**settings.STELLO, "CONSOLIDATE_EVERY_N_TURNS": 0}
        child = fork(alice_client, space, "Quiet")
        for n in range(3):
            turn(alice_client, space, child, f"q{n}")
        assert slot(alice_client, space, child, "memory") is None

    def test_archiving_consolidates_the_session(self, alice_client, space) -> None:
        child = fork(alice_client, space, "Done")
        turn(alice_client, space, child, "only turn")
        alice_client.post(f"/spaces/{space['id']}/sessions/{child}/archive")
        assert "only turn" in slot(alice_client, space, child, "memory")

    def test_a_failing_memory_llm_leaves_turns_working_and_is_logged(
        self, alice_client, space, failing_memory_llm, caplog
    ) -> None:
        child = fork(alice_client, space, "Fragile")
        with caplog.at_level(logging.ERROR, logger="stello.jobs"):
            for n in range(3):
                assert turn(alice_client, space, child, f"q{n}")["turn"]["finalContent"] == (
                    f"echo: q{n}")
        assert slot(alice_client, space, child, "memory") is None
        failures = [r for r in caplog.records if r.name == "stello.jobs"]
        assert failures and space["id"] in failures[0].getMessage()
        assert Session.objects.get(pk=child).turn_count == 3


@HOT_PATH_DB
class TestManualEndpoints:
    def test_consolidate_returns_and_stores_the_memory(self, alice_client, space) -> None:
        child = fork(alice_client, space, "Manual")
        turn(alice_client, space, child, "remember this")
        response = alice_client.post(f"/spaces/{space['id']}/sessions/{child}/consolidate")
        assert response.status_code == 200
        memory = response.json()["memory"]
        assert "remember this" in memory
        assert slot(alice_client, space, child, "memory") == memory

    def test_consolidating_a_session_with_no_history_answers_a_null_memory_as_documented(
            self, alice_client, space) -> None:
        child = fork(alice_client, space, "Empty")
        response = alice_client.post(f"/spaces/{space['id']}/sessions/{child}/consolidate")
        assert (response.status_code, response.json()) == (200, {"memory": None})
        schema = alice_client.get("/api/schema/?format=json").json()
        memory = schema["components"]["schemas"]["ConsolidateResponse"]["properties"]["memory"]
        assert memory.get("nullable") is True

    def test_consolidation_prompt_resolves_session_slot_then_space_then_default(
        self, alice_client, space
    ) -> None:
        from sessions_app.engine import memory

        child = fork(alice_client, space, "Prompted")
        assert memory.resolve_prompt(None, None, "default") == "default"
        alice_client.put(f"/spaces/{space['id']}/sessions/{child}/consolidate-prompt",
                         {"content": "session prompt"}, format="json")
        assert SessionData.objects.get(session_id=child, key="consolidate_prompt").content == (
            "session prompt")

    def test_integrate_returns_synthesis_and_insights(self, alice_client, space) -> None:
        a, b = fork(alice_client, space, "A"), fork(alice_client, space, "B")
        for child in (a, b):
            turn(alice_client, space, child, "work")
            alice_client.post(f"/spaces/{space['id']}/sessions/{child}/consolidate")
        response = alice_client.post(f"/spaces/{space['id']}/integrate")
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"synthesis", "insights"}
        assert {i["sessionId"] for i in body["insights"]} == {a, b}
        assert slot(alice_client, space, space["root"], "memory") == body["synthesis"]
        for insight in body["insights"]:
            assert slot(alice_client, space, insight["sessionId"], "insight") == insight["content"]

    def test_archived_targets_are_409(self, alice_client, space, settings) -> None:
        settings.STELLO = {**settings.STELLO, "CONSOLIDATE_ON_ARCHIVE": False}
        child = fork(alice_client, space, "Old")
        alice_client.post(f"/spaces/{space['id']}/sessions/{child}/archive")
        response = alice_client.post(f"/spaces/{space['id']}/sessions/{child}/consolidate")
        assert response.status_code == 409
        # A main session archived before archiving it was refused.
        Session.objects.filter(pk=space["root"]).update(status="archived")
        assert alice_client.post(f"/spaces/{space['id']}/integrate").status_code == 409

    def test_background_work_skips_an_archived_main_session_without_a_traceback(
        self, alice_client, space, settings, caplog
    ) -> None:
        settings.STELLO = {**settings.STELLO, "CONSOLIDATE_EVERY_N_TURNS": 1}
        Session.objects.filter(pk=space["root"]).update(status="archived")
        child = fork(alice_client, space, "Busy")
        with caplog.at_level(logging.INFO):
            turn(alice_client, space, child, "consolidate me")
            alice_client.post(f"/spaces/{space['id']}/sessions/{child}/archive")
        assert "consolidate me" in slot(alice_client, space, child, "memory")
        assert slot(alice_client, space, space["root"], "memory") is None  # no integration
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []

    def test_consolidating_the_main_session_is_400(self, alice_client, space) -> None:
        response = alice_client.post(
            f"/spaces/{space['id']}/sessions/{space['root']}/consolidate")
        assert response.status_code == 400

    def test_another_spaces_session_is_404_and_another_users_space_403(
        self, alice_client, bob_client, space
    ) -> None:
        child = fork(alice_client, space, "Mine")
        bob_space = bob_client.post("/spaces", {"label": "B"}, format="json").json()
        response = bob_client.post(f"/spaces/{bob_space['id']}/sessions/{child}/consolidate")
        assert response.status_code == 404
        assert bob_client.post(f"/spaces/{space['id']}/integrate").status_code == 403

    def test_a_failing_memory_llm_is_502(self, alice_client, space, failing_memory_llm) -> None:
        child = fork(alice_client, space, "Fragile")
        turn(alice_client, space, child, "x")
        response = alice_client.post(f"/spaces/{space['id']}/sessions/{child}/consolidate")
        assert response.status_code == 502
        assert alice_client.post(f"/spaces/{space['id']}/integrate").status_code == 502
        assert slot(alice_client, space, child, "memory") is None


@HOT_PATH_DB
def test_compression_summarises_old_history_and_caches_the_summary_in_the_database(
    alice_client, space, settings
) -> None:
    settings.STELLO = {**settings.STELLO, "CONSOLIDATE_EVERY_N_TURNS": 0,
                       "LLM": {**settings.STELLO["LLM"], "max_context_tokens": 300}}
    root = space["root"]
    for n in range(12):
        turn(alice_client, space, root, f"message number {n} " + "words " * 20)
    cache = SessionData.objects.get(session_id=root, key="compression")
    first = cache.content
    assert '"summary"' in first and "Summary of" in first
    body = turn(alice_client, space, root, "one more")
    prompt_tokens = json.loads(body["turn"]["rawResponse"])["usage"]["promptTokens"]
    assert prompt_tokens <= 300  # the 24 stored messages (~800 tokens) were summarised
    # The history stays whole in the database: compression only shapes the prompt.
    assert Session.objects.get(pk=root).turn_count == 13
    records = alice_client.get(f"/spaces/{space['id']}/sessions/{root}/messages").json()
    assert len(records) == 26
    assert SessionData.objects.get(session_id=root, key="compression").content
