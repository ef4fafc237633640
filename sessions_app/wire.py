"""JSON shapes of sessions on the wire, shared by REST and WebSocket (they must be equal)."""

from __future__ import annotations

from typing import Any

from spaces.wire import iso_ms

from .engine.types import Bootstrap, SessionMeta


def session_meta_json(meta: SessionMeta) -> dict[str, Any]:
    """SessionMeta: every field the original server's clients may read, from both its
    documented SessionMeta and what it actually sent (no tree fields)."""
    return {
        "id": meta.id,
        "label": meta.label,
        "role": meta.role,
        "status": meta.status,
        "scope": meta.scope,
        "tags": list(meta.tags),
        "metadata": dict(meta.metadata),
        "turnCount": meta.turn_count,
        "createdAt": iso_ms(meta.created_at),
        "updatedAt": iso_ms(meta.updated_at),
        "lastActiveAt": iso_ms(meta.last_active_at),
    }


def fork_child_json(meta: SessionMeta) -> dict[str, Any]:
    """A fork's result: the child's TopologyNode and its SessionMeta in one object."""
    return {
        "id": meta.id,
        "parentId": meta.parent_id,
        "children": [],
        # Cross-branch references between sessions; nothing in the API creates them (the
        # fork's source is `sourceSessionId`), so a new child has none.
        "refs": [],
        "depth": meta.depth,
        "index": meta.index,
        "label": meta.label,
        "sourceSessionId": meta.source_session_id,
        **session_meta_json(meta),
    }


def archive_json(meta: SessionMeta) -> dict[str, Any]:
    return {"sessionId": meta.id, **session_meta_json(meta)}


def bootstrap_json(bootstrap: Bootstrap) -> dict[str, Any]:
    return {
        "context": {
            "core": dict(bootstrap.core),
            "memories": list(bootstrap.memories),
            "currentMemory": bootstrap.current_memory,
            "scope": bootstrap.scope,
        },
        "session": session_meta_json(bootstrap.session),
    }
