"""The REST read shapes built with the sync ORM, a query or two each: the reference that the
stores' async reads (`session_tree`, `session_messages`) are checked against in the tests, and
a plain way to read a space from a shell."""

from __future__ import annotations

from typing import Any

from spaces.selectors import parse_uuid
from spaces.wire import iso_ms

from .engine.errors import SessionNotFound
from .models import Record, Session, TopologyNode


def session_in_space(*, space_id, session_id) -> Session:
    pk = parse_uuid(session_id)
    session = (
        Session.objects.select_related("node").filter(pk=pk, space_id=space_id).first()
        if pk else None
    )
    if session is None:
        raise SessionNotFound()
    return session


def session_tree(*, space_id) -> dict[str, Any]:
    """The space's sessions as one recursive tree from the main session, siblings by index."""
    rows = (
        TopologyNode.objects.filter(space_id=space_id)
        .order_by("depth", "index")
        .values_list("session_id", "parent_id", "source_session_id", "session__label",
                     "session__status", "session__turn_count", "session__metadata")
    )
    nodes: dict[Any, dict[str, Any]] = {}
    root = None
    for sid, parent, source, label, status, turns, metadata in rows:
        node: dict[str, Any] = {"id": str(sid), "label": label, "status": status,
                                "turnCount": turns, "children": []}
        legacy = (metadata or {}).get("sourceSessionId")
        if source or isinstance(legacy, str):
            node["sourceSessionId"] = str(source) if source else legacy
        nodes[sid] = node
        if parent is None:
            root = node
        elif parent in nodes:
            nodes[parent]["children"].append(node)
    if root is None:
        raise SessionNotFound("Main session not found")
    return root


def message_json(record: Record) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": record.id,
        "role": record.role,
        "content": record.content,
        "timestamp": iso_ms(record.timestamp),
        "metadata": None,
    }
    if record.tool_calls:
        message["toolCalls"] = record.tool_calls
    if record.tool_call_id:
        message["toolCallId"] = record.tool_call_id
    return message


def session_messages(*, space_id, session_id) -> list[dict[str, Any]]:
    pk = parse_uuid(session_id)
    records = list(Record.objects.filter(session_id=pk, session__space_id=space_id)) if pk else []
    if not records:
        session_in_space(space_id=space_id, session_id=session_id)  # 404 unless it exists here
    return [message_json(r) for r in records]


