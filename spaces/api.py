"""The Space REST API: translate the request, call a service or selector, render the result."""

from __future__ import annotations

from typing import Any

from rest_framework import status, viewsets
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from .selectors import space_for_user, spaces_of_user
from .services import space_create, space_delete, space_update
from .wire import space_json

PROMPT_KEYS = {
    "systemPrompt": "system_prompt",
    "consolidatePrompt": "consolidate_prompt",
    "integratePrompt": "integrate_prompt",
}


def parse_space_body(data: Any, *, partial: bool) -> dict[str, Any]:
    """Validate a POST (partial=False) or PATCH body into model field changes."""
    if not isinstance(data, dict):
        raise ValidationError("Request body must be a JSON object")
    changes: dict[str, Any] = {}
    if not partial or "label" in data:
        label = data.get("label")
        if not isinstance(label, str) or not label:
            raise ValidationError("label is required")
        changes["label"] = label
    for key, field in PROMPT_KEYS.items():
        if key in data:
            value = data[key]
            if value is not None and not isinstance(value, str):
                raise ValidationError(f"{key} must be a string or null")
            changes[field] = value
    if "config" in data:
        if not isinstance(data["config"], dict):
            raise ValidationError("config must be an object")
        changes["config"] = data["config"]
    return changes


class SpaceViewSet(viewsets.ViewSet):
    lookup_url_kwarg = "space_id"

    def list(self, request):
        return Response([space_json(s) for s in spaces_of_user(user_id=request.user.id)])

    def create(self, request):
        changes = parse_space_body(request.data, partial=False)
        space = space_create(owner=request.user, **changes)
        return Response(space_json(space), status=status.HTTP_201_CREATED)

    def retrieve(self, request, space_id=None):
        return Response(space_json(space_for_user(user_id=request.user.id, space_id=space_id)))

    def partial_update(self, request, space_id=None):
        space = space_for_user(user_id=request.user.id, space_id=space_id)
        changes = parse_space_body(request.data, partial=True)
        return Response(space_json(space_update(space=space, changes=changes)))

    def destroy(self, request, space_id=None):
        space_delete(space=space_for_user(user_id=request.user.id, space_id=space_id))
        return Response(status=status.HTTP_204_NO_CONTENT)
