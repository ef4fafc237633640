"""WebSocket fuzzing through the real ASGI application (`stello_project.asgi`).

Hypothesis throws frames at one open connection per test: random text, random JSON values of
every type, the five known message types with fields of the wrong type, frames above
STELLO["WS_MAX_FRAME_BYTES"] and binary frames; deeply nested JSON is sent as fixed cases.
Frames are strict JSON (RFC 8259: no NaN, no lone surrogates), without NUL, nested at most
STELLO["MAX_JSON_DEPTH"] (64) levels; anything else is a PARSE_ERROR.
After every frame:

- every reply is a JSON text frame holding an object whose `type` is a server message type;
  an `error` has exactly `type`, `message` and `code`, the code one of the five of the
  contract, and never the generic "Internal server error" (a fuzzed frame is the client's
  fault, and must be told apart from a server failure);
- the first answer is the one the contract gives for that frame (an oracle below, written
  from the README and the protocol module's docstring, not from its code);
- the connection stays open and usable: a final `session.leave` / valid `session.enter` /
  `session.leave` works (this also resets the state for the next example);
- no exception escapes the application (the communicator's future has not finished), and
  nothing is logged at ERROR by the `stello` loggers.

Frames are followed by a sentinel frame of an unknown type, whose error marks the end of the
frame's answers (frames of one connection are answered in order). No `session.updated` may
ever arrive: the probe makes every turn on its session itself, and a connection is never told
of its own turns (even when a fuzzed enter asked to watch).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from hypothesis import (
    HealthCheck,
    currently_in_test_context,
    event,
    example,
    given,
    settings,
)
from hypothesis import strategies as st

from sessions_app.models import Record, Session
from sessions_app.runtime.pool import runtimes
from sessions_app.ws.consumer import operations
from stello_project.asgi import application
from tests.ws.conftest import finish_ws_work

pytestmark = pytest.mark.django_db(transaction=True)

WAIT = 10  # seconds for one frame to arrive
LIMIT = 2048  # STELLO["WS_MAX_FRAME_BYTES"] during these tests
CLIENT_TYPES = ("session.enter", "session.leave", "session.message", "session.stream",
                "session.fork")
SERVER_TYPES = {"session.entered", "session.left", "turn.complete", "stream.delta",
                "stream.end", "session.forked", "session.updated", "error"}
ERROR_CODES = {"PARSE_ERROR", "UNKNOWN_TYPE", "ALREADY_ENTERED", "NOT_ENTERED", "HANDLER_ERROR"}
ROOT = "<the root session id>"  # replaced by the real id when a frame is sent
ROOT_HEX = "<the root session id in hex>"  # ... by its 32 hex digits

FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    # One connection (a function-scoped fixture) serves every example of a test, on purpose.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)


# -- strategies --------------------------------------------------------------------------------

FIELD_NAMES = st.sampled_from(["type", "sessionId", "input", "options", "label", "scope",
                               "context", "systemPrompt", "prompt", "skills"])
json_scalars = (st.none() | st.booleans() | st.integers() | st.floats()
                | st.text(max_size=30))
json_values = st.recursive(
    json_scalars,
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(FIELD_NAMES | st.text(max_size=8), children,
                                        max_size=4)),
    max_leaves=12,
)
wrong_texts = st.sampled_from(["", " ", "\x00", "\u202e", "é" * 3, "null"])
session_ids = (st.sampled_from([ROOT, ROOT.upper(), "{" + ROOT + "}", "urn:uuid:" + ROOT,
                                ROOT_HEX, " " + ROOT, ROOT + "\x00"])
               | st.uuids().map(str)
               | st.sampled_from(["", "not-a-uuid", "00000000-0000-0000-0000-000000000000"])
               | json_values)
inputs = st.text(min_size=1, max_size=40) | json_values | wrong_texts
fork_fields = {
    "scope": json_values, "context": json_values | st.sampled_from(["none", "inherit", "all"]),
    "systemPrompt": json_values, "prompt": json_values, "skills": json_values,
}
options = (json_values
           | st.fixed_dictionaries({}, optional={
               "label": json_values | wrong_texts | st.text(max_size=20), **fork_fields})
           | st.fixed_dictionaries({"label": st.text(min_size=1, max_size=12)}, optional={
               "scope": st.none() | st.text(max_size=12), "context": st.sampled_from(
                   ["none", "inherit"]), "prompt": st.none() | st.text(max_size=12)}))
known_type_frames = st.fixed_dictionaries(
    {"type": st.sampled_from(CLIENT_TYPES)},
    optional={"sessionId": session_ids, "input": inputs, "options": options,
              "watch": st.booleans() | json_values, "extra": json_values},
)


# -- the oracle ----------------------------------------------------------------------------------


def clipped(text: str) -> str:
    """How an unknown type is echoed: clipped to 100 characters."""
    return text if len(text) <= 100 else text[:100] + "..."


def text_problem(data: dict, key: str, *, strip: bool = False) -> str | None:
    """What is wrong with `data[key]` as a required non-empty string, worded like REST."""
    if key not in data:
        return f"{key} is required"
    value = data[key]
    if not isinstance(value, str):
        return f"{key} must be a string"
    if not value:
        return f"{key} must not be empty"
    if strip and not value.strip():
        return f"{key} must not be blank"
    return None


def has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    return isinstance(value, list) and any(has_nul(v) for v in value)


def too_large(text: str, limit: int) -> bool:
    return len(text.encode("utf-8", "surrogatepass")) > limit


def expected_answer(text: str, *, entered: bool, root_id: str,
                    limit: int = LIMIT) -> tuple[str, str | None]:
    """(reply type or error code, exact error message or None) of the first answer."""
    if too_large(text, limit):
        return "HANDLER_ERROR", f"frame too large: at most {limit} bytes"
    try:
        data = orjson.loads(text)  # strict JSON; fuzzed frames nest far less than the limit
    except orjson.JSONDecodeError:
        return "PARSE_ERROR", "Invalid JSON"
    if has_nul(data):
        return "PARSE_ERROR", "JSON must not contain NUL characters (\\u0000)"
    if not isinstance(data, dict):
        return "UNKNOWN_TYPE", "Message must be a JSON object"
    if "type" not in data:
        return "UNKNOWN_TYPE", "type is required"
    kind = data["type"]
    if not isinstance(kind, str):
        return "UNKNOWN_TYPE", "type must be a string"
    if kind not in CLIENT_TYPES:
        return "UNKNOWN_TYPE", f"Unknown message type: {clipped(kind)}"
    if kind == "session.enter":
        if entered:
            return "ALREADY_ENTERED", "Already in a session, leave first"
        if problem := text_problem(data, "sessionId"):
            return "HANDLER_ERROR", problem
        session_id = data["sessionId"]
        try:
            same = uuid.UUID(session_id) == uuid.UUID(root_id)
        except ValueError:
            same = False
        if not isinstance(data.get("watch", False), bool):
            return "HANDLER_ERROR", "watch must be a boolean"
        return ("session.entered", None) if same else ("HANDLER_ERROR", "Session not found")
    if not entered:
        return "NOT_ENTERED", "Not in a session"
    if kind == "session.leave":
        return "session.left", None
    if kind in ("session.message", "session.stream"):
        if problem := text_problem(data, "input"):
            return "HANDLER_ERROR", problem
        return ("turn.complete" if kind == "session.message" else "stream.delta"), None
    raw = data.get("options")
    if raw is not None and not isinstance(raw, dict):
        return "HANDLER_ERROR", "fork options must be a JSON object"
    if problem := text_problem(raw or {}, "label", strip=True):
        return "HANDLER_ERROR", problem
    return "session.forked?", None  # or an error naming another bad option


# -- fixtures ------------------------------------------------------------------------------------


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def server_errors() -> Iterator[ErrorLog]:
    """ERROR records of the `stello` loggers (they do not propagate to the root logger)."""
    handler = ErrorLog()
    logger = logging.getLogger("stello")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture(autouse=True)
def fuzz_settings(settings) -> None:
    settings.STELLO = {
        **settings.STELLO, "WS_MAX_FRAME_BYTES": LIMIT, "CONSOLIDATE_EVERY_N_TURNS": 0,
        "CONSOLIDATE_ON_ARCHIVE": False, "CONSOLIDATE_ON_LEAVE": False, "MEMORY_LLM": None,
        "LLM": {**settings.STELLO["LLM"], "provider": "offline", "script_path": None},
    }


@pytest.fixture(autouse=True)
async def runtime(fuzz_settings) -> AsyncIterator[None]:
    await runtimes.aclose_current()
    yield
    await finish_ws_work()


@dataclass
class Probe:
    """One open connection and what the test knows about it."""

    communicator: WebsocketCommunicator
    root_id: str
    errors: ErrorLog
    entered: bool = False
    sent: int = 0

    async def next_frame(self) -> dict[str, Any]:
        output = await self.communicator.receive_output(WAIT)  # re-raises an app exception
        assert output["type"] == "websocket.send", output  # not a close
        assert isinstance(output.get("text"), str) and output.get("bytes") is None, output
        frame = json.loads(output["text"])
        assert isinstance(frame, dict) and frame.get("type") in SERVER_TYPES, frame
        if frame["type"] == "error":
            assert set(frame) == {"type", "message", "code"}, frame
            assert frame["code"] in ERROR_CODES, frame
            assert isinstance(frame["message"], str) and frame["message"], frame
            assert frame["message"] != "Internal server error", frame
        return frame

    async def send_text(self, text: str) -> None:
        await self.communicator.send_input({"type": "websocket.receive", "text": text})

    async def answers(self, *, text: str | None = None, data: bytes | None = None
                      ) -> list[dict[str, Any]]:
        """Send one frame; its answers."""
        if text is not None:
            await self.send_text(text)
        else:
            await self.communicator.send_input({"type": "websocket.receive", "bytes": data})
        self.sent += 1
        sentinel = f"fuzz.sentinel.{self.sent}"
        await self.send_text(json.dumps({"type": sentinel}))
        answers = []
        while True:
            frame = await self.next_frame()
            assert frame["type"] != "session.updated", frame  # never of its own turns
            if frame.get("message") == f"Unknown message type: {sentinel}":
                break
            else:
                answers.append(frame)
        assert answers, "the frame got no answer"
        return answers

    async def fuzz(self, text: str) -> list[dict[str, Any]]:
        """Send `text` (ROOT replaced by the root session id) and check the answers against
        the oracle and the connection afterwards."""
        text = (text.replace(ROOT, self.root_id).replace(ROOT.upper(), self.root_id.upper())
                .replace(ROOT_HEX, self.root_id.replace("-", "")))
        kind, message = expected_answer(text, entered=self.entered, root_id=self.root_id)
        answers = await self.answers(text=text)
        first = answers[0]
        got = first["code"] if first["type"] == "error" else first["type"]
        if currently_in_test_context():
            event(f"answer: {got}")  # shown by --hypothesis-show-statistics
        if kind == "session.forked?":
            assert got in ("session.forked", "HANDLER_ERROR"), (text, answers)
        else:
            assert got == kind, (text, answers)
            if message is not None:
                assert first["message"] == message, (text, answers)
        if got == "stream.delta":
            assert [a["type"] for a in answers[:-1]] == ["stream.delta"] * (len(answers) - 1)
            assert answers[-1]["type"] == "stream.end", (text, answers)
            assert "".join(a["chunk"] for a in answers[:-1]) == (
                answers[-1]["result"]["turn"]["finalContent"])
        else:
            assert len(answers) == 1, (text, answers)
        if got == "session.entered":
            self.entered = True
        elif got == "session.left":
            self.entered = False
        await self.still_usable()
        return answers

    async def enter(self) -> None:
        answers = await self.answers(text=json.dumps({"type": "session.enter",
                                                      "sessionId": self.root_id}))
        assert [a["type"] for a in answers] == ["session.entered"], answers
        assert answers[0]["sessionId"] == self.root_id
        self.entered = True

    async def leave(self) -> None:
        answers = await self.answers(text='{"type":"session.leave"}')
        if self.entered:
            assert answers == [{"type": "session.left", "sessionId": self.root_id}], answers
        else:
            assert answers == [{"type": "error", "code": "NOT_ENTERED",
                                "message": "Not in a session"}], answers
        self.entered = False

    async def still_usable(self) -> None:
        """A valid enter still works; the connection is left outside any session."""
        await self.leave()
        await self.enter()
        await self.leave()
        self.check_server()

    def check_server(self) -> None:
        assert not self.communicator.future.done(), "the application stopped"
        assert not self.errors.records, [r.getMessage() for r in self.errors.records]

    async def set_entered(self, entered: bool) -> None:
        if entered and not self.entered:
            await self.enter()
        elif not entered and self.entered:
            await self.leave()


@pytest.fixture
async def probe(space, root_id, alice_key, server_errors) -> AsyncIterator[Probe]:
    communicator = WebsocketCommunicator(application, f"/spaces/{space.pk}/ws",
                                         headers=[(b"x-api-key", alice_key.encode())])
    connected, _ = await communicator.connect(timeout=WAIT)
    assert connected
    probe = Probe(communicator, root_id, server_errors)
    yield probe
    probe.check_server()
    await communicator.disconnect(timeout=WAIT)
    await operations.drain()
    assert not server_errors.records, [r.getMessage() for r in server_errors.records]


@sync_to_async
def history_of(session_id: str) -> tuple[list[tuple[str, str]], int]:
    records = list(Record.objects.filter(session_id=session_id).values_list("role", "content"))
    return records, Session.objects.get(pk=session_id).turn_count


# -- tests ---------------------------------------------------------------------------------------


@FUZZ
@given(text=st.text(max_size=200), entered=st.booleans())
async def test_random_text_gets_protocol_answers(probe: Probe, text: str,
                                                 entered: bool) -> None:
    await probe.set_entered(entered)
    await probe.fuzz(text)


@FUZZ
@given(value=json_values, entered=st.booleans())
async def test_random_json_values_get_protocol_answers(probe: Probe, value: Any,
                                                       entered: bool) -> None:
    await probe.set_entered(entered)
    await probe.fuzz(json.dumps(value))


@FUZZ
@given(frame=known_type_frames, entered=st.booleans())
@example(frame={"type": "session.enter", "sessionId": ROOT}, entered=False)
@example(frame={"type": "session.enter", "sessionId": "{" + ROOT + "}"}, entered=False)
@example(frame={"type": "session.enter", "sessionId": "urn:uuid:" + ROOT}, entered=False)
@example(frame={"type": "session.enter", "sessionId": ROOT_HEX}, entered=False)
@example(frame={"type": "session.enter", "sessionId": ROOT + "\x00"}, entered=False)
@example(frame={"type": "session.message", "input": "hello"}, entered=True)
@example(frame={"type": "session.stream", "input": "hello world"}, entered=True)
@example(frame={"type": "session.fork", "options": {"label": "Kid"}}, entered=True)
@example(frame={"type": "session.leave", "sessionId": 1}, entered=True)
async def test_known_types_with_wrong_fields_get_protocol_answers(
    probe: Probe, frame: dict[str, Any], entered: bool
) -> None:
    await probe.set_entered(entered)
    await probe.fuzz(json.dumps(frame, ensure_ascii=False))


@FUZZ
@given(
    size=st.integers(min_value=LIMIT + 1, max_value=4 * LIMIT),
    char=st.sampled_from(["x", "é", "€", "😀", '"', "["]),
    as_turn=st.booleans(),
    entered=st.booleans(),
)
async def test_frames_above_the_limit_are_refused_without_effect(
    probe: Probe, size: int, char: str, as_turn: bool, entered: bool
) -> None:
    await probe.set_entered(entered)
    body = char * (size // len(char.encode()) + 1)
    text = json.dumps({"type": "session.message", "input": body}, ensure_ascii=False) \
        if as_turn else body
    assert len(text.encode()) > LIMIT
    answers = await probe.fuzz(text)
    assert answers == [{"type": "error", "code": "HANDLER_ERROR",
                        "message": f"frame too large: at most {LIMIT} bytes"}]
    assert await history_of(probe.root_id) == ([], 0)  # a refused turn never ran


async def test_a_frame_of_exactly_the_limit_is_handled(probe: Probe) -> None:
    await probe.enter()
    empty = json.dumps({"type": "session.message", "input": ""})
    body = "é" * ((LIMIT - len(empty)) // 2)  # two bytes each
    text = json.dumps({"type": "session.message", "input": body}, ensure_ascii=False)
    text = text.replace(body, body + "x" * (LIMIT - len(text.encode())))
    assert len(text.encode()) == LIMIT
    answers = await probe.fuzz(text)
    assert answers[0]["type"] == "turn.complete"
    assert await history_of(probe.root_id) == (
        [("user", json.loads(text)["input"]), ("assistant", "echo: " + json.loads(text)["input"])],
        1)


@FUZZ
@given(data=st.binary(max_size=300), entered=st.booleans())
async def test_binary_frames_are_parse_errors(probe: Probe, data: bytes,
                                              entered: bool) -> None:
    await probe.set_entered(entered)
    answers = await probe.answers(data=data)
    assert answers == [{"type": "error", "code": "PARSE_ERROR",
                        "message": "Binary frames are not supported"}]
    await probe.still_usable()


def nested(depth: int, *, kind: str = "list", closed: bool = True) -> str:
    opening, closing = ("[", "]") if kind == "list" else ('{"a":', "}")
    inner = "" if kind == "list" else "0"
    return opening * depth + inner + (closing * depth if closed else "")


NESTED_IN = {  # where the nesting goes: a frame template and the kind of nesting
    "the frame": ("{}", "list"),
    "the frame (objects)": ("{}", "object"),
    "type": ('{{"type":{}}}', "list"),
    "sessionId": ('{{"type":"session.enter","sessionId":{}}}', "list"),
    "input": ('{{"type":"session.stream","input":{}}}', "list"),
    "options": ('{{"type":"session.fork","options":{}}}', "list"),
    "scope": ('{{"type":"session.fork","options":{{"label":"L","scope":{}}}}}', "object"),
}
# Just beyond STELLO["MAX_JSON_DEPTH"] (64), around the interpreter's recursion limit (1000) and
# orjson's (1024), then far beyond them.
DEPTHS = (65, 500, 900, *range(940, 1001, 20), 1024, 1025, 10_000, 100_000)
TOO_DEEP = ("PARSE_ERROR", "JSON nested too deeply (at most 64 levels)")


@pytest.mark.parametrize("entered", [False, True], ids=["outside", "entered"])
async def test_deeply_nested_json_gets_protocol_answers(probe: Probe, settings,
                                                        entered: bool) -> None:
    settings.STELLO = {**settings.STELLO, "WS_MAX_FRAME_BYTES": 1_048_576}
    await probe.set_entered(entered)
    for where, (template, kind) in NESTED_IN.items():
        # Within the limit, the contract's answer (the frame nests at most 62 levels).
        text = template.format(nested(60, kind=kind))
        expected = expected_answer(text, entered=probe.entered, root_id=probe.root_id)
        answers = await probe.answers(text=text)
        first = answers[0]
        got = first["code"] if first["type"] == "error" else first["type"]
        if expected[0] == "session.forked?":
            assert got == "HANDLER_ERROR", (where, answers)
        else:
            assert (got, first.get("message") if expected[1] else None) == expected, (
                where, answers)
        await probe.still_usable()
        await probe.set_entered(entered)
        for depth in DEPTHS:
            for closed in (True, False) if depth == 10_000 else (True,):
                text = template.format(nested(depth, kind=kind, closed=closed))
                answers = await probe.answers(text=text)
                assert len(answers) == 1, (where, depth, answers)
                first = answers[0]
                got = (first["code"] if first["type"] == "error" else first["type"],
                       first.get("message"))
                assert got == TOO_DEEP, (where, depth, closed, answers)
                await probe.still_usable()
                await probe.set_entered(entered)
    assert (await history_of(probe.root_id))[1] == 0
