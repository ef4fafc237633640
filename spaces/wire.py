"""JSON shapes of the wire contract (camelCase keys, millisecond UTC timestamps)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .models import Space


def iso_ms(value: datetime) -> str:
    """`2026-11-23T11:24:14.471Z`, like JavaScript's Date.toISOString()."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(timespec="milliseconds")[:-6] + "Z"  # without "+00:00"


def space_json(space: Space) -> dict[str, Any]:
    return {
        "id": str(space.id),
        "userId": str(space.owner_id),
        "label": space.label,
        "systemPrompt": space.system_prompt,
        "consolidatePrompt": space.consolidate_prompt,
        "integratePrompt": space.integrate_prompt,
        "config": space.config,
        "createdAt": iso_ms(space.created_at),
        "updatedAt": iso_ms(space.updated_at),
    }
