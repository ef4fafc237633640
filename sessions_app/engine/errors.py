"""The engine's errors: the server's error vocabulary (`spaces.errors`, plain Python, shared
with the REST and WebSocket layers) plus the errors only the engine raises. Each class carries
its HTTP `status` and its `code`; the REST exception handler and the WebSocket consumer read
them from the class, so a new error needs no entry anywhere else.
"""

from __future__ import annotations

from spaces.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    ServiceUnavailable,
    SpaceNotFound,
    StelloError,
    empty,
    missing,
    required_text,
    wrong_type,
)

__all__ = [
    "ApprovalAnswered", "ApprovalNotFound", "Conflict", "InvalidInput", "LLMError",
    "MainSessionNotArchivable", "NotFound",
    "ServiceUnavailable", "SessionArchived",
    "SessionBusy", "SessionNotFound", "SpaceNotFound", "StelloError", "ToolLoopLimit",
    "TurnCancelled", "TurnNotFound", "TurnNotRunning", "TurnNotWaiting", "TurnSuspended",
    "empty",
    "missing", "required_text", "wrong_type",
]


class SessionNotFound(NotFound):
    """An unknown session, a session of another space, or a malformed session id."""

    code = "SESSION_NOT_FOUND"
    default_message = "Session not found"


class TurnNotFound(NotFound):
    """An unknown turn id, a malformed one, or a turn of another session."""

    code = "TURN_NOT_FOUND"
    default_message = "Turn not found"


class TurnCancelled(Conflict):
    """The turn was cancelled (by `turn.cancel`, `POST .../cancel` or an `interrupt`)."""

    code = "TURN_CANCELLED"

    def __init__(self, turn_id: str, seq: int = 0) -> None:
        super().__init__(f"Turn {turn_id} was cancelled")
        self.turn_id = turn_id
        self.seq = seq  # of its `turn.cancelled` event


class TurnNotRunning(Conflict):
    """A cancel of a turn that has ended, or of a session that runs none."""

    code = "TURN_NOT_RUNNING"
    default_message = "No turn is running"


class TurnNotWaiting(Conflict):
    """An approval for a turn that is not waiting for one (it ended, or runs on)."""

    code = "TURN_NOT_WAITING"
    default_message = "The turn is not waiting for an approval"


class ApprovalNotFound(NotFound):
    """An approval for a tool call the waiting turn did not ask about."""

    code = "TOOL_CALL_NOT_FOUND"
    default_message = "The turn waits for no approval of that tool call"


class ApprovalAnswered(Conflict):
    """A second answer to a tool call that was approved or denied already."""

    code = "APPROVAL_ANSWERED"
    default_message = "That tool call was approved or denied already"


class TurnSuspended(ServiceUnavailable):
    """The process stops while a turn waits for approval: the turn stays `waiting` (stored)
    and any server process resumes it when the answers arrive."""

    code = "TURN_SUSPENDED"
    default_message = ("The server is restarting; the turn waits for its tool approvals and "
                       "goes on when they arrive (follow its events)")


class SessionArchived(Conflict):
    code = "SESSION_ARCHIVED"

    def __init__(self, session_id: str) -> None:
        super().__init__(f'Session "{session_id}" is archived and cannot be modified')
        self.session_id = session_id


class MainSessionNotArchivable(Conflict):
    """The main session is the root of the tree and the target of integration: archiving it
    would freeze the whole space, so it is refused."""

    code = "MAIN_SESSION_NOT_ARCHIVABLE"
    default_message = "The main session cannot be archived"


class SessionBusy(Conflict):
    """The session's lock could not be had in time (another operation is running on it)."""

    code = "SESSION_BUSY"
    default_message = "session busy"


class LLMError(StelloError):
    """The upstream LLM failed or answered something unusable; the message is the provider's."""

    status = 502
    code = "LLM_ERROR"

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient  # worth retrying (timeout, 429, 5xx, cut connection)


class ToolLoopLimit(LLMError):
    code = "TOOL_LOOP_LIMIT"

    def __init__(self, max_rounds: int) -> None:
        super().__init__(f"tool loop exceeded the limit: at most {max_rounds} rounds")
