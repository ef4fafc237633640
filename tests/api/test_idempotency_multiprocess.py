"""`Idempotency-Key` across server processes (PostgreSQL advisory locks, Redis channel layer).

Two real server processes serve the same test database; a loopback OpenAI-compatible server
answers the first LLM call slowly, so the first turn is still running while its repeats arrive.
alice owns the committed space; bob only has his own API key.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from sessions_app.models import Record, Session
from spaces.apikeys import apikey_create
from spaces.models import IdempotencyRecord
from tests.conftest import make_user
from tests.support.llm_servers import OpenAIServer
from tests.support.servers import Server, committed_tenant, server_env, server_processes

pytestmark = [pytest.mark.servers, pytest.mark.postgres, pytest.mark.redis,
              pytest.mark.django_db(transaction=True)]

CONCURRENT = 50
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def lowered(headers: Any) -> dict[str, str]:
    """Header names in lower case: servers differ (uvicorn sends them so, daphne does not)."""
    return {name.lower(): value for name, value in headers.items()}


def send(url: str, api_key: str, body: Any, idempotency_key: str,
         timeout: float = 120.0) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"X-API-Key": api_key, "Content-Type": "application/json",
                 "Idempotency-Key": idempotency_key})
    try:
        with NO_PROXY.open(request, timeout=timeout) as response:
            return response.status, lowered(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, lowered(error.headers), error.read()


@pytest.fixture
def tenant(transactional_db) -> dict[str, str]:
    return committed_tenant("alice", "Shared", system_prompt="Be brief.")


@pytest.fixture
def llm() -> Iterator[OpenAIServer]:
    with OpenAIServer() as server:
        yield server


@pytest.fixture
def two_servers(tenant, llm: OpenAIServer, tmp_path) -> Iterator[list[Server]]:
    env = server_env(STELLO_LOG_LEVEL="WARNING", STELLO_LLM_PROVIDER="openai",
                     STELLO_LLM_BASE_URL=llm.base_url, STELLO_LLM_API_KEY="test-key",
                     STELLO_LLM_MODEL="test-model", STELLO_LLM_MAX_RETRIES="0",
                     REDIS_URL=os.environ["REDIS_URL"],
                     STELLO_REDIS_PREFIX=os.environ.get("STELLO_REDIS_PREFIX", "stello"))
    with server_processes([env, env], tmp_path) as servers:
        yield servers


def test_fifty_concurrent_identical_turns_through_two_processes_run_once(
        tenant: dict[str, str], llm: OpenAIServer, two_servers: list[Server]) -> None:
    llm.delay(1.5, text="the one answer")
    path = f"/spaces/{tenant['space_id']}/sessions/{tenant['root_id']}/turn"
    urls = [two_servers[n % 2].http(path) for n in range(CONCURRENT)]

    with ThreadPoolExecutor(max_workers=CONCURRENT) as pool:
        results = list(pool.map(
            lambda url: send(url, tenant["key"], {"input": "charge once"}, "pay-42"), urls))

    assert [status for status, _, _ in results] == [200] * CONCURRENT, results[:3]
    bodies = {body for _, _, body in results}
    assert len(bodies) == 1
    assert json.loads(bodies.pop())["turn"]["finalContent"] == "the one answer"
    replayed = [headers.get("idempotent-replayed") for _, headers, _ in results]
    assert replayed.count(None) == 1 and replayed.count("true") == CONCURRENT - 1
    assert len(llm.requests) == 1
    assert list(Record.objects.filter(session_id=tenant["root_id"]).values_list(
        "role", "content")) == [("user", "charge once"), ("assistant", "the one answer")]
    assert Session.objects.get(pk=tenant["root_id"]).turn_count == 1
    assert IdempotencyRecord.objects.count() == 1


def test_a_turn_retried_after_a_disconnect_gets_the_stored_answer(
        tenant: dict[str, str], llm: OpenAIServer, two_servers: list[Server]) -> None:
    llm.delay(2.0, text="worth the wait")
    path = f"/spaces/{tenant['space_id']}/sessions/{tenant['root_id']}/turn"

    with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
        send(two_servers[0].http(path), tenant["key"], {"input": "go"}, "k1", timeout=0.5)
    # The retry goes to the other process while the first one still runs the turn.
    status, headers, body = send(two_servers[1].http(path), tenant["key"], {"input": "go"}, "k1")

    assert status == 200
    assert headers.get("idempotent-replayed") == "true"
    assert json.loads(body)["turn"]["finalContent"] == "worth the wait"
    assert len(llm.requests) == 1
    assert Session.objects.get(pk=tenant["root_id"]).turn_count == 1


def test_bobs_key_is_independent_of_alices(
        tenant: dict[str, str], llm: OpenAIServer, two_servers: list[Server]) -> None:
    bob_key = apikey_create(user=make_user("bob"), name="bob")[1]
    alice = send(two_servers[0].http("/spaces"), tenant["key"], {"label": "A"}, "same")
    bob = send(two_servers[1].http("/spaces"), bob_key, {"label": "B"}, "same")

    assert alice[0] == bob[0] == 201
    assert "Idempotent-Replayed" not in bob[1]
    assert json.loads(bob[2])["label"] == "B"
    assert IdempotencyRecord.objects.filter(key="same").count() == 2
