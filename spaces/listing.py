"""`GET /spaces` in pages: the caller's spaces oldest first, keyset-paged on (created_at, id).
A cold path like the plain list: the ORM, one thread hop for the whole page."""

from __future__ import annotations

from typing import Any

from django.db.models import Q
from django.utils.dateparse import parse_datetime

from .errors import InvalidInput
from .paging import make_cursor, parse_limit, read_cursor
from .selectors import parse_uuid, spaces_of_user
from .wire import space_json

DEFAULT_LIMIT = 50


def spaces_page(*, user_id: int, params: Any) -> dict[str, Any]:
    limit = parse_limit(params["limit"]) if "limit" in params else DEFAULT_LIMIT
    rows = spaces_of_user(user_id=user_id)
    if "cursor" in params:
        key = read_cursor(params["cursor"], "spaces", str(user_id))
        at = parse_datetime(key[0]) if isinstance(key, list) and len(key) == 2 else None
        pk = parse_uuid(key[1]) if at is not None else None
        if pk is None:
            raise InvalidInput("Invalid cursor")
        rows = rows.filter(Q(created_at__gt=at) | Q(created_at=at, id__gt=pk))
    page = list(rows[: limit + 1])
    cursor = None
    if len(page) > limit:
        last = page[limit - 1]
        cursor = make_cursor("spaces", str(user_id), [last.created_at.isoformat(), str(last.id)])
    return {"spaces": [space_json(s) for s in page[:limit]], "nextCursor": cursor}


# -- OpenAPI ------------------------------------------------------------------------------------

def _schema() -> tuple[Any, list[Any]]:
    from drf_spectacular.utils import (
        OpenApiParameter,
        PolymorphicProxySerializer,
        inline_serializer,
    )
    from rest_framework import serializers

    from .paging import MAX_LIMIT
    from .serializers import SpaceSerializer

    page = inline_serializer("SpacePage", {
        "spaces": SpaceSerializer(many=True),
        "nextCursor": serializers.CharField(allow_null=True),
    })
    either = PolymorphicProxySerializer(
        component_name="SpacesOrPage", serializers=[SpaceSerializer(many=True), page],
        resource_type_field_name=None, many=False)
    parameters = [
        OpenApiParameter("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                         OpenApiParameter.QUERY, required=False,
                         description=f"Page size, 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})."),
        OpenApiParameter("cursor", str, OpenApiParameter.QUERY, required=False,
                         description="The `nextCursor` of the previous page."),
    ]
    return either, parameters


SPACES_OR_PAGE, SPACE_PAGING = _schema()
