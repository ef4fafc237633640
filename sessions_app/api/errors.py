"""The one place where errors become HTTP responses: always `{"error": message, "code": ...}`.

Our own errors (`spaces.errors.StelloError` and its subclasses, the engine's included) carry
their status and code. DRF's and Django's exceptions (a parser's bad JSON, a throttle, an
unknown method) are translated into the same vocabulary by `as_stello_error`; anything else is
a bug, left to Django (logged, 500).
"""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import InterfaceError as DjangoInterfaceError
from django.db import OperationalError as DjangoOperationalError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response

from spaces import errors

logger = logging.getLogger("stello.api")

# DRF's own exceptions, in our vocabulary (their status stays DRF's).
CODE_BY_DRF_CLASS = {
    exceptions.ParseError: errors.InvalidJson.code,
    exceptions.ValidationError: errors.InvalidInput.code,
    exceptions.AuthenticationFailed: errors.Unauthenticated.code,
    exceptions.NotAuthenticated: errors.Unauthenticated.code,
    exceptions.PermissionDenied: errors.Forbidden.code,
    exceptions.NotFound: errors.NotFound.code,
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


def drf_code(exc: exceptions.APIException) -> str:
    if exc.status_code == status.HTTP_413_REQUEST_ENTITY_TOO_LARGE:
        return PAYLOAD_TOO_LARGE
    return next((c for cls, c in CODE_BY_DRF_CLASS.items() if isinstance(exc, cls)), "ERROR")


def exception_handler(exc, context):
    if isinstance(exc, DjangoOperationalError | DjangoInterfaceError):
        # PostgreSQL is down or the ORM's connection broke: a 503 the client may retry, not a
        # 500. (The hot-path pool's DatabaseUnavailable is a ServiceUnavailable already.)
        logger.warning("database unavailable: %s", exc)
        exc = errors.ServiceUnavailable()
    if isinstance(exc, errors.StelloError):
        retry_after = getattr(exc, "retry_after", None)  # QuotaExceeded: when the period ends
        headers = {"Retry-After": str(retry_after)} if retry_after else None
        return Response(error_body(exc.message, exc.code), status=exc.status, headers=headers)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound("Not Found")
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied("Forbidden")
    if isinstance(exc, exceptions.APIException):
        headers = {}
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
        if getattr(exc, "wait", None) is not None:
            headers["Retry-After"] = str(int(exc.wait))
        return Response(error_body(_drf_message(exc.detail), drf_code(exc)),
                        status=exc.status_code, headers=headers)
    return None  # a real bug: let Django log it and answer 500
