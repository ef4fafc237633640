"""Read paths for spaces, with the ownership rule: existence first (404), then owner (403)."""

from __future__ import annotations

import uuid

from . import pgpool
from .apikeys import LookupCache
from .errors import Forbidden, SpaceNotFound
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
        raise SpaceNotFound()
    if space.owner_id != user_id:
        raise Forbidden()
    return space


def spaces_of_user(*, user_id: int):
    return Space.objects.filter(owner_id=user_id).order_by("created_at", "id")


SPACE_COLUMNS = ("id", "user_id", "label", "system_prompt", "consolidate_prompt",
                 "integrate_prompt", "config", "created_at", "updated_at")
_SELECT_SPACE = f"SELECT {', '.join(SPACE_COLUMNS)} FROM spaces WHERE id = %s"


def space_from_row(row) -> Space:
    """A Space instance from a `SPACE_COLUMNS` row of the async path (as if the ORM loaded it)."""
    space = Space(**{("owner_id" if c == "user_id" else c): v for c, v in zip(SPACE_COLUMNS, row,
                                                                            strict=True)})
    space._state.adding = False
    space._state.db = "default"
    return space


async def aspace_for_user(*, user_id: int, space_id: object) -> Space:
    """Async twin of `space_for_user`: one round trip on PostgreSQL (no thread hop); one hop to
    the ORM on the embedded SQLite default."""
    parsed = parse_uuid(space_id)
    if parsed is None:
        raise SpaceNotFound()
    if not pgpool.enabled():
        space = await Space.objects.filter(pk=parsed).afirst()
    else:
        row = await pgpool.fetchone(_SELECT_SPACE, (parsed,))
        space = space_from_row(row) if row else None
    if space is None:
        raise SpaceNotFound()
    if space.owner_id != user_id:
        raise Forbidden()
    return space


# The owner of each space this process has checked recently (space id -> owner id), for as long
# as API keys are cached: an owner never changes through the API, and a deleted space is dropped
# here at once by its own process (`space_deleted`), within the TTL by the others (their
# session routes then find no session: 404 all the same).
space_owners: LookupCache[int] = LookupCache()


async def aspace_id_for_user(*, user_id: int, space_id: object) -> str:
    """The id of a space `user_id` owns, with the rules of `aspace_for_user` (404 / 403), for
    the routes under a space that need only to know it is the caller's: a cache hit costs no
    round trip."""
    parsed = parse_uuid(space_id)
    key = str(parsed) if parsed else ""
    owner = space_owners.get(key) if parsed else None
    if owner is None:
        space = await aspace_for_user(user_id=user_id, space_id=space_id)
        space_owners.put(key, space.owner_id)
        owner = space.owner_id
    if owner != user_id:
        raise Forbidden()
    return key
