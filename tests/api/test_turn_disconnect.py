"""A REST client that hangs up in the middle of a turn does not lose it.

A real server process talks to a loopback OpenAI server in this test process that holds the
LLM call for a few seconds. The client sends the turn over a raw socket, waits until the call
has reached the LLM, and closes the socket. The server cancels the request, but the turn goes
on: the LLM's answer is saved and counted, like a WebSocket turn whose client went away.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sessions_app.models import Record, Session
from tests.support.llm_servers import OpenAIServer
from tests.support.servers import committed_tenant, http_json, server_env, server_processes

pytestmark = [pytest.mark.servers, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

BOUND = 20.0  # seconds: the most any wait below may take
HOLD = 2.0  # seconds the loopback LLM holds the call (the client is gone long before)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {BOUND:g}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def llm() -> Iterator[OpenAIServer]:
    with OpenAIServer() as server:
        yield server


def send_and_hang_up(port: int, path: str, key: str, body: dict, *,
                     until: Callable[[], bool]) -> None:
    """POST `body` over a raw socket, wait until `until()`, then close without reading."""
    payload = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-API-Key: {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=BOUND) as sock:
        sock.sendall(head.encode() + payload)
        wait_for(until, "the turn's call to reach the LLM")


def test_a_turn_whose_client_hangs_up_mid_llm_call_is_saved(
    llm: OpenAIServer, tmp_path: Path
) -> None:
    tenant = committed_tenant("hangup", "Hang up")
    env = server_env(
        STELLO_LLM_PROVIDER="openai", STELLO_LLM_BASE_URL=llm.base_url,
        STELLO_LLM_API_KEY="test-key", STELLO_LLM_MODEL="test-model",
        STELLO_LLM_MAX_RETRIES="0", STELLO_CONSOLIDATE_EVERY_N_TURNS="0",
    )
    session_id = tenant["root_id"]
    path = f"/spaces/{tenant['space_id']}/sessions/{session_id}/turn"
    llm.delay(HOLD, text="answered after the client left")
    with server_processes([env], tmp_path) as (server,):
        send_and_hang_up(server.port, path, tenant["key"], {"input": "are you there?"},
                         until=lambda: len(llm.requests) == 1)

        wait_for(lambda: Session.objects.get(pk=session_id).turn_count == 1,
                 "the turn to be saved")
        records = list(Record.objects.filter(session_id=session_id)
                       .values_list("role", "content"))
        assert records == [("user", "are you there?"),
                           ("assistant", "answered after the client left")]
        assert len(llm.requests) == 1

        # The session is free again and the saved turn is part of its history.
        status, body = http_json("GET", server.http(f"{path[:-len('/turn')]}/messages"),
                                 tenant["key"])
        assert status == 200
        assert [m["content"] for m in body] == ["are you there?",
                                                "answered after the client left"]
        assert "Traceback" not in server.output()
