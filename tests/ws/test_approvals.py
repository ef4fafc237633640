"""Human approval of tool calls, in one process: a turn whose tool needs approval pauses (status
`waiting`, event and frame `tool.approval_required`), is answered through REST or the WebSocket,
and goes on; a denial reaches the LLM as the tool's error; the deadline denies; the busy policy
applies meanwhile; a shutdown leaves the turn waiting and an answer afterwards resumes it. The
same across real server processes: tests/ws/test_approvals_servers.py."""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from django.test import AsyncClient

from sessions_app.engine.approval import stored_id
from sessions_app.models import Record, Session, SessionEvent, ToolApproval, Turn
from sessions_app.runtime.pool import runtimes
from spaces.models import Space
from tests.ws.conftest import finish_ws_work
from tests.ws.test_consumer import ask, bounded, enter, open_ws, recv, watch
from tests.ws.test_live_turns import frames_until, resume

pytestmark = pytest.mark.django_db(transaction=True)

FORK = "stello_create_session"


def fork_call(call_id: str, label: str) -> dict[str, Any]:
    return {"id": call_id, "name": FORK, "input": {"label": label}}


@pytest.fixture
def script(settings, tmp_path):
    """`script(response, ...)`: the offline LLM's first answers (then it echoes)."""

    def use(*responses: dict[str, Any], **stello: Any) -> None:
        path = tmp_path / f"script-{uuid.uuid4().hex}.json"
        path.write_text(json.dumps(list(responses)))
        settings.STELLO = {**settings.STELLO, "MEMORY_LLM": None,
                           "CONSOLIDATE_EVERY_N_TURNS": 0, "CONSOLIDATE_ON_ARCHIVE": False,
                           **stello, "LLM": {**settings.STELLO["LLM"], "provider": "offline",
                                             "script_path": str(path) if responses else None}}

    return use


@pytest.fixture(autouse=True)
async def finished() -> AsyncIterator[None]:
    yield
    await finish_ws_work()


async def gate(space_id: str, tools: list[str] | None) -> None:
    await Space.objects.filter(pk=space_id).aupdate(config={"approveTools": tools})


class Rest:
    def __init__(self, space_id: str, session_id: str, key: str) -> None:
        self.base = f"/spaces/{space_id}/sessions/{session_id}"
        self.client, self.headers = AsyncClient(), {"X-API-Key": key}

    async def get(self, suffix: str) -> Any:
        return await self.client.get(f"{self.base}/{suffix}", headers=self.headers)

    async def post(self, suffix: str, body: Any) -> Any:
        return await self.client.post(f"{self.base}/{suffix}", body, headers=self.headers,
                                      content_type="application/json")


async def asked() -> str:
    """The id of the turn waiting for approvals, once its approvals are stored."""
    for _ in range(100):
        waiting = await Turn.objects.filter(status="waiting").afirst()
        if waiting is not None and await ToolApproval.objects.filter(
                turn_id=waiting.pk).aexists():
            return str(waiting.pk)
        await asyncio.sleep(0.05)
    raise AssertionError("no turn waits for approvals")


async def settled(turn_id: str) -> Turn:
    """The turn once it has gone on from waiting (or after 5 s, as it is then)."""
    for _ in range(100):
        turn = await Turn.objects.aget(pk=turn_id)
        if turn.status not in ("waiting", "running"):
            break
        await asyncio.sleep(0.05)
    return turn


async def pending_of(rest: Rest, turn_id: str) -> list[dict[str, Any]]:
    response = await rest.get(f"turns/{turn_id}/approvals")
    assert response.status_code == 200, response.json()
    return response.json()


@bounded(40)
async def test_a_rest_turn_waits_for_approval_through_rest_and_completes(
        space_id, root_id, alice_key, bob_key, script) -> None:
    script({"content": None, "toolCalls": [fork_call("c1", "Approved child")]})
    await gate(space_id, [FORK])
    rest = Rest(space_id, root_id, alice_key)
    follower = await open_ws(space_id, alice_key)
    await resume(follower, root_id, 0)
    turn = asyncio.create_task(rest.post("turn", {"input": "branch"}))

    frames = await frames_until(follower, "tool.approval_required")
    asked = frames[-1]
    turn_id = asked["turnId"]
    assert [f["type"] for f in frames] == ["turn.started", "tool.call", "tool.approval_required"]
    assert (asked["callId"], asked["name"], asked["arguments"]) == (
        "c1", FORK, {"label": "Approved child"})
    assert (await rest.get(f"turns/{turn_id}")).json()["status"] == "waiting"
    [pending] = await pending_of(rest, turn_id)
    assert (pending["callId"], pending["status"], pending["decidedAt"]) == ("c1", "pending", None)
    assert not turn.done()
    assert not await Session.objects.filter(label="Approved child").aexists()

    # Meanwhile the session is busy, whatever the policy (a human may take minutes).
    busy = await rest.post("turn", {"input": "me too", "ifBusy": "reject"})
    assert (busy.status_code, busy.json()["code"]) == (409, "SESSION_BUSY")

    # Bad answers change nothing.
    for body, status, code in (
            ({}, 400, "INVALID_INPUT"),
            ({"callId": "c1"}, 400, "INVALID_INPUT"),
            ({"callId": "c1", "approve": "yes"}, 400, "INVALID_INPUT"),
            ({"callId": 7, "approve": True}, 400, "INVALID_INPUT"),
            ({"callId": "c1", "approve": False, "reason": "x" * 2001}, 400, "INVALID_INPUT"),
            ({"callId": "c9", "approve": True}, 404, "TOOL_CALL_NOT_FOUND")):
        answer = await rest.post(f"turns/{turn_id}/approvals", body)
        assert (answer.status_code, answer.json()["code"]) == (status, code), body
    unknown = await rest.post(f"turns/{uuid.uuid4()}/approvals", {"callId": "c1", "approve": True})
    assert (unknown.status_code, unknown.json()["code"]) == (404, "TURN_NOT_FOUND")
    bobs = Rest(space_id, root_id, bob_key)
    assert (await bobs.post(f"turns/{turn_id}/approvals",
                            {"callId": "c1", "approve": True})).status_code == 403
    assert (await bobs.get(f"turns/{turn_id}/approvals")).status_code == 403
    assert await ToolApproval.objects.filter(decision__isnull=False).acount() == 0

    answer = await rest.post(f"turns/{turn_id}/approvals", {"callId": "c1", "approve": True})
    assert answer.status_code == 200
    assert (answer.json()["status"], answer.json()["callId"]) == ("approved", "c1")
    done = await asyncio.wait_for(turn, 10)
    assert done.status_code == 200, done.json()
    result = done.json()
    assert (result["turnId"], result["turn"]["toolCallsExecuted"]) == (turn_id, 1)
    assert await Session.objects.filter(label="Approved child").aexists()
    rest_frames = await frames_until(follower, "turn.completed")
    assert [f["type"] for f in rest_frames] == [
        "tool.approval_decided", "session.forked", "tool.result", "turn.completed"]
    assert rest_frames[0]["approved"] is True
    assert (await rest.get(f"turns/{turn_id}")).json()["status"] == "completed"

    again = await rest.post(f"turns/{turn_id}/approvals", {"callId": "c1", "approve": False})
    assert (again.status_code, again.json()["code"]) == (409, "TURN_NOT_WAITING")
    [decided] = await pending_of(rest, turn_id)
    assert decided["status"] == "approved" and decided["decidedAt"]
    await follower.disconnect()


@bounded(40)
async def test_a_denial_reaches_the_llm_as_the_tools_error_and_runs_nothing(
        space_id, root_id, alice_key, script) -> None:
    script({"content": None, "toolCalls": [fork_call("c1", "Denied child"),
                                           fork_call("c2", "Free child")]})
    await gate(space_id, ["*"])
    rest = Rest(space_id, root_id, alice_key)
    ws = await open_ws(space_id, alice_key)
    await enter(ws, root_id)
    await ws.send_json_to({"type": "session.stream", "input": "branch twice"})
    asks = [await recv(ws), await recv(ws)]
    assert [(f["type"], f["callId"]) for f in asks] == [
        ("tool.approval_required", "c1"), ("tool.approval_required", "c2")]
    turn_id = asks[0]["turnId"]

    # One answer through REST, one through a WebSocket frame on the same connection (it is
    # handled beside the waiting stream), one twice.
    denied = await rest.post(f"turns/{turn_id}/approvals",
                             {"callId": "c1", "approve": False, "reason": "too many branches"})
    assert denied.json()["status"] == "denied"
    await ws.send_json_to({"type": "tool.approve", "callId": "c1", "approve": True})
    assert (await recv(ws))["code"] == "HANDLER_ERROR"  # already answered
    await ws.send_json_to({"type": "tool.approve", "callId": "c2", "approve": True})
    frames = []
    while (frame := await recv(ws))["type"] != "stream.end":
        frames.append(frame)
    approval = next(f for f in frames if f["type"] == "tool.approval")
    assert (approval["turnId"], approval["approval"]["callId"],
            approval["approval"]["status"]) == (turn_id, "c2", "approved")
    assert frame["result"]["turn"]["toolCallsExecuted"] == 2

    assert not await Session.objects.filter(label="Denied child").aexists()
    assert await Session.objects.filter(label="Free child").aexists()
    tool_messages = [m async for m in Record.objects.filter(
        session_id=root_id, role="tool").order_by("id").values_list("tool_call_id", "content")]
    assert tool_messages[0] == (
        "c1", "Not run: the user denied this tool call (too many branches).")
    assert tool_messages[1][0] == "c2" and "Free child" in tool_messages[1][1]
    await ws.disconnect()


@bounded(40)
async def test_the_deadline_denies_and_watchers_are_told(space_id, root_id, alice_key,
                                                         script) -> None:
    script({"content": None, "toolCalls": [fork_call("c1", "Late child")]},
           APPROVAL_TIMEOUT_SECONDS=1.0)
    await gate(space_id, [FORK])
    watcher = await open_ws(space_id, alice_key)
    await watch(watcher, root_id)
    ws = await open_ws(space_id, alice_key)
    await enter(ws, root_id)
    await ws.send_json_to({"type": "session.message", "input": "branch"})
    told = await recv(watcher)
    assert (told["type"], told["callId"]) == ("tool.approval_required", "c1")
    assert (await recv(ws))["type"] == "tool.approval_required"
    started = asyncio.get_running_loop().time()
    reply = await recv(ws)
    assert reply["type"] == "turn.complete", reply
    assert asyncio.get_running_loop().time() - started >= 0.5
    assert not await Session.objects.filter(label="Late child").aexists()
    approval = await ToolApproval.objects.aget(call_id="c1")
    assert (approval.decision, approval.reason) == (
        "denied", "no answer before the approval deadline")
    await ws.disconnect()
    await watcher.disconnect()


@bounded(40)
async def test_cancel_ends_a_waiting_turn(space_id, root_id, alice_key, script) -> None:
    script({"content": None, "toolCalls": [fork_call("c1", "Never")]})
    await gate(space_id, [FORK])
    rest = Rest(space_id, root_id, alice_key)
    turn = asyncio.create_task(rest.post("turn", {"input": "branch"}))
    turn_id = await asked()
    cancelled = await rest.post(f"turns/{turn_id}/cancel", {})
    assert cancelled.status_code == 200, cancelled.json()
    assert (await asyncio.wait_for(turn, 10)).json()["code"] == "TURN_CANCELLED"
    assert (await Turn.objects.aget(pk=turn_id)).status == "cancelled"
    assert not await Record.objects.filter(session_id=root_id).aexists()
    late = await rest.post(f"turns/{turn_id}/approvals", {"callId": "c1", "approve": True})
    assert (late.status_code, late.json()["code"]) == (409, "TURN_NOT_WAITING")
    after = await rest.post("turn", {"input": "free again"})
    assert after.status_code == 200


@bounded(40)
async def test_a_shutdown_leaves_the_turn_waiting_and_an_answer_resumes_it(
        space_id, root_id, alice_key, script) -> None:
    script({"content": None, "toolCalls": [fork_call("c1", "After restart")]})
    await gate(space_id, [FORK])
    rest = Rest(space_id, root_id, alice_key)
    turn = asyncio.create_task(rest.post("turn", {"input": "branch"}))
    turn_id = await asked()
    await runtimes.aclose_current()  # the process stops: the waiting turn does not hold it
    stopped = await asyncio.wait_for(turn, 10)
    assert (stopped.status_code, stopped.json()["code"]) == (503, "TURN_SUSPENDED")
    assert (await Turn.objects.aget(pk=turn_id)).status == "waiting"

    # A new runtime (as after a restart): the answer resumes the turn in the background.
    script({"content": "done after restart"})  # its LLM starts a script of its own
    answer = await rest.post(f"turns/{turn_id}/approvals", {"callId": "c1", "approve": True})
    assert answer.status_code == 200
    done = await settled(turn_id)
    assert done.status == "completed", done.status
    assert done.result["turn"]["toolCallsExecuted"] == 1
    assert await Session.objects.filter(label="After restart").aexists()
    roles = [r async for r in Record.objects.filter(session_id=root_id).order_by("id")
             .values_list("role", flat=True)]
    assert roles == ["user", "assistant", "tool", "assistant"]
    assert (await rest.post("turn", {"input": "next"})).status_code == 200


@bounded(40)
async def test_approval_config_is_validated_and_ungated_tools_run_at_once(
        space_id, root_id, alice_key, script) -> None:
    script({"content": None, "toolCalls": [fork_call("c1", "Ungated")]})
    client, headers = AsyncClient(), {"X-API-Key": alice_key}
    bad = await client.patch(f"/spaces/{space_id}", {"config": {"approveTools": "all"}},
                             headers=headers, content_type="application/json")
    assert (bad.status_code, bad.json()["code"]) == (400, "INVALID_INPUT")
    assert "config.approveTools" in bad.json()["error"]
    await gate(space_id, ["some_other_tool"])
    rest = Rest(space_id, root_id, alice_key)
    done = await rest.post("turn", {"input": "branch"})
    assert done.status_code == 200 and done.json()["turn"]["toolCallsExecuted"] == 1
    assert not await ToolApproval.objects.aexists()
    ws = await open_ws(space_id, alice_key)
    assert (await ask(ws, {"type": "tool.approve", "callId": "c1", "approve": True}))[
        "code"] == "NOT_ENTERED"
    await enter(ws, root_id)
    refused = await ask(ws, {"type": "tool.approve", "callId": "c1", "approve": True})
    assert refused["message"] == "No turn of this session waits for an approval"
    assert (await ask(ws, {"type": "tool.approve", "callId": "c1"}))[
        "message"] == "approve is required"
    await ws.disconnect()


async def stop_while_waiting(rest: Rest) -> str:
    """Start a turn, let it wait for its approval, stop the runtime; the waiting turn's id."""
    turn = asyncio.create_task(rest.post("turn", {"input": "branch"}))
    turn_id = await asked()
    await runtimes.aclose_current()
    assert (await asyncio.wait_for(turn, 10)).json()["code"] == "TURN_SUSPENDED"
    return turn_id


@bounded(40)
async def test_cancel_and_interrupt_reach_a_waiting_turn_whose_process_stopped(
        space_id, root_id, alice_key, script) -> None:
    script({"content": None, "toolCalls": [fork_call("c1", "Orphan")]})
    await gate(space_id, [FORK])
    rest = Rest(space_id, root_id, alice_key)
    turn_id = await stop_while_waiting(rest)
    cancelled = await rest.post(f"turns/{turn_id}/cancel", {})
    assert cancelled.json() == {"turnId": turn_id, "status": "cancelled"}
    assert (await Turn.objects.aget(pk=turn_id)).status == "cancelled"
    assert not await Record.objects.filter(session_id=root_id).aexists()
    assert [e async for e in SessionEvent.objects.filter(session_id=root_id).order_by(
        "seq").values_list("type", flat=True)][-1] == "turn.cancelled"
    again = await rest.post(f"turns/{turn_id}/cancel", {})
    assert (again.status_code, again.json()["code"]) == (409, "TURN_NOT_RUNNING")

    script({"content": None, "toolCalls": [fork_call("c1", "Orphan")]})  # a fresh runtime
    second = await stop_while_waiting(rest)
    script()  # the next runtime's LLM echoes
    refused = await rest.post("turn", {"input": "cut in", "ifBusy": "reject"})
    assert (refused.status_code, refused.json()["code"]) == (409, "SESSION_BUSY")
    cut_in = await rest.post("turn", {"input": "cut in", "ifBusy": "interrupt"})
    assert cut_in.status_code == 200, cut_in.json()
    assert (await Turn.objects.aget(pk=second)).status == "cancelled"
    assert [r async for r in Record.objects.filter(session_id=root_id).order_by("id")
            .values_list("content", flat=True)] == ["cut in", "echo: cut in"]
    assert not await Session.objects.filter(label="Orphan").aexists()


@bounded(40)
async def test_a_call_id_used_again_in_a_later_round_is_asked_again(
        space_id, root_id, alice_key, script) -> None:
    script({"content": None, "toolCalls": [fork_call("c1", "First")]},
           {"content": None, "toolCalls": [fork_call("c1", "Second")]})
    await gate(space_id, [FORK])
    rest = Rest(space_id, root_id, alice_key)
    follower = await open_ws(space_id, alice_key)
    await resume(follower, root_id, 0)
    turn = asyncio.create_task(rest.post("turn", {"input": "branch"}))
    for label in ("First", "Second"):
        asked = (await frames_until(follower, "tool.approval_required"))[-1]
        assert asked["arguments"] == {"label": label}
        answer = await rest.post(f"turns/{asked['turnId']}/approvals",
                                 {"callId": "c1", "approve": True})
        assert answer.status_code == 200, answer.json()
    done = await asyncio.wait_for(turn, 10)
    assert done.json()["turn"]["toolCallsExecuted"] == 2
    assert await Session.objects.filter(label__in=["First", "Second"]).acount() == 2
    await follower.disconnect()


@bounded(40)
async def test_a_waiting_turn_of_a_session_archived_meanwhile_fails_cleanly(
        space_id, root_id, alice_key, script) -> None:
    script({"content": None, "toolCalls": [fork_call("c1", "Grandchild")]})
    await gate(space_id, [FORK])
    child = (await Rest(space_id, root_id, alice_key).post("fork", {"label": "Kid"})).json()["id"]
    rest = Rest(space_id, child, alice_key)
    turn_id = await stop_while_waiting(rest)
    assert (await rest.post("archive", {})).status_code == 200
    answer = await rest.post(f"turns/{turn_id}/approvals", {"callId": "c1", "approve": True})
    assert answer.status_code == 200
    turn = await settled(turn_id)
    assert (turn.status, turn.error) == (
        "failed", "the session was archived while the turn waited for approvals")
    assert not await Record.objects.filter(session_id=child).aexists()
    assert not await Session.objects.filter(label="Grandchild").aexists()


@bounded(40)
async def test_a_long_call_id_from_the_llm_is_asked_and_answered(space_id, root_id, alice_key,
                                                                 script) -> None:
    long_id = "call_" + "x" * 600
    script({"content": None, "toolCalls": [{"id": long_id, "name": FORK,
                                            "input": {"label": "Long"}}]})
    await gate(space_id, [FORK])
    rest = Rest(space_id, root_id, alice_key)
    turn = asyncio.create_task(rest.post("turn", {"input": "branch"}))
    turn_id = await asked()
    answer = await rest.post(f"turns/{turn_id}/approvals", {"callId": long_id, "approve": True})
    assert answer.status_code == 200, answer.json()
    assert (await asyncio.wait_for(turn, 10)).status_code == 200
    assert await Session.objects.filter(label="Long").aexists()


@bounded(40)
async def test_a_call_id_beyond_an_index_entry_is_asked_and_answered(space_id, root_id,
                                                                     alice_key, script) -> None:
    """Ids are the model's: one larger than a PostgreSQL index entry (about 2.7 KB, random
    text does not compress) is kept as its digest, and answered by either."""
    huge_id = "call_" + secrets.token_hex(4000)
    script({"content": None, "toolCalls": [{"id": huge_id, "name": FORK,
                                            "input": {"label": "Huge"}}]})
    await gate(space_id, [FORK])
    rest = Rest(space_id, root_id, alice_key)
    turn = asyncio.create_task(rest.post("turn", {"input": "branch"}))
    turn_id = await asked()
    listed = (await rest.get(f"turns/{turn_id}/approvals")).json()
    assert [a["callId"] for a in listed] == [stored_id(huge_id)]
    answer = await rest.post(f"turns/{turn_id}/approvals", {"callId": huge_id, "approve": True})
    assert answer.status_code == 200, answer.json()
    assert (await asyncio.wait_for(turn, 10)).status_code == 200
    assert await Session.objects.filter(label="Huge").aexists()


@bounded(40)
async def test_a_call_id_with_nul_is_matched_as_stored_and_never_runs_unanswered(
        space_id, root_id, alice_key, script) -> None:
    script({"content": None, "toolCalls": [{"id": "c\u00001", "name": FORK,
                                            "input": {"label": "Nul"}}]})
    await gate(space_id, [FORK])
    rest = Rest(space_id, root_id, alice_key)
    turn = asyncio.create_task(rest.post("turn", {"input": "branch"}))
    turn_id = await asked()
    [pending] = await pending_of(rest, turn_id)
    assert pending["callId"] == "c\ufffd1"  # NUL cannot be stored
    answer = await rest.post(f"turns/{turn_id}/approvals",
                             {"callId": "c\ufffd1", "approve": False, "reason": "no"})
    assert answer.status_code == 200, answer.json()
    assert (await asyncio.wait_for(turn, 10)).status_code == 200
    assert not await Session.objects.filter(label="Nul").aexists()  # denied: not run
    tool = await Record.objects.aget(session_id=root_id, role="tool")
    assert tool.content == "Not run: the user denied this tool call (no)."
