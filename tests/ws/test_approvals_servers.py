"""Tool approval across two real server processes sharing PostgreSQL and Redis, with a loopback
OpenAI server as the LLM: a turn running on A is approved through B and completes on A; a
denial sent as a WebSocket frame to B reaches the LLM as the tool's error; A killed during the
wait, the answer through B resumes the turn there."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from sessions_app.models import Record, Session, Turn
from spaces.models import Space
from tests.support.servers import Server, http_json, restart
from tests.ws.test_multiprocess import open_ws, recv, send

pytestmark = [pytest.mark.servers, pytest.mark.postgres, pytest.mark.redis,
              pytest.mark.django_db(transaction=True)]

FORK = "stello_create_session"


@pytest.fixture
def gated(space_id) -> None:
    Space.objects.filter(pk=space_id).update(config={"approveTools": [FORK]})


def tool_messages(request: Any) -> list[tuple[str, str]]:
    return [(m["tool_call_id"], m["content"]) for m in request.body["messages"]
            if m["role"] == "tool"]


async def waiting_turn(server: Server, base: str, key: str) -> str:
    """The id of the session's turn once it waits for approval (asked of `server`)."""
    for _ in range(200):
        status, turns = await asyncio.to_thread(http_json, "GET", server.http(f"{base}/turns"),
                                                key)
        assert status == 200, turns
        waiting = [t["turnId"] for t in turns if t["status"] == "waiting"]
        if waiting:
            return waiting[0]
        await asyncio.sleep(0.05)
    raise AssertionError("no turn started waiting")


async def test_approved_on_b_while_the_turn_runs_on_a(servers, llm, space_id, root_id,
                                                      alice_key, gated) -> None:
    a, b = servers
    base = f"/spaces/{space_id}/sessions/{root_id}"
    llm.reply(None, tool_calls=[{"id": "c1", "name": FORK, "input": {"label": "Kid"}}])
    llm.reply("all done")
    async with asyncio.timeout(60):
        turn = asyncio.create_task(asyncio.to_thread(
            http_json, "POST", a.http(f"{base}/turn"), alice_key, {"input": "go"}, 50))
        turn_id = await waiting_turn(b, base, alice_key)
        await asyncio.sleep(0.3)
        assert not turn.done()  # A's request waits with its turn
        status, body = await asyncio.to_thread(
            http_json, "POST", b.http(f"{base}/turns/{turn_id}/approvals"), alice_key,
            {"callId": "c1", "approve": True})
        assert (status, body["status"]) == (200, "approved")
        status, result = await turn
    assert status == 200, result
    assert (result["turnId"], result["turn"]["finalContent"]) == (turn_id, "all done")
    kid = await Session.objects.aget(label="Kid")
    assert tool_messages(llm.last_request)[0][0] == "c1"
    assert str(kid.pk) in tool_messages(llm.last_request)[0][1]

    # A denial as a WebSocket frame to B: the LLM gets the reason as the tool's result.
    llm.reply(None, tool_calls=[{"id": "c2", "name": FORK, "input": {"label": "Nope"}}])
    llm.reply("understood")
    async with asyncio.timeout(60), open_ws(b, space_id, alice_key) as ws:
        turn = asyncio.create_task(asyncio.to_thread(
            http_json, "POST", a.http(f"{base}/turn"), alice_key, {"input": "again"}, 50))
        turn_id = await waiting_turn(a, base, alice_key)
        await send(ws, {"type": "session.enter", "sessionId": root_id})
        assert (await recv(ws))["type"] == "session.entered"
        await send(ws, {"type": "tool.approve", "callId": "c2", "approve": False,
                        "reason": "no more children"})
        answer = await recv(ws)
        assert answer["type"] == "tool.approval", answer
        assert (answer["turnId"], answer["approval"]["status"]) == (turn_id, "denied")
        status, result = await turn
    assert (status, result["turn"]["finalContent"]) == (200, "understood")
    assert tool_messages(llm.last_request)[-1] == (
        "c2", "Not run: the user denied this tool call (no more children).")
    assert not await Session.objects.filter(label="Nope").aexists()


async def test_a_killed_during_the_wait_the_answer_on_b_resumes_the_turn(
        servers, llm, space_id, root_id, alice_key, gated) -> None:
    a, b = servers
    base = f"/spaces/{space_id}/sessions/{root_id}"
    llm.reply(None, tool_calls=[{"id": "c1", "name": FORK, "input": {"label": "Survivor"}}])
    llm.reply("resumed fine")
    async with asyncio.timeout(90):
        turn = asyncio.create_task(asyncio.to_thread(
            http_json, "POST", a.http(f"{base}/turn"), alice_key, {"input": "go"}, 50))
        turn_id = await waiting_turn(b, base, alice_key)
        a.kill()  # SIGKILL: the waiting turn's process is gone, its lock with it
        with pytest.raises(OSError):
            await turn
        fresh = restart(a, servers)  # appended (so it is stopped at the end) ...
        servers.remove(fresh)
        servers[0] = fresh  # ... and A again for the next tests

        # The turn still waits: new turns are refused meanwhile.
        status, body = await asyncio.to_thread(
            http_json, "POST", fresh.http(f"{base}/turn"), alice_key,
            {"input": "cut in", "ifBusy": "reject"})
        assert (status, body["code"]) == (409, "SESSION_BUSY")
        status, body = await asyncio.to_thread(
            http_json, "POST", b.http(f"{base}/turns/{turn_id}/approvals"), alice_key,
            {"callId": "c1", "approve": True})
        assert status == 200, body
        for _ in range(200):
            status, turn_info = await asyncio.to_thread(
                http_json, "GET", b.http(f"{base}/turns/{turn_id}"), alice_key)
            if turn_info["status"] != "waiting" and turn_info["status"] != "running":
                break
            await asyncio.sleep(0.05)
    assert turn_info["status"] == "completed", turn_info
    assert turn_info["result"]["turn"]["finalContent"] == "resumed fine"
    assert await Session.objects.filter(label="Survivor").aexists()
    roles = await sync_to_async(lambda: list(Record.objects.filter(turn_id=turn_id)
                                             .order_by("id").values_list("role", flat=True)))()
    assert roles == ["user", "assistant", "tool", "assistant"]
    assert (await Turn.objects.aget(pk=turn_id)).status == "completed"
