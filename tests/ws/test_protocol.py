"""The WebSocket wire protocol: parsing client frames and building server messages (no I/O)."""

from __future__ import annotations

import json

import pytest

from sessions_app.engine.types import ForkOptions
from sessions_app.ws import protocol as p


def parse_error(text: str) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as caught:
        p.parse_client_frame(text)
    return caught.value


# -- valid frames -------------------------------------------------------------------------------


def test_enter_carries_the_session_id_and_does_not_watch_by_default() -> None:
    assert p.parse_client_frame('{"type":"session.enter","sessionId":"s1"}') == {
        "type": "session.enter", "sessionId": "s1", "watch": False,
    }


@pytest.mark.parametrize("watch", [True, False])
def test_enter_may_ask_to_watch(watch: bool) -> None:
    frame = json.dumps({"type": "session.enter", "sessionId": "s1", "watch": watch})
    assert p.parse_client_frame(frame) == {"type": "session.enter", "sessionId": "s1",
                                           "watch": watch}


def test_leave_ignores_extra_keys() -> None:
    assert p.parse_client_frame('{"type":"session.leave","x":1}') == {"type": "session.leave"}


@pytest.mark.parametrize("kind", ["session.message", "session.stream"])
def test_turns_carry_their_input(kind: str) -> None:
    frame = json.dumps({"type": kind, "input": "hello", "extra": True})
    assert p.parse_client_frame(frame) == {"type": kind, "input": "hello"}


def test_fork_options_are_parsed_into_engine_options() -> None:
    frame = json.dumps({"type": "session.fork",
                        "options": {"label": "Child", "scope": "s", "context": "inherit"}})
    message = p.parse_client_frame(frame)
    assert message["type"] == "session.fork"
    assert message["options"] == ForkOptions(label="Child", scope="s", context="inherit")


# -- PARSE_ERROR / UNKNOWN_TYPE -----------------------------------------------------------------


@pytest.mark.parametrize("text", ["not json", "", "{", "{'type': 'session.leave'}"])
def test_text_that_is_not_json_is_a_parse_error(text: str) -> None:
    error = parse_error(text)
    assert (error.code, error.message, error.message_type) == ("PARSE_ERROR", "Invalid JSON", None)


@pytest.mark.parametrize("text", [
    '{"type":"\\ud800"}',  # lone surrogates, escaped: valid for the json module, not for UTF-8
    '{"type":"session.message","input":"a\\udc00b"}',
    '{"type":"session.stream","input":"\ud800"}',  # the character itself in the text
])
def test_lone_surrogates_are_a_parse_error(text: str) -> None:
    error = parse_error(text)
    assert (error.code, error.message, error.message_type) == ("PARSE_ERROR", "Invalid JSON", None)


def test_a_valid_surrogate_pair_is_one_character() -> None:
    message = p.parse_client_frame('{"type":"session.message","input":"\\ud83d\\ude00"}')
    assert message == {"type": "session.message", "input": "\U0001F600"}


def test_nul_is_a_parse_error() -> None:
    error = parse_error('{"type":"session.message","input":"a\\u0000b"}')
    assert (error.code, error.message) == ("PARSE_ERROR",
                                           "JSON must not contain NUL characters (\\u0000)")


def nested(depth: int) -> str:
    """A session.fork frame whose JSON nests `depth` levels (the frame object is level 1)."""
    return '{"type":"session.fork","options":{"label":"x","skills":' + "[" * (depth - 2) \
        + "]" * (depth - 2) + "}}"


@pytest.mark.parametrize("depth", [65, 1000, 1025, 100_000])
def test_nesting_deeper_than_the_limit_is_a_parse_error(depth: int) -> None:
    error = parse_error(nested(depth))
    assert (error.code, error.message) == ("PARSE_ERROR",
                                           "JSON nested too deeply (at most 64 levels)")


def test_nesting_up_to_the_limit_is_parsed(settings) -> None:
    assert parse_error(nested(64)).code == "HANDLER_ERROR"  # parsed; the skills are invalid
    settings.STELLO = {**settings.STELLO, "MAX_JSON_DEPTH": 10}
    assert parse_error(nested(11)).message == "JSON nested too deeply (at most 10 levels)"


def test_every_answer_encodes_to_utf8_even_with_lone_surrogates_or_deep_values() -> None:
    deep: list = []
    for _ in range(300):  # orjson writes at most 254 levels
        deep = [deep]
    text = p.encode(p.turn_complete({"finalContent": "a\ud800b", "deep": deep}))
    decoded = json.loads(text.encode("utf-8"))  # the bytes a WebSocket text frame carries
    assert decoded["result"] == {"finalContent": "a\ufffdb", "deep": deep}


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ('{"type":"unknown.type"}', "unknown.type"),
        ('{"type":"SESSION.LEAVE"}', "SESSION.LEAVE"),
    ],
)
def test_anything_but_the_five_types_is_unknown(text: str, shown: str) -> None:
    error = parse_error(text)
    assert error.code == "UNKNOWN_TYPE"
    assert error.message == f"Unknown message type: {shown}"
    assert error.message_type is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{}", "type is required"),
        ('{"input": "hi"}', "type is required"),
        ('{"type":null}', "type must be a string"),
        ('{"type":5}', "type must be a string"),
        ('{"type":["session.leave"]}', "type must be a string"),
        ("123", "Message must be a JSON object"),
        ('"session.leave"', "Message must be a JSON object"),
        ("[]", "Message must be a JSON object"),
        ("null", "Message must be a JSON object"),
    ],
)
def test_a_frame_without_a_usable_type_says_what_is_wrong(text: str, message: str) -> None:
    error = parse_error(text)
    assert (error.code, error.message, error.message_type) == ("UNKNOWN_TYPE", message, None)
    assert "undefined" not in error.message


def test_a_long_unknown_type_is_clipped_in_the_message() -> None:
    error = parse_error(json.dumps({"type": "x" * 5000}))
    assert error.message == "Unknown message type: " + "x" * 100 + "..."


# -- HANDLER_ERROR for payloads -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"type": "session.enter"}, "sessionId is required"),
        ({"type": "session.enter", "sessionId": ""}, "sessionId must not be empty"),
        ({"type": "session.enter", "sessionId": 42}, "sessionId must be a string"),
        ({"type": "session.enter", "sessionId": 42, "watch": 1}, "sessionId must be a string"),
        ({"type": "session.enter", "sessionId": "s1", "watch": 1}, "watch must be a boolean"),
        ({"type": "session.enter", "sessionId": "s1", "watch": "true"},
         "watch must be a boolean"),
        ({"type": "session.enter", "sessionId": "s1", "watch": None}, "watch must be a boolean"),
        ({"type": "session.message"}, "input is required"),
        ({"type": "session.message", "input": ""}, "input must not be empty"),
        ({"type": "session.stream", "input": ["hi"]}, "input must be a string"),
        ({"type": "session.stream", "input": None}, "input must be a string"),
        ({"type": "session.fork"}, "label is required"),
        ({"type": "session.fork", "options": None}, "label is required"),
        ({"type": "session.fork", "options": {}}, "label is required"),
        ({"type": "session.fork", "options": {"label": "  "}}, "label must not be blank"),
        ({"type": "session.fork", "options": {"label": 5}}, "label must be a string"),
        ({"type": "session.fork", "options": "Child"}, "fork options must be a JSON object"),
        ({"type": "session.fork", "options": {"label": "C", "scope": 3}},
         "scope must be a string or null"),
    ],
)
def test_invalid_payloads_are_handler_errors_naming_the_field(payload: dict, message: str) -> None:
    error = parse_error(json.dumps(payload))
    assert (error.code, error.message) == ("HANDLER_ERROR", message)
    assert error.message_type == payload["type"]  # lets the consumer check its state first


# -- server messages ----------------------------------------------------------------------------


def test_server_messages_have_the_contract_shapes() -> None:
    assert p.session_entered("s", {"context": {}}) == {
        "type": "session.entered", "sessionId": "s", "bootstrap": {"context": {}},
    }
    assert p.session_left("s") == {"type": "session.left", "sessionId": "s"}
    assert p.turn_complete({"turn": {}}) == {"type": "turn.complete", "result": {"turn": {}}}
    assert p.stream_delta("Hel") == {"type": "stream.delta", "chunk": "Hel"}
    assert p.stream_end({"turn": {}}) == {"type": "stream.end", "result": {"turn": {}}}
    assert p.session_forked({"id": "c"}) == {"type": "session.forked", "child": {"id": "c"}}
    assert p.session_updated("s", 3) == {"type": "session.updated", "sessionId": "s",
                                         "turnCount": 3}
    assert p.error("NOT_ENTERED", "Not in a session") == {
        "type": "error", "message": "Not in a session", "code": "NOT_ENTERED",
    }


def test_the_five_error_codes_and_fixed_messages() -> None:
    assert (p.PARSE_ERROR, p.UNKNOWN_TYPE, p.ALREADY_ENTERED, p.NOT_ENTERED, p.HANDLER_ERROR) == (
        "PARSE_ERROR", "UNKNOWN_TYPE", "ALREADY_ENTERED", "NOT_ENTERED", "HANDLER_ERROR",
    )
    assert p.ALREADY_ENTERED_MESSAGE == "Already in a session, leave first"
    assert p.NOT_ENTERED_MESSAGE == "Not in a session"


def test_every_type_but_enter_needs_a_session() -> None:
    assert p.NEEDS_SESSION == {"session.leave", "session.message", "session.stream",
                               "session.fork", "turn.cancel", "tool.approve"}  # resume enters


def test_encode_is_compact_utf8_json() -> None:
    text = p.encode(p.stream_delta("héllo"))
    assert text == '{"type":"stream.delta","chunk":"héllo"}'
