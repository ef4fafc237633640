"""`GET /usage` (the caller's own usage) and `GET /spaces/{id}/usage` (one of their spaces).

Cold paths: one hop to the ORM, which sums a few rows of the daily rollup."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.response import Response

from spaces.schema import RESPONSE_HEADERS, error_responses
from spaces.viewsets import AsyncViewSet

from ..api.schema import SPACE_PARAMETERS, SessionSchema
from ..api.views import SpaceScopedViewSet
from .selectors import parse_usage_query, usage_report
from .serializers import UsageReportSerializer

QUERY_PARAMETERS = [
    OpenApiParameter("from", OpenApiTypes.DATE, OpenApiParameter.QUERY, required=False,
                     description="First day (YYYY-MM-DD, UTC); default: 29 days before `to`."),
    OpenApiParameter("to", OpenApiTypes.DATE, OpenApiParameter.QUERY, required=False,
                     description="Last day, included (YYYY-MM-DD, UTC); default: today."),
    OpenApiParameter("groupBy", str, OpenApiParameter.QUERY, required=False,
                     enum=["day", "session", "model", "key"],
                     description="Also report each day, session, model or API key apart."),
]
DESCRIPTION = ("Tokens, calls, time and cost of the LLM calls charged to you: turns, streams, "
               "history compression and background memory work. A bad `from`, `to` or "
               "`groupBy`, `from` after `to`, or a range of ten years or more answers 400 "
               "`INVALID_INPUT`.")


class UsageViewSet(AsyncViewSet):
    schema = SessionSchema()  # `list` answers one report object, not an array
    @extend_schema(
        operation_id="getUsage", summary="Your usage", description=DESCRIPTION,
        tags=["usage"], parameters=[*QUERY_PARAMETERS, *RESPONSE_HEADERS],
        responses={200: OpenApiResponse(UsageReportSerializer, "Your usage."),
                   **error_responses(400)},
    )
    async def list(self, request) -> Response:
        query = parse_usage_query(request.query_params)
        return Response(await sync_to_async(usage_report)(user_id=request.user.id, query=query))


class SpaceUsageViewSet(SpaceScopedViewSet):
    schema = SessionSchema()
    @extend_schema(
        operation_id="getSpaceUsage", summary="A space's usage",
        description=DESCRIPTION + " Another user's space answers 403, an unknown one 404.",
        tags=["usage"], parameters=[*QUERY_PARAMETERS, *SPACE_PARAMETERS],
        responses={200: OpenApiResponse(UsageReportSerializer, "The space's usage."),
                   **error_responses(400, 403, 404)},
    )
    async def list(self, request, space_id: str) -> Response:
        query = parse_usage_query(request.query_params)
        return Response(await sync_to_async(usage_report)(
            user_id=request.user.id, query=query, space_id=self.space_id))
