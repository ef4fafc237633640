"""OpenAPI documentation of the session REST API and the health endpoints (drf-spectacular).

The serializers below only describe wire shapes (`sessions_app.wire`, the selectors and the
engine's `to_json` methods build the real ones); no view validates with them. Importing this
module, as `stello_project.urls` does, annotates the views of `sessions_app.api.views`; the
schema hooks named in `SPECTACULAR_SETTINGS` live here too:

- `preprocess_endpoints` keeps the canonical paths (no trailing slash, which is also routed) and
  drops PUT from the read-only slots (memory, insight), which answer it with 405;
- `postprocess_schema` adds `/healthz` and `/readyz`, plain Django views outside DRF.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
)
from rest_framework import serializers

from spaces.schema import (
    JSON,
    NUL_HELP,
    RESPONSE_HEADERS,
    SEGMENT_PATTERN,
    SPACE_ID,
    TIMESTAMP_HELP,
    error_responses,
)

from ..models import SessionData
from . import views

Key = SessionData.Key

SESSION_ID = OpenApiParameter(
    "session_id", str, OpenApiParameter.PATH, pattern=SEGMENT_PATTERN,
    description="The session's id (a UUID). A session of another space, or any other value "
                "(a malformed id included), answers 404.",
)
SPACE_PARAMETERS = [SPACE_ID, *RESPONSE_HEADERS]
SESSION_PARAMETERS = [SPACE_ID, SESSION_ID, *RESPONSE_HEADERS]

# What `str.strip()` removes (`str.isspace`), written with escapes every regex dialect reads.
PY_WHITESPACE = (r"\u0009-\u000d\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029"
                 r"\u202f\u205f\u3000")
NOT_BLANK_PATTERN = f"[^{PY_WHITESPACE}]"


# --- Sessions ----------------------------------------------------------------------------------

class SessionMetaSerializer(serializers.Serializer):
    """SessionMeta: one session's state (no tree fields)."""

    id = serializers.UUIDField()
    label = serializers.CharField()
    role = serializers.ChoiceField(choices=["main", "standard"],
                                   help_text="`main` is the tree's root, one per space.")
    status = serializers.ChoiceField(choices=["active", "archived"])
    scope = serializers.CharField(allow_null=True)
    tags = serializers.ListField(child=serializers.CharField(allow_blank=True))
    metadata = serializers.DictField()
    turnCount = serializers.IntegerField(min_value=0)
    createdAt = serializers.DateTimeField(help_text=TIMESTAMP_HELP)
    updatedAt = serializers.DateTimeField(help_text=TIMESTAMP_HELP)
    lastActiveAt = serializers.DateTimeField(help_text=TIMESTAMP_HELP)


class ForkChildSerializer(SessionMetaSerializer):
    """A new child: its topology node and its SessionMeta in one object."""

    parentId = serializers.UUIDField(
        allow_null=True, help_text="Where the child hangs in the tree: the main session with "
                                   "`STELLO_FORK_STRATEGY=flat`, its source with `tree`.")
    children = serializers.ListField(child=serializers.UUIDField(),
                                     help_text="Always empty for a new child.")
    refs = serializers.ListField(child=serializers.UUIDField(),
                                 help_text="Always empty for a new child.")
    depth = serializers.IntegerField(min_value=0)
    index = serializers.IntegerField(min_value=0, help_text="Position among its siblings.")
    sourceSessionId = serializers.UUIDField(
        allow_null=True, help_text="The session it was forked from.")


class ArchivedSessionSerializer(SessionMetaSerializer):
    """The archived session's SessionMeta, plus its id once more as `sessionId`."""

    sessionId = serializers.UUIDField()


@extend_schema_field({"type": "array", "items": {"$ref": "#/components/schemas/SessionTreeNode"}})
class _TreeChildrenField(serializers.ListField):
    """The tree node's children: SessionTreeNode, recursively."""


class SessionTreeNodeSerializer(serializers.Serializer):
    """One node of the session tree; siblings are in index order."""

    id = serializers.UUIDField()
    label = serializers.CharField()
    status = serializers.ChoiceField(choices=["active", "archived"])
    turnCount = serializers.IntegerField(min_value=0)
    children = _TreeChildrenField()
    sourceSessionId = serializers.CharField(
        required=False, help_text="Present on forked sessions: the session it was forked from.")


class ToolCallSerializer(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField()
    input = serializers.DictField(help_text="The parsed JSON arguments.")


class MessageSerializer(serializers.Serializer):
    """One L3 record, oldest first."""

    role = serializers.ChoiceField(choices=["system", "user", "assistant", "tool"])
    content = serializers.CharField(allow_blank=True)
    timestamp = serializers.DateTimeField(help_text=TIMESTAMP_HELP)
    metadata = serializers.DictField(allow_null=True)
    toolCalls = ToolCallSerializer(
        many=True, required=False, help_text="Present when the assistant called tools.")
    toolCallId = serializers.CharField(
        required=False, help_text="Present on tool results: the call they answer.")


# --- Turn, fork, memory ------------------------------------------------------------------------

class TurnInputSerializer(serializers.Serializer):
    input = serializers.CharField(help_text="The user's message; non-empty.")


class EngineTurnResultSerializer(serializers.Serializer):
    finalContent = serializers.CharField(
        allow_null=True, allow_blank=True, help_text="The assistant's last text, if any.")
    toolRoundCount = serializers.IntegerField(min_value=0)
    toolCallsExecuted = serializers.IntegerField(min_value=0)
    rawResponse = serializers.CharField(
        allow_blank=True, help_text="JSON text of the last LLM call (content, toolCalls, usage).")


class TurnResponseSerializer(serializers.Serializer):
    turn = EngineTurnResultSerializer()


def _optional_text(help_text: str) -> serializers.CharField:
    return serializers.CharField(required=False, allow_null=True, allow_blank=True,
                                 help_text=help_text)


class ForkOptionsSerializer(serializers.Serializer):
    """Fork options; unknown keys are ignored."""

    label = serializers.RegexField(NOT_BLANK_PATTERN,
                                   help_text="Must contain a non-whitespace character.")
    scope = _optional_text("Free-form scope of the child.")
    systemPrompt = _optional_text("The child's system prompt; absent or null inherits "
                                  "the source's.")
    prompt = _optional_text("An opening assistant message for the child.")
    context = serializers.ChoiceField(
        choices=["none", "inherit"], required=False, allow_null=True,
        help_text="`inherit` copies the source's history; default `none`.")
    skills = serializers.ListField(
        child=serializers.CharField(allow_blank=True), required=False, allow_null=True,
        help_text="Skill whitelist of the child; absent or null keeps the source's.")


class ConsolidateResponseSerializer(serializers.Serializer):
    memory = serializers.CharField(allow_blank=True, help_text="The session's new L2 memory.")


class InsightSerializer(serializers.Serializer):
    sessionId = serializers.UUIDField()
    content = serializers.CharField(allow_blank=True)


class IntegrationResultSerializer(serializers.Serializer):
    synthesis = serializers.CharField(allow_blank=True,
                                      help_text="Stored as the main session's memory.")
    insights = InsightSerializer(many=True, help_text="One per active child that got one.")


class SlotContentSerializer(serializers.Serializer):
    content = serializers.CharField(allow_null=True, allow_blank=True,
                                    help_text="`null` when the slot was never written.")


class SlotPutSerializer(serializers.Serializer):
    content = serializers.CharField(allow_blank=True, help_text="A string (may be empty).")


# --- Annotations -------------------------------------------------------------------------------

LOCKED = ("Runs under the session's lock, one operation at a time across every server process; "
          "409 `SESSION_BUSY` when it cannot be had in time.")

extend_schema_view(get=extend_schema(
    operation_id="getSessionTree",
    summary="The session tree",
    description="The space's sessions as one recursive tree from the main session.",
    tags=["sessions"],
    responses={200: OpenApiResponse(SessionTreeNodeSerializer, "The main session, with its "
                                                             "descendants in `children`."),
               **error_responses(403, 404)},
    parameters=SPACE_PARAMETERS,
))(views.SessionTreeView)

extend_schema_view(get=extend_schema(
    operation_id="getSession",
    summary="A session's SessionMeta",
    tags=["sessions"],
    responses={200: OpenApiResponse(SessionMetaSerializer, "The session."),
               **error_responses(403, 404)},
    parameters=SESSION_PARAMETERS,
))(views.SessionDetailView)

extend_schema_view(get=extend_schema(
    operation_id="listMessages",
    summary="A session's messages",
    description="The session's raw history (L3 records), oldest first.",
    tags=["sessions"],
    responses={200: OpenApiResponse(MessageSerializer(many=True), "The records, oldest first."),
               **error_responses(403, 404)},
    parameters=SESSION_PARAMETERS,
))(views.SessionMessagesView)

extend_schema_view(post=extend_schema(
    operation_id="runTurn",
    summary="Run a turn",
    description="Sends `input` to the session and runs the tool loop to the final answer. "
                f"{LOCKED} An archived session answers 409 `SESSION_ARCHIVED`. {NUL_HELP}",
    tags=["sessions"],
    request={JSON: TurnInputSerializer},
    responses={200: OpenApiResponse(TurnResponseSerializer, "The EngineTurnResult."),
               **error_responses(400, 403, 404, 409, 413, 502)},
    parameters=SESSION_PARAMETERS,
    examples=[OpenApiExample("A question", value={"input": "What did we find?"},
                             request_only=True)],
))(views.TurnView)

extend_schema_view(post=extend_schema(
    operation_id="forkSession",
    summary="Fork a child session",
    description="Creates a child of the session (an archived source is allowed). The source is "
                f"locked while it is read. {NUL_HELP}",
    tags=["sessions"],
    request={JSON: ForkOptionsSerializer},
    responses={201: OpenApiResponse(ForkChildSerializer, "The new child."),
               **error_responses(400, 403, 404, 409, 413)},
    parameters=SESSION_PARAMETERS,
    examples=[OpenApiExample("A focused child",
                             value={"label": "Sources", "scope": "bibliography",
                                    "context": "inherit"},
                             request_only=True)],
))(views.ForkView)

extend_schema_view(post=extend_schema(
    operation_id="archiveSession",
    summary="Archive a session",
    description="Marks the session archived (again is harmless); a child's memory is then "
                f"consolidated in the background. No request body. {LOCKED}",
    tags=["sessions"],
    request=None,
    responses={200: OpenApiResponse(ArchivedSessionSerializer, "The archived session."),
               **error_responses(403, 404, 409)},
    parameters=SESSION_PARAMETERS,
))(views.ArchiveView)

extend_schema_view(post=extend_schema(
    operation_id="consolidateSession",
    summary="Consolidate a child's memory now",
    description="L3 -> L2 for a child (standard) session: the LLM distils the history into the "
                "session's memory. The main session answers 400 (it integrates), an archived "
                f"session 409 `SESSION_ARCHIVED`. No request body. {LOCKED}",
    tags=["memory"],
    request=None,
    responses={200: OpenApiResponse(ConsolidateResponseSerializer, "The new memory."),
               **error_responses(400, 403, 404, 409, 502)},
    parameters=SESSION_PARAMETERS,
))(views.ConsolidateView)

extend_schema_view(post=extend_schema(
    operation_id="integrateSpace",
    summary="Integrate the space now",
    description="All active children's memories -> the main session's synthesis plus one "
                "insight per child. An archived main session answers 409 `SESSION_ARCHIVED`. "
                f"No request body. {LOCKED}",
    tags=["memory"],
    request=None,
    responses={200: OpenApiResponse(IntegrationResultSerializer, "The synthesis and insights."),
               **error_responses(403, 404, 409, 502)},
    parameters=SPACE_PARAMETERS,
))(views.IntegrateView)


SLOTS: dict[str, tuple[str, str]] = {
    Key.SYSTEM_PROMPT: ("SystemPrompt", "the session's system prompt"),
    Key.CONSOLIDATE_PROMPT: ("ConsolidatePrompt",
                             "the session's consolidation prompt (over the space's and the "
                             "default one)"),
    Key.INTEGRATE_PROMPT: ("IntegratePrompt",
                           "the session's integration prompt (used on the main session)"),
    Key.MEMORY: ("Memory", "the session's L2 memory (the synthesis, on the main session); "
                           "written by consolidation and integration only"),
    Key.INSIGHT: ("Insight", "the insight integration gave this child; read-only"),
}


class SlotSchema(AutoSchema):
    """One `{"content": string|null}` data slot. The slot views are made by `views.slot_view`,
    one class per slot: the key (and whether PUT is allowed) comes from the view class."""

    def _slot(self) -> tuple[str, str]:
        return SLOTS[self.view.key]

    def get_operation_id(self) -> str:
        verb = "put" if self.method == "PUT" else "get"
        return f"{verb}{self._slot()[0]}"

    def get_summary(self) -> str:
        what = self._slot()[1].split(" (")[0].split(";")[0]
        return f"{'Replace' if self.method == 'PUT' else 'Read'} {what}"

    def get_description(self) -> str:
        if self.method == "PUT":
            return f"Replaces {self._slot()[1]}. {NUL_HELP}"
        return f"Reads {self._slot()[1]}; `null` when it was never written."

    def get_tags(self) -> list[str]:
        return ["session data"]

    def get_override_parameters(self) -> list[Any]:
        return SESSION_PARAMETERS

    def get_request_serializer(self) -> Any:
        return {JSON: SlotPutSerializer} if self.method == "PUT" else None

    def get_response_serializers(self) -> Any:
        if self.method == "PUT":
            return {200: OpenApiResponse(SlotContentSerializer, "The stored content."),
                    **error_responses(400, 403, 404, 413)}
        return {200: OpenApiResponse(SlotContentSerializer, "The slot's content."),
                **error_responses(403, 404)}


views.SlotView.schema = SlotSchema()


# --- Schema hooks (SPECTACULAR_SETTINGS) -------------------------------------------------------

def _serves(view_class: Any, method: str) -> bool:
    """Whether the view answers `method` (read-only slot views refuse PUT with 405)."""
    if view_class is None:
        return True
    if method.lower() not in getattr(view_class, "http_method_names", [method.lower()]):
        return False
    return not (method == "PUT" and getattr(view_class, "writable", True) is False)


def preprocess_endpoints(endpoints: list[tuple]) -> list[tuple]:
    """Document each `/spaces` route once, without its optional trailing slash, and leave PUT out
    of the read-only slot views (it answers 405 there)."""
    kept: list[tuple] = []
    seen: set[tuple[str, str]] = set()
    for path, path_regex, method, callback in endpoints:
        if path.startswith("/spaces") and path.endswith("/"):
            path = path.rstrip("/")
        if not _serves(getattr(callback, "cls", None), method):
            continue
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
