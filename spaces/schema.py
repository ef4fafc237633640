"""OpenAPI documentation of the Space REST API (drf-spectacular), kept out of the views.

The serializers below only describe wire shapes for the schema; no view validates with them
(`spaces.api.parse_space_body` does). Importing this module, as `stello_project.urls` does,
annotates `SpaceViewSet` and registers the `X-API-Key` security scheme. The session API, which
reuses the shared pieces here (errors, path parameters), is documented in
`sessions_app/api/schema.py`.
"""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import serializers

from .api import SpaceViewSet
from .auth import HEADER

SECURITY_SCHEME = "ApiKeyAuth"
# Bodies are parsed as JSON whatever the Content-Type says; JSON is what clients should send.
JSON = "application/json"
TIMESTAMP_HELP = "UTC with milliseconds, like `2026-11-23T11:24:14.471Z`."
NUL_HELP = (
    "Strings anywhere in a request body must not contain NUL (`\\u0000`): such a body answers 400 "
    "`INVALID_JSON`."
)


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """`spaces.auth.ApiKeyAuthentication` is the `X-API-Key` header scheme."""

    target_class = "spaces.auth.ApiKeyAuthentication"
    name = SECURITY_SCHEME

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": HEADER}


# --- Errors: always {"error": message, "code": CODE}; one component per status ----------------

ERROR_CODES: dict[int, tuple[str, tuple[str, ...], str]] = {
    400: ("BadRequestError", ("INVALID_JSON", "INVALID_INPUT"),
          "Invalid JSON (`INVALID_JSON`, also for NUL characters) or invalid fields "
          "(`INVALID_INPUT`)."),
    401: ("UnauthorizedError", ("UNAUTHENTICATED",),
          'Missing (`"Missing API key"`) or unknown/revoked (`"Invalid API key"`) `X-API-Key`.'),
    403: ("ForbiddenError", ("FORBIDDEN",), "The space belongs to another user."),
    404: ("NotFoundError", ("NOT_FOUND", "SPACE_NOT_FOUND", "SESSION_NOT_FOUND"),
          "Unknown space (`NOT_FOUND`, `\"Space not found\"`) or a session that is not in this "
          "space (`SESSION_NOT_FOUND`). Malformed ids are simply unknown."),
    409: ("ConflictError", ("SESSION_ARCHIVED", "SESSION_BUSY"),
          "The session is archived (`SESSION_ARCHIVED`), or busy: it could not be had within "
          "`STELLO_SESSION_LOCK_TIMEOUT_SECONDS` (`SESSION_BUSY`)."),
    413: ("PayloadTooLargeError", ("PAYLOAD_TOO_LARGE",),
          "The body is larger than `STELLO_MAX_BODY_BYTES`."),
    429: ("RateLimitedError", ("RATE_LIMITED",),
          "Too many requests for this API key (only when `STELLO_RATE_LIMIT` is set); see "
          "`Retry-After`."),
    502: ("BadGatewayError", ("LLM_ERROR", "TOOL_LOOP_LIMIT"),
          "The LLM failed (`LLM_ERROR`, the message is the provider's) or kept calling tools "
          "past `STELLO_MAX_TOOL_ROUNDS` (`TOOL_LOOP_LIMIT`)."),
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
    (bad key) and 429 (rate limit), so those two are always included."""
    wanted = sorted({401, 429, *statuses})
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


# --- Space -------------------------------------------------------------------------------------

class SpaceSerializer(serializers.Serializer):
    """A space: one agent with one session tree, owned by one user."""

    id = serializers.UUIDField()
    userId = serializers.CharField(help_text="The owner's user id.")
    label = serializers.CharField()
    systemPrompt = serializers.CharField(allow_null=True)
    consolidatePrompt = serializers.CharField(allow_null=True)
    integratePrompt = serializers.CharField(allow_null=True)
    config = serializers.DictField(help_text="Free-form JSON object.")
    createdAt = serializers.DateTimeField(help_text=TIMESTAMP_HELP)
    updatedAt = serializers.DateTimeField(help_text=TIMESTAMP_HELP)


def _prompt_field(what: str) -> serializers.CharField:
    return serializers.CharField(
        required=False, allow_null=True, allow_blank=True,
        help_text=f"The space's {what}; `null` clears it.",
    )


class SpaceCreateSerializer(serializers.Serializer):
    """A new space. Unknown keys are ignored."""

    label = serializers.CharField(help_text="Non-empty.")
    systemPrompt = _prompt_field("system prompt, also written to the main session")
    consolidatePrompt = _prompt_field("consolidation prompt")
    integratePrompt = _prompt_field("integration prompt")
    config = serializers.DictField(required=False, help_text="Free-form JSON object.")


class SpaceUpdateSerializer(SpaceCreateSerializer):
    """Any of the creation keys; absent keys are left alone, a `null` prompt clears it."""

    label = serializers.CharField(required=False, help_text="Non-empty when given.")


SPACE_EXAMPLE = OpenApiExample(
    "A research space",
    value={"label": "Research", "systemPrompt": "You are a careful researcher.",
           "config": {"team": "blue"}},
    request_only=True,
)

extend_schema_view(
    list=extend_schema(
        operation_id="listSpaces",
        summary="List your spaces",
        description="The caller's spaces, oldest first.",
        tags=["spaces"],
        responses={200: OpenApiResponse(SpaceSerializer(many=True), "Your spaces."),
                   **error_responses()},
        parameters=RESPONSE_HEADERS,
    ),
    create=extend_schema(
        operation_id="createSpace",
        summary="Create a space",
        description="Creates the space and its main session (which receives the system prompt). "
                    + NUL_HELP,
        tags=["spaces"],
        request={JSON: SpaceCreateSerializer},
        responses={201: OpenApiResponse(SpaceSerializer, "The new space."),
                   **error_responses(400, 413)},
        parameters=RESPONSE_HEADERS,
        examples=[SPACE_EXAMPLE],
    ),
    retrieve=extend_schema(
        operation_id="getSpace",
        summary="Get a space",
        tags=["spaces"],
        responses={200: OpenApiResponse(SpaceSerializer, "The space."),
                   **error_responses(403, 404)},
        parameters=[SPACE_ID, *RESPONSE_HEADERS],
    ),
    partial_update=extend_schema(
        operation_id="updateSpace",
        summary="Update a space",
        description="Changes only the given keys; a system prompt change is synced to the main "
                    "session. The space is checked (404/403) before the body (400). " + NUL_HELP,
        tags=["spaces"],
        request={JSON: SpaceUpdateSerializer},
        responses={200: OpenApiResponse(SpaceSerializer, "The updated space."),
                   **error_responses(400, 403, 404, 413)},
        parameters=[SPACE_ID, *RESPONSE_HEADERS],
        examples=[OpenApiExample("Clear the system prompt", value={"systemPrompt": None},
                                 request_only=True)],
    ),
    destroy=extend_schema(
        operation_id="deleteSpace",
        summary="Delete a space",
        description="Deletes the space with its sessions, records and data.",
        tags=["spaces"],
        responses={204: OpenApiResponse(description="Deleted; no body."),
                   **error_responses(403, 404)},
        parameters=[SPACE_ID, *RESPONSE_HEADERS],
    ),
)(SpaceViewSet)
