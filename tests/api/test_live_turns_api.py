"""REST for live turns: `turnId` in the turn response, GET .../turns and .../turns/{turnId},
and the validation of the SSE endpoint (its stream: tests/ws/test_live_turns_servers.py)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from sessions_app.models import Record, Turn
from sessions_app.runtime.pool import runtimes
from spaces.models import Space

from .conftest import SessionApi, create_space, root_of

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_turn_is_a_resource(api: SessionApi, root_id: str) -> None:
    response = api.turn(root_id, "hello")
    assert response.status_code == 200
    body = response.json()
    turn_id = body["turnId"]
    assert set(body) == {"turn", "turnId"}  # an added field, the original one unchanged

    one = api.client.get(api.path(root_id, f"turns/{turn_id}"))
    assert one.status_code == 200
    turn = one.json()
    assert turn["turnId"] == turn_id and turn["sessionId"] == root_id
    assert (turn["status"], turn["input"], turn["error"]) == ("completed", "hello", None)
    assert turn["result"] == body
    assert set(Record.objects.filter(session_id=root_id).values_list("turn_id", flat=True)) == {
        uuid.UUID(turn_id)}

    second = api.turn(root_id, "again").json()["turnId"]
    listed = api.client.get(api.path(root_id, "turns"))
    assert listed.status_code == 200
    assert [t["turnId"] for t in listed.json()] == [second, turn_id]


def test_unknown_and_foreign_turns_are_404(api: SessionApi, root_id: str,
                                           bob_client) -> None:
    turn_id = api.turn(root_id, "hello").json()["turnId"]
    child = api.child(root_id, "Other")["id"]
    for session, turn in ((root_id, str(uuid.uuid4())), (root_id, "nope"), (child, turn_id)):
        response = api.client.get(api.path(session, f"turns/{turn}"))
        assert response.status_code == 404
        assert response.json()["code"] == "TURN_NOT_FOUND"
    unknown = api.client.get(api.path(str(uuid.uuid4()), f"turns/{turn_id}"))
    assert (unknown.status_code, unknown.json()["code"]) == (404, "SESSION_NOT_FOUND")
    # Another user's space: 403 for the space, as every route.
    bobs = SessionApi(bob_client, api.space_id)
    assert bobs.client.get(bobs.path(root_id, f"turns/{turn_id}")).status_code == 403
    assert bobs.client.get(bobs.path(root_id, "turns")).status_code == 403
    # Bob's own space does not hold alice's session.
    space = create_space(bob_client)
    mine = SessionApi(bob_client, space["id"])
    assert mine.client.get(mine.path(root_id, f"turns/{turn_id}")).status_code == 404
    assert mine.client.get(mine.path(root_of(space["id"]), f"turns/{turn_id}")).json()[
        "code"] == "TURN_NOT_FOUND"
    assert Turn.objects.count() == 1


@pytest.mark.parametrize("since", ["-1", "x", "1.5", "", "99"])
def test_a_bad_since_is_400_before_any_stream(api: SessionApi, root_id: str, since) -> None:
    response = api.client.get(api.path(root_id, "events"), {"since": since},
                              HTTP_ACCEPT="text/event-stream")
    assert response.status_code == 400, response
    assert response.json()["code"] == "INVALID_INPUT"
    header = api.client.get(api.path(root_id, "events"), HTTP_LAST_EVENT_ID=since,
                            HTTP_ACCEPT="text/event-stream")
    assert header.status_code == 400


def test_events_of_an_unknown_session_are_404(api: SessionApi) -> None:
    response = api.client.get(api.path(str(uuid.uuid4()), "events"), {"since": "0"})
    assert (response.status_code, response.json()["code"]) == (404, "SESSION_NOT_FOUND")


# -- the space's default busy policy (config.ifBusy) ----------------------------------------


@pytest.mark.parametrize("bad", ["maybe", "", 3, True, ["reject"], {"x": 1}])
def test_a_bad_space_if_busy_is_refused_and_changes_nothing(alice_client, bad) -> None:
    created = alice_client.post("/spaces", {"label": "S", "config": {"ifBusy": bad}},
                                format="json")
    assert created.status_code == 400
    assert created.json()["error"] == "config.ifBusy must be one of reject, enqueue, interrupt"
    assert not Space.objects.exists()
    space = create_space(alice_client, label="S", config={"ifBusy": "reject", "mine": 1})
    patched = alice_client.patch(f"/spaces/{space['id']}", {"config": {"ifBusy": bad}},
                                 format="json")
    assert patched.status_code == 400
    assert "config.ifBusy" in patched.json()["error"]
    assert Space.objects.get(pk=space["id"]).config == {"ifBusy": "reject", "mine": 1}


def test_a_null_space_if_busy_is_no_default(alice_client) -> None:
    space = create_space(alice_client, label="S", config={"ifBusy": None})
    assert space["config"] == {"ifBusy": None}


class TestSpaceBusyDefault:
    """REST turns on a locked session (the test holds the lock through the runtime that
    serves the request, like tests/api/test_sessions_api.py's TestBusySession)."""

    @pytest.fixture
    async def runtime(self, settings):
        settings.STELLO = {**settings.STELLO, "SESSION_LOCK_TIMEOUT_SECONDS": 30.0,
                           "IF_BUSY": "enqueue"}
        runtime = runtimes.current()
        yield runtime
        await runtimes.aclose_current()

    @pytest.fixture
    def client(self, alice_key):
        client = AsyncClient()

        async def call(method: str, path: str, body: dict):
            return await getattr(client, method)(path, body, content_type="application/json",
                                                 headers={"X-API-Key": alice_key})

        return call

    async def root_turn_path(self, client, config: dict) -> tuple[str, str]:
        space = (await client("post", "/spaces", {"label": "S", "config": config})).json()
        root = await sync_to_async(root_of)(space["id"])
        return space["id"], f"/spaces/{space['id']}/sessions/{root}/turn"

    async def busy_turn(self, runtime, client, path: str, body: dict, hold: float):
        """`body` posted while the session's lock is held for `hold` seconds."""
        clock = asyncio.get_running_loop().time
        async with runtime.locks.hold(path.split("/")[4]):
            started = clock()
            request = asyncio.ensure_future(client("post", path, body))
            done, _ = await asyncio.wait([request], timeout=hold)
        response = await request
        return response, clock() - started, bool(done)

    async def test_the_space_default_rejects_and_a_request_overrides_it(
        self, runtime, client
    ) -> None:
        _, path = await self.root_turn_path(client, {"ifBusy": "reject"})
        response, took, answered_while_held = await self.busy_turn(
            runtime, client, path, {"input": "no"}, hold=2)
        assert (response.status_code, response.json()["code"]) == (409, "SESSION_BUSY")
        assert answered_while_held and took < 2  # at once, not after the 30 s wait
        # The request's own value wins: it waits for the lock, then runs.
        response, _, answered_while_held = await self.busy_turn(
            runtime, client, path, {"input": "wait", "ifBusy": "enqueue"}, hold=0.3)
        assert not answered_while_held
        assert response.status_code == 200
        assert response.json()["turn"]["finalContent"] == "echo: wait"

    async def test_a_space_update_changes_the_default(self, runtime, client) -> None:
        space_id, path = await self.root_turn_path(client, {})
        response, _, answered_while_held = await self.busy_turn(
            runtime, client, path, {"input": "queued"}, hold=0.3)  # STELLO_IF_BUSY: enqueue
        assert not answered_while_held and response.status_code == 200
        patched = await client("patch", f"/spaces/{space_id}",
                               {"config": {"ifBusy": "reject"}})
        assert patched.status_code == 200
        response, _, answered_while_held = await self.busy_turn(
            runtime, client, path, {"input": "no"}, hold=2)
        assert answered_while_held and response.json()["code"] == "SESSION_BUSY"
