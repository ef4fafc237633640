"""An LLM reply with lone surrogates (JSON "\\ud800" escapes) through the whole REST API: the
turn answers 200 with U+FFFD in their place, and what is saved is the same text."""

from __future__ import annotations

import pytest

from sessions_app.models import Record
from tests.conftest import HOT_PATH_DB
from tests.support.llm_servers import tool_call
from tests.test_llm_faults import session, turn, use_llm  # noqa: F401 (`session` is a fixture)

pytest_plugins = ["tests.support.llm_fixtures"]


@HOT_PATH_DB
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_reply_with_lone_surrogates_is_saved_and_answered_as_replacement_characters(
    alice_client, session, settings, openai_server, anthropic_server, provider  # noqa: F811
) -> None:
    server = openai_server if provider == "openai" else anthropic_server
    use_llm(settings, provider, server.base_url)
    server.reply(tool_calls=[tool_call("c1", "stello_create_session", {"label": "L\ud800"})])
    server.reply("half \ud83d of a pair, then \udc00 alone")
    response = turn(alice_client, session, "hello")
    assert response.status_code == 200, response.content
    expected = "half \ufffd of a pair, then \ufffd alone"
    assert response.json()["turn"]["finalContent"] == expected
    assert response.content.decode("utf-8")  # valid UTF-8 all through
    contents = list(Record.objects.filter(session_id=session[1]).order_by("id")
                    .values_list("role", "content"))
    assert contents[0] == ("user", "hello") and contents[-1] == ("assistant", expected)
    tree = alice_client.get(f"/spaces/{session[0]}/sessions").json()
    assert [child["label"] for child in tree["children"]] == ["L\ufffd"]
