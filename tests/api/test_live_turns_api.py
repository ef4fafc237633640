"""REST for live turns: `turnId` in the turn response, GET .../turns and .../turns/{turnId},
and the validation of the SSE endpoint (its stream: tests/ws/test_live_turns_servers.py)."""

from __future__ import annotations

import uuid

import pytest

from sessions_app.models import Record, Turn

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
