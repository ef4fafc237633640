"""The WebSocket wire protocol: one TypedDict per message, the parser and the server builders.

Client -> server (JSON text frames):

    session.enter   {sessionId, watch?}  session.message {input}      session.fork {options}
    session.leave   {}                   session.stream  {input}

Server -> client, plus one addition of ours:

    session.entered {sessionId, bootstrap}   stream.delta {chunk}     error {message, code}
    session.left    {sessionId}              stream.end   {result}
    turn.complete   {result}                 session.forked {child}
    session.updated {sessionId, turnCount}   (ours, opt-in: see below)

Our addition is opt-in, so a client written for the original protocol never sees a frame that
protocol does not have (docs/protocol.md). `session.enter` may carry `"watch": true` (an added
optional field; when present it must be a boolean, else HANDLER_ERROR `watch must be a
boolean`, like every other payload error). Only a connection that entered with it receives
`session.updated`: after each committed turn on the entered session, made through REST or
another WebSocket connection, in any server process. A connection never hears of its own turns
(their answer already says so).

`session.message`, `session.stream` and `session.fork` may carry `"requestId"` (ours, optional;
1 to 255 visible ASCII characters, else HANDLER_ERROR): the frame then runs at most once per
user and id, and its final frame carries the id back (`ws/idempotent.py`).

`parse_client_frame` is the one entry point for incoming text: it returns a validated
`ClientMessage` or raises `ProtocolError` with one of the five codes of the contract. Frames are
parsed like REST bodies (`spaces.safejson`): invalid JSON, lone surrogates (`"\\ud800"`), NUL
characters and nesting deeper than STELLO_MAX_JSON_DEPTH are a PARSE_ERROR. `encode` cannot fail,
so every answer reaches the client.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

from spaces import safejson
from spaces.errors import InvalidIdempotencyKey
from spaces.idempotency import parse_key

from ..engine.errors import InvalidInput, missing, required_text, wrong_type
from ..engine.fork import parse_fork_options
from ..engine.types import ForkOptions

ErrorCode = Literal["PARSE_ERROR", "UNKNOWN_TYPE", "ALREADY_ENTERED", "NOT_ENTERED",
                    "HANDLER_ERROR", "RATE_LIMITED", "QUOTA_EXCEEDED"]
PARSE_ERROR: ErrorCode = "PARSE_ERROR"
UNKNOWN_TYPE: ErrorCode = "UNKNOWN_TYPE"
ALREADY_ENTERED: ErrorCode = "ALREADY_ENTERED"
NOT_ENTERED: ErrorCode = "NOT_ENTERED"
HANDLER_ERROR: ErrorCode = "HANDLER_ERROR"
RATE_LIMITED: ErrorCode = "RATE_LIMITED"  # REST's 429 code: the API key is over STELLO_RATE_LIMIT
QUOTA_EXCEEDED: ErrorCode = "QUOTA_EXCEEDED"  # REST's 429 code: a usage budget is spent

INVALID_JSON = "Invalid JSON"
NOT_AN_OBJECT = "Message must be a JSON object"
ALREADY_ENTERED_MESSAGE = "Already in a session, leave first"
NOT_ENTERED_MESSAGE = "Not in a session"

REQUEST_ID_MESSAGE = "requestId must be a string of 1 to 255 visible ASCII characters"

_TYPE_ECHO_LIMIT = 100  # an unknown type is echoed back, clipped to this many characters
_MISSING: Any = object()


# -- client -> server ---------------------------------------------------------------------------

ClientType = Literal["session.enter", "session.leave", "session.message", "session.stream",
                     "session.fork", "session.resume", "turn.cancel", "tool.approve"]


class SessionEnter(TypedDict):
    """`watch` is ours: on the wire optional (false when absent), always set once parsed."""

    type: Literal["session.enter"]
    sessionId: str
    watch: bool


class SessionLeave(TypedDict):
    type: Literal["session.leave"]


class SessionMessage(TypedDict):
    """A non-streaming turn."""

    type: Literal["session.message"]
    input: str
    requestId: NotRequired[str]  # ours: run at most once per user and id (docs/idempotency.md)


class SessionStream(TypedDict):
    """A streaming turn."""

    type: Literal["session.stream"]
    input: str
    requestId: NotRequired[str]


class SessionFork(TypedDict):
    """On the wire `options` is `{label, scope?, systemPrompt?, prompt?, context?, skills?}`
    (the REST fork body); once parsed it is the engine's validated `ForkOptions`."""

    type: Literal["session.fork"]
    options: ForkOptions
    requestId: NotRequired[str]


class SessionResume(TypedDict):
    """Ours (docs/live-turns.md): enter the session and receive its events after `since`."""

    type: Literal["session.resume"]
    sessionId: str
    since: int | None  # None: "newest"


class TurnCancel(TypedDict):
    """Ours: cancel the session's running turn (`turnId` optional)."""

    type: Literal["turn.cancel"]
    turnId: str | None


class ToolApprove(TypedDict):
    """Ours (docs/agent-control.md): approve or deny one tool call of a waiting turn
    (`turnId` optional: the entered session's waiting turn)."""

    type: Literal["tool.approve"]
    turnId: str | None
    callId: str
    approve: bool
    reason: str | None


ClientMessage = (SessionEnter | SessionLeave | SessionMessage | SessionStream | SessionFork
                 | SessionResume | TurnCancel | ToolApprove)

CLIENT_TYPES: tuple[ClientType, ...] = (
    "session.enter", "session.leave", "session.message", "session.stream", "session.fork",
    "session.resume", "turn.cancel", "tool.approve",
)
ENTERING: frozenset[str] = frozenset({"session.enter", "session.resume"})
NEEDS_SESSION: frozenset[str] = frozenset(CLIENT_TYPES) - ENTERING


class ProtocolError(Exception):
    """A frame the server answers with an `error` message. `message_type` is the client
    message's type when it was recognised (a payload error), else None."""

    def __init__(self, code: ErrorCode, message: str, *, message_type: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.message_type = message_type


def parse_client_frame(text: str) -> ClientMessage:
    """The validated client message of one text frame.

    Raises ProtocolError: PARSE_ERROR `Invalid JSON` (lone surrogates included), or the reason
    a valid JSON text is refused (NUL, too deeply nested); UNKNOWN_TYPE for a frame without a
    usable type (`Message must be a JSON object`, `type is required`, `type must be a string`,
    `Unknown message type: <t>`); HANDLER_ERROR for an invalid payload, worded like REST's
    validation (`sessionId is required`, `input must be a string`, `label must not be
    blank`, ...).
    """
    try:
        data = safejson.loads(text)
    except safejson.JSONRejected as exc:
        raise ProtocolError(PARSE_ERROR, exc.message) from None
    if not isinstance(data, dict):
        raise ProtocolError(UNKNOWN_TYPE, NOT_AN_OBJECT)
    raw_type = data.get("type", _MISSING)
    if raw_type is _MISSING:
        raise ProtocolError(UNKNOWN_TYPE, missing("type").message)
    if not isinstance(raw_type, str):
        raise ProtocolError(UNKNOWN_TYPE, wrong_type("type", "a string").message)
    if raw_type not in CLIENT_TYPES:
        raise ProtocolError(UNKNOWN_TYPE, f"Unknown message type: {_clipped(raw_type)}")
    try:
        return _PAYLOAD_PARSERS[raw_type](data)
    except InvalidInput as exc:
        raise ProtocolError(HANDLER_ERROR, exc.message, message_type=raw_type) from None


def _clipped(text: str) -> str:
    return text if len(text) <= _TYPE_ECHO_LIMIT else text[:_TYPE_ECHO_LIMIT] + "..."


def _enter(data: dict[str, Any]) -> SessionEnter:
    session_id = required_text(data, "sessionId")
    watch = data.get("watch", False)
    if not isinstance(watch, bool):
        raise wrong_type("watch", "a boolean")
    return {"type": "session.enter", "sessionId": session_id, "watch": watch}


def _leave(data: dict[str, Any]) -> SessionLeave:
    return {"type": "session.leave"}


def _message(data: dict[str, Any]) -> SessionMessage:
    return _with_request_id(data, {"type": "session.message",
                                   "input": required_text(data, "input"), **_if_busy(data)})


def _stream(data: dict[str, Any]) -> SessionStream:
    return _with_request_id(data, {"type": "session.stream",
                                   "input": required_text(data, "input"), **_if_busy(data)})


def _if_busy(data: dict[str, Any]) -> dict[str, str]:
    """Ours, optional: the busy policy of this turn (docs/live-turns.md)."""
    from ..live import parse_if_busy

    policy = parse_if_busy(data.get("ifBusy"))
    return {} if policy is None else {"ifBusy": policy}


def _fork(data: dict[str, Any]) -> SessionFork:
    options = data.get("options")
    # Missing options: say what is missing ("label is required"), not "options must be ...".
    return _with_request_id(data, {"type": "session.fork",
                                   "options": parse_fork_options({} if options is None
                                                                 else options)})


def _with_request_id(data: dict[str, Any], message: Any) -> Any:
    """The optional `requestId` (ours), validated like an Idempotency-Key header."""
    request_id = data.get("requestId", _MISSING)
    if request_id is not _MISSING:
        try:
            message["requestId"] = parse_key(request_id)
        except InvalidIdempotencyKey:
            raise InvalidInput(REQUEST_ID_MESSAGE) from None
    return message


def _resume(data: dict[str, Any]) -> SessionResume:
    from ..live import parse_since

    session_id = required_text(data, "sessionId")
    if "since" not in data:
        raise missing("since")
    # "newest": from the newest saved event (a running turn's events are replayed), as the SSE
    # endpoint without `since` does; a client learns the seq from `session.entered`.
    since = None if data["since"] == "newest" else parse_since(data["since"])
    return {"type": "session.resume", "sessionId": session_id, "since": since}


def _cancel(data: dict[str, Any]) -> TurnCancel:
    turn_id = data.get("turnId")
    if turn_id is not None and not isinstance(turn_id, str):
        raise wrong_type("turnId", "a string")
    return {"type": "turn.cancel", "turnId": turn_id}


def _approve(data: dict[str, Any]) -> ToolApprove:
    from ..engine.approval import Answer

    turn_id = data.get("turnId")
    if turn_id is not None and not isinstance(turn_id, str):
        raise wrong_type("turnId", "a string")
    answer = Answer.parse(data)
    return {"type": "tool.approve", "turnId": turn_id, "callId": answer.call_id,
            "approve": answer.approve, "reason": answer.reason}


_PAYLOAD_PARSERS = {
    "turn.cancel": _cancel,
    "tool.approve": _approve,
    "session.resume": _resume,
    "session.enter": _enter,
    "session.leave": _leave,
    "session.message": _message,
    "session.stream": _stream,
    "session.fork": _fork,
}


# -- server -> client ---------------------------------------------------------------------------


class SessionEntered(TypedDict):
    type: Literal["session.entered"]
    sessionId: str
    bootstrap: dict[str, Any]  # `sessions_app.wire.bootstrap_json`


class SessionLeft(TypedDict):
    type: Literal["session.left"]
    sessionId: str


class TurnComplete(TypedDict):
    type: Literal["turn.complete"]
    result: dict[str, Any]  # `TurnResult.to_json()`, the REST turn response


class StreamDelta(TypedDict):
    type: Literal["stream.delta"]
    chunk: str  # never empty


class StreamEnd(TypedDict):
    type: Literal["stream.end"]
    result: dict[str, Any]  # authoritative: `result.turn.finalContent` is the whole answer


class SessionForked(TypedDict):
    type: Literal["session.forked"]
    child: dict[str, Any]  # `sessions_app.wire.fork_child_json`, the REST fork response


class SessionUpdated(TypedDict):
    """Ours, only to connections that entered with `watch`: a turn on the entered session
    committed (through REST or another connection, in any process)."""

    type: Literal["session.updated"]
    sessionId: str
    turnCount: int


class ToolApprovalRequired(TypedDict):
    """Ours: a tool call of the session's turn waits for a human (answer: `tool.approve`)."""

    type: Literal["tool.approval_required"]
    turnId: str
    callId: str
    name: str
    arguments: dict[str, Any]


class ToolApproval(TypedDict):
    """Ours: the answer to `tool.approve` (the call as now decided, as REST returns it)."""

    type: Literal["tool.approval"]
    turnId: str
    approval: dict[str, Any]


class ErrorMessage(TypedDict):
    type: Literal["error"]
    message: str
    code: NotRequired[ErrorCode]  # every server path sets it
    retryAfter: NotRequired[int]  # QUOTA_EXCEEDED: seconds until the quota's period ends


ServerMessage = (SessionEntered | SessionLeft | TurnComplete | StreamDelta | StreamEnd
                 | SessionForked | SessionUpdated | ToolApprovalRequired | ToolApproval
                 | ErrorMessage)


def session_entered(session_id: str, bootstrap: dict[str, Any]) -> SessionEntered:
    return {"type": "session.entered", "sessionId": session_id, "bootstrap": bootstrap}


def session_left(session_id: str) -> SessionLeft:
    return {"type": "session.left", "sessionId": session_id}


def turn_complete(result: dict[str, Any]) -> TurnComplete:
    return {"type": "turn.complete", "result": result}


def stream_delta(chunk: str) -> StreamDelta:
    return {"type": "stream.delta", "chunk": chunk}


def stream_end(result: dict[str, Any]) -> StreamEnd:
    return {"type": "stream.end", "result": result}


def session_forked(child: dict[str, Any]) -> SessionForked:
    return {"type": "session.forked", "child": child}


def session_updated(session_id: str, turn_count: int) -> SessionUpdated:
    return {"type": "session.updated", "sessionId": session_id, "turnCount": turn_count}


def tool_approval_required(payload: dict[str, Any]) -> ToolApprovalRequired:
    return {"type": "tool.approval_required", "turnId": payload["turnId"],
            "callId": payload["callId"], "name": payload["name"],
            "arguments": payload["arguments"]}


def tool_approval(turn_id: str, approval: dict[str, Any]) -> ToolApproval:
    return {"type": "tool.approval", "turnId": turn_id, "approval": approval}


def error(code: ErrorCode, message: str) -> ErrorMessage:
    return {"type": "error", "message": message, "code": code}


def quota_exceeded(message: str, retry_after: int) -> ErrorMessage:
    return {"type": "error", "message": message, "code": QUOTA_EXCEEDED, "retryAfter": retry_after}


def encode(message: ServerMessage) -> str:
    """The frame's text. Never raises: what orjson refuses is written by the fallback encoder,
    lone surrogates as U+FFFD (a text frame must be valid UTF-8)."""
    return safejson.dumps(message).decode("utf-8")
