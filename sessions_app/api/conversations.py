"""Conversations as data over REST: message pages, session edits and deletion, the flat session
listing, message edits (edit the last user message, regenerate, delete) and their bodies.

`ConversationActions` is mixed into `SessionViewSet`; the rules of each operation live in the
engine (`engine.editing`) and the stores. docs/conversations.md describes them for clients.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.response import Response

from spaces.errors import InvalidInput, required_text, wrong_type
from spaces.paging import MAX_LIMIT, make_cursor, parse_limit, read_cursor
from spaces.schema import JSON, NUL_HELP, SEGMENT_PATTERN, error_responses

from ..engine import editing
from ..runtime.pool import runtimes
from ..store.common import SERVER_METADATA_KEYS
from ..wire import session_meta_json
from .schema import SESSION_PARAMETERS, SPACE_PARAMETERS
from .serializers import (
    NOT_BLANK_PATTERN,
    MessageSerializer,
    SessionMetaSerializer,
    TurnResponseSerializer,
)

DEFAULT_LIMIT = 50
MAX_TAGS, MAX_TAG_LENGTH = 32, 64
MAX_QUERY_TEXT = 200

LOCKED = ("Runs under the session's lock: it waits for a running turn (409 `SESSION_BUSY` "
          "when the lock cannot be had in time) and never interleaves with one.")

# -- query parameters -----------------------------------------------------------------------

LIMIT_SCHEMA = {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}
LIMIT = OpenApiParameter(
    "limit", LIMIT_SCHEMA, OpenApiParameter.QUERY, required=False,
    description=f"Page size, 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT} when paging). Giving "
                "`limit`, `before` or `after` answers a page object instead of the plain list.",
)
BEFORE = OpenApiParameter(
    "before", str, OpenApiParameter.QUERY, required=False,
    description="A `nextCursor` from a page read backwards: the messages just before it.",
)
AFTER = OpenApiParameter(
    "after", str, OpenApiParameter.QUERY, required=False,
    description="A `nextCursor` from a page read forwards: the messages just after it.",
)
DIRECTION = OpenApiParameter(
    "direction", str, OpenApiParameter.QUERY, required=False, enum=["backward", "forward"],
    description="Without a cursor: `backward` (default) starts at the newest messages, "
                "`forward` at the oldest.",
)
CURSOR = OpenApiParameter(
    "cursor", str, OpenApiParameter.QUERY, required=False,
    description="The `nextCursor` of the previous page.",
)
MESSAGE_ID = OpenApiParameter(
    "message_id", str, OpenApiParameter.PATH, pattern=SEGMENT_PATTERN,
    description="A message's `id` (from the message list). A message of another session, or "
                "any other value, answers 404.",
)
SESSION_FILTERS = [
    OpenApiParameter("status", str, OpenApiParameter.QUERY, required=False,
                     enum=["active", "archived"], description="Only sessions in this status."),
    OpenApiParameter("tag", str, OpenApiParameter.QUERY, required=False,
                     description="Only sessions with this tag."),
    OpenApiParameter("q", {"type": "string", "maxLength": MAX_QUERY_TEXT},
                     OpenApiParameter.QUERY, required=False,
                     description="Only sessions whose label contains this text (any case)."),
    OpenApiParameter("updatedSince", {"type": "string", "format": "date-time"},
                     OpenApiParameter.QUERY, required=False,
                     description="Only sessions updated at or after this time (ISO 8601 with "
                                 "an offset)."),
]

MESSAGE_PAGE = inline_serializer("MessagePage", {
    "messages": MessageSerializer(many=True),
    "nextCursor": serializers.CharField(
        allow_null=True, help_text="Where the next page in the same direction starts; null "
                                   "when nothing lies beyond (forward: nothing yet)."),
})
SESSION_PAGE = inline_serializer("SessionPage", {
    "sessions": SessionMetaSerializer(many=True),
    "nextCursor": serializers.CharField(allow_null=True),
})
DELETED_SESSIONS = inline_serializer("DeletedSessions", {
    "deleted": serializers.ListField(child=serializers.UUIDField()),
})
DELETED_MESSAGES = inline_serializer("DeletedMessages", {
    "deleted": serializers.ListField(child=serializers.IntegerField()),
})
MESSAGES_OR_PAGE = PolymorphicProxySerializer(
    component_name="MessagesOrPage",
    serializers=[MessageSerializer(many=True), MESSAGE_PAGE],
    resource_type_field_name=None,
    many=False,
)
MESSAGE_PAGING = [LIMIT, BEFORE, AFTER, DIRECTION]


class SessionPatchSerializer(serializers.Serializer):
    """Documents the PATCH body; `parse_session_patch` validates it."""

    label = serializers.RegexField(NOT_BLANK_PATTERN, required=False,
                                   help_text="Must contain a non-whitespace character.")
    tags = serializers.ListField(
        child=serializers.CharField(min_length=1, max_length=MAX_TAG_LENGTH),
        max_length=MAX_TAGS, required=False, help_text="Duplicates are dropped.")
    metadata = serializers.DictField(required=False, help_text=(
        "Replaces your metadata keys; the server's own keys (" + ", ".join(SERVER_METADATA_KEYS)
        + ") keep their values whatever the body says."))
    scope = serializers.CharField(required=False, allow_null=True, allow_blank=True)


class MessageEditSerializer(serializers.Serializer):
    content = serializers.CharField(help_text="The new text of the last user message.")


# -- validation -----------------------------------------------------------------------------

PATCHABLE = ("label", "tags", "metadata", "scope")


def parse_session_patch(data: Any) -> dict[str, Any]:
    """The fields to change; other keys are ignored, like the fork's options."""
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object")
    changes: dict[str, Any] = {}
    if "label" in data:
        changes["label"] = required_text(data, "label", strip=True)
    if "scope" in data:
        if data["scope"] is not None and not isinstance(data["scope"], str):
            raise wrong_type("scope", "a string or null")
        changes["scope"] = data["scope"]
    if "tags" in data:
        tags = data["tags"]
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise wrong_type("tags", "a list of strings")
        if any(not 1 <= len(t) <= MAX_TAG_LENGTH for t in tags):
            raise InvalidInput(f"each tag must have 1 to {MAX_TAG_LENGTH} characters")
        tags = list(dict.fromkeys(tags))
        if len(tags) > MAX_TAGS:
            raise InvalidInput(f"at most {MAX_TAGS} tags")
        changes["tags"] = tags
    if "metadata" in data:
        metadata = data["metadata"]
        if not isinstance(metadata, dict):
            raise wrong_type("metadata", "an object")
        changes["metadata"] = {k: v for k, v in metadata.items()
                               if k not in SERVER_METADATA_KEYS}
    return changes


def parse_message_id(value: Any) -> int:
    text = str(value)
    if not text.isdigit() or len(text) > 18:
        raise editing.MessageNotFound()
    return int(text)


def _query_time(params: Any, name: str) -> datetime | None:
    value = params.get(name)
    if value is None:
        return None
    try:
        parsed = parse_datetime(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise InvalidInput(f"{name} must be an ISO 8601 time with a UTC offset")
    try:
        # In UTC: PostgreSQL refuses offsets beyond 15:59 that ISO 8601 allows (up to 23:59).
        return parsed.astimezone(UTC)
    except OverflowError:
        raise InvalidInput(f"{name} is out of range") from None


def _page_limit(params: Any) -> int:
    return parse_limit(params["limit"]) if "limit" in params else DEFAULT_LIMIT


# -- the actions ----------------------------------------------------------------------------

class ConversationActions:
    """Mixed into SessionViewSet (which provides `store()`, `aagent()`, `one_call_loop`)."""

    async def message_page(self, request, session_id: str) -> Response:
        params = request.query_params
        if "before" in params and "after" in params:
            raise InvalidInput("give before or after, not both")
        direction = params.get("direction", "backward")
        if direction not in ("backward", "forward"):
            raise InvalidInput('direction must be "backward" or "forward"')
        limit = _page_limit(params)
        scope = session_id.lower()
        before = after = None
        if "before" in params:
            before = read_cursor(params["before"], "messages", scope)
        elif "after" in params:
            after = read_cursor(params["after"], "messages", scope)
        elif direction == "forward":
            after = 0
        if not all(isinstance(k, int) for k in (before, after) if k is not None):
            raise InvalidInput("Invalid cursor")
        page, more = await self.store().message_page(session_id, limit=limit, before=before,
                                                     after=after)
        forward = after is not None
        if forward:  # a forward page can always be continued later (new messages)
            last = page[-1]["id"] if page else after
            cursor = make_cursor("messages", scope, last)
        elif more and page:
            cursor = make_cursor("messages", scope, page[0]["id"])
        else:
            cursor = None
        return Response({"messages": page, "nextCursor": cursor})

    @extend_schema(
        operation_id="updateSession",
        summary="Edit a session",
        description="Changes the given fields among `label`, `tags`, `metadata` (your keys; the "
                    "server's own are kept) and `scope`; other keys are ignored. Archived "
                    f"sessions may be edited too. {NUL_HELP}",
        tags=["sessions"],
        request={JSON: SessionPatchSerializer},
        responses={200: OpenApiResponse(SessionMetaSerializer, "The edited session."),
                   **error_responses(400, 403, 404, 413)},
        parameters=SESSION_PARAMETERS,
        examples=[OpenApiExample("Rename and tag", value={"label": "Sources",
                                                          "tags": ["research"]},
                                 request_only=True)],
    )
    async def partial_update(self, request, space_id: str, session_id: str) -> Response:
        changes = parse_session_patch(request.data)
        return Response(session_meta_json(await self.store().update_session(session_id,
                                                                             changes)))

    @extend_schema(
        operation_id="deleteSession",
        summary="Delete a session and its subtree",
        description="Deletes a child session together with every session forked under it, "
                    "with their messages and data; the rows are gone. The main session answers "
                    f"409 `MAIN_SESSION_NOT_DELETABLE`. {LOCKED}",
        tags=["sessions"],
        request=None,
        responses={200: OpenApiResponse(DELETED_SESSIONS,
                                        "The deleted sessions' ids, this one first."),
                   **error_responses(403, 404, 409)},
        parameters=SESSION_PARAMETERS,
    )
    async def destroy(self, request, space_id: str, session_id: str) -> Response:
        agent = await self.aagent()
        async with agent.locks.hold(session_id):
            deleted = await self.store().delete_session(session_id)
        for sid in deleted:
            agent._histories.forget(sid)
        return Response({"deleted": deleted})

    @extend_schema(
        operation_id="listSessionsFlat",
        summary="The space's sessions as a flat, filtered list",
        description="Every session of the space, most recently updated first, in pages. A "
                    "session updated while you page moves to the front and may be seen again.",
        tags=["sessions"],
        responses={200: OpenApiResponse(SESSION_PAGE, "One page."),
                   **error_responses(400, 403, 404)},
        parameters=[*SPACE_PARAMETERS, LIMIT, CURSOR, *SESSION_FILTERS],
    )
    @action(detail=False, methods=["get"])
    async def flat(self, request, space_id: str) -> Response:
        params = request.query_params
        status = params.get("status")
        if status is not None and status not in ("active", "archived"):
            raise InvalidInput('status must be "active" or "archived"')
        text = params.get("q")
        if text is not None and len(text) > MAX_QUERY_TEXT:
            raise InvalidInput(f"q must have at most {MAX_QUERY_TEXT} characters")
        key = None
        if "cursor" in params:
            key = read_cursor(params["cursor"], "sessions", str(self.space_id))
            at = parse_datetime(key[0]) if isinstance(key, list) and len(key) == 2 else None
            if at is None:
                raise InvalidInput("Invalid cursor")
            key = (at, key[1])
        limit = _page_limit(params)
        metas, more = await self.store().list_sessions(
            limit=limit, after=key, status=status, tag=params.get("tag"), text=text,
            updated_since=_query_time(params, "updatedSince"))
        cursor = None
        if more and metas:
            last = metas[-1]
            cursor = make_cursor("sessions", str(self.space_id),
                                 [last.updated_at.isoformat(), last.id])
        sessions = [session_meta_json(m) | {"parentId": m.parent_id} for m in metas]
        return Response({"sessions": sessions, "nextCursor": cursor})

    @extend_schema(
        operation_id="regenerateReply",
        summary="Regenerate the last reply",
        description="Runs the session's last turn again with the same user message: the old "
                    "turn (its user message and everything after it) is replaced by the new one "
                    "once the model has answered its first call, so a model failure changes "
                    "nothing. An archived session answers 409 `SESSION_ARCHIVED`, a session "
                    f"without a turn 409 `NOTHING_TO_REGENERATE`. No request body. {LOCKED}",
        tags=["sessions"],
        request=None,
        responses={200: OpenApiResponse(TurnResponseSerializer, "The new EngineTurnResult."),
                   **error_responses(403, 404, 409, 502)},
        parameters=SESSION_PARAMETERS,
    )
    @action(detail=True, methods=["post"])
    async def regenerate(self, request, space_id: str, session_id: str) -> Response:
        return await self._rerun(session_id)

    async def _rerun(self, session_id: str, **edit: Any) -> Response:
        agent = await self.aagent()
        runtime = runtimes.current(one_call=self.one_call_loop)
        result = await runtime.run_detached(editing.rerun_last_turn(agent, session_id, **edit))
        return Response(result.to_json())

    @extend_schema(
        methods=["PUT"],
        operation_id="editMessage",
        summary="Edit the last user message and run the turn again",
        description="Only the session's last user message can be edited (another message: 409 "
                    "`MESSAGE_NOT_EDITABLE`). Its turn is replaced like `regenerate` does, "
                    f"with the new text. {LOCKED} {NUL_HELP}",
        tags=["sessions"],
        request={JSON: MessageEditSerializer},
        responses={200: OpenApiResponse(TurnResponseSerializer, "The new EngineTurnResult."),
                   **error_responses(400, 403, 404, 409, 413, 502)},
        parameters=[*SESSION_PARAMETERS, MESSAGE_ID],
    )
    @extend_schema(
        methods=["DELETE"],
        operation_id="deleteMessage",
        summary="Delete a message",
        description="Deletes the message, or the whole tool-call group it belongs to (the "
                    "assistant message with tool calls and their results). Later messages stay; "
                    "`turnCount` is unchanged. An archived session answers 409. No request "
                    f"body. {LOCKED}",
        tags=["sessions"],
        request=None,
        responses={200: OpenApiResponse(DELETED_MESSAGES, "The deleted message ids."),
                   **error_responses(403, 404, 409)},
        parameters=[*SESSION_PARAMETERS, MESSAGE_ID],
    )
    @action(detail=True, methods=["put", "delete"],
            url_path=r"messages/(?P<message_id>[^/]+)")
    async def message(self, request, space_id: str, session_id: str,
                      message_id: str) -> Response:
        record_id = parse_message_id(message_id)
        if request.method == "DELETE":
            agent = await self.aagent()
            ids = await editing.delete_message(agent, session_id, record_id)
            return Response({"deleted": ids})
        data = request.data
        if not isinstance(data, dict):
            raise InvalidInput("the body must be a JSON object")
        text = required_text(data, "content")
        return await self._rerun(session_id, text=text, message_id=record_id)
