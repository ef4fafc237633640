"""The Django ORM implementation of the engine's `SpaceStore` port (SQLite, cold paths).

Each public coroutine is ONE unit of work: a sync function that runs in a worker thread through
`unit_of_work` and, when it writes, in one transaction. Every query is filtered on the store's
space: a session of another space is indistinguishable from a missing one.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from asgiref.sync import SyncToAsync
from django.db import connections, transaction
from django.db.models import F, Max, OuterRef, Subquery
from django.db.models.functions import Greatest
from django.utils import timezone

from spaces.models import Space
from spaces.selectors import space_owners

from ..accounting.record import orm_record
from ..engine.errors import SessionArchived, SessionNotFound, SpaceNotFound, TurnNotFound
from ..engine.types import (
    SESSION_ARCHIVED,
    SESSION_FORKED,
    SESSION_UNARCHIVED,
    Bootstrap,
    ChildMemory,
    CompressionCache,
    ConsolidationInput,
    EventPage,
    Insight,
    LogEvent,
    Logged,
    Message,
    NewChild,
    SaveResult,
    SessionMeta,
    SpacePrompts,
    TurnContext,
    TurnInfo,
    TurnWrite,
    forked_payload,
    packed,
)
from ..engine.usage import CallUsage
from ..models import CoreData, Record, Session, SessionData, SessionEvent, TopologyNode, Turn
from .common import (
    ABANDONED_ERROR,
    TurnListener,
    compression_of,
    compression_text,
    event_page,
    fork_metadata,
    json_object,
    message_from_row,
    message_json,
    parse_uuid,
    prune_to,
    session_config_text,
    session_tree_from_rows,
    skills_of,
    source_id,
    storable,
    stored_tool_calls,
    turn_info,
)

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


def session_meta(session: Session, node: TopologyNode | None) -> SessionMeta:
    return SessionMeta(
        id=str(session.id),
        space_id=str(session.space_id),
        label=session.label,
        role=session.role,
        status=session.status,
        scope=session.scope,
        metadata=session.metadata or {},
        turn_count=session.turn_count,
        created_at=session.created_at,
        updated_at=session.updated_at,
        last_active_at=session.last_active_at,
        parent_id=str(node.parent_id) if node and node.parent_id else None,
        source_session_id=source_id(node.source_session_id if node else None, session.metadata),
        depth=node.depth if node else 0,
        index=node.index if node else 0,
        tags=tuple(session.tags or ()),
    )


def record_message(record: Record) -> Message:
    return message_from_row(record.role, record.content, record.tool_calls, record.tool_call_id)


def _record(session_id: Any, message: Message, now, turn_id: Any = None) -> Record:
    return Record(
        session_id=session_id,
        turn_id=turn_id,
        role=message.role,
        content=storable(message.content),
        tool_calls=stored_tool_calls(message),
        tool_call_id=storable(message.tool_call_id),
        timestamp=now,
    )


_newest_record = Record.objects.filter(session_id=OuterRef("pk")).order_by("-id")


def _last_record_id(session_pk) -> int:
    last = Record.objects.filter(session_id=session_pk).order_by("-id").values_list("id")
    return next(iter(last), (0,))[0]


from .orm_approvals import OrmApprovals  # noqa: E402  (they use the helpers above)
from .orm_conversations import OrmConversations  # noqa: E402


class DjangoSpaceStore(OrmConversations, OrmApprovals):
    """Storage for one space (see `engine.ports.SpaceStore` for the guarantees)."""

    def __init__(self, space_id: str, *, on_turn: TurnListener | None = None) -> None:
        self.space_id = str(space_id)
        self._on_turn = on_turn

    # -- helpers (sync, inside a unit of work) ---------------------------------------------
    def _owner_id(self, usage: Sequence[CallUsage]) -> Any:
        """Who pays for `usage`: the space's owner (from the route's space check when cached;
        no query at all without usage)."""
        if not usage:
            return None
        owner = space_owners.get(self.space_id)
        if owner is None:
            owner = Space.objects.filter(pk=self.space_id).values_list(
                "owner_id", flat=True).first()
        return owner

    def _sessions(self):
        return Session.objects.filter(space_id=self.space_id)

    def _session(self, session_id: str) -> Session:
        pk = parse_uuid(session_id)
        session = self._sessions().select_related("node").filter(pk=pk).first() if pk else None
        if session is None:
            raise SessionNotFound()
        return session

    def _session_pk(self, session_id: str) -> uuid.UUID:
        pk = parse_uuid(session_id)
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

    def turn_context_read(self, session_id: str, *, history_after: int) -> None:
        return None  # no lock here makes reads of its own (an ORM read is a thread hop)

    @unit_of_work
    def load_turn_context(
        self, session_id: str, *, history_after: int | None = 0
    ) -> TurnContext:
        # No transaction for reads: on SQLite (IMMEDIATE) one would take the write lock.
        pk = parse_uuid(session_id)
        session = self._sessions().select_related("node").filter(pk=pk).annotate(
            last_record_id=Subquery(_newest_record.values("id")[:1])
        ).first() if pk else None
        if session is None:
            raise SessionNotFound()
        is_main = session.role == Session.Role.MAIN
        slots = self._slots(session.pk, [
            Key.SYSTEM_PROMPT, Key.MEMORY if is_main else Key.INSIGHT,
            Key.SESSION_CONFIG, Key.COMPRESSION,
        ])
        records: list[Record] = []
        if history_after is not None:
            rows = Record.objects.filter(session_id=session.pk)
            records = list(rows.filter(id__gt=history_after) if history_after > 0 else rows)
        unfinished = [(str(t), status) for t, status in Turn.objects.filter(
            session_id=session.pk, status__in=(Turn.Status.RUNNING, Turn.Status.WAITING),
        ).values_list("id", "status")]
        return TurnContext(
            session=session_meta(session, session.node),
            system_prompt=slots.get(Key.SYSTEM_PROMPT),
            insight=None if is_main else slots.get(Key.INSIGHT),
            synthesis=slots.get(Key.MEMORY) if is_main else None,
            history=tuple(record_message(r) for r in records),
            skills=skills_of(slots.get(Key.SESSION_CONFIG)),
            config=json_object(slots.get(Key.SESSION_CONFIG)),
            compression=compression_of(slots.get(Key.COMPRESSION)),
            history_after=history_after,
            record_count=session.record_count,
            last_record_id=max(session.last_record_id or 0, records[-1].pk if records else 0),
            event_seq=session.event_seq,
            running_turns=tuple(t for t, status in unfinished if status == Turn.Status.RUNNING),
            waiting_turns=tuple(t for t, status in unfinished if status == Turn.Status.WAITING),
        )

    async def save_call(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        consumed_insight: str | None = None,
        end_turn: bool = False,
        usage: Sequence[CallUsage] = (),
        turn: TurnWrite | None = None,
    ) -> SaveResult:
        result = await self._save_call(session_id, messages, consumed_insight, end_turn, usage,
                                       turn)
        if end_turn and self._on_turn is not None:  # committed: the unit of work has returned
            self._on_turn(self.space_id, str(parse_uuid(session_id)), result.turn_count)
        return result

    @unit_of_work
    def _save_call(
        self,
        session_id: str,
        messages: Sequence[Message],
        consumed_insight: str | None,
        end_turn: bool,
        usage: Sequence[CallUsage] = (),
        turn: TurnWrite | None = None,
    ) -> SaveResult:
        pk = parse_uuid(session_id)
        now = timezone.now()
        with transaction.atomic():
            # Locked (on PostgreSQL) until commit, so the counts computed below are exact.
            counts = self._sessions().select_for_update().filter(pk=pk).values_list(
                "turn_count", "record_count"
            ).first() if pk else None
            if counts is None:
                raise SessionNotFound()
            turn_pk = parse_uuid(turn.turn_id) if turn is not None else None
            dropped = 0
            if turn is not None:
                dropped = _write_turn(pk, turn, now, end_turn)
                counts = (counts[0], counts[1] - dropped)
            created = Record.objects.bulk_create(
                [_record(pk, m, now, turn_pk) for m in messages])
            if consumed_insight is not None:
                # Only the insight this call used: a newer one from integration survives.
                SessionData.objects.filter(
                    session_id=pk, key=Key.INSIGHT, content=consumed_insight
                ).delete()
            changes: dict[str, Any] = {}
            if messages or dropped:
                changes["record_count"] = F("record_count") + len(messages) - dropped
            if turn is not None:
                changes["event_seq"] = turn.event_seq
            if end_turn:
                changes.update(turn_count=F("turn_count") + 1, last_active_at=now, updated_at=now)
            if changes:
                Session.objects.filter(pk=pk).update(**changes)
            orm_record(self.space_id, self._owner_id(usage), usage)
            last = max((r.pk for r in created if r.pk is not None), default=None)
            return SaveResult(
                turn_count=counts[0] + (1 if end_turn else 0),
                record_count=counts[1] + len(messages),
                last_record_id=last if last is not None else _last_record_id(pk),
            )

    async def finish_turn(
        self, session_id: str, turn: TurnWrite, *, error: str | None, discard: bool
    ) -> None:
        await self._finish_turn(session_id, turn, error, discard)

    @unit_of_work
    def _finish_turn(self, session_id: str, turn: TurnWrite, error: str | None,
                     discard: bool) -> None:
        pk, now = self._session_pk(session_id), timezone.now()
        turn_pk = parse_uuid(turn.turn_id)
        with transaction.atomic():
            dropped = 0
            if discard:
                dropped, _ = Record.objects.filter(session_id=pk, turn_id=turn_pk).delete()
            Turn.objects.update_or_create(
                id=turn_pk, defaults={"status": turn.status, "error": storable(error),
                                      "updated_at": now},
                create_defaults={"session_id": pk, "status": turn.status,
                                 "input": storable(turn.input), "error": storable(error),
                                 "created_at": now, "updated_at": now})
            _write_events(pk, turn.events, now)
            Session.objects.filter(pk=pk).update(
                record_count=F("record_count") - dropped,
                event_seq=Greatest(F("event_seq"), turn.event_seq))

    @unit_of_work
    def log_event(self, session_id: str, type_: str, payload: Mapping[str, Any]) -> LogEvent:
        with transaction.atomic():
            return _log_entry(self._session(session_id), type_, dict(payload), timezone.now())

    @unit_of_work
    def get_turn(self, session_id: str, turn_id: str) -> TurnInfo:
        pk, turn_pk = self._session_pk(session_id), parse_uuid(turn_id)
        turn = Turn.objects.filter(session_id=pk, id=turn_pk).first() if turn_pk else None
        if turn is None:
            raise TurnNotFound()
        return _turn_info(turn)

    @unit_of_work
    def list_turns(self, session_id: str, *, limit: int = 100) -> list[TurnInfo]:
        pk = self._session_pk(session_id)
        turns = Turn.objects.filter(session_id=pk).order_by("-created_at", "-id")[:limit]
        return [_turn_info(t) for t in turns]

    @unit_of_work
    def read_events(self, session_id: str, since: int, *, limit: int = 1000) -> EventPage:
        pk = parse_uuid(session_id)
        current = self._sessions().filter(pk=pk).values_list("event_seq", flat=True).first() \
            if pk else None
        if current is None:
            raise SessionNotFound()
        rows = SessionEvent.objects.filter(session_id=pk)
        first = rows.order_by("seq").values_list("seq", flat=True).first() or 0
        entries = rows.filter(last_seq__gt=since).order_by("seq").values_list(
            "seq", "last_seq", "type", "payload")[:limit]
        return event_page(current, first, list(entries), since)

    async def create_child(self, child: NewChild, *, logged: Logged | None = None
                           ) -> SessionMeta:
        meta, event = await self._create_child(child, logged is not None)
        if logged is not None and event is not None:  # committed; told on the event loop
            logged(event)
        return meta

    @unit_of_work
    def _create_child(self, child: NewChild, log: bool) -> tuple[SessionMeta, LogEvent | None]:
        now = timezone.now()
        event = None
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
                metadata=fork_metadata(str(source.pk), child.from_message),
                record_count=len(child.records),
            )
            node = TopologyNode.objects.create(
                session=session, space_id=self.space_id, parent=parent, source_session=source,
                depth=parent.depth + 1, index=0 if last is None else last + 1, label=label,
            )
            slots = {Key.SYSTEM_PROMPT: storable(child.system_prompt)}
            if child.session_config:
                slots[Key.SESSION_CONFIG] = session_config_text(child.session_config)
            SessionData.objects.bulk_create([
                SessionData(session=session, key=k, content=v)
                for k, v in slots.items() if v is not None
            ])
            Record.objects.bulk_create([_record(session.pk, m, now) for m in child.records])
            if log:
                event = _log_entry(source, SESSION_FORKED,
                                   forked_payload(str(session.pk), label, scope), now)
        return session_meta(session, node), event

    async def archive(self, session_id: str, *, logged: Logged | None = None) -> SessionMeta:
        return await self._status_change(session_id, Session.Status.ARCHIVED, logged)

    async def unarchive(self, session_id: str, *, logged: Logged | None = None) -> SessionMeta:
        return await self._status_change(session_id, Session.Status.ACTIVE, logged)

    async def _status_change(self, session_id: str, status: str,
                             logged: Logged | None) -> SessionMeta:
        meta, event = await self._set_status(session_id, status, logged is not None)
        if logged is not None and event is not None:
            logged(event)
        return meta

    @unit_of_work
    def _set_status(self, session_id: str, status: str,
                    log: bool) -> tuple[SessionMeta, LogEvent | None]:
        event = None
        with transaction.atomic():
            session = self._session(session_id)
            never = status == Session.Status.ARCHIVED and session.role == Session.Role.MAIN
            if session.status != status and not never:
                session.status = status
                session.save(update_fields=["status", "updated_at"])
                if log:
                    kind = (SESSION_ARCHIVED if status == Session.Status.ARCHIVED
                            else SESSION_UNARCHIVED)
                    event = _log_entry(session, kind, {}, session.updated_at)
        return session_meta(session, session.node), event

    @unit_of_work
    def read_slot(self, session_id: str, key: str) -> str | None:
        pk = parse_uuid(session_id)
        rows = SessionData.objects.filter(
            session_id=pk, session__space_id=self.space_id, key=key
        ).values_list("content", flat=True) if pk else []
        content = next(iter(rows), None)
        if content is None:
            self._session_pk(session_id)  # tell "no slot" from "no such session"
        return content

    @unit_of_work
    def write_slot(
        self, session_id: str, key: str, content: str | None, *, only_active: bool = False
    ) -> None:
        with transaction.atomic():
            pk = parse_uuid(session_id)
            status = self._sessions().filter(pk=pk).values_list("status", flat=True).first()
            if status is None:
                raise SessionNotFound()
            if only_active and status != Session.Status.ACTIVE:
                raise SessionArchived(session_id)
            _write_slot(pk, key, content)

    @unit_of_work
    def save_compression(self, session_id: str, cache: CompressionCache) -> None:
        with transaction.atomic():
            _write_slot(self._session_pk(session_id), Key.COMPRESSION, compression_text(cache))

    @unit_of_work
    def space_prompts(self) -> SpacePrompts:
        pk = parse_uuid(self.space_id)
        row = Space.objects.filter(pk=pk).values_list(
            "system_prompt", "consolidate_prompt", "integrate_prompt"
        ).first() if pk else None
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
            )
            .exclude(content="")
            .order_by("session__created_at", "session_id")
            .values_list("session_id", "session__label", "content", "session__status")
        )
        return [
            ChildMemory(str(sid), label, memory, archived=status == Session.Status.ARCHIVED)
            for sid, label, memory, status in rows
        ]

    @unit_of_work
    def load_consolidation_input(self, session_id: str) -> ConsolidationInput:
        # No transaction (see load_turn_context); each query reads committed rows, and the
        # records' ids, not a snapshot, bound what the result may claim to cover.
        session = self._session(session_id)
        slots = self._slots(session.pk, [Key.MEMORY, Key.CONSOLIDATE_PROMPT])
        space_prompt = Space.objects.filter(pk=session.space_id).values_list(
            "consolidate_prompt", flat=True
        ).first()
        covered = session.memory_covered_up_to
        records = Record.objects.filter(session_id=session.pk, id__gt=covered).order_by("id")
        return ConsolidationInput(
            session=session_meta(session, session.node),
            memory=slots.get(Key.MEMORY),
            session_prompt=slots.get(Key.CONSOLIDATE_PROMPT),
            space_prompt=space_prompt,
            covered_up_to=covered,
            records=tuple((r.pk, record_message(r)) for r in records),
        )

    @unit_of_work
    def save_consolidation(self, session_id: str, memory: str, covered_up_to: int,
                           *, usage: Sequence[CallUsage] = ()) -> bool:
        pk = self._session_pk(session_id)
        with transaction.atomic():
            orm_record(self.space_id, self._owner_id(usage), usage)
            moved = self._sessions().filter(
                pk=pk, memory_covered_up_to__lt=covered_up_to
            ).update(memory_covered_up_to=covered_up_to)
            if moved:
                _write_slot(pk, Key.MEMORY, memory)
        return bool(moved)

    @unit_of_work
    def save_integration(
        self, main_session_id: str, synthesis: str, insights: Sequence[Insight],
        *, usage: Sequence[CallUsage] = (),
    ) -> None:
        with transaction.atomic():
            orm_record(self.space_id, self._owner_id(usage), usage)
            _write_slot(self._session_pk(main_session_id), Key.MEMORY, synthesis)
            wanted = {
                str(pk): i.content for i in insights if (pk := parse_uuid(i.session_id))
            }
            mine = self._sessions().filter(
                pk__in=list(wanted), status=Session.Status.ACTIVE
            ).values_list("pk", flat=True)
            for pk in mine:
                _write_slot(pk, Key.INSIGHT, wanted[str(pk)])

    @unit_of_work
    def record_usage(self, calls: Sequence[CallUsage]) -> None:
        if calls:
            with transaction.atomic():
                orm_record(self.space_id, self._owner_id(calls), calls)

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
        own = self._slots(session.pk, [Key.MEMORY])
        core = self._core()
        return Bootstrap(
            core=core,
            memories=tuple(memories[a] for a in ancestors if a in memories),
            current_memory=own.get(Key.MEMORY),
            scope=session.scope,
            session=session_meta(session, session.node),
        )

    @unit_of_work
    def core_data(self) -> Mapping[str, Any]:
        return self._core()

    @unit_of_work
    def write_core(
        self, values: Mapping[str, Any], *, delete: Sequence[str] = (), clear: bool = False
    ) -> None:
        if not Space.objects.filter(pk=self.space_id).exists():
            raise SpaceNotFound()
        values = storable(dict(values))
        with transaction.atomic():
            gone = CoreData.objects.filter(space_id=self.space_id).exclude(path__in=list(values))
            if not clear:
                gone = gone.filter(path__in=list(delete))
            gone.delete()
            for path, value in values.items():
                CoreData.objects.update_or_create(space_id=self.space_id, path=path,
                                                  defaults={"value": value})

    def _core(self) -> dict[str, Any]:
        return dict(CoreData.objects.filter(space_id=self.space_id).values_list("path", "value"))

    # -- REST reads (not part of the engine port) ------------------------------------------
    @unit_of_work
    def session_tree(self) -> dict[str, Any]:
        """The space's sessions as one recursive tree from the main session."""
        rows = (
            TopologyNode.objects.filter(space_id=self.space_id)
            .order_by("depth", "index")
            .values_list("session_id", "parent_id", "source_session_id", "session__label",
                         "session__status", "session__turn_count", "session__metadata")
        )
        return session_tree_from_rows(rows)

    @unit_of_work
    def session_messages(self, session_id: str) -> list[dict[str, Any]]:
        """The session's records as the REST API lists them; SessionNotFound unless the
        session is in this space."""
        pk = parse_uuid(session_id)
        records = list(
            Record.objects.filter(session_id=pk, session__space_id=self.space_id)
        ) if pk else []
        if not records:
            self._session_pk(session_id)  # 404 unless it exists here
        return [
            message_json(r.role, r.content, r.timestamp, r.tool_calls, r.tool_call_id, r.pk)
            for r in records
        ]


def _write_slot(session_pk, key: str, content: str | None) -> None:
    if content is None:
        SessionData.objects.filter(session_id=session_pk, key=key).delete()
    else:
        SessionData.objects.update_or_create(
            session_id=session_pk, key=key, defaults={"content": storable(content)}
        )


def _turn_info(turn: Turn) -> TurnInfo:
    return turn_info(turn.id, turn.session_id, turn.status, turn.input, turn.result,
                     turn.error, turn.created_at, turn.updated_at)


def _log_entry(session: Session, kind: str, payload: dict[str, Any], now) -> LogEvent:
    """A session change's own log entry, numbered next in the session's log (in the caller's
    transaction; the caller holds the session's lock, so no turn numbers events meanwhile)."""
    seq = Session.objects.filter(pk=session.pk).values_list("event_seq", flat=True).get() + 1
    Session.objects.filter(pk=session.pk).update(event_seq=seq)
    event = LogEvent(seq, kind, payload)
    _write_events(session.pk, [event], now)
    return event


def _write_events(session_pk: Any, events: Sequence[LogEvent], now) -> None:
    SessionEvent.objects.bulk_create([
        SessionEvent(session_id=session_pk, seq=e.seq, last_seq=e.end, type=e.type,
                     payload=storable(dict(e.payload)), created_at=now)
        for e in packed(events)
    ])


def _write_turn(session_pk: Any, turn: TurnWrite, now, end_turn: bool) -> int:
    """The turn's part of a save_call (see the PostgreSQL store's SQL_SAVE_TURN_CALL); returns
    how many records of abandoned turns were removed."""
    dropped = 0
    stale = [a for a in map(parse_uuid, turn.abandoned) if a]
    if stale:
        stale = list(Turn.objects.filter(session_id=session_pk, id__in=stale,
                                         status=Turn.Status.RUNNING).values_list("id", flat=True))
        Turn.objects.filter(id__in=stale).update(status=Turn.Status.FAILED,
                                                 error=ABANDONED_ERROR, updated_at=now)
        dropped, _ = Record.objects.filter(session_id=session_pk, turn_id__in=stale).delete()
    result = None if turn.result is None else storable(dict(turn.result))
    turn_pk = parse_uuid(turn.turn_id)
    # One statement each (no savepoint, no read first): the row exists after the first call.
    if not Turn.objects.filter(id=turn_pk).update(status=turn.status, result=result,
                                                   updated_at=now):
        Turn.objects.bulk_create([Turn(id=turn_pk, session_id=session_pk, status=turn.status,
                                       input=storable(turn.input), result=result,
                                       created_at=now, updated_at=now)])
    _write_events(session_pk, turn.events, now)
    if end_turn and (below := prune_to(turn.event_seq)):
        SessionEvent.objects.filter(session_id=session_pk, seq__lte=below,
                                    last_seq__lte=below).delete()
    return dropped
