"""LLM faults through the whole server: a loopback OpenAI/Anthropic server misbehaves, the
client gets a clear 502, nothing partial is persisted, and the next turn on that session works."""

from __future__ import annotations

import orjson
import pytest

from sessions_app.models import Record, Session
from tests.conftest import HOT_PATH_DB
from tests.support.llm_servers import tool_call

pytest_plugins = ["tests.support.llm_fixtures"]


def use_llm(settings, provider: str, base_url: str, *, retries: int = 0) -> None:
    settings.STELLO = {**settings.STELLO, "LLM": {
        "provider": provider, "model": "test-model", "base_url": base_url, "api_key": "test-key",
        "max_context_tokens": 128000, "max_output_tokens": 256, "timeout_seconds": 0.5,
        "max_retries": retries, "script_path": None,
    }, "MEMORY_LLM": None, "CONSOLIDATE_EVERY_N_TURNS": 0}


@pytest.fixture
def session(alice_client) -> tuple[str, str]:
    space = alice_client.post("/spaces", {"label": "Faults"}, format="json").json()
    root = alice_client.get(f"/spaces/{space['id']}/sessions").json()["id"]
    return space["id"], root


def turn(client, session, text: str):
    space_id, session_id = session
    return client.post(f"/spaces/{space_id}/sessions/{session_id}/turn", {"input": text},
                       format="json")


def assert_untouched_and_usable(client, session, server) -> None:
    assert not Record.objects.filter(session_id=session[1]).exists()
    assert Session.objects.get(pk=session[1]).turn_count == 0
    server.reply("recovered")
    response = turn(client, session, "again")
    assert response.status_code == 200
    assert response.json()["turn"]["finalContent"] == "recovered"
    assert list(Record.objects.filter(session_id=session[1]).values_list("role", "content")) == [
        ("user", "again"), ("assistant", "recovered")]
    assert Session.objects.get(pk=session[1]).turn_count == 1


@HOT_PATH_DB
class TestOpenAICompatibleFaults:
    @pytest.mark.parametrize(("status", "message"), [(429, "slow down"), (500, "exploded"),
                                                     (503, "overloaded"), (400, "bad request")])
    def test_an_error_status_is_a_502_with_the_providers_message(
        self, alice_client, session, settings, openai_server, status, message
    ) -> None:
        use_llm(settings, "openai", openai_server.base_url)
        openai_server.error(status, message)
        response = turn(alice_client, session, "hello")
        assert response.status_code == 502
        assert message in response.json()["error"] and response.json()["code"] == "LLM_ERROR"
        assert_untouched_and_usable(alice_client, session, openai_server)

    def test_transient_errors_are_retried_a_bounded_number_of_times(
        self, alice_client, session, settings, openai_server
    ) -> None:
        use_llm(settings, "openai", openai_server.base_url, retries=2)
        openai_server.error(503, "busy", times=2).reply("third time lucky")
        response = turn(alice_client, session, "hello")
        assert response.status_code == 200
        assert response.json()["turn"]["finalContent"] == "third time lucky"
        assert len(openai_server.requests) == 3
        openai_server.error(503, "still busy", times=3)
        assert turn(alice_client, session, "again").status_code == 502
        assert len(openai_server.requests) == 6  # 1 + 2 retries, then the client is told

    def test_a_timeout_is_a_502(self, alice_client, session, settings, openai_server) -> None:
        use_llm(settings, "openai", openai_server.base_url)
        openai_server.delay(2.0)
        response = turn(alice_client, session, "hello")
        assert response.status_code == 502
        assert_untouched_and_usable(alice_client, session, openai_server)

    def test_a_malformed_json_body_is_a_502(
        self, alice_client, session, settings, openai_server
    ) -> None:
        use_llm(settings, "openai", openai_server.base_url)
        openai_server.malformed()
        assert turn(alice_client, session, "hello").status_code == 502
        assert_untouched_and_usable(alice_client, session, openai_server)

    def test_tool_call_arguments_that_are_not_json_are_a_502(
        self, alice_client, session, settings, openai_server
    ) -> None:
        use_llm(settings, "openai", openai_server.base_url)
        openai_server.reply(None, tool_calls=[tool_call("c1", "stello_create_session", {},
                                                        raw_arguments="{oops")])
        response = turn(alice_client, session, "hello")
        assert response.status_code == 502 and "JSON" in response.json()["error"]
        assert Session.objects.filter(space_id=session[0]).count() == 1  # no child forked
        assert_untouched_and_usable(alice_client, session, openai_server)

    def test_a_failure_in_a_later_tool_round_keeps_the_completed_calls_and_tool_results(
        self, alice_client, session, settings, openai_server
    ) -> None:
        use_llm(settings, "openai", openai_server.base_url)
        openai_server.reply("forking", tool_calls=[tool_call("c1", "stello_create_session",
                                                             {"label": "Kid"})])
        openai_server.error(500, "round two failed")
        assert turn(alice_client, session, "hello").status_code == 502
        rows = list(Record.objects.filter(session_id=session[1]).values_list("role", flat=True))
        # The first call's records, and the result of the tool it ran (the child exists).
        assert rows == ["user", "assistant", "tool"]
        assert Session.objects.get(pk=session[1]).turn_count == 0
        openai_server.reply("fine now")
        assert turn(alice_client, session, "next").json()["turn"]["finalContent"] == "fine now"
        sent = openai_server.requests[-1].body["messages"]
        # The tool call reaches the next prompt with its result, as providers require.
        calls = [n for n, m in enumerate(sent) if m.get("tool_calls")]
        assert len(calls) == 1
        assert sent[calls[0] + 1]["role"] == "tool"
        assert sent[calls[0] + 1]["tool_call_id"] == "c1"
        assert Session.objects.get(pk=session[1]).turn_count == 1


@HOT_PATH_DB
class TestAnthropicFaults:
    def test_an_overloaded_error_is_a_502_and_the_session_recovers(
        self, alice_client, session, settings, anthropic_server
    ) -> None:
        use_llm(settings, "anthropic", anthropic_server.base_url)
        anthropic_server.error(529, "Overloaded")
        response = turn(alice_client, session, "hello")
        assert response.status_code == 502 and "Overloaded" in response.json()["error"]
        assert_untouched_and_usable(alice_client, session, anthropic_server)

    def test_a_successful_turn_sends_the_system_prompt_and_history(
        self, alice_client, session, settings, anthropic_server
    ) -> None:
        use_llm(settings, "anthropic", anthropic_server.base_url)
        space_id, root = session
        alice_client.put(f"/spaces/{space_id}/sessions/{root}/system-prompt",
                         {"content": "Be brief."}, format="json")
        anthropic_server.reply("first")
        turn(alice_client, session, "one")
        anthropic_server.reply("second", usage=(12, 3))
        body = turn(alice_client, session, "two").json()
        assert orjson.loads(body["turn"]["rawResponse"]) == {
            "content": "second", "toolCalls": [],
            "usage": {"promptTokens": 12, "completionTokens": 3}}
        sent = anthropic_server.requests[-1].body
        assert sent["system"] == "Be brief."
        assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
