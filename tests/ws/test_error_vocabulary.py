"""One error vocabulary on REST and WebSocket: the same failure gets the same message on both.

REST answers `{"error": message, "code": <the error's code>}` with the error's status; the
WebSocket answers `{"type": "error", "code": "HANDLER_ERROR", "message": message}` (the
protocol's five codes) and stays open. Each case is run over both surfaces, and checks that the
failure changed nothing.

Personas (tests/conftest.py): alice owns the space `space` and its main session `root_id`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient

from sessions_app.api.errors import exception_handler
from sessions_app.engine import errors as engine_errors
from sessions_app.engine.errors import LLMError
from sessions_app.engine.llm.offline import OfflineLLM
from sessions_app.engine.types import Message, ToolSpec
from sessions_app.models import Record, Session
from sessions_app.runtime.pool import Runtime, runtimes
from spaces import errors
from stello_project.asgi import application
from tests.ws.conftest import finish_ws_work

pytestmark = pytest.mark.django_db(transaction=True)

WAIT = 5
SURFACES = ("rest", "ws")


class FailingLLM(OfflineLLM):
    async def complete(self, messages: Sequence[Message], *, tools: Sequence[ToolSpec] = ()):
        raise LLMError("the provider is down")

    async def stream(self, messages, *, tools=()):  # pragma: no cover - not streamed here
        raise LLMError("the provider is down")
        yield


@pytest.fixture(autouse=True)
async def runtime(settings) -> AsyncIterator[Runtime]:
    settings.STELLO = {**settings.STELLO, "CONSOLIDATE_EVERY_N_TURNS": 0,
                       "CONSOLIDATE_ON_ARCHIVE": False}
    current = runtimes.current()
    yield current
    await finish_ws_work()


class Rest:
    """Alice's (or bob's) REST client, through the real ASGI application."""

    def __init__(self, key: str) -> None:
        self.client, self.headers = AsyncClient(), {"X-API-Key": key}

    async def get(self, path: str):
        return await self.client.get(path, headers=self.headers)

    async def post(self, path: str, body: dict[str, Any] | None = None):
        return await self.client.post(path, body or {}, content_type="application/json",
                                      headers=self.headers)


def rest(key: str) -> Rest:
    return Rest(key)


@sync_to_async
def state_of(space_id: str) -> tuple[int, int, list[int]]:
    """(sessions, records, turn counts) of the space: a refused request changes none."""
    sessions = Session.objects.filter(space_id=space_id)
    return (sessions.count(), Record.objects.filter(session__space_id=space_id).count(),
            sorted(sessions.values_list("turn_count", flat=True)))


async def ws_error(space_id: str, key: str, session_id: str,
                   frame: dict[str, Any]) -> dict[str, Any]:
    """Enter `session_id`, send `frame`, return the answer; the connection must stay usable."""
    communicator = WebsocketCommunicator(application, f"/spaces/{space_id}/ws",
                                         headers=[(b"x-api-key", key.encode())])
    connected, _ = await communicator.connect(timeout=WAIT)
    assert connected
    await communicator.send_json_to({"type": "session.enter", "sessionId": session_id})
    assert (await communicator.receive_json_from(WAIT))["type"] == "session.entered"
    await communicator.send_json_to(frame)
    answer = await communicator.receive_json_from(WAIT)
    await communicator.send_json_to({"type": "session.leave"})
    assert (await communicator.receive_json_from(WAIT))["type"] == "session.left"
    await communicator.disconnect()
    return answer


async def refused(surface: str, *, space_id: str, key: str, session_id: str, operation: str,
                  body: dict[str, Any]) -> tuple[str, int | str]:
    """(message, REST status or WS code) of `operation` (turn / fork) refused on `surface`."""
    if surface == "rest":
        response = await rest(key).post(
            f"/spaces/{space_id}/sessions/{session_id}/{operation}", body)
        payload = response.json()
        assert set(payload) == {"error", "code"}
        return payload["error"], response.status_code
    frame = ({"type": "session.message", **body} if operation == "turn"
             else {"type": "session.fork", "options": body})
    answer = await ws_error(space_id, key, session_id, frame)
    assert set(answer) == {"type", "message", "code"} and answer["type"] == "error"
    return answer["message"], answer["code"]


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize(
    ("operation", "body", "message"),
    [
        ("turn", {}, "input is required"),
        ("turn", {"input": 5}, "input must be a string"),
        ("turn", {"input": None}, "input must be a string"),
        ("turn", {"input": ""}, "input must not be empty"),
        ("fork", {}, "label is required"),
        ("fork", {"label": 5}, "label must be a string"),
        ("fork", {"label": ""}, "label must not be empty"),
        ("fork", {"label": "   "}, "label must not be blank"),
        ("fork", {"label": "x", "scope": 3}, "scope must be a string or null"),
        ("fork", {"label": "x", "skills": "pdf"}, "skills must be a list of strings or null"),
        ("fork", {"label": "x", "context": "all"},
         'context must be "none", "inherit" or "compress"'),
    ],
)
async def test_invalid_input_says_what_is_wrong_alike_on_rest_and_ws(
    surface: str, operation: str, body: dict[str, Any], message: str,
    space_id: str, root_id: str, alice_key: str,
) -> None:
    before = await state_of(space_id)
    answer = await refused(surface, space_id=space_id, key=alice_key, session_id=root_id,
                           operation=operation, body=body)
    assert answer == (message, 400 if surface == "rest" else "HANDLER_ERROR")
    assert await state_of(space_id) == before


@pytest.mark.parametrize("surface", SURFACES)
async def test_an_unknown_session_is_not_found_alike(
    surface: str, space_id: str, alice_key: str
) -> None:
    unknown = str(uuid.uuid4())
    if surface == "rest":
        response = await rest(alice_key).post(f"/spaces/{space_id}/sessions/{unknown}/turn",
                                              {"input": "hi"})
        assert (response.status_code, response.json()) == (
            404, {"error": "Session not found", "code": "SESSION_NOT_FOUND"})
        return
    communicator = WebsocketCommunicator(application, f"/spaces/{space_id}/ws",
                                         headers=[(b"x-api-key", alice_key.encode())])
    assert (await communicator.connect(timeout=WAIT))[0]
    await communicator.send_json_to({"type": "session.enter", "sessionId": unknown})
    assert await communicator.receive_json_from(WAIT) == {
        "type": "error", "code": "HANDLER_ERROR", "message": "Session not found"}
    await communicator.disconnect()


@pytest.mark.parametrize("surface", SURFACES)
async def test_an_archived_session_refuses_turns_alike(
    surface: str, space_id: str, root_id: str, alice_key: str
) -> None:
    client = rest(alice_key)
    child = (await client.post(f"/spaces/{space_id}/sessions/{root_id}/fork",
                               {"label": "C"})).json()["id"]
    assert (await client.post(f"/spaces/{space_id}/sessions/{child}/archive")).status_code == 200
    before = await state_of(space_id)
    answer = await refused(surface, space_id=space_id, key=alice_key, session_id=child,
                           operation="turn", body={"input": "hi"})
    message = f'Session "{child}" is archived and cannot be modified'
    assert answer == (message, 409 if surface == "rest" else "HANDLER_ERROR")
    assert await state_of(space_id) == before


@pytest.mark.parametrize("surface", SURFACES)
async def test_an_llm_failure_carries_the_providers_message_alike(
    surface: str, runtime: Runtime, space_id: str, root_id: str, alice_key: str
) -> None:
    runtime.llm = runtime.memory_llm = FailingLLM()  # before the space's agent is built
    before = await state_of(space_id)
    answer = await refused(surface, space_id=space_id, key=alice_key, session_id=root_id,
                           operation="turn", body={"input": "hi"})
    assert answer == ("the provider is down", 502 if surface == "rest" else "HANDLER_ERROR")
    assert await state_of(space_id) == before


# -- the classes themselves ----------------------------------------------------------------


def every_error_class() -> list[type[errors.StelloError]]:
    found, todo = [], [errors.StelloError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_every_error_class_carries_a_status_and_its_own_code() -> None:
    classes = every_error_class()
    assert engine_errors.SessionArchived in classes and errors.SpaceNotFound in classes
    for cls in classes:
        assert isinstance(cls.status, int) and 400 <= cls.status <= 599, cls
        assert cls.code.isupper(), cls
    ours = [cls for cls in classes if cls.__module__.startswith(("spaces.", "sessions_app."))]
    codes = [cls.code for cls in ours if "code" in vars(cls)]
    assert len(codes) == len(set(codes)), codes


def test_a_new_error_class_needs_no_registration() -> None:
    class Teapot(errors.StelloError):
        status = 418
        code = "TEAPOT"
        default_message = "I am a teapot"

    response = exception_handler(Teapot(), {})
    assert (response.status_code, response.data) == (
        418, {"error": "I am a teapot", "code": "TEAPOT"})


async def test_a_space_that_is_not_yours_is_refused_with_the_same_vocabulary(
    space_id: str, bob_key: str
) -> None:
    response = await rest(bob_key).get(f"/spaces/{space_id}")
    assert (response.status_code, response.json()) == (
        403, {"error": "Forbidden", "code": "FORBIDDEN"})
    response = await rest(bob_key).get(f"/spaces/{uuid.uuid4()}")
    assert (response.status_code, response.json()) == (
        404, {"error": "Space not found", "code": "SPACE_NOT_FOUND"})


def test_the_protocol_doc_lists_every_error_code() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    missing = {cls.code for cls in every_error_class() if f"`{cls.code}`" not in doc}
    assert missing == set()
