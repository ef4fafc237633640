"""OpenAPI pieces shared by every REST viewset (drf-spectacular).

The operations themselves are documented where they are served, with `@extend_schema` on the
viewset actions (`spaces.api`, `sessions_app.api.views`) and the serializers they validate
with. This module holds what they share: the error responses, the path parameters, the response
headers, and the `X-API-Key` security scheme (registered when it is imported, which the viewset
modules do).
"""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import serializers

from .auth import HEADER
from .serializers import TIMESTAMP_HELP

SECURITY_SCHEME = "ApiKeyAuth"
BEARER_SCHEME = "BearerAuth"
# Bodies are parsed as JSON whatever the Content-Type says; JSON is what clients should send.
JSON = "application/json"
NUL_HELP = (
    "Strings anywhere in a request body must not contain NUL (`\\u0000`): such a body answers 400 "
    "`INVALID_JSON`."
)


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """`spaces.auth.ApiKeyAuthentication`: the `X-API-Key` header, or the same key as
    `Authorization: Bearer <key>` (either one)."""

    target_class = "spaces.auth.ApiKeyAuthentication"
    name = [SECURITY_SCHEME, BEARER_SCHEME]

    def get_security_requirement(self, auto_schema):
        return [{SECURITY_SCHEME: []}, {BEARER_SCHEME: []}]  # one or the other

    def get_security_definition(self, auto_schema):
        return [{"type": "apiKey", "in": "header", "name": HEADER},
                {"type": "http", "scheme": "bearer",
                 "description": f"The API key as `Authorization: Bearer <key>`, instead of "
                                f"`{HEADER}`."}]


# --- Errors: always {"error": message, "code": CODE}; one component per status ----------------

ERROR_CODES: dict[int, tuple[str, tuple[str, ...], str]] = {
    400: ("BadRequestError", ("INVALID_JSON", "INVALID_INPUT", "INVALID_CURSOR",
                              "INVALID_IMPORT"),
          "Invalid JSON (`INVALID_JSON`, also for NUL characters) or invalid fields "
          "(`INVALID_INPUT`); a paging or search cursor that was altered or given out for "
          "another list or query (`INVALID_CURSOR`); an import file refused, with its first "
          "bad line (`INVALID_IMPORT`)."),
    401: ("UnauthorizedError", ("UNAUTHENTICATED",),
          'Missing (`"Missing API key"`) or unknown/revoked (`"Invalid API key"`) key, in '
          '`X-API-Key` or `Authorization: Bearer`.'),
    403: ("ForbiddenError", ("FORBIDDEN",), "The space belongs to another user."),
    404: ("NotFoundError", ("NOT_FOUND", "SPACE_NOT_FOUND", "SESSION_NOT_FOUND",
                            "MESSAGE_NOT_FOUND", "CORE_KEY_NOT_FOUND", "TURN_NOT_FOUND"),
          "Unknown space (`SPACE_NOT_FOUND`), a session that is not in this space "
          "(`SESSION_NOT_FOUND`), a message that is not in this session (`MESSAGE_NOT_FOUND`), "
          "a core memory key that is not set (`CORE_KEY_NOT_FOUND`), a turn that is not in "
          "this session (`TURN_NOT_FOUND`) or an unknown path (`NOT_FOUND`). Malformed ids are "
          "simply unknown."),
    409: ("ConflictError", ("SESSION_ARCHIVED", "SESSION_BUSY", "MAIN_SESSION_NOT_ARCHIVABLE",
                            "MAIN_SESSION_NOT_DELETABLE", "MESSAGE_NOT_EDITABLE",
                            "NOTHING_TO_REGENERATE", "TURN_CANCELLED", "TURN_NOT_RUNNING"),
          "The session is archived (`SESSION_ARCHIVED`), or busy: it could not be had within "
          "`STELLO_SESSION_LOCK_TIMEOUT_SECONDS` (`SESSION_BUSY`); archiving or deleting the "
          "main session (`MAIN_SESSION_NOT_ARCHIVABLE`, `MAIN_SESSION_NOT_DELETABLE`); editing "
          "a message other than the last user message (`MESSAGE_NOT_EDITABLE`); regenerating "
          "without a turn (`NOTHING_TO_REGENERATE`); the turn was cancelled while running "
          "(`TURN_CANCELLED`); a cancel of a turn that is not running (`TURN_NOT_RUNNING`)."),
    413: ("PayloadTooLargeError", ("PAYLOAD_TOO_LARGE",),
          "The body is larger than `STELLO_MAX_BODY_BYTES`."),
    429: ("RateLimitedError", ("RATE_LIMITED", "QUOTA_EXCEEDED"),
          "Too many requests for this API key (only when `STELLO_RATE_LIMIT` is set), or a "
          "turn while a usage quota is spent (`QUOTA_EXCEEDED`); see `Retry-After`."),
    502: ("BadGatewayError", ("LLM_ERROR", "TOOL_LOOP_LIMIT"),
          "The LLM failed (`LLM_ERROR`, the message is the provider's) or kept calling tools "
          "past `STELLO_MAX_TOOL_ROUNDS` (`TOOL_LOOP_LIMIT`)."),
    503: ("ServiceUnavailableError", ("SERVICE_UNAVAILABLE",),
          "The database had no free connection in time, or cannot be reached; nothing was "
          "done and the request may be retried."),
}


def _error_serializer(name: str, codes: tuple[str, ...]) -> type[serializers.Serializer]:
    fields = {
        "error": serializers.CharField(help_text="Human-readable message."),
        "code": serializers.ChoiceField(choices=list(codes), help_text="Machine-readable code."),
        "__doc__": '`{"error": message, "code": CODE}`, the shape of every error.',
    }
    return type(f"{name}Serializer", (serializers.Serializer,), fields)


ERROR_SERIALIZERS = {
    status: _error_serializer(name, codes) for status, (name, codes, _) in ERROR_CODES.items()
}

RESPONSE_HEADERS = [
    OpenApiParameter(
        "WWW-Authenticate", str, OpenApiParameter.HEADER, required=True, response=[401],
        description=f"Always `{HEADER}`: the header that carries the key.",
    ),
    OpenApiParameter(
        "Retry-After", int, OpenApiParameter.HEADER, response=[429],
        description="Seconds until the next request is allowed.",
    ),
]


def error_responses(*statuses: int) -> dict[int, OpenApiResponse]:
    """The documented error responses of an operation. Every `/spaces` operation may answer 401
    (bad key), 429 (rate limit) and 503 (database unavailable), so those are always included."""
    wanted = sorted({401, 429, 503, *statuses})
    return {
        status: OpenApiResponse(ERROR_SERIALIZERS[status], description=ERROR_CODES[status][2])
        for status in wanted
    }


# --- Path parameters ---------------------------------------------------------------------------

# Ids are UUIDs, but any single path segment is routed: a malformed id answers 404 like an
# unknown one, so the parameters are plain strings.
SEGMENT_PATTERN = "^[^/]+$"

SPACE_ID = OpenApiParameter(
    "space_id", str, OpenApiParameter.PATH, pattern=SEGMENT_PATTERN,
    description="The space's id (a UUID). Any other value, a malformed id included, answers "
                "404; another user's space answers 403.",
)

__all__ = ["JSON", "NUL_HELP", "RESPONSE_HEADERS", "SEGMENT_PATTERN", "SPACE_ID", "TIMESTAMP_HELP",
           "ApiKeyAuthenticationScheme", "error_responses"]
