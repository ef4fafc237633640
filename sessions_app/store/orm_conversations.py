"""Conversations as data with the ORM (`DjangoSpaceStore` inherits these; the PostgreSQL store
uses the session edits, deletion and listing from here too): message pages, message stretches
and rewrites, session edits, subtree deletion and the flat session listing.

Imported by `orm` once its helpers exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from ..engine.errors import Conflict, SessionArchived, SessionNotFound
from ..engine.types import Message, SaveResult, SessionMeta
from ..models import Record, Session, SessionData, TopologyNode
from .common import SERVER_METADATA_KEYS, message_json, parse_uuid, storable
from .orm import _last_record_id, _record, record_message, session_meta, unit_of_work

Key = SessionData.Key


class MainSessionNotDeletable(Conflict):
    """The main session is the root of the tree: deleting it would orphan the space."""

    code = "MAIN_SESSION_NOT_DELETABLE"
    default_message = "The main session cannot be deleted"


def _message(r: Record) -> dict[str, Any]:
    return message_json(r.role, r.content, r.timestamp, r.tool_calls, r.tool_call_id, r.pk)


class OrmConversations:
    """Mixed into `DjangoSpaceStore` (which provides `_sessions`, `_session`, `_session_pk`)."""

    space_id: str

    # -- REST reads ----------------------------------------------------------------------------
    @unit_of_work
    def message_page(
        self, session_id: str, *, limit: int, before: int | None = None,
        after: int | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        pk = self._session_pk(session_id)
        rows = Record.objects.filter(session_id=pk)
        if after is not None:
            page = list(rows.filter(id__gt=after).order_by("id")[: limit + 1])
        else:
            if before is not None:
                rows = rows.filter(id__lt=before)
            page = list(rows.order_by("-id")[: limit + 1])
        more = len(page) > limit
        page = page[:limit]
        if after is None:
            page.reverse()
        return [_message(r) for r in page], more

    # -- engine port ---------------------------------------------------------------------------
    @unit_of_work
    def record_stretch(
        self, session_id: str, record_id: int | None = None
    ) -> list[tuple[int, Message]]:
        return self._stretch(session_id, record_id, through=False)

    @unit_of_work
    def history_through(self, session_id: str, record_id: int) -> list[tuple[int, Message]]:
        return self._stretch(session_id, record_id, through=True)

    def _stretch(
        self, session_id: str, record_id: int | None, *, through: bool
    ) -> list[tuple[int, Message]]:
        pk = self._session_pk(session_id)
        records = Record.objects.filter(session_id=pk)
        target = records.filter(id=record_id) if record_id is not None else records
        tid = target.order_by("-id").values_list("id", flat=True).first()
        if tid is None:
            return []
        users = records.filter(role=Record.Role.USER)
        lo = 0 if through else (
            users.filter(id__lte=tid).order_by("-id").values_list("id", flat=True).first() or 0)
        hi = users.filter(id__gt=tid).order_by("id").values_list("id", flat=True).first()
        rows = records.filter(id__gte=lo)
        if hi is not None:
            rows = rows.filter(id__lt=hi)
        return [(r.pk, record_message(r)) for r in rows.order_by("id")]

    @unit_of_work
    def _rewrite(
        self,
        session_id: str,
        remove: Sequence[int],
        messages: Sequence[Message],
        consumed_insight: str | None,
        end_turn: bool,
        turns_removed: int,
    ) -> SaveResult:
        pk = parse_uuid(session_id)
        now = timezone.now()
        with transaction.atomic():
            row = self._sessions().select_for_update().filter(pk=pk).values_list(
                "status", "turn_count", "record_count").first() if pk else None
            if row is None:
                raise SessionNotFound()
            status, turns, count = row
            if status != Session.Status.ACTIVE:
                raise SessionArchived(session_id)
            deleted, _ = Record.objects.filter(session_id=pk, id__in=list(remove)).delete()
            created = Record.objects.bulk_create([_record(pk, m, now) for m in messages])
            if consumed_insight is not None:
                SessionData.objects.filter(
                    session_id=pk, key=Key.INSIGHT, content=consumed_insight).delete()
            turns = max(turns - turns_removed, 0) + (1 if end_turn else 0)
            changes: dict[str, Any] = {
                "record_count": F("record_count") + len(messages) - deleted,
                "turn_count": turns, "updated_at": now,
            }
            if end_turn:
                changes["last_active_at"] = now
            Session.objects.filter(pk=pk).update(**changes)
            last = max((r.pk for r in created if r.pk is not None), default=None)
            return SaveResult(
                turn_count=turns, record_count=count + len(messages) - deleted,
                last_record_id=last if last is not None else _last_record_id(pk),
            )

    async def rewrite_records(
        self,
        session_id: str,
        remove: Sequence[int],
        messages: Sequence[Message] = (),
        *,
        consumed_insight: str | None = None,
        end_turn: bool = False,
        turns_removed: int = 0,
    ) -> SaveResult:
        result = await self._rewrite(session_id, remove, messages, consumed_insight, end_turn,
                                     turns_removed)
        if end_turn and self._on_turn is not None:
            self._on_turn(self.space_id, str(parse_uuid(session_id)), result.turn_count)
        return result

    # -- session edits -------------------------------------------------------------------------
    @unit_of_work
    def update_session(self, session_id: str, changes: dict[str, Any]) -> SessionMeta:
        """Set the given fields among label, tags, metadata (the caller's keys; the server's
        own keys are kept) and scope, in one transaction."""
        with transaction.atomic():
            pk = parse_uuid(session_id)
            session = self._sessions().select_for_update().filter(pk=pk).first() if pk else None
            if session is None:
                raise SessionNotFound()
            fields = ["updated_at"]
            for name in ("label", "tags", "scope"):
                if name in changes:
                    setattr(session, name, storable(changes[name]))
                    fields.append(name)
            if "metadata" in changes:
                kept = {k: v for k, v in (session.metadata or {}).items()
                        if k in SERVER_METADATA_KEYS}
                session.metadata = storable(dict(changes["metadata"])) | kept
                fields.append("metadata")
            session.save(update_fields=fields)
            node = TopologyNode.objects.filter(session_id=session.pk).first()
            if "label" in changes and node is not None:
                node.label = session.label
                node.save(update_fields=["label"])
        return session_meta(session, node)

    @unit_of_work
    def delete_session(self, session_id: str) -> list[str]:
        """Delete a standard session with its whole subtree (records, data, nodes): the ids
        deleted, the session's first. MainSessionNotDeletable for the main session."""
        with transaction.atomic():
            session = self._session(session_id)
            if session.role == Session.Role.MAIN:
                raise MainSessionNotDeletable()
            parents = dict(TopologyNode.objects.filter(space_id=self.space_id)
                           .values_list("session_id", "parent_id"))
            doomed = [session.pk]
            for sid in doomed:  # grows while it is walked: breadth first
                doomed.extend(c for c, p in parents.items() if p == sid and c not in doomed)
            Session.objects.filter(space_id=self.space_id, pk__in=doomed).delete()
        return [str(pk) for pk in doomed]

    @unit_of_work
    def list_sessions(
        self,
        *,
        limit: int,
        after: tuple[datetime, str] | None = None,
        status: str | None = None,
        tag: str | None = None,
        text: str | None = None,
        updated_since: datetime | None = None,
    ) -> tuple[list[SessionMeta], bool]:
        """The space's sessions, most recently updated first (then by id), filtered; a page of
        `limit` after the key (updated_at, id) of the previous page's last one."""
        rows = self._sessions().select_related("node")
        if status:
            rows = rows.filter(status=status)
        if text:
            rows = rows.filter(label__icontains=text)
        if updated_since is not None:
            rows = rows.filter(updated_at__gte=updated_since)
        if tag is not None:
            if connection.vendor == "postgresql":
                rows = rows.filter(tags__contains=[tag])
            else:  # SQLite has no JSON containment lookup
                rows = rows.extra(where=[
                    'EXISTS (SELECT 1 FROM json_each("sessions"."tags") '
                    "WHERE json_each.value = %s)"], params=[tag])
        if after is not None:
            at, sid = after
            rows = rows.filter(Q(updated_at__lt=at) | Q(updated_at=at, id__lt=parse_uuid(sid)))
        page = list(rows.order_by("-updated_at", "-id")[: limit + 1])
        return [session_meta(s, s.node) for s in page[:limit]], len(page) > limit
