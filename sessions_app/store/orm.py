"""The Django implementation of the engine's `SpaceStore` port.

Each public coroutine is ONE unit of work: a sync function that runs in a worker thread through
`unit_of_work` and, when it writes, in one
transaction. Every query is filtered on the store's space: a session of another space is
indistinguishable from a missing one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from asgiref.sync import SyncToAsync
from django.db import connections, transaction
from django.db.models import F, Max
from django.utils import timezone

from spaces.models import Space

from .engine.errors import SessionNotFound, SpaceNotFound
from .engine.types import (
    Bootstrap,
    ChildMemory,
    CompressionCache,
    Insight,
    Message,
    NewChild,
    SessionMeta,
    SpacePrompts,
    ToolCall,
    TurnContext,
)
from .models import CoreData, Record, Session, SessionData, TopologyNode

Key = SessionData.Key


def _release_stale_connections() -> None:
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:  # never under an enclosing transaction (tests)
            connection.close_if_unusable_or_obsolete()


class unit_of_work(SyncToAsync):  # lower case: used as a decorator, like channels
    """Run a sync ORM method from async code in one thread hop, like channels'
    `database_sync_to_async`, recycling stale connections before and after."""

    def thread_handler(self, loop, *args, **kwargs):
        _release_stale_connections()
        try:
            return super().thread_handler(loop, *args, **kwargs)
        finally:
            _release_stale_connections()


TurnListener = Callable[[str, str, int], None]  # (space_id, session_id, turn_count), after commit


def session_meta(session: Session, node: TopologyNode | None) -> SessionMeta:
    return SessionMeta(
        id=str(session.id),
        space_id=str(session.space_id),
        label=session.label,
        role=session.role,
        status=session.status,
        scope=session.scope,
        tags=tuple(session.tags or ()),
        metadata=session.metadata or {},
        turn_count=session.turn_count,
        created_at=session.created_at,
        updated_at=session.updated_at,
        last_active_at=session.last_active_at,
        parent_id=str(node.parent_id) if node and node.parent_id else None,
        source_session_id=_source_id(session, node),
        depth=node.depth if node else 0,
        index=node.index if node else 0,
    )


def _source_id(session: Session, node: TopologyNode | None) -> str | None:
    if node is not None and node.source_session_id:
        return str(node.source_session_id)
    legacy = (session.metadata or {}).get("sourceSessionId")
    return legacy if isinstance(legacy, str) else None


def record_message(record: Record) -> Message:
    return Message(
        role=record.role,
        content=record.content,
        tool_calls=tuple(
            ToolCall(id=c["id"], name=c["name"], input=c.get("input") or {})
            for c in record.tool_calls or ()
        ),
        tool_call_id=record.tool_call_id or None,
    )


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


def _record(session_id: Any, message: Message, now) -> Record:
    return Record(
        session_id=session_id,
        role=message.role,
        content=storable(message.content),
        tool_calls=storable([c.to_json() for c in message.tool_calls]) or None,
        tool_call_id=storable(message.tool_call_id),
        timestamp=now,
    )


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


class DjangoSpaceStore:
    """Storage for one space (see `engine.ports.SpaceStore` for the guarantees)."""

    def __init__(self, space_id: str, *, on_turn: TurnListener | None = None) -> None:
        self.space_id = str(space_id)
        self._on_turn = on_turn

    # -- helpers (sync, inside a unit of work) ---------------------------------------------
    def _sessions(self):
        return Session.objects.filter(space_id=self.space_id)

    def _session(self, session_id: str) -> Session:
        pk = _uuid(session_id)
        session = self._sessions().select_related("node").filter(pk=pk).first() if pk else None
        if session is None:
            raise SessionNotFound()
        return session

    def _session_pk(self, session_id: str) -> uuid.UUID:
        pk = _uuid(session_id)
        if pk is None or not self._sessions().filter(pk=pk).exists():
            raise SessionNotFound()
        return pk

    def _slots(self, session_pk, keys: Sequence[str]) -> dict[str, str]:
        rows = SessionData.objects.filter(session_id=session_pk, key__in=keys)
        return dict(rows.values_list("key", "content"))

    # -- SpaceStore ------------------------------------------------------------------------
    @unit_of_work
    def get_session(self, session_id: str) -> SessionMeta:
        session = self._session(session_id)
        return session_meta(session, session.node)

    @unit_of_work
    def load_turn_context(self, session_id: str) -> TurnContext:
        session = self._session(session_id)
        is_main = session.role == Session.Role.MAIN
        slots = self._slots(session.pk, [
            Key.SYSTEM_PROMPT, Key.MEMORY if is_main else Key.INSIGHT,
            Key.SESSION_CONFIG, Key.COMPRESSION,
        ])
        history = tuple(record_message(r) for r in Record.objects.filter(session_id=session.pk))
        config = _json_object(slots.get(Key.SESSION_CONFIG))
        skills = config.get("skills")
        cache = _json_object(slots.get(Key.COMPRESSION))
        return TurnContext(
            session=session_meta(session, session.node),
            system_prompt=slots.get(Key.SYSTEM_PROMPT),
            insight=None if is_main else slots.get(Key.INSIGHT),
            synthesis=slots.get(Key.MEMORY) if is_main else None,
            history=history,
            skills=tuple(skills) if isinstance(skills, list) else None,
            compression=CompressionCache(**cache) if cache else None,
        )

    @unit_of_work
    def save_call(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        consumed_insight: str | None = None,
        end_turn: bool = False,
    ) -> int:
        pk = _uuid(session_id)
        now = timezone.now()
        with transaction.atomic():
            session = self._sessions().filter(pk=pk).values("turn_count").first() if pk else None
            if session is None:
                raise SessionNotFound()
            Record.objects.bulk_create([_record(pk, m, now) for m in messages])
            if consumed_insight is not None:
                # Only the insight this call used: a newer one from integration survives.
                SessionData.objects.filter(
                    session_id=pk, key=Key.INSIGHT, content=consumed_insight
                ).delete()
            turn_count = session["turn_count"]
            if end_turn:
                Session.objects.filter(pk=pk).update(
                    turn_count=F("turn_count") + 1, last_active_at=now, updated_at=now
                )
                turn_count += 1  # exact: the session lock serialises turns on this session
                if self._on_turn is not None:
                    listener, space_id, count = self._on_turn, self.space_id, turn_count
                    transaction.on_commit(lambda: listener(space_id, str(pk), count))
        return turn_count

    @unit_of_work
    def create_child(self, child: NewChild) -> SessionMeta:
        now = timezone.now()
        with transaction.atomic():
            source = self._session(child.source_id)
            nodes = TopologyNode.objects.select_for_update()
            if child.placement == "tree":
                parent = nodes.get(session_id=source.pk)
            else:
                parent = nodes.get(space_id=self.space_id, parent__isnull=True)
            # The parent row is locked, so concurrent forks take distinct sibling indexes.
            last = TopologyNode.objects.filter(parent=parent).aggregate(m=Max("index"))["m"]
            label, scope = storable(child.label), storable(child.scope)
            session = Session.objects.create(
                space_id=self.space_id,
                label=label,
                role=Session.Role.STANDARD,
                scope=scope,
                metadata={"sourceSessionId": str(source.pk)},
            )
            node = TopologyNode.objects.create(
                session=session, space_id=self.space_id, parent=parent, source_session=source,
                depth=parent.depth + 1, index=0 if last is None else last + 1, label=label,
            )
            slots = {Key.SYSTEM_PROMPT: storable(child.system_prompt), Key.SCOPE: scope}
            if child.session_config:
                slots[Key.SESSION_CONFIG] = json.dumps(storable(dict(child.session_config)))
            SessionData.objects.bulk_create([
                SessionData(session=session, key=k, content=v)
                for k, v in slots.items() if v is not None
            ])
            Record.objects.bulk_create([_record(session.pk, m, now) for m in child.records])
        return session_meta(session, node)

    @unit_of_work
    def archive(self, session_id: str) -> SessionMeta:
        with transaction.atomic():
            session = self._session(session_id)
            if session.status != Session.Status.ARCHIVED:
                session.status = Session.Status.ARCHIVED
                session.save(update_fields=["status", "updated_at"])
        return session_meta(session, session.node)

    @unit_of_work
    def read_slot(self, session_id: str, key: str) -> str | None:
        pk = _uuid(session_id)
        rows = SessionData.objects.filter(
            session_id=pk, session__space_id=self.space_id, key=key
        ).values_list("content", flat=True) if pk else []
        content = next(iter(rows), None)
        if content is None:
            self._session_pk(session_id)  # tell "no slot" from "no such session"
        return content

    @unit_of_work
    def write_slot(self, session_id: str, key: str, content: str | None) -> None:
        with transaction.atomic():
            _write_slot(self._session_pk(session_id), key, content)

    @unit_of_work
    def save_compression(self, session_id: str, cache: CompressionCache) -> None:
        payload = json.dumps(
            {"covered": cache.covered, "digest": cache.digest, "summary": cache.summary}
        )
        with transaction.atomic():
            _write_slot(self._session_pk(session_id), Key.COMPRESSION, payload)

    @unit_of_work
    def space_prompts(self) -> SpacePrompts:
        row = Space.objects.filter(pk=self.space_id).values_list(
            "system_prompt", "consolidate_prompt", "integrate_prompt"
        ).first()
        if row is None:
            raise SpaceNotFound()
        return SpacePrompts(*row)

    @unit_of_work
    def main_session_id(self) -> str:
        pk = self._sessions().filter(role=Session.Role.MAIN).values_list("pk", flat=True).first()
        if pk is None:
            raise SpaceNotFound()
        return str(pk)

    @unit_of_work
    def collect_memories(self) -> list[ChildMemory]:
        rows = (
            SessionData.objects.filter(
                key=Key.MEMORY,
                session__space_id=self.space_id,
                session__role=Session.Role.STANDARD,
                session__status=Session.Status.ACTIVE,
            )
            .exclude(content="")
            .order_by("session__created_at", "session_id")
            .values_list("session_id", "session__label", "content")
        )
        return [ChildMemory(str(sid), label, memory) for sid, label, memory in rows]

    @unit_of_work
    def save_integration(
        self, main_session_id: str, synthesis: str, insights: Sequence[Insight]
    ) -> None:
        with transaction.atomic():
            _write_slot(self._session_pk(main_session_id), Key.MEMORY, synthesis)
            wanted = {i.session_id: i.content for i in insights if _uuid(i.session_id)}
            mine = self._sessions().filter(pk__in=list(wanted)).values_list("pk", flat=True)
            for pk in mine:
                _write_slot(pk, Key.INSIGHT, wanted[str(pk)])

    @unit_of_work
    def load_bootstrap(self, session_id: str) -> Bootstrap:
        session = self._session(session_id)
        parents = dict(
            TopologyNode.objects.filter(space_id=self.space_id)
            .values_list("session_id", "parent_id")
        )
        ancestors, current = [], parents.get(session.pk)
        while current is not None and current not in ancestors:
            ancestors.append(current)  # nearest first
            current = parents.get(current)
        memories = dict(
            SessionData.objects.filter(session_id__in=ancestors, key=Key.MEMORY)
            .exclude(content="").values_list("session_id", "content")
        )
        own = self._slots(session.pk, [Key.MEMORY, Key.SCOPE])
        return Bootstrap(
            core=self._core(),
            memories=tuple(memories[a] for a in ancestors if a in memories),
            current_memory=own.get(Key.MEMORY),
            scope=own.get(Key.SCOPE),
            session=session_meta(session, session.node),
        )

    @unit_of_work
    def core_data(self) -> Mapping[str, Any]:
        return self._core()

    def _core(self) -> dict[str, Any]:
        return dict(CoreData.objects.filter(space_id=self.space_id).values_list("path", "value"))


def _write_slot(session_pk, key: str, content: str | None) -> None:
    if content is None:
        SessionData.objects.filter(session_id=session_pk, key=key).delete()
    else:
        SessionData.objects.update_or_create(
            session_id=session_pk, key=key, defaults={"content": storable(content)}
        )


def _json_object(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
