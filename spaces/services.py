"""Write paths for spaces. The REST API and the admin both go through these."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from .models import Space
from .signals import space_created, space_deleted, space_updated

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
