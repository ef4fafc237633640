"""One error hierarchy with machine-readable codes.

The engine raises these; the REST exception handler and the WebSocket consumer map them to a
status / error frame in one place each (`sessions_app.api.errors`, `sessions_app.ws`).
"""

from __future__ import annotations


class StelloError(Exception):
    code = "STELLO_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(StelloError):
    """The caller sent something invalid (HTTP 400)."""

    code = "INVALID_INPUT"


class SpaceNotFound(StelloError):
    code = "SPACE_NOT_FOUND"

    def __init__(self, message: str = "Space not found") -> None:
        super().__init__(message)


class SessionNotFound(StelloError):
    code = "SESSION_NOT_FOUND"

    def __init__(self, message: str = "Session not found") -> None:
        super().__init__(message)


class SessionArchived(StelloError):
    code = "SESSION_ARCHIVED"

    def __init__(self, session_id: str) -> None:
        super().__init__(f'Session "{session_id}" is archived and cannot be modified')
        self.session_id = session_id


class MainSessionNotArchivable(StelloError):
    """The main session is the root of the tree and the target of integration: archiving it
    would freeze the whole space, so it is refused (HTTP 409)."""

    code = "MAIN_SESSION_NOT_ARCHIVABLE"
    http_status = 409

    def __init__(self) -> None:
        super().__init__("The main session cannot be archived")


class SessionBusy(StelloError):
    """The session's lock could not be had in time (another operation is running on it)."""

    code = "SESSION_BUSY"

    def __init__(self, message: str = "session busy") -> None:
        super().__init__(message)


class ServiceUnavailable(StelloError):
    """The database (or the session-lock backend) cannot be reached or has no free connection
    right now (HTTP 503): nothing was done, the caller may retry."""

    code = "SERVICE_UNAVAILABLE"

    def __init__(self, message: str = "Service temporarily unavailable") -> None:
        super().__init__(message)


class LLMError(StelloError):
    """The upstream LLM failed or answered something unusable (HTTP 502)."""

    code = "LLM_ERROR"

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient  # worth retrying (timeout, 429, 5xx, cut connection)


class ToolLoopLimit(LLMError):
    code = "TOOL_LOOP_LIMIT"

    def __init__(self, max_rounds: int) -> None:
        super().__init__(f"tool loop exceeded the limit: at most {max_rounds} rounds")
