"""A server process killed (SIGKILL) in the middle of turns and of a memory job.

Two daphne processes share the test database. Process A talks to a loopback OpenAI server in
this test process, which holds A's LLM calls (`delay(30)`); process B uses the offline LLM
(`echo: <input>`). Turns are started through A, the test waits until the LLM has received
them and PostgreSQL shows A holding the sessions' advisory locks, then A is killed.

What must hold afterwards: no half turn (no user record without its reply, turnCount
unchanged), every record committed before the kill is still there, the session locks are
released by PostgreSQL (it drops the dead process's connections) so B serves the same sessions
promptly (far under the 120 s lock timeout), and a memory job cut by the kill leaves the memory
slot as it was. A restarted A serves turns and consolidates normally.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from websockets.asyncio.client import connect

from sessions_app.models import Record, Session, SessionData
from tests.support.llm_servers import OpenAIServer
from tests.support.servers import (
    Server,
    committed_tenant,
    http_json,
    restart,
    server_env,
    server_processes,
)

pytestmark = [pytest.mark.servers, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

BOUND = 20.0  # seconds: the most any wait below may take (the lock timeout is 120 s)
HANG = 30.0  # seconds the loopback LLM holds a delayed call


def wait_for(condition: Callable[[], bool], what: str, timeout: float = BOUND) -> float:
    """Poll until `condition()`; the seconds it took. Fails after `timeout`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def advisory_locks_held() -> int:
    """Session locks (advisory locks) granted in the test database, by any process."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        return cursor.fetchone()[0]


def history(session_id: str) -> tuple[list[tuple[str, str]], int]:
    records = list(Record.objects.filter(session_id=session_id).values_list("role", "content"))
    return records, Session.objects.get(pk=session_id).turn_count


def memory_of(session_id: str) -> str | None:
    return (SessionData.objects.filter(session_id=session_id, key="memory")
            .values_list("content", flat=True).first())


def assert_clean_pairs(records: list[tuple[str, str]]) -> None:
    assert len(records) % 2 == 0, records
    for n in range(0, len(records), 2):
        assert (records[n][0], records[n + 1][0]) == ("user", "assistant"), records


def is_consolidation(body: Any) -> bool:
    messages = body.get("messages", []) if isinstance(body, dict) else []
    return bool(messages) and "summarises conversations" in messages[0].get("content", "")


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def llm() -> Iterator[OpenAIServer]:
    """The loopback LLM of process A (what a test does not script is answered `echo: ...`)."""
    with OpenAIServer() as server:
        yield server


@pytest.fixture
def tenant() -> dict[str, str]:
    """A user, key and space committed to the test database, with two child sessions."""
    return committed_tenant("restarter", "Restart")


def fork(server: Server, tenant: dict[str, str], label: str) -> str:
    status, child = http_json("POST", server.http(
        f"/spaces/{tenant['space_id']}/sessions/{tenant['root_id']}/fork"), tenant["key"],
        {"label": label})
    assert status == 201, child
    return child["id"]


def turn(server: Server, tenant: dict[str, str], session_id: str, text: str,
         timeout: float = BOUND) -> tuple[int, Any]:
    return http_json("POST", server.http(
        f"/spaces/{tenant['space_id']}/sessions/{session_id}/turn"), tenant["key"],
        {"input": text}, timeout=timeout)


def a_env(llm: OpenAIServer, **overrides: str) -> dict[str, str]:
    return server_env(
        STELLO_LLM_PROVIDER="openai", STELLO_LLM_BASE_URL=llm.base_url,
        STELLO_LLM_API_KEY="test-key", STELLO_LLM_MODEL="test-model",
        STELLO_LLM_MAX_RETRIES="0", STELLO_LLM_TIMEOUT_SECONDS="300",
        **{"STELLO_BACKGROUND_RETRIES": "0", **overrides},
    )


# -- tests -----------------------------------------------------------------------------------


def test_a_process_killed_mid_turn_leaves_no_half_turn_and_frees_the_session(
    llm: OpenAIServer, tenant: dict[str, str], tmp_path: Path
) -> None:
    env_a = a_env(llm, STELLO_CONSOLIDATE_EVERY_N_TURNS="0")
    env_b = server_env(STELLO_CONSOLIDATE_EVERY_N_TURNS="0")
    with server_processes([env_a, env_b], tmp_path) as (a, b):
        s, s2 = fork(b, tenant, "S"), fork(b, tenant, "S2")
        for text in ("before one", "before two"):  # committed before the kill
            assert turn(b, tenant, s, text)[0] == 200
        committed = history(s)
        assert committed[1] == 2 and len(committed[0]) == 4

        llm.delay(HANG, times=10)
        with ThreadPoolExecutor(max_workers=4) as pool:
            # Three turns on S through A: one reaches the LLM and holds S's lock, two queue
            # behind it; and a stream on S2 through A, also held in the LLM.
            pending: list[Future] = [pool.submit(unanswered_turn, a, tenant, s, f"lost {n}")
                                     for n in range(3)]
            pending.append(pool.submit(asyncio.run, stream_until_closed(a, tenant, s2)))
            wait_for(lambda: len(llm.requests) >= 2, "A's LLM calls for S and S2")
            wait_for(lambda: advisory_locks_held() == 2, "A holding the locks of S and S2")
            time.sleep(0.3)  # let the queued turns settle in A's lock queue
            a.kill()
            outcomes = [f.result(timeout=BOUND) for f in pending]

        # The killed turns were never acknowledged: their connections died unanswered.
        assert outcomes[:3] == ["connection lost"] * 3, outcomes
        assert outcomes[3] == ("session.entered", "ConnectionClosedError", "closed"), outcomes
        # One call per session reached the LLM; the other turns on S were queued behind it.
        asked = sorted(r.body["messages"][-1]["content"] for r in llm.requests)
        assert len(asked) == 2 and asked[0].startswith("lost ") and asked[1] == "lost stream"

        # No half turn, nothing committed lost.
        assert history(s) == committed
        assert history(s2) == ([], 0)

        # PostgreSQL dropped A's connections and with them the locks: B gets S at once (a
        # held lock would keep these turns waiting for the 120 s lock timeout, then 409).
        started = time.monotonic()
        status, body = turn(b, tenant, s, "after the kill")
        assert status == 200 and body["turn"]["finalContent"] == "echo: after the kill", body
        assert turn(b, tenant, s2, "S2 after the kill")[0] == 200
        assert time.monotonic() - started < BOUND
        wait_for(lambda: advisory_locks_held() == 0, "every lock to be released")
        records, count = history(s)
        assert records == [*committed[0], ("user", "after the kill"),
                           ("assistant", "echo: after the kill")]
        assert count == 3
        assert_clean_pairs(records)
        assert history(s2)[1] == 1


def unanswered_turn(server: Server, tenant: dict[str, str], session_id: str,
                    text: str) -> Any:
    """A turn expected to die with its server: "connection lost", or what it got instead."""
    try:
        return turn(server, tenant, session_id, text, timeout=60.0)
    except OSError:  # RemoteDisconnected, ConnectionResetError
        return "connection lost"


async def stream_until_closed(server: Server, tenant: dict[str, str],
                              session_id: str) -> tuple[Any, ...]:
    """A stream through `server` that is expected never to finish: the frames received,
    then "closed" when the connection dies."""
    frames: list[Any] = []
    async with asyncio.timeout(60), connect(
        server.ws(tenant["space_id"]), additional_headers={"X-API-Key": tenant["key"]},
        open_timeout=BOUND, proxy=None,
    ) as ws:
        await ws.send(json.dumps({"type": "session.enter", "sessionId": session_id}))
        frames.append(json.loads(await ws.recv())["type"])
        await ws.send(json.dumps({"type": "session.stream", "input": "lost stream"}))
        try:
            async for raw in ws:
                frames.append(json.loads(raw))
        except Exception as exc:  # ConnectionClosedError: the server died
            frames.append(type(exc).__name__)
    return (*frames, "closed")


def memory_jobs(space_id: str) -> list[tuple[str, int]]:
    """(status, runs so far) of the space's memory jobs in the queue, oldest first (the queue's
    tables are not emptied between tests)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT status, attempts FROM procrastinate_jobs"
                       " WHERE args->>'space_id' = %s ORDER BY id", [space_id])
        return [tuple(row) for row in cursor.fetchall()]


def test_a_memory_job_cut_by_a_kill_is_run_again_by_the_next_process(
    llm: OpenAIServer, tenant: dict[str, str], tmp_path: Path
) -> None:
    env_a = a_env(llm, STELLO_CONSOLIDATE_EVERY_N_TURNS="1",
                  STELLO_INTEGRATE_AFTER_CONSOLIDATE="false",
                  STELLO_BACKGROUND_STALL_SECONDS="2")
    with server_processes([env_a], tmp_path) as servers:
        (a,) = servers
        s = fork(a, tenant, "S")
        SessionData.objects.create(session_id=s, key="memory", content="memory before the kill")

        llm.reply("answer one")  # the turn
        llm.delay(HANG, text="memory that never arrives")  # its consolidation
        status, body = turn(a, tenant, s, "question one")
        assert status == 200 and body["turn"]["finalContent"] == "answer one"
        wait_for(lambda: len(llm.requests) == 2 and is_consolidation(llm.requests[1].body),
                 "A's consolidation call")
        assert advisory_locks_held() == 0  # the model is never asked under the session lock
        assert memory_jobs(tenant["space_id"]) == [("doing", 0)]
        a.kill()

        # The committed turn is all there; the memory slot is as it was, not half written;
        # the job is still in the queue, owned by a worker that sends no heartbeat any more.
        assert history(s) == ([("user", "question one"), ("assistant", "answer one")], 1)
        assert memory_of(s) == "memory before the kill"
        assert memory_jobs(tenant["space_id"]) == [("doing", 0)]

        # The next process (same settings) takes the dead worker's job over and completes it.
        # Queued before the restart: the new process may take the job over as it starts,
        # before its first request (a reply queued later raced it; it got the echo).
        llm.reply("<think>draft</think>fresh memory of question one")
        a2 = restart(a, servers)
        fork(a2, tenant, "wakes the engine")  # daphne sends no lifespan: the first request
        wait_for(lambda: memory_of(s) == "fresh memory of question one",
                 "the next process to run the consolidation again")
        consolidation = llm.requests[-1].body
        assert is_consolidation(consolidation)
        transcript = consolidation["messages"][1]["content"]
        assert transcript == ("Current summary:\nmemory before the kill\n\n"
                              "Conversation:\nuser: question one\nassistant: answer one")
        # Two runs: the one cut by the kill, the one that completed.
        wait_for(lambda: memory_jobs(tenant["space_id"]) == [("succeeded", 2)],
                 "the job to be recorded done")
        assert len(llm.requests) == 3  # once cut, once completed: nothing else


def test_transient_llm_errors_of_a_memory_job_are_retried_and_shown_in_the_admin(
    llm: OpenAIServer, tenant: dict[str, str], tmp_path: Path, admin_client
) -> None:
    env_a = a_env(llm, STELLO_CONSOLIDATE_EVERY_N_TURNS="1",
                  STELLO_INTEGRATE_AFTER_CONSOLIDATE="false", STELLO_BACKGROUND_RETRIES="2",
                  STELLO_BACKGROUND_RETRY_DELAY_SECONDS="0")
    with server_processes([env_a], tmp_path) as (a,):
        s = fork(a, tenant, "S")
        llm.reply("answer")  # the turn
        llm.error(500, "upstream hiccup", times=2)  # the consolidation, twice
        llm.reply("memory after two failures")  # its third attempt
        assert turn(a, tenant, s, "question")[0] == 200
        wait_for(lambda: memory_of(s) == "memory after two failures", "the retried job")
        assert [is_consolidation(r.body) for r in llm.requests] == [False, True, True, True]
        # Three runs: two failed (HTTP 500, transient), the third succeeded.
        wait_for(lambda: memory_jobs(tenant["space_id"]) == [("succeeded", 3)],
                 "the job to be recorded done")

    # The admin lists the job with its status, runs and the last failure's error.
    page = admin_client.get("/admin/procrastinate/procrastinatejob/").content.decode()
    assert "stello.memory" in page and tenant["space_id"] in page
    assert "run 2: TransientJobError:" in page and "upstream hiccup" in page


def test_sigterm_lets_a_running_memory_job_finish_under_uvicorn(
    llm: OpenAIServer, tenant: dict[str, str], tmp_path: Path
) -> None:
    # uvicorn sends the ASGI lifespan shutdown on SIGTERM (daphne simply exits; its cut jobs
    # come back through the heartbeat, as above).
    env_a = a_env(llm, STELLO_CONSOLIDATE_EVERY_N_TURNS="1",
                  STELLO_INTEGRATE_AFTER_CONSOLIDATE="false",
                  STELLO_BACKGROUND_SHUTDOWN_GRACE_SECONDS="30")
    with server_processes([env_a], tmp_path, asgi_server="uvicorn") as (a,):
        s = fork(a, tenant, "S")
        llm.reply("answer")  # the turn
        llm.delay(2, text="memory finished during the shutdown")  # its consolidation
        assert turn(a, tenant, s, "question")[0] == 200
        wait_for(lambda: len(llm.requests) == 2, "the consolidation call")
        assert memory_of(s) is None
        a.stop()  # SIGTERM, then waits for the process to exit
        assert not a.running and "Application shutdown complete" in a.output(), a.output()
        # The job finished before the process ended: nothing is left for anyone else.
        assert memory_of(s) == "memory finished during the shutdown"
        assert memory_jobs(tenant["space_id"]) == [("succeeded", 1)]
