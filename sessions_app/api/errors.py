"""The one place where errors become HTTP responses: always `{"error": message, "code": ...}`."""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import InterfaceError as DjangoInterfaceError
from django.db import OperationalError as DjangoOperationalError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response

from spaces.pgpool import DatabaseUnavailable

from ..engine import errors

logger = logging.getLogger("stello.api")

# The HTTP status of each engine error code. An error class may also carry its own `http_status`,
# which wins, so a new error needs no entry here.
STATUS_BY_CODE = {
    errors.InvalidInput.code: status.HTTP_400_BAD_REQUEST,
    errors.SpaceNotFound.code: status.HTTP_404_NOT_FOUND,
    errors.SessionNotFound.code: status.HTTP_404_NOT_FOUND,
    errors.SessionArchived.code: status.HTTP_409_CONFLICT,
    errors.SessionBusy.code: status.HTTP_409_CONFLICT,
    errors.ServiceUnavailable.code: status.HTTP_503_SERVICE_UNAVAILABLE,
    errors.LLMError.code: status.HTTP_502_BAD_GATEWAY,
    errors.ToolLoopLimit.code: status.HTTP_502_BAD_GATEWAY,
}

CODE_BY_DRF_CLASS = {
    exceptions.ParseError: "INVALID_JSON",
    exceptions.ValidationError: "INVALID_INPUT",
    exceptions.AuthenticationFailed: "UNAUTHENTICATED",
    exceptions.NotAuthenticated: "UNAUTHENTICATED",
    exceptions.PermissionDenied: "FORBIDDEN",
    exceptions.NotFound: "NOT_FOUND",
    exceptions.MethodNotAllowed: "METHOD_NOT_ALLOWED",
    exceptions.UnsupportedMediaType: "UNSUPPORTED_MEDIA_TYPE",
    exceptions.Throttled: "RATE_LIMITED",
}
PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"


def error_body(message: str, code: str) -> dict[str, str]:
    return {"error": message, "code": code}


def _drf_message(detail) -> str:
    """The first human-readable message of a DRF detail (str, list or dict)."""
    while isinstance(detail, dict | list) and detail:
        detail = next(iter(detail.values())) if isinstance(detail, dict) else detail[0]
    return str(detail) if detail else "Invalid request"


def exception_handler(exc, context):
    if isinstance(exc, DatabaseUnavailable | DjangoOperationalError | DjangoInterfaceError):
        # No connection in time, PostgreSQL is down or the connection broke (the hot-path pool
        # or the ORM's): a 503 the client may retry, not a 500.
        logger.warning("database unavailable: %s", exc)
        exc = errors.ServiceUnavailable()
    if isinstance(exc, errors.StelloError):
        code = exc.code
        http_status = getattr(exc, "http_status", None) or STATUS_BY_CODE.get(code)
        if http_status is None:
            logger.error("unmapped engine error %s: %s", code, exc.message)
            http_status = status.HTTP_500_INTERNAL_SERVER_ERROR
        return Response(error_body(exc.message, code), status=http_status)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound("Not Found")
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied("Forbidden")
    if isinstance(exc, exceptions.APIException):
        code = next((c for cls, c in CODE_BY_DRF_CLASS.items() if isinstance(exc, cls)), "ERROR")
        if exc.status_code == status.HTTP_413_REQUEST_ENTITY_TOO_LARGE:
            code = PAYLOAD_TOO_LARGE
        headers = {}
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
        if getattr(exc, "wait", None) is not None:
            headers["Retry-After"] = str(int(exc.wait))
        return Response(
            error_body(_drf_message(exc.detail), code), status=exc.status_code, headers=headers
        )
    return None  # a real bug: let Django log it and answer 500
