"""A whole space as NDJSON, out (`export_lines`) and back in as a new space (`import_space`).

The format (version 1), one JSON object a line, in this order:

    {"format": "stello-space", "version": 1}
    {"type": "space", ...}                   the space (its prompts, config, retention policy)
    {"type": "session", ...}                 every session with its place in the tree, parents
                                             before children, the main session first
    {"type": "slot", ...}                    the sessions' data slots (prompts, memory, insight…)
    {"type": "core", ...}                    the space's core data (L1)
    {"type": "message", ...}                 every record (L3), session by session (in the
                                             order of the session lines), oldest first
    {"type": "end", "counts": {...}}         how many of each came before: a file cut short
                                             has no end line, and is refused

Ids in the file only tie its lines together: an import gives everything new ids and keeps the
timestamps. What a session's memory covers is written as a number of its messages, not as a
record id, so it survives the new ids.

Export reads in keyset batches (`BATCH` rows a query), so its memory does not grow with the
space. Import runs in one transaction: the first bad line (malformed, too long, too deep, of an
unknown version, referring to a session the file has not defined...) stops it with its line
number, and nothing of the file is left behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F

from spaces import safejson
from spaces.models import Space

from .data_errors import ImportRefused, ImportTooLarge
from .models import CoreData, Record, RetentionPolicy, Session, SessionData, TopologyNode

FORMAT = "stello-space"
VERSION = 1
BATCH = 1000


def timestamp(value: datetime) -> str:
    """Full precision, UTC, so an export of an import equals the first export."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _line(obj: dict[str, Any]) -> bytes:
    return safejson.dumps(obj) + b"\n"


# -- export -----------------------------------------------------------------------------------

def export_lines(space_id: str) -> Iterator[bytes]:
    """The NDJSON lines of a space (which must exist), lazily."""
    space = Space.objects.get(pk=space_id)
    policy = RetentionPolicy.objects.filter(space=space).first()
    yield _line({"format": FORMAT, "version": VERSION})
    yield _line({
        "type": "space", "id": str(space.id), "label": space.label,
        "systemPrompt": space.system_prompt, "consolidatePrompt": space.consolidate_prompt,
        "integratePrompt": space.integrate_prompt, "config": space.config,
        "retention": None if policy is None else {
            "archiveIdleDays": policy.archive_idle_days,
            "deleteArchivedDays": policy.delete_archived_days},
        "createdAt": timestamp(space.created_at), "updatedAt": timestamp(space.updated_at),
    })
    counts = {"sessions": 0, "slots": 0, "core": 0, "messages": 0}
    covered = dict(
        Record.objects.filter(session__space=space, id__lte=F("session__memory_covered_up_to"))
        .values_list("session").annotate(n=Count("id")).values_list("session", "n"))
    order = {}
    sessions = (Session.objects.filter(space=space).select_related("node")
                .order_by("node__depth", "node__index", "created_at", "id"))
    for s in sessions.iterator(chunk_size=BATCH):
        node = getattr(s, "node", None)
        order[s.id] = len(order)
        counts["sessions"] += 1
        yield _line({
            "type": "session", "id": str(s.id),
            "parentId": str(node.parent_id) if node and node.parent_id else None,
            "sourceSessionId": str(node.source_session_id)
            if node and node.source_session_id else None,
            "index": node.index if node else 0, "nodeLabel": node.label if node else s.label,
            "label": s.label, "role": s.role, "status": s.status, "scope": s.scope,
            "metadata": s.metadata, "turnCount": s.turn_count,
            "memoryCoveredMessages": covered.get(s.id, 0),
            "createdAt": timestamp(s.created_at), "updatedAt": timestamp(s.updated_at),
            "lastActiveAt": timestamp(s.last_active_at),
        })
    slots = sorted(SessionData.objects.filter(session__space=space)
                   .values_list("session_id", "key", "id"),
                   key=lambda row: (order[row[0]], row[1]))
    for start in range(0, len(slots), BATCH):
        ids = [row[2] for row in slots[start:start + BATCH]]
        by_id = SessionData.objects.in_bulk(ids)
        for slot_id in ids:
            d = by_id[slot_id]
            counts["slots"] += 1
            yield _line({"type": "slot", "session": str(d.session_id), "key": d.key,
                         "content": d.content, "updatedAt": timestamp(d.updated_at)})
    for path, value in CoreData.objects.filter(space=space).order_by("path").values_list(
            "path", "value"):
        counts["core"] += 1
        yield _line({"type": "core", "path": path, "value": value})
    # Session by session (each a range of the (session, id) index), oldest first in each.
    for session_id in order:
        after = 0
        while True:
            batch = list(Record.objects.filter(session_id=session_id, id__gt=after)
                         .order_by("id").values_list("id", "role", "content", "tool_calls",
                                                     "tool_call_id", "timestamp")[:BATCH])
            for _, role, content, tool_calls, tool_call_id, ts in batch:
                counts["messages"] += 1
                yield _line({"type": "message", "session": str(session_id), "role": role,
                             "content": content, "toolCalls": tool_calls,
                             "toolCallId": tool_call_id, "timestamp": timestamp(ts)})
            if len(batch) < BATCH:
                break
            after = batch[-1][0]
    yield _line({"type": "end", "counts": counts})


# -- import -----------------------------------------------------------------------------------

ROLES = {c.value for c in Record.Role}
SLOT_KEYS = {c.value for c in SessionData.Key}
STATUSES = {c.value for c in Session.Status}
SESSION_ROLES = {c.value for c in Session.Role}


def max_import_bytes() -> int:
    return settings.STELLO["IMPORT_MAX_BYTES"]


def max_line_bytes() -> int:
    return settings.STELLO["IMPORT_MAX_LINE_BYTES"]


@dataclass
class _Imported:
    session: Session
    node: TopologyNode
    source: str | None
    line: int
    times: tuple[datetime, datetime, datetime]
    covered: int
    records: int = 0
    covered_id: int = 0


@dataclass
class _State:
    owner_id: int
    space: Space | None = None
    space_times: tuple[datetime, datetime] | None = None
    retention: dict[str, Any] | None = None
    sessions: dict[str, _Imported] = field(default_factory=dict)
    siblings: set[tuple[str, int]] = field(default_factory=set)
    slots: list[tuple[SessionData, datetime]] = field(default_factory=list)
    slot_keys: set[tuple[str, str]] = field(default_factory=set)
    core_paths: set[str] = field(default_factory=set)
    pending: list[tuple[Record, _Imported]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {
        "sessions": 0, "slots": 0, "core": 0, "messages": 0})
    ended: bool = False


class _Line:
    """Typed access to one parsed line; every complaint names the line."""

    def __init__(self, number: int, obj: dict[str, Any]) -> None:
        self.number = number
        self.obj = obj

    def refuse(self, message: str) -> ImportRefused:
        return ImportRefused(message, line=self.number)

    def get(self, key: str, kind: type | tuple[type, ...], *, null: bool = False) -> Any:
        if key not in self.obj:
            raise self.refuse(f"{key} is required")
        value = self.obj[key]
        if value is None and null:
            return None
        if not isinstance(value, kind) or isinstance(value, bool) and bool not in (
                kind if isinstance(kind, tuple) else (kind,)):
            raise self.refuse(f"{key} has the wrong type")
        return value

    def text(self, key: str, *, null: bool = False, empty: bool = True) -> str | None:
        value = self.get(key, str, null=null)
        if value is not None and not empty and not value:
            raise self.refuse(f"{key} must not be empty")
        return value

    def count(self, key: str) -> int:
        value = self.get(key, int)
        if not 0 <= value <= 2**31 - 1:
            raise self.refuse(f"{key} is out of range")
        return value

    def time(self, key: str) -> datetime:
        raw = self.get(key, str)
        try:
            value = datetime.fromisoformat(raw)
            # In UTC, as the database keeps it: year 1 at -05:00 has no UTC year.
            return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
        except (ValueError, OverflowError):
            raise self.refuse(f"{key} is not an ISO 8601 timestamp") from None

    def session(self, key: str, state: _State, *, null: bool = False) -> _Imported | None:
        ref = self.text(key, null=null)
        if ref is None:
            return None
        imported = state.sessions.get(ref)
        if imported is None:
            raise self.refuse(f"{key} {ref[:64]!r} is not a session defined earlier in the file")
        return imported


def _read_lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    limit, line_limit = max_import_bytes(), max_line_bytes()
    total = 0
    number = 0
    while True:
        raw = stream.readline(line_limit + 2)
        if not raw:
            return
        number += 1
        total += len(raw)
        if total > limit:
            raise ImportTooLarge(f"Import too large (limit {limit} bytes)")
        if len(raw.rstrip(b"\r\n")) > line_limit:
            raise ImportRefused(f"longer than {line_limit} bytes", line=number)
        yield number, raw


def import_space(owner_id: int, stream: IO[bytes]) -> Space:
    """A new space of `owner_id` from an export, all or nothing (ImportRefused /
    ImportTooLarge name what is wrong; nothing is left behind)."""
    with transaction.atomic():
        state = _State(owner_id)
        for number, raw in _read_lines(stream):
            if state.ended:
                raise ImportRefused("nothing may follow the end line", line=number)
            if not raw.strip():
                raise ImportRefused("empty line", line=number)
            try:
                obj = safejson.loads(raw)
            except safejson.JSONRejected as exc:
                raise ImportRefused(exc.message, line=number) from None
            if not isinstance(obj, dict):
                raise ImportRefused("each line must be a JSON object", line=number)
            _take(state, _Line(number, obj))
        if state.space is None:
            raise ImportRefused("the file is empty")
        if not state.ended:
            raise ImportRefused("the file is cut short: it has no end line")
        _finish(state)
        return state.space


def _take(state: _State, line: _Line) -> None:
    if line.number == 1:
        if line.obj.get("format") != FORMAT:
            raise line.refuse(f"not a {FORMAT} export (no format header)")
        if line.obj.get("version") != VERSION:
            raise line.refuse(f"unsupported version {str(line.obj.get('version'))[:20]!r} "
                              f"(this server reads version {VERSION})")
        return
    kind = line.obj.get("type")
    if line.number == 2 and kind != "space":
        raise line.refuse("the second line must be the space")
    handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
    if handler is None:
        raise line.refuse(f"unknown line type {str(kind)[:40]!r}")
    if kind == "space" and state.space is not None:
        raise line.refuse("a second space")
    handler(state, line)


def _space(state: _State, line: _Line) -> None:
    config = line.get("config", dict)
    retention = line.get("retention", dict, null=True)
    if retention is not None:
        state.retention = {
            key: _days(line, retention, name)
            for key, name in (("archive_idle_days", "archiveIdleDays"),
                              ("delete_archived_days", "deleteArchivedDays"))}
    space = Space(owner_id=state.owner_id, label=line.text("label", empty=False),
                  system_prompt=line.text("systemPrompt", null=True),
                  consolidate_prompt=line.text("consolidatePrompt", null=True),
                  integrate_prompt=line.text("integratePrompt", null=True), config=config)
    state.space_times = (line.time("createdAt"), line.time("updatedAt"))
    space.save(force_insert=True)
    state.space = space


def _days(line: _Line, retention: dict[str, Any], name: str) -> int | None:
    value = retention.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100_000:
        raise line.refuse(f"retention.{name} must be null or a number of days (1-100000)")
    return value


def _session(state: _State, line: _Line) -> None:
    if state.counts["slots"] or state.counts["core"] or state.counts["messages"]:
        raise line.refuse("sessions must come before slots, core data and messages")
    ref = line.text("id", empty=False)
    if ref in state.sessions:
        raise line.refuse("a session with this id was defined earlier")
    role = line.text("role")
    if role not in SESSION_ROLES:
        raise line.refuse("role must be main or standard")
    status = line.text("status")
    if status not in STATUSES:
        raise line.refuse("status must be active or archived")
    parent = line.session("parentId", state, null=True)
    if (role == "main") != (parent is None):
        raise line.refuse("the main session, and only it, has no parent")
    if role == "main" and state.sessions:
        raise line.refuse("the main session must be the first session")
    if role != "main" and not state.sessions:
        raise line.refuse("the first session must be the main session")
    if status == "archived" and role == "main":
        raise line.refuse("the main session cannot be archived")
    index = line.count("index")
    if parent is not None:
        sibling = (str(parent.session.id), index)
        if sibling in state.siblings:
            raise line.refuse("two children of one parent have the same index")
        state.siblings.add(sibling)
    source = line.text("sourceSessionId", null=True)
    label = line.text("label")
    session = Session(space=state.space, label=label, role=role, status=status,
                      scope=line.text("scope", null=True),
                      metadata=line.get("metadata", dict), turn_count=line.count("turnCount"))
    times = (line.time("createdAt"), line.time("updatedAt"), line.time("lastActiveAt"))
    session.save(force_insert=True)
    node = TopologyNode.objects.create(
        session=session, space=state.space, parent=None if parent is None else parent.node,
        depth=0 if parent is None else parent.node.depth + 1, index=index,
        label=line.text("nodeLabel"))
    state.sessions[ref] = _Imported(session, node, source, line.number, times,
                                    line.count("memoryCoveredMessages"))
    state.counts["sessions"] += 1


def _slot(state: _State, line: _Line) -> None:
    if state.counts["messages"]:
        raise line.refuse("slots must come before messages")
    owner = line.session("session", state)
    key = line.text("key")
    if key not in SLOT_KEYS:
        raise line.refuse(f"unknown slot key {key[:40]!r}")
    if (owner.session.id, key) in state.slot_keys:
        raise line.refuse("a second slot with this key for this session")
    state.slot_keys.add((owner.session.id, key))
    slot = SessionData.objects.create(session=owner.session, key=key,
                                      content=line.text("content"))
    state.slots.append((slot, line.time("updatedAt")))
    state.counts["slots"] += 1


def _core(state: _State, line: _Line) -> None:
    path = line.text("path")
    if path in state.core_paths:
        raise line.refuse("a second core entry with this path")
    if "value" not in line.obj:
        raise line.refuse("value is required")
    state.core_paths.add(path)
    CoreData.objects.create(space=state.space, path=path, value=line.obj["value"])
    state.counts["core"] += 1


def _message(state: _State, line: _Line) -> None:
    owner = line.session("session", state)
    role = line.text("role")
    if role not in ROLES:
        raise line.refuse("role must be user, assistant, system or tool")
    calls = line.get("toolCalls", list, null=True)
    for call in calls or ():
        if not (isinstance(call, dict) and isinstance(call.get("id"), str)
                and isinstance(call.get("name"), str)
                and isinstance(call.get("input", {}), dict)):
            raise line.refuse("each tool call needs a string id and name and an object input")
    record = Record(session=owner.session, role=role, content=line.text("content"),
                    tool_calls=calls or None, tool_call_id=line.text("toolCallId", null=True),
                    timestamp=line.time("timestamp"))
    state.pending.append((record, owner))
    state.counts["messages"] += 1
    if len(state.pending) >= BATCH:
        _flush(state)


def _flush(state: _State) -> None:
    """Insert the waiting records in file order (their new ids keep that order)."""
    if not state.pending:
        return
    Record.objects.bulk_create([record for record, _ in state.pending])
    for record, owner in state.pending:
        owner.records += 1
        if owner.records <= owner.covered:
            owner.covered_id = record.id
    state.pending.clear()


def _end(state: _State, line: _Line) -> None:
    counts = line.get("counts", dict)
    if counts != state.counts:
        raise line.refuse(f"the end line counts {counts} but the file holds {state.counts}")
    state.ended = True


def _finish(state: _State) -> None:
    _flush(state)
    space = state.space
    assert space is not None and state.space_times is not None
    if not state.sessions:
        raise ImportRefused("the file has no main session")
    sessions = []
    for imported in state.sessions.values():
        legacy = imported.session.metadata.get("sourceSessionId")
        if isinstance(legacy, str) and legacy in state.sessions:  # an id of the file: remap
            imported.session.metadata["sourceSessionId"] = str(
                state.sessions[legacy].session.id)
        if imported.covered > imported.records:
            raise ImportRefused("memoryCoveredMessages is more than the session's messages",
                                line=imported.line)
        if imported.source is not None:
            source = state.sessions.get(imported.source)
            if source is None:
                raise ImportRefused("sourceSessionId is not a session of the file",
                                    line=imported.line)
            imported.node.source_session = source.session
        session = imported.session
        session.created_at, session.updated_at, session.last_active_at = imported.times
        session.record_count = imported.records
        session.memory_covered_up_to = imported.covered_id
        sessions.append(session)
    Session.objects.bulk_update(sessions, ["created_at", "updated_at", "last_active_at",
                                           "record_count", "memory_covered_up_to", "metadata"],
                                batch_size=BATCH)
    TopologyNode.objects.bulk_update([i.node for i in state.sessions.values()],
                                     ["source_session"], batch_size=BATCH)
    for slot, updated in state.slots:
        slot.updated_at = updated
    SessionData.objects.bulk_update([slot for slot, _ in state.slots], ["updated_at"],
                                    batch_size=BATCH)
    if state.retention is not None:
        RetentionPolicy.objects.create(space=space, **state.retention)
    space.created_at, space.updated_at = state.space_times
    Space.objects.filter(pk=space.pk).update(created_at=space.created_at,
                                             updated_at=space.updated_at)


_HANDLERS = {"space": _space, "session": _session, "slot": _slot, "core": _core,
             "message": _message, "end": _end}
