"""OpenAPI pieces of the session REST API, and the schema hooks (drf-spectacular).

The operations are documented on the viewset actions themselves (`sessions_app.api.views`),
with the serializers of `sessions_app.api.serializers`. Here: the path parameters, the texts of
the five slot routes (one action factory serves them all), and the hooks named in
`SPECTACULAR_SETTINGS`:

- `preprocess_endpoints` documents each `/spaces` route once, without its optional trailing
  slash (both are routed);
- `postprocess_schema` adds `/healthz` and `/readyz`, plain Django views outside DRF.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema

from spaces.schema import (
    JSON,
    NUL_HELP,
    RESPONSE_HEADERS,
    SEGMENT_PATTERN,
    SPACE_ID,
    error_responses,
)

from ..models import SessionData
from .serializers import PromptSlotSerializer, SlotContentSerializer, SlotPutSerializer

Key = SessionData.Key

SESSION_ID = OpenApiParameter(
    "session_id", str, OpenApiParameter.PATH, pattern=SEGMENT_PATTERN,
    description="The session's id (a UUID). A session of another space, or any other value "
                "(a malformed id included), answers 404.",
)
SPACE_PARAMETERS = [SPACE_ID, *RESPONSE_HEADERS]
SESSION_PARAMETERS = [SPACE_ID, SESSION_ID, *RESPONSE_HEADERS]


class SessionSchema(AutoSchema):
    """The session viewset's `list` action answers the tree: one root object, not an array."""

    def _is_list_view(self, serializer: Any = None) -> bool:
        return getattr(self.view, "action", None) != "list" and super()._is_list_view(serializer)


# --- Slots -------------------------------------------------------------------------------------

SLOTS: dict[str, tuple[str, str]] = {
    Key.SYSTEM_PROMPT: ("SystemPrompt", "the session's system prompt"),
    Key.CONSOLIDATE_PROMPT: ("ConsolidatePrompt",
                             "the session's consolidation prompt (over the space's and the "
                             "default one)"),
    Key.INTEGRATE_PROMPT: ("IntegratePrompt",
                           "the session's integration prompt (used on the main session)"),
    Key.MEMORY: ("Memory", "the session's L2 memory (the synthesis, on the main session); "
                           "written by consolidation and integration, and by operators "
                           "correcting it (the next consolidation builds on it)"),
    Key.INSIGHT: ("Insight", "the insight integration gave this child (the child's next turn "
                             "reads it once)"),
}
PROMPT_SLOTS = (Key.CONSOLIDATE_PROMPT, Key.INTEGRATE_PROMPT)
EFFECTIVE = OpenApiParameter(
    "effective", bool, OpenApiParameter.QUERY, required=False,
    description="`true`: answer the prompt the next consolidation (integration) would use, "
                "with its `source`: this session's slot (the main session's, for integration), "
                "else the space's prompt, else the built-in default.",
)



@dataclass(frozen=True)
class SlotDoc:
    key: str
    writable: bool


def slot_schema(doc: SlotDoc):
    """The `@extend_schema` of one slot action: GET, and PUT when the slot is writable."""
    name, what = SLOTS[doc.key]
    short = what.split(" (")[0].split(";")[0]
    prompt = doc.key in PROMPT_SLOTS
    read = extend_schema(
        methods=["GET"],
        operation_id=f"get{name}",
        summary=f"Read {short}",
        description=f"Reads {what}; `null` when it was never written.",
        tags=["session data"],
        responses={200: OpenApiResponse(PromptSlotSerializer if prompt else SlotContentSerializer,
                                        "The slot's content."),
                   **error_responses(*((400,) if prompt else ()), 403, 404)},
        parameters=[*SESSION_PARAMETERS, *((EFFECTIVE,) if prompt else ())],
    )
    if not doc.writable:
        return read
    write = extend_schema(
        methods=["PUT"],
        operation_id=f"put{name}",
        summary=f"Replace {short}",
        description=f"Replaces {what}. An archived session is read-only: 409 "
                    f"`SESSION_ARCHIVED`. {NUL_HELP}",
        tags=["session data"],
        request={JSON: SlotPutSerializer},
        responses={200: OpenApiResponse(SlotContentSerializer, "The stored content."),
                   **error_responses(400, 403, 404, 409, 413)},
        parameters=SESSION_PARAMETERS,
    )
    return lambda view: write(read(view))


# --- Schema hooks (SPECTACULAR_SETTINGS) -------------------------------------------------------

def preprocess_endpoints(endpoints: list[tuple]) -> list[tuple]:
    """Document each `/spaces` (and `/usage`) route once, without its optional trailing
    slash."""
    kept: list[tuple] = []
    seen: set[tuple[str, str]] = set()
    for path, path_regex, method, callback in endpoints:
        if path.startswith(("/spaces", "/usage")) and path.endswith("/"):
            path = path.rstrip("/")
        if (path, method) in seen:
            continue
        seen.add((path, method))
        kept.append((path, path_regex, method, callback))
    return kept


_CHECK = {"type": "string", "description": '`"ok"`, or `"error: <reason>"`.'}
_READY_SCHEMA = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["ready", "unavailable"]},
        "checks": {
            "type": "object",
            "properties": {"database": _CHECK, "channelLayer": _CHECK, "llm": _CHECK},
            "required": ["database", "channelLayer", "llm"],
        },
    },
    "required": ["status", "checks"],
}

HEALTH_PATHS: dict[str, Any] = {
    "/healthz": {"get": {
        "operationId": "healthz",
        "summary": "Liveness",
        "description": "The process is alive. No authentication.",
        "tags": ["health"],
        "security": [],
        "responses": {"200": {
            "description": "Alive.",
            "content": {"application/json": {"schema": {
                "type": "object",
                "properties": {"status": {"type": "string", "enum": ["ok"]}},
                "required": ["status"],
            }}},
        }},
    }},
    "/readyz": {"get": {
        "operationId": "readyz",
        "summary": "Readiness",
        "description": "The database, the channel layer and the configured LLM endpoint are "
                       "reachable (the offline LLM always is). No authentication.",
        "tags": ["health"],
        "security": [],
        "responses": {
            "200": {"description": "Ready: every check is `ok`.",
                    "content": {"application/json": {"schema": _READY_SCHEMA}}},
            "503": {"description": "Unavailable: the failing checks say why.",
                    "content": {"application/json": {"schema": _READY_SCHEMA}}},
        },
    }},
}


def postprocess_schema(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    """Add the health endpoints, which are plain Django views that DRF does not see."""
    result["paths"] = {**HEALTH_PATHS, **result.get("paths", {})}
    return result
