"""An MCP server (started by the test, see tests/support/mcp_server.py) configured for the
server and chosen by a space's config serves a REST turn end to end."""

from __future__ import annotations

import sys

from tests.test_mcp_tools import SERVER, child_env

from .conftest import HOT_PATH_DB, SessionApi, create_space, reply, root_of, tool_call

pytestmark = HOT_PATH_DB


def test_a_spaces_mcp_server_serves_a_rest_turn(alice_client, llm_script, settings) -> None:
    settings.STELLO = {**settings.STELLO, "MCP_SERVERS": {
        "calc": {"command": sys.executable, "args": [SERVER], "env": child_env()}}}
    llm_script(reply(None, tool_call("c1", "calc__add", {"a": 19, "b": 23})), reply("42"))
    plain = create_space(alice_client, label="No MCP")
    space = create_space(alice_client, label="With MCP", config={"mcpServers": ["calc"]})
    api = SessionApi(alice_client, space["id"])
    root = root_of(space["id"])

    response = api.turn(root, "what is 19 + 23?")

    assert response.status_code == 200, response.content
    assert response.json()["turn"]["finalContent"] == "42"
    messages = api.messages(root).json()
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[2]["content"] == '{"result":42}'

    # A space that did not choose the server does not get its tools.
    llm_script(reply(None, tool_call("c1", "calc__add", {"a": 1, "b": 1})), reply("no"))
    other = SessionApi(alice_client, plain["id"])
    assert other.turn(root_of(plain["id"]), "add").status_code == 200
    assert other.messages(root_of(plain["id"])).json()[2]["content"] == "Unknown tool: calc__add"


def test_a_space_may_only_name_configured_mcp_servers(alice_client, settings) -> None:
    settings.STELLO = {**settings.STELLO, "MCP_SERVERS": {"calc": {"command": "true"}}}
    response = alice_client.post("/spaces", {"label": "S", "config": {"mcpServers": ["rm"]}},
                                 format="json")
    assert response.status_code == 400
    assert response.json()["error"] == "config.mcpServers: unknown MCP server 'rm' (calc)"
