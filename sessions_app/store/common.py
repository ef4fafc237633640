"""What both stores share: values stored alike on every database, and the JSON shapes they build
from rows (the REST tree and message list), so the ORM and the SQL paths cannot drift apart."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson

from spaces.wire import iso_ms

from ..engine.errors import SessionNotFound
from ..engine.turn import ABANDONED
from ..engine.types import (
    CompressionCache,
    EventPage,
    LogEvent,
    Message,
    ToolCall,
    TurnInfo,
    packed,
)

TurnListener = Callable[[str, str, int], None]  # (space_id, session_id, turn_count), after commit

# Slot keys (the values of models.SessionData.Key, spelled out so the SQL store needs no model).
SYSTEM_PROMPT = "system_prompt"
MEMORY = "memory"
INSIGHT = "insight"
SESSION_CONFIG = "session_config"
COMPRESSION = "compression"
CONSOLIDATE_PROMPT = "consolidate_prompt"


def storable(value: Any) -> Any:
    """PostgreSQL text and jsonb cannot hold NUL: what the LLM or a tool produced keeps
    everything else, with each NUL replaced by U+FFFD, on every database alike."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    return value


def parse_uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def stored_tool_calls(message: Message) -> list[dict[str, Any]] | None:
    """The `records.tool_calls` value of a message (None when it calls no tool)."""
    return storable([c.to_json() for c in message.tool_calls]) or None


def message_from_row(
    role: str, content: str, tool_calls: list[dict[str, Any]] | None, tool_call_id: str | None
) -> Message:
    return Message(
        role=role,  # type: ignore[arg-type]
        content=content,
        tool_calls=tuple(
            ToolCall(id=c["id"], name=c["name"], input=c.get("input") or {})
            for c in tool_calls or ()
        ),
        tool_call_id=tool_call_id or None,
    )


def json_object(text: str | None) -> dict[str, Any]:
    """A slot's JSON object; {} when it is missing, malformed or not an object."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def skills_of(config_text: str | None) -> tuple[str, ...] | None:
    skills = json_object(config_text).get("skills")
    return tuple(skills) if isinstance(skills, list) else None


def compression_of(text: str | None) -> CompressionCache | None:
    cache = json_object(text)
    return CompressionCache(**cache) if cache else None


def compression_text(cache: CompressionCache) -> str:
    return json.dumps({"covered": cache.covered, "digest": cache.digest, "summary": cache.summary})


def session_config_text(config: Mapping[str, Any]) -> str:
    return json.dumps(storable(dict(config)))


def fork_metadata(source: str, from_message: int | None) -> dict[str, Any]:
    """A fork's `metadata`: its source session and, for a branch from a message, that record."""
    metadata: dict[str, Any] = {"sourceSessionId": source}
    if from_message is not None:
        metadata["sourceMessageId"] = from_message
    return metadata


# Keys of `sessions.metadata` the server writes; PATCH keeps them whatever the body says.
SERVER_METADATA_KEYS = ("sourceSessionId", "sourceMessageId")


def source_id(node_source: Any, metadata: Mapping[str, Any] | None) -> str | None:
    """The fork source: the topology's, else the legacy `metadata.sourceSessionId`."""
    if node_source:
        return str(node_source)
    legacy = (metadata or {}).get("sourceSessionId")
    return legacy if isinstance(legacy, str) else None


# -- REST shapes ----------------------------------------------------------------------------

TreeRow = tuple[Any, Any, Any, str, str, int, Mapping[str, Any] | None]


def session_tree_from_rows(rows: Iterable[TreeRow]) -> dict[str, Any]:
    """The space's sessions as one recursive tree from the main session, siblings by index.
    `rows`: (session_id, parent_id, source_session_id, label, status, turn_count, metadata),
    ordered by depth, then index."""
    nodes: dict[str, dict[str, Any]] = {}
    root = None
    for sid, parent, source, label, status, turns, metadata in rows:
        sid = str(sid)  # the PostgreSQL store reads ids as text already: str() returns them
        node: dict[str, Any] = {"id": sid, "label": label, "status": status,
                                "turnCount": turns, "children": []}
        source_session = source_id(source, metadata)
        if source_session is not None:
            node["sourceSessionId"] = source_session
        nodes[sid] = node
        if parent is None:
            root = node
        elif (parent_node := nodes.get(str(parent))) is not None:
            parent_node["children"].append(node)
    if root is None:
        raise SessionNotFound("Main session not found")
    return root


def message_json(
    role: str,
    content: str,
    timestamp: datetime,
    tool_calls: Any,
    tool_call_id: str | None,
    record_id: int | None = None,
) -> dict[str, Any]:
    """One record as the REST message list shows it (`metadata` is part of the shape clients
    know; records carry none). `id` is the record's id: what `fromMessage`, the message edits
    and the paging cursors refer to."""
    message: dict[str, Any] = {} if record_id is None else {"id": record_id}
    message |= {
        "role": role,
        "content": content,
        "timestamp": iso_ms(timestamp),
        "metadata": None,
    }
    if tool_calls:
        message["toolCalls"] = tool_calls
    if tool_call_id:
        message["toolCallId"] = tool_call_id
    return message


# -- turns and the event log ------------------------------------------------------------------

ABANDONED_ERROR = ABANDONED


def event_retention() -> int:
    """Log entries kept per session (STELLO_EVENT_RETENTION; 0 keeps everything)."""
    from django.conf import settings

    return int(settings.STELLO.get("EVENT_RETENTION", 0) or 0)


def prune_to(event_seq: int) -> int:
    """Rows whose events are all numbered up to this are dropped at the end of a turn (0:
    none). Both stores test `last_seq` (a packed row the line cuts through stays whole) and
    `seq` too, which `last_seq` implies but which the (session, seq) index can range over."""
    keep = event_retention()
    return max(event_seq - keep, 0) if keep > 0 else 0


def compact(sql: str) -> str:
    """`sql` without its indentation: psycopg parses a statement's placeholders once and caches
    the result only for statements up to 4 KiB (the test of the hot path's statements holds
    them there)."""
    return "\n".join(line.strip() for line in sql.splitlines() if line.strip())


def json_text(value: Any) -> str:
    """Compact JSON text: orjson (several times faster; this runs for every save), or the
    standard encoder for what orjson refuses (integers beyond 64 bits)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def storable_json(value: Any) -> str:
    """`value` made `storable`, as JSON text. Walked only when the text shows a NUL may be
    inside (JSON spells one `\\u0000`; a false alarm, a backslash before `u0000`, only costs
    the walk): the walk is most of the cost otherwise."""
    text = json_text(value)
    return json_text(storable(value)) if "\\u0000" in text else text


def json_rows(rows: list[dict[str, Any]]) -> str:
    """Rows for PostgreSQL's `json_to_recordset`, as ONE text parameter: psycopg sends a string
    for a fraction of the cost of dumping a parallel array per column."""
    return storable_json(rows)


def event_rows(events: Sequence[LogEvent]) -> dict[str, str]:
    """The `events` parameter of the statements that write log entries (packed: one row)."""
    return {"events": json_rows([
        {"seq": e.seq, "last_seq": e.end, "type": e.type, "payload": dict(e.payload)}
        for e in packed(events)])}


def record_rows(messages: Iterable[Message]) -> dict[str, str]:
    """The `records` parameter of the statements that append records (in history order)."""
    return {"records": json_rows([
        {"role": m.role, "content": m.content,
         "calls": [c.to_json() for c in m.tool_calls] or None,
         "call_id": m.tool_call_id} for m in messages])}


def turn_info(tid: Any, sid: Any, status: str, input: str, result: Any, error: str | None,
              created_at: datetime, updated_at: datetime) -> TurnInfo:
    return TurnInfo(id=str(tid), session_id=str(sid), status=status,  # type: ignore[arg-type]
                    input=input, result=result, error=error, created_at=created_at,
                    updated_at=updated_at)


def event_page(current: int, first: int, entries: Iterable[Any], since: int) -> EventPage:
    """The page of single events after `since` from stored entries (seq, last_seq, type,
    payload), coalesced deltas expanded."""
    events: list[LogEvent] = []
    for seq, last_seq, type_, payload in entries:
        for event in LogEvent(seq, type_, payload or {}, last_seq).expand():
            if event.seq > since:
                events.append(event)
    return EventPage(tuple(events), current, first)
