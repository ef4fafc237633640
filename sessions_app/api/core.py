"""`/spaces/{space_id}/core[/{key}]`: the space's core memory (L1) over REST.

The collection: GET (the whole core, a JSON object), PUT (replace it), PATCH (set the keys
given; a null value removes a key), DELETE (empty it). One key: GET, PUT `{"value": ...}`,
DELETE. Size limits and key rules are the engine's (`engine.core`), so REST, the admin and the
agent's tools refuse the same things with the same messages.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.routers import Route

from spaces.schema import JSON, error_responses
from spaces.viewsets import ID_SEGMENT, OptionalSlashRouter

from ..engine.core import CoreMemory
from ..engine.errors import InvalidInput
from .schema import SPACE_PARAMETERS
from .views import SpaceScopedViewSet

KEY = OpenApiParameter("key", str, OpenApiParameter.PATH, pattern="^[^/]+$",
                       description="A core key: 1-200 letters, digits or `_ . : -` (a PUT "
                                   "of another key answers 400). A key that is not set, or "
                                   "a malformed one, answers 404 `CORE_KEY_NOT_FOUND`.")
KEY_PATTERN = "^[A-Za-z0-9_.:-]{1,200}$"
CORE_BODY = {"type": "object", "additionalProperties": {},
             "description": f"Core keys (each matching `{KEY_PATTERN}`) -> JSON values."}
VALUE_BODY = {"type": "object", "properties": {"value": {"description": "Any JSON value."}},
              "required": ["value"]}
CORE = OpenApiResponse(OpenApiTypes.OBJECT, "The whole core memory: key -> JSON value.")
VALUE = OpenApiResponse(OpenApiTypes.OBJECT, "`{\"key\": ..., \"value\": ...}`.")
LIMITS = ("Values and the whole core have size limits (`STELLO_CORE_MAX_VALUE_BYTES`, "
          "`STELLO_CORE_MAX_TOTAL_BYTES`): over them, 400 and nothing changes.")


def _object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidInput("Request body must be a JSON object")
    return data


class CoreViewSet(SpaceScopedViewSet):
    lookup_url_kwarg = "key"
    lookup_value_regex = ID_SEGMENT

    async def acore(self) -> CoreMemory:
        return (await self.aagent()).core()

    @extend_schema(operation_id="getCore", summary="The space's core memory", tags=["core memory"],
                   responses={200: CORE, **error_responses(403, 404)}, parameters=SPACE_PARAMETERS)
    async def list(self, request, space_id: str) -> Response:
        return Response(await (await self.acore()).read())

    @extend_schema(operation_id="replaceCore", summary="Replace the core memory",
                   description=f"The core becomes exactly the body's object. {LIMITS}",
                   tags=["core memory"], request={JSON: CORE_BODY},
                   responses={200: CORE, **error_responses(400, 403, 404, 413)},
                   parameters=SPACE_PARAMETERS)
    async def replace(self, request, space_id: str) -> Response:
        return Response(await (await self.acore()).replace(_object(request.data)))

    @extend_schema(operation_id="patchCore", summary="Change some core keys",
                   description=f"Sets each key of the body; a `null` value removes the key. "
                               f"{LIMITS}",
                   tags=["core memory"], request={JSON: CORE_BODY},
                   responses={200: CORE, **error_responses(400, 403, 404, 413)},
                   parameters=SPACE_PARAMETERS)
    async def merge(self, request, space_id: str) -> Response:
        return Response(await (await self.acore()).patch(_object(request.data)))

    @extend_schema(operation_id="clearCore", summary="Empty the core memory", request=None,
                   tags=["core memory"], responses={204: None, **error_responses(403, 404)},
                   parameters=SPACE_PARAMETERS)
    async def clear(self, request, space_id: str) -> Response:
        await (await self.acore()).clear()
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(operation_id="getCoreValue", summary="One core value", tags=["core memory"],
                   responses={200: VALUE, **error_responses(400, 403, 404)},
                   parameters=[*SPACE_PARAMETERS, KEY])
    async def retrieve(self, request, space_id: str, key: str) -> Response:
        return Response({"key": key, "value": await (await self.acore()).get(key)})

    @extend_schema(operation_id="putCoreValue", summary="Set one core value",
                   description=f'Body `{{"value": <any JSON>}}`. {LIMITS}',
                   tags=["core memory"], request={JSON: VALUE_BODY},
                   responses={200: VALUE, **error_responses(400, 403, 404, 413)},
                   parameters=[*SPACE_PARAMETERS, KEY])
    async def update(self, request, space_id: str, key: str) -> Response:
        body = _object(request.data)
        if "value" not in body:
            raise InvalidInput("value is required")
        value = await (await self.acore()).set(key, body["value"])
        return Response({"key": key, "value": value})

    @extend_schema(operation_id="deleteCoreValue", summary="Remove one core value", request=None,
                   tags=["core memory"], responses={204: None, **error_responses(400, 403, 404)},
                   parameters=[*SPACE_PARAMETERS, KEY])
    async def destroy(self, request, space_id: str, key: str) -> Response:
        await (await self.acore()).delete(key)
        return Response(status=status.HTTP_204_NO_CONTENT)


class CoreRouter(OptionalSlashRouter):
    """The collection route also answers PUT, PATCH and DELETE (the whole core)."""

    routes = [
        Route(url=r"^{prefix}{trailing_slash}$",
              mapping={"get": "list", "put": "replace", "patch": "merge", "delete": "clear"},
              name="{basename}-list", detail=False, initkwargs={"suffix": "List"}),
        Route(url=r"^{prefix}/{lookup}{trailing_slash}$",
              mapping={"get": "retrieve", "put": "update", "delete": "destroy"},
              name="{basename}-detail", detail=True, initkwargs={"suffix": "Instance"}),
    ]
