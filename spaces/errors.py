"""The server's one error vocabulary: every error a caller can cause is a class that carries its
HTTP `status` and its machine-readable `code`.

REST answers one with `{"error": message, "code": code}` and its status
(`sessions_app.api.errors.exception_handler`); the WebSocket sends the same message in an
`error` frame (`sessions_app.ws.consumer`). A new error is a new subclass: nothing else needs to
know about it. The engine's errors (`sessions_app.engine.errors`) extend these classes.

This module is plain Python (no Django import), so the engine, which must stay free of Django,
can share it. The field helpers at the end word validation messages the same way on every
surface: `label is required` when it is missing, `label must be a string` when it has the wrong
type, `label must not be empty` when it is "".
"""

from __future__ import annotations

from typing import Any


class StelloError(Exception):
    """Base of every error with a status and a code. Unexpected errors are not StelloErrors:
    they stay bugs (500, logged)."""

    status = 500
    code = "INTERNAL_ERROR"
    default_message = "Internal server error"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)


class InvalidInput(StelloError):
    """The caller sent something invalid; nothing was changed."""

    status = 400
    code = "INVALID_INPUT"
    default_message = "Invalid request"


class InvalidJson(InvalidInput):
    code = "INVALID_JSON"
    default_message = "Invalid JSON body"


class Unauthenticated(StelloError):
    status = 401
    code = "UNAUTHENTICATED"
    default_message = "Invalid API key"


class Forbidden(StelloError):
    """The resource exists but belongs to another user."""

    status = 403
    code = "FORBIDDEN"
    default_message = "Forbidden"


class NotFound(StelloError):
    status = 404
    code = "NOT_FOUND"
    default_message = "Not Found"


class SpaceNotFound(NotFound):
    """An unknown space, or a malformed space id."""

    code = "SPACE_NOT_FOUND"
    default_message = "Space not found"


class Conflict(StelloError):
    """The request is valid but the resource's state refuses it right now."""

    status = 409
    code = "CONFLICT"
    default_message = "Conflict"


class QuotaExceeded(StelloError):
    """A usage budget of the caller is spent: nothing was run. `retry_after` is the number of
    seconds until the period ends (REST sends it as `Retry-After`)."""

    status = 429
    code = "QUOTA_EXCEEDED"
    default_message = "Usage quota exceeded"

    def __init__(self, message: str | None = None, *, retry_after: int = 0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServiceUnavailable(StelloError):
    """The database (or the session-lock backend) cannot be reached or has no free connection
    right now: nothing was done, the caller may retry."""

    status = 503
    code = "SERVICE_UNAVAILABLE"
    default_message = "Service temporarily unavailable"


class InvalidIdempotencyKey(InvalidInput):
    """An `Idempotency-Key` header (or a WebSocket `requestId`) that is empty, longer than 255
    characters, or not visible ASCII."""

    code = "INVALID_IDEMPOTENCY_KEY"
    default_message = ("Idempotency-Key must be 1 to 255 visible ASCII characters")


class IdempotencyKeyReused(StelloError):
    """The key was used before for a different request (method, path or body): nothing ran."""

    status = 422
    code = "IDEMPOTENCY_KEY_REUSED"
    default_message = "This Idempotency-Key was already used for a different request"


class IdempotencyKeyInUse(Conflict):
    """The first request with this key is still running past the lock timeout: nothing ran;
    retry later to get its answer."""

    code = "IDEMPOTENCY_KEY_IN_USE"
    default_message = "A request with this Idempotency-Key is still running"


# -- validation messages ---------------------------------------------------------------------------

def missing(key: str) -> InvalidInput:
    return InvalidInput(f"{key} is required")


def wrong_type(key: str, expected: str) -> InvalidInput:
    """`expected` reads after "must be": "a string", "an object", "a boolean", ..."""
    return InvalidInput(f"{key} must be {expected}")


def empty(key: str) -> InvalidInput:
    return InvalidInput(f"{key} must not be empty")


_ABSENT: Any = object()


def required_text(data: dict[str, Any], key: str, *, blank: bool = False,
                  strip: bool = False) -> str:
    """`data[key]`, a string: not empty unless `blank`, and with something besides whitespace
    when `strip`. Otherwise InvalidInput saying what is wrong."""
    value = data.get(key, _ABSENT)
    if value is _ABSENT:
        raise missing(key)
    if not isinstance(value, str):
        raise wrong_type(key, "a string")
    if not value and not blank:
        raise empty(key)
    if strip and value and not value.strip():
        raise InvalidInput(f"{key} must not be blank")
    return value
