"""REST routes for a space's conversations as data: search, export, import and retention.

All are cold paths: each does its database work in worker-thread hops through the ORM (one
for a search or a retention read/write; one per batch for an export stream; one for a whole
import), never on the hot paths' pool.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.response import Response

from spaces.errors import InvalidInput
from spaces.schema import JSON, RESPONSE_HEADERS, error_responses
from spaces.serializers import SpaceSerializer
from spaces.viewsets import AsyncViewSet
from spaces.wire import space_json

from ..data_errors import ImportTooLarge
from ..models import RetentionPolicy
from ..portability import export_lines, import_space, max_import_bytes
from ..search import MAX_LIMIT, MAX_QUERY_CHARS, parse_query, search_space
from .schema import SPACE_PARAMETERS
from .views import SpaceScopedViewSet

NDJSON = "application/x-ndjson"
EXPORT_CHUNK_LINES = 500
MAX_DAYS = 100_000


class SearchHitSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["message", "memory", "insight"])
    sessionId = serializers.UUIDField()
    sessionLabel = serializers.CharField()
    messageId = serializers.IntegerField(required=False, help_text="Messages only: the "
                                         "record's id.")
    role = serializers.CharField(required=False, help_text="Messages only.")
    timestamp = serializers.CharField(required=False, help_text="Messages only.")
    updatedAt = serializers.CharField(required=False, help_text="Memories and insights only.")
    snippet = serializers.CharField(help_text="HTML-escaped text around the first match, each "
                                    "match wrapped in `<mark>`; `…` where it was cut.")


class SearchPageSerializer(serializers.Serializer):
    results = SearchHitSerializer(many=True)
    nextCursor = serializers.CharField(allow_null=True,
                                       help_text="Pass as `cursor` for the next page; null on "
                                                 "the last page.")


class RetentionSerializer(serializers.Serializer):
    archiveIdleDays = serializers.IntegerField(
        allow_null=True, required=False, min_value=1, max_value=MAX_DAYS,
        help_text="Archive child sessions idle this many days; null: never.")
    deleteArchivedDays = serializers.IntegerField(
        allow_null=True, required=False, min_value=1, max_value=MAX_DAYS,
        help_text="Delete sessions archived this many days ago; null: never.")


SEARCH_PARAMETERS = [
    OpenApiParameter("q", {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_CHARS},
                     required=True, description="The words to find (all of them, any case). "
                     "Operators and quotes are plain text; a query without a word finds "
                     "nothing."),
    OpenApiParameter("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                     description=f"Hits per page, 1-{MAX_LIMIT} (20)."),
    OpenApiParameter("cursor", str, description="`nextCursor` of the previous page."),
]


def _retention_json(policy: RetentionPolicy | None) -> dict[str, Any]:
    return {"archiveIdleDays": policy.archive_idle_days if policy else None,
            "deleteArchivedDays": policy.delete_archived_days if policy else None}


def _read_retention(space_id: str) -> dict[str, Any]:
    return _retention_json(RetentionPolicy.objects.filter(space_id=space_id).first())


def _write_retention(space_id: str, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidInput("Request body must be a JSON object")
    days = {}
    for key in ("archiveIdleDays", "deleteArchivedDays"):
        value = data.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or not 1 <= value <= MAX_DAYS):
            raise InvalidInput(f"{key} must be null or a number of days from 1 to {MAX_DAYS}")
        days[key] = value
    policy, _ = RetentionPolicy.objects.update_or_create(
        space_id=space_id, defaults={"archive_idle_days": days["archiveIdleDays"],
                                     "delete_archived_days": days["deleteArchivedDays"]})
    return _retention_json(policy)


async def _aexport(space_id: str) -> AsyncIterator[bytes]:
    lines = export_lines(space_id)

    def take() -> list[bytes]:
        return list(itertools.islice(lines, EXPORT_CHUNK_LINES))

    while chunk := await sync_to_async(take)():
        yield b"".join(chunk)


class SpaceDataViewSet(SpaceScopedViewSet):
    """`/spaces/{space_id}/search`, `/export` and `/retention`."""

    @extend_schema(
        operation_id="searchSpace",
        summary="Search a space",
        description="Full-text search over the space's messages and its sessions' memories and "
                    "insights. Memories and insights come first (newest first), then messages "
                    "(newest first). A cursor works only for the query and space it came from "
                    "(400 `INVALID_CURSOR`).",
        tags=["search and export"],
        responses={200: OpenApiResponse(SearchPageSerializer, "One page of hits."),
                   **error_responses(400, 403, 404)},
        parameters=[*SPACE_PARAMETERS, *SEARCH_PARAMETERS],
    )
    @action(detail=False, methods=["get"])
    async def search(self, request, space_id: str) -> Response:
        query = parse_query(self.space_id, request.query_params)
        return Response(await sync_to_async(search_space)(self.space_id, query))

    @extend_schema(
        operation_id="exportSpace",
        summary="Export a space as NDJSON",
        description="Streams the whole space (space, sessions with their tree, data slots, "
                    "core data, messages) as one JSON object per line, a format line first "
                    "and an `end` line with the counts last (a download cut short has no end "
                    "line). See docs/search-export.md.",
        tags=["search and export"],
        responses={(200, NDJSON): OpenApiResponse(OpenApiTypes.STR, "The NDJSON lines."),
                   **error_responses(403, 404)},
        parameters=SPACE_PARAMETERS,
    )
    @action(detail=False, methods=["get"])
    async def export(self, request, space_id: str):
        # A loop made for one call (the sync test client) is gone before the body is read:
        # such a caller gets a plain iterator, which Django reads in its own thread.
        body = export_lines(self.space_id) if self.one_call_loop else _aexport(self.space_id)
        response = StreamingHttpResponse(body, content_type=NDJSON)
        response["Content-Disposition"] = f'attachment; filename="space-{self.space_id}.ndjson"'
        return response

    @extend_schema(
        operation_id="getRetention",
        summary="A space's retention policy",
        tags=["retention"],
        responses={200: OpenApiResponse(RetentionSerializer, "The policy (nulls: keep)."),
                   **error_responses(403, 404)},
        parameters=SPACE_PARAMETERS,
        methods=["GET"],
    )
    @extend_schema(
        operation_id="setRetention",
        summary="Set a space's retention policy",
        description="Replaces the policy: a missing key is null (never). Applied by the "
                    "periodic sweep and by `manage.py sweepretention`.",
        tags=["retention"],
        request={JSON: RetentionSerializer},
        responses={200: OpenApiResponse(RetentionSerializer, "The policy."),
                   **error_responses(400, 403, 404, 413)},
        parameters=SPACE_PARAMETERS,
        methods=["PUT"],
    )
    @action(detail=False, methods=["get", "put"])
    async def retention(self, request, space_id: str) -> Response:
        if request.method == "PUT":
            return Response(await sync_to_async(_write_retention)(self.space_id, request.data))
        return Response(await sync_to_async(_read_retention)(self.space_id))


class SpaceImportViewSet(AsyncViewSet):
    """`POST /spaces/import`."""

    @extend_schema(
        operation_id="importSpace",
        summary="Import a space from an export",
        description="Creates a new space of the caller from an NDJSON export (body "
                    f"`{NDJSON}`): new ids, the original timestamps, all or nothing. A bad "
                    "file answers 400 `INVALID_IMPORT` naming the first bad line; one larger "
                    "than `STELLO_IMPORT_MAX_BYTES` answers 413.",
        tags=["search and export"],
        request={NDJSON: OpenApiTypes.BINARY},
        responses={201: OpenApiResponse(SpaceSerializer, "The new space."),
                   **error_responses(400, 413)},
        parameters=RESPONSE_HEADERS,
    )
    @action(detail=False, methods=["post"], url_path="import")
    async def import_(self, request) -> Response:
        length = request.META.get("CONTENT_LENGTH")
        limit = max_import_bytes()
        if length and length.isdigit() and int(length) > limit:
            raise ImportTooLarge(f"Import too large (limit {limit} bytes)")
        space = await sync_to_async(import_space)(request.user.id, request._request)
        return Response(space_json(space), status=status.HTTP_201_CREATED)
