"""Read paths for spaces, with the ownership rule: existence first (404), then owner (403)."""

from __future__ import annotations

import uuid

from rest_framework.exceptions import NotFound, PermissionDenied

from .models import Space


def parse_uuid(value: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def space_for_user(*, user_id: int, space_id: object) -> Space:
    """The space if `user_id` owns it; 404 `Space not found` / 403 `Forbidden` otherwise.
    A malformed id is simply not found."""
    parsed = parse_uuid(space_id)
    space = Space.objects.filter(pk=parsed).first() if parsed else None
    if space is None:
        raise NotFound("Space not found")
    if space.owner_id != user_id:
        raise PermissionDenied("Forbidden")
    return space


def spaces_of_user(*, user_id: int):
    return Space.objects.filter(owner_id=user_id).order_by("created_at", "id")
