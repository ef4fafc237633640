"""The Space REST API: validate the body, call a service or selector, render with `space_json`.

Creating and reading a space are hot paths: `aspace_create` and `aspace_for_user` stay on the
event loop on PostgreSQL. Listing, changing and deleting a space are cold paths that use the
ORM; each crosses to a worker thread ONCE, for its whole unit of work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response

from .listing import SPACE_PAGING, SPACES_OR_PAGE, spaces_page
from .paging import paging_requested
from .schema import JSON, NUL_HELP, RESPONSE_HEADERS, SPACE_ID, error_responses
from .selectors import aspace_for_user, aspace_id_for_user, space_for_user, spaces_of_user
from .serializers import (
    SPACE_CREATE,
    SPACE_UPDATE,
    SpaceCreateSerializer,
    SpaceSerializer,
    SpaceUpdateSerializer,
)
from .services import aspace_create, space_delete, space_update
from .viewsets import AsyncViewSet
from .wire import space_json

SPACE_EXAMPLE = OpenApiExample(
    "A research space",
    value={"label": "Research", "systemPrompt": "You are a careful researcher.",
           "config": {"team": "blue"}},
    request_only=True,
)


# Cold paths: the ORM, one thread hop per request for the whole unit of work.

def _spaces_json(*, user_id: int) -> list[dict[str, Any]]:
    return [space_json(s) for s in spaces_of_user(user_id=user_id)]


def _update_space(*, user_id: int, space_id: str, data: Callable[[], Any]) -> dict[str, Any]:
    space = space_for_user(user_id=user_id, space_id=space_id)  # 404/403 before the body's 400
    changes = SPACE_UPDATE.run_validation(data())  # parsed only now: a bad body is a 400 after
    return space_json(space_update(space=space, changes=changes))


def _delete_space(*, user_id: int, space_id: str) -> None:
    space_delete(space=space_for_user(user_id=user_id, space_id=space_id))


class SpaceViewSet(AsyncViewSet):
    lookup_url_kwarg = "space_id"

    async def acheck_target(self, request, *args, **kwargs) -> None:
        """The space must be the caller's (403/404) before a bad Idempotency-Key (400)."""
        if "space_id" in kwargs:
            await aspace_id_for_user(user_id=request.user.id, space_id=kwargs["space_id"])

    @extend_schema(
        operation_id="listSpaces",
        summary="List your spaces",
        description="The caller's spaces, oldest first. With `limit` or `cursor`: one page "
                    "`{spaces, nextCursor}`; a bad limit or cursor answers 400.",
        tags=["spaces"],
        responses={200: OpenApiResponse(SPACES_OR_PAGE, "Your spaces (or one page of them)."),
                   **error_responses(400)},
        parameters=[*RESPONSE_HEADERS, *SPACE_PAGING],
    )
    async def list(self, request) -> Response:
        if paging_requested(request.query_params, "cursor"):
            return Response(await sync_to_async(spaces_page)(user_id=request.user.id,
                                                             params=request.query_params))
        return Response(await sync_to_async(_spaces_json)(user_id=request.user.id))

    @extend_schema(
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
    )
    async def create(self, request) -> Response:
        fields = SPACE_CREATE.run_validation(request.data)
        space = await aspace_create(owner_id=request.user.id, **fields)
        return Response(space_json(space), status=status.HTTP_201_CREATED)

    @extend_schema(
        operation_id="getSpace",
        summary="Get a space",
        tags=["spaces"],
        responses={200: OpenApiResponse(SpaceSerializer, "The space."),
                   **error_responses(403, 404)},
        parameters=[SPACE_ID, *RESPONSE_HEADERS],
    )
    async def retrieve(self, request, space_id: str) -> Response:
        return Response(space_json(await aspace_for_user(user_id=request.user.id,
                                                         space_id=space_id)))

    @extend_schema(
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
    )
    async def partial_update(self, request, space_id: str) -> Response:
        return Response(await sync_to_async(_update_space)(
            user_id=request.user.id, space_id=space_id, data=lambda: request.data))

    @extend_schema(
        operation_id="deleteSpace",
        summary="Delete a space",
        description="Deletes the space with its sessions, records and data.",
        tags=["spaces"],
        responses={204: OpenApiResponse(description="Deleted; no body."),
                   **error_responses(403, 404)},
        parameters=[SPACE_ID, *RESPONSE_HEADERS],
    )
    async def destroy(self, request, space_id: str) -> Response:
        await sync_to_async(_delete_space)(user_id=request.user.id, space_id=space_id)
        return Response(status=status.HTTP_204_NO_CONTENT)
