"""Turns on one session are serialised across server processes (PostgreSQL advisory locks).

Two real daphne processes serve the same (test) database; concurrent turns on one session are
sent through both at once. The history must come out as clean user/reply pairs, the turn
count must be exact, and every turn must have been answered with the complete history.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from sessions_app.models import Record, Session
from tests.support.servers import (
    Server,
    committed_tenant,
    http_json,
    server_env,
    server_processes,
)

pytestmark = [pytest.mark.servers, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

TURNS_PER_PROCESS = 15
REQUEST_TIMEOUT_SECONDS = 120.0


@pytest.fixture
def alice_in_committed_data(transactional_db) -> dict[str, str]:
    """A user, key and space committed to the database, so other processes see them."""
    return committed_tenant("alice", "Shared", system_prompt="Be brief.")


@pytest.fixture
def two_servers(alice_in_committed_data, tmp_path) -> Iterator[list[Server]]:
    """Two daphne processes on the test database; stopped (and waited for) afterwards."""
    env = server_env(STELLO_LOG_LEVEL="WARNING")
    with server_processes([env, env], tmp_path) as servers:
        yield servers


def test_concurrent_turns_through_two_processes_are_serialised_per_session(
    alice_in_committed_data, two_servers
) -> None:
    key, space_id, root_id = (alice_in_committed_data[k] for k in ("key", "space_id", "root_id"))
    jobs = [
        (server.http(f"/spaces/{space_id}/sessions/{root_id}/turn"), f"process {p} turn {n}")
        for n in range(TURNS_PER_PROCESS) for p, server in enumerate(two_servers)
    ]

    def send(job: tuple[str, str]) -> tuple[str, int, Any]:
        url, text = job
        status, body = http_json("POST", url, key, {"input": text},
                                 timeout=REQUEST_TIMEOUT_SECONDS)
        return text, status, body

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(send, jobs))

    failures = [(text, status, body) for text, status, body in results if status != 200]
    assert failures == []
    assert all(body["turn"]["finalContent"] == f"echo: {text}" for text, _, body in results)

    records = list(Record.objects.filter(session_id=root_id).values_list("role", "content"))
    pairs = [records[i:i + 2] for i in range(0, len(records), 2)]
    assert all(pair == [("user", pair[0][1]), ("assistant", f"echo: {pair[0][1]}")]
               for pair in pairs), records
    assert sorted(user for (_, user), _ in pairs) == sorted(text for _, text in jobs)
    assert Session.objects.get(pk=root_id).turn_count == len(jobs)

    # Serialised turns each saw the whole history before them: the offline LLM bills
    # ceil(characters of the prompt / 4) tokens, so a turn that ran on a stale history (two
    # turns at once) would be billed for fewer characters than the records before it hold.
    billed = {text: json.loads(body["turn"]["rawResponse"])["usage"]["promptTokens"]
              for text, _, body in results}
    history_chars = 0
    for (_, user), (_, answer) in pairs:
        assert billed[user] * 4 >= history_chars + len(user), (user, billed[user])
        history_chars += len(user) + len(answer)
