"""Write paths for spaces. The REST API and the admin both go through these."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone
from psycopg.types.json import Jsonb

from . import pgpool
from .models import Space
from .selectors import SPACE_COLUMNS, space_owners
from .signals import space_created, space_deleted, space_rows, space_updated

EDITABLE_FIELDS = ("label", "system_prompt", "consolidate_prompt", "integrate_prompt", "config")


@transaction.atomic
def space_create(
    *,
    owner: AbstractBaseUser,
    label: str,
    system_prompt: str | None = None,
    consolidate_prompt: str | None = None,
    integrate_prompt: str | None = None,
    config: dict[str, Any] | None = None,
) -> Space:
    """Create a space and (through `space_created`) its root session, in one transaction."""
    space = Space(
        owner=owner,
        label=label,
        system_prompt=system_prompt,
        consolidate_prompt=consolidate_prompt,
        integrate_prompt=integrate_prompt,
        config=config or {},
    )
    space.clean_fields(exclude=["owner", "id"])
    space.save(force_insert=True)
    space_created.send(sender=Space, space=space)
    return space


@transaction.atomic
def space_update(*, space: Space, changes: dict[str, Any]) -> Space:
    """Apply `changes` (a subset of EDITABLE_FIELDS) and bump updated_at, in one transaction.
    A `system_prompt` change is synced to the root session; None clears both."""
    unknown = set(changes) - set(EDITABLE_FIELDS)
    if unknown:
        raise ValueError(f"not editable: {', '.join(sorted(unknown))}")
    for field, value in changes.items():
        setattr(space, field, value)
    space.clean_fields(exclude=["owner", "id"])
    space.save()
    space_updated.send(sender=Space, space=space, changed=set(changes))
    return space


@transaction.atomic
def space_delete(*, space: Space) -> None:
    """Delete a space and everything under it (the database cascades)."""
    space_id = str(space.id)
    space.delete()
    space_deleted.send(sender=Space, space_id=space_id)
    transaction.on_commit(lambda: space_owners.discard(space_id))


_INSERT_SPACE = (
    f"INSERT INTO spaces ({', '.join(SPACE_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(SPACE_COLUMNS))})"
)


async def aspace_create(
    *,
    owner_id: int,
    label: str,
    system_prompt: str | None = None,
    consolidate_prompt: str | None = None,
    integrate_prompt: str | None = None,
    config: dict[str, Any] | None = None,
) -> Space:
    """Async twin of `space_create`. On PostgreSQL: ONE statement on the event loop (the space
    and, through `space_rows`, its root session, as data-modifying CTEs: one round trip, and
    all or nothing), committed with other writes that wait meanwhile; on the embedded SQLite
    default: `space_create` in one thread hop."""
    if not pgpool.enabled():
        from django.contrib.auth import get_user_model

        owner = get_user_model()(pk=owner_id)
        return await sync_to_async(space_create)(
            owner=owner, label=label, system_prompt=system_prompt,
            consolidate_prompt=consolidate_prompt, integrate_prompt=integrate_prompt,
            config=config,
        )
    now = timezone.now()
    space = Space(owner_id=owner_id, label=label, system_prompt=system_prompt,
                  consolidate_prompt=consolidate_prompt, integrate_prompt=integrate_prompt,
                  config=config or {}, created_at=now, updated_at=now)
    space.clean_fields(exclude=["owner", "id"])
    statements: list[tuple[str, list[Any]]] = [(_INSERT_SPACE, [
        space.id, owner_id, space.label, space.system_prompt, space.consolidate_prompt,
        space.integrate_prompt, Jsonb(space.config), now, now,
    ])]
    for _, rows in space_rows.send(sender=Space, space=space):
        statements.extend(rows)
    parts = ", ".join(f"part{n} AS ({sql})" for n, (sql, _) in enumerate(statements))
    # Committed with the other writes that wait meanwhile (`pgpool.GroupCommit`).
    await pgpool.group_commit(f"WITH {parts} SELECT 1",
                              [value for _, params in statements for value in params])
    space._state.adding = False  # saved: as if the ORM had loaded it (see space_from_row)
    space._state.db = "default"
    return space
